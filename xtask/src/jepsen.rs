//! `cargo xtask jepsen`: a long run of the kv-jepsen fault suite against
//! release `kvd` processes. Arguments go to the `kv-jepsen` binary (see its
//! usage); histories of runs that are not OK land in `target/jepsen`.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

/// Builds `kvd` and `kv-jepsen` in release mode and runs one suite run;
/// fails when the run finds a violation.
pub fn run(args: &[String], root: &Path) -> Result<()> {
    crate::run(&["build", "--release", "-p", "kvd", "-p", "kv-jepsen"])?;
    let bin = crate::cluster::target_dir(root).join("release");
    let out = crate::cluster::target_dir(root).join("jepsen");
    let mut cmd = Command::new(bin.join("kv-jepsen"));
    if !args
        .iter()
        .any(|a| a == "--check" || a.starts_with("--check="))
    {
        cmd.arg("--kvd").arg(bin.join("kvd")).arg("--out").arg(&out);
    }
    let status = cmd.args(args).status().context("running kv-jepsen")?;
    if !status.success() {
        bail!("kv-jepsen: {status}");
    }
    Ok(())
}
