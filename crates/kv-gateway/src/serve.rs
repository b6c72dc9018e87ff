//! The accept loop: HTTP/1.1 over plain TCP or TLS, a cap on connections,
//! a bound on how long a client may take to send its headers (slowloris),
//! and a graceful stop.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::Gateway;

/// Connections served at once; more are closed at once.
const MAX_CONNECTIONS: usize = 1024;
/// A TLS handshake or a request's headers must arrive within this.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// In-flight requests get this long to finish after the stop.
const GRACE: Duration = Duration::from_secs(2);

/// Serves `gateway` on `listener` until `shutdown` completes, then stops
/// accepting, closes idle keep-alive connections, lets open requests finish
/// (bounded) and returns.
pub async fn serve(listener: TcpListener, gateway: Gateway, shutdown: impl Future<Output = ()>) {
    let router = gateway.router();
    let tls = gateway.options().tls.clone();
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut conns = JoinSet::new();
    let (stopping, stop) = tokio::sync::watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: back off.
                        tracing::warn!(error = %e, "gateway accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    tracing::debug!(%peer, "gateway connection refused: too many open");
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let (router, tls, stop) = (router.clone(), tls.clone(), stop.clone());
                conns.spawn(async move {
                    let result = match tls {
                        None => drive(stream, router, stop).await,
                        Some(acceptor) => {
                            match tokio::time::timeout(HEADER_TIMEOUT, acceptor.accept(stream)).await {
                                Ok(Ok(s)) => drive(s, router, stop).await,
                                Ok(Err(e)) => {
                                    tracing::debug!(%peer, error = %e, "gateway TLS handshake failed");
                                    return;
                                }
                                Err(_) => return,
                            }
                        }
                    };
                    if let Err(e) = result {
                        tracing::debug!(%peer, error = %e, "gateway connection ended");
                    }
                    drop(slot);
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    let _ = stopping.send(true);
    let _ = tokio::time::timeout(GRACE, async { while conns.join_next().await.is_some() {} }).await;
    conns.abort_all();
}

/// Serves one connection; when `stop` turns true, finishes the request in
/// progress and closes (idle keep-alive connections close at once).
async fn drive<I>(
    io: I,
    router: axum::Router,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Result<(), hyper::Error>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT);
    let conn = http.serve_connection(TokioIo::new(io), TowerToHyperService::new(router));
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => return r,
        _ = stop.wait_for(|s| *s) => {}
    }
    conn.as_mut().graceful_shutdown();
    conn.await
}
