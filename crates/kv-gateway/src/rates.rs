//! Request rates and latency percentiles over the last minute, for the
//! status page: the registry's request counters and latency histograms of
//! the binary protocol (`flashkv_requests_total`,
//! `flashkv_request_duration_seconds`) and of the gateway's data routes
//! (`flashkv_http_*`) are sampled every second, and the figures are the
//! differences between samples (percentiles interpolated within histogram
//! buckets, as Prometheus' `histogram_quantile` does).

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use serde::Serialize;

/// Samples kept: one minute at one a second, plus the one it starts from.
const KEEP: usize = 61;

#[derive(Debug, Clone)]
struct Sample {
    at: Instant,
    unix_ms: u64,
    binary: Counts,
    http: Counts,
}

/// One protocol's counters at one instant.
#[derive(Debug, Clone, Default)]
struct Counts {
    /// Requests answered so far, by op (route).
    per_op: BTreeMap<String, u64>,
    /// Cumulative counts by upper bound, all ops together.
    buckets: Vec<(f64, u64)>,
}

/// The families of one protocol, and its label of the op.
struct Families {
    counter: &'static str,
    histogram: &'static str,
    label: &'static str,
    /// Ops left out: not data requests (the page's own polling, health
    /// checks, scrapes, and the gateway's status calls behind them).
    skip: &'static [&'static str],
}

const BINARY: Families = Families {
    counter: "flashkv_requests_total",
    histogram: "flashkv_request_duration_seconds",
    label: "op",
    skip: &["status", "member_list"],
};

const HTTP: Families = Families {
    counter: "flashkv_http_requests_total",
    histogram: "flashkv_http_request_duration_seconds",
    label: "route",
    skip: &[
        "/",
        "/api/cluster",
        "/metrics",
        "/livez",
        "/readyz",
        "/raft/status",
    ],
};

/// The sampler and its last minute of samples. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Rates {
    samples: Arc<Mutex<VecDeque<Sample>>>,
}

/// What the status page shows of the last minute.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Summary {
    /// Seconds the figures cover (less than 60 just after start).
    pub window_s: f64,
    /// Requests on the binary protocol (kvctl, kv-client, peers' clients).
    pub binary: Traffic,
    /// Data requests on the HTTP gateway.
    pub http: Traffic,
}

/// One protocol's requests over the window.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Traffic {
    /// Requests answered per second, all ops.
    pub ops_per_s: f64,
    /// Requests answered per second, by op.
    pub by_op: BTreeMap<String, f64>,
    /// Latency percentiles in milliseconds (none without requests).
    pub p50_ms: Option<f64>,
    /// 90th percentile.
    pub p90_ms: Option<f64>,
    /// 99th percentile.
    pub p99_ms: Option<f64>,
    /// Requests per second in each second of the window: `[unix_ms, rate]`.
    pub series: Vec<(u64, f64)>,
}

impl Rates {
    /// Samples `registry` every `every` from now on (needs a tokio
    /// runtime; stops when the last clone is dropped). Without a registry
    /// nothing is sampled.
    #[must_use]
    pub fn start(registry: Option<prometheus::Registry>, every: Duration) -> Rates {
        let rates = Rates::default();
        if let Some(registry) = registry {
            let weak = Arc::downgrade(&rates.samples);
            tokio::spawn(async move {
                loop {
                    {
                        let Some(samples) = weak.upgrade() else {
                            return;
                        };
                        let s = sample(&registry);
                        let mut q = samples.lock();
                        q.push_back(s);
                        while q.len() > KEEP {
                            q.pop_front();
                        }
                    }
                    tokio::time::sleep(every).await;
                }
            });
        }
        rates
    }

    /// The figures of the samples held.
    #[must_use]
    pub fn summary(&self) -> Summary {
        let held: Vec<Sample> = self.samples.lock().iter().cloned().collect();
        summarize(held)
    }
}

fn counts(families: &[prometheus::proto::MetricFamily], f: &Families) -> Counts {
    let mut per_op = BTreeMap::new();
    let mut buckets: BTreeMap<u64, (f64, u64)> = BTreeMap::new();
    let op_of = |m: &prometheus::proto::Metric| {
        m.get_label()
            .iter()
            .find(|l| l.name() == f.label)
            .map_or(String::new(), |l| l.value().to_owned())
    };
    for family in families {
        if family.name() == f.counter {
            for m in family.get_metric() {
                let op = op_of(m);
                if f.skip.contains(&op.as_str()) {
                    continue;
                }
                // Counter values are whole numbers below 2^53.
                #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                let n = m.get_counter().get_value() as u64;
                *per_op.entry(op).or_insert(0) += n;
            }
        } else if family.name() == f.histogram {
            for m in family.get_metric() {
                if f.skip.contains(&op_of(m).as_str()) {
                    continue;
                }
                for b in m.get_histogram().get_bucket() {
                    let bound = b.upper_bound();
                    let e = buckets.entry(bound.to_bits()).or_insert((bound, 0));
                    e.1 += b.cumulative_count();
                }
            }
        }
    }
    let mut buckets: Vec<(f64, u64)> = buckets.into_values().collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    Counts { per_op, buckets }
}

fn sample(registry: &prometheus::Registry) -> Sample {
    let families = registry.gather();
    Sample {
        at: Instant::now(),
        unix_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        binary: counts(&families, &BINARY),
        http: counts(&families, &HTTP),
    }
}

fn total(c: &Counts) -> u64 {
    c.per_op.values().sum()
}

#[allow(clippy::cast_precision_loss)]
fn summarize(samples: Vec<Sample>) -> Summary {
    let (Some(first), Some(last)) = (samples.first(), samples.last()) else {
        return Summary {
            window_s: 0.0,
            binary: traffic(&[], |s| &s.binary),
            http: traffic(&[], |s| &s.http),
        };
    };
    Summary {
        window_s: last.at.duration_since(first.at).as_secs_f64(),
        binary: traffic(&samples, |s| &s.binary),
        http: traffic(&samples, |s| &s.http),
    }
}

#[allow(clippy::cast_precision_loss)]
fn traffic(samples: &[Sample], of: fn(&Sample) -> &Counts) -> Traffic {
    let (Some(first), Some(last)) = (samples.first(), samples.last()) else {
        return Traffic {
            ops_per_s: 0.0,
            by_op: BTreeMap::new(),
            p50_ms: None,
            p90_ms: None,
            p99_ms: None,
            series: Vec::new(),
        };
    };
    let window = last.at.duration_since(first.at).as_secs_f64();
    let per_s = |n: u64, secs: f64| if secs > 0.0 { n as f64 / secs } else { 0.0 };
    let (c0, c1) = (of(first), of(last));
    let by_op = c1
        .per_op
        .iter()
        .map(|(op, n)| {
            let before = c0.per_op.get(op).copied().unwrap_or(0);
            (op.clone(), per_s(n.saturating_sub(before), window))
        })
        .collect();
    let series = samples
        .windows(2)
        .map(|w| {
            let secs = w[1].at.duration_since(w[0].at).as_secs_f64();
            (
                w[1].unix_ms,
                per_s(total(of(&w[1])).saturating_sub(total(of(&w[0]))), secs),
            )
        })
        .collect();
    let deltas: Vec<(f64, u64)> = c1
        .buckets
        .iter()
        .map(|&(bound, n)| {
            let before = c0
                .buckets
                .iter()
                .find(|(b, _)| *b == bound)
                .map_or(0, |(_, c)| *c);
            (bound, n.saturating_sub(before))
        })
        .collect();
    let ms = |q: f64| quantile(&deltas, q).map(|s| s * 1000.0);
    Traffic {
        ops_per_s: per_s(total(c1).saturating_sub(total(c0)), window),
        by_op,
        p50_ms: ms(0.5),
        p90_ms: ms(0.9),
        p99_ms: ms(0.99),
        series,
    }
}

/// The `q` quantile of cumulative `buckets` (ascending bounds, the last
/// possibly +Inf), interpolated linearly within the bucket it falls in.
#[allow(clippy::cast_precision_loss)]
fn quantile(buckets: &[(f64, u64)], q: f64) -> Option<f64> {
    let count = buckets.last()?.1;
    if count == 0 {
        return None;
    }
    let rank = q * count as f64;
    let (mut lower, mut below) = (0.0, 0u64);
    for &(bound, cum) in buckets {
        if cum as f64 >= rank {
            if bound.is_infinite() {
                return Some(lower);
            }
            let inside = (cum - below) as f64;
            let frac = if inside > 0.0 {
                (rank - below as f64) / inside
            } else {
                1.0
            };
            return Some(lower + (bound - lower) * frac);
        }
        (lower, below) = (bound, cum);
    }
    Some(lower)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(base: Instant, secs: u64, puts: u64, buckets: Vec<(f64, u64)>) -> Sample {
        Sample {
            at: base + Duration::from_secs(secs),
            unix_ms: secs * 1000,
            binary: Counts {
                per_op: [("put".to_owned(), puts)].into_iter().collect(),
                buckets,
            },
            http: Counts::default(),
        }
    }

    #[test]
    fn rates_and_percentiles_are_differences_over_the_window() {
        let base = Instant::now();
        let inf = f64::INFINITY;
        let samples = vec![
            // 100 requests before the window: they must not count.
            at(base, 0, 100, vec![(0.001, 100), (0.01, 100), (inf, 100)]),
            at(base, 1, 150, vec![(0.001, 150), (0.01, 150), (inf, 150)]),
            // 100 more: 50 under 1 ms, 50 in (1 ms, 10 ms].
            at(base, 2, 200, vec![(0.001, 150), (0.01, 200), (inf, 200)]),
        ];
        let all = summarize(samples);
        assert!((all.window_s - 2.0).abs() < 1e-9);
        assert_eq!(all.http.ops_per_s, 0.0);
        let s = all.binary;
        assert!((s.ops_per_s - 50.0).abs() < 1e-9, "{s:?}");
        assert!((s.by_op["put"] - 50.0).abs() < 1e-9);
        assert_eq!(s.series, vec![(1000, 50.0), (2000, 50.0)]);
        // Half of the 100 fall in the first bucket: p50 is its bound.
        assert!((s.p50_ms.unwrap() - 1.0).abs() < 1e-9, "{s:?}");
        // p90: 40 of the 50 in (1, 10] ms → 1 + 9 * 0.8.
        assert!((s.p90_ms.unwrap() - 8.2).abs() < 1e-9, "{s:?}");
    }

    #[test]
    fn no_requests_no_percentiles() {
        let base = Instant::now();
        let b = vec![(0.001, 5), (f64::INFINITY, 5)];
        let s = summarize(vec![at(base, 0, 5, b.clone()), at(base, 1, 5, b)]).binary;
        assert_eq!(s.ops_per_s, 0.0);
        assert_eq!(s.p50_ms, None);
        assert_eq!(summarize(Vec::new()).window_s, 0.0);
    }

    #[test]
    fn a_quantile_in_the_overflow_bucket_is_the_last_bound() {
        let b = vec![(0.5, 1), (f64::INFINITY, 10)];
        assert_eq!(quantile(&b, 0.99), Some(0.5));
    }
}

#[cfg(test)]
mod gateway_tests {
    use super::*;

    #[test]
    fn http_data_routes_are_counted_and_the_page_s_own_polling_is_not() {
        let r = prometheus::Registry::new();
        let m = crate::traffic::HttpMetrics::new(Some(&r));
        let before = sample(&r);
        m.record("/put", "200", Duration::from_millis(1));
        m.record("/get", "404", Duration::from_millis(1));
        m.record("/api/cluster", "200", Duration::from_millis(1));
        m.record("/metrics", "200", Duration::from_millis(1));
        let after = sample(&r);
        assert_eq!(total(&after.http) - total(&before.http), 2);
        assert_eq!(after.http.buckets.last().map(|b| b.1), Some(2));
        assert_eq!(total(&after.binary), 0);
    }
}
