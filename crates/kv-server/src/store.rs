//! The engine directory: one [`Db`] at a time, replaced whole when a raft
//! snapshot is installed.
//!
//! ```text
//! <root>/CURRENT      "N\n": the generation in use (replaced atomically)
//! <root>/gen-N/       the kv-engine database of generation N
//! <root>/snapshots/   checkpoints of raft snapshots (see `snapshot`)
//! ```
//!
//! Installing a snapshot links its checkpoint's tables into `gen-(N+1)`
//! (the other, small files are copied: the engine appends to them), fsyncs
//! it, switches
//! `CURRENT` (temp file, fsync, rename, fsync directory), then opens the new
//! database and swaps it in. A crash at any instant leaves `CURRENT` naming
//! either the old or the new, complete generation; the other one is removed on
//! the next open. The old database stays open until its last reader is done,
//! then its directory is removed: it never writes into the new generation's
//! directory (which a rename of the live directory could not promise).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use kv_engine::{Db, Options};
use parking_lot::RwLock;

use crate::archive;
use crate::error::{Error, IoContext, Result};
use crate::snapshot::{Descriptor, SnapshotDirs};

const CURRENT: &str = "CURRENT";
/// Scratch space of the packed checkpoints of older builds.
const SNAP_TMP: &str = "snap-tmp";
const SNAPSHOTS: &str = "snapshots";

/// One generation of the database.
pub struct Generation {
    db: Option<Db>,
    path: PathBuf,
    number: u64,
    obsolete: AtomicBool,
}

impl std::fmt::Debug for Generation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Generation")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Generation {
    /// The database.
    #[must_use]
    pub fn db(&self) -> &Db {
        // Only `Drop` takes it.
        self.db.as_ref().expect("database present until drop")
    }

    /// The generation's number: each replacement of the database has a
    /// higher one.
    #[must_use]
    pub fn number(&self) -> u64 {
        self.number
    }
}

impl Drop for Generation {
    fn drop(&mut self) {
        drop(self.db.take());
        if self.obsolete.load(Ordering::Acquire)
            && let Err(e) = std::fs::remove_dir_all(&self.path)
        {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot remove an old engine generation");
        }
    }
}

/// The engine directory with its current database.
#[derive(Debug)]
pub struct Store {
    root: PathBuf,
    opts: Options,
    current: RwLock<Arc<Generation>>,
    snapshots: Arc<SnapshotDirs>,
}

fn gen_dir(root: &Path, n: u64) -> PathBuf {
    root.join(format!("gen-{n}"))
}

fn open_db(path: &Path, opts: &Options) -> Result<Db> {
    Db::open_with(path, opts.clone()).map_err(|e| match e {
        kv_engine::Error::Locked { .. } => Error::Locked(path.to_path_buf()),
        e => Error::Engine(e),
    })
}

impl Store {
    /// Opens (creating when `root` is empty or missing) the store.
    ///
    /// # Errors
    ///
    /// [`Error::Corruption`] when `CURRENT` is missing or damaged in a
    /// non-empty directory; engine and I/O errors.
    pub fn open(root: impl AsRef<Path>, opts: Options) -> Result<Store> {
        let root = root.as_ref().to_path_buf();
        std::fs::create_dir_all(&root).ctx(&root)?;
        let current_path = root.join(CURRENT);
        let number = match std::fs::read_to_string(&current_path) {
            Ok(s) => s
                .trim()
                .parse::<u64>()
                .map_err(|_| Error::corruption(&current_path, format!("bad contents {s:?}")))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut entries = std::fs::read_dir(&root).ctx(&root)?;
                if let Some(entry) = entries.next() {
                    let entry = entry.ctx(&root)?;
                    return Err(Error::corruption(
                        &current_path,
                        format!(
                            "missing, but the directory is not empty (holds {})",
                            entry.file_name().to_string_lossy()
                        ),
                    ));
                }
                let first = gen_dir(&root, 1);
                std::fs::create_dir(&first).ctx(&first)?;
                write_current(&root, 1)?;
                1
            }
            Err(e) => return Err(Error::io(&current_path, e)),
        };
        let path = gen_dir(&root, number);
        if !path.is_dir() {
            return Err(Error::corruption(
                &current_path,
                format!("names generation {number}, which does not exist"),
            ));
        }
        // Leftovers of an interrupted restore or checkpoint.
        for entry in std::fs::read_dir(&root).ctx(&root)? {
            let entry = entry.ctx(&root)?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if (name.starts_with("gen-") && entry.path() != path) || name == SNAP_TMP {
                std::fs::remove_dir_all(entry.path()).ctx(entry.path())?;
            }
        }
        let snapshots = Arc::new(SnapshotDirs::open(root.join(SNAPSHOTS))?);
        let db = open_db(&path, &opts)?;
        Ok(Store {
            root,
            opts,
            snapshots,
            current: RwLock::new(Arc::new(Generation {
                db: Some(db),
                path,
                number,
                obsolete: AtomicBool::new(false),
            })),
        })
    }

    /// The current database. Hold the `Arc` only for the duration of one
    /// operation: a snapshot install waits for nobody, but the old
    /// generation's files stay on disk until the last holder is gone.
    #[must_use]
    pub fn current(&self) -> Arc<Generation> {
        self.current.read().clone()
    }

    /// The checkpoints of raft snapshots.
    #[must_use]
    pub fn snapshots(&self) -> &Arc<SnapshotDirs> {
        &self.snapshots
    }

    /// Checkpoints the current database as the raft snapshot `descriptor`
    /// names (a flush and hard links; see [`SnapshotDirs::create`]).
    ///
    /// # Errors
    ///
    /// Engine and I/O errors.
    pub fn checkpoint(&self, descriptor: &Descriptor) -> Result<()> {
        self.snapshots.create(self.current().db(), descriptor)
    }

    /// Replaces the database with the checkpoint in `dir` (see the module
    /// doc); `dir` itself is left as it is.
    ///
    /// # Errors
    ///
    /// Engine and I/O errors; the old database stays in use.
    pub fn install(&self, dir: &Path) -> Result<()> {
        self.replace_with(|path| {
            std::fs::create_dir(path).ctx(path)?;
            for (name, _) in SnapshotDirs::files(dir)? {
                let (src, dst) = (dir.join(&name), path.join(&name));
                let linked = name.ends_with(".sst") && std::fs::hard_link(&src, &dst).is_ok();
                if !linked {
                    std::fs::copy(&src, &dst).ctx(&dst)?;
                    std::fs::File::open(&dst)
                        .and_then(|f| f.sync_all())
                        .ctx(&dst)?;
                }
            }
            archive::sync_dir(path)
        })
    }

    /// Replaces the database with the one in `archive` (see the module doc).
    ///
    /// # Errors
    ///
    /// [`Error::Corruption`] for a damaged archive (the old database stays),
    /// engine and I/O errors.
    pub fn restore(&self, archive: &[u8]) -> Result<()> {
        self.replace_with(|path| archive::unpack(archive, path, Path::new("<received snapshot>")))
    }

    /// Makes a new generation with `fill` (given its empty path, which it
    /// must create) and switches to it.
    fn replace_with(&self, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
        let old = self.current();
        let number = old.number + 1;
        let path = gen_dir(&self.root, number);
        if path.exists() {
            std::fs::remove_dir_all(&path).ctx(&path)?;
        }
        if let Err(e) = fill(&path) {
            let _ = std::fs::remove_dir_all(&path);
            return Err(e);
        }
        archive::sync_dir(&self.root)?;
        write_current(&self.root, number)?;
        let db = open_db(&path, &self.opts)?;
        *self.current.write() = Arc::new(Generation {
            db: Some(db),
            path,
            number,
            obsolete: AtomicBool::new(false),
        });
        old.obsolete.store(true, Ordering::Release);
        Ok(())
    }
}

fn write_current(root: &Path, number: u64) -> Result<()> {
    let tmp = root.join("CURRENT.tmp");
    std::fs::write(&tmp, format!("{number}\n")).ctx(&tmp)?;
    std::fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .ctx(&tmp)?;
    let current = root.join(CURRENT);
    std::fs::rename(&tmp, &current).ctx(&current)?;
    archive::sync_dir(root)
}
