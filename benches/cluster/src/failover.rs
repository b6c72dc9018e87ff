//! `cluster-bench failover`: the write gap when the leader of a 3-node
//! cluster fails under a steady single-client write load.
//!
//! Each trial starts a fresh cluster, writes for a second, then fails the
//! leader: `kill` (SIGKILL: its connections close at once), `pause`
//! (SIGSTOP: it stays connected and silent, as a hung process or a
//! partition that drops packets looks; SIGCONT after `--pause-ms`). The gap
//! is the longest wait between two acknowledged writes from 200 ms before
//! the fault to the end of the pause (or 3 s after a kill). Elections are
//! counted from the terms.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use tokio::sync::Mutex;

use crate::procs::{Node, start_three};
use crate::scale::{client, wait_leader};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Fault {
    /// SIGKILL the leader.
    Kill,
    /// SIGSTOP the leader, SIGCONT it after `--pause-ms`.
    Pause,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The kvd binary.
    #[arg(long, default_value = "target/release/kvd")]
    kvd: PathBuf,
    /// Working directory (its trial subdirectories are replaced).
    #[arg(long, default_value = "target/failover")]
    dir: PathBuf,
    /// What happens to the leader.
    #[arg(long, value_enum, default_value_t = Fault::Kill)]
    fault: Fault,
    /// Trials (each on a fresh cluster).
    #[arg(long, default_value_t = 10)]
    trials: usize,
    /// How long a paused leader stays stopped, ms.
    #[arg(long, default_value_t = 3000)]
    pause_ms: u64,
    /// Extra kvd flags, e.g. `--kvd-arg=--lease-reads`.
    #[arg(long = "kvd-arg", allow_hyphen_values = true)]
    kvd_args: Vec<String>,
}

fn signal(node: &Node, sig: libc::c_int) -> Result<()> {
    let pid = node.pid().context("the node has exited")?;
    #[allow(unsafe_code)]
    // SAFETY: kill(2) on the PID of our own child, not yet reaped.
    let r = unsafe { libc::kill(pid, sig) };
    ensure!(r == 0, "kill({pid}, {sig}) failed");
    Ok(())
}

/// One trial: the gap and how many terms the fault cost.
async fn trial(a: &Args, n: usize) -> Result<(Duration, u64)> {
    let dir = std::path::absolute(a.dir.join(format!("trial-{n}")))?;
    let (nodes, addrs) = start_three(&a.kvd, &dir, &a.kvd_args)?;
    let refs: Vec<&Node> = nodes.iter().collect();
    let leader = wait_leader(&refs, Duration::from_secs(30)).await?;
    let admin = client(addrs.clone(), Duration::from_secs(5), false);
    let term0 = admin.status(&addrs[leader as usize - 1]).await?.term;

    // The writer: one put at a time, each acknowledgement time recorded.
    let acks: Arc<Mutex<Vec<Instant>>> = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (acks, stop) = (acks.clone(), stop.clone());
        let c = client(addrs.clone(), Duration::from_secs(10), false);
        tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                if c.put(format!("k{}", i % 1000), vec![b'v'; 100])
                    .await
                    .is_ok()
                {
                    acks.lock().await.push(Instant::now());
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let victim = &nodes[leader as usize - 1];
    let fault_at = Instant::now();
    match a.fault {
        Fault::Kill => signal(victim, libc::SIGKILL)?,
        Fault::Pause => signal(victim, libc::SIGSTOP)?,
    }
    let resumed = if a.fault == Fault::Pause {
        tokio::time::sleep(Duration::from_millis(a.pause_ms)).await;
        signal(victim, libc::SIGCONT)?;
        Some(Instant::now())
    } else {
        tokio::time::sleep(Duration::from_secs(3)).await;
        None
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    tokio::time::timeout(Duration::from_secs(15), writer)
        .await
        .context("the writer did not stop")??;
    let acks = acks.lock().await;
    // The longest wait between two acknowledgements from just before the
    // fault on (a reply already on its way when the signal lands may
    // arrive just after it, so "the first after the fault" would not do).
    let window_end = resumed.unwrap_or(fault_at + Duration::from_secs(3));
    let from = fault_at
        .checked_sub(Duration::from_millis(200))
        .unwrap_or(fault_at);
    let near: Vec<Instant> = acks
        .iter()
        .copied()
        .filter(|t| *t >= from && *t <= window_end)
        .collect();
    ensure!(
        near.first().is_some_and(|t| *t <= fault_at),
        "trial {n}: no write acknowledged in the 200 ms before the fault"
    );
    ensure!(
        near.last()
            .is_some_and(|t| *t > fault_at + Duration::from_millis(100)),
        "trial {n}: no write acknowledged while the leader was {:?}",
        a.fault
    );
    let gap = near
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default();
    let others: Vec<&String> = addrs
        .iter()
        .enumerate()
        .filter(|(i, _)| *i as u64 + 1 != leader)
        .map(|(_, a)| a)
        .collect();
    let mut term1 = term0;
    for a in others {
        if let Ok(s) = admin.status(a).await {
            term1 = term1.max(s.term);
        }
    }
    drop(nodes);
    std::fs::remove_dir_all(&dir)?;
    Ok((gap, term1 - term0))
}

pub async fn run(a: Args) -> Result<()> {
    ensure!(a.trials > 0, "--trials must be positive");
    ensure!(
        a.kvd.exists(),
        "{} not found (cargo build --release -p kvd)",
        a.kvd.display()
    );
    let mut gaps = Vec::new();
    for n in 1..=a.trials {
        let (gap, terms) = trial(&a, n).await?;
        println!(
            "trial {n}: {:?} of the leader, write gap {:.1} ms, {terms} new term(s)",
            a.fault,
            gap.as_secs_f64() * 1e3
        );
        gaps.push(gap);
    }
    gaps.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "{:?}, {} trials: write gap min {:.1} ms, median {:.1} ms, max {:.1} ms",
        a.fault,
        gaps.len(),
        ms(gaps[0]),
        ms(gaps[gaps.len() / 2]),
        ms(gaps[gaps.len() - 1])
    );
    Ok(())
}
