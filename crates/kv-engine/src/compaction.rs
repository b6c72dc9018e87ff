//! Leveled compaction: choosing what to compact and merging it.
//!
//! L0 is compacted into L1 when it holds `l0_compaction_trigger` tables. A
//! level >= 1 is compacted when its size exceeds its target
//! (`level_base_bytes * level_multiplier^(level-1)`): one table, chosen
//! round-robin across the key space, is merged with the tables it overlaps in
//! the next level. A table that overlaps nothing below is moved, not rewritten.

use std::path::Path;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::filename;
use crate::iterator::{InternalIterator, LevelIter, MergeIter};
use crate::key::{self, Kind};
use crate::options::Options;
use crate::sstable::{Table, TableBuilder, TableIter};
use crate::version::{FileHandle, Version};

/// A chosen compaction.
#[derive(Debug)]
pub(crate) struct Compaction {
    /// Input tables per source level; `inputs[0]` is from `level`, `inputs[1]` from `level + 1`.
    pub(crate) level: usize,
    pub(crate) output_level: usize,
    pub(crate) inputs: Vec<(usize, Vec<Arc<FileHandle>>)>,
}

impl Compaction {
    /// A single table with nothing to merge with can simply change level.
    pub(crate) fn is_trivial_move(&self) -> bool {
        self.level > 0
            && self.inputs.len() == 2
            && self.inputs[0].1.len() == 1
            && self.inputs[1].1.is_empty()
    }

    pub(crate) fn input_files(&self) -> impl Iterator<Item = (usize, &Arc<FileHandle>)> {
        self.inputs
            .iter()
            .flat_map(|(l, fs)| fs.iter().map(move |f| (*l, f)))
    }
}

fn key_range(files: &[Arc<FileHandle>]) -> Option<(Vec<u8>, Vec<u8>)> {
    let lo = files.iter().map(|f| f.meta.smallest_user_key()).min()?;
    let hi = files.iter().map(|f| f.meta.largest_user_key()).max()?;
    Some((lo.to_vec(), hi.to_vec()))
}

/// Picks the most urgent compaction, if any is due. `pointers[level]` is the
/// user key after which the next round-robin pick in `level` starts.
pub(crate) fn pick(v: &Version, opts: &Options, pointers: &mut [Vec<u8>]) -> Option<Compaction> {
    let last = v.levels.len() - 1;
    if v.levels[0].len() >= opts.l0_compaction_trigger {
        let l0 = v.levels[0].clone();
        let (lo, hi) = key_range(&l0)?;
        let l1 = v.overlapping(1, &lo, &hi);
        return Some(Compaction {
            level: 0,
            output_level: 1,
            inputs: vec![(0, l0), (1, l1)],
        });
    }
    let mut best: Option<(f64, usize)> = None;
    for level in 1..last {
        let score = v.level_bytes(level) as f64 / opts.level_target(level) as f64;
        if score >= 1.0 && best.is_none_or(|(s, _)| score > s) {
            best = Some((score, level));
        }
    }
    let (_, level) = best?;
    let files = &v.levels[level];
    let ptr = pointers.get(level).cloned().unwrap_or_default();
    let f = files
        .iter()
        .find(|f| f.meta.smallest_user_key() > ptr.as_slice())
        .or_else(|| files.first())?
        .clone();
    if let Some(p) = pointers.get_mut(level) {
        *p = f.meta.largest_user_key().to_vec();
    }
    let next = v.overlapping(
        level + 1,
        f.meta.smallest_user_key(),
        f.meta.largest_user_key(),
    );
    Some(Compaction {
        level,
        output_level: level + 1,
        inputs: vec![(level, vec![f]), (level + 1, next)],
    })
}

/// A compaction of everything into one sorted run at the deepest used level.
pub(crate) fn full(v: &Version) -> Option<Compaction> {
    let deepest = v.levels.iter().rposition(|l| !l.is_empty())?;
    let inputs: Vec<_> = v
        .levels
        .iter()
        .enumerate()
        .filter(|(_, l)| !l.is_empty())
        .map(|(i, l)| (i, l.clone()))
        .collect();
    Some(Compaction {
        level: inputs.first().map_or(0, |(l, _)| *l),
        output_level: deepest.max(1),
        inputs,
    })
}

/// Whether no level deeper than `output_level` can hold `user_key`, so that a
/// tombstone for it may be dropped.
fn is_base_level_for(v: &Version, output_level: usize, user_key: &[u8]) -> bool {
    v.levels.iter().skip(output_level + 1).all(|l| {
        l.iter()
            .all(|f| user_key < f.meta.smallest_user_key() || user_key > f.meta.largest_user_key())
    })
}

/// Counters from one compaction run.
#[derive(Debug, Default)]
pub(crate) struct RunStats {
    pub(crate) bytes_read: u64,
    pub(crate) bytes_written: u64,
    pub(crate) entries_dropped: u64,
}

/// Merges the inputs of `c` into new tables. `smallest_snapshot` is the
/// oldest sequence number a reader may still ask for: an older version of a
/// key is dropped only when a newer one at or below it exists.
pub(crate) fn run(
    c: &Compaction,
    v: &Version,
    dir: &Path,
    opts: &Options,
    smallest_snapshot: u64,
    mut new_file_number: impl FnMut() -> u64,
    stats: &mut RunStats,
) -> Result<Vec<Arc<FileHandle>>> {
    let mut children: Vec<Box<dyn InternalIterator>> = Vec::new();
    for (level, files) in &c.inputs {
        stats.bytes_read += files.iter().map(|f| f.meta.size).sum::<u64>();
        if *level == 0 {
            for f in files {
                children.push(Box::new(TableIter::streaming(f.table.clone())));
            }
        } else if !files.is_empty() {
            children.push(Box::new(LevelIter::streaming(files.clone())));
        }
    }
    let mut it = MergeIter::new(children);
    it.seek_to_first()?;

    let mut outputs = Vec::new();
    let mut builder: Option<(TableBuilder, std::path::PathBuf)> = None;
    let mut current_uk: Vec<u8> = Vec::new();
    let mut have_uk = false;
    let mut last_seq_for_key = u64::MAX;
    while it.valid() {
        let ikey = it.key();
        let (uk, seq, kind) = key::parse(ikey).ok_or_else(|| {
            Error::corruption(dir, 0, "malformed internal key in a compaction input")
        })?;
        let new_key = !have_uk || uk != current_uk.as_slice();
        if new_key {
            current_uk.clear();
            current_uk.extend_from_slice(uk);
            have_uk = true;
            last_seq_for_key = u64::MAX;
        }
        let drop = if last_seq_for_key <= smallest_snapshot {
            // A newer version that every reader sees shadows this one.
            true
        } else {
            kind == Kind::Delete
                && seq <= smallest_snapshot
                && is_base_level_for(v, c.output_level, uk)
        };
        last_seq_for_key = seq;
        if drop {
            stats.entries_dropped += 1;
        } else {
            // Split outputs only between user keys, so that all versions of
            // a key stay in one table.
            if new_key
                && builder
                    .as_ref()
                    .is_some_and(|(b, _)| b.estimated_size() >= opts.target_file_size)
                && let Some((b, path)) = builder.take()
            {
                outputs.push(finish(b, path, opts, stats)?);
            }
            if builder.is_none() {
                let n = new_file_number();
                let path = filename::table(dir, n);
                builder = Some((TableBuilder::create(&path, n, opts)?, path));
            }
            if let Some((b, _)) = builder.as_mut() {
                b.add(ikey, &it.value())?;
            }
        }
        it.next()?;
    }
    if let Some((b, path)) = builder.take() {
        outputs.push(finish(b, path, opts, stats)?);
    }
    if !outputs.is_empty() {
        filename::sync_dir(dir).map_err(|e| Error::io(dir, e))?;
    }
    Ok(outputs)
}

fn finish(
    b: TableBuilder,
    path: std::path::PathBuf,
    opts: &Options,
    stats: &mut RunStats,
) -> Result<Arc<FileHandle>> {
    let meta = b.finish()?;
    stats.bytes_written += meta.size;
    let table = Table::open(&path, opts.huge_page_tables)?;
    Ok(Arc::new(FileHandle::new(meta, table, path)))
}
