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
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::{Condvar, Mutex, RwLock};

use crate::batch::{self, WriteBatch};
use crate::compaction::{self, Compaction};
use crate::error::{Error, IoContext, Result};
use crate::filename::{self, FileKind};
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
    /// Held (with an OS file lock) for the life of the database.
    _lock: File,
    sv: RwLock<Arc<SuperVersion>>,
    queue: Mutex<VecDeque<Arc<Writer>>>,
    queue_cv: Condvar,
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
/// Dropping it stops the background threads and releases the directory lock
/// (once the last [`Snapshot`] of it is gone too).
pub struct Db {
    inner: Arc<Inner>,
    threads: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db")
            .field("dir", &self.inner.dir)
            .finish_non_exhaustive()
    }
}

const MAX_GROUP_BYTES: usize = 4 << 20;
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
        let inner = Arc::new(recover(dir, opts, lock)?);
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
        Ok(Db { inner, threads })
    }

    /// Sets `key` to `value`.
    ///
    /// # Errors
    ///
    /// I/O errors writing the log (the database is then poisoned),
    /// [`Error::Poisoned`] after an earlier fatal error.
    pub fn put(&self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Result<()> {
        let mut b = WriteBatch::new();
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
        self.inner.check_poison()?;
        let seq = self.inner.visible_seq.load(Ordering::Acquire);
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
        self.inner.check_poison()?;
        let seq = self.inner.visible_seq.load(Ordering::Acquire);
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
        self.inner.check_poison()?;
        let seq = self.inner.visible_seq.load(Ordering::Acquire);
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

/// A consistent read-only view of the database as of the moment it was taken.
pub struct Snapshot {
    inner: Arc<Inner>,
    seq: u64,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot").field("seq", &self.seq).finish()
    }
}

impl Snapshot {
    /// The value `key` had when the snapshot was taken.
    ///
    /// # Errors
    ///
    /// As [`Db::get`].
    pub fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<Bytes>> {
        self.inner.check_poison()?;
        self.inner.get_at(key.as_ref(), self.seq)
    }

    /// Iterates over `range` as it was when the snapshot was taken.
    ///
    /// # Errors
    ///
    /// As [`Db::scan`].
    pub fn scan(&self, range: impl KeyRange) -> Result<DbIterator> {
        self.inner.check_poison()?;
        self.inner.scan_at(range.into_bounds(), self.seq)
    }

    /// Iterates over all keys as they were when the snapshot was taken.
    ///
    /// # Errors
    ///
    /// As [`Db::scan`].
    pub fn iter(&self) -> Result<DbIterator> {
        self.scan(..)
    }

    /// The sequence number the snapshot reads at.
    pub fn sequence(&self) -> u64 {
        self.seq
    }
}

impl Drop for Snapshot {
    fn drop(&mut self) {
        let mut snaps = self.inner.snapshots.lock();
        if let Some(n) = snaps.get_mut(&self.seq) {
            *n -= 1;
            if *n == 0 {
                snaps.remove(&self.seq);
            }
        }
    }
}

/// `[prefix, next prefix)`; unbounded above when the prefix is all 0xff.
fn prefix_bounds(prefix: &[u8]) -> OwnedBounds {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return (Bound::Included(prefix.to_vec()), Bound::Excluded(end));
        }
    }
    (Bound::Included(prefix.to_vec()), Bound::Unbounded)
}

/// Iterator over `(key, value)` pairs in ascending key order, from
/// [`Db::scan`] or [`Snapshot::scan`]. It reads a fixed point in time and
/// keeps the tables it needs alive.
pub struct DbIterator {
    it: MergeIter,
    seq: u64,
    lower_excluded: Option<Vec<u8>>,
    upper: Bound<Vec<u8>>,
    last_key: Vec<u8>,
    have_last: bool,
    need_advance: bool,
    done: bool,
}

impl std::fmt::Debug for DbIterator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DbIterator")
            .field("seq", &self.seq)
            .finish_non_exhaustive()
    }
}

impl Iterator for DbIterator {
    type Item = Result<(Bytes, Bytes)>;

    fn next(&mut self) -> Option<Self::Item> {
        while !self.done {
            if self.need_advance
                && let Err(e) = self.it.next()
            {
                self.done = true;
                return Some(Err(e));
            }
            self.need_advance = true;
            if !self.it.valid() {
                self.done = true;
                return None;
            }
            let Some((uk, seq, kind)) = key::parse(self.it.key()) else {
                self.done = true;
                return Some(Err(Error::corruption(
                    "<table>",
                    0,
                    "malformed internal key",
                )));
            };
            if seq > self.seq || (self.have_last && uk == self.last_key.as_slice()) {
                continue;
            }
            self.last_key.clear();
            self.last_key.extend_from_slice(uk);
            self.have_last = true;
            let beyond = match &self.upper {
                Bound::Included(u) => uk > u.as_slice(),
                Bound::Excluded(u) => uk >= u.as_slice(),
                Bound::Unbounded => false,
            };
            if beyond {
                self.done = true;
                return None;
            }
            if self.lower_excluded.as_deref() == Some(uk) || kind == Kind::Delete {
                continue;
            }
            return Some(Ok((Bytes::copy_from_slice(uk), self.it.value())));
        }
        None
    }
}

fn lock_dir(dir: &Path) -> Result<File> {
    let path = dir.join(filename::LOCK);
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .ctx(&path)?;
    match f.try_lock() {
        Ok(()) => Ok(f),
        Err(std::fs::TryLockError::WouldBlock) => Err(Error::Locked { path }),
        Err(std::fs::TryLockError::Error(e)) => Err(Error::io(&path, e)),
    }
}

fn write_checkpoint(dir: &Path, version: &Version, last_seq: u64) -> Result<()> {
    std::fs::create_dir_all(dir).ctx(dir)?;
    let mut edit = VersionEdit::default();
    let mut max_number = 0;
    for (level, f) in version.files() {
        let dst = filename::table(dir, f.meta.number);
        if std::fs::hard_link(f.path(), &dst).is_err() {
            std::fs::copy(f.path(), &dst).ctx(&dst)?;
            File::open(&dst).and_then(|d| d.sync_all()).ctx(&dst)?;
        }
        max_number = max_number.max(f.meta.number);
        edit.added.push((level, f.meta.clone()));
    }
    let wal_number = max_number + 1;
    drop(Wal::create(dir, wal_number)?);
    edit.log_number = Some(wal_number);
    edit.next_file = Some(wal_number + 2);
    edit.last_seq = Some(last_seq);
    Manifest::create(dir, wal_number + 1, &edit)?;
    filename::sync_dir(dir).ctx(dir)
}

/// Opens the files of `dir` and brings the database to a consistent state.
fn recover(dir: PathBuf, opts: Options, lock: File) -> Result<Inner> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&dir).ctx(&dir)? {
        let entry = entry.ctx(&dir)?;
        if let Some(kind) = entry.file_name().to_str().and_then(filename::parse) {
            names.push((kind, entry.path()));
        }
    }
    let max_number = names
        .iter()
        .filter_map(|(k, _)| match k {
            FileKind::Wal(n) | FileKind::Table(n) | FileKind::Manifest(n) => Some(*n),
            FileKind::Temp => None,
        })
        .max()
        .unwrap_or(0);

    let current = dir.join(filename::CURRENT);
    let (log_number, mut next_file, mut last_seq, metas, old_manifest) = if current.exists() {
        let r = manifest::recover(&dir, opts.num_levels)?;
        // The manifest names the WAL segment that was current when it was
        // last written; that segment is only deleted after a later edit is
        // durable. Its absence means the manifest lost edits.
        let wal = filename::wal(&dir, r.log_number);
        if !wal.exists() {
            return Err(Error::corruption(
                &r.manifest_path,
                0,
                format!(
                    "the manifest names WAL segment {} which is missing: the manifest is older than the data",
                    wal.display()
                ),
            ));
        }
        (
            r.log_number,
            r.next_file,
            r.last_seq,
            r.levels,
            Some(r.manifest_path),
        )
    } else {
        if names.iter().any(|(k, _)| !matches!(k, FileKind::Temp)) {
            return Err(Error::corruption(
                &current,
                0,
                "CURRENT is missing but the directory holds database files",
            ));
        }
        (0, 1, 0, vec![Vec::new(); opts.num_levels], None)
    };
    next_file = next_file.max(max_number + 1);

    // Open every table the manifest names.
    let mut version = Version::new(opts.num_levels);
    let manifest_path = old_manifest.clone().unwrap_or_else(|| current.clone());
    for (level, files) in metas.into_iter().enumerate() {
        for meta in files {
            let path = filename::table(&dir, meta.number);
            let len = std::fs::metadata(&path)
                .map_err(|_| {
                    Error::corruption(
                        &manifest_path,
                        0,
                        format!(
                            "the manifest names table {} which is missing",
                            path.display()
                        ),
                    )
                })?
                .len();
            if len != meta.size {
                return Err(Error::corruption(
                    &path,
                    len,
                    format!(
                        "table is {len} bytes but the manifest recorded {}",
                        meta.size
                    ),
                ));
            }
            let table = Table::open(&path)?;
            version.levels[level].push(Arc::new(FileHandle::new(meta, table, path)));
        }
    }
    version.sort();

    // Replay the WAL segments that are not yet in tables.
    let mut wals: Vec<u64> = names
        .iter()
        .filter_map(|(k, _)| match k {
            FileKind::Wal(n) if *n >= log_number => Some(*n),
            _ => None,
        })
        .collect();
    wals.sort_unstable();
    let mut mem = MemTable::new(0);
    let mut new_tables: Vec<Arc<FileHandle>> = Vec::new();
    for (i, &n) in wals.iter().enumerate() {
        let path = filename::wal(&dir, n);
        wal::replay(&path, i + 1 == wals.len(), |seq, ops| {
            let mut s = seq;
            for op in ops {
                mem.insert(op.key, s, op.kind, op.value);
                s += 1;
            }
            last_seq = last_seq.max(s.saturating_sub(1));
            if mem.approximate_size() >= opts.memtable_size {
                let full = std::mem::replace(&mut mem, MemTable::new(0));
                new_tables.push(write_l0(&dir, &opts, &full, &mut next_file)?);
            }
            Ok(())
        })?;
    }
    if !mem.is_empty() {
        new_tables.push(write_l0(&dir, &opts, &mem, &mut next_file)?);
    }
    if !new_tables.is_empty() {
        filename::sync_dir(&dir).ctx(&dir)?;
    }
    let added: Vec<(usize, Arc<FileHandle>)> = new_tables.into_iter().map(|f| (0, f)).collect();
    let version = version.apply(&[], &added);

    let wal_number = next_file;
    let manifest_number = next_file + 1;
    next_file += 2;
    let wal = Wal::create(&dir, wal_number)?;
    let base = VersionEdit {
        log_number: Some(wal_number),
        next_file: Some(next_file),
        last_seq: Some(last_seq),
        deleted: Vec::new(),
        added: version.files().map(|(l, f)| (l, f.meta.clone())).collect(),
    };
    let manifest = Manifest::create(&dir, manifest_number, &base)?;

    // The new manifest is in charge: remove what it does not name.
    let live: HashSet<u64> = version.files().map(|(_, f)| f.meta.number).collect();
    for (kind, path) in &names {
        let obsolete = match *kind {
            FileKind::Wal(n) => n < wal_number,
            FileKind::Table(n) => !live.contains(&n),
            FileKind::Manifest(n) => n != manifest_number,
            FileKind::Temp => true,
        };
        if obsolete {
            let _ = std::fs::remove_file(path);
        }
    }

    let num_levels = opts.num_levels;
    Ok(Inner {
        dir,
        _lock: lock,
        sv: RwLock::new(Arc::new(SuperVersion {
            mem: Arc::new(MemTable::new(wal_number)),
            imms: Vec::new(),
            version: Arc::new(version),
        })),
        queue: Mutex::new(VecDeque::new()),
        queue_cv: Condvar::new(),
        wal: Mutex::new(WalState {
            wal,
            last_seq,
            buf: Vec::new(),
            payload: Vec::new(),
        }),
        visible_seq: AtomicU64::new(last_seq),
        next_file: AtomicU64::new(next_file),
        manifest: Mutex::new(ManifestState {
            manifest,
            number: manifest_number,
            log_number: wal_number,
        }),
        compaction_lock: Mutex::new(()),
        compact_pointers: Mutex::new(vec![Vec::new(); num_levels]),
        bg: Mutex::new(BgState::default()),
        bg_cv: Condvar::new(),
        poisoned: AtomicBool::new(false),
        poison_reason: Mutex::new(None),
        snapshots: Mutex::new(BTreeMap::new()),
        counters: Counters::default(),
        opts,
    })
}

/// Writes `mem` to a new L0 table (recovery only).
fn write_l0(
    dir: &Path,
    opts: &Options,
    mem: &MemTable,
    next_file: &mut u64,
) -> Result<Arc<FileHandle>> {
    let n = *next_file;
    *next_file += 1;
    build_table(dir, opts, mem, n)
}

fn build_table(dir: &Path, opts: &Options, mem: &MemTable, number: u64) -> Result<Arc<FileHandle>> {
    let path = filename::table(dir, number);
    let mut b = TableBuilder::create(&path, number, opts)?;
    mem.for_each(|k, v| b.add(k, v))?;
    let meta = b.finish()?;
    let table = Table::open(&path)?;
    Ok(Arc::new(FileHandle::new(meta, table, path)))
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

    fn current(&self) -> Arc<SuperVersion> {
        self.sv.read().clone()
    }

    fn get_at(&self, key: &[u8], seq: u64) -> Result<Option<Bytes>> {
        stats::add(&self.counters.gets, 1);
        let sv = self.current();
        let probe = InternalKey(Bytes::from(key::lookup(key, seq)));
        if let Some(r) = sv.mem.get(&probe) {
            return Ok(r);
        }
        for m in &sv.imms {
            if let Some(r) = m.get(&probe) {
                return Ok(r);
            }
        }
        let mut ls = LookupStats::default();
        let r = sv.version.get(&probe.0, &mut ls);
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

    /// Group commit: queue up; the writer at the front leads a group.
    fn write(&self, batch: WriteBatch, force_rotate: bool) -> Result<()> {
        self.check_poison()?;
        let me = Arc::new(Writer {
            batch,
            force_rotate,
            result: Mutex::new(None),
        });
        let mut q = self.queue.lock();
        q.push_back(me.clone());
        loop {
            if let Some(r) = me.result.lock().take() {
                return r;
            }
            if q.front().is_some_and(|f| Arc::ptr_eq(f, &me)) {
                break;
            }
            self.queue_cv.wait(&mut q);
        }
        let mut group = Vec::new();
        let mut bytes = 0;
        for w in q.iter() {
            if !group.is_empty() && bytes + w.batch.rep.len() > MAX_GROUP_BYTES {
                break;
            }
            bytes += w.batch.rep.len();
            group.push(w.clone());
        }
        drop(q);

        let result = self.commit_group(&group);
        let mut q = self.queue.lock();
        for w in &group {
            q.pop_front();
            if !Arc::ptr_eq(w, &me) {
                let r = match &result {
                    Ok(()) => Ok(()),
                    Err(e) => Err(e.duplicate()),
                };
                *w.result.lock() = Some(r);
            }
        }
        self.queue_cv.notify_all();
        result
    }

    fn commit_group(&self, group: &[Arc<Writer>]) -> Result<()> {
        self.check_poison()?;
        let force = group.iter().any(|w| w.force_rotate);
        self.make_room(force)?;
        let mut ws = self.wal.lock();
        let WalState {
            wal,
            last_seq,
            buf,
            payload,
        } = &mut *ws;
        buf.clear();
        let mut seq = *last_seq;
        let mut count = 0u64;
        for w in group.iter().filter(|w| !w.batch.is_empty()) {
            payload.clear();
            batch::encode_wal_payload(payload, seq + 1, &w.batch);
            record::encode(buf, payload);
            seq += u64::from(w.batch.count);
            count += 1;
        }
        if count == 0 {
            return Ok(());
        }
        if seq > MAX_SEQ {
            return Err(Error::InvalidArgument("sequence numbers exhausted".into()));
        }
        if let Err(e) = wal.append(buf) {
            self.poison(&e);
            return Err(e);
        }
        stats::add(&self.counters.wal_writes, 1);
        if self.opts.sync == SyncMode::Always {
            if let Err(e) = wal.sync() {
                self.poison(&e);
                return Err(e);
            }
            stats::add(&self.counters.wal_syncs, 1);
        }
        let mem = self.current().mem.clone();
        let mut s = *last_seq + 1;
        for w in group.iter().filter(|w| !w.batch.is_empty()) {
            for op in batch::decode(&w.batch.rep, w.batch.count).unwrap_or_default() {
                mem.insert(op.key, s, op.kind, op.value);
                s += 1;
            }
        }
        *last_seq = seq;
        self.visible_seq.store(seq, Ordering::Release);
        stats::add(&self.counters.writes, count);
        Ok(())
    }

    /// Makes sure the memtable has room, freezing it when full (or when
    /// `force` and not empty), and holds writers back while flushes or L0
    /// compactions are behind.
    fn make_room(&self, force: bool) -> Result<()> {
        let mut slowed = false;
        loop {
            self.check_poison()?;
            let sv = self.current();
            let l0 = sv.version.levels[0].len();
            if !slowed && l0 >= self.opts.l0_slowdown_trigger && l0 < self.opts.l0_stop_trigger {
                // Give compaction a little of the writers' time instead of
                // stalling them all at once later.
                stats::add(&self.counters.write_slowdowns, 1);
                std::thread::sleep(Duration::from_millis(1));
                slowed = true;
                continue;
            }
            let full = sv.mem.approximate_size() >= self.opts.memtable_size;
            if !(full || (force && !sv.mem.is_empty())) {
                return Ok(());
            }
            if sv.imms.len() >= self.opts.max_immutable_memtables || l0 >= self.opts.l0_stop_trigger
            {
                stats::add(&self.counters.write_stalls, 1);
                let mut g = self.bg.lock();
                let cur = self.current();
                if cur.imms.len() >= self.opts.max_immutable_memtables
                    || cur.version.levels[0].len() >= self.opts.l0_stop_trigger
                {
                    self.bg_cv.wait_for(&mut g, STALL_WAIT);
                }
                continue;
            }
            let number = self.next_file.fetch_add(1, Ordering::SeqCst);
            let new_wal = Wal::create(&self.dir, number)?;
            let mut ws = self.wal.lock();
            let mut old = std::mem::replace(&mut ws.wal, new_wal);
            if self.opts.sync == SyncMode::Never {
                // The frozen memtable's segment is complete; nothing more
                // will be appended to it.
                let _ = old.sync();
            }
            drop(old);
            {
                let mut svw = self.sv.write();
                let mut imms = Vec::with_capacity(svw.imms.len() + 1);
                imms.push(svw.mem.clone());
                imms.extend(svw.imms.iter().cloned());
                *svw = Arc::new(SuperVersion {
                    mem: Arc::new(MemTable::new(number)),
                    imms,
                    version: svw.version.clone(),
                });
            }
            drop(ws);
            self.notify_bg();
            return Ok(());
        }
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

    fn flush_loop(&self) {
        loop {
            let imm = {
                let mut g = self.bg.lock();
                loop {
                    if g.shutdown || self.poisoned.load(Ordering::Acquire) {
                        return;
                    }
                    if let Some(m) = self.current().imms.last() {
                        break m.clone();
                    }
                    self.bg_cv.wait(&mut g);
                }
            };
            if let Err(e) = self.flush_memtable(&imm) {
                self.poison(&e);
                return;
            }
            self.notify_bg();
        }
    }

    /// Writes the oldest frozen memtable to an L0 table and installs it.
    fn flush_memtable(&self, imm: &Arc<MemTable>) -> Result<()> {
        let number = self.next_file.fetch_add(1, Ordering::SeqCst);
        let handle = if imm.is_empty() {
            None
        } else {
            let h = build_table(&self.dir, &self.opts, imm, number)?;
            filename::sync_dir(&self.dir).ctx(&self.dir)?;
            Some(h)
        };
        let mut man = self.manifest.lock();
        let sv = self.current();
        // The WAL segment of the next newer memtable is the oldest one still needed.
        let pos = sv
            .imms
            .iter()
            .position(|m| Arc::ptr_eq(m, imm))
            .ok_or_else(|| Error::Poisoned("flushed memtable vanished".into()))?;
        let next_log = if pos == 0 {
            sv.mem.wal_number()
        } else {
            sv.imms[pos - 1].wal_number()
        };
        let added: Vec<(usize, Arc<FileHandle>)> = handle.into_iter().map(|h| (0, h)).collect();
        let edit = VersionEdit {
            log_number: Some(next_log),
            next_file: Some(self.next_file.load(Ordering::SeqCst)),
            last_seq: added.first().map(|(_, h)| h.meta.max_seq),
            deleted: Vec::new(),
            added: added.iter().map(|(l, f)| (*l, f.meta.clone())).collect(),
        };
        self.log_edit(&mut man, &edit)?;
        {
            let mut svw = self.sv.write();
            let imms = svw
                .imms
                .iter()
                .filter(|m| !Arc::ptr_eq(m, imm))
                .cloned()
                .collect();
            *svw = Arc::new(SuperVersion {
                mem: svw.mem.clone(),
                imms,
                version: Arc::new(svw.version.apply(&[], &added)),
            });
        }
        man.log_number = next_log;
        drop(man);
        // The edit is durable: the frozen memtable's log is no longer needed.
        let _ = std::fs::remove_file(filename::wal(&self.dir, imm.wal_number()));
        stats::add(&self.counters.flushes, 1);
        Ok(())
    }

    /// Appends `edit` to the manifest, starting a new manifest first when the
    /// current one has grown large. Poisons on failure.
    fn log_edit(&self, man: &mut ManifestState, edit: &VersionEdit) -> Result<()> {
        let r = if man.manifest.size() > MANIFEST_ROTATE_BYTES {
            self.rotate_manifest(man, edit)
        } else {
            man.manifest.append(edit)
        };
        if let Err(e) = &r {
            self.poison(e);
        }
        r
    }

    fn rotate_manifest(&self, man: &mut ManifestState, edit: &VersionEdit) -> Result<()> {
        let sv = self.current();
        let deleted: Vec<(usize, u64)> = edit.deleted.clone();
        let mut base = VersionEdit {
            log_number: edit.log_number.or(Some(man.log_number)),
            next_file: None,
            last_seq: Some(self.visible_seq.load(Ordering::Acquire)),
            deleted: Vec::new(),
            added: sv
                .version
                .files()
                .filter(|(l, f)| !deleted.contains(&(*l, f.meta.number)))
                .map(|(l, f)| (l, f.meta.clone()))
                .collect(),
        };
        base.added.extend(edit.added.iter().cloned());
        let number = self.next_file.fetch_add(1, Ordering::SeqCst);
        base.next_file = Some(self.next_file.load(Ordering::SeqCst));
        let new = Manifest::create(&self.dir, number, &base)?;
        let old = std::mem::replace(&mut man.number, number);
        man.manifest = new;
        let _ = std::fs::remove_file(self.dir.join(filename::manifest_name(old)));
        Ok(())
    }

    fn smallest_snapshot(&self) -> u64 {
        let snaps = self.snapshots.lock();
        let now = self.visible_seq.load(Ordering::Acquire);
        snaps.keys().next().map_or(now, |&s| s.min(now))
    }

    fn compaction_loop(&self) {
        loop {
            {
                let mut g = self.bg.lock();
                loop {
                    if g.shutdown || self.poisoned.load(Ordering::Acquire) {
                        return;
                    }
                    let v = self.current().version.clone();
                    if compaction::pick(&v, &self.opts, &mut self.compact_pointers.lock().clone())
                        .is_some()
                    {
                        break;
                    }
                    self.bg_cv.wait(&mut g);
                }
            }
            let _guard = self.compaction_lock.lock();
            let v = self.current().version.clone();
            let picked = compaction::pick(&v, &self.opts, &mut self.compact_pointers.lock());
            if let Some(c) = picked {
                if let Err(e) = self.run_compaction(&c, &v) {
                    self.poison(&e);
                    return;
                }
                self.notify_bg();
            }
        }
    }

    /// Runs `c` (picked from `v`) and installs its outputs.
    fn run_compaction(&self, c: &Compaction, v: &Version) -> Result<()> {
        let mut edit = VersionEdit::default();
        let mut added: Vec<(usize, Arc<FileHandle>)> = Vec::new();
        let mut rs = compaction::RunStats::default();
        if c.is_trivial_move() {
            for (level, f) in c.input_files() {
                edit.deleted.push((level, f.meta.number));
                added.push((c.output_level, f.clone()));
            }
        } else {
            let outputs = compaction::run(
                c,
                v,
                &self.dir,
                &self.opts,
                self.smallest_snapshot(),
                || self.next_file.fetch_add(1, Ordering::SeqCst),
                &mut rs,
            )?;
            edit.deleted = c.input_files().map(|(l, f)| (l, f.meta.number)).collect();
            added = outputs.into_iter().map(|f| (c.output_level, f)).collect();
        }
        edit.added = added.iter().map(|(l, f)| (*l, f.meta.clone())).collect();
        let mut man = self.manifest.lock();
        edit.next_file = Some(self.next_file.load(Ordering::SeqCst));
        self.log_edit(&mut man, &edit)?;
        {
            let mut svw = self.sv.write();
            *svw = Arc::new(SuperVersion {
                mem: svw.mem.clone(),
                imms: svw.imms.clone(),
                version: Arc::new(svw.version.apply(&edit.deleted, &added)),
            });
        }
        drop(man);
        if !c.is_trivial_move() {
            for (_, f) in c.input_files() {
                f.mark_obsolete();
            }
        }
        let cs = &self.counters;
        stats::add(&cs.compactions, 1);
        stats::add(&cs.compaction_bytes_read, rs.bytes_read);
        stats::add(&cs.compaction_bytes_written, rs.bytes_written);
        Ok(())
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
        crate::wal::FAIL_POINT.with(|p| *p.borrow_mut() = Some(point.to_string()));
        f();
        crate::wal::FAIL_POINT.with(|p| *p.borrow_mut() = None);
    }
}
