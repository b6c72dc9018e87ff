//! Internal iterators over internal keys, and their merge.

use std::cmp::Ordering;
use std::ops::Bound;
use std::sync::Arc;

use bytes::Bytes;

use crate::error::Result;
use crate::key::{self, InternalKey};
use crate::memtable::MemTable;
use crate::sstable::TableIter;
use crate::version::FileHandle;

/// A cursor over entries sorted by internal key.
pub(crate) trait InternalIterator: Send {
    fn valid(&self) -> bool;
    /// Current internal key; only meaningful when `valid`.
    fn key(&self) -> &[u8];
    fn value(&self) -> Bytes;
    fn next(&mut self) -> Result<()>;
    /// Positions at the first entry >= `target`.
    fn seek(&mut self, target: &[u8]) -> Result<()>;
    fn seek_to_first(&mut self) -> Result<()>;
}

/// Entries copied per refill: small right after a seek (a short scan should
/// not pay for a long one), larger once the caller keeps going.
const MEM_FIRST_CHUNK: usize = 16;
const MEM_CHUNK: usize = 256;

/// Iterates a memtable by copying small chunks of it (cheap `Bytes` clones),
/// so no borrow of the skiplist outlives a call.
pub(crate) struct MemIter {
    mem: Arc<MemTable>,
    buf: Vec<(Bytes, Bytes)>,
    pos: usize,
}

impl MemIter {
    pub(crate) fn new(mem: Arc<MemTable>) -> Self {
        MemIter {
            mem,
            buf: Vec::new(),
            pos: 0,
        }
    }

    fn fill(&mut self, from: Bound<&InternalKey>, max: usize) {
        self.mem.chunk(from, max, &mut self.buf);
        self.pos = 0;
    }
}

impl InternalIterator for MemIter {
    fn valid(&self) -> bool {
        self.pos < self.buf.len()
    }
    fn key(&self) -> &[u8] {
        self.buf.get(self.pos).map_or(&[], |e| &e.0)
    }
    fn value(&self) -> Bytes {
        self.buf
            .get(self.pos)
            .map_or_else(Bytes::new, |e| e.1.clone())
    }
    fn next(&mut self) -> Result<()> {
        self.pos += 1;
        if self.pos == self.buf.len() && self.buf.len() >= MEM_FIRST_CHUNK {
            let last = InternalKey::new(self.buf[self.pos - 1].0.clone());
            self.fill(Bound::Excluded(&last), MEM_CHUNK);
        }
        Ok(())
    }
    fn seek(&mut self, target: &[u8]) -> Result<()> {
        let t = InternalKey::new(Bytes::copy_from_slice(target));
        self.fill(Bound::Included(&t), MEM_FIRST_CHUNK);
        Ok(())
    }
    fn seek_to_first(&mut self) -> Result<()> {
        self.fill(Bound::Unbounded, MEM_FIRST_CHUNK);
        Ok(())
    }
}

/// Iterates a sorted run of non-overlapping tables (one level >= 1).
pub(crate) struct LevelIter {
    files: Vec<Arc<FileHandle>>,
    idx: usize,
    cur: Option<TableIter>,
    streaming: bool,
}

impl LevelIter {
    pub(crate) fn new(files: Vec<Arc<FileHandle>>) -> Self {
        LevelIter {
            files,
            idx: 0,
            cur: None,
            streaming: false,
        }
    }

    /// A level read once from start to end; see [`TableIter::streaming`].
    pub(crate) fn streaming(files: Vec<Arc<FileHandle>>) -> Self {
        LevelIter {
            streaming: true,
            ..LevelIter::new(files)
        }
    }

    fn open(&mut self, idx: usize) {
        self.idx = idx;
        let streaming = self.streaming;
        self.cur = self.files.get(idx).map(|f| {
            if streaming {
                TableIter::streaming(f.table.clone())
            } else {
                TableIter::new(f.table.clone())
            }
        });
    }

    fn skip_empty(&mut self) -> Result<()> {
        while self.cur.as_ref().is_some_and(|c| !c.valid()) {
            self.open(self.idx + 1);
            if let Some(c) = self.cur.as_mut() {
                c.seek_to_first()?;
            }
        }
        Ok(())
    }
}

impl InternalIterator for LevelIter {
    fn valid(&self) -> bool {
        self.cur.as_ref().is_some_and(|c| c.valid())
    }
    fn key(&self) -> &[u8] {
        self.cur.as_ref().map_or(&[], |c| c.key())
    }
    fn value(&self) -> Bytes {
        self.cur.as_ref().map_or_else(Bytes::new, |c| c.value())
    }
    fn next(&mut self) -> Result<()> {
        if let Some(c) = self.cur.as_mut() {
            c.next()?;
        }
        self.skip_empty()
    }
    fn seek(&mut self, target: &[u8]) -> Result<()> {
        let i = self
            .files
            .partition_point(|f| key::compare(&f.meta.largest, target) == Ordering::Less);
        self.open(i);
        if let Some(c) = self.cur.as_mut() {
            c.seek(target)?;
        }
        self.skip_empty()
    }
    fn seek_to_first(&mut self) -> Result<()> {
        self.open(0);
        if let Some(c) = self.cur.as_mut() {
            c.seek_to_first()?;
        }
        self.skip_empty()
    }
}

/// Merges children into one sorted stream. Internal keys are unique across
/// children (every write has its own sequence number).
pub(crate) struct MergeIter {
    children: Vec<Box<dyn InternalIterator>>,
    current: Option<usize>,
}

impl MergeIter {
    pub(crate) fn new(children: Vec<Box<dyn InternalIterator>>) -> Self {
        MergeIter {
            children,
            current: None,
        }
    }

    fn pick(&mut self) {
        let mut best: Option<usize> = None;
        for (i, c) in self.children.iter().enumerate() {
            if !c.valid() {
                continue;
            }
            best = match best {
                Some(b) if key::compare(self.children[b].key(), c.key()) != Ordering::Greater => {
                    Some(b)
                }
                _ => Some(i),
            };
        }
        self.current = best;
    }
}

impl InternalIterator for MergeIter {
    fn valid(&self) -> bool {
        self.current.is_some()
    }
    fn key(&self) -> &[u8] {
        self.current.map_or(&[], |i| self.children[i].key())
    }
    fn value(&self) -> Bytes {
        self.current
            .map_or_else(Bytes::new, |i| self.children[i].value())
    }
    fn next(&mut self) -> Result<()> {
        if let Some(i) = self.current {
            self.children[i].next()?;
        }
        self.pick();
        Ok(())
    }
    fn seek(&mut self, target: &[u8]) -> Result<()> {
        for c in &mut self.children {
            c.seek(target)?;
        }
        self.pick();
        Ok(())
    }
    fn seek_to_first(&mut self) -> Result<()> {
        for c in &mut self.children {
            c.seek_to_first()?;
        }
        self.pick();
        Ok(())
    }
}
