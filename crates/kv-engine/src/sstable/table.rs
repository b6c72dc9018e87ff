//! Reading a table: footer, index and bloom filter are checked at open; each
//! data block's checksum the first time it is used.

use std::cmp::Ordering;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};

use bytes::Bytes;

use super::block::{BadBlock, BlockIter};
use super::{FOOTER_LEN, MAGIC, bloom};
use crate::coding::{u32_at, u64_at};
use crate::error::{Error, IoContext, Result};
use crate::iterator::InternalIterator;
use crate::key::{self, Kind};

/// What the manifest records about a table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableMeta {
    /// File number (`NNNNNN.sst`).
    pub number: u64,
    /// File size in bytes.
    pub size: u64,
    /// Smallest internal key.
    pub smallest: Vec<u8>,
    /// Largest internal key.
    pub largest: Vec<u8>,
    /// Number of entries.
    pub entries: u64,
    /// Largest sequence number in the table.
    pub max_seq: u64,
}

impl TableMeta {
    pub(crate) fn smallest_user_key(&self) -> &[u8] {
        key::user_key(&self.smallest)
    }

    pub(crate) fn largest_user_key(&self) -> &[u8] {
        key::user_key(&self.largest)
    }
}

#[derive(Debug)]
struct IndexEntry {
    /// Where the block's last key lies in `Table::index_keys`.
    key_at: usize,
    key_len: usize,
    offset: usize,
    len: usize,
}

/// An open, memory-mapped table.
#[derive(Debug)]
pub struct Table {
    path: PathBuf,
    data: Bytes,
    index: Vec<IndexEntry>,
    /// The last key of every data block, back to back.
    index_keys: Vec<u8>,
    /// `key::prefix` of each block's last key, densely packed: most steps of
    /// the binary search over blocks are decided here, in few cache lines.
    index_prefixes: Vec<u64>,
    filter: Bytes,
    verified: Vec<AtomicBool>,
}

impl Table {
    /// Opens and checks the table at `path`.
    ///
    /// # Errors
    ///
    /// I/O errors, or [`Error::Corruption`] naming the file when the footer,
    /// index or filter are damaged.
    pub fn open(path: &Path) -> Result<Arc<Table>> {
        let file = File::open(path).ctx(path)?;
        let len = file.metadata().ctx(path)?.len();
        if len < FOOTER_LEN as u64 {
            return Err(Error::corruption(
                path,
                0,
                format!("file of {len} bytes is too short for a table"),
            ));
        }
        let data = crate::mmap::map_readonly(&file, path)?;
        let corrupt = |off: usize, why: &str| Error::corruption(path, off as u64, why.to_string());
        let foot_at = data.len() - FOOTER_LEN;
        let footer = &data[foot_at..];
        if u64_at(footer, 44) != Some(MAGIC) {
            return Err(corrupt(foot_at, "bad table magic"));
        }
        if u32_at(footer, 40) != Some(crc32fast::hash(&footer[..40])) {
            return Err(corrupt(foot_at, "footer checksum mismatch"));
        }
        let field = |i: usize| {
            u64_at(footer, i * 8)
                .and_then(|v| usize::try_from(v).ok())
                .unwrap_or(usize::MAX)
        };
        let (bloom_off, bloom_len, index_off, index_len) = (field(0), field(1), field(2), field(3));
        let check = |off: usize, len: usize, what: &str| -> Result<Bytes> {
            let end = off
                .checked_add(len)
                .filter(|&e| e.checked_add(4).is_some_and(|e4| e4 <= foot_at))
                .ok_or_else(|| corrupt(foot_at, &format!("{what} block out of range")))?;
            let block = data.slice(off..end);
            if u32_at(&data, end) != Some(crc32fast::hash(&block)) {
                return Err(corrupt(off, &format!("{what} block checksum mismatch")));
            }
            Ok(block)
        };
        let filter = check(bloom_off, bloom_len, "bloom filter")?;
        let index_block = check(index_off, index_len, "index")?;
        let mut index = Vec::new();
        let mut index_keys = Vec::new();
        let mut index_prefixes = Vec::new();
        let mut it = BlockIter::new(index_block).map_err(|e| corrupt(index_off, e.0))?;
        it.seek_to_first().map_err(|e| corrupt(index_off, e.0))?;
        while it.valid() {
            let v = it.value_slice();
            let (Some(off), Some(len)) = (u64_at(v, 0), u32_at(v, 8)) else {
                return Err(corrupt(index_off, "malformed index entry"));
            };
            let (off, len) = (off as usize, len as usize);
            if off
                .checked_add(len)
                .is_none_or(|e| e.saturating_add(4) > bloom_off.min(index_off))
            {
                return Err(corrupt(
                    index_off,
                    "index entry points outside the data blocks",
                ));
            }
            if key::parse(it.key()).is_none() {
                return Err(corrupt(index_off, "malformed key in index"));
            }

            index_prefixes.push(key::prefix(it.key()));
            index.push(IndexEntry {
                key_at: index_keys.len(),
                key_len: it.key().len(),
                offset: off,
                len,
            });
            index_keys.extend_from_slice(it.key());
            it.next().map_err(|e| corrupt(index_off, e.0))?;
        }
        let verified = index.iter().map(|_| AtomicBool::new(false)).collect();
        Ok(Arc::new(Table {
            path: path.to_path_buf(),
            data,
            index,
            index_keys,
            index_prefixes,
            filter,
            verified,
        }))
    }

    pub(crate) fn may_contain(&self, hash: u64) -> bool {
        self.filter.is_empty() || bloom::may_contain(&self.filter, hash)
    }

    fn bad(&self, block: usize, e: BadBlock) -> Error {
        let off = self.index.get(block).map_or(0, |b| b.offset);
        Error::corruption(&self.path, off as u64, e.0)
    }

    /// Data block `i`, its checksum verified on first use.
    fn block_slice(&self, i: usize) -> Result<&[u8]> {
        let Some(h) = self.index.get(i) else {
            return Err(Error::corruption(&self.path, 0, "block index out of range"));
        };
        let block = &self.data[h.offset..h.offset + h.len];
        if !self.verified[i].load(AtomicOrdering::Relaxed) {
            if u32_at(&self.data, h.offset + h.len) != Some(crc32fast::hash(block)) {
                return Err(Error::corruption(
                    &self.path,
                    h.offset as u64,
                    "data block checksum mismatch",
                ));
            }
            self.verified[i].store(true, AtomicOrdering::Relaxed);
        }
        Ok(block)
    }

    fn block(&self, i: usize) -> Result<BlockIter> {
        let block = self.block_slice(i)?;
        BlockIter::new(self.data.slice_ref(block)).map_err(|e| self.bad(i, e))
    }

    /// Index of the first block whose last key is >= `target`.
    fn find_block(&self, target: &[u8]) -> usize {
        let prefix = key::prefix(target);
        let (mut lo, mut hi) = (0, self.index.len());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let less = match self.index_prefixes[mid].cmp(&prefix) {
                Ordering::Equal => {
                    let b = &self.index[mid];
                    key::compare(&self.index_keys[b.key_at..b.key_at + b.key_len], target)
                        == Ordering::Less
                }
                o => o == Ordering::Less,
            };
            if less {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo
    }

    /// The newest entry for the user key of `lookup` (an internal lookup key)
    /// visible at its sequence, if this table has one.
    pub(crate) fn get(&self, lookup: &[u8]) -> Result<Option<(Kind, Bytes)>> {
        let i = self.find_block(lookup);
        if i >= self.index.len() {
            return Ok(None);
        }
        let block = self.block_slice(i)?;
        let mut it = BlockIter::new(block).map_err(|e| self.bad(i, e))?;
        it.seek(lookup).map_err(|e| self.bad(i, e))?;
        if !it.valid() {
            return Ok(None);
        }
        let (uk, _, kind) =
            key::parse(it.key()).ok_or_else(|| self.bad(i, BadBlock("malformed internal key")))?;
        if uk != key::user_key(lookup) {
            return Ok(None);
        }
        let range = it.value_range();
        Ok(Some((kind, self.data.slice_ref(&block[range]))))
    }
}

/// Iterates over a whole table.
#[derive(Debug)]
pub(crate) struct TableIter {
    table: Arc<Table>,
    block_idx: usize,
    block: Option<BlockIter>,
}

impl TableIter {
    pub(crate) fn new(table: Arc<Table>) -> Self {
        TableIter {
            table,
            block_idx: 0,
            block: None,
        }
    }

    /// Moves forward to the next non-empty block if the current one is done.
    fn skip_exhausted(&mut self) -> Result<()> {
        while self.block.as_ref().is_some_and(|b| !b.valid()) {
            self.block_idx += 1;
            if self.block_idx >= self.table.index.len() {
                self.block = None;
                return Ok(());
            }
            let mut b = self.table.block(self.block_idx)?;
            b.seek_to_first()
                .map_err(|e| self.table.bad(self.block_idx, e))?;
            self.block = Some(b);
        }
        Ok(())
    }
}

impl InternalIterator for TableIter {
    fn valid(&self) -> bool {
        self.block.as_ref().is_some_and(|b| b.valid())
    }

    fn key(&self) -> &[u8] {
        self.block.as_ref().map_or(&[], |b| b.key())
    }

    fn value(&self) -> Bytes {
        self.block.as_ref().map_or_else(Bytes::new, |b| b.value())
    }

    fn next(&mut self) -> Result<()> {
        if let Some(b) = self.block.as_mut() {
            let r = b.next();
            r.map_err(|e| self.table.bad(self.block_idx, e))?;
        }
        self.skip_exhausted()
    }

    fn seek(&mut self, target: &[u8]) -> Result<()> {
        self.block_idx = self.table.find_block(target);
        if self.block_idx >= self.table.index.len() {
            self.block = None;
            return Ok(());
        }
        let mut b = self.table.block(self.block_idx)?;
        b.seek(target)
            .map_err(|e| self.table.bad(self.block_idx, e))?;
        self.block = Some(b);
        self.skip_exhausted()
    }

    fn seek_to_first(&mut self) -> Result<()> {
        self.block_idx = 0;
        if self.table.index.is_empty() {
            self.block = None;
            return Ok(());
        }
        let mut b = self.table.block(0)?;
        b.seek_to_first().map_err(|e| self.table.bad(0, e))?;
        self.block = Some(b);
        self.skip_exhausted()
    }
}
