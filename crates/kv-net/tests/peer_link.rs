//! Peer links: batching, dropping while down, reconnecting; snapshots.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{MemKv, Server, bounded, identity};
use kv_net::proto::{PeerMessage, SnapshotChunk};
use kv_net::{Options, PeerSender, SnapshotOffer, send_snapshot};
use tokio::sync::mpsc;

fn options() -> Options {
    Options {
        peer_backoff_initial: Duration::from_millis(20),
        peer_backoff_max: Duration::from_millis(200),
        connect_timeout: Duration::from_millis(500),
        ..Options::default()
    }
}

fn peer_service() -> (Arc<MemKv>, mpsc::UnboundedReceiver<PeerMessage>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let service = Arc::new(MemKv {
        peer_tx: Some(tx),
        ..MemKv::default()
    });
    (service, rx)
}

fn unreachable_channel() -> (
    impl Fn(u64) + Send + Sync + 'static,
    mpsc::UnboundedReceiver<u64>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    (
        move |peer| {
            let _ = tx.send(peer);
        },
        rx,
    )
}

/// Receives until `n` raft messages arrived; returns them and the number of
/// frames they came in.
async fn receive(rx: &mut mpsc::UnboundedReceiver<PeerMessage>, n: usize) -> (Vec<Bytes>, usize) {
    let mut messages = Vec::new();
    let mut frames = 0;
    while messages.len() < n {
        let m = rx.recv().await.unwrap();
        assert_eq!((m.from, m.to), (1, 2));
        frames += 1;
        messages.extend(m.raft_messages);
    }
    (messages, frames)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_are_delivered_in_order_and_batched() {
    bounded(async {
        let (service, mut rx) = peer_service();
        let server = Server::start(service, options()).await;
        let (report, mut unreachable) = unreachable_channel();
        let link =
            PeerSender::spawn(identity(1), 2, server.addr.to_string(), &options(), report).unwrap();
        assert!(!link.is_connected(), "connects lazily");

        // A burst queued while the link connects goes out in few frames.
        let sent: Vec<Bytes> = (0..500u32)
            .map(|i| Bytes::from(i.to_be_bytes().to_vec()))
            .collect();
        for m in &sent {
            assert!(link.send(m.clone()));
        }
        let (got, frames) = receive(&mut rx, sent.len()).await;
        assert_eq!(got, sent);
        assert!(frames < 50, "{frames} frames for {} messages", sent.len());
        assert!(link.is_connected());

        // Later single messages still arrive.
        assert!(link.send(Bytes::from_static(b"late")));
        let (got, _) = receive(&mut rx, 1).await;
        assert_eq!(got, vec![Bytes::from_static(b"late")]);
        assert!(
            unreachable.try_recv().is_err(),
            "no drops on a healthy link"
        );
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn down_peer_drops_and_reports_then_reconnects() {
    bounded(async {
        // Reserve a port with nothing listening on it.
        let addr = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let (report, mut unreachable) = unreachable_channel();
        let link = PeerSender::spawn(identity(1), 2, addr.to_string(), &options(), report).unwrap();

        // Connect fails: the message is dropped and the peer reported.
        link.send(Bytes::from_static(b"m0"));
        assert_eq!(unreachable.recv().await, Some(2));
        // While backing off, sends are refused at once (bounded: nothing is
        // queued), and reported.
        let mut refused = 0;
        for _ in 0..1000 {
            if !link.send(Bytes::from_static(b"m")) {
                refused += 1;
            }
        }
        assert!(refused > 0);
        assert!(!link.is_connected());

        // The peer comes up at that address: the link reconnects by itself
        // (as messages keep flowing, as raft's heartbeats do).
        let (service, mut rx) = peer_service();
        let server = Server::start_at(&addr.to_string(), service, options()).await;
        let delivered = async {
            let mut i = 0u32;
            loop {
                link.send(Bytes::from(format!("after-{i}")));
                i += 1;
                tokio::select! {
                    m = rx.recv() => return m.unwrap(),
                    () = tokio::time::sleep(Duration::from_millis(20)) => {}
                }
            }
        };
        let first = tokio::time::timeout(Duration::from_secs(5), delivered)
            .await
            .unwrap();
        assert!(first.raft_messages[0].starts_with(b"after-"));
        assert!(link.is_connected());

        // The peer goes away again: reported unreachable once the link
        // notices, then delivered again after it returns.
        server.stop().await;
        while unreachable.try_recv().is_ok() {}
        let noticed = async {
            loop {
                link.send(Bytes::from_static(b"x"));
                tokio::select! {
                    r = unreachable.recv() => return r,
                    () = tokio::time::sleep(Duration::from_millis(20)) => {}
                }
            }
        };
        assert_eq!(
            tokio::time::timeout(Duration::from_secs(5), noticed)
                .await
                .unwrap(),
            Some(2)
        );
        let (service, mut rx) = peer_service();
        let server = Server::start_at(&addr.to_string(), service, options()).await;
        let delivered = async {
            loop {
                link.send(Bytes::from_static(b"back"));
                tokio::select! {
                    m = rx.recv() => return m.unwrap(),
                    () = tokio::time::sleep(Duration::from_millis(20)) => {}
                }
            }
        };
        let m = tokio::time::timeout(Duration::from_secs(5), delivered)
            .await
            .unwrap();
        assert_eq!(m.raft_messages[0], Bytes::from_static(b"back"));
        drop(link);
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_drops_instead_of_growing() {
    bounded(async {
        // A listener that accepts nothing: connect hangs in the backlog or
        // succeeds but nothing is read; either way the queue fills.
        let blackhole = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let options = Options {
            peer_queue_capacity: 16,
            ..options()
        };
        let (report, mut unreachable) = unreachable_channel();
        let link = PeerSender::spawn(
            identity(1),
            2,
            blackhole.local_addr().unwrap().to_string(),
            &options,
            report,
        )
        .unwrap();
        let big = Bytes::from(vec![0u8; 256 << 10]);
        let mut dropped = 0;
        for _ in 0..2000 {
            if !link.send(big.clone()) {
                dropped += 1;
            }
        }
        assert!(dropped > 0, "the queue grew without bound");
        assert_eq!(unreachable.recv().await, Some(2));
    })
    .await;
}

/// The stream of `data` from `offset` on, in chunks of `chunk` bytes.
fn feed(data: Vec<u8>, chunk: usize) -> impl FnOnce(u64) -> mpsc::Receiver<std::io::Result<Bytes>> {
    move |offset| {
        let (tx, rx) = mpsc::channel(2);
        tokio::spawn(async move {
            for c in data[usize::try_from(offset).unwrap()..].chunks(chunk) {
                if tx.send(Ok(Bytes::copy_from_slice(c))).await.is_err() {
                    return;
                }
            }
        });
        rx
    }
}

fn offer(id: u64, sizes: &[u64]) -> SnapshotOffer {
    SnapshotOffer {
        snapshot_id: id,
        group_id: 1,
        raft_message: Bytes::from_static(b"raft-msg"),
        files: sizes
            .iter()
            .enumerate()
            .map(|(i, &s)| (format!("f{i}"), s))
            .collect(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_is_offered_streamed_in_chunks_and_acknowledged() {
    bounded(async {
        let idle = Duration::from_secs(5);
        let (tx, mut rx) = mpsc::unbounded_channel::<SnapshotChunk>();
        let service = Arc::new(MemKv {
            chunk_tx: Some(tx),
            ..MemKv::default()
        });
        let options = Options {
            snapshot_chunk_size: 64 << 10,
            ..options()
        };
        let server = Server::start(service, options.clone()).await;
        let addr = server.addr.to_string();
        for sizes in [&[][..], &[0, 1], &[64 << 10], &[(64 << 10) * 2 + 123, 7]] {
            let total: u64 = sizes.iter().sum();
            let data: Vec<u8> = (0..total).map(|i| (i % 251) as u8).collect();
            let sent = send_snapshot(
                &addr,
                &options,
                identity(1),
                2,
                offer(9, sizes),
                idle,
                feed(data.clone(), 64 << 10),
            )
            .await
            .unwrap();
            assert_eq!((sent.resumed_at, sent.sent), (0, total));
            let first = rx.recv().await.unwrap();
            assert!(first.offer && first.data.is_empty());
            assert_eq!(first.raft_message, Bytes::from_static(b"raft-msg"));
            let offered: Vec<u64> = first.files.iter().map(|f| f.size).collect();
            assert_eq!(offered, sizes);
            let mut got = Vec::new();
            loop {
                let c = rx.recv().await.unwrap();
                assert_eq!((c.from, c.to, c.snapshot_id, c.offer), (1, 2, 9, false));
                assert_eq!(c.offset, got.len() as u64);
                assert!(c.data.len() <= 64 << 10);
                assert_eq!(c.crc32, crc32fast::hash(&c.data));
                got.extend_from_slice(&c.data);
                if c.last {
                    break;
                }
            }
            assert_eq!(got, data);
        }
        server.stop().await;

        // A receiver that already holds part of the snapshot gets the rest.
        let (tx, mut rx) = mpsc::unbounded_channel::<SnapshotChunk>();
        let resuming = Arc::new(MemKv {
            chunk_tx: Some(tx),
            snapshot_resume_at: 1000,
            ..MemKv::default()
        });
        let server = Server::start(resuming, options.clone()).await;
        let data: Vec<u8> = (0..5000u32).map(|i| (i % 7) as u8).collect();
        let sent = send_snapshot(
            &server.addr.to_string(),
            &options,
            identity(1),
            2,
            offer(11, &[3000, 2000]),
            idle,
            feed(data.clone(), 1024),
        )
        .await
        .unwrap();
        assert_eq!((sent.resumed_at, sent.sent), (1000, 4000));
        assert!(rx.recv().await.unwrap().offer);
        let mut got = Vec::new();
        while let Some(c) = rx.recv().await {
            assert_eq!(c.offset, 1000 + got.len() as u64);
            got.extend_from_slice(&c.data);
            if c.last {
                break;
            }
        }
        assert_eq!(got, data[1000..]);
        server.stop().await;

        // Data that ends short of the offer fails the transfer.
        let server = Server::start(Arc::new(MemKv::default()), options.clone()).await;
        let result = send_snapshot(
            &server.addr.to_string(),
            &options,
            identity(1),
            2,
            offer(12, &[100]),
            idle,
            feed(vec![0u8; 50], 1024),
        )
        .await;
        assert!(result.is_err());
        server.stop().await;

        // A receiver that refuses the snapshot makes the transfer fail.
        let refusing = Arc::new(MemKv {
            refuse_snapshots: true,
            ..MemKv::default()
        });
        let server = Server::start(refusing, options.clone()).await;
        let result = send_snapshot(
            &server.addr.to_string(),
            &options,
            identity(1),
            2,
            offer(10, &[1000]),
            idle,
            feed(vec![1u8; 1000], 1024),
        )
        .await;
        assert!(result.is_err());
        server.stop().await;
    })
    .await;
}
