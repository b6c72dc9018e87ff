//! Write-path control: group commit shares fsyncs between concurrent
//! `SyncMode::Always` writers, and writers are slowed or stalled instead of
//! letting L0 grow without bound when compaction falls behind.

use std::sync::Arc;

use kv_engine::{Db, Options, SyncMode};

#[test]
fn concurrent_synced_writers_share_fsyncs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Arc::new(Db::open_with(dir.path(), Options::default()).expect("open"));
    let (threads, per_thread) = (8u32, 60u32);
    std::thread::scope(|s| {
        for t in 0..threads {
            let db = &db;
            s.spawn(move || {
                for i in 0..per_thread {
                    db.put(format!("t{t}-{i}"), [1u8; 100]).expect("put");
                }
            });
        }
    });
    let st = db.stats();
    let total = u64::from(threads * per_thread);
    assert_eq!(st.writes, total, "every put is one committed write: {st:?}");
    assert!(
        st.wal_syncs < total,
        "8 threads of synced writers should share fsyncs, yet {} fsyncs for {} writes",
        st.wal_syncs,
        total
    );
    for t in 0..threads {
        for i in 0..per_thread {
            assert!(
                db.get(format!("t{t}-{i}")).expect("get").is_some(),
                "t{t}-{i} lost"
            );
        }
    }
}

#[test]
fn l0_growth_is_bounded_by_throttling() {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = Options {
        sync: SyncMode::Never,
        memtable_size: 4 << 10,
        max_immutable_memtables: 1,
        target_file_size: 8 << 10,
        l0_compaction_trigger: 2,
        l0_slowdown_trigger: 3,
        l0_stop_trigger: 4,
        level_base_bytes: 64 << 10,
        ..Options::default()
    };
    let bound = opts.l0_stop_trigger + opts.max_immutable_memtables + 1;
    let db = Db::open_with(dir.path(), opts).expect("open");
    let mut max_l0 = 0;
    for i in 0..20_000u32 {
        db.put(format!("key{:08}", (i * 7919) % 20_000), [i as u8; 100])
            .expect("put");
        if i % 50 == 0 {
            max_l0 = max_l0.max(db.stats().levels[0].files);
        }
    }
    let st = db.stats();
    eprintln!(
        "max L0 {max_l0}, stalls {}, slowdowns {}, flushes {}, compactions {}",
        st.write_stalls, st.write_slowdowns, st.flushes, st.compactions
    );
    assert!(
        max_l0 <= bound,
        "L0 reached {max_l0} tables, beyond the stop trigger bound {bound}: {st:?}"
    );
    assert!(
        st.write_stalls + st.write_slowdowns > 0,
        "writers outpaced compaction yet were never held back: {st:?}"
    );
    assert!(st.flushes > 20, "the workload should flush often: {st:?}");
    assert!(st.compactions > 0, "compaction never ran: {st:?}");
    for i in (0..20_000u32).step_by(97) {
        assert!(
            db.get(format!("key{i:08}")).expect("get").is_some(),
            "key{i:08} lost"
        );
    }
}
