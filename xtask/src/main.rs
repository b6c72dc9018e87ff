//! `cargo xtask`: project automation.
//!
//! - `cargo xtask ci`: the checks CI runs (format, lints, tests).

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

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("ci") => {
            run(&["fmt", "--all", "--", "--check"])?;
            run(&[
                "clippy",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ])?;
            run(&["test", "--workspace"])
        }
        _ => {
            eprintln!(
                "usage: cargo xtask <command>\n\ncommands:\n  ci    format check, clippy and all tests, as CI runs them"
            );
            std::process::exit(2);
        }
    }
}
