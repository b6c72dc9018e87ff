//! Regression: one 24-byte frame from any TCP client stopped a node's raft.
//!
//! The frame is a `PeerMessage` holding a single `MsgHeartbeat` with term
//! 1,000,000 and commit 1,000,000,000, sent from a plain socket to a node's
//! client port without any handshake. Stepping it made raft-rs panic (commit
//! beyond the last index) and killed the raft thread, while the process
//! stayed up answering `raft node stopped`; two such frames to two nodes took
//! the cluster's writes down. Peer traffic is now accepted only after the
//! peer handshake: the connection is closed and nothing changes.

use std::time::{Duration, Instant};

use bytes::Bytes;
use kv_net::proto::{Frame, PeerMessage};
use protobuf::Message as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::{Cluster, serial};

/// A serialized raft-rs `eraftpb.Message`: `MsgHeartbeat` (type 8), term
/// 1,000,000, commit 1,000,000,000; `to` and `from` left out. Written by hand
/// so the test does not depend on raft-rs.
fn forged_heartbeat() -> Vec<u8> {
    let mut m = vec![0x08, 8]; // field 1 (msg_type), varint
    m.push(0x20); // field 4 (term), varint
    put_varint(&mut m, 1_000_000);
    m.push(0x40); // field 8 (commit), varint
    put_varint(&mut m, 1_000_000_000);
    m
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// The length-prefixed frame: a `PeerMessage` from node `from` to node `to`.
pub fn forged_frame(from: u64, to: u64) -> Vec<u8> {
    let mut message = PeerMessage::new();
    message.from = from;
    message.to = to;
    message.raft_messages = vec![Bytes::from(forged_heartbeat())];
    let mut frame = Frame::new();
    frame.set_peer(message);
    let body = frame.write_to_bytes().expect("encode");
    let mut out = u32::try_from(body.len())
        .expect("small")
        .to_be_bytes()
        .to_vec();
    out.extend_from_slice(&body);
    out
}

/// Sends `bytes` on a fresh plain connection; true when the node closed the
/// connection within `within`.
pub async fn send_and_see_closed(addr: &str, bytes: &[u8], within: Duration) -> bool {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(bytes).await.expect("write");
    let mut buf = [0u8; 256];
    let deadline = Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline.into(), s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_heartbeat_from_a_plain_socket_changes_nothing() {
    let _serial = serial();
    let mut c = Cluster::new(3, &[]);
    c.start_all();
    let leader = c.wait_leader(Duration::from_secs(20)).await;
    let client = c.client(Duration::from_secs(5));
    client.put("before", "1").await.expect("put before");

    let followers: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let mut closed = Vec::new();
    for &i in &followers {
        // The envelope names the target, as a real peer's would.
        let frame = forged_frame(c.nodes[leader].id, c.nodes[i].id);
        assert_eq!(frame.len(), 24);
        closed.push(send_and_see_closed(&c.nodes[i].listen, &frame, Duration::from_secs(2)).await);
    }
    // Give a dying raft thread time to be noticed.
    tokio::time::sleep(Duration::from_millis(500)).await;

    client.put("after", "2").await.unwrap_or_else(|e| {
        panic!(
            "the cluster no longer takes writes: {e}; logs:\n{}",
            c.logs()
        )
    });
    assert_eq!(
        client.get("after").await.expect("get"),
        Some(Bytes::from_static(b"2"))
    );
    for i in 0..3 {
        let status = client
            .status(&c.nodes[i].listen)
            .await
            .unwrap_or_else(|e| panic!("node {} stopped serving: {e}; logs:\n{}", i + 1, c.logs()));
        assert!(
            status.term < 1_000_000,
            "node {} took the forged term",
            i + 1
        );
    }
    let logs = c.logs();
    for n in &mut c.nodes {
        assert!(n.is_running(), "node {} exited; logs:\n{logs}", n.id);
    }
    assert!(!logs.contains("panicked"), "a node panicked; logs:\n{logs}");
    assert!(
        closed.iter().all(|&c| c),
        "the forging connection was left open: {closed:?}"
    );
}
