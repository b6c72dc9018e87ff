//! The [`Db`] handle: write path with group commit, reads, background flush
//! and compaction, recovery, snapshots and checkpoints.
//!
//! Readers clone an `Arc` of the current [`SuperVersion`] (memtables +
//! table version) and never block writers. One write leader at a time appends
//! a group of batches to the WAL, fsyncs once, inserts them into the memtable
//! and then publishes the new last sequence number, so a reader never sees
//! part of a batch. The manifest mutex serializes changes of the table set.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::fs::File;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::{Condvar, Mutex, RwLock};

use crate::batch::{self, WriteBatch};
use crate::compaction::{self, Compaction};
use crate::error::{Error, IoContext, Result};
use crate::filename::{self, FileKind};
mod background;
mod iter;
mod recovery;
mod snapshot;
mod write;

pub use iter::DbIterator;
use iter::prefix_bounds;
use recovery::{build_table, lock_dir, recover, write_checkpoint};
pub use snapshot::Snapshot;

use crate::iterator::{InternalIterator, LevelIter, MemIter, MergeIter};
use crate::key::{self, InternalKey, Kind, MAX_SEQ};
use crate::manifest::{self, Manifest, VersionEdit};
use crate::memtable::MemTable;
use crate::options::{Options, SyncMode};
use crate::range::{KeyRange, OwnedBounds};
use crate::record;
use crate::sstable::{Table, TableBuilder, TableIter};
use crate::stats::{self, Counters, LevelStats, Stats};
use crate::version::{FileHandle, LookupStats, Version};
use crate::wal::{self, Wal};

/// Everything a reader needs, swapped atomically as a whole.
#[derive(Debug)]
pub(crate) struct SuperVersion {
    mem: Arc<MemTable>,
    /// Frozen memtables, newest first.
    imms: Vec<Arc<MemTable>>,
    version: Arc<Version>,
}

/// A writer waiting in the group-commit queue.
struct Writer {
    batch: WriteBatch,
    /// Freeze the memtable even if it is not full (used by `flush`).
    force_rotate: bool,
    result: Mutex<Option<Result<()>>>,
    /// Set, then the thread unparked, when `result` is set or the writer
    /// reaches the front.
    signalled: AtomicBool,
    thread: std::thread::Thread,
}

/// State only the write leader touches.
struct WalState {
    wal: Wal,
    last_seq: u64,
    buf: Vec<u8>,
    payload: Vec<u8>,
}

struct ManifestState {
    manifest: Manifest,
    number: u64,
    log_number: u64,
}

#[derive(Default)]
struct BgState {
    shutdown: bool,
}

struct Inner {
    dir: PathBuf,
    opts: Options,
    sv: RwLock<Arc<SuperVersion>>,
    queue: Mutex<VecDeque<Arc<Writer>>>,
    /// Queue length when the last group finished (see `Inner::gather`).
    group_peak: AtomicUsize,
    /// Duration of the last WAL fsync, in nanoseconds.
    last_sync_nanos: AtomicU64,
    wal: Mutex<WalState>,
    visible_seq: AtomicU64,
    next_file: AtomicU64,
    manifest: Mutex<ManifestState>,
    compaction_lock: Mutex<()>,
    compact_pointers: Mutex<Vec<Vec<u8>>>,
    bg: Mutex<BgState>,
    bg_cv: Condvar,
    poisoned: AtomicBool,
    poison_reason: Mutex<Option<String>>,
    snapshots: Mutex<BTreeMap<u64, usize>>,
    counters: Counters,
}

/// An open database. `Send + Sync`: share it between threads with `Arc`.
///
/// Dropping it stops the background threads and releases the directory lock;
/// a [`Snapshot`] that outlives it can still be read.
pub struct Db {
    inner: Arc<Inner>,
    threads: Vec<JoinHandle<()>>,
    /// Held (with an OS file lock) until the `Db` is dropped.
    _lock: File,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db")
            .field("dir", &self.inner.dir)
            .finish_non_exhaustive()
    }
}

const MAX_GROUP_BYTES: usize = 4 << 20;
/// Longest a synced write leader waits for writers to join its group.
const MAX_GATHER_WAIT: Duration = Duration::from_millis(1);
/// Longest a queued writer yields before it parks (see `Inner::await_turn`).
const MAX_YIELD_WAIT: Duration = Duration::from_micros(500);
/// A yield that kept a writer off the CPU this long means other threads
/// (compaction, the application) want it: the writer parks instead.
const SLOW_YIELD: Duration = Duration::from_micros(50);
const MANIFEST_ROTATE_BYTES: u64 = 64 << 20;
const STALL_WAIT: Duration = Duration::from_millis(100);

impl Db {
    /// Opens (creating if needed) the database in `dir` with default options.
    ///
    /// # Errors
    ///
    /// [`Error::Locked`] when another process holds the directory,
    /// [`Error::Corruption`] when a file is damaged, I/O errors.
    pub fn open(dir: impl AsRef<Path>) -> Result<Db> {
        Db::open_with(dir, Options::default())
    }

    /// Opens the database in `dir` with `opts`.
    ///
    /// Recovery replays the write-ahead log into a new table (cutting off a
    /// torn tail of the last segment), writes a fresh manifest and removes
    /// files that no longer belong to the database.
    ///
    /// # Errors
    ///
    /// As [`Db::open`], plus [`Error::InvalidArgument`] for bad options.
    pub fn open_with(dir: impl AsRef<Path>, opts: Options) -> Result<Db> {
        opts.validate()?;
        let dir = dir.as_ref().to_path_buf();
        if !dir.exists() {
            if !opts.create_if_missing {
                return Err(Error::InvalidArgument(format!(
                    "database directory {} does not exist",
                    dir.display()
                )));
            }
            std::fs::create_dir_all(&dir).ctx(&dir)?;
        }
        let lock = lock_dir(&dir)?;
        let inner = Arc::new(recover(dir, opts)?);
        let mut threads = Vec::new();
        for (name, f) in [
            ("kv-flush", Inner::flush_loop as fn(&Inner)),
            ("kv-compact", Inner::compaction_loop as fn(&Inner)),
        ] {
            let i = inner.clone();
            let t = std::thread::Builder::new()
                .name(name.into())
                .spawn(move || f(&i))
                .map_err(|e| Error::io(&inner.dir, e))?;
            threads.push(t);
        }
        Ok(Db {
            inner,
            threads,
            _lock: lock,
        })
    }

    /// Sets `key` to `value`.
    ///
    /// # Errors
    ///
    /// I/O errors writing the log (the database is then poisoned),
    /// [`Error::Poisoned`] after an earlier fatal error.
    pub fn put(&self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Result<()> {
        let (key, value) = (key.as_ref(), value.as_ref());
        // kind byte + two varint lengths (at most 10 bytes each).
        let mut b = WriteBatch::with_capacity(key.len() + value.len() + 21);
        b.put(key, value);
        self.write(b)
    }

    /// Removes `key`; removing an absent key is not an error.
    ///
    /// # Errors
    ///
    /// As [`Db::put`].
    pub fn delete(&self, key: impl AsRef<[u8]>) -> Result<()> {
        let mut b = WriteBatch::new();
        b.delete(key);
        self.write(b)
    }

    /// Applies `batch` atomically: readers and crash recovery see all of it
    /// or none of it.
    ///
    /// # Errors
    ///
    /// As [`Db::put`]; [`Error::InvalidArgument`] for a batch too large for
    /// one log record.
    pub fn write(&self, batch: WriteBatch) -> Result<()> {
        if batch.is_empty() {
            return self.inner.check_poison();
        }
        if batch.rep.len() > record::MAX_PAYLOAD - 16 {
            return Err(Error::InvalidArgument(
                "write batch larger than 4 GiB".into(),
            ));
        }
        self.inner.write(batch, false)
    }

    /// The latest value of `key`, or `None` when it is absent or deleted.
    ///
    /// # Errors
    ///
    /// [`Error::Corruption`] when a table read fails its checksum.
    pub fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<Bytes>> {
        let seq = self.inner.read_seq()?;
        self.inner.get_at(key.as_ref(), seq)
    }

    /// Iterates over the keys in `range` in ascending order, as of now.
    ///
    /// ```no_run
    /// # let db = kv_engine::Db::open("d").unwrap();
    /// for item in db.scan(b"a".as_slice()..b"m".as_slice())? {
    ///     let (k, v) = item?;
    /// }
    /// # Ok::<(), kv_engine::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::Corruption`] when positioning the iterator reads a bad block;
    /// later errors come as items.
    pub fn scan(&self, range: impl KeyRange) -> Result<DbIterator> {
        let seq = self.inner.read_seq()?;
        self.inner.scan_at(range.into_bounds(), seq)
    }

    /// Iterates over all keys in ascending order.
    ///
    /// # Errors
    ///
    /// As [`Db::scan`].
    pub fn iter(&self) -> Result<DbIterator> {
        self.scan(..)
    }

    /// Iterates over the keys that start with `prefix`.
    ///
    /// # Errors
    ///
    /// As [`Db::scan`].
    pub fn prefix(&self, prefix: impl AsRef<[u8]>) -> Result<DbIterator> {
        let seq = self.inner.read_seq()?;
        self.inner.scan_at(prefix_bounds(prefix.as_ref()), seq)
    }

    /// A consistent point-in-time view. Compactions keep every version it
    /// can see until it is dropped.
    pub fn snapshot(&self) -> Snapshot {
        let mut snaps = self.inner.snapshots.lock();
        // Taken under the snapshot lock so compaction sees it before relying
        // on the smallest snapshot.
        let seq = self.inner.visible_seq.load(Ordering::Acquire);
        *snaps.entry(seq).or_insert(0) += 1;
        Snapshot {
            inner: self.inner.clone(),
            seq,
        }
    }

    /// Writes the memtable out to a table and waits until every frozen
    /// memtable is flushed. Writes acknowledged before the call are then in
    /// tables.
    ///
    /// # Errors
    ///
    /// I/O errors writing the table or manifest (the database is then
    /// poisoned).
    pub fn flush(&self) -> Result<()> {
        self.inner.write(WriteBatch::new(), true)?;
        self.inner.wait_for(|sv| sv.imms.is_empty())
    }

    /// Flushes, then merges all tables into one sorted run at the deepest
    /// level, dropping overwritten values and tombstones no snapshot needs.
    ///
    /// # Errors
    ///
    /// As [`Db::flush`].
    pub fn compact(&self) -> Result<()> {
        self.flush()?;
        let inner = &self.inner;
        let _guard = inner.compaction_lock.lock();
        let version = inner.sv.read().version.clone();
        if let Some(c) = compaction::full(&version) {
            inner.run_compaction(&c, &version)?;
        }
        Ok(())
    }

    /// Writes a consistent copy of the database to `dir` (which must not
    /// exist), made of hard links to the tables (copies when linking is not
    /// possible) and a fresh manifest. [`Db::open`] opens it.
    ///
    /// It holds every write acknowledged before the call.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] when `dir` exists, I/O errors.
    pub fn checkpoint(&self, dir: impl AsRef<Path>) -> Result<()> {
        let dir = dir.as_ref();
        if dir.exists() {
            return Err(Error::InvalidArgument(format!(
                "checkpoint directory {} already exists",
                dir.display()
            )));
        }
        self.flush()?;
        let version = self.inner.sv.read().version.clone();
        let last_seq = version
            .files()
            .map(|(_, f)| f.meta.max_seq)
            .max()
            .unwrap_or(0);
        let result = write_checkpoint(dir, &version, last_seq);
        if result.is_err() {
            let _ = std::fs::remove_dir_all(dir);
        }
        result
    }

    /// Counters, sizes and the shape of the tree.
    pub fn stats(&self) -> Stats {
        let i = &self.inner;
        let sv = i.sv.read().clone();
        let levels: Vec<LevelStats> = sv
            .version
            .levels
            .iter()
            .map(|l| LevelStats {
                files: l.len(),
                bytes: l.iter().map(|f| f.meta.size).sum(),
            })
            .collect();
        let c = &i.counters;
        Stats {
            sequence: i.visible_seq.load(Ordering::Acquire),
            memtable_bytes: sv.mem.approximate_size() as u64,
            immutable_memtables: sv.imms.len(),
            total_sst_bytes: levels.iter().map(|l| l.bytes).sum(),
            levels,
            writes: stats::get(&c.writes),
            wal_writes: stats::get(&c.wal_writes),
            wal_syncs: stats::get(&c.wal_syncs),
            gets: stats::get(&c.gets),
            bloom_checks: stats::get(&c.bloom_checks),
            bloom_negatives: stats::get(&c.bloom_negatives),
            flushes: stats::get(&c.flushes),
            compactions: stats::get(&c.compactions),
            compaction_bytes_read: stats::get(&c.compaction_bytes_read),
            compaction_bytes_written: stats::get(&c.compaction_bytes_written),
            write_stalls: stats::get(&c.write_stalls),
            write_slowdowns: stats::get(&c.write_slowdowns),
            live_snapshots: i.snapshots.lock().values().sum(),
        }
    }

    /// The directory the database lives in.
    pub fn path(&self) -> &Path {
        &self.inner.dir
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        self.inner.bg.lock().shutdown = true;
        self.inner.bg_cv.notify_all();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        if self.inner.opts.sync == SyncMode::Never && !self.inner.poisoned.load(Ordering::Acquire) {
            let _ = self.inner.wal.lock().wal.sync();
        }
    }
}

impl Inner {
    fn check_poison(&self) -> Result<()> {
        if self.poisoned.load(Ordering::Acquire) {
            let why = self.poison_reason.lock().clone().unwrap_or_default();
            return Err(Error::Poisoned(why));
        }
        Ok(())
    }

    /// Stops the database after a failure that may have left memory and disk
    /// out of step (a failed fsync in particular must never be retried).
    fn poison(&self, e: &Error) {
        let mut r = self.poison_reason.lock();
        if r.is_none() {
            *r = Some(e.to_string());
        }
        self.poisoned.store(true, Ordering::Release);
        drop(r);
        self.notify_bg();
    }

    fn notify_bg(&self) {
        let _g = self.bg.lock();
        self.bg_cv.notify_all();
    }

    /// The sequence number a new read observes, after checking the database
    /// is usable.
    fn read_seq(&self) -> Result<u64> {
        self.check_poison()?;
        Ok(self.visible_seq.load(Ordering::Acquire))
    }

    fn current(&self) -> Arc<SuperVersion> {
        self.sv.read().clone()
    }

    fn get_at(&self, key: &[u8], seq: u64) -> Result<Option<Bytes>> {
        stats::add(&self.counters.gets, 1);
        let sv = self.current();
        let lookup = key::LookupKey::new(key, seq);
        if !sv.mem.is_empty() || !sv.imms.is_empty() {
            let probe = InternalKey::new(Bytes::copy_from_slice(&lookup));
            if let Some(r) = sv.mem.get(&probe) {
                return Ok(r);
            }
            for m in &sv.imms {
                if let Some(r) = m.get(&probe) {
                    return Ok(r);
                }
            }
        }
        let mut ls = LookupStats::default();
        let r = sv.version.get(&lookup, &mut ls);
        stats::add(&self.counters.bloom_checks, ls.bloom_checks);
        stats::add(&self.counters.bloom_negatives, ls.bloom_negatives);
        Ok(r?.flatten())
    }

    fn scan_at(&self, (lower, upper): OwnedBounds, seq: u64) -> Result<DbIterator> {
        let sv = self.current();
        let mut children: Vec<Box<dyn InternalIterator>> = Vec::new();
        children.push(Box::new(MemIter::new(sv.mem.clone())));
        for m in &sv.imms {
            children.push(Box::new(MemIter::new(m.clone())));
        }
        for f in &sv.version.levels[0] {
            children.push(Box::new(TableIter::new(f.table.clone())));
        }
        for level in &sv.version.levels[1..] {
            if !level.is_empty() {
                children.push(Box::new(LevelIter::new(level.clone())));
            }
        }
        let mut it = MergeIter::new(children);
        let mut lower_excluded = None;
        match lower {
            Bound::Included(k) => it.seek(&key::lookup(&k, MAX_SEQ))?,
            Bound::Excluded(k) => {
                it.seek(&key::lookup(&k, MAX_SEQ))?;
                lower_excluded = Some(k);
            }
            Bound::Unbounded => it.seek_to_first()?,
        }
        Ok(DbIterator {
            it,
            seq,
            lower_excluded,
            upper,
            last_key: Vec::new(),
            have_last: false,
            need_advance: false,
            done: false,
        })
    }

    /// Blocks until `done(current)` holds, the database is poisoned, or it
    /// is closing.
    fn wait_for(&self, done: impl Fn(&SuperVersion) -> bool) -> Result<()> {
        let mut g = self.bg.lock();
        loop {
            self.check_poison()?;
            if done(&self.current()) {
                return Ok(());
            }
            if g.shutdown {
                return Err(Error::Poisoned("database is closing".into()));
            }
            self.bg_cv.wait_for(&mut g, STALL_WAIT);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> Options {
        Options {
            memtable_size: 4 << 10,
            target_file_size: 4 << 10,
            level_base_bytes: 16 << 10,
            ..Options::default()
        }
    }

    #[test]
    fn prefix_bounds_carry() {
        assert_eq!(
            prefix_bounds(b"a\xff"),
            (
                Bound::Included(b"a\xff".to_vec()),
                Bound::Excluded(b"b".to_vec())
            )
        );
        assert_eq!(
            prefix_bounds(b"\xff"),
            (Bound::Included(b"\xff".to_vec()), Bound::Unbounded)
        );
    }

    #[test]
    fn flush_compact_reopen_roundtrip() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| Error::io("tmp", e))?;
        {
            let db = Db::open_with(dir.path(), small())?;
            for i in 0..2000u32 {
                db.put(format!("k{i:05}"), format!("v{i}"))?;
            }
            for i in (0..2000u32).step_by(3) {
                db.delete(format!("k{i:05}"))?;
            }
            db.compact()?;
            assert_eq!(db.get("k00001")?.as_deref(), Some(&b"v1"[..]));
            assert_eq!(db.get("k00003")?, None);
            let n = db.iter()?.count();
            assert_eq!(n, 2000 - 667);
        }
        let db = Db::open_with(dir.path(), small())?;
        assert_eq!(db.get("k01999")?.as_deref(), Some(&b"v1999"[..]));
        assert_eq!(db.iter()?.count(), 2000 - 667);
        Ok(())
    }

    #[test]
    fn failed_fsync_poisons() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| Error::io("tmp", e))?;
        let db = Db::open(dir.path())?;
        db.put("a", "1")?;
        temp_env_fail("wal-sync", || {
            assert!(db.put("b", "2").is_err());
        });
        assert!(matches!(db.put("c", "3"), Err(Error::Poisoned(_))));
        assert!(matches!(db.get("a"), Err(Error::Poisoned(_))));
        Ok(())
    }

    fn temp_env_fail(point: &str, f: impl FnOnce()) {
        crate::fault::FAIL_POINT.with(|p| *p.borrow_mut() = Some(point.to_string()));
        f();
        crate::fault::FAIL_POINT.with(|p| *p.borrow_mut() = None);
    }
}
