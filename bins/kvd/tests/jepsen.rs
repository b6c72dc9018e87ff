//! A short Jepsen-style run against real `kvd` processes: concurrent
//! clients doing get / put / cas while the nemesis kills, pauses and
//! partitions nodes; the recorded history (final reads after healing
//! included) must be linearizable and every node must converge.
//!
//! `KV_JEPSEN_SECONDS` sets the workload time (default 20), `KV_JEPSEN_SEED`
//! the seed (default: from the clock, printed). `cargo xtask jepsen` runs
//! longer ones.

use std::path::PathBuf;
use std::time::Duration;

use kv_jepsen::nemesis::{Kind, Schedule};
use kv_jepsen::runner::{Config, Verdict, run};

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_pause_partition_history_is_linearizable_and_durable() {
    let seed = env_u64("KV_JEPSEN_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    });
    let mut config = Config::new(PathBuf::from(env!("CARGO_BIN_EXE_kvd")));
    config.duration = Duration::from_secs(env_u64("KV_JEPSEN_SECONDS").unwrap_or(20));
    config.seed = seed;
    // Short faults, close together, so that every kind comes up at least
    // twice in a short run.
    config.schedule = Schedule {
        quiet: (Duration::from_millis(300), Duration::from_millis(1_000)),
        hold: (Duration::from_millis(800), Duration::from_millis(2_000)),
    };
    config.out_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    println!("seed {seed} (KV_JEPSEN_SEED={seed} repeats the schedule)");
    let report = run(config).await.expect("the cluster starts");
    println!("{report}");
    for kind in Kind::ALL {
        assert!(
            report.faults.get(&kind).copied().unwrap_or(0) > 0,
            "no {kind} fault was injected:\n{report}"
        );
    }
    assert_eq!(report.verdict, Verdict::Ok, "{report}");
    assert_eq!(report.final_reads.len(), report.config.keys, "{report}");
    let acknowledged_writes = report.ops.get(&("put", "ok")).copied().unwrap_or(0)
        + report.ops.get(&("cas", "ok")).copied().unwrap_or(0);
    assert!(
        acknowledged_writes > 100,
        "too few acknowledged writes to mean anything:\n{report}"
    );
}
