//! A commit group that a crash cut in the middle of its copy or its
//! write-back: the store opens and holds exactly the writes acknowledged
//! before it.
//!
//! Concurrent writers share one WAL write and one `fdatasync` (group
//! commit). Nothing orders the bytes of that one write: glibc's `memcpy`
//! stores the first 32-64 bytes of a large copy after the rest, so a
//! process killed in the middle of the copy leaves zeros at the start of the
//! group followed by later batches of it (seen as `record header checksum
//! mismatch` on open, with the segment's last non-zero byte where the copy
//! stopped); after a power loss before the group's `fdatasync`, any of its
//! pages may be missing. Either way no writer of the group has been
//! acknowledged, and open must drop the group, not refuse the store.
//!
//! The tests find a group's bytes from the outside: the WAL bytes a round of
//! concurrent puts added, when the round took exactly one `fdatasync`.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Barrier;

use kv_engine::{Db, Error, Options, SyncMode};

const WRITERS: usize = 8;
const VALUE_LEN: usize = 2_000;

fn options() -> Options {
    Options {
        sync: SyncMode::Always,
        ..Options::default()
    }
}

fn value(round: usize, w: usize) -> Vec<u8> {
    let mut v = format!("r{round}w{w}.").into_bytes();
    v.resize(VALUE_LEN, b'a' + (w % 26) as u8);
    v
}

/// Where the written part of a reserved (zero-filled ahead) segment ends.
fn written_len(data: &[u8]) -> usize {
    data.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1)
}

struct Image {
    _root: tempfile::TempDir,
    dir: PathBuf,
    wal_name: String,
    /// The WAL with the last group's bytes at `group`.
    wal: Vec<u8>,
    group: std::ops::Range<usize>,
    /// What the store held before the last group.
    before: BTreeMap<Vec<u8>, Vec<u8>>,
}

/// Writes some single puts, then rounds of `WRITERS` concurrent puts until
/// one round is one commit group (one `fdatasync` for all of them), and
/// takes the image a SIGKILL right then would leave.
fn image_with_last_group() -> Image {
    let root = tempfile::tempdir().expect("tempdir");
    let live = root.path().join("live");
    let db = Db::open_with(&live, options()).expect("open");
    let mut model = BTreeMap::new();
    for i in 0..5usize {
        let (k, v) = (format!("base{i}").into_bytes(), value(1000 + i, i));
        db.put(&k, &v).expect("put");
        model.insert(k, v);
    }
    let wal_path = common::files_with_suffix(&live, ".log")
        .pop()
        .expect("a WAL segment");
    for round in 0..200 {
        let before_len = written_len(&fs::read(&wal_path).expect("read WAL"));
        let syncs = db.stats().wal_syncs;
        let barrier = Barrier::new(WRITERS);
        std::thread::scope(|s| {
            for w in 0..WRITERS {
                let (db, barrier) = (&db, &barrier);
                s.spawn(move || {
                    barrier.wait();
                    db.put(format!("r{round}w{w}"), value(round, w))
                        .expect("put");
                });
            }
        });
        let one_group = db.stats().wal_syncs == syncs + 1;
        let wal = fs::read(&wal_path).expect("read WAL");
        let after_len = written_len(&wal);
        if one_group {
            let dir = root.path().join("image");
            common::copy_dir(&live, &dir);
            drop(db);
            return Image {
                _root: root,
                dir,
                wal_name: wal_path
                    .file_name()
                    .expect("name")
                    .to_string_lossy()
                    .into_owned(),
                group: before_len..after_len,
                wal,
                before: model,
            };
        }
        for w in 0..WRITERS {
            model.insert(format!("r{round}w{w}").into_bytes(), value(round, w));
        }
    }
    panic!("no round of {WRITERS} concurrent puts shared one fsync in 200 rounds");
}

fn trial(image: &Image, name: &str, wal: &[u8]) -> PathBuf {
    let dir = image.dir.with_file_name(name);
    common::copy_dir(&image.dir, &dir);
    fs::write(dir.join(&image.wal_name), wal).expect("write WAL");
    dir
}

fn contents(dir: &Path, what: &str) -> Result<BTreeMap<Vec<u8>, Vec<u8>>, Error> {
    let db = Db::open_with(dir, options())?;
    let mut got = BTreeMap::new();
    for item in db.iter()? {
        let (k, v) = item?;
        got.insert(k.to_vec(), v.to_vec());
    }
    eprintln!("{what}: opened with {} keys", got.len());
    Ok(got)
}

fn expect_only_the_group_dropped(image: &Image, name: &str, wal: &[u8]) {
    let dir = trial(image, name, wal);
    match common::no_panic(name, || contents(&dir, name)) {
        Ok(got) => assert!(
            got == image.before,
            "{name}: the store must hold exactly the writes before the torn group \
             ({} keys, expected {})",
            got.len(),
            image.before.len()
        ),
        Err(e) => panic!("{name}: a torn, never acknowledged group made the store unopenable: {e}"),
    }
    // Recovery cut the torn group away for good: it opens again the same.
    let again = contents(&dir, name).expect("second open");
    assert!(again == image.before, "{name}: second open differs");
}

#[test]
fn copy_killed_with_its_head_unstored_drops_only_the_group() {
    let image = image_with_last_group();
    let g = image.group.clone();
    assert!(
        g.len() > WRITERS * VALUE_LEN,
        "precondition: the round's group holds all {WRITERS} puts ({} bytes)",
        g.len()
    );
    // memcpy's head (first 32-64 bytes) not yet stored, the copy stopped
    // part way through its main loop (a page fault on the segment's growth).
    for (head, stop) in [(32, 3 * g.len() / 5), (48, g.len() / 3), (64, g.len() - 1)] {
        let mut wal = image.wal.clone();
        wal[g.start..g.start + head].fill(0);
        wal[g.start + stop..g.end].fill(0);
        expect_only_the_group_dropped(&image, &format!("head{head}-stop{stop}"), &wal);
    }
}

#[test]
fn group_missing_a_page_after_power_loss_drops_only_the_group() {
    let image = image_with_last_group();
    let g = image.group.clone();
    // Every page wholly inside the group, lost alone (written back before
    // the crash in any order, this one not).
    let first = g.start.div_ceil(4096) * 4096;
    let mut page = first;
    let mut tried = 0;
    while page + 4096 <= g.end {
        let mut wal = image.wal.clone();
        wal[page..page + 4096].fill(0);
        expect_only_the_group_dropped(&image, &format!("page{page}"), &wal);
        page += 4096;
        tried += 1;
    }
    assert!(tried >= 2, "precondition: the group spans whole pages");
}

#[test]
fn damage_to_an_acknowledged_group_is_still_corruption() {
    let image = image_with_last_group();
    // A byte of the group before the last one (an acknowledged write, with
    // an intact group after it) flipped: never silently dropped.
    let end_of_previous = image.group.start;
    let mut wal = image.wal.clone();
    wal[end_of_previous - 10] ^= 0x40;
    let dir = trial(&image, "flip-acked", &wal);
    match common::no_panic("flip-acked", || contents(&dir, "flip-acked")) {
        Err(Error::Corruption { file, .. }) => assert!(
            file.ends_with(&image.wal_name),
            "the error names the WAL segment, not {}",
            file.display()
        ),
        other => panic!("damage before an intact group must be corruption, got {other:?}"),
    }
}
