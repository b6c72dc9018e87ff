//! `kvctl bench`: a load generator. N clients (each with its own
//! connections) run puts, then gets, over a shared key space; the report
//! gives throughput and latency percentiles per phase.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use kv_client::{Client, Options};
use serde_json::json;

/// Bench parameters.
pub struct Params {
    pub clients: usize,
    pub requests: usize,
    pub value_size: usize,
    pub keys: usize,
}

struct Phase {
    name: &'static str,
    ops: u64,
    errors: u64,
    elapsed: Duration,
    hist: Histogram<u64>,
}

async fn phase(
    name: &'static str,
    endpoints: &[String],
    opts: &Options,
    p: &Params,
    put: bool,
) -> Phase {
    let next = Arc::new(AtomicUsize::new(0));
    let value = Arc::new(vec![b'x'; p.value_size]);
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..p.clients.max(1) {
        let client = Client::new(endpoints.to_vec(), opts.clone());
        let (next, value, total, keys) = (next.clone(), value.clone(), p.requests, p.keys.max(1));
        tasks.spawn(async move {
            let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)
                .expect("valid histogram bounds");
            let mut errors = 0u64;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    break;
                }
                let key = format!("bench/{:08}", (i.wrapping_mul(7919)) % keys);
                let t = Instant::now();
                let ok = if put {
                    client.put(&key, value.as_slice()).await.is_ok()
                } else {
                    client.get(&key).await.is_ok()
                };
                if ok {
                    let us = u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX);
                    let _ = hist.record(us.max(1));
                } else {
                    errors += 1;
                }
            }
            (hist, errors)
        });
    }
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid bounds");
    let mut errors = 0;
    while let Some(Ok((h, e))) = tasks.join_next().await {
        let _ = hist.add(&h);
        errors += e;
    }
    Phase {
        name,
        ops: hist.len(),
        errors,
        elapsed: start.elapsed(),
        hist,
    }
}

/// Runs the bench; returns the report lines (or one JSON line).
pub async fn run(endpoints: &[String], opts: &Options, p: &Params, json_out: bool) -> Vec<String> {
    let mut results = Vec::new();
    for (name, put) in [("put", true), ("get", false)] {
        results.push(phase(name, endpoints, opts, p, put).await);
    }
    let ms = |us: u64| us as f64 / 1000.0;
    if json_out {
        let phases: Vec<_> = results
            .iter()
            .map(|r| {
                json!({
                    "op": r.name, "ops": r.ops, "errors": r.errors,
                    "seconds": r.elapsed.as_secs_f64(),
                    "ops_per_sec": r.ops as f64 / r.elapsed.as_secs_f64(),
                    "p50_ms": ms(r.hist.value_at_quantile(0.5)),
                    "p99_ms": ms(r.hist.value_at_quantile(0.99)),
                    "p999_ms": ms(r.hist.value_at_quantile(0.999)),
                    "max_ms": ms(r.hist.max()),
                })
            })
            .collect();
        let v = json!({"ok": true, "clients": p.clients, "value_size": p.value_size,
                       "consistency": if opts.serializable { "serializable" } else { "linearizable" },
                       "phases": phases});
        return vec![v.to_string()];
    }
    let mut lines = vec![format!(
        "clients={} value_size={}B keys={} endpoints={} reads={}",
        p.clients,
        p.value_size,
        p.keys,
        endpoints.join(","),
        if opts.serializable {
            "serializable"
        } else {
            "linearizable"
        }
    )];
    for r in &results {
        lines.push(format!(
            "{:<4} {:>8} ops {:>5} errors {:>7.2}s {:>10.0} ops/s  p50 {:.2}ms  p99 {:.2}ms  p99.9 {:.2}ms  max {:.2}ms",
            r.name,
            r.ops,
            r.errors,
            r.elapsed.as_secs_f64(),
            r.ops as f64 / r.elapsed.as_secs_f64(),
            ms(r.hist.value_at_quantile(0.5)),
            ms(r.hist.value_at_quantile(0.99)),
            ms(r.hist.value_at_quantile(0.999)),
            ms(r.hist.max()),
        ));
    }
    lines
}
