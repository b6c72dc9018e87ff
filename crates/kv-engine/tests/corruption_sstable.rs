//! Bit flips in SSTables: every block and the footer are checksummed, so a
//! flipped bit anywhere gives an error (at open or at the read) or, where it
//! happens not to matter, the correct data — never a wrong value, a vanished
//! key, a resurrected deleted key, or a panic.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use common::no_panic;
use kv_engine::{Db, Options, SyncMode};

const KEYS: u32 = 300;

fn options() -> Options {
    Options {
        sync: SyncMode::Never,
        memtable_size: 1 << 20,
        block_size: 256,
        // Only the explicit flushes and compactions below change the tree.
        l0_compaction_trigger: 8,
        l0_slowdown_trigger: 16,
        l0_stop_trigger: 24,
        ..Options::default()
    }
}

fn key(i: u32) -> Vec<u8> {
    format!("key{i:04}").into_bytes()
}

/// Older table: every key. Newer table: overwrites of even keys and
/// tombstones for multiples of 3 — damage there must not resurrect old data.
fn expected() -> BTreeMap<Vec<u8>, Vec<u8>> {
    (0..KEYS)
        .filter(|i| i % 3 != 0)
        .map(|i| {
            let v = if i % 2 == 0 {
                format!("new-{i}-{}", "n".repeat((i % 17) as usize))
            } else {
                old_value(i)
            };
            (key(i), v.into_bytes())
        })
        .collect()
}

fn old_value(i: u32) -> String {
    format!("old-{i}-{}", "o".repeat((i % 23) as usize))
}

struct Image {
    root: tempfile::TempDir,
    dir: PathBuf,
}

fn image(compact: bool) -> Image {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path().join("image");
    {
        let db = Db::open_with(&dir, options()).expect("open");
        for i in 0..KEYS {
            db.put(key(i), old_value(i)).expect("put");
        }
        db.flush().expect("flush older table");
        for (k, v) in expected() {
            db.put(k, v).expect("overwrite");
        }
        for i in (0..KEYS).step_by(3) {
            db.delete(key(i)).expect("delete");
        }
        db.flush().expect("flush newer table");
        if compact {
            db.compact().expect("compact");
        }
    }
    Image { root, dir }
}

/// What a trial does after opening the damaged database.
#[derive(Clone, Copy, PartialEq)]
enum Then {
    /// Read everything.
    Read,
    /// Run a full compaction (which reads every table), then read everything,
    /// then reopen and read everything again: damage must not be laundered
    /// into a fresh, validly checksummed table.
    CompactThenRead,
}

/// Opens `dir` and reads everything; fails on a panic or on any read that
/// returns data other than the expected data.
fn check(dir: &Path, what: &str, then: Then) -> &'static str {
    let panics = common::panics_so_far();
    let outcome = no_panic(what, || {
        let db = match Db::open_with(dir, options()) {
            Ok(db) => db,
            Err(_) => return "open failed",
        };
        if then == Then::Read {
            return if read_everything(&db, what) == 0 {
                "all reads correct"
            } else {
                "some reads failed"
            };
        }
        let compacted = db.compact().is_ok();
        let errors = read_everything(&db, &format!("{what}, after compact()"));
        drop(db);
        let reopened = match Db::open_with(dir, options()) {
            Ok(db) => read_everything(&db, &format!("{what}, reopened after compact()")) == 0,
            Err(_) => false,
        };
        match (compacted, errors == 0 && reopened) {
            (true, true) => "compact ok, all reads correct",
            (true, false) => "compact ok, some reads failed",
            (false, true) => "compact failed, all reads correct",
            (false, false) => "compact failed, some reads failed",
        }
    });
    assert_eq!(common::panics_so_far(), panics, "{what}: a thread panicked");
    outcome
}

/// Reads every key, some missing ones and a full scan; returns the number of
/// reads that failed and fails the test on any read that returned wrong data.
fn read_everything(db: &Db, what: &str) -> usize {
    let want = expected();
    let mut errors = 0;
    for i in 0..KEYS {
        let k = key(i);
        match db.get(&k) {
            Ok(got) => assert_eq!(
                got.as_deref(),
                want.get(&k).map(|v| v.as_slice()),
                "{what}: get {} returned wrong data",
                common::show(&k)
            ),
            Err(_) => errors += 1,
        }
        let missing = format!("key{i:04}-missing");
        match db.get(&missing) {
            Ok(got) => assert_eq!(got, None, "{what}: get {missing} found a value"),
            Err(_) => errors += 1,
        }
    }
    match db.iter() {
        Ok(it) => {
            let mut expect = want.iter();
            for item in it.take(want.len() + 1) {
                match item {
                    Ok((k, v)) => {
                        let next = expect
                            .next()
                            .map(|(k, v)| (common::show(k), common::show(v)));
                        assert_eq!(
                            Some((common::show(&k), common::show(&v))),
                            next,
                            "{what}: scan skipped, invented or changed an entry"
                        );
                    }
                    Err(_) => {
                        errors += 1;
                        break;
                    }
                }
            }
            if errors == 0 {
                assert!(
                    expect.next().is_none(),
                    "{what}: scan ended early without an error"
                );
            }
        }
        Err(_) => errors += 1,
    }
    errors
}

/// ~`samples` offsets of a file of `len` bytes: the last 160 bytes (footer,
/// index, filter) all, the rest evenly spread.
fn sample_offsets(len: usize, samples: usize) -> Vec<usize> {
    let tail_start = len.saturating_sub(160);
    let step = (tail_start / samples.saturating_sub(160).max(1)).max(1);
    let mut v: Vec<usize> = (0..tail_start).step_by(step).collect();
    v.extend(tail_start..len);
    v
}

fn flip_each(image: &Image, table: &Path, samples: usize, then: Then) {
    let name = table
        .file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned();
    let data = fs::read(table).expect("read table");
    let outcomes: std::sync::Mutex<BTreeMap<&str, usize>> = Default::default();
    let offsets: Vec<(usize, usize)> = sample_offsets(data.len(), samples)
        .into_iter()
        .enumerate()
        .collect();
    common::for_each_parallel(&offsets, 4, |worker, &(n, offset)| {
        let bit = (offset + n) % 8;
        let what = format!(
            "{name} ({} bytes) bit {bit} flipped at offset {offset}",
            data.len()
        );
        let dir = image.root.path().join(format!("trial{worker}"));
        if dir.exists() {
            fs::remove_dir_all(&dir).expect("remove old trial");
        }
        common::copy_dir(&image.dir, &dir);
        let mut damaged = data.clone();
        damaged[offset] ^= 1 << bit;
        fs::write(dir.join(&name), &damaged).expect("write damaged table");
        let outcome = check(&dir, &what, then);
        *outcomes
            .lock()
            .expect("outcomes")
            .entry(outcome)
            .or_default() += 1;
    });
    let outcomes = outcomes.into_inner().expect("outcomes");
    eprintln!("{name}: {outcomes:?}");
}

#[test]
fn intact_images_read_back_exactly() {
    for compact in [false, true] {
        let image = image(compact);
        assert_eq!(
            check(
                &image.dir,
                &format!("intact image (compact: {compact})"),
                Then::Read
            ),
            "all reads correct",
            "the undamaged database must read back without errors"
        );
    }
}

#[test]
fn bit_flips_in_overlapping_level0_tables() {
    common::count_panics();
    let image = image(false);
    let tables = common::files_with_suffix(&image.dir, ".sst");
    assert!(
        tables.len() >= 2,
        "expected the two flushed tables, found {tables:?}"
    );
    // The oldest and newest tables: damage to either must not show the other's data.
    flip_each(&image, &tables[0], 500, Then::Read);
    flip_each(&image, &tables[tables.len() - 1], 500, Then::Read);
}

#[test]
fn bit_flips_in_a_compacted_table() {
    common::count_panics();
    let image = image(true);
    let tables = common::files_with_suffix(&image.dir, ".sst");
    let biggest = tables
        .iter()
        .max_by_key(|p| fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .expect("a table after compaction");
    flip_each(&image, biggest, 500, Then::Read);
}

#[test]
fn compaction_over_a_damaged_table_does_not_launder_it() {
    common::count_panics();
    let image = image(false);
    let tables = common::files_with_suffix(&image.dir, ".sst");
    assert!(
        tables.len() >= 2,
        "expected the two flushed tables, found {tables:?}"
    );
    flip_each(&image, &tables[0], 400, Then::CompactThenRead);
    flip_each(
        &image,
        &tables[tables.len() - 1],
        400,
        Then::CompactThenRead,
    );
}
