//! Damage to the write-ahead log. A crash image is taken of a database whose
//! data is only in its WAL; then:
//!
//! - the WAL cut at every byte offset must open, and hold exactly the writes of
//!   the records that are complete before the cut (a torn tail is dropped,
//!   nothing before it);
//! - a flipped bit in a record that is not the last must fail the open with
//!   `Error::Corruption` naming the WAL file (never a silent loss of the
//!   acknowledged records after it), and keep failing on a second attempt;
//! - a flipped bit in the last record drops just that record or errors;
//! - split over two segments, the records replay whole; records lost at the
//!   end of the first segment (zeroed pages look like a clean end) fail the
//!   open, because the second segment's sequence numbers show the hole;
//! - never a panic, never a wrong value.
//!
//! Each single-threaded write is one commit group of the segment; "record"
//! below means such a group.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use common::{Frame, no_panic};
use kv_engine::{Db, Error, Options, SyncMode, WriteBatch};

type Model = BTreeMap<Vec<u8>, Vec<u8>>;

const OPS: usize = 16;
/// Trials run on this many threads: each open is bound by fsync latency, not CPU.
const WORKERS: usize = 4;

enum Op {
    Put(Vec<u8>, Vec<u8>),
    Batch(Vec<(Vec<u8>, Option<Vec<u8>>)>),
}

/// Puts with unique values plus batches that always bump a marker key: every
/// prefix of the sequence leaves a different state, so a recovered state
/// names exactly how many operations survived.
fn ops() -> Vec<Op> {
    (0..OPS)
        .map(|i| {
            let val = |tag: &str| format!("{tag}{i}-{}", "x".repeat(i % 7)).into_bytes();
            if i % 4 == 3 {
                let mut entries = vec![(b"marker".to_vec(), Some(val("m")))];
                entries.push((format!("k{}", i % 5).into_bytes(), Some(val("b"))));
                entries.push((format!("k{}", (i + 2) % 5).into_bytes(), None));
                Op::Batch(entries)
            } else {
                Op::Put(format!("k{}", i % 5).into_bytes(), val("p"))
            }
        })
        .collect()
}

fn states(ops: &[Op]) -> Vec<Model> {
    let mut m = Model::new();
    let mut out = vec![m.clone()];
    for op in ops {
        match op {
            Op::Put(k, v) => {
                m.insert(k.clone(), v.clone());
            }
            Op::Batch(entries) => {
                for (k, v) in entries {
                    match v {
                        Some(v) => m.insert(k.clone(), v.clone()),
                        None => m.remove(k),
                    };
                }
            }
        }
        out.push(m.clone());
    }
    for (i, a) in out.iter().enumerate() {
        for b in &out[i + 1..] {
            assert_ne!(a, b, "test bug: two prefixes give the same state");
        }
    }
    out
}

fn options() -> Options {
    Options {
        sync: SyncMode::Always,
        ..Options::default()
    }
}

/// All pairs through the iterator, cross-checked with point reads.
fn read_all(db: &Db, what: &str) -> Result<Model, Error> {
    let mut m = Model::new();
    for item in db.iter()? {
        let (k, v) = item?;
        m.insert(k.to_vec(), v.to_vec());
    }
    for (k, v) in &m {
        let got = db.get(k)?;
        assert_eq!(
            got.as_deref(),
            Some(v.as_slice()),
            "{what}: get disagrees with iter"
        );
    }
    for k in [&b"k0"[..], b"k4", b"marker", b"absent"] {
        assert_eq!(
            db.get(k)?.as_deref(),
            m.get(k).map(|v| v.as_slice()),
            "{what}: get {k:?}"
        );
    }
    Ok(m)
}

/// Which prefix of the operations `got` is, if any.
fn prefix_of(got: &Model, states: &[Model]) -> Option<usize> {
    states.iter().position(|s| s == got)
}

struct Image {
    root: tempfile::TempDir,
    dir: PathBuf,
    wal_name: String,
    wal: Vec<u8>,
    frames: Vec<Frame>,
    states: Vec<Model>,
}

/// Writes the operations with `SyncMode::Always` and copies the directory
/// while the `Db` is still open: what a SIGKILL right then would leave.
fn crash_image() -> Image {
    let root = tempfile::tempdir().expect("tempdir");
    let live = root.path().join("live");
    let ops = ops();
    let db = Db::open_with(&live, options()).expect("open");
    for op in &ops {
        match op {
            Op::Put(k, v) => db.put(k, v).expect("put"),
            Op::Batch(entries) => {
                let mut b = WriteBatch::new();
                for (k, v) in entries {
                    match v {
                        Some(v) => b.put(k, v),
                        None => b.delete(k),
                    };
                }
                db.write(b).expect("write batch");
            }
        }
    }
    let dir = root.path().join("image");
    common::copy_dir(&live, &dir);
    drop(db);
    assert!(
        common::files_with_suffix(&dir, ".sst").is_empty(),
        "precondition: with the default memtable size nothing should be flushed yet"
    );
    let wal_path = common::files_with_suffix(&dir, ".log")
        .pop()
        .expect("the crash image has a WAL segment");
    let mut wal = fs::read(&wal_path).expect("read WAL");
    let frames = common::parse_wal_groups(&wal).unwrap_or_else(|| {
        panic!(
            "{} ({} bytes) is not a header and a sequence of commit groups as documented",
            wal_path.display(),
            wal.len()
        )
    });
    assert_eq!(
        frames.len(),
        OPS,
        "one single-threaded write, one commit group: expected {OPS} groups"
    );
    // The live segment still has its zero-filled reservation after the
    // records; the image is the records alone.
    wal.truncate(frames.last().map_or(0, |f| f.end));
    Image {
        root,
        dir,
        wal_name: wal_path
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned(),
        wal,
        frames,
        states: states(&ops),
    }
}

/// A fresh copy of the image with the WAL replaced by `wal`.
fn trial(image: &Image, name: &str, wal: &[u8]) -> PathBuf {
    let dir = image.root.path().join(name);
    if dir.exists() {
        fs::remove_dir_all(&dir).expect("remove old trial");
    }
    common::copy_dir(&image.dir, &dir);
    fs::write(dir.join(&image.wal_name), wal).expect("write damaged WAL");
    dir
}

#[test]
fn truncation_at_every_offset_keeps_the_complete_records() {
    common::count_panics();
    let image = crash_image();
    let len = image.wal.len();
    eprintln!(
        "WAL {} has {len} bytes in {} records",
        image.wal_name,
        image.frames.len()
    );
    std::thread::scope(|s| {
        for worker in 0..WORKERS {
            let image = &image;
            s.spawn(move || {
                for cut in (worker..=len).step_by(WORKERS) {
                    check_cut(image, cut, &format!("trial{worker}"));
                }
            });
        }
    });
}

/// Segments are reserved ahead and zero-filled: a crash during the last,
/// never acknowledged write leaves a torn record followed by zeros, not a
/// short file.
#[test]
fn torn_write_inside_the_reservation_keeps_the_complete_records() {
    common::count_panics();
    let image = crash_image();
    let len = image.wal.len();
    std::thread::scope(|s| {
        for worker in 0..WORKERS {
            let image = &image;
            s.spawn(move || {
                for cut in (worker..=len).step_by(WORKERS) {
                    check_cut_with(image, cut, &format!("reserved{worker}"), RESERVATION);
                }
            });
        }
    });
}

/// The zero-filled reservation after the records in a live segment.
const RESERVATION: usize = 8192;

/// A page of the last write lost while a later page of it reached the disk:
/// a hole of zeros inside the last record, its end intact.
#[test]
fn lost_page_inside_the_last_record_drops_only_it() {
    let image = crash_image();
    let last = image.frames.last().expect("records");
    let complete = image.frames.len() - 1;
    let mut wal = image.wal.clone();
    let hole = last.payload_start + 2..last.end - 3;
    wal[hole.clone()].fill(0);
    wal.extend_from_slice(&[0u8; RESERVATION]);
    let dir = trial(&image, "hole", &wal);
    let db = Db::open_with(&dir, options()).expect("a torn last write must open");
    let got = read_all(&db, "hole").expect("read");
    assert_eq!(
        prefix_of(&got, &image.states),
        Some(complete),
        "zeroing {hole:?} of the last record must drop exactly that record"
    );
}

fn check_cut(image: &Image, cut: usize, trial_name: &str) {
    check_cut_with(image, cut, trial_name, 0);
}

fn check_cut_with(image: &Image, cut: usize, trial_name: &str, zeros: usize) {
    let len = image.wal.len();
    let what = format!("WAL cut at {cut} of {len}, then {zeros} zero bytes");
    let mut wal = image.wal[..cut].to_vec();
    wal.resize(cut + zeros, 0);
    let dir = trial(image, trial_name, &wal);
    let panics = common::panics_so_far();
    // Now and then: a write after recovery, then a reopen, keeps both.
    let extra = cut.is_multiple_of(10) || image.frames.iter().any(|f| f.end == cut);
    let (got, extra_check) = no_panic(&what, || -> Result<_, Error> {
        let db = Db::open_with(&dir, options())?;
        let got = read_all(&db, &what)?;
        if extra {
            db.put(b"after-recovery", b"1")?;
        }
        drop(db);
        let extra_check = if extra {
            let db = Db::open_with(&dir, options())?;
            Some(read_all(&db, &format!("{what}, reopened"))?)
        } else {
            None
        };
        Ok((got, extra_check))
    })
    .unwrap_or_else(|e| panic!("{what}: a torn WAL tail must be cut off, not fail recovery: {e}"));
    assert_eq!(common::panics_so_far(), panics, "{what}: a thread panicked");
    let complete = image.frames.iter().filter(|f| f.end <= cut).count();
    let p = prefix_of(&got, &image.states);
    assert_eq!(
        p,
        Some(complete),
        "{what}: expected exactly the {complete} complete records to survive (recovered {} keys)",
        got.len()
    );
    if let Some(again) = extra_check {
        let mut want = image.states[complete].clone();
        want.insert(b"after-recovery".to_vec(), b"1".to_vec());
        assert_eq!(
            again, want,
            "{what}: a write after recovery or the recovered data was lost on reopen"
        );
    }
}

#[test]
fn zero_filled_tail_is_a_torn_tail() {
    let image = crash_image();
    let mut wal = image.wal.clone();
    wal.extend_from_slice(&[0u8; 4096]);
    let dir = trial(&image, "zeros", &wal);
    let db = Db::open_with(&dir, options())
        .expect("a zero-filled tail (preallocated, never written) must open");
    assert_eq!(
        read_all(&db, "zero tail").expect("read after zero tail"),
        image.states[OPS],
        "all records before the zero tail must survive"
    );
}

/// The image's WAL split into two segments after record `at`: the image's
/// segment keeps records `..at` and the next segment number holds the rest.
/// `lost` of the first segment's last records are zeroed, as if their pages
/// never reached the disk. Returns the trial directory and the second
/// segment's name.
fn split_trial(image: &Image, name: &str, at: usize, lost: usize) -> (PathBuf, String) {
    let cut = image.frames[at].start;
    let mut first = image.wal[..cut].to_vec();
    let keep = image.frames[at - lost].start;
    first[keep..].fill(0);
    let dir = trial(image, name, &first);
    // Each segment starts with a header record.
    let mut rest = image.wal[..image.frames[0].start].to_vec();
    rest.extend_from_slice(&image.wal[cut..]);
    let stem = image.wal_name.trim_end_matches(".log");
    let number: u64 = stem.parse().expect("WAL segments are named NNNNNN.log");
    let second = format!("{:0width$}.log", number + 1, width = stem.len());
    fs::write(dir.join(&second), &rest).expect("write second segment");
    (dir, second)
}

#[test]
fn records_continuing_in_the_next_segment_all_replay() {
    let image = crash_image();
    let (dir, _) = split_trial(&image, "split", OPS / 2, 0);
    let db = Db::open_with(&dir, options()).expect("two contiguous segments must open");
    assert_eq!(
        read_all(&db, "split").expect("read after split"),
        image.states[OPS],
        "every record of both segments must be replayed"
    );
}

/// A segment that is not the last and lost its final records reads like a
/// clean end (zeros), but the next segment's first batch does not continue
/// its sequence numbers: that hole must fail the open, not drop the lost
/// writes while keeping the later ones.
#[test]
fn records_lost_at_the_end_of_an_earlier_segment_are_corruption() {
    common::count_panics();
    let image = crash_image();
    for lost in [1, 3] {
        let what = format!("{lost} records zeroed at the end of the first of two segments");
        let (dir, second) = split_trial(&image, &format!("hole{lost}"), OPS / 2, lost);
        for attempt in ["first", "second"] {
            match no_panic(&what, || {
                Db::open_with(&dir, options()).and_then(|db| read_all(&db, &what))
            }) {
                Err(Error::Corruption { file, reason, .. }) => {
                    assert_eq!(
                        file.file_name().map(|n| n.to_string_lossy().into_owned()),
                        Some(second.clone()),
                        "{what}: the error names the segment where the hole shows ({reason})"
                    );
                    assert!(reason.contains("missing"), "{what}: reason {reason:?}");
                }
                Err(e) => panic!("{what}: {attempt} open: expected Error::Corruption, got {e:?}"),
                Ok(got) => panic!(
                    "{what}: {attempt} open succeeded with {} keys (prefix {:?}): the lost \
                     records were silently skipped",
                    got.len(),
                    prefix_of(&got, &image.states)
                ),
            }
        }
    }
}

fn expect_corruption_naming_wal(dir: &Path, image: &Image, what: &str) {
    for attempt in ["first", "second"] {
        match no_panic(what, || {
            Db::open_with(dir, options()).and_then(|db| read_all(&db, what))
        }) {
            Err(Error::Corruption {
                file,
                offset,
                reason,
            }) => {
                assert_eq!(
                    file.file_name().map(|n| n.to_string_lossy().into_owned()),
                    Some(image.wal_name.clone()),
                    "{what}: the corruption error must name the WAL file, named {} (offset {offset}: {reason})",
                    file.display()
                );
            }
            Err(e) => panic!(
                "{what}: {attempt} open: expected Error::Corruption naming the WAL, got {e:?}"
            ),
            Ok(got) => panic!(
                "{what}: {attempt} open succeeded with {} keys (prefix {:?} of {OPS}): a damaged record \
                 in the middle of the WAL silently dropped acknowledged writes",
                got.len(),
                prefix_of(&got, &image.states)
            ),
        }
    }
}

#[test]
fn bit_flip_in_a_middle_record_is_corruption() {
    common::count_panics();
    let image = crash_image();
    let last = image.frames.len() - 1;
    let header = image.frames[0].payload_start - image.frames[0].start;
    // With a checksummed header every byte of a record is covered; with a
    // plain length field a damaged length can pass for a torn tail.
    let first_strict = if header >= 12 { 0 } else { 4 };
    let mut flips: Vec<(usize, usize)> = Vec::new(); // (frame, offset)
    for (j, f) in image.frames[..last].iter().enumerate() {
        if j == 0 || j == last / 2 || j == last - 1 {
            flips.extend((f.start + first_strict..f.end).map(|o| (j, o)));
        } else {
            flips.extend([
                (j, f.start + first_strict),
                (j, f.payload_start),
                (j, f.end - 1),
            ]);
        }
    }
    for (n, (j, offset)) in flips.into_iter().enumerate() {
        let what = format!(
            "bit {} flipped at WAL offset {offset} (record {j} of {})",
            n % 8,
            last + 1
        );
        let mut wal = image.wal.clone();
        wal[offset] ^= 1 << (n % 8);
        let dir = trial(&image, "flip", &wal);
        let panics = common::panics_so_far();
        expect_corruption_naming_wal(&dir, &image, &what);
        assert_eq!(common::panics_so_far(), panics, "{what}: a thread panicked");
    }
}

#[test]
fn bit_flip_in_the_last_record_drops_only_it() {
    common::count_panics();
    let image = crash_image();
    let f = *image.frames.last().expect("frames");
    for (n, offset) in (f.start..f.end).enumerate() {
        let what = format!("bit {} flipped at WAL offset {offset} (last record)", n % 8);
        let mut wal = image.wal.clone();
        wal[offset] ^= 1 << (n % 8);
        let dir = trial(&image, "flip-last", &wal);
        let panics = common::panics_so_far();
        match no_panic(&what, || {
            Db::open_with(&dir, options()).and_then(|db| read_all(&db, &what))
        }) {
            Ok(got) => assert_eq!(
                prefix_of(&got, &image.states),
                Some(OPS - 1),
                "{what}: only the damaged last record may be dropped ({} keys recovered)",
                got.len()
            ),
            Err(Error::Corruption { .. }) => {}
            Err(e) => panic!("{what}: expected Ok or Error::Corruption, got {e:?}"),
        }
        assert_eq!(common::panics_so_far(), panics, "{what}: a thread panicked");
    }
}
