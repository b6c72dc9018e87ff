//! `kv-gateway`: the HTTP/JSON gateway of SPEC section 9 (`kvd
//! --http-listen`), with `/metrics`, `/livez`, `/readyz` and a status page.
//!
//! The gateway is a client of the cluster: it answers HTTP requests with
//! [`kv_client`] calls that start at this node, and kv-client follows the
//! not-leader hints, so a follower forwards writes and linearizable reads to
//! the leader itself and `curl` against any node just works.
//!
//! # Layout
//!
//! - [`api`]: the data routes (`/put`, `/batchput`, `/get`, `/delete`,
//!   `/range`, `/cas`, `/search`, `/similar`), JSON in and out, with bounded, validated input.
//! - [`reply`]: how an outcome becomes a status code and a JSON body
//!   (definite failures 503, unknown outcomes 504, bad input 400).
//! - [`health`]: `/livez`, `/readyz`, `/raft/status`, `/metrics`.
//! - [`page`]: `GET /` and `/api/cluster`, the status page and its data.
//! - [`rates`]: request rates and latency percentiles over the last minute,
//!   sampled from the metrics registry.
//! - [`traffic`]: the gateway's own request metrics.
//! - [`serve`]: the accept loop (plain or TLS, HTTP/1.1) and shutdown.
//!
//! # Limits
//!
//! - Request bodies are capped at [`Options::max_body_bytes`]; a range
//!   answer at [`Options::max_range`] pairs and about
//!   [`Options::max_range_bytes`] (`"more":true` beyond); a request,
//!   its body read included, at [`Options::request_timeout`]; headers must
//!   arrive within 10 s; 1,024 connections at once.
//! - A client that does not read its answer holds its connection (and
//!   the answer's memory) until it closes it: hyper has no write timeout.
//! - `reverse` ranges are read whole and reversed here: ranges of more
//!   than [`Options::max_range`] keys are refused with 400.
//! - `ttl_ms` is refused with 400 until leases exist (SPEC section 8).
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod api;
pub mod health;
pub mod page;
pub mod rates;
pub mod reply;
mod serve;
pub mod traffic;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::{delete, get, post};
use parking_lot::Mutex;

pub use serve::serve;

/// Gateway tunables. Start from [`Options::new`].
#[derive(Clone)]
pub struct Options {
    /// Where the gateway's clients start: this node's client address first.
    pub endpoints: Vec<String>,
    /// Options of those clients (timeout, TLS towards the nodes). Their
    /// token is replaced per request by the caller's bearer token.
    pub client: kv_client::Options,
    /// The token the gateway's own calls (member list, status) use on a
    /// node that checks tokens: the status page needs `admin` for the
    /// member list.
    pub own_token: Option<String>,
    /// The node's metrics, for `/metrics` and the status page's rates.
    pub metrics: Option<prometheus::Registry>,
    /// Largest request body accepted.
    pub max_body_bytes: usize,
    /// Most pairs in one `/range` answer.
    pub max_range: usize,
    /// About the most bytes of keys and values in one `/range` answer
    /// (`"more":true` beyond).
    pub max_range_bytes: usize,
    /// Bound on a request, its body read included (504 beyond).
    pub request_timeout: Duration,
    /// `/readyz` fails while the node lags its leader by more entries.
    pub ready_lag: u64,
    /// TLS for the gateway's own port (`kvd --cert-file`).
    pub tls: Option<tokio_rustls::TlsAcceptor>,
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("endpoints", &self.endpoints)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("max_range", &self.max_range)
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

impl Options {
    /// Defaults for a gateway in front of the node at `endpoint`.
    #[must_use]
    pub fn new(endpoint: impl Into<String>) -> Options {
        Options {
            endpoints: vec![endpoint.into()],
            client: kv_client::Options::default(),
            own_token: None,
            metrics: None,
            max_body_bytes: 16 << 20,
            max_range: 10_000,
            max_range_bytes: 8 << 20,
            request_timeout: Duration::from_secs(30),
            ready_lag: 1000,
            tls: None,
        }
    }
}

/// Clients kept per distinct bearer token (beyond, the cache is emptied).
const MAX_CLIENTS: usize = 64;

/// What every handler shares.
#[derive(Clone)]
pub struct Gateway {
    inner: Arc<Inner>,
}

struct Inner {
    opts: Options,
    /// (token, serializable) → client.
    clients: Mutex<HashMap<(Option<String>, bool), kv_client::Client>>,
    rates: rates::Rates,
    http: traffic::HttpMetrics,
}

impl Gateway {
    /// A gateway with `opts`; starts the rate sampler (needs a tokio
    /// runtime).
    #[must_use]
    pub fn new(opts: Options) -> Gateway {
        let rates = rates::Rates::start(opts.metrics.clone(), Duration::from_secs(1));
        let http = traffic::HttpMetrics::new(opts.metrics.as_ref());
        Gateway {
            inner: Arc::new(Inner {
                opts,
                clients: Mutex::new(HashMap::new()),
                rates,
                http,
            }),
        }
    }

    /// The gateway's options.
    #[must_use]
    pub fn options(&self) -> &Options {
        &self.inner.opts
    }

    /// A client that sends `token` (the caller's bearer token).
    pub(crate) fn client(&self, token: Option<&str>, serializable: bool) -> kv_client::Client {
        let key = (token.map(str::to_owned), serializable);
        let mut clients = self.inner.clients.lock();
        if let Some(c) = clients.get(&key) {
            return c.clone();
        }
        if clients.len() >= MAX_CLIENTS {
            clients.clear();
        }
        let mut opts = self.inner.opts.client.clone();
        opts.token.clone_from(&key.0);
        opts.serializable = serializable;
        let c = kv_client::Client::new(self.inner.opts.endpoints.clone(), opts);
        clients.insert(key, c.clone());
        c
    }

    /// The client of the gateway's own calls.
    pub(crate) fn own_client(&self) -> kv_client::Client {
        self.client(self.inner.opts.own_token.as_deref(), false)
    }

    /// This node's client address.
    pub(crate) fn local_endpoint(&self) -> &str {
        self.inner.opts.endpoints.first().map_or("", String::as_str)
    }

    pub(crate) fn rates(&self) -> &rates::Rates {
        &self.inner.rates
    }

    pub(crate) fn http_metrics(&self) -> &traffic::HttpMetrics {
        &self.inner.http
    }

    /// The routes of SPEC section 9.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/put", post(api::put))
            .route("/batchput", post(api::batch_put))
            .route("/get", get(api::get))
            .route("/delete", delete(api::delete))
            .route("/range", get(api::range))
            .route("/cas", post(api::cas))
            .route("/search", get(api::search))
            .route("/similar", get(api::similar))
            .route("/raft/status", get(health::raft_status))
            .route("/metrics", get(health::metrics))
            .route("/livez", get(health::livez))
            .route("/readyz", get(health::readyz))
            .route("/api/cluster", get(page::cluster))
            .route("/", get(page::index))
            .route_layer(axum::middleware::from_fn_with_state(
                self.clone(),
                traffic::track,
            ))
            .fallback(reply::not_found)
            .method_not_allowed_fallback(reply::method_not_allowed)
            .layer(axum::extract::DefaultBodyLimit::max(
                self.inner.opts.max_body_bytes,
            ))
            .with_state(self.clone())
    }
}
