//! Space amplification under an overwrite-heavy load: background compaction
//! keeps it bounded, and a manual `compact()` brings the table bytes on disk
//! close to the live data.

mod common;

use kv_engine::{Db, Options};

const KEYS: u32 = 2_000;
const ROUNDS: u32 = 20;
const VALUE_LEN: usize = 200;

fn key(i: u32) -> String {
    format!("key{i:08}")
}

fn value(round: u32, i: u32) -> Vec<u8> {
    let mut v = format!("r{round:02}-k{i:05}-").into_bytes();
    // Vary the bytes so a compressing engine would not get an unfair advantage.
    let mut x = (u64::from(round) << 32 | u64::from(i)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    while v.len() < VALUE_LEN {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.push(b'a' + (x % 26) as u8);
    }
    v
}

fn options() -> Options {
    common::small_options()
}

#[test]
fn overwrite_heavy_run_compacts_to_live_size() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Db::open_with(dir.path(), options()).expect("open");
    let live_bytes = u64::from(KEYS) * (key(0).len() + VALUE_LEN) as u64;

    for round in 0..ROUNDS {
        for i in 0..KEYS {
            // A different key order per round, so every table overlaps every other.
            let i = (i * 7 + round * 13) % KEYS;
            db.put(key(i), value(round, i)).expect("put");
        }
    }
    let before = common::bytes_with_suffix(dir.path(), ".sst");
    let stats = db.stats();
    eprintln!(
        "before compact(): {before} table bytes for {live_bytes} live bytes (x{:.2}); {} flushes, {} compactions, {} stalls",
        before as f64 / live_bytes as f64,
        stats.flushes,
        stats.compactions,
        stats.write_stalls
    );
    assert!(
        stats.flushes >= 10,
        "{} bytes written through a 64 KiB memtable must flush often: {stats:?}",
        u64::from(KEYS * ROUNDS) * VALUE_LEN as u64
    );
    assert!(
        stats.compactions >= 1,
        "background compaction never ran during an overwrite-heavy load: {stats:?}"
    );
    // Without compaction the tables would hold all 20 rounds (x20); leveled
    // compaction keeps a small multiple of the live data.
    assert!(
        before <= 5 * live_bytes,
        "background compaction let space grow to {before} bytes for {live_bytes} live bytes (> x5)"
    );

    db.compact().expect("compact");
    let after = common::bytes_with_suffix(dir.path(), ".sst");
    let ratio = after as f64 / live_bytes as f64;
    let dir_bytes: u64 = std::fs::read_dir(dir.path())
        .expect("read_dir")
        .map(|e| e.expect("entry").metadata().map(|m| m.len()).unwrap_or(0))
        .sum();
    eprintln!(
        "after compact(): {after} table bytes (x{ratio:.3}), whole directory {dir_bytes} bytes (x{:.3}), live {live_bytes}",
        dir_bytes as f64 / live_bytes as f64
    );
    assert!(
        ratio <= 1.3,
        "after compact() the tables hold {after} bytes for {live_bytes} live bytes: x{ratio:.3} > x1.3"
    );

    let check = |db: &Db, when: &str| {
        for i in 0..KEYS {
            let got = db
                .get(key(i))
                .unwrap_or_else(|e| panic!("get {} {when}: {e}", key(i)));
            assert_eq!(
                got.as_deref(),
                Some(value(ROUNDS - 1, i).as_slice()),
                "{} must hold its last value {when}",
                key(i)
            );
        }
        assert_eq!(
            db.iter().expect("iter").count(),
            KEYS as usize,
            "number of live keys {when}"
        );
    };
    check(&db, "after compact()");
    drop(db);
    let db = Db::open_with(dir.path(), options()).expect("reopen");
    check(&db, "after reopen");
}
