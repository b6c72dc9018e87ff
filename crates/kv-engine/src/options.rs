//! Tuning knobs of a [`Db`](crate::Db).

use crate::error::{Error, Result};

/// When a write is made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyncMode {
    /// A write returns only after the write-ahead log is fsynced: it survives
    /// SIGKILL and power loss. Concurrent writers share fsyncs (group commit).
    #[default]
    Always,
    /// A write returns once the OS has the bytes (no fsync): it survives SIGKILL
    /// of the process but not power loss.
    Never,
}

/// Options for [`Db::open_with`](crate::Db::open_with).
#[derive(Debug, Clone)]
pub struct Options {
    /// Durability of each write.
    pub sync: SyncMode,
    /// Create the directory and a new database when none exists (default true).
    pub create_if_missing: bool,
    /// Bytes a memtable may hold before it is frozen and flushed.
    pub memtable_size: usize,
    /// Frozen memtables waiting for flush before writers stall.
    pub max_immutable_memtables: usize,
    /// Target size of an SSTable data block, in bytes.
    pub block_size: usize,
    /// Start each data block on a 4 KiB boundary and fill it only up to the
    /// end of its last page (`block_size` rounded up to whole pages), so that
    /// a point lookup touches one memory page of data instead of two; costs
    /// about 2-3% of space with 100-byte values (default true). Applies only
    /// when `block_size` is at least 4 KiB.
    pub block_align: bool,
    /// Keys between restart points in a data block.
    pub block_restart_interval: usize,
    /// Write table files in whole, aligned 2 MiB chunks and advise their
    /// mappings for huge pages (default true). Where the kernel keeps file
    /// data in large folios (ext4 and xfs on Linux 6.x), tables are then
    /// cached and mapped with 2 MiB pages and a point lookup skips most page
    /// table walks (readbench, 1M keys: 1.42M -> 1.66M gets/s). On a virtual
    /// machine that hands freed memory back to its host (virtio-balloon free
    /// page reporting), each new 2 MiB page costs a fault and zeroing in the
    /// host: writing tables took 3-4x the kernel time there (a 1M-key fill
    /// plus overwrite: 1.3-1.5 s -> 2.4-2.6 s of system time, 2-9% fewer
    /// writes per second); turn this off for write-heavy work on such a
    /// machine. Either way the files are the same bytes.
    pub huge_page_tables: bool,
    /// Bloom filter bits per key (0 disables bloom filters).
    pub bloom_bits_per_key: usize,
    /// Target size of an SSTable written by compaction.
    pub target_file_size: u64,
    /// Number of L0 files that triggers a compaction into L1.
    pub l0_compaction_trigger: usize,
    /// Number of L0 files at which each write is delayed slightly.
    pub l0_slowdown_trigger: usize,
    /// Number of L0 files at which writes wait for compaction.
    pub l0_stop_trigger: usize,
    /// Target total size of level 1.
    pub level_base_bytes: u64,
    /// Each level below L1 targets this many times the size of the one above.
    pub level_multiplier: u64,
    /// Number of levels (L0 included).
    pub num_levels: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            sync: SyncMode::Always,
            create_if_missing: true,
            memtable_size: 16 << 20,
            max_immutable_memtables: 2,
            block_size: 4096,
            block_align: true,
            block_restart_interval: 4,
            huge_page_tables: true,
            bloom_bits_per_key: 10,
            target_file_size: 64 << 20,
            l0_compaction_trigger: 4,
            l0_slowdown_trigger: 12,
            l0_stop_trigger: 20,
            level_base_bytes: 256 << 20,
            level_multiplier: 10,
            num_levels: 7,
        }
    }
}

impl Options {
    /// Checks that the options are consistent.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] naming the offending option.
    pub fn validate(&self) -> Result<()> {
        let bad = |what: &str| Err(Error::InvalidArgument(what.to_string()));
        if self.memtable_size < 1024 {
            return bad("memtable_size must be at least 1 KiB");
        }
        if self.max_immutable_memtables == 0 {
            return bad("max_immutable_memtables must be at least 1");
        }
        if self.block_size < 64 || self.block_size > (1 << 30) {
            return bad("block_size must be between 64 bytes and 1 GiB");
        }
        if self.block_restart_interval == 0 {
            return bad("block_restart_interval must be at least 1");
        }
        if self.bloom_bits_per_key > 64 {
            return bad("bloom_bits_per_key must be at most 64");
        }
        if self.target_file_size < 1024 {
            return bad("target_file_size must be at least 1 KiB");
        }
        if self.l0_compaction_trigger == 0 {
            return bad("l0_compaction_trigger must be at least 1");
        }
        if self.l0_slowdown_trigger < self.l0_compaction_trigger
            || self.l0_stop_trigger < self.l0_slowdown_trigger
        {
            return bad("need l0_compaction_trigger <= l0_slowdown_trigger <= l0_stop_trigger");
        }
        if self.level_base_bytes < 1024 || self.level_multiplier < 2 {
            return bad("level_base_bytes must be >= 1 KiB and level_multiplier >= 2");
        }
        if !(2..=16).contains(&self.num_levels) {
            return bad("num_levels must be between 2 and 16");
        }
        Ok(())
    }

    /// Target size of level `level` (>= 1).
    pub(crate) fn level_target(&self, level: usize) -> u64 {
        let mut t = self.level_base_bytes;
        for _ in 1..level {
            t = t.saturating_mul(self.level_multiplier);
        }
        t
    }
}
