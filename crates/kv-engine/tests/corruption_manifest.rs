//! Damage to the MANIFEST (and CURRENT): truncation at every byte offset and a
//! bit flip at every byte. The open may succeed or fail, but never panics,
//! and a successful open never returns a value that was not written.
//!
//! Soundness of the check: every key is written exactly once, so an older
//! version of the tree (which is what a shorter manifest legitimately
//! describes) can lose keys but cannot hold a stale value. A lost key is
//! reported on stderr, not failed: a manifest cut at a record boundary is
//! indistinguishable from an older, intact manifest, and the WAL of the lost
//! flush was deleted when that flush was recorded, so no engine could recover
//! those keys. What is strict: the intact image reads back exactly, and damage
//! inside any record but the last (which no crash can produce) is
//! `Error::Corruption` naming the manifest.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use common::no_panic;
use kv_engine::{Db, Error, Options, SyncMode};

type Model = BTreeMap<Vec<u8>, Vec<u8>>;

const ROUNDS: u32 = 6;
const KEYS_PER_ROUND: u32 = 40;

fn options() -> Options {
    Options {
        sync: SyncMode::Never,
        memtable_size: 1 << 20,
        block_size: 512,
        // Only the explicit flushes and compactions below change the tree.
        l0_compaction_trigger: 8,
        l0_slowdown_trigger: 16,
        l0_stop_trigger: 24,
        ..Options::default()
    }
}

struct Image {
    root: tempfile::TempDir,
    dir: PathBuf,
    manifest_name: String,
    manifest: Vec<u8>,
    model: Model,
}

/// Rounds of write-once keys, each flushed (a manifest edit), a compaction in
/// the middle (an edit that removes files), and a last round left in the WAL.
fn image() -> Image {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path().join("image");
    let mut model = Model::new();
    {
        let db = Db::open_with(&dir, options()).expect("open");
        for r in 0..ROUNDS {
            for i in 0..KEYS_PER_ROUND {
                let k = format!("r{r}k{i:03}").into_bytes();
                let v = format!("value-{r}-{i}-{}", "z".repeat((i % 30) as usize)).into_bytes();
                db.put(&k, &v).expect("put");
                model.insert(k, v);
            }
            if r + 1 < ROUNDS {
                db.flush().expect("flush");
            }
            if r == 2 {
                db.compact().expect("compact");
            }
        }
    }
    let current = fs::read_to_string(dir.join("CURRENT")).expect("read CURRENT");
    let manifest_name = current.trim_end_matches('\n').to_string();
    assert!(
        manifest_name.starts_with("MANIFEST-") && current.ends_with('\n'),
        "CURRENT should hold a manifest name and a newline, holds {current:?}"
    );
    let manifest = fs::read(dir.join(&manifest_name)).expect("read manifest");
    Image {
        root,
        dir,
        manifest_name,
        manifest,
        model,
    }
}

fn trial(image: &Image, name: &str, manifest: &[u8]) -> PathBuf {
    let dir = image.root.path().join(name);
    if dir.exists() {
        fs::remove_dir_all(&dir).expect("remove old trial");
    }
    common::copy_dir(&image.dir, &dir);
    fs::write(dir.join(&image.manifest_name), manifest).expect("write damaged manifest");
    dir
}

enum Outcome {
    OpenFailed(Error),
    /// Opened; how many keys were missing and how many reads failed.
    Opened {
        lost: usize,
        read_errors: usize,
    },
}

/// Opens `dir` and reads every key by get and by scan; fails the test on a
/// panic or on any value that was never written for its key.
fn open_and_check(dir: &Path, model: &Model, what: &str) -> Outcome {
    let panics = common::panics_so_far();
    let outcome = no_panic(what, || {
        let db = match Db::open_with(dir, options()) {
            Ok(db) => db,
            Err(e) => return Outcome::OpenFailed(e),
        };
        let (mut lost, mut read_errors) = (0, 0);
        for (k, want) in model {
            match db.get(k) {
                Ok(Some(v)) => assert!(
                    v.as_ref() == want.as_slice(),
                    "{what}: {} reads a wrong value {:?}",
                    common::show(k),
                    common::show(&v)
                ),
                Ok(None) => lost += 1,
                Err(_) => read_errors += 1,
            }
        }
        match db.iter() {
            Ok(it) => {
                for item in it.take(model.len() + 1) {
                    match item {
                        Ok((k, v)) => assert!(
                            model
                                .get(k.as_ref())
                                .is_some_and(|want| v.as_ref() == want.as_slice()),
                            "{what}: scan shows {} = {:?}, which was never written",
                            common::show(&k),
                            common::show(&v)
                        ),
                        Err(_) => {
                            read_errors += 1;
                            break;
                        }
                    }
                }
            }
            Err(_) => read_errors += 1,
        }
        Outcome::Opened { lost, read_errors }
    });
    assert_eq!(common::panics_so_far(), panics, "{what}: a thread panicked");
    outcome
}

#[test]
fn intact_image_reads_back_exactly() {
    let image = image();
    let dir = trial(&image, "trial", &image.manifest);
    match open_and_check(&dir, &image.model, "intact image") {
        Outcome::Opened {
            lost: 0,
            read_errors: 0,
        } => {}
        Outcome::Opened { lost, read_errors } => {
            panic!("intact image: {lost} keys lost, {read_errors} read errors")
        }
        Outcome::OpenFailed(e) => panic!("intact image does not open: {e}"),
    }
}

#[test]
fn truncation_at_every_offset_never_gives_a_wrong_value() {
    common::count_panics();
    let image = image();
    let len = image.manifest.len();
    let frames = common::parse_frames(&image.manifest);
    eprintln!(
        "{}: {len} bytes, records end at {:?}",
        image.manifest_name,
        frames
            .as_ref()
            .map(|f| f.iter().map(|f| f.end).collect::<Vec<_>>())
    );
    let failed = std::sync::atomic::AtomicUsize::new(0);
    let lossy = std::sync::Mutex::new(Vec::new());
    let cuts: Vec<usize> = (0..=len).collect();
    common::for_each_parallel(&cuts, 4, |worker, &cut| {
        let what = format!("{} cut at {cut} of {len}", image.manifest_name);
        let dir = trial(&image, &format!("trial{worker}"), &image.manifest[..cut]);
        match open_and_check(&dir, &image.model, &what) {
            Outcome::OpenFailed(e) => {
                assert!(!e.to_string().is_empty(), "{what}: error without a message");
                if frames
                    .as_ref()
                    .is_some_and(|f| f.iter().any(|f| f.end == cut))
                {
                    eprintln!("{what} (a record boundary): {e}");
                }
                failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            Outcome::Opened { lost, read_errors } => {
                if cut == len {
                    assert_eq!(
                        (lost, read_errors),
                        (0, 0),
                        "{what}: the intact manifest lost data"
                    );
                }
                if lost > 0 {
                    lossy.lock().expect("lossy").push((cut, lost));
                }
            }
        }
    });
    let failed = failed.into_inner();
    let mut lossy = lossy.into_inner().expect("lossy");
    lossy.sort();
    eprintln!(
        "truncation: {failed} of {} opens failed; opens that succeeded without some keys (offset, keys): {lossy:?}",
        len + 1
    );
}

#[test]
fn bit_flips_never_give_a_wrong_value_and_middle_damage_is_corruption() {
    common::count_panics();
    let image = image();
    let frames = common::parse_frames(&image.manifest).unwrap_or_else(|| {
        panic!(
            "{} is not a sequence of framed records as documented",
            image.manifest_name
        )
    });
    assert!(
        frames.len() >= 2,
        "{} has {} record(s); five flushes and a compaction should be several edits",
        image.manifest_name,
        frames.len()
    );
    let header = frames[0].payload_start - frames[0].start;
    let last = frames.len() - 1;
    let lossy = std::sync::Mutex::new(Vec::new());
    let offsets: Vec<usize> = (0..image.manifest.len()).collect();
    common::for_each_parallel(&offsets, 4, |worker, &offset| {
        let bit = offset % 8;
        let what = format!(
            "{} bit {bit} flipped at offset {offset}",
            image.manifest_name
        );
        let mut m = image.manifest.clone();
        m[offset] ^= 1 << bit;
        let dir = trial(&image, &format!("trial{worker}"), &m);
        let frame = frames
            .iter()
            .position(|f| f.start <= offset && offset < f.end)
            .expect("offset in a frame");
        // Damage that no crash can produce: inside a record that is not the
        // last (and, with an unchecksummed length field, not in that field).
        let strict = frame < last && (header >= 12 || offset >= frames[frame].start + 4);
        match open_and_check(&dir, &image.model, &what) {
            Outcome::OpenFailed(Error::Corruption { file, .. }) if strict => assert_eq!(
                file.file_name().map(|n| n.to_string_lossy().into_owned()),
                Some(image.manifest_name.clone()),
                "{what}: the corruption error must name the manifest, named {}",
                file.display()
            ),
            Outcome::OpenFailed(e) if strict => {
                panic!("{what}: expected Error::Corruption naming the manifest, got {e:?}")
            }
            Outcome::Opened { lost, read_errors } if strict => panic!(
                "{what}: damage inside record {frame} of {} was not detected ({lost} keys lost, {read_errors} read errors)",
                last + 1
            ),
            Outcome::OpenFailed(_) => {}
            Outcome::Opened { lost, .. } => {
                if lost > 0 {
                    lossy.lock().expect("lossy").push((offset, lost));
                }
            }
        }
    });
    let mut lossy = lossy.into_inner().expect("lossy");
    lossy.sort();
    eprintln!(
        "bit flips in the last record that opened without some keys (offset, keys): {lossy:?}"
    );
}

#[test]
fn current_naming_a_missing_or_garbled_manifest_fails() {
    common::count_panics();
    let image = image();
    for (what, current) in [
        (
            "CURRENT names a missing manifest",
            "MANIFEST-999999\n".to_string(),
        ),
        ("CURRENT is garbage", "\u{1}\u{2}garbage".to_string()),
        ("CURRENT is empty", String::new()),
        (
            "CURRENT names the manifest without newline",
            image.manifest_name.clone(),
        ),
    ] {
        let dir = trial(&image, "trial", &image.manifest);
        fs::write(dir.join("CURRENT"), &current).expect("write CURRENT");
        match open_and_check(&dir, &image.model, what) {
            Outcome::OpenFailed(e) => {
                assert!(!e.to_string().is_empty(), "{what}: error without a message")
            }
            Outcome::Opened { lost, read_errors } => assert_eq!(
                (lost, read_errors),
                (0, 0),
                "{what}: opened but lost data instead of failing"
            ),
        }
    }
}

/// Copies of the live directory just before and just after one manifest
/// edit (a flush or a compaction), and the model both must read as.
fn around_one_edit(compact: bool) -> (tempfile::TempDir, PathBuf, PathBuf, Model) {
    let root = tempfile::tempdir().expect("tempdir");
    let live = root.path().join("live");
    let mut model = Model::new();
    let db = Db::open_with(&live, options()).expect("open");
    // Overwrites and deletes across tables: an older version of the tree here
    // could show stale values, so every check below is exact.
    for round in 0..4u32 {
        for i in 0..60u32 {
            let k = format!("key{i:03}").into_bytes();
            if (i + round) % 5 == 0 {
                db.delete(&k).expect("delete");
                model.remove(&k);
            } else {
                let v = format!("round{round}-{i}").into_bytes();
                db.put(&k, &v).expect("put");
                model.insert(k, v);
            }
        }
        if round < 3 {
            db.flush().expect("flush");
        }
    }
    // `compact` starts with a flush, which appends an edit of its own; do it
    // first so that exactly one edit (the compaction's) lies between the two
    // images. Otherwise the flush's table, deleted again by the compaction,
    // would be in neither image.
    if compact {
        db.flush().expect("flush");
    }
    // For a flush, round 3 is only in the WAL. With no background work pending
    // (explicit flushes only, large memtable), copying the live directory is a
    // crash image.
    let before = root.path().join("before");
    common::copy_dir(&live, &before);
    if compact {
        db.compact().expect("compact");
    } else {
        db.flush().expect("flush");
    }
    let after = root.path().join("after");
    common::copy_dir(&live, &after);
    drop(db);
    (root, before, after, model)
}

/// A crash while the engine appends an edit to the manifest leaves the edit's
/// new files and every file it makes obsolete (they are deleted only once the
/// edit is durable) with the edit cut anywhere. That is a torn tail: the open
/// must succeed with all the data, from the old files and the WAL.
#[test]
fn torn_tail_of_the_last_edit_recovers_everything() {
    common::count_panics();
    for compact in [false, true] {
        let edit = if compact { "compaction" } else { "flush" };
        let (root, before, after, model) = around_one_edit(compact);
        let current = fs::read_to_string(before.join("CURRENT")).expect("CURRENT");
        assert_eq!(
            fs::read_to_string(after.join("CURRENT")).expect("CURRENT"),
            current,
            "a {edit} should append to the manifest, not start a new one"
        );
        let name = current.trim_end().to_string();
        let old = fs::read(before.join(&name)).expect("manifest before");
        let new = fs::read(after.join(&name)).expect("manifest after");
        assert!(
            new.len() > old.len() && new.starts_with(&old),
            "{edit}: the manifest should grow by appending ({} -> {} bytes)",
            old.len(),
            new.len()
        );
        let cut_failures = std::sync::Mutex::new(Vec::new());
        let cuts: Vec<usize> = (old.len()..=new.len()).collect();
        common::for_each_parallel(&cuts, 4, |worker, &cut| {
            let what = format!(
                "{edit}: {name} cut at {cut} (edit spans {}..{})",
                old.len(),
                new.len()
            );
            let dir = root.path().join(format!("trial{worker}"));
            if dir.exists() {
                fs::remove_dir_all(&dir).expect("remove old trial");
            }
            common::copy_dir(&before, &dir);
            for f in fs::read_dir(&after).expect("read_dir") {
                let f = f.expect("entry");
                if !dir.join(f.file_name()).exists() {
                    fs::copy(f.path(), dir.join(f.file_name())).expect("copy new file");
                }
            }
            fs::write(dir.join(&name), &new[..cut]).expect("write manifest");
            match open_and_check(&dir, &model, &what) {
                Outcome::Opened {
                    lost: 0,
                    read_errors: 0,
                } => {}
                Outcome::Opened { lost, read_errors } => cut_failures.lock().expect("lock").push(
                    format!("{what}: {lost} keys lost, {read_errors} read errors"),
                ),
                Outcome::OpenFailed(e) => cut_failures
                    .lock()
                    .expect("lock")
                    .push(format!("{what}: open failed: {e}")),
            }
        });
        let mut cut_failures = cut_failures.into_inner().expect("lock");
        cut_failures.sort();
        assert!(
            cut_failures.is_empty(),
            "a torn last manifest edit must recover all data; {} of {} cuts did not:\n{}",
            cut_failures.len(),
            new.len() - old.len() + 1,
            cut_failures.join("\n")
        );
    }
}
