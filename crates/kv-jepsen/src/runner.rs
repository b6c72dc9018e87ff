//! One run: cluster up, clients and nemesis for a while, heal, final reads,
//! convergence, check, report.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use kv_client::{CasOutcome, Client, Options};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use crate::Error;
use crate::checker::{self, Linearizability};
use crate::cluster::Cluster;
use crate::history::{History, Op, Outcome, Record, Recorder, escape};
use crate::nemesis::{self, Kind, Nemesis, Schedule};

/// What to run.
#[derive(Debug, Clone)]
pub struct Config {
    /// The `kvd` binary.
    pub kvd: PathBuf,
    /// Cluster size.
    pub nodes: usize,
    /// Concurrent clients.
    pub clients: usize,
    /// Keys (registers) the clients work on.
    pub keys: usize,
    /// How long clients and nemesis run.
    pub duration: Duration,
    /// Fault kinds; empty: none.
    pub nemesis: Vec<Kind>,
    /// When and how long faults happen.
    pub schedule: Schedule,
    /// Seeds the workload and the nemesis.
    pub seed: u64,
    /// Bound on one client operation (the client's own timeout).
    pub op_timeout: Duration,
    /// Longest pause a client takes between operations (uniform from 0).
    pub think: Duration,
    /// Extra `kvd` arguments for every node.
    pub kvd_args: Vec<String>,
    /// Where a run that is not OK leaves its history.
    pub out_dir: PathBuf,
    /// Bounds on the check.
    pub check: checker::Options,
    /// Clients read with `serializable` (possibly stale, from any node):
    /// not linearizable by design, so a run with it shows that the suite
    /// catches stale reads.
    pub serializable_reads: bool,
}

impl Config {
    /// Defaults for `kvd` at `kvd`: 3 nodes, 8 clients, 5 keys, 20 s, all
    /// faults, seed 0.
    #[must_use]
    pub fn new(kvd: PathBuf) -> Config {
        Config {
            kvd,
            nodes: 3,
            clients: 8,
            keys: 5,
            duration: Duration::from_secs(20),
            nemesis: Kind::ALL.to_vec(),
            schedule: Schedule::default(),
            seed: 0,
            op_timeout: Duration::from_secs(2),
            think: Duration::from_millis(2),
            kvd_args: Vec::new(),
            out_dir: std::env::temp_dir(),
            check: checker::Options::default(),
            serializable_reads: false,
        }
    }
}

/// The overall verdict of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Linearizable, durable, converged, no node crashed.
    Ok,
    /// The history is not linearizable, or nodes disagree after healing.
    Violation,
    /// A node crashed, or the cluster did not recover after healing.
    Failed,
    /// The checker gave up.
    Unknown,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verdict::Ok => "OK",
            Verdict::Violation => "VIOLATION",
            Verdict::Failed => "FAILED",
            Verdict::Unknown => "UNKNOWN",
        })
    }
}

/// What a run did and found.
#[derive(Debug)]
pub struct Report {
    /// The configuration, as run.
    pub config: Config,
    /// How long clients and nemesis ran.
    pub workload: Duration,
    /// The whole run, start-up and check included.
    pub total: Duration,
    /// Operations by (kind, `ok`/`fail`/`info`).
    pub ops: BTreeMap<(&'static str, &'static str), usize>,
    /// Faults injected, by kind.
    pub faults: BTreeMap<Kind, usize>,
    /// Nodes that exited without being killed.
    pub crashes: Vec<String>,
    /// Other things that went wrong (the cluster did not recover, final
    /// reads failed, nodes disagree).
    pub problems: Vec<String>,
    /// The final read of each key (after healing).
    pub final_reads: Vec<(Bytes, Option<Bytes>)>,
    /// The linearizability check, final reads included.
    pub check: Option<checker::Report>,
    /// The verdict.
    pub verdict: Verdict,
    /// Where the history was written, when the verdict is not OK.
    pub history_file: Option<PathBuf>,
    /// The kept data dirs and node logs, when the verdict is not OK.
    pub kept_dir: Option<PathBuf>,
    /// The history.
    pub history: History,
}

/// Runs the workload against a fresh cluster and checks the result. The
/// cluster is stopped before this returns.
///
/// # Errors
///
/// [`Error`] when the cluster cannot be set up at all; everything that
/// goes wrong once it ran is in the [`Report`].
pub async fn run(config: Config) -> Result<Report, Error> {
    let started = Instant::now();
    let mut cluster = Cluster::create(&config.kvd, config.nodes, &config.kvd_args).await?;
    if let Err(e) = cluster.start_all().await {
        cluster.shutdown().await;
        return Err(e);
    }
    if let Err(e) = cluster.wait_healthy(Duration::from_secs(30)).await {
        cluster.shutdown().await;
        return Err(e);
    }
    let keys: Arc<Vec<Bytes>> = Arc::new(
        (0..config.keys)
            .map(|k| Bytes::from(format!("jepsen-{k}")))
            .collect(),
    );
    let recorder = Recorder::new();
    let stop = Arc::new(AtomicBool::new(false));
    let workload_start = Instant::now();
    let clients: Vec<_> = (0..config.clients)
        .map(|p| {
            let worker = Worker {
                process: u32::try_from(p).unwrap_or(u32::MAX),
                client: Client::new(
                    cluster.endpoints(),
                    Options {
                        timeout: config.op_timeout,
                        serializable: config.serializable_reads,
                        ..Options::default()
                    },
                ),
                keys: keys.clone(),
                recorder: recorder.clone(),
                rng: StdRng::seed_from_u64(config.seed ^ (p as u64).wrapping_mul(0x9E37_79B9)),
                think: config.think,
            };
            let stop = stop.clone();
            tokio::spawn(worker.run(stop))
        })
        .collect();

    let mut problems = Vec::new();
    let mut nemesis = Nemesis::new(
        config.nemesis.clone(),
        config.schedule.clone(),
        config.seed.wrapping_add(1),
    );
    if let Err(e) = nemesis
        .run(&mut cluster, &recorder, workload_start + config.duration)
        .await
    {
        problems.push(format!("nemesis: {e}"));
    }
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        let _ = tokio::time::timeout(config.op_timeout * 3 + Duration::from_secs(5), c).await;
    }
    let workload = workload_start.elapsed();

    // Heal (again: a failed restart above may have left a node down) and
    // let the cluster settle before the final reads.
    if let Err(e) = nemesis::heal_all(&mut cluster).await {
        problems.push(format!("healing: {e}"));
    }
    let mut final_reads = Vec::new();
    match cluster.wait_healthy(Duration::from_secs(30)).await {
        Err(e) => problems.push(format!("after healing: {e}")),
        Ok(_) => {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let p = u32::try_from(config.clients).unwrap_or(u32::MAX);
            let mut converged = Err(String::new());
            for _ in 0..2 {
                match final_read(&cluster, &keys, p, &recorder).await {
                    Ok(reads) => final_reads = reads,
                    Err(e) => {
                        converged = Err(e);
                        break;
                    }
                }
                converged = convergence(&cluster, &final_reads).await;
                if converged.is_ok() {
                    break;
                }
            }
            if let Err(e) = converged {
                problems.push(e);
            }
        }
    }
    let crashes = nemesis.crashes.clone();
    let faults = nemesis.injected.clone();
    let history = recorder.snapshot();
    let check_opts = config.check.clone();
    let to_check = history.clone();
    let check = tokio::task::spawn_blocking(move || checker::check(&to_check, &check_opts))
        .await
        .map_err(|e| Error::InvalidHistory(format!("checker: {e}")))??;
    let verdict = match check.verdict {
        Linearizability::Violation(_) => Verdict::Violation,
        _ if problems.iter().any(|p| p.starts_with("divergence")) => Verdict::Violation,
        _ if !problems.is_empty() || !crashes.is_empty() => Verdict::Failed,
        Linearizability::Unknown(_) => Verdict::Unknown,
        Linearizability::Linearizable => Verdict::Ok,
    };
    let mut ops = BTreeMap::new();
    for r in &history.records {
        *ops.entry((r.op.kind(), r.outcome.class())).or_default() += 1;
    }
    cluster.shutdown().await;
    let mut report = Report {
        workload,
        total: Duration::ZERO,
        ops,
        faults,
        crashes,
        problems,
        final_reads,
        check: Some(check),
        verdict,
        history_file: None,
        kept_dir: None,
        history,
        config,
    };
    if verdict != Verdict::Ok {
        keep(&mut report, cluster);
    }
    report.total = started.elapsed();
    Ok(report)
}

/// Leaves the history file and the cluster's directory behind.
fn keep(report: &mut Report, cluster: Cluster) {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let _ = std::fs::create_dir_all(&report.config.out_dir);
    let file = report.config.out_dir.join(format!(
        "jepsen-history-seed{}-{stamp}.txt",
        report.config.seed
    ));
    let mut text = report.history.to_text();
    text.push_str(&format!("# {}\n", report.verdict));
    if std::fs::write(&file, text).is_ok() {
        report.history_file = Some(file);
    }
    let Cluster { nodes, links, dir } = cluster;
    drop(nodes);
    drop(links);
    report.kept_dir = Some(dir.keep());
}

/// One client: random operations until told to stop.
struct Worker {
    process: u32,
    client: Client,
    keys: Arc<Vec<Bytes>>,
    recorder: Recorder,
    rng: StdRng,
    think: Duration,
}

impl Worker {
    async fn run(mut self, stop: Arc<AtomicBool>) {
        // The last value this client saw per key: the usual expectation of
        // its cas, so that some of them succeed.
        let mut seen: HashMap<Bytes, Option<Bytes>> = HashMap::new();
        let mut n: u64 = 0;
        while !stop.load(Ordering::SeqCst) {
            n += 1;
            let Some(key) = self.keys.choose(&mut self.rng).cloned() else {
                return;
            };
            let value = Bytes::from(format!("{}-{n}", self.process));
            let op = match self.rng.gen_range(0..10) {
                0..=3 => Op::Get { key },
                4..=6 => Op::Put { key, value },
                _ => Op::Cas {
                    expected: seen.get(&key).cloned().flatten(),
                    key,
                    new: value,
                },
            };
            let invoke = self.recorder.now();
            let outcome = execute(&self.client, &op).await;
            let complete = self.recorder.now();
            let key = op.key().clone();
            match (&op, &outcome) {
                (_, Outcome::Read(v) | Outcome::CasFailed { current: v }) => {
                    seen.insert(key, v.clone());
                }
                (Op::Put { value, .. }, Outcome::Ok)
                | (Op::Cas { new: value, .. }, Outcome::Ok) => {
                    seen.insert(key, Some(value.clone()));
                }
                _ => {}
            }
            self.recorder.record(Record {
                process: self.process,
                invoke,
                complete,
                op,
                outcome,
            });
            if !self.think.is_zero() {
                let pause = self.rng.gen_range(Duration::ZERO..=self.think);
                tokio::time::sleep(pause).await;
            }
        }
    }
}

fn failure(e: &kv_client::Error) -> Outcome {
    if e.is_definite() {
        Outcome::Fail {
            error: e.to_string(),
        }
    } else {
        Outcome::Info {
            error: e.to_string(),
        }
    }
}

async fn execute(client: &Client, op: &Op) -> Outcome {
    match op {
        Op::Get { key } => match client.get(key).await {
            Ok(v) => Outcome::Read(v),
            Err(e) => failure(&e),
        },
        Op::Put { key, value } => match client.put(key, value).await {
            Ok(()) => Outcome::Ok,
            Err(e) => failure(&e),
        },
        Op::Cas { key, expected, new } => match client.cas(key, expected.as_deref(), new).await {
            Ok(CasOutcome::Swapped) => Outcome::Ok,
            Ok(CasOutcome::Failed { current }) => Outcome::CasFailed { current },
            Err(e) => failure(&e),
        },
    }
}

/// A linearizable read of every key, retried (bounded) until it succeeds;
/// every attempt goes into the history.
async fn final_read(
    cluster: &Cluster,
    keys: &[Bytes],
    process: u32,
    recorder: &Recorder,
) -> Result<Vec<(Bytes, Option<Bytes>)>, String> {
    let client = cluster.client(Duration::from_secs(2));
    let mut out = Vec::with_capacity(keys.len());
    for key in keys {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let op = Op::Get { key: key.clone() };
            let invoke = recorder.now();
            let outcome = execute(&client, &op).await;
            let complete = recorder.now();
            let value = match &outcome {
                Outcome::Read(v) => Some(v.clone()),
                _ => None,
            };
            recorder.record(Record {
                process,
                invoke,
                complete,
                op,
                outcome,
            });
            if let Some(v) = value {
                out.push((key.clone(), v));
                break;
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "final read of {} failed for 30 s after healing",
                    escape(key)
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(out)
}

/// Every node, once it has applied what the leader committed, holds the
/// final value of every key.
async fn convergence(cluster: &Cluster, finals: &[(Bytes, Option<Bytes>)]) -> Result<(), String> {
    let statuses = cluster.statuses(Duration::from_secs(1)).await;
    let commit = statuses
        .iter()
        .flatten()
        .map(|s| s.commit_index)
        .max()
        .unwrap_or(0);
    let mut diffs = Vec::new();
    for node in &cluster.nodes {
        let local = Client::new(
            vec![node.listen.clone()],
            Options {
                timeout: Duration::from_secs(2),
                serializable: true,
                ..Options::default()
            },
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match local.status(&node.listen).await {
                Ok(s) if s.applied_index >= commit => break,
                _ if Instant::now() > deadline => {
                    return Err(format!(
                        "after healing: node {} did not apply index {commit} within 20 s",
                        node.id
                    ));
                }
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        for (key, want) in finals {
            match local.get(key).await {
                Ok(got) if got == *want => {}
                Ok(got) => diffs.push(format!(
                    "node {} holds {} = {} but the final read saw {}",
                    node.id,
                    escape(key),
                    show(got.as_ref()),
                    show(want.as_ref())
                )),
                Err(e) => {
                    return Err(format!(
                        "after healing: local read of {} on node {} failed: {e}",
                        escape(key),
                        node.id
                    ));
                }
            }
        }
    }
    if diffs.is_empty() {
        Ok(())
    } else {
        Err(format!("divergence after healing: {}", diffs.join("; ")))
    }
}

fn show(v: Option<&Bytes>) -> String {
    v.map_or_else(|| "nil".to_owned(), |v| escape(v))
}

impl Report {
    /// Whether the run found nothing wrong.
    #[must_use]
    pub fn is_ok(&self) -> bool {
        self.verdict == Verdict::Ok
    }

    /// Total operations.
    #[must_use]
    pub fn total_ops(&self) -> usize {
        self.ops.values().sum()
    }

    /// Faults injected, all kinds.
    #[must_use]
    pub fn total_faults(&self) -> usize {
        self.faults.values().sum()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.config;
        let kinds: Vec<String> = c.nemesis.iter().map(ToString::to_string).collect();
        writeln!(
            f,
            "jepsen run: {} nodes, {} clients, {} keys, nemesis {}, seed {}",
            c.nodes,
            c.clients,
            c.keys,
            if kinds.is_empty() {
                "none".to_owned()
            } else {
                kinds.join(",")
            },
            c.seed
        )?;
        writeln!(
            f,
            "duration: {:.1} s of workload, {:.1} s in all",
            self.workload.as_secs_f64(),
            self.total.as_secs_f64()
        )?;
        writeln!(f, "ops: {} in all", self.total_ops())?;
        for kind in ["get", "put", "cas"] {
            let n = |class| self.ops.get(&(kind, class)).copied().unwrap_or(0);
            writeln!(
                f,
                "  {kind}: {} ok, {} fail, {} info",
                n("ok"),
                n("fail"),
                n("info")
            )?;
        }
        let faults: Vec<String> = self
            .faults
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        writeln!(
            f,
            "faults: {} ({})",
            self.total_faults(),
            if faults.is_empty() {
                "none".to_owned()
            } else {
                faults.join(", ")
            }
        )?;
        writeln!(
            f,
            "node crashes (exits not caused by the nemesis): {}",
            self.crashes.len()
        )?;
        for crash in &self.crashes {
            writeln!(f, "  {crash}")?;
        }
        writeln!(
            f,
            "final reads after healing: {} of {} keys",
            self.final_reads.len(),
            c.keys
        )?;
        if let Some(check) = &self.check {
            write!(f, "linearizability (final reads included): {check}")?;
        }
        for p in &self.problems {
            writeln!(f, "problem: {p}")?;
        }
        writeln!(f, "verdict: {}", self.verdict)?;
        if let Some(file) = &self.history_file {
            writeln!(f, "history: {}", file.display())?;
        }
        if let Some(dir) = &self.kept_dir {
            writeln!(f, "data dirs and node logs kept in {}", dir.display())?;
        }
        Ok(())
    }
}
