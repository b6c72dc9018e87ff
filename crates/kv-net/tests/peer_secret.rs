//! Peer authentication by a shared secret (SPEC section 10): links whose
//! ends hold the same secret deliver; a dialer with another secret, or none,
//! delivers nothing; a dialer with a secret does not talk to an acceptor
//! that cannot prove it; a recorded handshake replayed against a new
//! challenge is refused.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{MemKv, Server, TEST_CLUSTER, bounded, identity};
use kv_net::auth::{Binding, Side, nonce};
use kv_net::proto::{Frame, Hello, PeerMessage, frame};
use kv_net::{Options, PROTOCOL_VERSION, PeerSecret, PeerSender};
use protobuf::Message as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

fn secret(s: &str) -> PeerSecret {
    PeerSecret::new(s.as_bytes()).expect("secret")
}

fn options(secret: Option<PeerSecret>) -> Options {
    Options {
        peer_backoff_initial: Duration::from_millis(20),
        peer_backoff_max: Duration::from_millis(200),
        connect_timeout: Duration::from_millis(500),
        handshake_timeout: Duration::from_millis(500),
        peer_secret: secret,
        ..Options::default()
    }
}

async fn server(secret: Option<PeerSecret>) -> (Server, mpsc::UnboundedReceiver<PeerMessage>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let service = Arc::new(MemKv {
        peer_tx: Some(tx),
        ..MemKv::default()
    });
    (Server::start(service, options(secret)).await, rx)
}

/// Sends messages from node 1 to node 2 for `for_how_long`; the messages
/// that arrived.
async fn deliver(
    addr: &str,
    dialer: Option<PeerSecret>,
    rx: &mut mpsc::UnboundedReceiver<PeerMessage>,
    for_how_long: Duration,
) -> usize {
    let link = PeerSender::spawn(identity(1), 2, addr, &options(dialer), |_| {}).expect("spawn");
    let deadline = tokio::time::Instant::now() + for_how_long;
    let mut got = 0;
    while tokio::time::Instant::now() < deadline {
        link.send(Bytes::from_static(b"raft"));
        tokio::time::sleep(Duration::from_millis(20)).await;
        while let Ok(m) = rx.try_recv() {
            assert_eq!((m.from, m.to), (1, 2));
            got += m.raft_messages.len();
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_holding_the_same_secret_deliver() {
    bounded(async {
        let s = secret("a shared peer secret");
        let (srv, mut rx) = server(Some(s.clone())).await;
        let got = deliver(
            &srv.addr.to_string(),
            Some(s),
            &mut rx,
            Duration::from_millis(600),
        )
        .await;
        assert!(got > 0, "nothing delivered with the right secret");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dialer_with_another_secret_or_none_delivers_nothing() {
    bounded(async {
        let (srv, mut rx) = server(Some(secret("a shared peer secret"))).await;
        let addr = srv.addr.to_string();
        let wrong = Some(secret("another peer secret!"));
        assert_eq!(
            deliver(&addr, wrong, &mut rx, Duration::from_millis(1500)).await,
            0
        );
        assert_eq!(
            deliver(&addr, None, &mut rx, Duration::from_millis(1500)).await,
            0
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dialer_with_a_secret_sends_nothing_to_a_node_that_cannot_prove_it() {
    bounded(async {
        let (srv, mut rx) = server(None).await;
        let got = deliver(
            &srv.addr.to_string(),
            Some(secret("a shared peer secret")),
            &mut rx,
            Duration::from_millis(1500),
        )
        .await;
        assert_eq!(got, 0);
    })
    .await;
}

fn encode(frame: &Frame) -> Vec<u8> {
    let body = frame.write_to_bytes().unwrap();
    let mut out = u32::try_from(body.len()).unwrap().to_be_bytes().to_vec();
    out.extend_from_slice(&body);
    out
}

async fn read_frame(s: &mut TcpStream) -> Option<Frame> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).await.ok()?;
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut body).await.ok()?;
    Frame::parse_from_bytes(&body).ok()
}

fn hello(nonce: &[u8], proof: &[u8]) -> Frame {
    let mut h = Hello::new();
    h.protocol_version = PROTOCOL_VERSION;
    h.cluster_id = TEST_CLUSTER;
    h.node_id = 1;
    h.nonce = nonce.to_vec().into();
    h.proof = proof.to_vec().into();
    let mut f = Frame::new();
    f.set_hello(h);
    f
}

fn raft(payload: &'static [u8]) -> Frame {
    let mut m = PeerMessage::new();
    m.from = 1;
    m.to = 2;
    m.raft_messages = vec![Bytes::from_static(payload)];
    let mut f = Frame::new();
    f.set_peer(m);
    f
}

/// Opens a connection with `dialer_nonce`; returns it and the acceptor's
/// nonce from its challenge (whose proof is checked).
async fn challenged(addr: &str, s: &PeerSecret, dialer_nonce: &[u8]) -> (TcpStream, Vec<u8>) {
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(&encode(&hello(dialer_nonce, b"")))
        .await
        .unwrap();
    let Some(Frame {
        body: Some(frame::Body::Hello(ch)),
        ..
    }) = read_frame(&mut c).await
    else {
        panic!("no challenge");
    };
    assert_eq!(ch.node_id, 2);
    let b = Binding {
        cluster_id: TEST_CLUSTER,
        dialer: 1,
        acceptor: 2,
        dialer_nonce,
        acceptor_nonce: &ch.nonce,
    };
    assert!(
        s.verify(Side::Acceptor, &b, &ch.proof),
        "the acceptor's proof"
    );
    (c, ch.nonce.to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorded_handshake_replayed_is_refused() {
    bounded(async {
        let s = secret("a shared peer secret");
        let (srv, mut rx) = server(Some(s.clone())).await;
        let addr = srv.addr.to_string();
        let nd = nonce();

        // The handshake as a member makes it, recorded.
        let (mut c, na) = challenged(&addr, &s, &nd).await;
        let b = Binding {
            cluster_id: TEST_CLUSTER,
            dialer: 1,
            acceptor: 2,
            dialer_nonce: &nd,
            acceptor_nonce: &na,
        };
        let recorded = s.prove(Side::Dialer, &b);
        c.write_all(&encode(&hello(&nd, &recorded))).await.unwrap();
        c.write_all(&encode(&raft(b"genuine"))).await.unwrap();
        let m = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("genuine message in time")
            .expect("message");
        assert_eq!(m.raft_messages, vec![Bytes::from_static(b"genuine")]);

        // Replayed on a new connection: the challenge is new, the proof is
        // not, and the connection is closed with nothing delivered.
        let (mut c2, na2) = challenged(&addr, &s, &nd).await;
        assert_ne!(na, na2, "a fresh challenge");
        c2.write_all(&encode(&hello(&nd, &recorded))).await.unwrap();
        let _ = c2.write_all(&encode(&raft(b"replayed"))).await;
        let mut buf = [0u8; 64];
        let closed = tokio::time::timeout(Duration::from_secs(5), c2.read(&mut buf)).await;
        assert!(
            matches!(closed, Ok(Ok(0) | Err(_))),
            "connection left open: {closed:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(rx.try_recv().is_err(), "a replayed handshake delivered");

        // Nor does skipping the proof get raft traffic through.
        let (mut c3, _) = challenged(&addr, &s, &nonce()).await;
        let _ = c3.write_all(&encode(&raft(b"unproven"))).await;
        let closed = tokio::time::timeout(Duration::from_secs(5), c3.read(&mut buf)).await;
        assert!(
            matches!(closed, Ok(Ok(0) | Err(_))),
            "connection left open: {closed:?}"
        );
        assert!(rx.try_recv().is_err(), "an unproven connection delivered");
    })
    .await;
}
