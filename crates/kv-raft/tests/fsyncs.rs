//! Only what raft-rs says must be durable is fsynced: a `Ready` (or
//! `LightReady`) that only moves the commit index costs no fsync, so a
//! leader makes a write durable with one fsync, not two. What was written
//! unsynced survives a restart (and a lost commit index is learned again).
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::{Cluster, Faults};

#[derive(Debug, Default)]
struct CountSyncs(AtomicU64);

impl kv_raft::Observer for CountSyncs {
    fn log_synced(&self, _elapsed: Duration) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

#[test]
fn a_write_costs_the_leader_one_fsync_and_restarts_keep_everything() {
    let seed = common::seed();
    let syncs = Arc::new(CountSyncs::default());
    let mut opts = common::test_options();
    opts.snapshot_threshold = 1_000_000;
    opts.observer = Some(syncs.clone());
    let ids = [1];
    let mut c = Cluster::new(&ids, opts, seed, Faults::NONE);
    c.wait_leader(Duration::from_secs(10)).expect("leader");
    let before = syncs.0.load(Ordering::Relaxed);
    const WRITES: u64 = 100;
    for i in 0..WRITES {
        c.propose(format!("w{i}").as_bytes(), Duration::from_secs(5))
            .expect("propose");
    }
    let used = syncs.0.load(Ordering::Relaxed) - before;
    // One fsync for each entry; the commit that follows it costs none.
    assert!(
        used <= WRITES + 5,
        "{used} fsyncs for {WRITES} sequential writes (two per write before)"
    );
    // A restart keeps every write (the unsynced commit records were made
    // durable on the clean stop, or are learned again).
    c.restart(1, true);
    c.wait_leader(Duration::from_secs(10))
        .expect("leader after restart");
    c.propose(b"after", Duration::from_secs(5))
        .expect("propose");
    c.check();
    c.shutdown();
}
