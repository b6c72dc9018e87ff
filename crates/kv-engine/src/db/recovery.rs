//! Opening a directory: locking, recovery from manifest and WAL, checkpoints.

use std::sync::Arc;

use super::*;

pub(super) fn lock_dir(dir: &Path) -> Result<File> {
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

pub(super) fn write_checkpoint(dir: &Path, version: &Version, last_seq: u64) -> Result<()> {
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
    Wal::create_empty(dir, wal_number)?;
    edit.log_number = Some(wal_number);
    edit.next_file = Some(wal_number + 2);
    edit.last_seq = Some(last_seq);
    Manifest::create(dir, wal_number + 1, &edit)?;
    filename::sync_dir(dir).ctx(dir)
}

/// Opens the files of `dir` and brings the database to a consistent state.
pub(super) fn recover(dir: PathBuf, opts: Options) -> Result<Inner> {
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
        // CURRENT is only ever replaced atomically, so without it no
        // manifest was ever in charge. A first open killed before it wrote
        // CURRENT leaves an empty WAL segment and perhaps a manifest: no
        // write was ever accepted, and the directory starts afresh (those
        // files are removed below as obsolete). Anything more is damage.
        let unfinished_creation = names.iter().all(|(kind, path)| match kind {
            FileKind::Temp | FileKind::Manifest(_) => true,
            FileKind::Wal(_) => wal::holds_no_records(path).unwrap_or(false),
            FileKind::Table(_) => false,
        });
        if !unfinished_creation {
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
            let table = Table::open(&path, opts.huge_page_tables)?;
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
    let mut next_seq = None;
    for (i, &n) in wals.iter().enumerate() {
        let path = filename::wal(&dir, n);
        wal::replay(&path, i + 1 == wals.len(), &mut next_seq, |seq, ops| {
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
        sv: RwLock::new(Arc::new(SuperVersion {
            mem: Arc::new(MemTable::new(wal_number)),
            imms: Vec::new(),
            version: Arc::new(version),
        })),
        queue: Mutex::new(VecDeque::new()),
        group_peak: AtomicUsize::new(0),
        last_sync_nanos: AtomicU64::new(0),
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

pub(super) fn build_table(
    dir: &Path,
    opts: &Options,
    mem: &MemTable,
    number: u64,
) -> Result<Arc<FileHandle>> {
    let path = filename::table(dir, number);
    let mut b = TableBuilder::create(&path, number, opts)?;
    mem.for_each(|k, v| b.add(k, v))?;
    let meta = b.finish()?;
    let table = Table::open(&path, opts.huge_page_tables)?;
    Ok(Arc::new(FileHandle::new(meta, table, path)))
}
