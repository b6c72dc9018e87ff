//! `cargo xtask`: project automation.
//!
//! - `cargo xtask ci`: everything CI runs (`.ci/run`: format, lints, all
//!   tests, the failpoint tests, short fuzz runs).
//! - `cargo xtask cluster [--nodes 3] [--base-port 7001] [--data-dir target/cluster] [--fresh]`:
//!   a local cluster of release `kvd` processes; Ctrl-C stops it.
//! - `cargo xtask cluster --secure`: the same with TLS for clients, a peer
//!   secret and tokens (files from `cargo xtask certs` in the data dir).
//! - `cargo xtask certs [--dir target/certs]`: a CA, node and client
//!   certificates, a peer secret and an auth file.
//! - `cargo xtask jepsen [--seconds 60] [--nemesis kill,pause,partition] [--nodes 3]
//!   [--clients 8] [--keys 5] [--seed S]`: the fault suite against release `kvd`
//!   processes; exits non-zero on a violation.
//! - `cargo xtask scale [--gb 5] [--clients 32] [--value-min 1024] [--value-max 65536] [--keep]`:
//!   the data-larger-than-memory benchmark (`benches/cluster`): loads a
//!   3-node cluster, joins a 4th node from empty, reports memory, disk,
//!   throughput and the snapshot transfer rate.
//! - `cargo xtask python-proto [--check]`: the proto descriptor for the
//!   Python client (`clients/python`); `--check` fails if it is stale.

mod certs;
mod cluster;
mod jepsen;
mod python_proto;

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
        Some("certs") => certs::run(&args[1..], &workspace_root()),
        Some("jepsen") => jepsen::run(&args[1..], &workspace_root()),
        Some("python-proto") => python_proto::run(&args[1..], &workspace_root()),
        Some("scale") => {
            run(&["build", "--release", "-p", "kvd", "-p", "cluster-bench"])?;
            let root = workspace_root();
            let bin = cluster::target_dir(&root).join("release");
            let status = Command::new(bin.join("cluster-bench"))
                .arg("scale")
                .arg("--kvd")
                .arg(bin.join("kvd"))
                .args(&args[1..])
                .current_dir(&root)
                .status()
                .context("running cluster-bench")?;
            if !status.success() {
                bail!("cluster-bench scale: {status}");
            }
            Ok(())
        }
        _ => {
            eprintln!(
                "usage: cargo xtask <command>\n\ncommands:\n  ci       everything CI runs (.ci/run): format, clippy, all tests, short fuzz runs\n  cluster  run a local cluster: [--nodes 3] [--base-port 7001] [--data-dir target/cluster] [--fresh] [--secure] [--search]\n  certs    a CA, node and client certificates, a peer secret, tokens: [--dir target/certs]\n  jepsen   fault suite: [--seconds 60] [--nemesis kill,pause,partition] [--nodes 3] [--clients 8] [--keys 5] [--seed S]\n  scale    the 5 GB benchmark: [--gb 5] [--clients 32] [--value-min 1024] [--value-max 65536] [--keep]\n  python-proto  the proto descriptor of the Python client: [--check]"
            );
            std::process::exit(2);
        }
    }
}
