//! The partition proxy: bytes flow while a link is open, are held (not
//! lost) while it is stalled, and connections are closed and refused while
//! it is cut.

use std::time::Duration;

use kv_jepsen::cluster::{Link, Proxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;

async fn echo_server() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

async fn round_trip(s: &mut TcpStream, msg: &[u8], within: Duration) -> Option<Vec<u8>> {
    s.write_all(msg).await.ok()?;
    let mut got = vec![0u8; msg.len()];
    timeout(within, s.read_exact(&mut got)).await.ok()?.ok()?;
    Some(got)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_link_holds_bytes_and_cut_link_closes() {
    let proxy = Proxy::start(echo_server().await).await.expect("proxy");
    let mut s = TcpStream::connect(&proxy.addr).await.expect("connect");
    let second = Duration::from_secs(1);
    assert_eq!(
        round_trip(&mut s, b"one", second).await.as_deref(),
        Some(&b"one"[..])
    );

    proxy.set(Link::Stalled);
    assert_eq!(
        round_trip(&mut s, b"two", Duration::from_millis(300)).await,
        None,
        "bytes crossed a stalled link"
    );
    proxy.set(Link::Open);
    let mut late = vec![0u8; 3];
    timeout(second, s.read_exact(&mut late))
        .await
        .expect("held bytes arrive after the stall")
        .expect("read");
    assert_eq!(&late, b"two");

    proxy.set(Link::Cut);
    let mut buf = [0u8; 8];
    let closed = timeout(second, s.read(&mut buf))
        .await
        .expect("closed promptly");
    assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");
    // New connections are refused (closed at once) while cut...
    let mut again = TcpStream::connect(&proxy.addr).await.expect("connect");
    assert_eq!(
        round_trip(&mut again, b"x", Duration::from_millis(300)).await,
        None
    );
    // ... and served once the link is open again.
    proxy.set(Link::Open);
    let mut healed = TcpStream::connect(&proxy.addr).await.expect("connect");
    assert_eq!(
        round_trip(&mut healed, b"three", second).await.as_deref(),
        Some(&b"three"[..])
    );
}
