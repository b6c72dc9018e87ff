//! `Db::checkpoint` produces a consistent, independent copy that `Db::open`
//! can open: it holds everything written before the call and nothing written
//! after it, even while writers, flushes and compactions run.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use kv_engine::{Db, Options, SyncMode};
use rand::Rng;

fn key(i: u64) -> String {
    format!("key{i:08}")
}

fn value(i: u64) -> String {
    format!("value-{i}-{}", "v".repeat((i % 97) as usize))
}

fn open(path: &std::path::Path, options: Options) -> Db {
    Db::open_with(path, options).unwrap_or_else(|e| panic!("open {}: {e}", path.display()))
}

#[test]
fn checkpoint_of_memtable_only_data() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = open(
        dir.path(),
        Options {
            sync: SyncMode::Never,
            ..Options::default()
        },
    );
    for i in 0..100 {
        db.put(key(i), value(i)).expect("put");
    }
    db.delete(key(7)).expect("delete");
    assert_eq!(db.stats().flushes, 0, "precondition: nothing flushed yet");
    let cp = dir.path().join("checkpoint");
    db.checkpoint(&cp)
        .expect("checkpoint of a db with data only in the memtable");
    assert!(
        db.checkpoint(&cp).is_err(),
        "a checkpoint into an existing directory must be refused"
    );
    db.put(key(1000), b"after").expect("put after checkpoint");

    let copy = open(&cp, Options::default());
    for i in 0..100 {
        let want = (i != 7).then(|| value(i).into_bytes());
        assert_eq!(
            copy.get(key(i))
                .expect("get from checkpoint")
                .map(|b| b.to_vec()),
            want,
            "{} in the checkpoint",
            key(i)
        );
    }
    assert_eq!(
        copy.get(key(1000)).expect("get"),
        None,
        "a write made after the checkpoint must not be in it"
    );
    // The copy is independent of the original in both directions.
    copy.put(key(2000), b"copy-only")
        .expect("write to the checkpoint");
    assert_eq!(
        db.get(key(2000)).expect("get"),
        None,
        "checkpoint writes leak into the original"
    );
    assert_eq!(
        db.get(key(1000)).expect("get").as_deref(),
        Some(&b"after"[..]),
        "original keeps its own writes"
    );
}

#[test]
fn checkpoint_while_writing_is_a_consistent_prefix() {
    let (mut rng, seed) = common::seeded_rng("checkpoint_while_writing_is_a_consistent_prefix");
    let dir = tempfile::tempdir().expect("tempdir");
    let options = Options {
        sync: SyncMode::Never,
        ..common::tiny_options()
    };
    let db = open(&dir.path().join("db"), options.clone());
    // The writer puts key(0), key(1), ... in order and after each one sets
    // "count" to the number of keys written, in the same order, so any
    // consistent state has keys 0..count and nothing else.
    let acked = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let mut checkpoints = Vec::new();
    std::thread::scope(|s| {
        s.spawn(|| {
            let deadline = Instant::now() + Duration::from_secs(20);
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) && Instant::now() < deadline && i < 1_000_000 {
                db.put(key(i), value(i)).expect("writer put");
                db.put(b"count", (i + 1).to_string())
                    .expect("writer put count");
                i += 1;
                acked.store(i, Ordering::SeqCst);
            }
        });
        for n in 0..6 {
            // Let the writer get ahead by a random amount (polled, bounded).
            let target = acked.load(Ordering::SeqCst) + rng.gen_range(50..1500);
            let deadline = Instant::now() + Duration::from_secs(10);
            while acked.load(Ordering::SeqCst) < target && Instant::now() < deadline {
                std::thread::yield_now();
            }
            let before = acked.load(Ordering::SeqCst);
            let cp = dir.path().join(format!("cp{n}"));
            db.checkpoint(&cp)
                .unwrap_or_else(|e| panic!("checkpoint {n} (seed {seed}): {e}"));
            let after = acked.load(Ordering::SeqCst);
            checkpoints.push((cp, before, after));
        }
        stop.store(true, Ordering::SeqCst);
    });
    let total = acked.load(Ordering::SeqCst);
    let stats = db.stats();
    eprintln!("writer wrote {total} keys; {stats:?}");
    assert!(
        stats.flushes >= 1,
        "test needs flushes in flight (seed {seed}): {stats:?}"
    );

    // Change the original after the checkpoints: a compaction that drops
    // files the checkpoints share must not affect them.
    for i in 0..total {
        if i % 3 == 0 {
            db.delete(key(i)).expect("delete after checkpoints");
        }
    }
    db.flush().expect("flush");
    db.compact().expect("compact");
    drop(db);

    for (n, (cp, before, after)) in checkpoints.iter().enumerate() {
        let copy = open(cp, options.clone());
        let count: u64 = copy
            .get(b"count")
            .expect("get count")
            .map(|b| {
                String::from_utf8_lossy(&b)
                    .parse()
                    .expect("count is a number")
            })
            .unwrap_or(0);
        // The writer may have finished one more write than `after` shows.
        assert!(
            *before <= count && count <= after + 1,
            "checkpoint {n} (seed {seed}): count {count} not within [{before}, {}] acknowledged around the call",
            after + 1
        );
        let mut seen = 0u64;
        for item in copy.iter().expect("iter") {
            let (k, v) = item.expect("checkpoint iter item");
            if k.as_ref() == b"count" {
                continue;
            }
            let want = key(seen);
            assert_eq!(
                common::show(&k),
                want,
                "checkpoint {n} (seed {seed}): keys must be exactly 0..{count}, hole or extra key"
            );
            assert_eq!(
                common::show(&v),
                value(seen),
                "checkpoint {n}: value of {want}"
            );
            seen += 1;
        }
        // key(count) may exist without "count" having been bumped yet.
        assert!(
            seen == count || seen == count + 1,
            "checkpoint {n} (seed {seed}): holds keys 0..{seen} but count says {count}"
        );
        assert!(
            seen <= after + 1,
            "checkpoint {n} (seed {seed}): holds {seen} keys, more than were written by the time it returned ({after})"
        );
    }
}
