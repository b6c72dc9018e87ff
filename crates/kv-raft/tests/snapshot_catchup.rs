//! A follower isolated long enough that the log it needs is compacted away
//! catches up through a snapshot, and the leader's old segments are purged.
mod common;

use std::time::{Duration, Instant};

use common::{Cluster, Faults};
use kv_raft::LogStore;

#[test]
fn isolated_follower_catches_up_through_snapshot() {
    let seed = common::seed();
    let opts = kv_raft::Options {
        snapshot_threshold: 50,
        segment_bytes: 4096,
        ..common::test_options()
    };
    let ids = [1, 2, 3];
    let mut c = Cluster::new(&ids, opts.clone(), seed, Faults::NONE);
    let leader = c.wait_leader(Duration::from_secs(10)).expect("leader");
    let lagger = *ids.iter().find(|&&i| i != leader).unwrap();
    for i in 0..20 {
        c.propose(format!("before-{i}").as_bytes(), Duration::from_secs(5))
            .expect("propose");
    }
    c.net.isolate(lagger, &ids);
    let start = Instant::now();
    let mut n = 0;
    while n < 300 && start.elapsed() < Duration::from_secs(30) {
        c.propose(format!("during-{n}").as_bytes(), Duration::from_secs(5))
            .expect("propose while one node is isolated");
        n += 1;
    }
    assert_eq!(n, 300, "too slow");
    let before = c.sms[&lagger].lock().unwrap().restores;
    c.net.heal();
    // The faults also hit the snapshot message on its way.
    c.net.set_faults(Faults::LOSSY);
    let commit = c.wait_converged(Duration::from_secs(20));
    assert!(commit >= 320);
    let restores = c.sms[&lagger].lock().unwrap().restores;
    assert!(restores > before, "follower did not restore a snapshot");
    assert!(c.net.snapshots_delivered(lagger) > 0);
    c.check();

    // On disk, every store was compacted: its snapshot is recent and the
    // segments below it are gone.
    for id in ids {
        c.stop(id);
        let store = LogStore::open(c.dir(id), &opts).expect("reopen");
        let snap_index = store.snapshot_ref().get_metadata().index;
        assert!(
            snap_index + opts.snapshot_threshold >= commit,
            "node {id}: snapshot at {snap_index}"
        );
        assert!(
            store.segment_count() <= 3,
            "node {id}: {} segments",
            store.segment_count()
        );
    }
    c.shutdown();
}

/// The log since the snapshot is held in memory, so large entries must
/// trigger snapshots by their bytes, long before the entry count would.
#[test]
fn large_entries_are_snapshotted_by_bytes_not_only_by_count() {
    const THRESHOLD: u64 = 256 << 10;
    let seed = common::seed();
    let opts = kv_raft::Options {
        snapshot_threshold: 10_000,
        snapshot_threshold_bytes: THRESHOLD,
        ..common::test_options()
    };
    let ids = [1, 2, 3];
    let mut c = Cluster::new(&ids, opts.clone(), seed, Faults::NONE);
    c.wait_leader(Duration::from_secs(10)).expect("leader");
    let big = vec![b'x'; 16 << 10];
    for i in 0..200u32 {
        let mut v = i.to_le_bytes().to_vec();
        v.extend_from_slice(&big);
        c.propose(&v, Duration::from_secs(5)).expect("propose");
    }
    let commit = c.wait_converged(Duration::from_secs(20));
    assert!(commit >= 200);
    c.check();
    // At most four times the byte threshold (a leader may wait for a
    // follower) of 16 KiB entries since the last snapshot, plus slack for
    // one snapshot in progress.
    let bound = 4 * THRESHOLD / (16 << 10) + 20;
    for id in ids {
        c.stop(id);
        let store = LogStore::open(c.dir(id), &opts).expect("reopen");
        let snap_index = store.snapshot_ref().get_metadata().index;
        // Index 1 is the bootstrap snapshot.
        assert!(
            snap_index > 1,
            "node {id}: no snapshot after {commit} entries of 16 KiB"
        );
        assert!(
            snap_index + bound >= commit,
            "node {id}: snapshot at {snap_index}, commit {commit}"
        );
    }
    c.shutdown();
}
