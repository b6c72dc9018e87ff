//! Failures injected at each durable-write step (the `failpoints` feature:
//! `cargo test -p kv-engine --features failpoints --test failpoints`) while
//! four writers run and flushes and compactions happen in the background.
//!
//! For every point: a write that returned Ok is there after reopening; once
//! a write or background job failed, no later write or flush returns Ok
//! (the database is poisoned: a failed fsync is never retried and never
//! reported as success); and the directory opens again once the fault is
//! gone. Failures during open make the open fail, and the next open works.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use kv_engine::{Db, Error, Options, SyncMode, WriteBatch};

const WRITERS: usize = 4;

fn options() -> Options {
    Options {
        sync: SyncMode::Always,
        memtable_size: 64 << 10,
        target_file_size: 64 << 10,
        l0_compaction_trigger: 2,
        level_base_bytes: 256 << 10,
        ..Options::default()
    }
}

fn value(w: usize, n: usize) -> Vec<u8> {
    let mut v = format!("w{w}n{n}.").into_bytes();
    v.resize(100 + (n * 37) % 900, b'a' + (n % 26) as u8);
    v
}

/// Runs the writers until each has seen an error (or 20 s pass), turning
/// `point` on after `warmup` acknowledged writes. Returns the acknowledged
/// keys and values.
fn run_until_failure(db: &Db, point: &str, warmup: usize) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let acked = Mutex::new(BTreeMap::new());
    let armed = AtomicBool::new(false);
    let count = std::sync::atomic::AtomicUsize::new(0);
    let deadline = Instant::now() + Duration::from_secs(20);
    std::thread::scope(|s| {
        for w in 0..WRITERS {
            let (acked, armed, count) = (&acked, &armed, &count);
            s.spawn(move || {
                let mut failed = false;
                for n in 0.. {
                    if Instant::now() > deadline {
                        break;
                    }
                    let key = format!("w{w}-{n:06}").into_bytes();
                    let result = if n % 3 == 0 {
                        let mut b = WriteBatch::new();
                        b.put(&key, value(w, n));
                        b.put(format!("w{w}-{n:06}-b"), value(w, n + 1));
                        db.write(b)
                    } else {
                        db.put(&key, value(w, n))
                    };
                    match result {
                        Ok(()) => {
                            assert!(
                                !failed,
                                "{point}: writer {w} write {n} returned Ok after a failure"
                            );
                            let mut a = acked.lock().expect("lock");
                            a.insert(key.clone(), value(w, n));
                            if n % 3 == 0 {
                                a.insert(format!("w{w}-{n:06}-b").into_bytes(), value(w, n + 1));
                            }
                        }
                        Err(e) => {
                            assert!(
                                armed.load(Ordering::SeqCst),
                                "{point}: write failed before the fault was injected: {e}"
                            );
                            if failed {
                                // One more after the first failure: it must fail too.
                                break;
                            }
                            failed = true;
                        }
                    }
                    if count.fetch_add(1, Ordering::SeqCst) + 1 == warmup {
                        armed.store(true, Ordering::SeqCst);
                        fail::cfg(point, "return").expect("configure failpoint");
                    }
                }
                assert!(failed, "{point}: writer {w} never saw the injected failure");
            });
        }
    });
    acked.into_inner().expect("lock")
}

fn check_reopened(dir: &std::path::Path, acked: &BTreeMap<Vec<u8>, Vec<u8>>, point: &str) {
    let db = Db::open_with(dir, options())
        .unwrap_or_else(|e| panic!("{point}: does not reopen after the fault is gone: {e}"));
    for (k, v) in acked {
        let got = db.get(k).unwrap_or_else(|e| panic!("{point}: get: {e}"));
        assert_eq!(
            got.as_deref(),
            Some(v.as_slice()),
            "{point}: acknowledged write {} lost",
            String::from_utf8_lossy(k)
        );
    }
    // Writable again.
    db.put(b"after", b"1").expect("put after reopen");
}

#[test]
fn every_write_path_failure_poisons_and_keeps_acknowledged_writes() {
    for point in [
        "wal-write",
        "wal-sync",
        "wal-create",
        "table-write",
        "table-sync",
        "manifest-write",
        "manifest-sync",
        "dir-sync",
    ] {
        let scenario = fail::FailScenario::setup();
        let root = tempfile::tempdir().expect("tempdir");
        let dir = root.path().join("db");
        let db = Db::open_with(&dir, options()).expect("open");
        let acked = run_until_failure(&db, point, 1_500);
        assert!(
            matches!(db.put(b"x", b"y"), Err(Error::Poisoned(_))),
            "{point}: the database is not poisoned after the failure"
        );
        assert!(
            db.flush().is_err(),
            "{point}: flush succeeded after the failure"
        );
        eprintln!(
            "{point}: {} acknowledged writes before the failure",
            acked.len()
        );
        drop(db);
        fail::remove(point);
        check_reopened(&dir, &acked, point);
        scenario.teardown();
    }
}

#[test]
fn failures_while_opening_fail_the_open_and_lose_nothing() {
    for point in ["current-rename", "manifest-sync", "wal-create", "dir-sync"] {
        let scenario = fail::FailScenario::setup();
        let root = tempfile::tempdir().expect("tempdir");
        let dir = root.path().join("db");
        let mut acked = BTreeMap::new();
        {
            let db = Db::open_with(&dir, options()).expect("open");
            for n in 0..500 {
                let key = format!("k{n:04}").into_bytes();
                db.put(&key, value(0, n)).expect("put");
                acked.insert(key, value(0, n));
            }
        }
        fail::cfg(point, "return").expect("configure failpoint");
        match Db::open_with(&dir, options()) {
            Err(Error::Io { .. }) => {}
            Err(e) => panic!("{point}: expected the injected I/O error, got {e}"),
            Ok(_) => panic!("{point}: open succeeded over a failed durable step"),
        }
        fail::remove(point);
        check_reopened(&dir, &acked, point);
        scenario.teardown();
    }
}
