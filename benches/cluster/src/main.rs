//! Benchmarks of FlashKV clusters of real `kvd` processes on loopback.
//!
//! `cluster-bench scale`: load gigabytes into 3 nodes, join a 4th from
//! empty; report memory, disk, throughput and snapshot transfer rate. Run it
//! with `cargo xtask scale` (which builds release binaries first).
//!
//! `cluster-bench failover --fault kill|pause --trials 10`: the write gap
//! when the leader fails under a single-client write load.
//!
//! `cluster-bench search-load`: write throughput with and without `kvd
//! --search` on short texts, and the indexes' lag.
#![deny(unsafe_code)]

mod failover;
mod procs;
mod scale;
mod search_load;

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
    /// The write gap when the leader of a 3-node cluster is killed or
    /// paused under a steady single-client write load.
    Failover(failover::Args),
    /// Write throughput with and without `kvd --search`, and the index's
    /// lag behind the writes.
    SearchLoad(search_load::Args),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Scale(a) => scale::run(a).await,
        Cmd::Failover(a) => failover::run(a).await,
        Cmd::SearchLoad(a) => search_load::run(a).await,
    }
}
