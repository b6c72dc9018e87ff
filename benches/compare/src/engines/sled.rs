//! sled 0.34 (log-structured B-tree).
//!
//! FAIR settings: defaults except a 64 MiB cache (default 1 GiB). Unsynced
//! runs keep sled's default background flush every 500 ms; sled buffers
//! writes in memory in between, so this is weaker than kv-engine's class (a
//! process crash loses up to 500 ms). `sync()` is `Db::flush`. fillsync calls
//! `flush()` after every insert (concurrent flushes may share a flush).
//! Caveat: on Linux sled 0.34 makes its log writes stable with
//! `sync_file_range`, which neither flushes the device's write cache nor the
//! file's metadata, so its "durable" writes are weaker than an fdatasync and
//! its fillsync can beat the raw fdatasync row. The fair alternative (an
//! extra fsync per write) is not sled's API, so it is left as is.
//! sled has no manual compaction (its segment cleaner runs by itself).

use std::path::Path;

use anyhow::Result;

use super::{CACHE_BYTES, Durability, Engine};

pub struct Sled {
    db: sled::Db,
    sync_each: bool,
}

impl Sled {
    pub fn open(dir: &Path, durability: Durability) -> Result<Self> {
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(CACHE_BYTES as u64)
            .open()?;
        Ok(Sled {
            db,
            sync_each: durability == Durability::SyncEachWrite,
        })
    }
}

impl Engine for Sled {
    fn put(&self, key: &[u8], value: &[u8]) -> Result<()> {
        self.db.insert(key, value)?;
        if self.sync_each {
            self.db.flush()?;
        }
        Ok(())
    }

    fn get(&self, key: &[u8], out: &mut Vec<u8>) -> Result<bool> {
        match self.db.get(key)? {
            Some(v) => {
                out.clear();
                out.extend_from_slice(&v);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    fn scan_from(&self, start: &[u8], n: usize) -> Result<usize> {
        let mut count = 0;
        for item in self.db.range(start..).take(n) {
            let (k, v) = item?;
            std::hint::black_box((k.len(), v.len()));
            count += 1;
        }
        Ok(count)
    }

    fn sync(&self) -> Result<()> {
        self.db.flush()?;
        Ok(())
    }

    fn compact(&mut self) -> Result<bool> {
        Ok(false)
    }
}
