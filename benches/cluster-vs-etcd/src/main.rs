//! `cluster-vs-etcd`: a 3-node FlashKV cluster and a 3-member etcd cluster
//! on 127.0.0.1, started one after the other on fresh data directories, and
//! the same profiles run against both by the same in-process load
//! generator (`load`). Prints one markdown table with both systems and the
//! ratios FlashKV/etcd (`report`).
//!
//! Profiles: puts of 16-byte keys and 100-byte values by 1, 16, 64 and 256
//! closed-loop clients; linearizable gets by 1 and 16 clients; and the load
//! of `etcdctl check perf --load xl` (1,000 clients, 15,000 puts/s offered,
//! 256-byte keys, 1 KiB values). `--repeat N` runs each system N times,
//! alternating which goes first, and reports medians with their ranges.
//!
//! Run it through `run.sh`, which installs etcd and builds kvd first.
#![deny(unsafe_code)]

mod load;
mod procs;
mod report;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, ValueEnum};

use crate::load::{Op, Shape, Stats, Target, Written};
use crate::report::Row;

#[derive(Parser, Debug)]
#[command(about = "FlashKV vs etcd, 3 nodes each on loopback, the same load generator")]
struct Args {
    /// Runs of each system, alternating (F E, E F, ...); the table gives
    /// medians and ranges.
    #[arg(long, default_value_t = 1)]
    repeat: usize,
    /// Short rows (2 s, 0.5 s warm-up, xl 3 s) to see that it works.
    #[arg(long)]
    quick: bool,
    /// Seconds measured per closed-loop row [default: 5, quick 2].
    #[arg(long)]
    duration: Option<f64>,
    /// Seconds of warm-up before each closed-loop row [default: 1, quick 0.5].
    #[arg(long)]
    warmup: Option<f64>,
    /// Seconds of the check-perf-xl row [default: 10, quick 3]; `etcdctl
    /// check perf` itself runs 60 s.
    #[arg(long)]
    xl_duration: Option<f64>,
    /// Leave out the check-perf-xl row.
    #[arg(long)]
    no_xl: bool,
    /// Closed-loop put rows: numbers of clients.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64,256")]
    put_clients: Vec<usize>,
    /// Linearizable get rows: numbers of clients.
    #[arg(long, value_delimiter = ',', default_value = "1,16")]
    get_clients: Vec<usize>,
    /// Distinct keys the put rows cycle through.
    #[arg(long, default_value_t = 100_000)]
    keyspace: u64,
    /// Bound on one request, seconds (longer counts as an error).
    #[arg(long, default_value_t = 10.0)]
    op_timeout: f64,
    /// The kvd binary [default: <repo>/target/release/kvd].
    #[arg(long)]
    kvd: Option<PathBuf>,
    /// What the header calls the kvd build [default: the repository's
    /// commit, marked when the work tree has uncommitted changes].
    #[arg(long)]
    kvd_label: Option<String>,
    /// The etcd binary.
    #[arg(long, default_value = "etcd")]
    etcd: PathBuf,
    /// Which etcd members the etcd clients talk to: the leader (as FlashKV's
    /// client ends up doing), or all three, balanced (followers forward
    /// writes to the leader).
    #[arg(long, value_enum, default_value_t = EtcdEndpoints::Leader)]
    etcd_endpoints: EtcdEndpoints,
    /// Working directory for the data directories and server logs
    /// [default: <crate>/target/bench-data].
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Keep the data directories and logs of the last runs.
    #[arg(long)]
    keep: bool,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum EtcdEndpoints {
    Leader,
    All,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum System {
    Flash,
    Etcd,
}

impl System {
    fn name(self) -> &'static str {
        match self {
            System::Flash => "FlashKV",
            System::Etcd => "etcd",
        }
    }
}

#[derive(Clone, Debug)]
enum Profile {
    Closed { op: Op, clients: usize },
    Xl,
}

impl Profile {
    fn name(&self) -> String {
        match self {
            Profile::Closed {
                op: Op::Put,
                clients,
            } => format!("put, {clients} client{}", plural(*clients)),
            Profile::Closed {
                op: Op::Get,
                clients,
            } => format!("linearizable get, {clients} client{}", plural(*clients)),
            Profile::Xl => "check perf xl: 1,000 clients, 15,000/s offered".to_owned(),
        }
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

struct Plan {
    profiles: Vec<Profile>,
    warmup: Duration,
    duration: Duration,
    xl_duration: Duration,
    op_timeout: Duration,
    kvd: PathBuf,
    etcd: PathBuf,
    dir: PathBuf,
    keyspace: u64,
    etcd_endpoints: EtcdEndpoints,
    keep: bool,
}

fn secs(s: f64, what: &str) -> Result<Duration> {
    Duration::try_from_secs_f64(s).with_context(|| format!("{what}: {s} is not a duration"))
}

fn plan(a: &Args) -> Result<Plan> {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let repo = crate_dir.join("../..");
    let mut profiles = Vec::new();
    for &clients in &a.put_clients {
        profiles.push(Profile::Closed {
            op: Op::Put,
            clients,
        });
    }
    for &clients in &a.get_clients {
        profiles.push(Profile::Closed {
            op: Op::Get,
            clients,
        });
    }
    if !a.no_xl {
        profiles.push(Profile::Xl);
    }
    if a.repeat == 0 || profiles.is_empty() {
        bail!("nothing to run (--repeat 0 or no profiles)");
    }
    if a.put_clients.iter().chain(&a.get_clients).any(|&c| c == 0) || a.keyspace == 0 {
        bail!("clients and --keyspace must be at least 1");
    }
    let (d, w, x) = if a.quick {
        (2.0, 0.5, 3.0)
    } else {
        (5.0, 1.0, 10.0)
    };
    Ok(Plan {
        profiles,
        warmup: secs(a.warmup.unwrap_or(w), "--warmup")?,
        duration: secs(a.duration.unwrap_or(d), "--duration")?,
        xl_duration: secs(a.xl_duration.unwrap_or(x), "--xl-duration")?,
        op_timeout: secs(a.op_timeout, "--op-timeout")?,
        kvd: a
            .kvd
            .clone()
            .unwrap_or_else(|| repo.join("target/release/kvd")),
        etcd: a.etcd.clone(),
        dir: a
            .dir
            .clone()
            .unwrap_or_else(|| crate_dir.join("target/bench-data")),
        keyspace: a.keyspace,
        etcd_endpoints: a.etcd_endpoints,
        keep: a.keep,
    })
}

const SMALL: Shape = Shape {
    key_size: 16,
    value_size: 100,
    keyspace: 0,
    prefix: "k",
};

/// One system's run of every profile on a fresh cluster.
async fn run_system(p: &Plan, system: System, repeat: usize) -> Result<Vec<Stats>> {
    let dir = p.dir.join(format!("{}-{repeat}", system.name()));
    let mut cluster = match system {
        System::Flash => procs::start_flashkv(&p.kvd, &dir).await?,
        System::Etcd => procs::start_etcd(&p.etcd, &dir).await?,
    };
    eprintln!(
        "[{}] run {}: 3 nodes up (pids {:?}), leader {}",
        system.name(),
        repeat + 1,
        cluster.pids(),
        cluster.leader
    );
    let target = match system {
        System::Flash => Target::Flash {
            endpoints: cluster.endpoints.clone(),
            timeout: p.op_timeout,
        },
        System::Etcd => Target::Etcd {
            endpoints: match p.etcd_endpoints {
                EtcdEndpoints::Leader => vec![cluster.leader.clone()],
                EtcdEndpoints::All => cluster.endpoints.clone(),
            },
            timeout: p.op_timeout,
        },
    };
    let small = Shape {
        keyspace: p.keyspace,
        ..SMALL
    };
    let xl = Shape {
        key_size: 256,
        value_size: 1024,
        keyspace: u64::MAX,
        prefix: "check-perf/",
    };
    let written = Arc::new(Written::default());
    let mut out = Vec::new();
    for profile in &p.profiles {
        let st = match profile {
            Profile::Closed { op, clients } => {
                load::closed(
                    &target, *clients, *op, &small, &written, p.warmup, p.duration,
                )
                .await
            }
            Profile::Xl => load::limited(&target, 1000, 15_000.0, &xl, p.xl_duration).await,
        }
        .with_context(|| format!("{}: {}", system.name(), profile.name()))?;
        cluster.check_running()?;
        eprintln!(
            "[{}] {}: {:.0} ops/s, p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.1} ms, {} errors",
            system.name(),
            profile.name(),
            st.ops_per_s(),
            st.ms(0.5),
            st.ms(0.99),
            st.ms(0.999),
            st.slowest_ms(),
            st.errors
        );
        out.push(st);
    }
    cluster.stop();
    drop(cluster);
    if !p.keep {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(out)
}

fn command_line(program: &Path, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "?".to_owned())
}

/// The repository's commit, marked when tracked files have changes.
fn build_label(repo: &Path) -> String {
    let repo = repo.to_string_lossy();
    let commit = command_line(
        Path::new("git"),
        &["-C", &repo, "rev-parse", "--short", "HEAD"],
    );
    let dirty = command_line(
        Path::new("git"),
        &["-C", &repo, "status", "--porcelain", "--untracked-files=no"],
    );
    if dirty.is_empty() {
        commit
    } else {
        format!("{commit} with uncommitted changes")
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".to_owned())
}

fn now() -> String {
    command_line(Path::new("date"), &["-u", "+%Y-%m-%d %H:%M UTC"])
}

async fn run(a: Args) -> Result<()> {
    let p = plan(&a)?;
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let etcd_version = command_line(&p.etcd, &["--version"]);
    let etcd_version = etcd_version.lines().next().unwrap_or("?").to_owned();
    if etcd_version == "?" {
        bail!(
            "cannot run {} --version: install etcd (`apt-get install etcd-server`) or pass --etcd",
            p.etcd.display()
        );
    }
    let started = now();
    let load_before = loadavg();
    eprintln!(
        "cluster-vs-etcd: {} repeat(s), {:?} per row after {:?} warm-up, xl {:?}",
        a.repeat, p.duration, p.warmup, p.xl_duration
    );
    let mut flash: Vec<Vec<Stats>> = Vec::new();
    let mut etcd: Vec<Vec<Stats>> = Vec::new();
    for r in 0..a.repeat {
        let order = if r % 2 == 0 {
            [System::Flash, System::Etcd]
        } else {
            [System::Etcd, System::Flash]
        };
        for system in order {
            let rows = run_system(&p, system, r).await?;
            match system {
                System::Flash => flash.push(rows),
                System::Etcd => etcd.push(rows),
            }
            eprintln!("load average: {}", loadavg());
        }
    }
    let rows: Vec<Row> = p
        .profiles
        .iter()
        .enumerate()
        .map(|(i, prof)| Row {
            name: prof.name(),
            flash: flash.iter().map(|runs| runs[i].clone()).collect(),
            etcd: etcd.iter().map(|runs| runs[i].clone()).collect(),
        })
        .collect();
    let commit = a.kvd_label.clone().unwrap_or_else(|| build_label(&repo));
    println!();
    println!(
        "FlashKV ({commit}, {}) vs {etcd_version}: 3 nodes each on 127.0.0.1, \
         one after the other; started {started}, ended {}",
        p.kvd.display(),
        now()
    );
    println!(
        "{} repeat(s), systems alternating; {} s per closed-loop row after {} s warm-up{}; \
         etcd clients to {}; {} cores; load average before {load_before}, after {}",
        a.repeat,
        p.duration.as_secs_f64(),
        p.warmup.as_secs_f64(),
        if a.no_xl {
            String::new()
        } else {
            format!(", xl row {} s", p.xl_duration.as_secs_f64())
        },
        match p.etcd_endpoints {
            EtcdEndpoints::Leader => "the leader",
            EtcdEndpoints::All => "all members",
        },
        std::thread::available_parallelism().map_or(0, std::num::NonZero::get),
        loadavg()
    );
    println!();
    print!("{}", report::table(&rows));
    let notes = report::notes(&rows);
    if !notes.is_empty() {
        println!();
        print!("{notes}");
    }
    Ok(())
}

fn main() -> Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        // Dropping the run on a signal drops the clusters, which stop their
        // processes by PID.
        tokio::select! {
            r = run(args) => r,
            _ = tokio::signal::ctrl_c() => bail!("interrupted"),
            _ = term.recv() => bail!("terminated"),
        }
    })
}
