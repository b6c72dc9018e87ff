//! Request rates and latency percentiles over the last minute, for the
//! status page: the registry's `flashkv_requests_total` and
//! `flashkv_request_duration_seconds` are sampled every second, and the
//! figures are the differences between samples (percentiles interpolated
//! within histogram buckets, as Prometheus' `histogram_quantile` does).

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
    /// Requests answered so far, by op.
    per_op: BTreeMap<String, u64>,
    /// Cumulative counts by upper bound, all ops together.
    buckets: Vec<(f64, u64)>,
}

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

fn sample(registry: &prometheus::Registry) -> Sample {
    let mut per_op = BTreeMap::new();
    let mut buckets: BTreeMap<u64, (f64, u64)> = BTreeMap::new();
    for family in registry.gather() {
        match family.name() {
            "flashkv_requests_total" => {
                for m in family.get_metric() {
                    let op = m
                        .get_label()
                        .iter()
                        .find(|l| l.name() == "op")
                        .map_or("", |l| l.value());
                    // Counter values are whole numbers below 2^53.
                    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                    let n = m.get_counter().get_value() as u64;
                    *per_op.entry(op.to_owned()).or_insert(0) += n;
                }
            }
            "flashkv_request_duration_seconds" => {
                for m in family.get_metric() {
                    for b in m.get_histogram().get_bucket() {
                        let bound = b.upper_bound();
                        let e = buckets.entry(bound.to_bits()).or_insert((bound, 0));
                        e.1 += b.cumulative_count();
                    }
                }
            }
            _ => {}
        }
    }
    let mut buckets: Vec<(f64, u64)> = buckets.into_values().collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    Sample {
        at: Instant::now(),
        unix_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        per_op,
        buckets,
    }
}

fn total(s: &Sample) -> u64 {
    s.per_op.values().sum()
}

#[allow(clippy::cast_precision_loss)]
fn summarize(samples: Vec<Sample>) -> Summary {
    let (Some(first), Some(last)) = (samples.first(), samples.last()) else {
        return Summary {
            window_s: 0.0,
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
    let by_op = last
        .per_op
        .iter()
        .map(|(op, n)| {
            let before = first.per_op.get(op).copied().unwrap_or(0);
            (op.clone(), per_s(n.saturating_sub(before), window))
        })
        .collect();
    let series = samples
        .windows(2)
        .map(|w| {
            let secs = w[1].at.duration_since(w[0].at).as_secs_f64();
            (
                w[1].unix_ms,
                per_s(total(&w[1]).saturating_sub(total(&w[0])), secs),
            )
        })
        .collect();
    let deltas: Vec<(f64, u64)> = last
        .buckets
        .iter()
        .map(|&(bound, n)| {
            let before = first
                .buckets
                .iter()
                .find(|(b, _)| *b == bound)
                .map_or(0, |(_, c)| *c);
            (bound, n.saturating_sub(before))
        })
        .collect();
    let ms = |q: f64| quantile(&deltas, q).map(|s| s * 1000.0);
    Summary {
        window_s: window,
        ops_per_s: per_s(total(last).saturating_sub(total(first)), window),
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
            per_op: [("put".to_owned(), puts)].into_iter().collect(),
            buckets,
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
        let s = summarize(samples);
        assert!((s.window_s - 2.0).abs() < 1e-9);
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
        let s = summarize(vec![at(base, 0, 5, b.clone()), at(base, 1, 5, b)]);
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
