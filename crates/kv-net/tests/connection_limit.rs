//! Limits that hold under abuse: the connection limit refuses clients
//! clearly (and still lets peers in), connections that send nothing or
//! trickle a frame are closed, and the receive budget bounds what partly
//! received large frames hold.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{MemKv, Server, TEST_CLUSTER, bounded, get, get_value, put};
use kv_net::proto::{ErrorCode, Frame, Hello, PeerMessage, Request, response};
use kv_net::{ClientConn, Options, PROTOCOL_VERSION};
use protobuf::Message as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;

fn encode(frame: &Frame) -> Vec<u8> {
    let body = frame.write_to_bytes().unwrap();
    let mut out = u32::try_from(body.len()).unwrap().to_be_bytes().to_vec();
    out.extend_from_slice(&body);
    out
}

fn hello(node_id: u64) -> Frame {
    let mut h = Hello::new();
    h.protocol_version = PROTOCOL_VERSION;
    h.cluster_id = TEST_CLUSTER;
    h.node_id = node_id;
    let mut f = Frame::new();
    f.set_hello(h);
    f
}

fn request_frame(mut r: Request, id: u64) -> Frame {
    r.id = id;
    let mut f = Frame::new();
    f.set_request(r);
    f
}

/// Waits (bounded by `within`) for the server to close `s`; the time it
/// took, or `None` if it stayed open.
async fn closed_within(s: &mut TcpStream, within: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(start + within, s.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0) | Err(_)) => return Some(start.elapsed()),
            Ok(Ok(_)) => {}
        }
    }
}

fn error_of(resp: &kv_net::proto::Response) -> Option<(ErrorCode, String)> {
    match &resp.result {
        Some(response::Result::Error(e)) => Some((
            e.code.enum_value().unwrap_or(ErrorCode::UNKNOWN),
            e.message.clone(),
        )),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_over_the_limit_is_told_so_and_nothing_is_applied() {
    bounded(async {
        let service = Arc::new(MemKv::default());
        let options = Options {
            max_connections: Some(2),
            ..Options::default()
        };
        let server = Server::start(service.clone(), options).await;
        let addr = server.addr.to_string();
        let client = Options::default();
        let a = ClientConn::connect(&addr, &client).await.unwrap();
        let b = ClientConn::connect(&addr, &client).await.unwrap();
        assert!(a.call(put("a", "1")).await.unwrap().has_put());
        assert!(b.call(put("b", "1")).await.unwrap().has_put());

        // The third is answered at once, definitely, and closed.
        let c = ClientConn::connect(&addr, &client).await.unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(2), c.call(put("c", "1")))
            .await
            .expect("a connection over the limit must be answered, not left waiting")
            .unwrap();
        let (code, message) = error_of(&resp).expect("an error answer");
        assert_eq!(code, ErrorCode::UNAVAILABLE, "{message}");
        assert!(message.contains("too many connections"), "{message}");
        let e = resp.error();
        assert!(!e.outcome_unknown, "a refusal is definite");
        assert!(
            service.map.lock().unwrap().get(&Bytes::from("c")).is_none(),
            "the refused write was applied"
        );
        let deadline = Instant::now() + Duration::from_secs(2);
        while !c.is_closed() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(c.is_closed(), "the refused connection stays open");

        // The ones within the limit keep working; a freed slot is reused.
        assert!(a.call(put("a", "2")).await.unwrap().has_put());
        drop(a);
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let d = ClientConn::connect(&addr, &client).await.unwrap();
            let resp = d.call(put("d", "1")).await.unwrap();
            if resp.has_put() {
                break;
            }
            assert!(Instant::now() < deadline, "the freed slot was never reused");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(
            get_value(&b.call(get("d")).await.unwrap()),
            Some("1".into())
        );
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_is_admitted_over_the_limit() {
    bounded(async {
        let (peer_tx, mut peers) = mpsc::unbounded_channel();
        let service = Arc::new(MemKv {
            peer_tx: Some(peer_tx),
            ..MemKv::default()
        });
        let options = Options {
            max_connections: Some(1),
            ..Options::default()
        };
        let server = Server::start(service, options).await;
        let addr = server.addr.to_string();
        let holder = ClientConn::connect(&addr, &Options::default())
            .await
            .unwrap();
        assert!(holder.call(put("a", "1")).await.unwrap().has_put());

        let mut s = TcpStream::connect(&addr).await.unwrap();
        let mut m = PeerMessage::new();
        m.from = 1;
        m.to = 2;
        m.raft_messages = vec![Bytes::from_static(b"raft")];
        let mut peer = Frame::new();
        peer.set_peer(m);
        s.write_all(&encode(&hello(1))).await.unwrap();
        s.write_all(&encode(&peer)).await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), peers.recv())
            .await
            .expect("the peer's message was not delivered over the limit")
            .unwrap();
        assert_eq!(got.from, 1);
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_sends_nothing_is_closed_and_an_idle_client_is_not() {
    bounded(async {
        let options = Options {
            handshake_timeout: Duration::from_millis(300),
            ..Options::default()
        };
        let server = Server::start(Arc::new(MemKv::default()), options).await;
        let addr = server.addr.to_string();
        let client = ClientConn::connect(&addr, &Options::default())
            .await
            .unwrap();

        let mut silent = TcpStream::connect(&addr).await.unwrap();
        let took = closed_within(&mut silent, Duration::from_secs(5))
            .await
            .expect("a silent connection was never closed");
        assert!(took >= Duration::from_millis(250), "closed early: {took:?}");

        // A client that said hello and stayed idle past the timeout works.
        assert!(
            !client.is_closed(),
            "an idle client's connection was closed"
        );
        assert!(client.call(put("k", "v")).await.unwrap().has_put());
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickled_frame_is_cut_off_while_others_are_served() {
    bounded(async {
        let options = Options {
            frame_timeout: Duration::from_millis(500),
            ..Options::default()
        };
        let server = Server::start(Arc::new(MemKv::default()), options).await;
        let addr = server.addr.to_string();
        let client = ClientConn::connect(&addr, &Options::default())
            .await
            .unwrap();

        // Slowloris: a whole hello, then a request one byte every 50 ms.
        let mut slow = TcpStream::connect(&addr).await.unwrap();
        slow.write_all(&encode(&hello(0))).await.unwrap();
        let bytes = encode(&request_frame(put("slow", "x"), 1));
        let trickle = tokio::spawn(async move {
            let start = Instant::now();
            for b in bytes {
                if slow.write_all(&[b]).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let closed = closed_within(&mut slow, Duration::from_secs(5)).await;
            (start.elapsed(), closed)
        });
        for i in 0..20 {
            let key = format!("k{i}");
            assert!(client.call(put(&key, "v")).await.unwrap().has_put());
        }
        let (elapsed, closed) = trickle.await.unwrap();
        assert!(
            closed.is_some(),
            "the trickling connection was never closed"
        );
        assert!(
            elapsed < Duration::from_secs(5),
            "the trickled frame took {elapsed:?} before the connection closed"
        );
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partly_sent_large_frames_wait_for_the_receive_budget() {
    bounded(async {
        // Room for two frames of 1 MiB: two stalled senders hold all of it.
        let options = Options {
            max_frame_length: 1 << 20,
            max_receive_buffer: 2 << 20,
            frame_timeout: Duration::from_secs(1),
            snapshot_chunk_size: 512 << 10,
            ..Options::default()
        };
        let service = Arc::new(MemKv::default());
        let server = Server::start(service.clone(), options).await;
        let addr = server.addr.to_string();
        let mut stalled = Vec::new();
        for _ in 0..2 {
            let mut s = TcpStream::connect(&addr).await.unwrap();
            s.write_all(&encode(&hello(0))).await.unwrap();
            s.write_all(&((1u32 << 20) - 16).to_be_bytes())
                .await
                .unwrap();
            s.write_all(&[0u8; 1024]).await.unwrap();
            stalled.push(s);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;

        // A whole large request waits until a stalled sender is cut off.
        let client = ClientConn::connect(&addr, &Options::default())
            .await
            .unwrap();
        let start = Instant::now();
        let big = "x".repeat(600 << 10);
        let resp = client.call(put("big", &big)).await.unwrap();
        let waited = start.elapsed();
        assert!(resp.has_put(), "{resp:?}");
        assert!(
            waited >= Duration::from_millis(500),
            "a large frame was buffered beyond the budget after {waited:?}"
        );
        for mut s in stalled {
            assert!(
                closed_within(&mut s, Duration::from_secs(3))
                    .await
                    .is_some(),
                "a stalled sender was not cut off"
            );
        }
        // Small requests never wait for the budget.
        assert!(client.call(put("small", "v")).await.unwrap().has_put());
        server.stop().await;
    })
    .await;
}
