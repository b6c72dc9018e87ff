//! `cluster-bench scale`: a 3-node cluster of release kvd processes loaded
//! with gigabytes of live data, then a fourth node that joins from an empty
//! data directory and catches up from a streamed snapshot.
//!
//! Reports, per node, the peak resident memory (VmHWM, and the peaks of its
//! anonymous and file-backed parts sampled from `/proc`), the data on disk,
//! the load's throughput, and the joining node's snapshot transfer rate (from
//! the leader's "snapshot sent" log line) and catch-up time. At the end it
//! reads a sample of the values back from the new node alone and checks
//! every byte.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use kv_client::{Client, Options};

use crate::procs::{Mem, Node, Sampler, dir_bytes, free_ports};

/// Memory the engine may hold by configuration: one active and two frozen
/// memtables of 16 MiB (kv-engine's defaults, which kvd uses). Tables are
/// memory-mapped, so there is no block cache: their pages are page cache,
/// counted as RssFile and reclaimable.
pub const ENGINE_BUDGET: u64 = 3 * (16 << 20);

/// What the issue allows beyond the budgets.
pub const RSS_ALLOWANCE: u64 = 512 << 20;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The kvd binary.
    #[arg(long, default_value = "target/release/kvd")]
    kvd: PathBuf,
    /// Working directory (emptied first; must be new or one this tool made).
    #[arg(long, default_value = "target/scale")]
    dir: PathBuf,
    /// Live user data to load, in GB (10^9 bytes of keys and values).
    #[arg(long, default_value_t = 5.0)]
    gb: f64,
    /// Concurrent writers.
    #[arg(long, default_value_t = 32)]
    clients: usize,
    /// Smallest value, bytes.
    #[arg(long, default_value_t = 1024)]
    value_min: usize,
    /// Largest value, bytes (sizes are uniform in between).
    #[arg(long, default_value_t = 65536)]
    value_max: usize,
    /// Values read back from the joined node and checked.
    #[arg(long, default_value_t = 2000)]
    verify: u64,
    /// Bound on each phase (load, catch-up), seconds.
    #[arg(long, default_value_t = 3600)]
    phase_timeout: u64,
    /// Leave the data directories in place afterwards.
    #[arg(long)]
    keep: bool,
}

const MARKER: &str = ".cluster-bench";
const KEY_PREFIX: &str = "scale/";

/// Bytes values are cut from: incompressible, the same in every run.
struct Values {
    pool: Vec<u8>,
    min: usize,
    max: usize,
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

impl Values {
    fn new(min: usize, max: usize) -> Values {
        let len = 4 << 20;
        let pool = (0..len / 8u64 as usize)
            .flat_map(|i| splitmix(i as u64).to_le_bytes())
            .collect();
        Values { pool, min, max }
    }

    fn key(i: u64) -> String {
        format!("{KEY_PREFIX}{i:012}")
    }

    /// The value of key `i`: its number, then bytes of the pool at an
    /// offset and of a length that depend on `i`.
    fn value(&self, i: u64) -> Vec<u8> {
        let h = splitmix(i ^ 0x5CA1E);
        let span = (self.max - self.min + 1) as u64;
        let len = self.min + usize::try_from(h % span).unwrap_or(0);
        let body = len.saturating_sub(8);
        let room = (self.pool.len() - body) as u64;
        let at = usize::try_from((h >> 20) % room).unwrap_or(0);
        let mut v = Vec::with_capacity(len.max(8));
        v.extend_from_slice(&i.to_le_bytes());
        v.extend_from_slice(&self.pool[at..at + body]);
        v.truncate(len);
        v
    }

    fn mean_entry(&self) -> f64 {
        (self.min + self.max) as f64 / 2.0 + Values::key(0).len() as f64
    }
}

fn mib(b: u64) -> f64 {
    b as f64 / f64::from(1u32 << 20)
}

fn prepare_dir(dir: &Path) -> Result<()> {
    if dir.exists() {
        let ours = dir.join(MARKER).exists();
        let empty = std::fs::read_dir(dir)?.next().is_none();
        ensure!(
            ours || empty,
            "{} exists and was not made by cluster-bench; choose another --dir",
            dir.display()
        );
        std::fs::remove_dir_all(dir).with_context(|| format!("emptying {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join(MARKER), b"")?;
    Ok(())
}

pub(crate) fn client(endpoints: Vec<String>, timeout: Duration, serializable: bool) -> Client {
    Client::new(
        endpoints,
        Options {
            timeout,
            serializable,
            ..Options::default()
        },
    )
}

/// Waits until one of `nodes` is leader and the others that answer agree.
pub(crate) async fn wait_leader(nodes: &[&Node], within: Duration) -> Result<u64> {
    let c = client(
        nodes.iter().map(|n| n.listen.clone()).collect(),
        Duration::from_millis(500),
        false,
    );
    let deadline = Instant::now() + within;
    loop {
        let mut st = Vec::new();
        for n in nodes {
            if let Ok(s) = c.status(&n.listen).await {
                st.push(s);
            }
        }
        if let Some(l) = st.iter().find(|s| s.role == "leader")
            && st.iter().all(|s| s.leader_id == l.id)
            && st.len() * 2 > nodes.len()
        {
            return Ok(l.id);
        }
        ensure!(Instant::now() < deadline, "no leader within {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until `node` has applied `index`.
async fn wait_applied(node: &Node, index: u64, within: Duration) -> Result<()> {
    let c = client(vec![node.listen.clone()], Duration::from_secs(2), false);
    let deadline = Instant::now() + within;
    loop {
        if let Ok(s) = c.status(&node.listen).await
            && s.applied_index >= index
        {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "node {} did not apply index {index} within {within:?}",
            node.id
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

struct Load {
    puts: u64,
    bytes: u64,
    errors: u64,
    elapsed: Duration,
    latencies_us: Vec<u32>,
}

async fn load(
    endpoints: &[String],
    values: &Arc<Values>,
    args: &Args,
    sampler: &Sampler,
) -> Result<Load> {
    let keys = (args.gb * 1e9 / values.mean_entry()).ceil() as u64;
    let next = Arc::new(AtomicU64::new(0));
    let bytes = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.phase_timeout);
    let mut tasks = Vec::new();
    for _ in 0..args.clients {
        let c = client(endpoints.to_vec(), Duration::from_secs(30), false);
        let (next, bytes, errors, values) =
            (next.clone(), bytes.clone(), errors.clone(), values.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= keys {
                    return Ok::<_, anyhow::Error>(lat);
                }
                let (k, v) = (Values::key(i), values.value(i));
                let mut tries = 0;
                loop {
                    let t = Instant::now();
                    match c.put(&k, &v).await {
                        Ok(()) => {
                            lat.push(u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX));
                            bytes.fetch_add((k.len() + v.len()) as u64, Ordering::Relaxed);
                            break;
                        }
                        Err(e) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                            tries += 1;
                            ensure!(tries < 50 && Instant::now() < deadline, "put {k}: {e}");
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                    }
                }
            }
        }));
    }
    let mut last = (Instant::now(), 0u64);
    while !tasks.iter().all(|t| t.is_finished()) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if last.0.elapsed() >= Duration::from_secs(10) {
            let b = bytes.load(Ordering::Relaxed);
            let rate = (b - last.1) as f64 / 1e6 / last.0.elapsed().as_secs_f64();
            let mem: Vec<String> = sampler
                .now()
                .iter()
                .map(|(id, m)| format!("n{id} {:.0}/{:.0}", mib(m.anon), mib(m.rss)))
                .collect();
            eprintln!(
                "  {:>6.1} s  {:>7.2} GB  {:>6.1} MB/s  errors {}  anon/rss MiB: {}",
                started.elapsed().as_secs_f64(),
                b as f64 / 1e9,
                rate,
                errors.load(Ordering::Relaxed),
                mem.join("  ")
            );
            last = (Instant::now(), b);
        }
    }
    let mut latencies_us = Vec::new();
    for t in tasks {
        latencies_us.extend(t.await??);
    }
    latencies_us.sort_unstable();
    Ok(Load {
        puts: keys,
        bytes: bytes.load(Ordering::Relaxed),
        errors: errors.load(Ordering::Relaxed),
        elapsed: started.elapsed(),
        latencies_us,
    })
}

fn pct(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    f64::from(sorted[i]) / 1000.0
}

/// The leader's "snapshot sent" line for `peer`: (bytes, seconds).
fn snapshot_sent(log: &str, peer: u64) -> Option<(u64, f64)> {
    let line = log
        .lines()
        .rfind(|l| l.contains("snapshot sent") && l.contains(&format!("peer={peer} ")))?;
    let field = |name: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(name))
            .map(str::to_owned)
    };
    let bytes = field("bytes=")?.parse().ok()?;
    let elapsed = field("elapsed=")?;
    let secs = if let Some(ms) = elapsed.strip_suffix("ms") {
        ms.parse::<f64>().ok()? / 1000.0
    } else if let Some(us) = elapsed.strip_suffix("µs") {
        us.parse::<f64>().ok()? / 1e6
    } else {
        elapsed.strip_suffix('s')?.parse().ok()?
    };
    Some((bytes, secs))
}

fn mem_row(id: u64, m: &Mem, disk: Option<(u64, u64)>) -> String {
    let within = m.hwm < RSS_ALLOWANCE + ENGINE_BUDGET;
    let disk = disk.map_or(String::new(), |(kv, raft)| {
        format!("  {:>8.0} {:>8.0}", mib(kv), mib(raft))
    });
    format!(
        "  {id:>4} {:>10.0} {:>10.0} {:>10.0} {:>7}{disk}",
        mib(m.hwm),
        mib(m.anon),
        mib(m.file),
        if within { "yes" } else { "NO" }
    )
}

pub async fn run(args: Args) -> Result<()> {
    ensure!(
        args.value_min >= 8 && args.value_min <= args.value_max,
        "need 8 <= --value-min <= --value-max"
    );
    ensure!(args.value_max <= 1 << 20, "--value-max is at most 1 MiB");
    ensure!(
        args.gb > 0.0 && args.clients > 0,
        "--gb and --clients must be positive"
    );
    ensure!(
        args.kvd.exists(),
        "{} not found (cargo build --release -p kvd)",
        args.kvd.display()
    );
    let dir = std::path::absolute(&args.dir)?;
    prepare_dir(&dir)?;
    let values = Arc::new(Values::new(args.value_min, args.value_max));
    let ports = free_ports(4)?;
    let addrs: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let peers = (0..3)
        .map(|i| format!("{}={}", i + 1, addrs[i]))
        .collect::<Vec<_>>()
        .join(",");
    let sampler = Sampler::start(Duration::from_millis(200));

    let mut nodes = Vec::new();
    for i in 0..3u64 {
        let n = Node::start(
            &args.kvd,
            i + 1,
            &addrs[i as usize],
            &dir.join(format!("n{}", i + 1)),
            &["--peers".into(), peers.clone()],
        )?;
        sampler.watch(n.id, n.pid().context("pid")?);
        nodes.push(n);
    }
    let refs: Vec<&Node> = nodes.iter().collect();
    wait_leader(&refs, Duration::from_secs(30)).await?;
    let endpoints: Vec<String> = addrs[..3].to_vec();

    eprintln!(
        "loading {:.2} GB of values of {}..{} bytes with {} writers into 3 nodes ({})",
        args.gb,
        args.value_min,
        args.value_max,
        args.clients,
        dir.display()
    );
    let admin = client(endpoints.clone(), Duration::from_secs(30), false);
    let term_before = admin.status(&addrs[0]).await?.term;
    let l = load(&endpoints, &values, &args, &sampler).await?;
    let leader = wait_leader(&refs, Duration::from_secs(30)).await?;
    let term_after = admin.status(&addrs[leader as usize - 1]).await?.term;
    let commit = admin
        .status(&addrs[leader as usize - 1])
        .await?
        .commit_index;
    for n in &nodes {
        wait_applied(n, commit, Duration::from_secs(args.phase_timeout)).await?;
    }
    let load_peaks = sampler.peaks();
    let disks: Vec<(u64, u64)> = nodes
        .iter()
        .map(|n| {
            (
                dir_bytes(&n.data_dir.join("kv")),
                dir_bytes(&n.data_dir.join("raft")),
            )
        })
        .collect();

    // A fourth node joins from an empty data directory.
    sampler.reset_peaks();
    admin
        .member_add(4, &addrs[3], None, false)
        .await
        .context("member add 4")?;
    let target = admin
        .status(&addrs[leader as usize - 1])
        .await?
        .commit_index;
    let join_started = Instant::now();
    let n4 = Node::start(
        &args.kvd,
        4,
        &addrs[3],
        &dir.join("n4"),
        &["--join".into(), endpoints.join(",")],
    )?;
    sampler.watch(4, n4.pid().context("pid")?);
    wait_applied(&n4, target, Duration::from_secs(args.phase_timeout)).await?;
    let caught_up = join_started.elapsed();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let m = admin.member_list().await?;
        if m.members.iter().any(|x| x.id == 4 && x.voter) {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "node 4 not promoted within 120 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let promoted = join_started.elapsed();
    let join_peaks = sampler.peaks();
    let sent = nodes.iter().find_map(|n| snapshot_sent(&n.log_text(), 4));

    // Read back a sample from node 4 alone.
    let local = client(vec![addrs[3].clone()], Duration::from_secs(10), true);
    let stride = (l.puts / args.verify.max(1)).max(1);
    let mut checked = 0u64;
    for i in (0..l.puts).step_by(stride as usize) {
        let got = local.get(Values::key(i)).await?;
        if got.as_deref() != Some(values.value(i).as_slice()) {
            bail!("node 4 holds a wrong value for {}", Values::key(i));
        }
        checked += 1;
    }

    let lat = &l.latencies_us;
    println!("\n== cluster-bench scale: 3 nodes, then a 4th joins ==");
    println!(
        "load: {:.2} GB of live data ({} puts of {}..{} B values, {} writers) in {:.1} s: {:.1} MB/s, {:.0} puts/s, {} errors (retried), latency p50 {:.1} ms p99 {:.1} ms max {:.1} ms",
        l.bytes as f64 / 1e9,
        l.puts,
        args.value_min,
        args.value_max,
        args.clients,
        l.elapsed.as_secs_f64(),
        l.bytes as f64 / 1e6 / l.elapsed.as_secs_f64(),
        l.puts as f64 / l.elapsed.as_secs_f64(),
        l.errors,
        pct(lat, 0.5),
        pct(lat, 0.99),
        pct(lat, 1.0),
    );
    println!(
        "raft term before the load {term_before}, after {term_after}: {}",
        if term_after == term_before {
            "no election during the load".to_owned()
        } else {
            format!("{} election(s) during the load", term_after - term_before)
        }
    );
    println!(
        "memory limit checked: VmHWM < {:.0} MiB (512 MiB + {:.0} MiB of memtables; tables are mmap'd, no block cache)",
        mib(RSS_ALLOWANCE + ENGINE_BUDGET),
        mib(ENGINE_BUDGET)
    );
    println!(
        "during the load:\n  node  VmHWM MiB  anon peak  file peak  within   kv MiB  raft MiB"
    );
    for (i, n) in nodes.iter().enumerate() {
        println!("{}", mem_row(n.id, &load_peaks[&n.id], Some(disks[i])));
    }
    println!("while node 4 joined:\n  node  VmHWM MiB  anon peak  file peak  within");
    for (id, m) in &join_peaks {
        println!("{}", mem_row(*id, m, None));
    }
    match sent {
        Some((bytes, secs)) => println!(
            "snapshot to node 4: {:.2} GB in {:.1} s = {:.0} MB/s (leader's log)",
            bytes as f64 / 1e9,
            secs,
            bytes as f64 / 1e6 / secs
        ),
        None => println!("snapshot to node 4: no \"snapshot sent\" line in the logs"),
    }
    println!(
        "node 4: applied index {target} {:.1} s after start, voter after {:.1} s; {checked} sampled values read from it alone, all correct",
        caught_up.as_secs_f64(),
        promoted.as_secs_f64()
    );
    drop(n4);
    drop(nodes);
    if !args.keep {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(())
}
