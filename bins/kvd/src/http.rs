//! `--http-listen`: the HTTP/JSON gateway (kv-gateway) beside the node.

use std::net::SocketAddr;

use anyhow::{Context, Result};
use kv_server::{Config, Server};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A running gateway; [`Http::stop`] ends it.
pub struct Http {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

/// The address the gateway's client dials to reach this node: the
/// advertise address when one is given (it is the name in the node's
/// certificate), else the bound address, with a wildcard IP made loopback.
fn own_endpoint(config: &Config, bound: SocketAddr) -> String {
    if let Some(a) = &config.advertise {
        return a.clone();
    }
    let mut addr = bound;
    if addr.ip().is_unspecified() {
        addr.set_ip(if addr.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    addr.to_string()
}

/// Binds the gateway's address; before the node starts, so that an
/// unusable address stops kvd before the data directory is touched.
///
/// # Errors
///
/// The address cannot be bound.
pub async fn bind(listen: &str) -> Result<tokio::net::TcpListener> {
    kv_server::bind_tcp(listen)
        .await
        .with_context(|| format!("cannot listen on --http-listen {listen}"))
}

/// Serves the gateway for `server` on `listener` until `signal` turns true
/// (the node's stop signal: the gateway stops accepting while the node
/// winds down) or [`Http::stop`]. `client_tls` is how the gateway's client
/// reaches nodes whose client port takes TLS.
///
/// # Errors
///
/// The listener's address cannot be read.
pub fn start(
    listener: tokio::net::TcpListener,
    config: &Config,
    server: &Server,
    client_tls: Option<kv_server::ClientTls>,
    mut signal: tokio::sync::watch::Receiver<bool>,
) -> Result<Http> {
    let bound = listener.local_addr().context("--http-listen address")?;
    let mut opts = kv_gateway::Options::new(own_endpoint(config, server.local_addr()));
    opts.client.net.client_tls = client_tls;
    opts.own_token = config
        .tokens
        .as_ref()
        .and_then(|t| t.own_read_token())
        .map(str::to_owned);
    opts.metrics = Some(server.metrics().registry().clone());
    opts.tls = config.net.server_tls.as_ref().map(|t| t.acceptor().clone());
    let tls = opts.tls.is_some();
    let gateway = kv_gateway::Gateway::new(opts);
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(kv_gateway::serve(listener, gateway, async move {
        tokio::select! {
            _ = stopped => {}
            _ = signal.wait_for(|s| *s) => {}
        }
    }));
    tracing::info!(http_listen = %bound, tls, "HTTP gateway started");
    Ok(Http { stop, task })
}

impl Http {
    /// Stops accepting, lets open requests finish (bounded) and returns.
    pub async fn stop(self) {
        drop(self.stop);
        if let Err(e) = self.task.await {
            tracing::warn!(error = %e, "the HTTP gateway failed");
        }
    }
}
