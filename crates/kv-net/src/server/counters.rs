//! How often a listener's limits were hit: counters a metrics exporter
//! reads (`Listener::counters`), and tests.

use std::sync::atomic::{AtomicU64, Ordering};

/// Times each limit of [`crate::Options`] triggered on one listener. Cheap
/// to share (`Arc`); every field only grows.
#[derive(Debug, Default)]
pub struct Counters {
    /// Connections over `max_connections`: told so and closed, or (over the
    /// overflow too) closed at once.
    pub connections_refused: AtomicU64,
    /// Connections closed for sending no whole first frame (or TLS
    /// handshake) within `handshake_timeout`.
    pub handshake_timeouts: AtomicU64,
    /// Connections closed for a frame not complete within `frame_timeout`
    /// (slowloris).
    pub frame_timeouts: AtomicU64,
    /// Client connections closed after `idle_timeout` without a request.
    pub idle_closed: AtomicU64,
    /// Times a connection was not read further because its requests and
    /// responses held `max_bytes_in_flight_per_connection`, or its
    /// requests `max_in_flight_per_connection`.
    pub in_flight_waits: AtomicU64,
}

impl Counters {
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// `(name, value)` of every counter, for exporters; the names are the
    /// values of the `limit` label of `flashkv_net_limit_hits_total`.
    #[must_use]
    pub fn snapshot(&self) -> [(&'static str, u64); 5] {
        let v = |c: &AtomicU64| c.load(Ordering::Relaxed);
        [
            ("connections", v(&self.connections_refused)),
            ("handshake_timeout", v(&self.handshake_timeouts)),
            ("frame_timeout", v(&self.frame_timeouts)),
            ("idle_timeout", v(&self.idle_closed)),
            ("in_flight", v(&self.in_flight_waits)),
        ]
    }
}
