//! `compare`: kv-engine side by side with peer engines, db_bench style.
//!
//! Every engine runs in turn in this one process, on a fresh temporary
//! directory, on the same pre-generated keys (fixed seed). See the README
//! next to Cargo.toml for the workloads and the fair settings; each engine's
//! settings are written next to its code in `src/engines/`.

mod data;
mod engines;
mod report;
mod workloads;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Result, bail};
use clap::Parser;

#[derive(Parser, Debug)]
#[command(about = "kv-engine vs fjall, redb, sled, SQLite, RocksDB and BTreeMap")]
struct Args {
    /// Keys to load (default 1,000,000; 100,000 with --quick).
    #[arg(long)]
    num: Option<usize>,
    /// Keys written by each fillsync workload (default 20,000; 2,000 with --quick).
    #[arg(long)]
    sync_num: Option<usize>,
    /// Point reads for readrandom, readmissing and readwhilewriting (default --num).
    #[arg(long)]
    reads: Option<usize>,
    /// Seeks for seekrandom (default --num / 10).
    #[arg(long)]
    seeks: Option<usize>,
    /// Keys read after each seek.
    #[arg(long, default_value_t = 100)]
    scan_len: usize,
    /// Writer threads for the multi-threaded fillsync.
    #[arg(long, default_value_t = 8)]
    sync_threads: usize,
    /// Small sizes that finish in under a minute.
    #[arg(long)]
    quick: bool,
    /// Comma-separated engines to run (default all).
    #[arg(long, value_delimiter = ',')]
    engines: Vec<String>,
    /// Comma-separated workloads to run (default all).
    #[arg(long, value_delimiter = ',')]
    workloads: Vec<String>,
    /// Time budget of each timed loop, in seconds (default 30; 3 with
    /// --quick). A loop that runs out reports the rate of the ops it did and
    /// says so; a fill that runs out finishes loading untimed, in batches.
    #[arg(long)]
    max_secs: Option<f64>,
    /// Keep the database directories of the fillrandom phase.
    #[arg(long)]
    keep: bool,
    /// Seed of the key generator.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Directory for the temporary databases (default the system temp dir).
    #[arg(long)]
    dir: Option<PathBuf>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let num = args
        .num
        .unwrap_or(if args.quick { 100_000 } else { 1_000_000 });
    let sync_num = args
        .sync_num
        .unwrap_or(if args.quick { 2_000 } else { 20_000 });
    let reads = args.reads.unwrap_or(num);
    let seeks = args.seeks.unwrap_or(num / 10);
    anyhow::ensure!(
        num > 0 && sync_num > 0 && args.sync_threads > 0,
        "sizes must be positive"
    );

    let known = engines::all();
    let engine_list: Vec<&str> = if args.engines.is_empty() {
        known.clone()
    } else {
        for e in &args.engines {
            if !known.contains(&e.as_str()) {
                bail!("unknown engine {e:?} (known: {})", known.join(","));
            }
        }
        known
            .iter()
            .copied()
            .filter(|k| args.engines.iter().any(|e| e == k))
            .collect()
    };
    for w in &args.workloads {
        if w != "fdatasync" && !workloads::ALL.contains(&w.as_str()) {
            bail!(
                "unknown workload {w:?} (known: {},fdatasync)",
                workloads::ALL.join(",")
            );
        }
    }
    let selected = |w: &str| args.workloads.is_empty() || args.workloads.iter().any(|x| x == w);
    let workload_list: Vec<&str> = workloads::ALL
        .iter()
        .copied()
        .filter(|w| selected(w))
        .collect();
    let cfg = workloads::Config {
        root: args.dir.clone().unwrap_or_else(std::env::temp_dir),
        scan_len: args.scan_len,
        sync_threads: args.sync_threads,
        max_secs: args.max_secs.unwrap_or(if args.quick { 3.0 } else { 30.0 }),
        keep: args.keep,
    };

    let started = Instant::now();
    eprintln!("generating {num} keys (seed {})", args.seed);
    let data = data::Data::generate(args.seed, num, reads, seeks, sync_num);

    let mut cells = HashMap::new();
    for name in &engine_list {
        let t = Instant::now();
        workloads::run_engine(name, &data, &cfg, &selected, &mut |w, cell| {
            if let workloads::Cell::Rate(r) = &cell {
                eprintln!("[{name}] {w}: {:.0} ops/s", r.per_sec());
            }
            cells.insert((name.to_string(), w.to_string()), cell);
        });
        eprintln!("[{name}] done in {:.1} s", t.elapsed().as_secs_f64());
    }

    println!("{}", header(&args, num, sync_num, reads, seeks, &cfg.root));
    let report = report::Report {
        engines: &engine_list,
        workloads: &workload_list,
        cells: &cells,
        sync_threads: args.sync_threads,
    };
    println!("{}", report.render());
    println!("Total time {:.1} s.", started.elapsed().as_secs_f64());
    Ok(())
}

fn header(
    args: &Args,
    num: usize,
    sync_num: usize,
    reads: usize,
    seeks: usize,
    root: &std::path::Path,
) -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cmd: Vec<String> = std::env::args().collect();
    format!(
        "## compare{}: {num} keys × (16 B key + 100 B value), {reads} reads, {seeks} seeks, fillsync {sync_num} keys\n\n\
         Machine: {cpu}, {cores} cores, Linux {}; databases under {}; RocksDB {} (system library).\n\
         Command: `{}`\n",
        if args.quick { " --quick" } else { "" },
        kernel.trim(),
        root.display(),
        engines::rocksdb::version(),
        cmd.join(" "),
    )
}
