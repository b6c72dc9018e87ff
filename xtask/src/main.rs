//! `cargo xtask`: project automation.
//!
//! - `cargo xtask ci`: everything CI runs (`.ci/run`: format, lints, all
//!   tests, the failpoint tests, short fuzz runs).
//! - `cargo xtask cluster [--nodes 3] [--base-port 7001] [--data-dir target/cluster] [--fresh]`:
//!   a local cluster of release `kvd` processes; Ctrl-C stops it.
//! - `cargo xtask jepsen [--seconds 60] [--nemesis kill,pause,partition] [--nodes 3]
//!   [--clients 8] [--keys 5] [--seed S]`: the fault suite against release `kvd`
//!   processes; exits non-zero on a violation.

mod cluster;
mod jepsen;

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, bail};

fn run(args: &[&str]) -> Result<()> {
    eprintln!("+ cargo {}", args.join(" "));
    let status = Command::new(env!("CARGO"))
        .args(args)
        .status()
        .with_context(|| format!("running cargo {}", args.join(" ")))?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}

fn workspace_root() -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    here.parent().map_or(here.clone(), PathBuf::from)
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("ci") => {
            // One definition of what CI runs: the script itself.
            let script = workspace_root().join(".ci").join("run");
            let status = Command::new("bash")
                .arg(&script)
                .status()
                .with_context(|| format!("running {}", script.display()))?;
            if !status.success() {
                bail!("{} failed ({status})", script.display());
            }
            Ok(())
        }
        Some("cluster") => cluster::run(&args[1..], &workspace_root()),
        Some("jepsen") => jepsen::run(&args[1..], &workspace_root()),
        _ => {
            eprintln!(
                "usage: cargo xtask <command>\n\ncommands:\n  ci       everything CI runs (.ci/run): format, clippy, all tests, short fuzz runs\n  cluster  run a local cluster: [--nodes 3] [--base-port 7001] [--data-dir target/cluster] [--fresh]\n  jepsen   fault suite: [--seconds 60] [--nemesis kill,pause,partition] [--nodes 3] [--clients 8] [--keys 5] [--seed S]"
            );
            std::process::exit(2);
        }
    }
}
