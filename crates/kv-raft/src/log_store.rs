//! The durable raft log: segment files of CRC-checked records plus one
//! snapshot file, implementing [`raft::Storage`].
//!
//! # Layout of the directory
//!
//! ```text
//! LOCK                      held (flock) while open
//! 00000000000000000001.seg  segment files, oldest first; the last is active
//! snapshot                  the last snapshot (metadata + state machine data)
//! ```
//!
//! Each segment is a sequence of [`crate::record`] frames: entries, hard
//! states, conf states (with the index from which they are in force) and
//! snapshot marks. Writing never rewrites a byte: an entry whose index is at
//! or below the current last index replaces that suffix, and replay does the
//! same. A new segment starts with the current hard state and conf-state
//! history, so that older segments can be deleted once every index they
//! mention is covered by the snapshot.
//!
//! Writes are buffered by [`LogStore::append`], [`LogStore::set_hard_state`]
//! and [`LogStore::set_conf_state`] and reach the disk, with one `fdatasync`,
//! in [`LogStore::sync`]: the driver calls it once per `Ready`.
//!
//! # Recovery
//!
//! A torn tail of the *last* segment (a record cut short, a zero-filled end,
//! or a bad payload checksum on the final record) is truncated away. Any other
//! damage is an [`Error`] naming the file and offset.
//!
//! # Limits
//!
//! Entries since the last snapshot are also kept in memory (that is the
//! index); the driver's snapshot thresholds (entries and bytes) bound them.
//! Snapshots are held in memory whole: a state machine whose state is large
//! keeps it elsewhere and puts a small descriptor here. A record (entry or
//! snapshot) is at most 1 GiB.

use std::cell::Cell;
use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};

use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, StorageError};

use crate::error::{Error, Result};
use crate::options::Options;
use crate::record::{self, Kind, Step};

const SNAPSHOT_FILE: &str = "snapshot";
const SNAPSHOT_TMP: &str = "snapshot.tmp";
/// A compaction's snapshot file while it is written off the driver thread.
const SNAPSHOT_NEXT: &str = "snapshot.next";
const LOCK_FILE: &str = "LOCK";
const SEGMENT_EXT: &str = "seg";

#[derive(Debug)]
struct Segment {
    seq: u64,
    path: PathBuf,
    /// Largest raft index any record of the segment mentions.
    max_index: u64,
}

/// The persisted raft log of one node. See the module docs.
pub struct LogStore {
    dir: PathBuf,
    _lock: File,
    sync: bool,
    observer: Option<std::sync::Arc<dyn crate::Observer>>,
    max_record: usize,
    segment_bytes: u64,
    segments: Vec<Segment>,
    active: File,
    active_len: u64,
    buf: Vec<u8>,
    /// Records were written to the active segment without an fsync.
    unsynced: bool,
    poisoned: bool,
    hard_state: HardState,
    /// Conf states with the index from which each is in force, ascending.
    conf_states: Vec<(u64, ConfState)>,
    snapshot: Snapshot,
    /// Entries `snapshot.index + 1 ..= last_index`.
    entries: VecDeque<Entry>,
    boot_applied: Option<u64>,
    /// Set when raft asked for a snapshot that the stored one cannot serve.
    snapshot_wanted: Cell<bool>,
}

impl std::fmt::Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStore")
            .field("dir", &self.dir)
            .field("segments", &self.segments.len())
            .field("first_index", &self.first())
            .field("last_index", &self.last())
            .field("hard_state", &self.hard_state)
            .finish_non_exhaustive()
    }
}

fn segment_name(seq: u64) -> String {
    format!("{seq:020}.{SEGMENT_EXT}")
}

fn encode_pb(m: &impl protobuf::Message) -> Result<Vec<u8>> {
    encode_pb_within(m, record::MAX_PAYLOAD)
}

/// Encodes `m` for a record of at most `limit` bytes.
fn encode_pb_within(m: &impl protobuf::Message, limit: usize) -> Result<Vec<u8>> {
    let b = m
        .write_to_bytes()
        .map_err(|e| Error::InvalidArgument(format!("protobuf encode: {e}")))?;
    // Recovery rejects larger records as corrupt, so never write one.
    let limit = limit.min(record::MAX_PAYLOAD);
    if b.len() + 8 > limit {
        return Err(Error::InvalidArgument(format!(
            "record of {} bytes exceeds the {limit} byte limit",
            b.len(),
        )));
    }
    Ok(b)
}

fn decode_pb<M: protobuf::Message>(path: &Path, offset: u64, b: &[u8]) -> Result<M> {
    M::parse_from_bytes(b)
        .map_err(|e| Error::corruption(path, offset, format!("bad protobuf: {e}")))
}

fn decode_indexed<'a>(path: &Path, offset: u64, b: &'a [u8]) -> Result<(u64, &'a [u8])> {
    match b.split_first_chunk::<8>() {
        Some((idx, rest)) => Ok((u64::from_le_bytes(*idx), rest)),
        None => Err(Error::corruption(path, offset, "record too short")),
    }
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(dir, e))
}

/// Replay state while reading segments.
#[derive(Default)]
struct Replay {
    hard_state: HardState,
    conf_states: Vec<(u64, ConfState)>,
    run: VecDeque<Entry>,
}

impl Replay {
    fn entry(&mut self, path: &Path, off: u64, e: Entry) -> Result<()> {
        let i = e.index;
        // Raft numbers entries from 1, and the index after the last must
        // exist.
        if i == 0 || i == u64::MAX {
            return Err(Error::corruption(
                path,
                off,
                format!("entry index {i} out of range"),
            ));
        }
        match self.run.front().map(|f| f.index) {
            None => self.run.push_back(e),
            Some(first) => {
                let last = first + self.run.len() as u64 - 1;
                if i >= first && i <= last + 1 {
                    self.run.truncate((i - first) as usize);
                    self.run.push_back(e);
                } else if i < first {
                    self.run.clear();
                    self.run.push_back(e);
                } else {
                    return Err(Error::corruption(
                        path,
                        off,
                        format!("entry {i} leaves a gap after entry {last}"),
                    ));
                }
            }
        }
        Ok(())
    }
}

fn push_conf(history: &mut Vec<(u64, ConfState)>, index: u64, cs: ConfState) {
    while history.last().is_some_and(|(i, _)| *i >= index) {
        history.pop();
    }
    history.push((index, cs));
}

impl LogStore {
    /// Opens (creating if needed) the log store in `dir` and recovers it.
    ///
    /// # Errors
    ///
    /// [`Error::Locked`] if the directory is in use, [`Error::Io`] on I/O
    /// failure, [`Error::Corruption`] / [`Error::ChecksumMismatch`] for damage
    /// other than a torn tail of the last segment.
    pub fn open(dir: impl AsRef<Path>, opts: &Options) -> Result<LogStore> {
        opts.validate()?;
        let dir = dir.as_ref().to_path_buf();
        fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        let lock_path = dir.join(LOCK_FILE);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| Error::io(&lock_path, e))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => return Err(Error::Locked(dir)),
            Err(fs::TryLockError::Error(e)) => return Err(Error::io(&lock_path, e)),
        }
        for stale in [SNAPSHOT_TMP, SNAPSHOT_NEXT] {
            let tmp = dir.join(stale);
            match fs::remove_file(&tmp) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io(&tmp, e)),
            }
        }
        let snapshot = read_snapshot_file(&dir.join(SNAPSHOT_FILE))?;

        let mut seqs = Vec::new();
        for ent in fs::read_dir(&dir).map_err(|e| Error::io(&dir, e))? {
            let ent = ent.map_err(|e| Error::io(&dir, e))?;
            let name = ent.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(stem) = name.strip_suffix(".seg")
                && let Ok(seq) = stem.parse::<u64>()
            {
                seqs.push(seq);
            }
        }
        seqs.sort_unstable();

        let mut replay = Replay::default();
        let mut segments = Vec::with_capacity(seqs.len());
        for (n, &seq) in seqs.iter().enumerate() {
            let path = dir.join(segment_name(seq));
            let is_last = n + 1 == seqs.len();
            let max_index = replay_segment(&path, is_last, &mut replay, opts.sync)?;
            segments.push(Segment {
                seq,
                path,
                max_index,
            });
        }

        let mut store_entries = replay.run;
        let meta = snapshot.get_metadata();
        let (s_index, s_term) = (meta.index, meta.term);
        if s_index == u64::MAX {
            return Err(Error::corruption(
                dir.join(SNAPSHOT_FILE),
                0,
                "snapshot index out of range",
            ));
        }
        // An installed snapshot whose log mark did not reach the disk: the
        // entries from or before its index that do not hold its own entry
        // (a different term there, or a log ending before it) are void.
        // The mark is written below: without it the next replay would take
        // entries appended after the snapshot as continuing the void ones,
        // and void them too or see a gap.
        let unmarked = store_entries.front().is_some_and(|first| {
            s_index >= first.index
                && store_entries
                    .get((s_index - first.index) as usize)
                    .is_none_or(|e| e.term != s_term)
        });
        if unmarked {
            store_entries.clear();
        }
        while store_entries.front().is_some_and(|e| e.index <= s_index) {
            store_entries.pop_front();
        }
        if let Some(first) = store_entries.front().map(|e| e.index)
            && first != s_index + 1
        {
            return Err(Error::corruption(
                &dir,
                0,
                format!("log resumes at entry {first} but the snapshot ends at {s_index}"),
            ));
        }
        let mut conf_states = replay.conf_states;
        if s_index > 0 || snapshot.get_metadata().has_conf_state() {
            conf_states.retain(|(i, _)| *i > s_index);
            conf_states.insert(0, (s_index, meta.get_conf_state().clone()));
        }
        let mut hard_state = replay.hard_state;
        if hard_state.commit < s_index {
            hard_state.commit = s_index;
        }
        if hard_state.term < s_term {
            hard_state.term = s_term;
            hard_state.vote = 0;
        }
        let last = s_index + store_entries.len() as u64;
        if hard_state.commit > last {
            return Err(Error::corruption(
                &dir,
                0,
                format!(
                    "commit index {} beyond last entry {last}",
                    hard_state.commit
                ),
            ));
        }

        if segments.is_empty() {
            let path = dir.join(segment_name(1));
            File::create(&path).map_err(|e| Error::io(&path, e))?;
            if opts.sync {
                sync_dir(&dir)?;
            }
            segments.push(Segment {
                seq: 1,
                path,
                max_index: 0,
            });
        }
        let active_path = &segments[segments.len() - 1].path;
        let active = OpenOptions::new()
            .append(true)
            .open(active_path)
            .map_err(|e| Error::io(active_path, e))?;
        let active_len = active
            .metadata()
            .map_err(|e| Error::io(active_path, e))?
            .len();
        let mut store = LogStore {
            dir,
            _lock: lock,
            sync: opts.sync,
            observer: opts.observer.clone(),
            max_record: opts.max_record_bytes,
            segment_bytes: opts.segment_bytes,
            segments,
            active,
            active_len,
            buf: Vec::new(),
            unsynced: false,
            poisoned: false,
            hard_state,
            conf_states,
            snapshot,
            entries: store_entries,
            boot_applied: None,
            snapshot_wanted: Cell::new(false),
        };
        if unmarked {
            store.mark_snapshot(s_index, s_term);
            store.sync()?;
        }
        Ok(store)
    }

    /// Buffers the record that voids the entries before it at replay.
    fn mark_snapshot(&mut self, index: u64, term: u64) {
        let mut b = index.to_le_bytes().to_vec();
        b.extend_from_slice(&term.to_le_bytes());
        record::encode(&mut self.buf, Kind::SnapshotMark, &b);
        self.note_index(index);
    }

    /// The directory of the store.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// True for a store that has never been written to.
    #[must_use]
    pub fn is_fresh(&self) -> bool {
        self.conf_states.is_empty()
            && self.entries.is_empty()
            && self.hard_state == HardState::default()
            && self.snapshot.get_metadata().index == 0
    }

    /// Index and term of the snapshot a new cluster starts from.
    pub const BOOTSTRAP_INDEX: u64 = 1;

    /// Starts the log of a node of a new cluster: a snapshot at index 1,
    /// term 1, holding the initial membership and `data`, the state machine's
    /// empty state. Every founding node bootstraps alike; a node that joins
    /// later starts empty and receives this (or a later) snapshot first, and
    /// so learns the founding membership.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] if the store is not fresh; I/O errors.
    pub fn bootstrap(&mut self, conf_state: ConfState, data: Vec<u8>) -> Result<()> {
        if !self.is_fresh() {
            return Err(Error::InvalidArgument("log store is not fresh".into()));
        }
        let index = Self::BOOTSTRAP_INDEX;
        let mut snap = Snapshot::default();
        let meta = snap.mut_metadata();
        meta.index = index;
        meta.term = 1;
        meta.set_conf_state(conf_state.clone());
        snap.data = data.into();
        if let Err(e) = write_snapshot_file(&self.dir, &snap, self.sync, self.max_record) {
            self.poisoned = true;
            return Err(e);
        }
        self.snapshot = snap;
        self.conf_states = vec![(index, conf_state)];
        let hs = HardState {
            term: 1,
            commit: index,
            ..Default::default()
        };
        self.set_hard_state(&hs)?;
        self.sync()
    }

    /// The hard state as last set (durable after the next [`LogStore::sync`]).
    #[must_use]
    pub fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    /// The last snapshot (index 0 when there is none).
    #[must_use]
    pub fn snapshot_ref(&self) -> &Snapshot {
        &self.snapshot
    }

    /// The conf state in force at `index` (the last one recorded at or
    /// before it).
    #[must_use]
    pub fn conf_state_at(&self, index: u64) -> ConfState {
        self.conf_states
            .iter()
            .rev()
            .find(|(i, _)| *i <= index)
            .map(|(_, cs)| cs.clone())
            .unwrap_or_default()
    }

    /// The most recent conf state recorded.
    #[must_use]
    pub fn latest_conf_state(&self) -> ConfState {
        self.conf_state_at(u64::MAX)
    }

    /// Makes [`raft::Storage::initial_state`] report the conf state in force at
    /// `applied`, the state machine's applied index, so that raft re-applies
    /// the configuration changes after it.
    pub fn set_boot_applied(&mut self, applied: u64) {
        self.boot_applied = Some(applied);
    }

    /// True (once) when raft asked for a snapshot that the stored one could
    /// not serve: it is older than requested, or it predates the
    /// configuration that added the peer it is for (which would refuse it).
    /// The owner should then take a fresh one.
    pub fn take_snapshot_wanted(&self) -> bool {
        self.snapshot_wanted.replace(false)
    }

    /// Number of segment files.
    #[must_use]
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    fn first(&self) -> u64 {
        self.snapshot.get_metadata().index + 1
    }

    fn last(&self) -> u64 {
        self.snapshot.get_metadata().index + self.entries.len() as u64
    }

    fn check(&self) -> Result<()> {
        if self.poisoned {
            Err(Error::Poisoned)
        } else {
            Ok(())
        }
    }

    fn note_index(&mut self, index: u64) {
        if let Some(seg) = self.segments.last_mut() {
            seg.max_index = seg.max_index.max(index);
        }
    }

    /// Appends entries, replacing any suffix of the log from the first new
    /// index on. Durable after [`LogStore::sync`].
    ///
    /// # Errors
    ///
    /// [`Error::Poisoned`]; [`Error::InvalidArgument`] if the entries are not
    /// contiguous or start below the first index or after `last + 1`.
    pub fn append(&mut self, ents: &[Entry]) -> Result<()> {
        self.check()?;
        let Some(first_new) = ents.first().map(|e| e.index) else {
            return Ok(());
        };
        if first_new < self.first() || first_new > self.last() + 1 {
            return Err(Error::InvalidArgument(format!(
                "append at {first_new} outside [{}, {}]",
                self.first(),
                self.last() + 1
            )));
        }
        if ents.windows(2).any(|w| w[1].index != w[0].index + 1) {
            return Err(Error::InvalidArgument("entries are not contiguous".into()));
        }
        for e in ents {
            let b = encode_pb_within(e, self.max_record)?;
            record::encode(&mut self.buf, Kind::Entry, &b);
        }
        self.entries.truncate((first_new - self.first()) as usize);
        self.entries.extend(ents.iter().cloned());
        self.note_index(self.last());
        Ok(())
    }

    /// Sets the hard state. Durable after [`LogStore::sync`].
    ///
    /// # Errors
    ///
    /// [`Error::Poisoned`].
    pub fn set_hard_state(&mut self, hs: &HardState) -> Result<()> {
        self.check()?;
        let b = encode_pb(hs)?;
        record::encode(&mut self.buf, Kind::HardState, &b);
        self.hard_state = hs.clone();
        Ok(())
    }

    /// Records the conf state in force from `index` on (the index of the
    /// configuration-change entry). Durable after [`LogStore::sync`].
    ///
    /// # Errors
    ///
    /// [`Error::Poisoned`].
    pub fn set_conf_state(&mut self, index: u64, cs: ConfState) -> Result<()> {
        self.check()?;
        let mut b = index.to_le_bytes().to_vec();
        b.extend_from_slice(&encode_pb(&cs)?);
        record::encode(&mut self.buf, Kind::ConfState, &b);
        push_conf(&mut self.conf_states, index, cs);
        self.note_index(index);
        Ok(())
    }

    /// Writes everything buffered and makes it durable with one fsync; starts
    /// a new segment when the active one is full.
    ///
    /// # Errors
    ///
    /// I/O errors; after one the store is poisoned.
    pub fn sync(&mut self) -> Result<()> {
        self.check()?;
        if self.buf.is_empty() && !self.unsynced {
            return Ok(());
        }
        let r = self.write_buf();
        if r.is_err() {
            self.poisoned = true;
        }
        r?;
        if self.active_len >= self.segment_bytes {
            let r = self.rotate();
            if r.is_err() {
                self.poisoned = true;
            }
            r?;
        }
        Ok(())
    }

    /// Writes everything buffered without making it durable: for records
    /// whose loss a crash may cost, such as a hard state that only moved
    /// `commit` (raft-rs' `must_sync` is false for it; the commit index is
    /// learned again from the leader, and recovery raises it to the applied
    /// index). The next [`LogStore::sync`] makes them durable with the rest;
    /// a segment is only rotated by `sync`, after its fsync, so no segment
    /// but the last can end in an unsynced record.
    ///
    /// # Errors
    ///
    /// I/O errors; after one the store is poisoned.
    pub fn write_unsynced(&mut self) -> Result<()> {
        self.check()?;
        if self.buf.is_empty() {
            return Ok(());
        }
        let path = self.active_path();
        let r = self.active.write_all(&self.buf);
        if let Err(e) = r {
            self.poisoned = true;
            return Err(Error::io(&path, e));
        }
        self.active_len += self.buf.len() as u64;
        self.buf.clear();
        self.unsynced = true;
        Ok(())
    }

    fn active_path(&self) -> PathBuf {
        self.segments
            .last()
            .map(|s| s.path.clone())
            .unwrap_or_else(|| self.dir.clone())
    }

    fn write_buf(&mut self) -> Result<()> {
        let path = self.active_path();
        self.active
            .write_all(&self.buf)
            .map_err(|e| Error::io(&path, e))?;
        if self.sync {
            let started = std::time::Instant::now();
            self.active.sync_data().map_err(|e| Error::io(&path, e))?;
            if let Some(o) = &self.observer {
                o.log_synced(started.elapsed());
            }
        }
        self.unsynced = false;
        self.active_len += self.buf.len() as u64;
        self.buf.clear();
        Ok(())
    }

    fn rotate(&mut self) -> Result<()> {
        let seq = self.segments.last().map_or(1, |s| s.seq + 1);
        let path = self.dir.join(segment_name(seq));
        let mut head = Vec::new();
        record::encode(&mut head, Kind::HardState, &encode_pb(&self.hard_state)?);
        let mut max_index = 0;
        for (i, cs) in &self.conf_states {
            let mut b = i.to_le_bytes().to_vec();
            b.extend_from_slice(&encode_pb(cs)?);
            record::encode(&mut head, Kind::ConfState, &b);
            max_index = max_index.max(*i);
        }
        let mut f = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        f.write_all(&head).map_err(|e| Error::io(&path, e))?;
        if self.sync {
            f.sync_data().map_err(|e| Error::io(&path, e))?;
            sync_dir(&self.dir)?;
        }
        self.active = f;
        self.active_len = head.len() as u64;
        self.segments.push(Segment {
            seq,
            path,
            max_index,
        });
        Ok(())
    }

    /// Installs a snapshot received from the leader: the snapshot file is
    /// replaced atomically, and log entries that do not extend it are
    /// discarded (a mark recording this is durable after the next
    /// [`LogStore::sync`]).
    ///
    /// # Errors
    ///
    /// I/O errors (the store is then poisoned).
    pub fn apply_snapshot(&mut self, snap: Snapshot) -> Result<()> {
        self.check()?;
        let meta = snap.get_metadata().clone();
        if meta.index <= self.snapshot.get_metadata().index {
            return Ok(());
        }
        if let Err(e) = write_snapshot_file(&self.dir, &snap, self.sync, self.max_record) {
            self.poisoned = true;
            return Err(e);
        }
        let keep = meta.index <= self.last()
            && meta.index >= self.first()
            && self
                .entries
                .get((meta.index - self.first()) as usize)
                .is_some_and(|e| e.term == meta.term);
        if keep {
            let n = (meta.index - self.first() + 1) as usize;
            self.entries.drain(..n);
        } else {
            self.entries.clear();
            self.mark_snapshot(meta.index, meta.term);
        }
        self.conf_states.retain(|(i, _)| *i > meta.index);
        self.conf_states
            .insert(0, (meta.index, meta.get_conf_state().clone()));
        self.snapshot = snap;
        self.purge()
    }

    /// Takes a snapshot at `index` (which must be applied, so committed and
    /// durable) with the state machine's `data`, and drops the log up to it:
    /// whole segments below it are deleted. The same as
    /// [`LogStore::prepare_compact`], [`PendingCompact::write`] and
    /// [`LogStore::finish_compact`] in a row.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] if `index` is not in the log or beyond the
    /// commit index; I/O errors.
    pub fn compact(&mut self, index: u64, data: Vec<u8>) -> Result<()> {
        let pending = self.prepare_compact(index)?;
        match pending.write(data) {
            Ok(written) => self.finish_compact(written).map(drop),
            Err(e) => {
                self.poisoned = true;
                Err(e)
            }
        }
    }

    /// The first step of a compaction at `index` (which must be applied, so
    /// committed and durable): its metadata. The snapshot file is then
    /// written by [`PendingCompact::write`], which may run on another thread
    /// since it does not touch the store, and installed by
    /// [`LogStore::finish_compact`].
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] if `index` is not in the log or beyond the
    /// commit index; [`Error::Poisoned`].
    pub fn prepare_compact(&self, index: u64) -> Result<PendingCompact> {
        self.check()?;
        if index < self.first() || index > self.last() || index > self.hard_state.commit {
            return Err(Error::InvalidArgument(format!(
                "cannot snapshot at {index}: log holds [{}, {}], commit {}",
                self.first(),
                self.last(),
                self.hard_state.commit
            )));
        }
        let term = self
            .entries
            .get((index - self.first()) as usize)
            .map_or(0, |e| e.term);
        let mut meta = SnapshotMetadata {
            index,
            term,
            ..Default::default()
        };
        meta.set_conf_state(self.conf_state_at(index));
        Ok(PendingCompact {
            dir: self.dir.clone(),
            sync: self.sync,
            max_record: self.max_record,
            meta,
        })
    }

    /// Makes a snapshot written by [`PendingCompact::write`] the store's
    /// snapshot and drops the log up to it; returns false (and deletes the
    /// file) when a snapshot at least as recent was installed meanwhile.
    ///
    /// # Errors
    ///
    /// I/O errors (which poison the store).
    pub fn finish_compact(&mut self, written: WrittenCompact) -> Result<bool> {
        self.check()?;
        let WrittenCompact { snap, tmp } = written;
        let index = snap.get_metadata().index;
        if index <= self.snapshot.get_metadata().index || index > self.last() {
            let _ = fs::remove_file(&tmp);
            return Ok(false);
        }
        let dst = self.dir.join(SNAPSHOT_FILE);
        let installed = fs::rename(&tmp, &dst)
            .map_err(|e| Error::io(&dst, e))
            .and_then(|()| {
                if self.sync {
                    sync_dir(&self.dir)
                } else {
                    Ok(())
                }
            });
        if let Err(e) = installed {
            self.poisoned = true;
            return Err(e);
        }
        let n = (index - self.first() + 1) as usize;
        self.entries.drain(..n);
        self.conf_states.retain(|(i, _)| *i > index);
        self.conf_states
            .insert(0, (index, snap.get_metadata().get_conf_state().clone()));
        self.snapshot = snap;
        self.purge()?;
        Ok(true)
    }

    /// Deletes the oldest segments while every index they mention is covered
    /// by the snapshot. The active segment is never deleted.
    fn purge(&mut self) -> Result<()> {
        let s = self.snapshot.get_metadata().index;
        let mut removed = false;
        while self.segments.len() > 1 && self.segments[0].max_index <= s {
            let seg = self.segments.remove(0);
            fs::remove_file(&seg.path).map_err(|e| Error::io(&seg.path, e))?;
            removed = true;
        }
        if removed && self.sync {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }
}

fn read_snapshot_file(path: &Path) -> Result<Snapshot> {
    let buf = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Snapshot::default()),
        Err(e) => return Err(Error::io(path, e)),
    };
    match record::read(&buf, 0) {
        Step::Record {
            kind: Kind::Snapshot,
            payload,
            next,
        } if next == buf.len() => decode_pb(path, 0, payload),
        Step::BadData { expected, got, .. } => Err(Error::ChecksumMismatch {
            path: path.to_path_buf(),
            offset: 0,
            expected,
            got,
        }),
        Step::BadHeader(why) => Err(Error::corruption(path, 0, why)),
        _ => Err(Error::corruption(path, 0, "not a complete snapshot record")),
    }
}

/// A compaction whose snapshot file is yet to be written; see
/// [`LogStore::prepare_compact`].
#[derive(Debug)]
pub struct PendingCompact {
    dir: PathBuf,
    sync: bool,
    max_record: usize,
    meta: SnapshotMetadata,
}

/// A compaction's snapshot file, written and synced, not yet installed.
#[derive(Debug)]
pub struct WrittenCompact {
    snap: Snapshot,
    tmp: PathBuf,
}

impl PendingCompact {
    /// The index the snapshot is taken at.
    #[must_use]
    pub fn index(&self) -> u64 {
        self.meta.index
    }

    /// Writes (and syncs) the snapshot file holding `data`, beside the
    /// installed one.
    ///
    /// # Errors
    ///
    /// I/O errors; the installed snapshot is untouched.
    pub fn write(self, data: Vec<u8>) -> Result<WrittenCompact> {
        let mut snap = Snapshot::default();
        snap.set_metadata(self.meta);
        snap.data = data.into();
        let tmp = self.dir.join(SNAPSHOT_NEXT);
        write_file(&tmp, &snap, self.sync, self.max_record)?;
        Ok(WrittenCompact { snap, tmp })
    }
}

fn write_file(path: &Path, snap: &Snapshot, sync: bool, max_record: usize) -> Result<()> {
    let mut buf = Vec::new();
    record::encode(
        &mut buf,
        Kind::Snapshot,
        &encode_pb_within(snap, max_record)?,
    );
    let mut f = File::create(path).map_err(|e| Error::io(path, e))?;
    f.write_all(&buf).map_err(|e| Error::io(path, e))?;
    if sync {
        f.sync_all().map_err(|e| Error::io(path, e))?;
    }
    Ok(())
}

fn write_snapshot_file(dir: &Path, snap: &Snapshot, sync: bool, max_record: usize) -> Result<()> {
    let tmp = dir.join(SNAPSHOT_TMP);
    let dst = dir.join(SNAPSHOT_FILE);
    write_file(&tmp, snap, sync, max_record)?;
    fs::rename(&tmp, &dst).map_err(|e| Error::io(&dst, e))?;
    if sync {
        sync_dir(dir)?;
    }
    Ok(())
}

/// Replays one segment into `replay`; returns the largest index it mentions.
/// Truncates a torn tail when `is_last`.
fn replay_segment(path: &Path, is_last: bool, replay: &mut Replay, sync: bool) -> Result<u64> {
    let buf = fs::read(path).map_err(|e| Error::io(path, e))?;
    let mut off = 0usize;
    let mut max_index = 0u64;
    loop {
        let at = off as u64;
        match record::read(&buf, off) {
            Step::End => break,
            Step::Record {
                kind,
                payload,
                next,
            } => {
                match kind {
                    Kind::Entry => {
                        let e: Entry = decode_pb(path, at, payload)?;
                        max_index = max_index.max(e.index);
                        replay.entry(path, at, e)?;
                    }
                    Kind::HardState => replay.hard_state = decode_pb(path, at, payload)?,
                    Kind::ConfState => {
                        let (index, rest) = decode_indexed(path, at, payload)?;
                        let cs = decode_pb(path, at, rest)?;
                        max_index = max_index.max(index);
                        push_conf(&mut replay.conf_states, index, cs);
                    }
                    Kind::SnapshotMark => {
                        let (index, _) = decode_indexed(path, at, payload)?;
                        max_index = max_index.max(index);
                        replay.run.clear();
                    }
                    Kind::Snapshot => {
                        return Err(Error::corruption(path, at, "snapshot record in a segment"));
                    }
                }
                off = next;
            }
            Step::Incomplete | Step::BadData { is_final: true, .. } if is_last => {
                truncate(path, at, sync)?;
                break;
            }
            Step::Incomplete => {
                return Err(Error::corruption(
                    path,
                    at,
                    "incomplete record in a sealed segment",
                ));
            }
            Step::BadData { expected, got, .. } => {
                return Err(Error::ChecksumMismatch {
                    path: path.to_path_buf(),
                    offset: at,
                    expected,
                    got,
                });
            }
            Step::BadHeader(why) => return Err(Error::corruption(path, at, why)),
        }
    }
    Ok(max_index)
}

fn truncate(path: &Path, len: u64, sync: bool) -> Result<()> {
    let f = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| Error::io(path, e))?;
    f.set_len(len).map_err(|e| Error::io(path, e))?;
    if sync {
        f.sync_all().map_err(|e| Error::io(path, e))?;
    }
    Ok(())
}

fn store_err(e: Error) -> raft::Error {
    raft::Error::Store(StorageError::Other(Box::new(e)))
}

impl raft::Storage for LogStore {
    fn initial_state(&self) -> raft::Result<RaftState> {
        if self.poisoned {
            return Err(store_err(Error::Poisoned));
        }
        let cs = self.conf_state_at(self.boot_applied.unwrap_or(u64::MAX));
        Ok(RaftState::new(self.hard_state.clone(), cs))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low < self.first() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > self.last() + 1 || low > high {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let from = (low - self.first()) as usize;
        let to = (high - self.first()) as usize;
        let mut v: Vec<Entry> = self.entries.range(from..to).cloned().collect();
        raft::util::limit_size(&mut v, max_size.into());
        Ok(v)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        let meta = self.snapshot.get_metadata();
        if idx == meta.index {
            return Ok(meta.term);
        }
        if idx < meta.index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        self.entries
            .get((idx - self.first()) as usize)
            .map(|e| e.term)
            .ok_or(raft::Error::Store(StorageError::Unavailable))
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.first())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last())
    }

    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        let meta = self.snapshot.get_metadata();
        let cs = meta.get_conf_state();
        let knows_peer = [
            &cs.voters,
            &cs.learners,
            &cs.voters_outgoing,
            &cs.learners_next,
        ]
        .iter()
        .any(|ids| ids.contains(&to));
        if meta.index < request_index || !knows_peer {
            self.snapshot_wanted.set(true);
            return Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        Ok(self.snapshot.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::Storage;

    fn ent(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            data: format!("e{index}").into_bytes().into(),
            ..Default::default()
        }
    }

    fn opts() -> Options {
        Options {
            segment_bytes: 4096,
            ..Options::default()
        }
    }

    #[test]
    fn append_truncate_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s = LogStore::open(dir.path(), &opts()).unwrap();
            assert!(s.is_fresh());
            s.append(&(1..=10).map(|i| ent(i, 1)).collect::<Vec<_>>())
                .unwrap();
            s.append(&[ent(6, 2), ent(7, 2)]).unwrap();
            let hs = HardState {
                term: 2,
                commit: 5,
                ..Default::default()
            };
            s.set_hard_state(&hs).unwrap();
            s.sync().unwrap();
            assert_eq!(s.last_index().unwrap(), 7);
        }
        let s = LogStore::open(dir.path(), &opts()).unwrap();
        assert_eq!(s.last_index().unwrap(), 7);
        assert_eq!(s.term(6).unwrap(), 2);
        assert_eq!(s.term(5).unwrap(), 1);
        assert_eq!(s.hard_state().commit, 5);
    }

    #[test]
    fn a_commit_written_unsynced_is_kept_or_lost_whole() {
        let dir = tempfile::tempdir().unwrap();
        let seg;
        let synced_len;
        {
            let mut s = LogStore::open(dir.path(), &opts()).unwrap();
            s.append(&(1..=5).map(|i| ent(i, 1)).collect::<Vec<_>>())
                .unwrap();
            let mut hs = HardState {
                term: 1,
                commit: 2,
                ..Default::default()
            };
            s.set_hard_state(&hs).unwrap();
            s.sync().unwrap();
            seg = s.segments.last().unwrap().path.clone();
            synced_len = std::fs::metadata(&seg).unwrap().len();
            hs.commit = 5;
            s.set_hard_state(&hs).unwrap();
            s.write_unsynced().unwrap();
            // Dropped without a sync: a process crash after the write.
        }
        {
            let s = LogStore::open(dir.path(), &opts()).unwrap();
            assert_eq!(s.hard_state().commit, 5, "the written record is read back");
        }
        // Power lost before the record reached the disk: the file ends where
        // it was synced, and the store opens with the older commit.
        let f = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
        f.set_len(synced_len).unwrap();
        drop(f);
        let mut s = LogStore::open(dir.path(), &opts()).unwrap();
        assert_eq!(s.hard_state().commit, 2);
        assert_eq!(s.last_index().unwrap(), 5);
        // And a sync after unsynced writes makes them durable even when
        // nothing is buffered any more.
        let hs = HardState {
            term: 1,
            commit: 4,
            ..Default::default()
        };
        s.set_hard_state(&hs).unwrap();
        s.write_unsynced().unwrap();
        assert!(s.unsynced);
        s.sync().unwrap();
        assert!(!s.unsynced);
    }

    #[test]
    fn second_open_is_locked() {
        let dir = tempfile::tempdir().unwrap();
        let _a = LogStore::open(dir.path(), &opts()).unwrap();
        assert!(matches!(
            LogStore::open(dir.path(), &opts()),
            Err(Error::Locked(_))
        ));
    }

    #[test]
    fn installed_snapshot_discards_log() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s = LogStore::open(dir.path(), &opts()).unwrap();
            s.append(&(1..=5).map(|i| ent(i, 1)).collect::<Vec<_>>())
                .unwrap();
            s.sync().unwrap();
            let mut snap = Snapshot::default();
            snap.mut_metadata().index = 20;
            snap.mut_metadata().term = 3;
            snap.mut_metadata().mut_conf_state().voters = vec![1, 2, 3];
            snap.data = b"state".to_vec().into();
            s.apply_snapshot(snap).unwrap();
            let hs = HardState {
                term: 3,
                commit: 20,
                ..Default::default()
            };
            s.set_hard_state(&hs).unwrap();
            s.append(&[ent(21, 3)]).unwrap();
            s.sync().unwrap();
        }
        let s = LogStore::open(dir.path(), &opts()).unwrap();
        assert_eq!(s.first_index().unwrap(), 21);
        assert_eq!(s.last_index().unwrap(), 21);
        assert_eq!(s.term(20).unwrap(), 3);
        assert_eq!(s.latest_conf_state().voters, vec![1, 2, 3]);
        assert_eq!(&s.snapshot(0, 2).unwrap().data[..], b"state");
    }
}
