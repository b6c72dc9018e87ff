//! Benchmarks of FlashKV clusters of real `kvd` processes on loopback.
//!
//! `cluster-bench scale`: load gigabytes into 3 nodes, join a 4th from
//! empty; report memory, disk, throughput and snapshot transfer rate. Run it
//! with `cargo xtask scale` (which builds release binaries first).
#![deny(unsafe_code)]

mod procs;
mod scale;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Benchmarks of FlashKV clusters of real kvd processes")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Load a 3-node cluster with gigabytes of live data, then join a
    /// fourth node from empty.
    Scale(scale::Args),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Scale(a) => scale::run(a).await,
    }
}
