//! The gateway's own metrics: `flashkv_http_requests_total{route,code}` and
//! `flashkv_http_request_duration_seconds{route}`, recorded by a layer
//! around every matched route, in the node's registry.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

use crate::Gateway;

/// Latency buckets, in seconds: 100 µs to 10 s.
const BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// The HTTP request counters.
#[derive(Clone)]
pub struct HttpMetrics {
    requests: IntCounterVec,
    duration: HistogramVec,
}

impl HttpMetrics {
    /// Registered in `registry` (a private one without).
    ///
    /// # Panics
    ///
    /// Never: the names and labels are fixed and valid.
    #[must_use]
    pub fn new(registry: Option<&Registry>) -> HttpMetrics {
        let requests = IntCounterVec::new(
            Opts::new(
                "flashkv_http_requests_total",
                "HTTP requests answered by the gateway, by route and status code",
            ),
            &["route", "code"],
        )
        .expect("valid metric");
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "flashkv_http_request_duration_seconds",
                "Time the gateway took to answer an HTTP request",
            )
            .buckets(BUCKETS.to_vec()),
            &["route"],
        )
        .expect("valid metric");
        if let Some(r) = registry {
            // Registered once per registry: a second gateway on the same
            // registry keeps counters of its own that are not exported.
            let _ = r.register(Box::new(requests.clone()));
            let _ = r.register(Box::new(duration.clone()));
        }
        HttpMetrics { requests, duration }
    }

    /// Counts one answer of `route` with status `code` that took `elapsed`.
    pub fn record(&self, route: &str, code: &str, elapsed: std::time::Duration) {
        self.requests.with_label_values(&[route, code]).inc();
        self.duration
            .with_label_values(&[route])
            .observe(elapsed.as_secs_f64());
    }
}

/// Counts and times one request.
pub(crate) async fn track(State(gw): State<Gateway>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "other".to_owned(), |p| p.as_str().to_owned());
    let started = Instant::now();
    let limit = gw.options().request_timeout;
    let response = match tokio::time::timeout(limit, next.run(req)).await {
        Ok(r) => r,
        // The handler is dropped with its client call: a write may or may
        // not have been applied.
        Err(_) => crate::reply::ApiError::timed_out(limit).into_response(),
    };
    gw.http_metrics()
        .record(&route, response.status().as_str(), started.elapsed());
    response
}
