//! `kv-jepsen`: one run of the fault suite (what `cargo xtask jepsen`
//! runs), or a check of a history file left by an earlier run.
//!
//! Exit codes: 0 the run is OK; 1 a violation, a failure or an unknown
//! verdict; 2 bad arguments or a cluster that would not start.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use kv_jepsen::checker;
use kv_jepsen::history::History;
use kv_jepsen::nemesis::Kind;
use kv_jepsen::runner::{Config, run};

const USAGE: &str = "usage: kv-jepsen --kvd PATH [--seconds 60] [--nemesis kill,pause,partition] \
[--nodes 3] [--clients 8] [--keys 5] [--seed S] [--op-timeout-ms 2000] [--snapshot-threshold N] [--out DIR] [--serializable-reads]
       kv-jepsen --check HISTORY_FILE";

enum Mode {
    Run(Box<Config>),
    Check(PathBuf),
}

fn parse(args: &[String]) -> Result<Mode, String> {
    let mut config = Config::new(PathBuf::new());
    config.duration = Duration::from_secs(60);
    config.seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut check = None;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) => (f, Some(v.to_owned())),
            None => (arg.as_str(), None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| it.next().cloned())
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        let number = |v: String| {
            v.parse::<u64>()
                .map_err(|_| format!("{flag}: not a number: {v}"))
        };
        let count = |v: String| {
            v.parse::<usize>()
                .ok()
                .filter(|&n| n > 0)
                .ok_or_else(|| format!("{flag}: not a positive number: {v}"))
        };
        match flag {
            "--kvd" => config.kvd = PathBuf::from(value()?),
            "--seconds" => config.duration = Duration::from_secs(number(value()?)?),
            "--nemesis" => config.nemesis = Kind::parse_list(&value()?)?,
            "--nodes" => config.nodes = count(value()?)?,
            "--clients" => config.clients = count(value()?)?,
            "--keys" => config.keys = count(value()?)?,
            "--seed" => config.seed = number(value()?)?,
            "--op-timeout-ms" => {
                config.op_timeout = Duration::from_millis(number(value()?)?.max(1));
            }
            "--snapshot-threshold" => {
                let n = number(value()?)?;
                config.kvd_args = vec!["--snapshot-threshold".into(), n.to_string()];
            }
            "--out" => config.out_dir = PathBuf::from(value()?),
            "--serializable-reads" => config.serializable_reads = true,
            "--check" => check = Some(PathBuf::from(value()?)),
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if let Some(file) = check {
        return Ok(Mode::Check(file));
    }
    if config.kvd.as_os_str().is_empty() {
        return Err("--kvd is required".into());
    }
    Ok(Mode::Run(Box::new(config)))
}

fn check_file(file: &PathBuf) -> ExitCode {
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("kv-jepsen: reading {}: {e}", file.display());
            return ExitCode::from(2);
        }
    };
    let report =
        History::parse(&text).and_then(|h| checker::check(&h, &checker::Options::default()));
    match report {
        Ok(r) => {
            print!("{r}");
            if r.verdict == checker::Linearizability::Linearizable {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("kv-jepsen: {}: {e}", file.display());
            ExitCode::from(2)
        }
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let config = match parse(&args) {
        Ok(Mode::Run(c)) => c,
        Ok(Mode::Check(file)) => return check_file(&file),
        Err(e) => {
            if !e.is_empty() {
                eprintln!("kv-jepsen: {e}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("kv-jepsen: starting the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    println!(
        "kv-jepsen: {} s, seed {} (--seed {} repeats the schedule)",
        config.duration.as_secs(),
        config.seed,
        config.seed
    );
    match runtime.block_on(run(*config)) {
        Ok(report) => {
            print!("{report}");
            if report.is_ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("kv-jepsen: {e}");
            ExitCode::from(2)
        }
    }
}
