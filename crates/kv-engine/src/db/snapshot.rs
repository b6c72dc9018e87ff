//! [`Snapshot`]: a registered point-in-time view.

use std::sync::Arc;

use super::*;

/// A consistent read-only view of the database as of the moment it was taken.
pub struct Snapshot {
    pub(super) inner: Arc<Inner>,
    pub(super) seq: u64,
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
