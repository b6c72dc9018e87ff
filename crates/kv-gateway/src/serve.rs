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

/// Serves `gateway` on `listener` until `shutdown` completes, then lets
/// open requests finish (bounded) and returns.
pub async fn serve(listener: TcpListener, gateway: Gateway, shutdown: impl Future<Output = ()>) {
    let router = gateway.router();
    let tls = gateway.options().tls.clone();
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut conns = JoinSet::new();
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
                let (router, tls) = (router.clone(), tls.clone());
                conns.spawn(async move {
                    let service = TowerToHyperService::new(router);
                    let mut http = hyper::server::conn::http1::Builder::new();
                    http.timer(TokioTimer::new()).header_read_timeout(HEADER_TIMEOUT);
                    let result = match tls {
                        None => http.serve_connection(TokioIo::new(stream), service).await,
                        Some(acceptor) => {
                            match tokio::time::timeout(HEADER_TIMEOUT, acceptor.accept(stream)).await {
                                Ok(Ok(s)) => http.serve_connection(TokioIo::new(s), service).await,
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
    let _ = tokio::time::timeout(GRACE, async { while conns.join_next().await.is_some() {} }).await;
    conns.abort_all();
}
