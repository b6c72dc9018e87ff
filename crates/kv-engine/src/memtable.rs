//! The memtable: a concurrent skiplist of internal keys.
//!
//! One writer at a time inserts (the write leader); any number of readers
//! look up and iterate concurrently without locks.

use std::ops::Bound;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use crossbeam_skiplist::SkipMap;

use crate::key::{self, InternalKey, Kind};

/// Per-entry overhead charged against the memtable budget (skiplist node,
/// two `Bytes` handles).
const ENTRY_OVERHEAD: usize = 64;

/// An in-memory sorted buffer of recent writes, backed by one WAL segment.
#[derive(Debug)]
pub struct MemTable {
    map: SkipMap<InternalKey, Bytes>,
    size: AtomicUsize,
    /// The number of the WAL segment holding this memtable's writes.
    wal_number: u64,
}

impl MemTable {
    pub(crate) fn new(wal_number: u64) -> Self {
        MemTable {
            map: SkipMap::new(),
            size: AtomicUsize::new(0),
            wal_number,
        }
    }

    pub(crate) fn wal_number(&self) -> u64 {
        self.wal_number
    }

    pub(crate) fn insert(&self, user_key: &[u8], seq: u64, kind: Kind, value: &[u8]) {
        let ikey = key::make(user_key, seq, kind);
        self.size
            .fetch_add(ikey.len() + value.len() + ENTRY_OVERHEAD, Ordering::Relaxed);
        self.map.insert(
            InternalKey::new(Bytes::from(ikey)),
            Bytes::copy_from_slice(value),
        );
    }

    /// The newest entry for the user key of `probe` (a lookup key from
    /// [`key::lookup`]) visible at its sequence: `Some(Some(value))` for a
    /// put, `Some(None)` for a delete, `None` if the memtable has no such entry.
    pub(crate) fn get(&self, probe: &InternalKey) -> Option<Option<Bytes>> {
        let user_key = key::user_key(probe.bytes());
        let entry = self.map.lower_bound(Bound::Included(probe))?;
        let (uk, _, kind) = key::parse(entry.key().bytes())?;
        if uk != user_key {
            return None;
        }
        Some(match kind {
            Kind::Put => Some(entry.value().clone()),
            Kind::Delete => None,
        })
    }

    /// Approximate bytes used.
    pub fn approximate_size(&self) -> usize {
        self.size.load(Ordering::Relaxed)
    }

    /// True when nothing was inserted.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Entries `>= from` (an internal key), in order, at most `max` of them.
    /// Used by iterators to refill a small buffer without holding borrows.
    pub(crate) fn chunk(
        &self,
        from: Bound<&InternalKey>,
        max: usize,
        out: &mut Vec<(Bytes, Bytes)>,
    ) {
        out.clear();
        for e in self.map.range((from, Bound::Unbounded)).take(max) {
            out.push((e.key().bytes().clone(), e.value().clone()));
        }
    }

    /// All entries in order (for flushing).
    pub(crate) fn for_each(
        &self,
        mut f: impl FnMut(&[u8], &[u8]) -> crate::Result<()>,
    ) -> crate::Result<()> {
        for e in self.map.iter() {
            f(e.key().bytes(), e.value())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn get_sees_newest_visible_version() {
        let m = MemTable::new(1);
        m.insert(b"k", 1, Kind::Put, b"v1");
        m.insert(b"k", 3, Kind::Delete, b"");
        m.insert(b"k", 5, Kind::Put, b"v5");
        m.insert(b"ka", 2, Kind::Put, b"other");
        let get = |k: &[u8], seq| m.get(&InternalKey::new(Bytes::from(key::lookup(k, seq))));
        assert_eq!(get(b"k", 0), None);
        assert_eq!(get(b"k", 2), Some(Some(Bytes::from_static(b"v1"))));
        assert_eq!(get(b"k", 4), Some(None));
        assert_eq!(get(b"k", 9), Some(Some(Bytes::from_static(b"v5"))));
        assert_eq!(get(b"j", 9), None);
    }
}
