//! The peer handshake (SPEC sections 6 and 10): peer traffic is taken only
//! on a connection whose first frame was an accepted `Hello`, and only in
//! the name of that member; any frame the connection is not entitled to
//! send closes it and reaches nothing. Clients need no handshake.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{MemKv, Server, TEST_CLUSTER, bounded, get, get_value, put};
use kv_net::proto::{Frame, Hello, PeerMessage, Request, SnapshotChunk};
use kv_net::{ClientConn, Options, PROTOCOL_VERSION};
use protobuf::Message as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

fn encode(frame: &Frame) -> Vec<u8> {
    let body = frame.write_to_bytes().unwrap();
    let mut out = u32::try_from(body.len()).unwrap().to_be_bytes().to_vec();
    out.extend_from_slice(&body);
    out
}

fn hello(cluster_id: u64, node_id: u64) -> Frame {
    let mut h = Hello::new();
    h.protocol_version = PROTOCOL_VERSION;
    h.cluster_id = cluster_id;
    h.node_id = node_id;
    let mut f = Frame::new();
    f.set_hello(h);
    f
}

fn peer(from: u64, payload: &'static [u8]) -> Frame {
    let mut m = PeerMessage::new();
    m.from = from;
    m.to = 2;
    m.raft_messages = vec![Bytes::from_static(payload)];
    let mut f = Frame::new();
    f.set_peer(m);
    f
}

fn chunk(from: u64) -> Frame {
    let mut c = SnapshotChunk::new();
    c.from = from;
    c.to = 2;
    c.snapshot_id = 1;
    c.data = Bytes::from_static(b"data");
    let mut f = Frame::new();
    f.set_snapshot_chunk(c);
    f
}

fn request(r: Request) -> Frame {
    let mut f = Frame::new();
    f.set_request(r);
    f
}

/// Sends `frames` on one connection, then waits (bounded) for the server to
/// close it; true when it did.
async fn sent_then_closed(addr: &str, frames: &[Frame]) -> bool {
    let mut s = TcpStream::connect(addr).await.unwrap();
    for f in frames {
        if s.write_all(&encode(f)).await.is_err() {
            return true;
        }
    }
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

struct Fixture {
    server: Server,
    addr: String,
    peers: mpsc::UnboundedReceiver<PeerMessage>,
    chunks: mpsc::UnboundedReceiver<SnapshotChunk>,
}

async fn fixture() -> Fixture {
    let (peer_tx, peers) = mpsc::unbounded_channel();
    let (chunk_tx, chunks) = mpsc::unbounded_channel();
    let service = Arc::new(MemKv {
        peer_tx: Some(peer_tx),
        chunk_tx: Some(chunk_tx),
        ..MemKv::default()
    });
    let server = Server::start(service, Options::default()).await;
    let addr = server.addr.to_string();
    Fixture {
        server,
        addr,
        peers,
        chunks,
    }
}

impl Fixture {
    /// Nothing reached the service; and it still serves clients.
    async fn nothing_delivered(&mut self) {
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(self.peers.try_recv().is_err(), "a raft message got through");
        assert!(
            self.chunks.try_recv().is_err(),
            "a snapshot chunk got through"
        );
        let c = ClientConn::connect(&self.addr, &Options::default())
            .await
            .unwrap();
        c.call(put("k", "v")).await.unwrap();
        assert_eq!(
            get_value(&c.call(get("k")).await.unwrap()),
            Some("v".into())
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_traffic_without_a_handshake_is_refused() {
    bounded(async {
        let mut f = fixture().await;
        assert!(sent_then_closed(&f.addr, &[peer(1, b"m")]).await);
        f.nothing_delivered().await;
        assert!(sent_then_closed(&f.addr, &[chunk(1)]).await);
        f.nothing_delivered().await;
        // A client's hello (node 0) or request does not make it a peer.
        assert!(sent_then_closed(&f.addr, &[hello(TEST_CLUSTER, 0), peer(1, b"m")]).await);
        f.nothing_delivered().await;
        assert!(sent_then_closed(&f.addr, &[request(put("a", "b")), peer(1, b"m")]).await);
        f.nothing_delivered().await;
        f.server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_handshake_closes_the_connection() {
    bounded(async {
        let mut f = fixture().await;
        // Another cluster, a non-member, and an old protocol version.
        assert!(sent_then_closed(&f.addr, &[hello(TEST_CLUSTER + 1, 1), peer(1, b"m")]).await);
        f.nothing_delivered().await;
        assert!(sent_then_closed(&f.addr, &[hello(TEST_CLUSTER, 99), peer(99, b"m")]).await);
        f.nothing_delivered().await;
        let mut old = hello(TEST_CLUSTER, 1);
        old.mut_hello().protocol_version = 1;
        assert!(sent_then_closed(&f.addr, &[old, peer(1, b"m")]).await);
        f.nothing_delivered().await;
        // A hello that is not the first frame.
        assert!(sent_then_closed(&f.addr, &[request(get("k")), hello(TEST_CLUSTER, 1)]).await);
        f.nothing_delivered().await;
        f.server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_speaks_only_for_itself() {
    bounded(async {
        let mut f = fixture().await;
        // Accepted: frames in its own name get through.
        let mut s = TcpStream::connect(&f.addr).await.unwrap();
        for frame in [hello(TEST_CLUSTER, 1), peer(1, b"ok"), chunk(1)] {
            s.write_all(&encode(&frame)).await.unwrap();
        }
        let m = tokio::time::timeout(Duration::from_secs(2), f.peers.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(m.raft_messages, vec![Bytes::from_static(b"ok")]);
        assert_eq!(f.chunks.recv().await.unwrap().from, 1);
        drop(s);
        // In another member's name, or a second hello, or a client request:
        // closed, and what came after is not read.
        for frames in [
            vec![hello(TEST_CLUSTER, 1), peer(3, b"forged")],
            vec![hello(TEST_CLUSTER, 1), chunk(3)],
            vec![
                hello(TEST_CLUSTER, 1),
                hello(TEST_CLUSTER, 3),
                peer(3, b"forged"),
            ],
            vec![
                hello(TEST_CLUSTER, 1),
                request(put("x", "y")),
                peer(1, b"after"),
            ],
        ] {
            assert!(sent_then_closed(&f.addr, &frames).await, "{frames:?}");
            f.nothing_delivered().await;
        }
        // The service may refuse a batch too; that closes the connection.
        assert!(sent_then_closed(&f.addr, &[hello(TEST_CLUSTER, 1), peer(1, b"refuse")]).await);
        f.nothing_delivered().await;
        f.server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_need_no_handshake_and_may_say_hello() {
    bounded(async {
        let f = fixture().await;
        let plain = ClientConn::connect(&f.addr, &Options::default())
            .await
            .unwrap();
        plain.call(put("a", "1")).await.unwrap();
        let mut s = TcpStream::connect(&f.addr).await.unwrap();
        s.write_all(&encode(&hello(0, 0))).await.unwrap();
        let mut r = get("a");
        r.id = 5;
        s.write_all(&encode(&request(r))).await.unwrap();
        let mut len = [0u8; 4];
        s.read_exact(&mut len).await.unwrap();
        let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
        s.read_exact(&mut body).await.unwrap();
        let frame = Frame::parse_from_bytes(&body).unwrap();
        assert_eq!(frame.response().id, 5);
        assert_eq!(get_value(frame.response()), Some("1".into()));
        f.server.stop().await;
    })
    .await;
}
