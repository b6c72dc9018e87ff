//! Snapshots and iterators are point-in-time views: later writes, flushes and
//! compactions never change what they show.

mod common;

use std::collections::BTreeMap;
use std::ops::Bound::{Excluded, Included, Unbounded};

use kv_engine::{Db, Options, SyncMode};

fn open(path: &std::path::Path) -> Db {
    Db::open_with(
        path,
        Options {
            sync: SyncMode::Never,
            ..common::small_options()
        },
    )
    .unwrap_or_else(|e| panic!("open {}: {e}", path.display()))
}

type Model = BTreeMap<Vec<u8>, Vec<u8>>;

fn snapshot_contents(snap: &kv_engine::Snapshot) -> Model {
    snap.iter()
        .expect("snapshot iter")
        .map(|r| {
            let (k, v) = r.expect("snapshot iter item");
            (k.to_vec(), v.to_vec())
        })
        .collect()
}

fn db_contents(db: &Db) -> Model {
    db.iter()
        .expect("iter")
        .map(|r| {
            let (k, v) = r.expect("iter item");
            (k.to_vec(), v.to_vec())
        })
        .collect()
}

#[test]
fn snapshot_survives_writes_flush_and_compaction() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = open(dir.path());
    let mut model = Model::new();
    let mut snaps = Vec::new();
    // Ten generations of overwrites and deletes, a snapshot after each, with
    // the generations spread over the memtable, L0 and compacted levels.
    for generation in 0..10u32 {
        for i in 0..300u32 {
            let key = format!("key{i:04}").into_bytes();
            if (i + generation) % 7 == 0 {
                db.delete(&key).expect("delete");
                model.remove(&key);
            } else if (i * 3 + generation) % 4 != 0 {
                let value = format!("g{generation}-{i}-{}", "x".repeat((i % 50) as usize));
                db.put(&key, &value).expect("put");
                model.insert(key, value.into_bytes());
            }
        }
        snaps.push((generation, db.snapshot(), model.clone()));
        match generation % 3 {
            0 => db.flush().expect("flush"),
            1 => db.compact().expect("compact"),
            _ => {}
        }
    }
    db.compact().expect("final compact");
    assert_eq!(db_contents(&db), model, "db after final compaction");
    for (generation, snap, want) in &snaps {
        assert_eq!(
            &snapshot_contents(snap),
            want,
            "snapshot of generation {generation} changed after later writes and compactions"
        );
        for i in (0..300u32).step_by(13) {
            let key = format!("key{i:04}").into_bytes();
            assert_eq!(
                snap.get(&key).expect("snapshot get").map(|b| b.to_vec()),
                want.get(&key).cloned(),
                "snapshot of generation {generation}: get key{i:04}"
            );
        }
        let lo = b"key0100".as_slice();
        let hi = b"key0200".as_slice();
        let got: Model = snap
            .scan((Excluded(lo), Included(hi)))
            .expect("snapshot scan")
            .map(|r| {
                let (k, v) = r.expect("snapshot scan item");
                (k.to_vec(), v.to_vec())
            })
            .collect();
        let want_range: Model = want
            .range::<[u8], _>((Excluded(lo), Included(hi)))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        assert_eq!(
            got, want_range,
            "snapshot of generation {generation}: scan (key0100, key0200]"
        );
    }
}

#[test]
fn iterator_is_a_point_in_time_view() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = open(dir.path());
    for i in 0..200u32 {
        db.put(format!("key{i:04}"), format!("old{i}"))
            .expect("put");
    }
    db.flush().expect("flush");
    let mut it = db
        .scan((Included(b"key0000".as_slice()), Unbounded))
        .expect("scan");
    let (first, _) = it.next().expect("a first item").expect("first item ok");
    assert_eq!(first.as_ref(), b"key0000");

    // Change everything behind the iterator's back: overwrite, delete, insert
    // new keys in its path, flush and compact.
    for i in 0..200u32 {
        if i % 2 == 0 {
            db.delete(format!("key{i:04}")).expect("delete");
        } else {
            db.put(format!("key{i:04}"), format!("new{i}"))
                .expect("overwrite");
        }
        db.put(format!("key{i:04}a"), b"inserted").expect("insert");
    }
    db.flush().expect("flush");
    db.compact().expect("compact");

    let mut seen = 1;
    for item in it {
        let (k, v) = item.expect("iterator item after concurrent changes");
        let expect_key = format!("key{seen:04}");
        assert_eq!(
            common::show(&k),
            expect_key,
            "the iterator must show the keys as of its creation"
        );
        assert_eq!(
            common::show(&v),
            format!("old{seen}"),
            "the iterator must show values as of its creation"
        );
        seen += 1;
    }
    assert_eq!(
        seen, 200,
        "the iterator must see exactly the 200 original keys"
    );
    assert_eq!(
        db.iter().expect("iter").count(),
        300,
        "100 odd originals + 200 inserted"
    );
}

#[test]
fn snapshot_and_iterator_outliving_the_db() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = open(dir.path());
    for i in 0..300u32 {
        db.put(format!("key{i:04}"), format!("v{i}")).expect("put");
    }
    db.flush().expect("flush");
    let snap = db.snapshot();
    let mut it = db.iter().expect("iter");
    let first = it.next().expect("first").expect("first ok");
    assert_eq!(first.0.as_ref(), b"key0000");
    db.put(b"key0005", b"changed").expect("put after snapshot");
    drop(db);

    // Reads through views that outlive their Db: the right data or an error.
    match snap.get(b"key0005") {
        Ok(v) => assert_eq!(
            v.as_deref(),
            Some(&b"v5"[..]),
            "snapshot after its Db was dropped"
        ),
        Err(e) => eprintln!("snapshot get after drop: {e}"),
    }
    let mut n = 1u32;
    for item in it {
        match item {
            Ok((k, v)) => {
                assert_eq!(
                    common::show(&k),
                    format!("key{n:04}"),
                    "iterator after its Db was dropped"
                );
                assert_eq!(
                    common::show(&v),
                    format!("v{n}"),
                    "iterator after its Db was dropped"
                );
                n += 1;
            }
            Err(e) => {
                eprintln!("iterator after drop: {e}");
                break;
            }
        }
        assert!(n <= 300, "iterator runs past the 300 keys");
    }
    drop(snap);

    // Once every view is gone the directory is free again and nothing was lost.
    let db = open(dir.path());
    assert_eq!(
        db.get(b"key0005").expect("get").as_deref(),
        Some(&b"changed"[..])
    );
    assert_eq!(
        db.iter().expect("iter").count(),
        300,
        "all keys after reopen"
    );
}
