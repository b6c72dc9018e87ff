//! A first open killed before it wrote CURRENT leaves an empty WAL segment
//! and perhaps a manifest that never took charge. No write was ever
//! accepted in such a directory: it must open as a new database, not be
//! refused as damaged. (Found by the SIGKILL suite: a kill 0-30 ms after
//! the first start left "CURRENT is missing but the directory holds database
//! files".) Anything a database that did accept writes leaves still fails.

mod common;

use std::fs;
use std::path::Path;

use kv_engine::{Db, Error, Options, SyncMode};

fn options() -> Options {
    Options {
        sync: SyncMode::Always,
        ..Options::default()
    }
}

/// What a first open leaves when killed just before CURRENT is written:
/// its files, without CURRENT.
fn killed_first_open(dir: &Path, write: bool) {
    let db = Db::open_with(dir, options()).expect("open");
    if write {
        db.put(b"k", b"v").expect("put");
        // Keep the record in the WAL (no flush), then close.
    }
    drop(db);
    fs::remove_file(dir.join("CURRENT")).expect("remove CURRENT");
}

#[test]
fn first_open_killed_before_current_opens_as_a_new_database() {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path().join("db");
    killed_first_open(&dir, false);
    assert!(
        !common::files_with_suffix(&dir, ".log").is_empty(),
        "precondition: the WAL segment of the first open is left"
    );
    let db = Db::open_with(&dir, options())
        .unwrap_or_else(|e| panic!("an unfinished creation must open afresh: {e}"));
    db.put(b"after", b"1").expect("put");
    drop(db);
    let db = Db::open_with(&dir, options()).expect("reopen");
    assert_eq!(db.get(b"after").expect("get").as_deref(), Some(&b"1"[..]));
    assert_eq!(db.iter().expect("iter").count(), 1);
}

#[test]
fn missing_current_with_written_data_is_still_corruption() {
    for flushed in [false, true] {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = root.path().join("db");
        if flushed {
            let db = Db::open_with(&dir, options()).expect("open");
            db.put(b"k", b"v").expect("put");
            db.flush().expect("flush");
            drop(db);
            fs::remove_file(dir.join("CURRENT")).expect("remove CURRENT");
        } else {
            killed_first_open(&dir, true);
        }
        match Db::open_with(&dir, options()) {
            Err(Error::Corruption { .. }) => {}
            Err(e) => panic!("flushed={flushed}: expected corruption, got {e}"),
            Ok(_) => panic!("flushed={flushed}: acknowledged data silently dropped"),
        }
    }
}
