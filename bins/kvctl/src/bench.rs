//! `kvctl bench`: a load generator (SPEC section 12). N clients (each with
//! its own connections) run puts, then gets, over a shared key space; the
//! report gives throughput, errors by kind and latency percentiles per phase.
//!
//! Closed loop (the default): each client issues its next request when the
//! previous one completed. Open loop (`--rate`): request `i` is due at
//! `start + i / rate` whether or not earlier ones completed, and its latency
//! counts from that due time, so a server that falls behind shows up as
//! latency instead of silently lowering the offered load (no coordinated
//! omission).

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;
use kv_client::{Client, Options};
use serde_json::json;
use tokio::time::Instant;

/// Bench parameters.
pub struct Params {
    pub clients: usize,
    pub requests: usize,
    pub value_size: usize,
    pub key_size: usize,
    pub keys: usize,
    /// Open loop at this many operations per second, over all clients.
    pub rate: Option<f64>,
    /// Skip the get phase.
    pub puts_only: bool,
    /// Keys begin with this.
    pub prefix: &'static str,
    /// With `rate`: the load of `etcdctl check perf` instead of an open
    /// loop: operations are released at `rate`, each to a free client
    /// (at most one in flight per client); when every client is busy the
    /// release waits, and no missed release is made up later. Latency
    /// counts from when a client starts the operation.
    pub limited: bool,
}

/// How a failed operation ended.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    /// Certainly not applied (e.g. unavailable, no leader).
    Definite,
    /// May or may not have been applied (e.g. a write that timed out).
    Unknown,
    /// Anything else: the request itself was refused as invalid.
    Other,
}

impl Kind {
    fn of(e: &kv_client::Error) -> Kind {
        match e {
            kv_client::Error::InvalidArgument(_) => Kind::Other,
            e if e.is_definite() => Kind::Definite,
            _ => Kind::Unknown,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Definite => "definite",
            Kind::Unknown => "unknown",
            Kind::Other => "other",
        }
    }
}

/// What one phase measured, shared by its clients while it runs.
struct Tally {
    hist: Histogram<u64>,
    /// Slowest operation of any outcome, in microseconds.
    slowest_us: u64,
    errors: BTreeMap<Kind, u64>,
    /// Error messages by kind, with counts (the first few distinct ones).
    messages: BTreeMap<(Kind, String), u64>,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            hist: Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)
                .expect("valid histogram bounds"),
            slowest_us: 0,
            errors: BTreeMap::new(),
            messages: BTreeMap::new(),
        }
    }

    fn record(&mut self, us: u64, result: Result<(), kv_client::Error>) {
        self.slowest_us = self.slowest_us.max(us);
        match result {
            Ok(()) => {
                let _ = self.hist.record(us.max(1));
            }
            Err(e) => {
                let kind = Kind::of(&e);
                *self.errors.entry(kind).or_default() += 1;
                let key = (kind, shape(&e.to_string()));
                if self.messages.len() < 16 || self.messages.contains_key(&key) {
                    *self.messages.entry(key).or_default() += 1;
                }
            }
        }
    }

    fn errors(&self) -> u64 {
        self.errors.values().sum()
    }

    fn errors_of(&self, kind: Kind) -> u64 {
        self.errors.get(&kind).copied().unwrap_or(0)
    }
}

/// A message with its numbers blanked, so that errors of one cause are
/// counted together.
fn shape(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for c in message.chars() {
        if c.is_ascii_digit() {
            if !out.ends_with('N') {
                out.push('N');
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// One phase's measurements.
pub struct Phase {
    name: &'static str,
    /// How long the phase ran.
    pub elapsed: Duration,
    tally: Tally,
}

impl Phase {
    /// Successful operations.
    pub fn ops(&self) -> u64 {
        self.tally.hist.len()
    }

    /// Successful operations per second.
    pub fn ops_per_sec(&self) -> f64 {
        self.ops() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Latency of the slowest successful operation.
    pub fn slowest_ok(&self) -> Duration {
        Duration::from_micros(self.tally.hist.max())
    }

    /// Standard deviation of the successful operations' latency.
    pub fn stddev(&self) -> Duration {
        Duration::from_secs_f64(self.tally.hist.stdev() / 1e6)
    }

    /// Failed operations by error message (numbers blanked), with counts.
    pub fn errors(&self) -> Vec<(String, u64)> {
        let mut out: Vec<(String, u64)> = self
            .tally
            .messages
            .iter()
            .map(|((kind, m), n)| (format!("{}: {m}", kind.name()), *n))
            .collect();
        let listed: u64 = out.iter().map(|(_, n)| n).sum();
        if listed < self.tally.errors() {
            out.push(("others".into(), self.tally.errors() - listed));
        }
        out
    }
}

/// The key of request `i`: key number `i * 7919 mod keys`.
pub fn key_of(prefix: &str, i: usize, keys: usize, key_size: usize) -> String {
    key_name(prefix, i.wrapping_mul(7919) % keys, key_size)
}

/// Key number `n`, `key_size` bytes long (at least 8 digits).
pub fn key_name(prefix: &str, n: usize, key_size: usize) -> String {
    let width = key_size.saturating_sub(prefix.len()).max(8);
    format!("{prefix}{n:0width$}")
}

async fn one(client: &Client, put: bool, key: &str, value: &[u8]) -> Result<(), kv_client::Error> {
    if put {
        client.put(key, value).await
    } else {
        client.get(key).await.map(drop)
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Runs one phase: puts (`put`) or gets.
pub async fn phase(
    name: &'static str,
    endpoints: &[String],
    opts: &Options,
    p: &Params,
    put: bool,
) -> Phase {
    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let value: Arc<[u8]> = vec![b'x'; p.value_size].into();
    let tally = Arc::new(Mutex::new(Tally::new()));
    let clients = p.clients.max(1);
    let (total, keys, key_size, p_prefix) = (p.requests, p.keys.max(1), p.key_size, p.prefix);
    let start = Instant::now();
    let progress = std::io::stderr().is_terminal().then(|| {
        let (done, tally) = (done.clone(), tally.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let errors = tally.lock().map_or(0, |t| t.errors());
                let n = done.load(Ordering::Relaxed);
                let secs = start.elapsed().as_secs_f64();
                eprint!(
                    "\r{name}: {n}/{total} done, {errors} errors, {:.0} ops/s   ",
                    n as f64 / secs
                );
            }
        })
    });
    // The release of operations in the limited mode.
    let (release, released) = tokio::sync::mpsc::channel::<usize>(1);
    let released = Arc::new(tokio::sync::Mutex::new(released));
    let limited = p.limited && p.rate.is_some();
    let releaser = match p.rate {
        Some(rate) if limited => Some(tokio::spawn(async move {
            let period = Duration::from_secs_f64(1.0 / rate);
            // Releases stop at the scheduled end, as etcdctl's do.
            let end = start + Duration::from_secs_f64(total as f64 / rate);
            // What a release held up by busy clients may make up for: the
            // timer's granularity (a millisecond), nothing more.
            let slack = period.max(Duration::from_millis(2));
            let mut due = start;
            for i in 0..total {
                if due > Instant::now() {
                    tokio::time::sleep_until(due).await;
                }
                if Instant::now() >= end {
                    break;
                }
                if release.send(i).await.is_err() {
                    break;
                }
                due = (due + period).max(Instant::now() - slack);
            }
        })),
        _ => {
            drop(release);
            None
        }
    };
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..clients {
        let client = Client::new(endpoints.to_vec(), opts.clone());
        let (next, done, value, tally) = (next.clone(), done.clone(), value.clone(), tally.clone());
        let rate = p.rate;
        let released = released.clone();
        tasks.spawn(async move {
            let record = move |us: u64, r: Result<(), kv_client::Error>| {
                done.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut t) = tally.lock() {
                    t.record(us, r);
                }
            };
            match rate {
                Some(_) if limited => loop {
                    let Some(i) = released.lock().await.recv().await else {
                        break;
                    };
                    let key = key_of(p_prefix, i, keys, key_size);
                    let t = Instant::now();
                    let r = one(&client, put, &key, &value).await;
                    record(micros(t.elapsed()), r);
                },
                None => loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= total {
                        break;
                    }
                    let key = key_of(p_prefix, i, keys, key_size);
                    let t = Instant::now();
                    let r = one(&client, put, &key, &value).await;
                    record(micros(t.elapsed()), r);
                },
                Some(rate) => {
                    // Client c owns requests c, c + clients, ...; each is
                    // started at its due time without waiting for the
                    // earlier ones.
                    let mut inflight = tokio::task::JoinSet::new();
                    for i in (c..total).step_by(clients) {
                        let due = start + Duration::from_secs_f64(i as f64 / rate);
                        tokio::time::sleep_until(due).await;
                        while inflight.try_join_next().is_some() {}
                        let (client, value, record) =
                            (client.clone(), value.clone(), record.clone());
                        let key = key_of(p_prefix, i, keys, key_size);
                        inflight.spawn(async move {
                            let r = one(&client, put, &key, &value).await;
                            record(micros(due.elapsed()), r);
                        });
                    }
                    while inflight.join_next().await.is_some() {}
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    if let Some(releaser) = releaser {
        releaser.abort();
    }
    let elapsed = start.elapsed();
    if let Some(progress) = progress {
        progress.abort();
        eprintln!();
    }
    let tally = Arc::try_unwrap(tally)
        .ok()
        .and_then(|m| m.into_inner().ok())
        .unwrap_or_else(Tally::new);
    Phase {
        name,
        elapsed,
        tally,
    }
}

/// Runs the bench; returns the report lines (or one JSON line).
pub async fn run(endpoints: &[String], opts: &Options, p: &Params, json_out: bool) -> Vec<String> {
    let mut results = Vec::new();
    for (name, put) in [("put", true), ("get", false)] {
        if !put && p.puts_only {
            continue;
        }
        results.push(phase(name, endpoints, opts, p, put).await);
    }
    let ms = |us: u64| us as f64 / 1000.0;
    let quantiles = [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p999", 0.999)];
    if json_out {
        let phases: Vec<_> = results
            .iter()
            .map(|r| {
                let t = &r.tally;
                let mut v = json!({
                    "op": r.name, "ops": t.hist.len(), "errors": t.errors(),
                    "errors_definite": t.errors_of(Kind::Definite),
                    "errors_unknown": t.errors_of(Kind::Unknown),
                    "errors_other": t.errors_of(Kind::Other),
                    "seconds": r.elapsed.as_secs_f64(),
                    "ops_per_sec": t.hist.len() as f64 / r.elapsed.as_secs_f64(),
                });
                for (name, q) in quantiles {
                    v[format!("{name}_ms")] = json!(ms(t.hist.value_at_quantile(q)));
                }
                v["max_ms"] = json!(ms(t.hist.max()));
                v["slowest_ms"] = json!(ms(t.slowest_us));
                v
            })
            .collect();
        let v = json!({"ok": true, "clients": p.clients, "value_size": p.value_size,
                       "key_size": p.key_size, "rate": p.rate,
                       "consistency": if opts.serializable { "serializable" } else { "linearizable" },
                       "phases": phases});
        return vec![v.to_string()];
    }
    let mut lines = vec![format!(
        "clients={} value_size={}B key_size={}B keys={} {} endpoints={} reads={}",
        p.clients,
        p.value_size,
        p.key_size,
        p.keys,
        p.rate.map_or_else(
            || "closed loop".to_owned(),
            |r| format!("open loop at {r}/s")
        ),
        endpoints.join(","),
        if opts.serializable {
            "serializable"
        } else {
            "linearizable"
        }
    )];
    for r in &results {
        let t = &r.tally;
        let mut line = format!(
            "{:<4} {:>8} ops {:>7.2}s {:>8.0} ops/s  errors {} (definite {}, unknown {}, other {})",
            r.name,
            t.hist.len(),
            r.elapsed.as_secs_f64(),
            t.hist.len() as f64 / r.elapsed.as_secs_f64(),
            t.errors(),
            t.errors_of(Kind::Definite),
            t.errors_of(Kind::Unknown),
            t.errors_of(Kind::Other),
        );
        for (name, q) in quantiles {
            line.push_str(&format!(
                "  {name} {:.2}ms",
                ms(t.hist.value_at_quantile(q))
            ));
        }
        line.push_str(&format!(
            "  max {:.2}ms  slowest (any outcome) {:.2}ms",
            ms(t.hist.max()),
            ms(t.slowest_us)
        ));
        lines.push(line);
        for ((kind, message), n) in &t.messages {
            lines.push(format!("     {n:>8} x {}: {message}", kind.name()));
        }
    }
    lines
}
