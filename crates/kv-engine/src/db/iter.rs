//! [`DbIterator`]: user-facing iteration over the merged sources.

use super::*;

/// `[prefix, next prefix)`; unbounded above when the prefix is all 0xff.
pub(super) fn prefix_bounds(prefix: &[u8]) -> OwnedBounds {
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
    pub(super) it: MergeIter,
    pub(super) seq: u64,
    pub(super) lower_excluded: Option<Vec<u8>>,
    pub(super) upper: Bound<Vec<u8>>,
    pub(super) last_key: Vec<u8>,
    pub(super) have_last: bool,
    pub(super) need_advance: bool,
    pub(super) done: bool,
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
