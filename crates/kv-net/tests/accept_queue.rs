//! A burst of new connections larger than std's and tokio's default accept
//! queue (128) all complete at once, before the node accepts any of them.
//! With the default queue the kernel dropped the handshakes beyond it, and
//! those clients connected only after TCP's one-second retransmission
//! timeout: the one-second p99.9 `kvctl bench --clients 256` showed.

use std::time::Duration;

use kv_net::{LISTEN_BACKLOG, Listener, Options};
use tokio::net::TcpStream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_connections_fits_the_accept_queue() {
    const BURST: usize = 400;
    assert!(LISTEN_BACKLOG as usize >= BURST);
    // Bound and not yet accepting: every connection must wait in the
    // kernel's accept queue.
    let listener = Listener::bind("127.0.0.1:0", Options::default())
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let connects: Vec<_> = (0..BURST)
        .map(|_| {
            tokio::spawn(async move {
                tokio::time::timeout(Duration::from_millis(700), TcpStream::connect(addr)).await
            })
        })
        .collect();
    let mut open = Vec::new();
    for c in connects {
        if let Ok(Ok(s)) = c.await.expect("task") {
            open.push(s);
        }
    }
    assert_eq!(
        open.len(),
        BURST,
        "connections completed within 700 ms (the rest waited for a SYN retransmission)"
    );
    drop(listener);
}
