//! Log store recovery: a torn tail at any byte offset of the last segment
//! keeps exactly the complete-record prefix; bit flips elsewhere are errors
//! that name the file, never panics; purge after a snapshot.

use std::fs;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use kv_raft::raft::Storage;
use kv_raft::raft::eraftpb::{ConfState, Entry, HardState};
use kv_raft::{Error, LogStore, Options};

/// fsync is beside the point here (and would make the thousands of
/// reopenings slow).
fn opts() -> Options {
    Options {
        segment_bytes: 4096,
        sync: false,
        ..Options::default()
    }
}

fn entry(index: u64) -> Entry {
    Entry {
        index,
        term: 1 + index / 50,
        data: vec![index as u8; (index % 40) as usize].into(),
        ..Default::default()
    }
}

/// Writes `n` entries, one sync each, with a hard state every few.
fn fill(dir: &Path, n: u64) {
    let mut s = LogStore::open(dir, &opts()).unwrap();
    let cs = ConfState {
        voters: vec![1, 2, 3],
        ..Default::default()
    };
    s.set_conf_state(0, cs).unwrap();
    for i in 1..=n {
        s.append(&[entry(i)]).unwrap();
        if i % 3 == 0 {
            let hs = HardState {
                term: 1 + i / 50,
                commit: i - 1,
                ..Default::default()
            };
            s.set_hard_state(&hs).unwrap();
        }
        s.sync().unwrap();
    }
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    v.sort();
    v
}

/// (end offset, kind) of each record, parsed independently of the crate.
fn records(b: &[u8]) -> Vec<(usize, u8)> {
    let mut v = Vec::new();
    let mut off = 0;
    while off < b.len() {
        let len = u32::from_le_bytes(b[off..off + 4].try_into().unwrap()) as usize;
        let kind = b[off + 4];
        off += 16 + len;
        v.push((off, kind));
    }
    assert_eq!(off, b.len());
    v
}

#[test]
fn torn_tail_at_every_offset_keeps_complete_prefix() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path(), 300);
    let segs = segments(dir.path());
    assert!(segs.len() >= 3, "want several segments, got {}", segs.len());
    let last = segs.last().unwrap().clone();
    let full = fs::read(&last).unwrap();
    let recs = records(&full);
    let before = {
        // Entries in earlier segments: the last segment's entries are the tail.
        let in_last = recs.iter().filter(|r| r.1 == 1).count() as u64;
        300 - in_last
    };
    for cut in 0..=full.len() {
        fs::write(&last, &full[..cut]).unwrap();
        let s = LogStore::open(dir.path(), &opts()).unwrap_or_else(|e| panic!("cut at {cut}: {e}"));
        let complete: Vec<_> = recs.iter().filter(|r| r.0 <= cut).collect();
        let keep = complete.last().map_or(0, |r| r.0);
        let entries = complete.iter().filter(|r| r.1 == 1).count() as u64;
        assert_eq!(s.last_index().unwrap(), before + entries, "cut at {cut}");
        assert_eq!(
            fs::metadata(&last).unwrap().len() as usize,
            keep,
            "cut at {cut}"
        );
        let got = s.entries(
            1,
            before + entries + 1,
            None,
            kv_raft::raft::GetEntriesContext::empty(false),
        );
        assert_eq!(got.unwrap().len() as u64, before + entries);
    }
    // And the store keeps working after a truncation.
    let last_entry = recs.iter().rposition(|r| r.1 == 1).unwrap();
    let cut = recs[last_entry - 1].0 + 5;
    fs::write(&last, &full[..cut]).unwrap();
    let mut s = LogStore::open(dir.path(), &opts()).unwrap();
    assert_eq!(s.last_index().unwrap(), 299);
    s.append(&[entry(300), entry(301)]).unwrap();
    s.sync().unwrap();
    drop(s);
    let s = LogStore::open(dir.path(), &opts()).unwrap();
    assert_eq!(s.last_index().unwrap(), 301);
}

fn open_quietly(dir: &Path) -> std::thread::Result<Result<LogStore, Error>> {
    catch_unwind(AssertUnwindSafe(|| LogStore::open(dir, &opts())))
}

#[test]
fn bit_flips_are_errors_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path(), 150);
    let segs = segments(dir.path());
    assert!(segs.len() >= 2);
    for (n, seg) in segs.iter().enumerate() {
        let orig = fs::read(seg).unwrap();
        let recs = records(&orig);
        // Every byte except the last record of the last segment (whose
        // damage is indistinguishable from a torn write).
        let upto = if n + 1 == segs.len() {
            recs[recs.len() - 2].0
        } else {
            orig.len()
        };
        let name = seg.file_name().unwrap().to_str().unwrap().to_owned();
        // Every header byte, and every fifth payload byte.
        let starts: Vec<usize> = std::iter::once(0).chain(recs.iter().map(|r| r.0)).collect();
        let in_header = |off: usize| starts.iter().any(|&s| off >= s && off < s + 16);
        for off in (0..upto).filter(|&o| o % 5 == 0 || in_header(o)) {
            {
                let bit = (off % 8) as u8;
                let mut b = orig.clone();
                b[off] ^= 1 << bit;
                fs::write(seg, &b).unwrap();
                match open_quietly(dir.path()) {
                    Err(_) => panic!("panic on flip at {name}:{off}"),
                    Ok(Ok(_)) => panic!("flip at {name}:{off} bit {bit} not detected"),
                    Ok(Err(e)) => {
                        let msg = e.to_string();
                        assert!(msg.contains(&name), "error does not name the file: {msg}");
                    }
                }
            }
        }
        fs::write(seg, &orig).unwrap();
    }
    // Untouched again: opens.
    let s = LogStore::open(dir.path(), &opts()).unwrap();
    assert_eq!(s.last_index().unwrap(), 150);
}

#[test]
fn damaged_snapshot_file_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path(), 60);
    {
        let mut s = LogStore::open(dir.path(), &opts()).unwrap();
        s.compact(50, b"state at 50".to_vec()).unwrap();
    }
    let path = dir.path().join("snapshot");
    let orig = fs::read(&path).unwrap();
    for off in (0..orig.len()).step_by(3) {
        let mut b = orig.clone();
        b[off] ^= 0x40;
        fs::write(&path, &b).unwrap();
        match open_quietly(dir.path()) {
            Err(_) => panic!("panic on snapshot flip at {off}"),
            Ok(Ok(_)) => panic!("snapshot flip at {off} not detected"),
            Ok(Err(e)) => assert!(e.to_string().contains("snapshot"), "{e}"),
        }
    }
    fs::write(&path, &orig[..orig.len() / 2]).unwrap();
    assert!(matches!(open_quietly(dir.path()), Ok(Err(_))));
}

#[test]
fn purge_after_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path(), 400);
    let before = segments(dir.path()).len();
    {
        let mut s = LogStore::open(dir.path(), &opts()).unwrap();
        assert!(
            matches!(s.compact(400, Vec::new()), Err(Error::InvalidArgument(_))),
            "beyond commit"
        );
        s.compact(350, b"snap".to_vec()).unwrap();
        assert_eq!(s.first_index().unwrap(), 351);
        assert_eq!(s.term(350).unwrap(), entry(350).term);
        assert!(s.term(349).is_err());
    }
    let after = segments(dir.path()).len();
    assert!(after < before, "segments {before} -> {after}");
    let s = LogStore::open(dir.path(), &opts()).unwrap();
    assert_eq!(s.first_index().unwrap(), 351);
    assert_eq!(s.last_index().unwrap(), 400);
    assert_eq!(s.latest_conf_state().voters, vec![1, 2, 3]);
    let ctx = || kv_raft::raft::GetEntriesContext::empty(false);
    assert!(s.entries(300, 360, None, ctx()).is_err());
    let got = s.entries(351, 401, None, ctx()).unwrap();
    assert_eq!(got.len(), 50);
    assert_eq!(got[0], entry(351));
    assert_eq!(&s.snapshot(0, 2).unwrap().data[..], b"snap");
}

/// Installs a snapshot at (`index`, `term`) on a log of entries `1..=n` and
/// stops before the next sync: the snapshot file is on disk, the snapshot
/// mark that voids the old entries is not (a crash at that point). Then,
/// after one recovery, appends what a leader sends next and syncs it.
fn snapshot_then_crash_then_append(dir: &Path, n: u64, index: u64, term: u64) -> Vec<Entry> {
    fill(dir, n);
    {
        let mut s = LogStore::open(dir, &opts()).unwrap();
        let mut snap = kv_raft::raft::eraftpb::Snapshot::default();
        snap.mut_metadata().index = index;
        snap.mut_metadata().term = term;
        snap.mut_metadata().mut_conf_state().voters = vec![1, 2, 3];
        s.apply_snapshot(snap).unwrap();
        // Dropped unsynced: the buffered mark never reaches the file.
    }
    let mut s = LogStore::open(dir, &opts()).unwrap();
    assert_eq!(s.first_index().unwrap(), index + 1);
    assert_eq!(s.last_index().unwrap(), index);
    let new: Vec<Entry> = (index + 1..=index + 5)
        .map(|i| Entry {
            index: i,
            term,
            data: format!("after the snapshot {i}").into_bytes().into(),
            ..Default::default()
        })
        .collect();
    s.append(&new).unwrap();
    s.set_hard_state(&HardState {
        term,
        commit: index + 3,
        ..Default::default()
    })
    .unwrap();
    s.sync().unwrap();
    new
}

fn assert_log_after_snapshot(dir: &Path, index: u64, want: &[Entry]) {
    let s = LogStore::open(dir, &opts()).expect("the log reopens");
    assert_eq!(s.first_index().unwrap(), index + 1);
    assert_eq!(s.last_index().unwrap(), index + want.len() as u64);
    let ctx = kv_raft::raft::GetEntriesContext::empty(false);
    let got = s
        .entries(index + 1, index + 1 + want.len() as u64, None, ctx)
        .unwrap();
    assert_eq!(got, want, "entries synced after the snapshot were lost");
    assert_eq!(s.hard_state().commit, index + 3);
}

/// The snapshot lies beyond the old log: entries appended after recovery
/// must not look like a gap after the old entries at the next recovery.
#[test]
fn entries_appended_after_an_unmarked_snapshot_beyond_the_log_survive() {
    let dir = tempfile::tempdir().unwrap();
    let new = snapshot_then_crash_then_append(dir.path(), 20, 60, 3);
    assert_log_after_snapshot(dir.path(), 60, &new);
}

/// The snapshot conflicts with the old log at its index: entries appended
/// after recovery must not be voided with the old ones at the next
/// recovery.
#[test]
fn entries_appended_after_an_unmarked_conflicting_snapshot_survive() {
    let dir = tempfile::tempdir().unwrap();
    // Entry 40 (not committed: the log's commit is 38) has term 1; the
    // snapshot says term 5.
    let new = snapshot_then_crash_then_append(dir.path(), 40, 40, 5);
    assert_log_after_snapshot(dir.path(), 40, &new);
}
