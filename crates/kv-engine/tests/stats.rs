//! `Db::stats` reports what actually happened: flushes, levels and their
//! sizes, compactions, snapshots, sequence numbers and bloom filter hits.

mod common;

use kv_engine::{Db, Options, Stats, SyncMode};

fn open(path: &std::path::Path) -> Db {
    Db::open_with(
        path,
        Options {
            sync: SyncMode::Never,
            ..Options::default()
        },
    )
    .unwrap_or_else(|e| panic!("open {}: {e}", path.display()))
}

fn table_files(s: &Stats) -> usize {
    s.levels.iter().map(|l| l.files).sum()
}

#[test]
fn stats_follow_flush_compaction_and_snapshots() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = open(dir.path());
    let fresh = db.stats();
    assert_eq!(
        table_files(&fresh),
        0,
        "a fresh db has no tables: {fresh:?}"
    );
    assert_eq!(
        fresh.total_sst_bytes, 0,
        "a fresh db has no table bytes: {fresh:?}"
    );
    assert!(
        !format!("{fresh}").trim().is_empty(),
        "Display of Stats is empty"
    );
    assert!(!format!("{fresh:?}").is_empty(), "Debug of Stats is empty");

    for i in 0..500u32 {
        db.put(format!("key{i:05}"), [b'v'; 100]).expect("put");
    }
    let written = db.stats();
    assert!(
        written.sequence >= fresh.sequence + 500,
        "sequence must advance by at least one per write: before {} after {}",
        fresh.sequence,
        written.sequence
    );

    db.flush().expect("flush");
    let flushed = db.stats();
    assert!(
        flushed.flushes > fresh.flushes,
        "flushes counter did not move after flush(): {flushed:?}"
    );
    assert!(
        table_files(&flushed) >= 1,
        "no table listed after flush: {flushed:?}"
    );
    let level_bytes: u64 = flushed.levels.iter().map(|l| l.bytes).sum();
    assert_eq!(
        flushed.total_sst_bytes, level_bytes,
        "total_sst_bytes must be the sum of the levels: {flushed:?}"
    );
    let on_disk = common::bytes_with_suffix(dir.path(), ".sst");
    assert_eq!(
        flushed.total_sst_bytes, on_disk,
        "total_sst_bytes must match the .sst bytes on disk"
    );
    assert!(
        flushed.total_sst_bytes >= 500 * 100,
        "500 values of 100 bytes cannot fit in {} table bytes (no compression)",
        flushed.total_sst_bytes
    );
    let shown = format!("{flushed}");
    assert!(
        !shown.trim().is_empty(),
        "Display of Stats is empty after flush"
    );

    for i in 0..500u32 {
        db.put(format!("key{i:05}"), [b'w'; 100])
            .expect("overwrite");
    }
    db.flush().expect("second flush");
    db.compact().expect("compact");
    let compacted = db.stats();
    assert!(
        compacted.compactions > flushed.compactions,
        "compactions counter did not move after compact(): {compacted:?}"
    );
    assert_eq!(
        compacted.levels.first().map(|l| l.files),
        Some(0),
        "a full manual compaction leaves L0 empty: {compacted:?}"
    );
    assert!(
        compacted.total_sst_bytes < 2 * 500 * 100,
        "compact() must drop the 500 overwritten values: {compacted:?}"
    );

    assert_eq!(
        compacted.live_snapshots, 0,
        "no snapshot taken yet: {compacted:?}"
    );
    let snap = db.snapshot();
    let s = db.stats();
    assert_eq!(s.live_snapshots, 1, "one live snapshot: {s:?}");
    drop(snap);
    let s = db.stats();
    assert_eq!(s.live_snapshots, 0, "snapshot dropped: {s:?}");
}

#[test]
fn bloom_filter_rejects_missing_keys_and_never_present_ones() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = open(dir.path());
    // Even numbers are present, odd ones missing, so the missing keys fall
    // inside the table's key range and only the filter can rule them out.
    for i in (0..4000u32).step_by(2) {
        db.put(format!("key{i:06}"), b"value").expect("put");
    }
    db.flush().expect("flush");

    let before = db.stats();
    for i in (1..2000u32).step_by(2) {
        assert_eq!(
            db.get(format!("key{i:06}")).expect("get missing"),
            None,
            "key{i:06}"
        );
    }
    let after_missing = db.stats();
    let negatives = after_missing.bloom_negatives - before.bloom_negatives;
    let checks = after_missing.bloom_checks - before.bloom_checks;
    // 1000 misses at 10 bits per key: about 1% false positives are expected.
    assert!(
        negatives >= 800,
        "bloom filter ruled out only {negatives} of 1000 missing keys: {after_missing:?}"
    );
    assert!(
        checks >= negatives,
        "bloom_checks ({checks}) must count at least the negatives ({negatives})"
    );

    for i in (0..2000u32).step_by(2) {
        assert!(
            db.get(format!("key{i:06}")).expect("get present").is_some(),
            "key{i:06}"
        );
    }
    let after_present = db.stats();
    assert_eq!(
        after_present.bloom_negatives, after_missing.bloom_negatives,
        "a bloom filter must never rule out a present key (false negative)"
    );
    assert!(
        after_present.bloom_checks > after_missing.bloom_checks,
        "gets of present keys in a table should consult the filter"
    );
}
