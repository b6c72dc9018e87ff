//! [`Metrics`]: the node's Prometheus registry, with the names of SPEC
//! section 9.
//!
//! - Requests are counted and timed as they are answered
//!   (`flashkv_requests_total{op,result}`, `flashkv_request_duration_seconds{op}`).
//! - The raft thread reports fsyncs, leader changes and, after each
//!   `Ready`, its term, role and indexes through [`kv_raft::Observer`].
//! - Engine, proposer and connection-limit figures are read when the
//!   registry is gathered, from the counters their crates keep.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

use kv_net::proto;

use crate::store::Store;

/// Request latency buckets, in seconds: 100 µs to 10 s.
const REQUEST_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// fsync buckets, in seconds: 50 µs to 2.5 s.
const FSYNC_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 2.5,
];

/// The node's metrics. One per node (not process-global), so that several
/// nodes in one process keep theirs apart.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    requests: IntCounterVec,
    request_duration: HistogramVec,
    term: IntGauge,
    is_leader: IntGauge,
    commit_index: IntGauge,
    applied_index: IntGauge,
    leader_changes: IntCounter,
    log_fsync: Histogram,
    snapshot_sent_bytes: IntCounter,
    sources: Arc<Sources>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// What the gather-time collector reads.
#[derive(Default)]
struct Sources {
    /// Weak: the registry may outlive the node (an exporter holds it), and
    /// must not keep its engine open.
    store: Mutex<Option<std::sync::Weak<Store>>>,
    listeners: Mutex<Vec<Arc<kv_net::Counters>>>,
    pending: Mutex<Option<PendingFn>>,
}

/// Reads the proposer's count of writes admitted and not yet answered.
type PendingFn = Box<dyn Fn() -> usize + Send + Sync>;

fn registered<C: Collector + Clone + 'static>(registry: &Registry, c: C) -> C {
    // Names are fixed and distinct, so registration cannot clash.
    let _ = registry.register(Box::new(c.clone()));
    c
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// A registry holding every metric of the node, at zero.
    ///
    /// # Panics
    ///
    /// Never: the metric names and labels are fixed and valid.
    #[must_use]
    pub fn new() -> Metrics {
        let r = Registry::new();
        let counter = |name: &str, help: &str| {
            registered(&r, IntCounter::new(name, help).expect("valid metric"))
        };
        let gauge = |name: &str, help: &str| {
            registered(&r, IntGauge::new(name, help).expect("valid metric"))
        };
        let requests = registered(
            &r,
            IntCounterVec::new(
                Opts::new(
                    "flashkv_requests_total",
                    "Client requests answered, by command and result",
                ),
                &["op", "result"],
            )
            .expect("valid metric"),
        );
        let request_duration = registered(
            &r,
            HistogramVec::new(
                HistogramOpts::new(
                    "flashkv_request_duration_seconds",
                    "Time from a client request's arrival to its answer",
                )
                .buckets(REQUEST_BUCKETS.to_vec()),
                &["op"],
            )
            .expect("valid metric"),
        );
        let log_fsync = registered(
            &r,
            Histogram::with_opts(
                HistogramOpts::new(
                    "flashkv_raft_log_fsync_duration_seconds",
                    "Duration of the raft log's fdatasync calls",
                )
                .buckets(FSYNC_BUCKETS.to_vec()),
            )
            .expect("valid metric"),
        );
        let sources = Arc::new(Sources::default());
        let _ = r.register(Box::new(GatherTime::new(sources.clone())));
        Metrics {
            inner: Arc::new(Inner {
                requests,
                request_duration,
                term: gauge("flashkv_raft_term", "Current raft term"),
                is_leader: gauge("flashkv_raft_is_leader", "1 while this node leads"),
                commit_index: gauge("flashkv_raft_commit_index", "Highest committed raft index"),
                applied_index: gauge(
                    "flashkv_raft_applied_index",
                    "Highest raft index applied to the store",
                ),
                leader_changes: counter(
                    "flashkv_raft_leader_changes_total",
                    "Times the leader this node knows of changed",
                ),
                log_fsync,
                snapshot_sent_bytes: counter(
                    "flashkv_snapshot_sent_bytes_total",
                    "Bytes of raft snapshots sent to peers",
                ),
                sources,
                registry: r,
            }),
        }
    }

    /// The registry, for an exporter (`/metrics`).
    #[must_use]
    pub fn registry(&self) -> &Registry {
        &self.inner.registry
    }

    /// The registry in the Prometheus text format.
    #[must_use]
    pub fn render(&self) -> String {
        let families = self.inner.registry.gather();
        prometheus::TextEncoder::new()
            .encode_to_string(&families)
            .unwrap_or_default()
    }

    /// Counts one answered request of command `op` with `result` (`ok` or
    /// the error code in lower case) that took `elapsed`.
    pub fn request(&self, op: &str, result: &str, elapsed: Duration) {
        self.inner.requests.with_label_values(&[op, result]).inc();
        self.inner
            .request_duration
            .with_label_values(&[op])
            .observe(elapsed.as_secs_f64());
    }

    /// Counts bytes of a snapshot sent to a peer.
    pub fn snapshot_sent(&self, bytes: u64) {
        self.inner.snapshot_sent_bytes.inc_by(bytes);
    }

    /// Where `flashkv_raft_proposals_pending` is read from.
    pub fn watch_pending(&self, pending: impl Fn() -> usize + Send + Sync + 'static) {
        *self.inner.sources.pending.lock() = Some(Box::new(pending));
    }

    /// The engine whose levels and compactions are reported (replaced when
    /// a snapshot install swaps the store's engine: the store is read anew
    /// at every gather).
    pub fn watch_store(&self, store: Arc<Store>) {
        *self.inner.sources.store.lock() = Some(Arc::downgrade(&store));
    }

    /// A listener whose limit counters are reported as
    /// `flashkv_net_limit_hits_total{limit}` (summed over listeners).
    pub fn watch_listener(&self, counters: Arc<kv_net::Counters>) {
        self.inner.sources.listeners.lock().push(counters);
    }

    /// The observer to put in `kv_raft::Options::observer`.
    #[must_use]
    pub fn raft_observer(&self) -> Arc<dyn kv_raft::Observer> {
        Arc::new(RaftObserver(self.clone()))
    }
}

fn gauge_value(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Feeds the raft thread's measurements into the registry.
#[derive(Debug)]
struct RaftObserver(Metrics);

impl kv_raft::Observer for RaftObserver {
    fn log_synced(&self, elapsed: Duration) {
        self.0.inner.log_fsync.observe(elapsed.as_secs_f64());
    }

    fn raft_state(&self, s: &kv_raft::RaftState) {
        let i = &self.0.inner;
        i.term.set(gauge_value(s.term));
        i.is_leader.set(i64::from(s.leader));
        i.commit_index.set(gauge_value(s.commit));
        i.applied_index.set(gauge_value(s.applied));
    }

    fn leader_changed(&self, leader: Option<u64>) {
        // A new leader, not the gap before one is known.
        if leader.is_some() {
            self.0.inner.leader_changes.inc();
        }
    }
}

/// Metrics read from their sources when the registry is gathered.
struct GatherTime {
    sources: Arc<Sources>,
    descs: Vec<Desc>,
}

const ENGINE_BYTES: &str = "flashkv_engine_bytes";
const ENGINE_COMPACTIONS: &str = "flashkv_engine_compactions_total";
const ENGINE_STALLS: &str = "flashkv_engine_write_stalls_total";
const NET_LIMITS: &str = "flashkv_net_limit_hits_total";
const PENDING: &str = "flashkv_raft_proposals_pending";

impl GatherTime {
    fn new(sources: Arc<Sources>) -> GatherTime {
        let descs = [
            fresh_engine_bytes().desc(),
            fresh_counter(ENGINE_COMPACTIONS).desc(),
            fresh_counter(ENGINE_STALLS).desc(),
            fresh_limits().desc(),
            fresh_pending().desc(),
        ]
        .into_iter()
        .flatten()
        .cloned()
        .collect();
        GatherTime { sources, descs }
    }
}

fn fresh_engine_bytes() -> IntGaugeVec {
    IntGaugeVec::new(
        Opts::new(
            ENGINE_BYTES,
            "Bytes of the engine's tables by level, and of its memtables (level=\"memtable\")",
        ),
        &["level"],
    )
    .expect("valid metric")
}

fn fresh_counter(name: &str) -> IntCounter {
    let help = match name {
        ENGINE_COMPACTIONS => "Compactions the engine has run (trivial moves included)",
        _ => "Times an engine writer waited for a flush or compaction",
    };
    IntCounter::new(name, help).expect("valid metric")
}

fn fresh_pending() -> IntGauge {
    IntGauge::new(PENDING, "Client writes admitted and not yet answered").expect("valid metric")
}

fn fresh_limits() -> IntCounterVec {
    IntCounterVec::new(
        Opts::new(
            NET_LIMITS,
            "Connections and requests held back or closed by a limit, by limit",
        ),
        &["limit"],
    )
    .expect("valid metric")
}

impl Collector for GatherTime {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let mut out = Vec::new();
        let store = self
            .sources
            .store
            .lock()
            .as_ref()
            .and_then(std::sync::Weak::upgrade);
        if let Some(store) = store {
            let stats = store.current().db().stats();
            let bytes = fresh_engine_bytes();
            for (level, l) in stats.levels.iter().enumerate() {
                bytes
                    .with_label_values(&[&level.to_string()])
                    .set(gauge_value(l.bytes));
            }
            bytes
                .with_label_values(&["memtable"])
                .set(gauge_value(stats.memtable_bytes));
            out.extend(bytes.collect());
            let compactions = fresh_counter(ENGINE_COMPACTIONS);
            compactions.inc_by(stats.compactions);
            out.extend(compactions.collect());
            let stalls = fresh_counter(ENGINE_STALLS);
            stalls.inc_by(stats.write_stalls);
            out.extend(stalls.collect());
        }
        let limits = fresh_limits();
        // Every limit is shown, at zero until it triggers.
        for (limit, _) in kv_net::Counters::default().snapshot() {
            limits.with_label_values(&[limit]).inc_by(0);
        }
        for counters in self.sources.listeners.lock().iter() {
            for (limit, n) in counters.snapshot() {
                limits.with_label_values(&[limit]).inc_by(n);
            }
        }
        out.extend(limits.collect());
        let pending = fresh_pending();
        if let Some(f) = self.sources.pending.lock().as_ref() {
            pending.set(i64::try_from(f()).unwrap_or(i64::MAX));
        }
        out.extend(pending.collect());
        out
    }
}

/// The `op` label of a request's command.
pub(crate) fn op_name(cmd: Option<&proto::request::Cmd>) -> &'static str {
    match cmd {
        Some(proto::request::Cmd::Put(_)) => "put",
        Some(proto::request::Cmd::Get(_)) => "get",
        Some(proto::request::Cmd::Delete(_)) => "delete",
        Some(proto::request::Cmd::Cas(_)) => "cas",
        Some(proto::request::Cmd::Range(_)) => "range",
        Some(proto::request::Cmd::Batch(_)) => "batch",
        Some(proto::request::Cmd::Status(_)) => "status",
        Some(proto::request::Cmd::Search(_)) => "search",
        Some(proto::request::Cmd::Similar(_)) => "similar",
        Some(proto::request::Cmd::MemberList(_)) => "member_list",
        Some(proto::request::Cmd::MemberAdd(_)) => "member_add",
        Some(proto::request::Cmd::MemberPromote(_)) => "member_promote",
        Some(proto::request::Cmd::MemberRemove(_)) => "member_remove",
        Some(proto::request::Cmd::LeaderTransfer(_)) => "leader_transfer",
        Some(
            proto::request::Cmd::SnapshotSave(_)
            | proto::request::Cmd::SnapshotRead(_)
            | proto::request::Cmd::SnapshotRelease(_),
        ) => "snapshot",
        _ => "unknown",
    }
}

/// The `result` label of an answer: `ok`, or its error code in lower case.
pub(crate) fn result_name(response: &proto::Response) -> &'static str {
    let Some(proto::response::Result::Error(e)) = &response.result else {
        return "ok";
    };
    match e.code.enum_value_or_default() {
        proto::ErrorCode::NOT_LEADER => "not_leader",
        proto::ErrorCode::TIMEOUT => "timeout",
        proto::ErrorCode::INVALID_ARGUMENT => "invalid_argument",
        proto::ErrorCode::UNAVAILABLE => "unavailable",
        proto::ErrorCode::COMPARE_FAILED => "compare_failed",
        proto::ErrorCode::INTERNAL => "internal",
        proto::ErrorCode::PERMISSION_DENIED => "permission_denied",
        proto::ErrorCode::UNKNOWN => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_counted_by_op_and_result_and_timed() {
        let m = Metrics::new();
        m.request("put", "ok", Duration::from_millis(2));
        m.request("put", "ok", Duration::from_millis(3));
        m.request("get", "not_leader", Duration::from_micros(50));
        let text = m.render();
        assert!(
            text.contains("flashkv_requests_total{op=\"put\",result=\"ok\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("flashkv_requests_total{op=\"get\",result=\"not_leader\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("flashkv_request_duration_seconds_bucket{op=\"put\",le=\"0.0025\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("flashkv_request_duration_seconds_count{op=\"put\"} 2"),
            "{text}"
        );
    }

    #[test]
    fn limit_hits_are_summed_over_listeners_and_shown_at_zero() {
        let m = Metrics::new();
        assert!(
            m.render()
                .contains("flashkv_net_limit_hits_total{limit=\"connections\"} 0"),
            "{}",
            m.render()
        );
        let a = Arc::new(kv_net::Counters::default());
        let b = Arc::new(kv_net::Counters::default());
        a.connections_refused
            .fetch_add(2, std::sync::atomic::Ordering::Relaxed);
        b.connections_refused
            .fetch_add(3, std::sync::atomic::Ordering::Relaxed);
        m.watch_listener(a);
        m.watch_listener(b);
        assert!(
            m.render()
                .contains("flashkv_net_limit_hits_total{limit=\"connections\"} 5"),
            "{}",
            m.render()
        );
    }

    #[test]
    fn raft_observations_reach_the_registry() {
        let m = Metrics::new();
        let o = m.raft_observer();
        o.log_synced(Duration::from_micros(120));
        o.leader_changed(Some(2));
        o.leader_changed(None);
        o.leader_changed(Some(3));
        o.raft_state(&kv_raft::RaftState {
            term: 4,
            commit: 9,
            applied: 8,
            leader: true,
        });
        m.watch_pending(|| 3);
        let text = m.render();
        for line in [
            "flashkv_raft_term 4",
            "flashkv_raft_commit_index 9",
            "flashkv_raft_applied_index 8",
            "flashkv_raft_is_leader 1",
            "flashkv_raft_proposals_pending 3",
        ] {
            assert!(text.contains(line), "{line}: {text}");
        }
        assert!(
            text.contains("flashkv_raft_leader_changes_total 2"),
            "{text}"
        );
        assert!(
            text.contains("flashkv_raft_log_fsync_duration_seconds_count 1"),
            "{text}"
        );
        assert!(
            text.contains("flashkv_raft_log_fsync_duration_seconds_bucket{le=\"0.00025\"} 1"),
            "{text}"
        );
    }
}
