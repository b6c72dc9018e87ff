//! RocksDB (the `rocksdb` crate, built from source; cargo feature `rocksdb`).
//!
//! FAIR settings: WAL on. Unsynced runs write with `WriteOptions::sync =
//! false` (each write handed to the OS, no fsync: kv-engine's
//! `SyncMode::Never` class); `sync()` is `flush_wal(true)`. fillsync writes
//! with `sync = true` (RocksDB groups concurrent writers' fsyncs). Block
//! cache 64 MiB LRU, 10 bloom bits/key (as kv-engine's default; RocksDB's
//! default has none), compression off (kv-engine has none; values are
//! random); defaults otherwise (64 MiB memtable, 2 background jobs). Scans
//! use the raw iterator. Compaction: `compact_range` over everything, forcing
//! the bottommost level.

use std::path::Path;

use anyhow::Result;
use rocksdb::{
    BlockBasedOptions, BottommostLevelCompaction, Cache, CompactOptions, DB, DBCompressionType,
    Options, WriteOptions,
};

use super::{CACHE_BYTES, Durability, Engine};

pub struct Rocks {
    db: DB,
    write_opts: WriteOptions,
}

impl Rocks {
    pub fn open(dir: &Path, durability: Durability) -> Result<Self> {
        let cache = Cache::new_lru_cache(CACHE_BYTES);
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
        Ok(Rocks { db, write_opts })
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
}
