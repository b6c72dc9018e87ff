//! [`Stats`]: counters and sizes reported by [`Db::stats`](crate::Db::stats).

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

/// Size of one level.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LevelStats {
    /// Number of tables.
    pub files: usize,
    /// Bytes in those tables.
    pub bytes: u64,
}

/// A point-in-time report of the database.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct Stats {
    /// The last sequence number visible to readers.
    pub sequence: u64,
    /// Approximate bytes in the active memtable.
    pub memtable_bytes: u64,
    /// Frozen memtables waiting to be flushed.
    pub immutable_memtables: usize,
    /// Tables per level, L0 first.
    pub levels: Vec<LevelStats>,
    /// Bytes in all live tables.
    pub total_sst_bytes: u64,
    /// Write batches committed (each `put`/`delete` is one).
    pub writes: u64,
    /// WAL appends; with group commit, fewer than `writes`.
    pub wal_writes: u64,
    /// WAL fsyncs.
    pub wal_syncs: u64,
    /// Point lookups.
    pub gets: u64,
    /// Tables whose bloom filter was consulted by a point lookup.
    pub bloom_checks: u64,
    /// Of those, tables the filter ruled out (reads saved).
    pub bloom_negatives: u64,
    /// Memtables flushed to L0.
    pub flushes: u64,
    /// Compactions run (trivial moves included).
    pub compactions: u64,
    /// Bytes read by compactions.
    pub compaction_bytes_read: u64,
    /// Bytes written by compactions.
    pub compaction_bytes_written: u64,
    /// Times a writer waited for a flush or compaction.
    pub write_stalls: u64,
    /// Times a writer was slowed down because L0 was piling up.
    pub write_slowdowns: u64,
    /// Snapshots currently held.
    pub live_snapshots: usize,
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "sequence            {}", self.sequence)?;
        writeln!(
            f,
            "memtable            {} bytes, {} immutable",
            self.memtable_bytes, self.immutable_memtables
        )?;
        writeln!(f, "level  files        bytes")?;
        for (i, l) in self.levels.iter().enumerate() {
            writeln!(f, "L{i:<5} {:>5} {:>12}", l.files, l.bytes)?;
        }
        writeln!(
            f,
            "total               {} bytes in tables",
            self.total_sst_bytes
        )?;
        writeln!(
            f,
            "writes              {} ({} WAL appends, {} fsyncs)",
            self.writes, self.wal_writes, self.wal_syncs
        )?;
        writeln!(
            f,
            "gets                {} (bloom: {} checks, {} negatives)",
            self.gets, self.bloom_checks, self.bloom_negatives
        )?;
        writeln!(
            f,
            "flushes             {}; compactions {} (read {} bytes, wrote {} bytes)",
            self.flushes,
            self.compactions,
            self.compaction_bytes_read,
            self.compaction_bytes_written
        )?;
        writeln!(
            f,
            "write stalls        {}; slowdowns {}",
            self.write_stalls, self.write_slowdowns
        )?;
        write!(f, "live snapshots      {}", self.live_snapshots)
    }
}

/// Counters updated on the hot paths.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) writes: AtomicU64,
    pub(crate) wal_writes: AtomicU64,
    pub(crate) wal_syncs: AtomicU64,
    pub(crate) gets: AtomicU64,
    pub(crate) bloom_checks: AtomicU64,
    pub(crate) bloom_negatives: AtomicU64,
    pub(crate) flushes: AtomicU64,
    pub(crate) compactions: AtomicU64,
    pub(crate) compaction_bytes_read: AtomicU64,
    pub(crate) compaction_bytes_written: AtomicU64,
    pub(crate) write_stalls: AtomicU64,
    pub(crate) write_slowdowns: AtomicU64,
}

/// Adds `n` to a counter; adding zero skips the atomic operation, which is
/// not free on the hot paths.
pub(crate) fn add(c: &AtomicU64, n: u64) {
    if n > 0 {
        c.fetch_add(n, Ordering::Relaxed);
    }
}

pub(crate) fn get(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}
