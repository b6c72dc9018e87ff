//! [`SnapshotDirs`]: the checkpoint directories of a node's raft snapshots.
//!
//! The newest [`KEEP`] checkpoints are kept (the log store's snapshot is
//! always one of them: a newer one exists only while it is being made or
//! installed), and so is any checkpoint a transfer has pinned; older ones
//! are removed. Hard links make a checkpoint cost no space until the engine
//! compacts the tables away, so space stays bounded by a few generations of
//! the data under an overwrite-heavy load.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use kv_engine::Db;
use parking_lot::Mutex;

use super::{Descriptor, is_plain_name};
use crate::archive::sync_dir;
use crate::error::{Error, IoContext, Result};

/// Checkpoints kept besides pinned ones.
pub const KEEP: usize = 2;

const INCOMING: &str = "incoming";
/// Names of the checkpoints kept for backups (`kvctl snapshot save`).
pub const BACKUP_PREFIX: &str = "backup-";

/// The `snapshots/` directory of an engine store.
#[derive(Debug)]
pub struct SnapshotDirs {
    root: PathBuf,
    pins: Arc<Mutex<HashMap<String, usize>>>,
}

/// Keeps a checkpoint directory from being removed while held.
#[derive(Debug)]
pub struct Pin {
    name: String,
    path: PathBuf,
    pins: Arc<Mutex<HashMap<String, usize>>>,
}

impl Pin {
    /// The pinned directory.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Pin {
    fn drop(&mut self) {
        let mut pins = self.pins.lock();
        if let Some(n) = pins.get_mut(&self.name) {
            *n -= 1;
            if *n == 0 {
                pins.remove(&self.name);
            }
        }
    }
}

impl SnapshotDirs {
    /// Opens (creating) `root`; removes what an interrupted checkpoint or
    /// transfer left behind.
    ///
    /// # Errors
    ///
    /// I/O errors.
    pub fn open(root: PathBuf) -> Result<SnapshotDirs> {
        std::fs::create_dir_all(&root).ctx(&root)?;
        for entry in std::fs::read_dir(&root).ctx(&root)? {
            let entry = entry.ctx(&root)?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.ends_with(".tmp") || name == INCOMING || name.starts_with(BACKUP_PREFIX) {
                std::fs::remove_dir_all(entry.path()).ctx(entry.path())?;
            }
        }
        Ok(SnapshotDirs {
            root,
            pins: Arc::default(),
        })
    }

    /// The directory of the checkpoint named `name`.
    #[must_use]
    pub fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// Where a transfer from `peer` is received.
    #[must_use]
    pub fn incoming(&self, peer: u64) -> PathBuf {
        self.root.join(INCOMING).join(peer.to_string())
    }

    /// Checkpoints `db`, whose applied index and term are `index` and
    /// `term`, into the directory `descriptor` names (replacing one of that
    /// name: it holds the same state).
    ///
    /// # Errors
    ///
    /// Engine and I/O errors.
    pub fn create(&self, db: &Db, descriptor: &Descriptor) -> Result<()> {
        self.create_named(db, &descriptor.name())
    }

    /// Checkpoints `db` into the directory `name`.
    ///
    /// # Errors
    ///
    /// Engine and I/O errors.
    pub fn create_named(&self, db: &Db, name: &str) -> Result<()> {
        let name = name.to_owned();
        let tmp = self.root.join(format!("{name}.tmp"));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).ctx(&tmp)?;
        }
        db.checkpoint(&tmp)?;
        self.place(&tmp, &name)
    }

    /// Moves the complete, fsynced directory `from` into place as `name`.
    ///
    /// # Errors
    ///
    /// I/O errors.
    pub fn place(&self, from: &Path, name: &str) -> Result<()> {
        let dst = self.root.join(name);
        let _pin = self.pin_new(name);
        if dst.exists() {
            std::fs::remove_dir_all(&dst).ctx(&dst)?;
        }
        std::fs::rename(from, &dst).ctx(&dst)?;
        sync_dir(&self.root)
    }

    fn pin_new(&self, name: &str) -> Pin {
        *self.pins.lock().entry(name.to_owned()).or_default() += 1;
        Pin {
            name: name.to_owned(),
            path: self.root.join(name),
            pins: self.pins.clone(),
        }
    }

    /// Pins the checkpoint `name` if it exists.
    #[must_use]
    pub fn pin(&self, name: &str) -> Option<Pin> {
        let mut pins = self.pins.lock();
        let path = self.root.join(name);
        if !is_plain_name(name) || !path.is_dir() {
            return None;
        }
        *pins.entry(name.to_owned()).or_default() += 1;
        Some(Pin {
            name: name.to_owned(),
            path,
            pins: self.pins.clone(),
        })
    }

    /// The files of a checkpoint directory with their lengths, by name.
    ///
    /// # Errors
    ///
    /// I/O errors; [`Error::Corruption`] for anything but plain files.
    pub fn files(dir: &Path) -> Result<Vec<(String, u64)>> {
        let mut files = Vec::new();
        for entry in std::fs::read_dir(dir).ctx(dir)? {
            let entry = entry.ctx(dir)?;
            let meta = entry.metadata().ctx(entry.path())?;
            let name = entry
                .file_name()
                .into_string()
                .map_err(|_| Error::corruption(entry.path(), "file name is not UTF-8"))?;
            if !meta.is_file() || !is_plain_name(&name) {
                return Err(Error::corruption(entry.path(), "not a plain file"));
            }
            files.push((name, meta.len()));
        }
        files.sort();
        Ok(files)
    }

    /// Checkpoint names, oldest first.
    fn names(&self) -> Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&self.root).ctx(&self.root)? {
            let entry = entry.ctx(&self.root)?;
            // Checkpoints of raft snapshots only: `<index>-<term>`.
            if let Ok(name) = entry.file_name().into_string()
                && name.starts_with(|c: char| c.is_ascii_digit())
                && !name.ends_with(".tmp")
            {
                names.push(name);
            }
        }
        // Names start with the zero-padded index.
        names.sort();
        Ok(names)
    }

    /// Removes all but the newest [`KEEP`] checkpoints, sparing pinned ones.
    ///
    /// # Errors
    ///
    /// I/O errors.
    pub fn prune(&self) -> Result<()> {
        let names = self.names()?;
        let old = names.len().saturating_sub(KEEP);
        for name in &names[..old] {
            // Held across the removal, so that nobody pins it meanwhile.
            let pins = self.pins.lock();
            if pins.contains_key(name) {
                continue;
            }
            let path = self.root.join(name);
            std::fs::remove_dir_all(&path).ctx(&path)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc(index: u64) -> Descriptor {
        Descriptor {
            group_id: 1,
            index,
            term: 1,
        }
    }

    #[test]
    fn newest_and_pinned_checkpoints_are_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let db = Db::open(tmp.path().join("db")).unwrap();
        db.put(b"k", b"v").unwrap();
        let dirs = SnapshotDirs::open(tmp.path().join("snapshots")).unwrap();
        dirs.create(&db, &desc(5)).unwrap();
        let pinned = dirs.pin(&desc(5).name()).unwrap();
        for i in [9, 10, 100] {
            dirs.create(&db, &desc(i)).unwrap();
        }
        dirs.prune().unwrap();
        let names = dirs.names().unwrap();
        assert_eq!(
            names,
            vec![desc(5).name(), desc(10).name(), desc(100).name()]
        );
        let files = SnapshotDirs::files(pinned.path()).unwrap();
        assert!(files.iter().any(|(n, _)| n.ends_with(".sst")), "{files:?}");
        drop(pinned);
        dirs.prune().unwrap();
        assert_eq!(
            dirs.names().unwrap(),
            vec![desc(10).name(), desc(100).name()]
        );
        assert!(dirs.pin(&desc(5).name()).is_none());
        assert!(dirs.pin("../db").is_none());
        // Leftovers of an interrupted checkpoint go on open.
        std::fs::create_dir(tmp.path().join("snapshots/x.tmp")).unwrap();
        std::fs::create_dir_all(dirs.incoming(3)).unwrap();
        drop(dirs);
        let dirs = SnapshotDirs::open(tmp.path().join("snapshots")).unwrap();
        assert_eq!(
            dirs.names().unwrap(),
            vec![desc(10).name(), desc(100).name()]
        );
        assert!(!dirs.incoming(3).exists());
    }
}
