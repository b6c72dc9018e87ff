//! The load generator both systems get: N tokio tasks in this process, each
//! with a client object (and so connections) of its own.
//!
//! - Closed loop ([`closed`]): each client issues its next request when the
//!   previous one completed, for a warm-up and then the measured window.
//! - Limited open loop ([`limited`]), the load of `etcdctl check perf`:
//!   requests are released at a fixed rate into a queue as deep as there are
//!   clients; each free client takes the next one. When every client is busy
//!   and the queue is full the release waits, and what it missed is not made
//!   up later. Latency counts from when a client starts the request, as
//!   `etcdctl check perf` counts it.
//!
//! Latencies go into an HDR histogram (microseconds, 3 significant digits);
//! failed requests (errors and time-outs) are counted apart, and the slowest
//! request of any outcome is kept.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use tokio::sync::Barrier;
use tokio::time::Instant;

/// Which system a client talks to, and how.
#[derive(Clone)]
pub enum Target {
    /// FlashKV through `kv-client`, given every member (it finds the
    /// leader itself).
    Flash {
        endpoints: Vec<String>,
        timeout: Duration,
    },
    /// etcd through `etcd-client` (gRPC), given these endpoints.
    Etcd {
        endpoints: Vec<String>,
        timeout: Duration,
    },
}

/// One client object: its own connections. (Boxed: etcd's client is large,
/// and there is one per task.)
pub enum Conn {
    Flash(kv_client::Client),
    Etcd(Box<etcd_client::Client>),
}

impl Target {
    pub async fn connect(&self) -> Result<Conn> {
        match self {
            Target::Flash { endpoints, timeout } => Ok(Conn::Flash(kv_client::Client::new(
                endpoints.clone(),
                kv_client::Options {
                    timeout: *timeout,
                    serializable: false,
                    ..kv_client::Options::default()
                },
            ))),
            Target::Etcd { endpoints, timeout } => {
                let opts = etcd_client::ConnectOptions::new()
                    .with_connect_timeout(Duration::from_secs(5))
                    .with_timeout(*timeout);
                let c = etcd_client::Client::connect(endpoints, Some(opts))
                    .await
                    .context("connecting to etcd")?;
                Ok(Conn::Etcd(Box::new(c)))
            }
        }
    }

    fn timeout(&self) -> Duration {
        match self {
            Target::Flash { timeout, .. } | Target::Etcd { timeout, .. } => *timeout,
        }
    }
}

impl Conn {
    async fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), String> {
        match self {
            Conn::Flash(c) => c.put(key, value).await.map_err(|e| e.to_string()),
            Conn::Etcd(c) => c
                .put(key, value, None)
                .await
                .map(drop)
                .map_err(|e| e.to_string()),
        }
    }

    /// A linearizable read (FlashKV's default; etcd's default Range,
    /// serializable=false).
    async fn get(&mut self, key: &[u8]) -> Result<bool, String> {
        match self {
            Conn::Flash(c) => c
                .get(key)
                .await
                .map(|v| v.is_some())
                .map_err(|e| e.to_string()),
            Conn::Etcd(c) => c
                .get(key, None)
                .await
                .map(|r| !r.kvs().is_empty())
                .map_err(|e| e.to_string()),
        }
    }
}

/// What one row measured.
#[derive(Clone)]
pub struct Stats {
    /// Successful requests in the measured window.
    pub ok: u64,
    /// Failed requests (errors and time-outs) in the measured window.
    pub errors: u64,
    /// Gets that found no value (they should all find one).
    pub misses: u64,
    /// Distinct error messages (numbers blanked) with counts; the first few.
    pub messages: BTreeMap<String, u64>,
    /// Latencies of the successful requests, microseconds.
    pub hist: Histogram<u64>,
    /// Slowest request of any outcome, microseconds.
    pub slowest_us: u64,
    /// Length of the measured window, until the last request completed.
    pub elapsed: Duration,
}

impl Stats {
    fn new() -> Stats {
        Stats {
            ok: 0,
            errors: 0,
            misses: 0,
            messages: BTreeMap::new(),
            hist: Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds"),
            slowest_us: 0,
            elapsed: Duration::ZERO,
        }
    }

    fn record(&mut self, us: u64, outcome: Result<bool, String>) {
        self.slowest_us = self.slowest_us.max(us);
        match outcome {
            Ok(found) => {
                self.ok += 1;
                if !found {
                    self.misses += 1;
                }
                let _ = self.hist.record(us.max(1));
            }
            Err(e) => {
                self.errors += 1;
                let shape = shape(&e);
                if self.messages.len() < 8 || self.messages.contains_key(&shape) {
                    *self.messages.entry(shape).or_default() += 1;
                }
            }
        }
    }

    fn merge(&mut self, o: &Stats) {
        self.ok += o.ok;
        self.errors += o.errors;
        self.misses += o.misses;
        for (m, n) in &o.messages {
            if self.messages.len() < 8 || self.messages.contains_key(m) {
                *self.messages.entry(m.clone()).or_default() += n;
            }
        }
        let _ = self.hist.add(&o.hist);
        self.slowest_us = self.slowest_us.max(o.slowest_us);
    }

    pub fn ops_per_s(&self) -> f64 {
        let s = self.elapsed.as_secs_f64();
        if s > 0.0 { self.ok as f64 / s } else { 0.0 }
    }

    /// Latency at `q` (0..=1) of the successful requests, milliseconds.
    pub fn ms(&self, q: f64) -> f64 {
        if self.hist.is_empty() {
            return f64::NAN;
        }
        self.hist.value_at_quantile(q) as f64 / 1000.0
    }

    pub fn slowest_ms(&self) -> f64 {
        self.slowest_us as f64 / 1000.0
    }
}

/// A message with its runs of digits blanked, so that errors of one cause
/// count together.
fn shape(message: &str) -> String {
    let mut out = String::with_capacity(message.len().min(200));
    for c in message.chars().take(200) {
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

/// What a request does.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Op {
    Put,
    Get,
}

/// Keys and values: fixed sizes, keys numbered, values incompressible and
/// the same in every run.
#[derive(Clone)]
pub struct Shape {
    pub key_size: usize,
    pub value_size: usize,
    /// Distinct keys the puts cycle through.
    pub keyspace: u64,
    /// Prefix of every key (counted in `key_size`).
    pub prefix: &'static str,
}

impl Shape {
    fn key(&self, n: u64, buf: &mut Vec<u8>) {
        buf.clear();
        buf.extend_from_slice(self.prefix.as_bytes());
        let digits = self.key_size.saturating_sub(buf.len());
        let num = format!("{n:0digits$}");
        buf.extend_from_slice(num.as_bytes());
        buf.resize(self.key_size, b'.');
    }

    fn value(&self) -> Vec<u8> {
        let mut x = 0x2545_F491_4F6C_DD1D_u64;
        (0..self.value_size)
            .map(|_| {
                x = xorshift(x);
                x.to_le_bytes()[0]
            })
            .collect()
    }
}

fn xorshift(mut x: u64) -> u64 {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    x
}

/// Puts done so far on the current cluster: puts take the next number
/// (modulo the keyspace); gets read numbers below it, so they find values.
#[derive(Default)]
pub struct Written(AtomicU64);

impl Written {
    fn next(&self) -> u64 {
        self.0.fetch_add(1, Ordering::Relaxed)
    }

    fn count(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Connects `clients` clients, each making one untimed request (so that
/// discovery and dialing are done), and returns them.
async fn connect_all(target: &Target, clients: usize) -> Result<Vec<Conn>> {
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..clients {
        let target = target.clone();
        tasks.spawn(async move {
            let mut c = target.connect().await?;
            let key = format!("bench/warm/{i}");
            // Dials the leader (a linearizable read goes there).
            let mut last = String::new();
            for _ in 0..5 {
                match c.get(key.as_bytes()).await {
                    Ok(_) => return Ok(c),
                    Err(e) => last = e,
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            anyhow::bail!("client {i} could not reach the cluster: {last}")
        });
    }
    let mut out = Vec::with_capacity(clients);
    while let Some(r) = tasks.join_next().await {
        out.push(r.context("connect task")??);
    }
    Ok(out)
}

/// Closed loop: `clients` clients doing `op` back to back, for `warmup`
/// (not counted) and then `duration`.
pub async fn closed(
    target: &Target,
    clients: usize,
    op: Op,
    shape: &Shape,
    written: &Arc<Written>,
    warmup: Duration,
    duration: Duration,
) -> Result<Stats> {
    let conns = connect_all(target, clients).await?;
    let barrier = Arc::new(Barrier::new(clients + 1));
    let value = Arc::new(shape.value());
    let op_timeout = target.timeout();
    let mut tasks = tokio::task::JoinSet::new();
    for (i, mut conn) in conns.into_iter().enumerate() {
        let (barrier, value, shape, written) = (
            barrier.clone(),
            value.clone(),
            shape.clone(),
            written.clone(),
        );
        tasks.spawn(async move {
            let mut st = Stats::new();
            let mut rng = 0x9E37_79B9_7F4A_7C15_u64 ^ ((i as u64 + 1) << 32);
            let mut key = Vec::with_capacity(shape.key_size);
            barrier.wait().await;
            let from = Instant::now() + warmup;
            let until = from + duration;
            let mut last_end = from;
            loop {
                let t0 = Instant::now();
                if t0 >= until {
                    break;
                }
                let outcome = match op {
                    Op::Put => {
                        shape.key(written.next() % shape.keyspace, &mut key);
                        tokio::time::timeout(op_timeout, conn.put(&key, &value))
                            .await
                            .map(|r| r.map(|()| true))
                    }
                    Op::Get => {
                        rng = xorshift(rng);
                        let n = written.count().clamp(1, shape.keyspace);
                        shape.key(rng % n, &mut key);
                        tokio::time::timeout(op_timeout, conn.get(&key)).await
                    }
                };
                let outcome = outcome.unwrap_or_else(|_| Err("timed out".to_owned()));
                let end = Instant::now();
                if t0 >= from {
                    st.record(micros(end - t0), outcome);
                    last_end = end;
                }
            }
            (st, last_end.saturating_duration_since(from))
        });
    }
    barrier.wait().await;
    let mut total = Stats::new();
    while let Some(r) = tasks.join_next().await {
        let (st, elapsed) = r.context("load task")?;
        total.merge(&st);
        total.elapsed = total.elapsed.max(elapsed);
    }
    Ok(total)
}

/// The load of `etcdctl check perf`: `clients` clients, requests released
/// at `rate` per second for `duration` (see the module doc), puts of
/// unique keys.
pub async fn limited(
    target: &Target,
    clients: usize,
    rate: f64,
    shape: &Shape,
    duration: Duration,
) -> Result<Stats> {
    let conns = connect_all(target, clients).await?;
    let barrier = Arc::new(Barrier::new(clients + 1));
    let value = Arc::new(shape.value());
    let op_timeout = target.timeout();
    let (tx, rx) = async_channel::bounded::<u64>(clients);
    let mut tasks = tokio::task::JoinSet::new();
    for mut conn in conns {
        let (barrier, value, shape, rx) =
            (barrier.clone(), value.clone(), shape.clone(), rx.clone());
        tasks.spawn(async move {
            let mut st = Stats::new();
            let mut key = Vec::with_capacity(shape.key_size);
            barrier.wait().await;
            let mut last_end = Instant::now();
            while let Ok(n) = rx.recv().await {
                shape.key(n, &mut key);
                let t0 = Instant::now();
                let outcome = tokio::time::timeout(op_timeout, conn.put(&key, &value))
                    .await
                    .map(|r| r.map(|()| true))
                    .unwrap_or_else(|_| Err("timed out".to_owned()));
                last_end = Instant::now();
                st.record(micros(last_end - t0), outcome);
            }
            (st, last_end)
        });
    }
    drop(rx);
    barrier.wait().await;
    let start = Instant::now();
    let until = start + duration;
    // A token bucket refilled every millisecond (tokio's timer has
    // millisecond resolution) holding at most 2 ms of releases: a release
    // that waited on a full queue is not made up later.
    let burst = (rate / 500.0).max(1.0);
    let mut tokens = 0.0_f64;
    let mut last = start;
    let mut n = 0_u64;
    'release: loop {
        let now = Instant::now();
        if now >= until {
            break;
        }
        tokens = (tokens + (now - last).as_secs_f64() * rate).min(burst);
        last = now;
        while tokens >= 1.0 {
            if Instant::now() >= until || tx.send(n).await.is_err() {
                break 'release;
            }
            n += 1;
            tokens -= 1.0;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // The clients finish what was released.
    drop(tx);
    let mut total = Stats::new();
    let mut end = start;
    while let Some(r) = tasks.join_next().await {
        let (st, last_end) = r.context("load task")?;
        total.merge(&st);
        end = end.max(last_end);
    }
    total.elapsed = end.saturating_duration_since(start);
    Ok(total)
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}
