//! A version: the set of live tables, level by level.
//!
//! L0 holds flushed memtables, which may overlap; they are searched newest
//! first. Each level >= 1 is a sorted run of non-overlapping tables.

use std::cmp::Ordering;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};

use bytes::Bytes;

use crate::error::Result;
use crate::key::{self, Kind};
use crate::sstable::{Table, TableMeta, bloom};

/// A live table: its manifest record and its open reader.
#[derive(Debug)]
pub struct FileHandle {
    /// What the manifest says about the file.
    pub meta: TableMeta,
    pub(crate) table: Arc<Table>,
    path: PathBuf,
    /// Set once a durable manifest edit removed the file; the file is unlinked
    /// when the last version (and so the last reader) holding it is dropped.
    obsolete: AtomicBool,
}

impl FileHandle {
    pub(crate) fn new(meta: TableMeta, table: Arc<Table>, path: PathBuf) -> Self {
        FileHandle {
            meta,
            table,
            path,
            obsolete: AtomicBool::new(false),
        }
    }

    pub(crate) fn mark_obsolete(&self) {
        self.obsolete.store(true, AtomicOrdering::Release);
    }

    pub(crate) fn path(&self) -> &std::path::Path {
        &self.path
    }
}

impl Drop for FileHandle {
    fn drop(&mut self) {
        if self.obsolete.load(AtomicOrdering::Acquire) {
            // Best effort: a leftover file is removed at the next open.
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Counters a lookup updates.
#[derive(Debug, Default)]
pub(crate) struct LookupStats {
    pub(crate) bloom_checks: u64,
    pub(crate) bloom_negatives: u64,
}

/// An immutable snapshot of the table set.
#[derive(Debug, Clone, Default)]
pub struct Version {
    /// `levels[0]` newest first; other levels sorted by smallest key.
    pub levels: Vec<Vec<Arc<FileHandle>>>,
}

impl Version {
    pub(crate) fn new(num_levels: usize) -> Self {
        Version {
            levels: vec![Vec::new(); num_levels],
        }
    }

    /// Looks up the user key of `lookup` (from `key::lookup`) as of its
    /// sequence: `Some(Some(v))` found, `Some(None)` deleted, `None` not in
    /// any table.
    pub(crate) fn get(
        &self,
        lookup: &[u8],
        stats: &mut LookupStats,
    ) -> Result<Option<Option<Bytes>>> {
        let user_key = key::user_key(lookup);
        let hash = bloom::hash(user_key);
        let mut probe = |f: &FileHandle| -> Result<Option<Option<Bytes>>> {
            if key::compare_user(user_key, f.meta.smallest_user_key()) == Ordering::Less
                || key::compare_user(user_key, f.meta.largest_user_key()) == Ordering::Greater
            {
                return Ok(None);
            }
            stats.bloom_checks += 1;
            if !f.table.may_contain(hash) {
                stats.bloom_negatives += 1;
                return Ok(None);
            }
            Ok(f.table.get(lookup)?.map(|(kind, v)| match kind {
                Kind::Put => Some(v),
                Kind::Delete => None,
            }))
        };
        for f in &self.levels[0] {
            if let Some(r) = probe(f)? {
                return Ok(Some(r));
            }
        }
        for level in self.levels[1..].iter().filter(|l| !l.is_empty()) {
            let i =
                level.partition_point(|f| key::compare(&f.meta.largest, lookup) == Ordering::Less);
            if let Some(f) = level.get(i)
                && let Some(r) = probe(f)?
            {
                return Ok(Some(r));
            }
        }
        Ok(None)
    }

    /// Bytes in `level`.
    pub fn level_bytes(&self, level: usize) -> u64 {
        self.levels
            .get(level)
            .map_or(0, |l| l.iter().map(|f| f.meta.size).sum())
    }

    /// Tables of `level` whose user-key range intersects `[lo, hi]`.
    pub(crate) fn overlapping(&self, level: usize, lo: &[u8], hi: &[u8]) -> Vec<Arc<FileHandle>> {
        self.levels
            .get(level)
            .map(|l| {
                l.iter()
                    .filter(|f| f.meta.largest_user_key() >= lo && f.meta.smallest_user_key() <= hi)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// A new version with `deleted` (level, number) removed and `added` inserted.
    pub(crate) fn apply(
        &self,
        deleted: &[(usize, u64)],
        added: &[(usize, Arc<FileHandle>)],
    ) -> Version {
        let mut v = self.clone();
        for &(level, number) in deleted {
            if let Some(l) = v.levels.get_mut(level) {
                l.retain(|f| f.meta.number != number);
            }
        }
        for (level, f) in added {
            if let Some(l) = v.levels.get_mut(*level) {
                l.push(f.clone());
            }
        }
        v.sort();
        v
    }

    pub(crate) fn sort(&mut self) {
        if let Some(l0) = self.levels.first_mut() {
            l0.sort_by(|a, b| {
                b.meta
                    .max_seq
                    .cmp(&a.meta.max_seq)
                    .then(b.meta.number.cmp(&a.meta.number))
            });
        }
        for l in self.levels.iter_mut().skip(1) {
            l.sort_by(|a, b| key::compare(&a.meta.smallest, &b.meta.smallest));
        }
    }

    /// Every live table.
    pub(crate) fn files(&self) -> impl Iterator<Item = (usize, &Arc<FileHandle>)> {
        self.levels
            .iter()
            .enumerate()
            .flat_map(|(l, files)| files.iter().map(move |f| (l, f)))
    }
}
