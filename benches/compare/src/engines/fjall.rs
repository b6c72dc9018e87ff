//! fjall 2.x (LSM-tree).
//!
//! FAIR settings: one keyspace with one partition. Unsynced runs keep fjall's
//! default `manual_journal_persist(false)`: each insert is written to the
//! journal and flushed to the OS (`PersistMode::Buffer`), no fsync, the same
//! class as kv-engine's `SyncMode::Never`; `sync()` is
//! `persist(PersistMode::SyncAll)`. fillsync calls
//! `persist(PersistMode::SyncData)` (fdatasync) after every insert; fjall has
//! no group commit of its own. Cache 64 MiB (default 32 MiB), compression off
//! (kv-engine has none; values are random); defaults otherwise (64 MiB write
//! buffer, 16 MiB memtable, 10 bloom bits/key). Compaction: `major_compact` on the partition.

use std::path::Path;

use anyhow::Result;
use fjall::{
    CompressionType, Config, Keyspace, PartitionCreateOptions, PartitionHandle, PersistMode,
};

use super::{CACHE_BYTES, Durability, Engine};

pub struct Fjall {
    keyspace: Keyspace,
    part: PartitionHandle,
    sync_each: bool,
}

impl Fjall {
    pub fn open(dir: &Path, durability: Durability) -> Result<Self> {
        let keyspace = Config::new(dir).cache_size(CACHE_BYTES as u64).open()?;
        let part = keyspace.open_partition(
            "bench",
            PartitionCreateOptions::default().compression(CompressionType::None),
        )?;
        Ok(Fjall {
            keyspace,
            part,
            sync_each: durability == Durability::SyncEachWrite,
        })
    }
}

impl Engine for Fjall {
    fn put(&self, key: &[u8], value: &[u8]) -> Result<()> {
        self.part.insert(key, value)?;
        if self.sync_each {
            self.keyspace.persist(PersistMode::SyncData)?;
        }
        Ok(())
    }

    fn get(&self, key: &[u8], out: &mut Vec<u8>) -> Result<bool> {
        match self.part.get(key)? {
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
        for item in self.part.range(start..).take(n) {
            let (k, v) = item?;
            std::hint::black_box((k.len(), v.len()));
            count += 1;
        }
        Ok(count)
    }

    fn sync(&self) -> Result<()> {
        Ok(self.keyspace.persist(PersistMode::SyncAll)?)
    }

    fn compact(&mut self) -> Result<bool> {
        self.part.major_compact()?;
        Ok(true)
    }
}
