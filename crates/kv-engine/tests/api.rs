//! Basic semantics of the public API: absent keys, deletes, empty keys and
//! values, large values, scan bounds, and that a reopen keeps everything.

mod common;

use std::ops::Bound::{self, Excluded, Included, Unbounded};
use std::path::Path;

use bytes::Bytes;
use kv_engine::{Db, Options, SyncMode, WriteBatch};

fn open(path: &Path) -> Db {
    Db::open_with(
        path,
        Options {
            sync: SyncMode::Never,
            ..Options::default()
        },
    )
    .unwrap_or_else(|e| panic!("open {}: {e}", path.display()))
}

fn get(db: &Db, key: &[u8]) -> Option<Vec<u8>> {
    db.get(key)
        .unwrap_or_else(|e| panic!("get {:?}: {e}", common::show(key)))
        .map(|b: Bytes| b.to_vec())
}

fn collect_scan(db: &Db, range: (Bound<&[u8]>, Bound<&[u8]>)) -> Vec<(Vec<u8>, Vec<u8>)> {
    db.scan(range)
        .unwrap_or_else(|e| panic!("scan {range:?}: {e}"))
        .map(|item| {
            let (k, v) = item.unwrap_or_else(|e| panic!("scan {range:?} item: {e}"));
            (k.to_vec(), v.to_vec())
        })
        .collect()
}

fn keys_of(pairs: &[(Vec<u8>, Vec<u8>)]) -> Vec<String> {
    pairs.iter().map(|(k, _)| common::show(k)).collect()
}

#[test]
fn db_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Db>();
}

#[test]
fn get_absent_and_delete_absent() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = open(dir.path());
    assert_eq!(get(&db, b"nope"), None, "a fresh db has no keys");
    db.delete(b"nope").expect("deleting an absent key is Ok");
    assert_eq!(get(&db, b"nope"), None, "still absent after delete");
    db.put(b"k", b"v").expect("put");
    db.delete(b"k").expect("delete");
    assert_eq!(get(&db, b"k"), None, "deleted key reads as absent");
    db.flush().expect("flush");
    assert_eq!(get(&db, b"k"), None, "deleted key stays absent after flush");
    db.delete(b"never-written")
        .expect("delete of absent key after flush");
    db.compact().expect("compact");
    assert_eq!(
        get(&db, b"k"),
        None,
        "deleted key stays absent after compact"
    );
    assert_eq!(
        db.iter().expect("iter").count(),
        0,
        "a db with only tombstones iterates as empty"
    );
}

#[test]
fn overwrite_latest_wins_across_memtable_and_tables() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = open(dir.path());
    db.put(b"k", b"v1").expect("put v1");
    db.flush().expect("flush v1");
    db.put(b"k", b"v2").expect("put v2");
    assert_eq!(
        get(&db, b"k").as_deref(),
        Some(&b"v2"[..]),
        "memtable shadows table"
    );
    db.flush().expect("flush v2");
    assert_eq!(
        get(&db, b"k").as_deref(),
        Some(&b"v2"[..]),
        "newer table shadows older"
    );
    db.delete(b"k").expect("delete");
    assert_eq!(get(&db, b"k"), None, "memtable tombstone shadows tables");
    db.flush().expect("flush tombstone");
    assert_eq!(get(&db, b"k"), None, "table tombstone shadows older tables");
    db.compact().expect("compact");
    assert_eq!(
        get(&db, b"k"),
        None,
        "compaction does not resurrect the key"
    );
    db.put(b"k", b"v3").expect("put v3");
    assert_eq!(
        get(&db, b"k").as_deref(),
        Some(&b"v3"[..]),
        "put after delete"
    );
}

#[test]
fn empty_key_and_empty_value() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = open(dir.path());
    db.put(b"", b"empty-key").expect("put with empty key");
    db.put(b"empty-value", b"").expect("put with empty value");
    let check = |db: &Db, when: &str| {
        assert_eq!(
            get(db, b"").as_deref(),
            Some(&b"empty-key"[..]),
            "empty key {when}"
        );
        assert_eq!(
            get(db, b"empty-value").as_deref(),
            Some(&b""[..]),
            "an empty value is present, not absent ({when})"
        );
        let all = collect_scan(db, (Unbounded, Unbounded));
        assert_eq!(
            all,
            vec![
                (b"".to_vec(), b"empty-key".to_vec()),
                (b"empty-value".to_vec(), b"".to_vec())
            ],
            "scan shows the empty key first and the empty value as present ({when})"
        );
    };
    check(&db, "in the memtable");
    db.flush().expect("flush");
    check(&db, "after flush");
    drop(db);
    let db = open(dir.path());
    check(&db, "after reopen");
    db.compact().expect("compact");
    check(&db, "after compact");
}

#[test]
fn large_value_one_mib() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = open(dir.path());
    let big: Vec<u8> = (0..(1usize << 20))
        .map(|i| (i * 7 + i / 251) as u8)
        .collect();
    db.put(b"big", &big).expect("put 1 MiB value");
    db.put(b"small", b"s").expect("put");
    let check = |db: &Db, when: &str| {
        let got = get(db, b"big").unwrap_or_else(|| panic!("1 MiB value missing {when}"));
        assert_eq!(got.len(), big.len(), "1 MiB value length {when}");
        assert!(got == big, "1 MiB value content differs {when}");
        assert_eq!(
            get(db, b"small").as_deref(),
            Some(&b"s"[..]),
            "neighbour {when}"
        );
    };
    check(&db, "in the memtable");
    db.flush().expect("flush");
    check(&db, "after flush");
    drop(db);
    let db = open(dir.path());
    check(&db, "after reopen");
}

#[test]
fn scan_bounds() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = open(dir.path());
    for k in ["a", "b", "c", "d", "e"] {
        db.put(k, format!("v{k}")).expect("put");
    }
    // Spread the keys over a table and the memtable, with a shadowing tombstone.
    db.flush().expect("flush");
    db.put(b"bb", b"vbb").expect("put bb");
    db.delete(b"d").expect("delete d");

    type Case<'a> = ((Bound<&'a [u8]>, Bound<&'a [u8]>), Vec<&'a str>);
    let cases: Vec<Case> = vec![
        ((Unbounded, Unbounded), vec!["a", "b", "bb", "c", "e"]),
        ((Included(b"b"), Excluded(b"d")), vec!["b", "bb", "c"]),
        ((Excluded(b"b"), Included(b"d")), vec!["bb", "c"]),
        ((Excluded(b"b"), Included(b"e")), vec!["bb", "c", "e"]),
        ((Unbounded, Excluded(b"c")), vec!["a", "b", "bb"]),
        ((Unbounded, Included(b"c")), vec!["a", "b", "bb", "c"]),
        ((Included(b"c"), Unbounded), vec!["c", "e"]),
        ((Excluded(b"c"), Unbounded), vec!["e"]),
        ((Included(b"bc"), Excluded(b"bz")), vec![]),
        ((Excluded(b"a"), Excluded(b"b")), vec![]),
        ((Included(b"c"), Included(b"c")), vec!["c"]),
        ((Included(b"c"), Excluded(b"c")), vec![]),
        ((Excluded(b"c"), Excluded(b"c")), vec![]),
        (
            (Included(b"0"), Included(b"zzz")),
            vec!["a", "b", "bb", "c", "e"],
        ),
        ((Included(b"f"), Unbounded), vec![]),
    ];
    for (range, want) in &cases {
        let got = collect_scan(&db, *range);
        assert_eq!(keys_of(&got), *want, "scan {range:?}");
        for (k, v) in &got {
            assert_eq!(
                v,
                format!("v{}", common::show(k)).as_bytes(),
                "scan {range:?} value of {}",
                common::show(k)
            );
        }
    }

    // The std range syntax works too.
    let got: Vec<String> = db
        .scan(b"b".as_slice()..b"c".as_slice())
        .expect("scan b..c")
        .map(|r| common::show(&r.expect("item").0))
        .collect();
    assert_eq!(got, ["b", "bb"], "scan b..c");
    let got: Vec<String> = db
        .scan(b"bb".as_slice()..=b"c".as_slice())
        .expect("scan bb..=c")
        .map(|r| common::show(&r.expect("item").0))
        .collect();
    assert_eq!(got, ["bb", "c"], "scan bb..=c");
    let all: Vec<String> = db
        .iter()
        .expect("iter")
        .map(|r| common::show(&r.expect("item").0))
        .collect();
    assert_eq!(
        all,
        ["a", "b", "bb", "c", "e"],
        "iter() visits all live keys in order"
    );
}

#[test]
fn write_batch_applies_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = open(dir.path());
    db.put(b"gone", b"x").expect("put");
    let mut batch = WriteBatch::new();
    batch.put(b"a", b"1");
    batch.delete(b"gone");
    batch.put(b"a", b"2"); // later operations on the same key win
    batch.put(b"b", b"x");
    batch.delete(b"b");
    db.write(batch).expect("write batch");
    assert_eq!(
        get(&db, b"a").as_deref(),
        Some(&b"2"[..]),
        "last put in the batch wins"
    );
    assert_eq!(get(&db, b"gone"), None, "batch delete applied");
    assert_eq!(
        get(&db, b"b"),
        None,
        "delete after put in the same batch wins"
    );
    db.write(WriteBatch::new()).expect("an empty batch is Ok");
    assert_eq!(
        get(&db, b"a").as_deref(),
        Some(&b"2"[..]),
        "empty batch changes nothing"
    );
}

#[test]
fn reopen_keeps_data_with_and_without_flush() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let db = open(dir.path());
        for i in 0..100u32 {
            db.put(format!("flushed{i:03}"), format!("f{i}"))
                .expect("put");
        }
        db.flush().expect("flush");
        for i in 0..100u32 {
            db.put(format!("memtable{i:03}"), format!("m{i}"))
                .expect("put");
        }
        db.delete(b"flushed050").expect("delete");
    }
    for round in 0..2 {
        let db = open(dir.path());
        for i in 0..100u32 {
            let want = (i != 50).then(|| format!("f{i}").into_bytes());
            assert_eq!(
                get(&db, format!("flushed{i:03}").as_bytes()),
                want,
                "flushed{i:03} after reopen #{round}"
            );
            assert_eq!(
                get(&db, format!("memtable{i:03}").as_bytes()),
                Some(format!("m{i}").into_bytes()),
                "memtable{i:03} (only in the WAL at close) after reopen #{round}"
            );
        }
        assert_eq!(
            db.iter().expect("iter").count(),
            199,
            "live keys after reopen #{round}"
        );
    }
}

#[test]
fn open_creates_missing_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("db");
    let db = open(&path);
    db.put(b"k", b"v").expect("put in created dir");
    assert!(
        path.join("CURRENT").exists(),
        "CURRENT written in the new directory"
    );
}

#[test]
fn writes_larger_than_the_memtable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let options = common::tiny_options(); // 4 KiB memtable, 256-byte blocks
    let db = Db::open_with(dir.path(), options.clone()).expect("open");
    let big: Vec<u8> = (0..(1usize << 20)).map(|i| (i % 253) as u8).collect();
    db.put(b"big", &big)
        .expect("a value 256 times the memtable size");
    let mut batch = WriteBatch::new();
    for i in 0..2_000u32 {
        batch.put(format!("batch{i:05}"), [b'b'; 50]);
    }
    db.write(batch).expect("a batch 25 times the memtable size");
    let big_key = |i: u8| -> Vec<u8> { [b"bigkey".as_slice(), &[i; 10_000]].concat() };
    for i in 0..5 {
        db.put(big_key(i), [i])
            .expect("a 10 KB key, larger than a block");
    }
    let check = |db: &Db, when: &str| {
        assert!(
            get(db, b"big").is_some_and(|v| v == big),
            "1 MiB value through a 4 KiB memtable {when}"
        );
        assert_eq!(
            db.scan((Included(b"batch".as_slice()), Excluded(b"batci".as_slice())))
                .expect("scan")
                .count(),
            2_000,
            "all puts of the big batch {when}"
        );
        for i in 0..5 {
            assert_eq!(get(db, &big_key(i)), Some(vec![i]), "10 KB key #{i} {when}");
        }
    };
    check(&db, "right away");
    db.flush().expect("flush");
    check(&db, "after flush");
    drop(db);
    let db = Db::open_with(dir.path(), options).expect("reopen");
    check(&db, "after reopen");
    db.compact().expect("compact");
    check(&db, "after compact");
}
