//! kv-raft log recovery: a directory of segment files and a snapshot file
//! (packed in one input, see `flashkv_fuzz_support::container`), opened by
//! `LogStore::open` as a node's start does.
//!
//! Checks: a recovered log is one contiguous run of entries after its
//! snapshot, with terms that `raft::Storage` reports consistently and a
//! commit index inside it; recovering it again gives the same log; an entry
//! appended after recovery is there after the next recovery.
#![no_main]

use flashkv_fuzz_support::{container, fixup, fresh_dir, raft_file, write_file};
use kv_raft::raft::eraftpb::Entry;
use kv_raft::raft::{GetEntriesContext, Storage};
use kv_raft::{LogStore, Options};
use libfuzzer_sys::fuzz_target;

/// Segments written from one input; later ones are ignored.
const MAX_SEGMENTS: u64 = 4;

fn opts() -> Options {
    Options {
        // fsync changes nothing recovery decides, and would slow the run.
        sync: false,
        segment_bytes: 4096,
        ..Options::default()
    }
}

/// What a recovered store holds, as raft sees it.
#[derive(Debug, PartialEq)]
struct View {
    first: u64,
    last: u64,
    hard_state: kv_raft::raft::eraftpb::HardState,
    conf_state: kv_raft::raft::eraftpb::ConfState,
    entries: Vec<Entry>,
}

fn view(store: &LogStore) -> View {
    let first = store.first_index().expect("first_index");
    let last = store.last_index().expect("last_index");
    assert!(
        first >= 1 && first <= last.saturating_add(1),
        "first {first}, last {last}"
    );
    let entries = store
        .entries(first, last + 1, None, GetEntriesContext::empty(false))
        .expect("the whole log is readable");
    assert_eq!(entries.len() as u64, last + 1 - first);
    for (i, e) in entries.iter().enumerate() {
        assert_eq!(e.index, first + i as u64, "entries are not contiguous");
        assert_eq!(store.term(e.index).expect("term of a stored entry"), e.term);
    }
    let snap_term = store.term(first - 1).expect("term at the snapshot");
    assert_eq!(snap_term, store.snapshot_ref().get_metadata().term);
    let state = store.initial_state().expect("initial_state");
    assert!(state.hard_state.commit <= last, "commit beyond the log");
    View {
        first,
        last,
        hard_state: state.hard_state,
        conf_state: store.latest_conf_state(),
        entries,
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, packed)) = data.split_first() else {
        return;
    };
    let dir = fresh_dir("raft");
    let mut seq = 0u64;
    for (kind, file) in container::decode(packed) {
        let mut bytes = file.to_vec();
        if mode & 1 == 1 {
            fixup::raft_records(&mut bytes);
        }
        if kind & 1 == raft_file::SNAPSHOT {
            write_file(&dir, "snapshot", &bytes);
        } else if seq < MAX_SEGMENTS {
            seq += 1;
            write_file(&dir, &format!("{seq:020}.seg"), &bytes);
        }
    }
    let Ok(store) = LogStore::open(&dir, &opts()) else {
        return;
    };
    let first = view(&store);
    drop(store);

    let mut store = LogStore::open(&dir, &opts()).expect("a recovered log opens again");
    let second = view(&store);
    assert_eq!(second, first, "a second recovery changed the log");

    let Some(next) = first.last.checked_add(1) else {
        return;
    };
    let term = first
        .hard_state
        .term
        .max(first.entries.last().map_or(0, |e| e.term));
    let e = Entry {
        index: next,
        term,
        data: b"appended after recovery".to_vec().into(),
        ..Default::default()
    };
    if store.append(std::slice::from_ref(&e)).is_ok() && store.sync().is_ok() {
        drop(store);
        let store = LogStore::open(&dir, &opts()).expect("the log opens after an append");
        let third = view(&store);
        assert_eq!(third.last, next, "the appended entry was lost");
        assert_eq!(third.entries.last(), Some(&e));
    }
});
