//! A peer link never builds a frame over the frame limit: raft messages that
//! together exceed it are split across frames, and a single message too big
//! for any frame is dropped (and the peer reported) without breaking the
//! link.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{MemKv, Server, bounded, identity};
use kv_net::proto::PeerMessage;
use kv_net::{Options, PeerSender};
use tokio::sync::mpsc;

/// A small limit so the test moves little data; the receiver enforces it
/// too and closes a connection that sends a bigger frame.
const LIMIT: usize = 64 << 10;

fn options() -> Options {
    Options {
        max_frame_length: LIMIT,
        snapshot_chunk_size: 16 << 10,
        peer_backoff_initial: Duration::from_millis(20),
        peer_backoff_max: Duration::from_millis(200),
        ..Options::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_are_split_to_fit_the_frame_limit() {
    bounded(async {
        let (tx, mut rx) = mpsc::unbounded_channel::<PeerMessage>();
        let service = Arc::new(MemKv {
            peer_tx: Some(tx),
            ..MemKv::default()
        });
        let server = Server::start(service, options()).await;
        let (report_tx, mut unreachable) = mpsc::unbounded_channel();
        let link = PeerSender::spawn(
            identity(1),
            2,
            server.addr.to_string(),
            &options(),
            move |p| {
                let _ = report_tx.send(p);
            },
        )
        .unwrap();

        // Forty 20 KiB messages queued at once: over twelve frames' worth,
        // with one oversized message in the middle.
        let mut sent = Vec::new();
        for i in 0..40u8 {
            let m = Bytes::from(vec![i; 20 << 10]);
            assert!(link.send(m.clone()));
            sent.push(m);
            if i == 20 {
                assert!(link.send(Bytes::from(vec![0xff; LIMIT])));
            }
        }
        let mut got = Vec::new();
        let mut frames = 0;
        while got.len() < sent.len() {
            let m = rx.recv().await.unwrap();
            frames += 1;
            let bytes: usize = m.raft_messages.iter().map(Bytes::len).sum();
            assert!(bytes < LIMIT, "a frame carried {bytes} bytes of messages");
            got.extend(m.raft_messages);
        }
        assert_eq!(got, sent, "every message that fits arrives, in order");
        assert!(frames >= 13, "{frames} frames");
        assert_eq!(
            unreachable.recv().await,
            Some(2),
            "the oversized one is reported"
        );
        assert!(link.is_connected(), "the link stayed up");
        server.stop().await;
    })
    .await;
}
