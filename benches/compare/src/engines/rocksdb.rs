//! RocksDB: the `rocksdb` crate 0.20 on the system library (Debian 12's
//! librocksdb 7.8.3, linked dynamically through `system-rocksdb/`; see the
//! README).
//!
//! FAIR settings: WAL on. Unsynced runs write with `WriteOptions::sync =
//! false` (RocksDB's default: each write group is appended to the WAL file
//! with a `write` system call, no fsync, the same class as kv-engine's
//! `SyncMode::Never`; `manual_wal_flush` stays off, so nothing is held in a
//! user-space buffer); `sync()` is `flush_wal(true)`, which fsyncs the WAL.
//! fillsync writes with `sync = true`: the WAL is fdatasynced before the put
//! returns (`use_fsync` stays off), and RocksDB groups concurrent writers
//! behind one leader's sync (group commit, as kv-engine's). Block cache
//! 64 MiB LRU (default 32 MiB in 7.x), full-filter blooms of 10 bits/key (as
//! kv-engine's default; RocksDB's default has none), compression off
//! (kv-engine has none; values are random); defaults otherwise: 64 MiB
//! memtable (kv-engine and fjall use 16 MiB), 2 background jobs, 4 KiB
//! blocks, index and filter blocks held outside the block cache, checksums
//! verified on every read. Gets use `get_pinned` (no copy inside RocksDB),
//! scans the raw iterator. Compaction: flush, then `compact_range` over
//! everything with the bottommost level forced, so every table is rewritten
//! into one level.

use std::path::Path;

use anyhow::Result;
use rocksdb::{
    BlockBasedOptions, BottommostLevelCompaction, Cache, CompactOptions, DB, DBCompressionType,
    Options, WriteOptions,
};

use super::{CACHE_BYTES, Durability, Engine};

pub struct Rocks {
    db: DB,
    cache: Cache,
    write_opts: WriteOptions,
}

/// The version of the RocksDB library the bindings were built against.
pub fn version() -> &'static str {
    librocksdb_sys::SYSTEM_ROCKSDB_VERSION
}

impl Rocks {
    pub fn open(dir: &Path, durability: Durability) -> Result<Self> {
        let cache = Cache::new_lru_cache(CACHE_BYTES)?;
        let mut table = BlockBasedOptions::default();
        table.set_block_cache(&cache);
        table.set_bloom_filter(10.0, false);
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.set_compression_type(DBCompressionType::None);
        opts.set_block_based_table_factory(&table);
        let db = DB::open(&opts, dir)?;
        let mut write_opts = WriteOptions::default();
        write_opts.set_sync(durability == Durability::SyncEachWrite);
        Ok(Rocks {
            db,
            cache,
            write_opts,
        })
    }

    fn int_property(&self, name: &str) -> u64 {
        self.db.property_int_value(name).ok().flatten().unwrap_or(0)
    }
}

impl Engine for Rocks {
    fn put(&self, key: &[u8], value: &[u8]) -> Result<()> {
        Ok(self.db.put_opt(key, value, &self.write_opts)?)
    }

    fn get(&self, key: &[u8], out: &mut Vec<u8>) -> Result<bool> {
        match self.db.get_pinned(key)? {
            Some(v) => {
                out.clear();
                out.extend_from_slice(&v);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    fn scan_from(&self, start: &[u8], n: usize) -> Result<usize> {
        let mut it = self.db.raw_iterator();
        it.seek(start);
        let mut count = 0;
        while count < n && it.valid() {
            if let (Some(k), Some(v)) = (it.key(), it.value()) {
                std::hint::black_box((k.len(), v.len()));
            }
            count += 1;
            it.next();
        }
        it.status()?;
        Ok(count)
    }

    fn sync(&self) -> Result<()> {
        Ok(self.db.flush_wal(true)?)
    }

    fn compact(&mut self) -> Result<bool> {
        self.db.flush()?;
        let mut opts = CompactOptions::default();
        opts.set_bottommost_level_compaction(BottommostLevelCompaction::Force);
        self.db.compact_range_opt::<&[u8], &[u8]>(None, None, &opts);
        Ok(true)
    }

    fn shape(&self) -> Option<String> {
        let levels: Vec<String> = (0..7)
            .filter_map(|l| {
                let files = self.int_property(&format!("rocksdb.num-files-at-level{l}"));
                (files > 0).then(|| format!("L{l}: {files} files"))
            })
            .collect();
        let levels = if levels.is_empty() {
            "no tables".to_string()
        } else {
            levels.join(", ")
        };
        Some(format!(
            "RocksDB {}; {levels}; sst {:.1} MiB; memtables {:.1} MiB ({} immutable); compaction pending {}; block cache {:.1} MiB used",
            version(),
            self.int_property("rocksdb.total-sst-files-size") as f64 / 1048576.0,
            self.int_property("rocksdb.cur-size-all-mem-tables") as f64 / 1048576.0,
            self.int_property("rocksdb.num-immutable-mem-table"),
            self.int_property("rocksdb.compaction-pending"),
            self.cache.get_usage() as f64 / 1048576.0,
        ))
    }
}
