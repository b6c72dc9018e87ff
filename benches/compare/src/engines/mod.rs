//! The engines under comparison behind one small trait, one file each.
//!
//! Every file states, next to its `open`, the settings used and why they are
//! the fair counterpart of kv-engine's: the same durability class for a run
//! (WAL on but unsynced for the fill workloads, every write durable before it
//! returns for fillsync), a 64 MiB cache where the engine has a cache
//! setting, and no compression where the engine compresses (kv-engine does
//! not, and the values are random bytes anyway).

use std::path::Path;

use anyhow::Result;

mod btree;
mod fjall;
mod kv;
mod redb;
pub mod rocksdb;
mod sled;
mod sqlite;

/// Durability of each write for one engine instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Write-ahead log on, no fsync per write; `Engine::sync` once at the end.
    Unsynced,
    /// Every write is durable (fsynced) before it returns.
    SyncEachWrite,
}

/// Cache size handed to every engine that has a cache setting.
pub const CACHE_BYTES: usize = 64 << 20;

/// One key-value engine, shared by reference between benchmark threads.
pub trait Engine: Send + Sync {
    /// Sets `key` to `value` in one single-operation call.
    fn put(&self, key: &[u8], value: &[u8]) -> Result<()>;
    /// Sets many pairs at once, as fast as the engine allows (one transaction
    /// where it has them). Only used, untimed, to finish loading a database
    /// when a timed single-op workload ran out of its time budget.
    fn put_batch(&self, pairs: &[(&[u8], &[u8])]) -> Result<()> {
        for (k, v) in pairs {
            self.put(k, v)?;
        }
        Ok(())
    }
    /// Copies the value of `key` into `out`; false when absent.
    fn get(&self, key: &[u8], out: &mut Vec<u8>) -> Result<bool>;
    /// Positions at the first key >= `start` and reads up to `n` pairs;
    /// returns how many it read.
    fn scan_from(&self, start: &[u8], n: usize) -> Result<usize>;
    /// Makes every write so far durable, the engine's cheapest way.
    fn sync(&self) -> Result<()>;
    /// Runs a full manual compaction; false when the engine has none.
    fn compact(&mut self) -> Result<bool>;
    /// A one-line description of the engine's shape (tables per level and
    /// such), for diagnosing a result; printed to stderr.
    fn shape(&self) -> Option<String> {
        None
    }
}

/// The engines this binary can run, in table order.
pub fn all() -> Vec<&'static str> {
    vec![
        "kv-engine",
        "fjall",
        "redb",
        "sled",
        "sqlite",
        "rocksdb",
        "btreemap",
    ]
}

/// Whether `name` is a real peer (the in-memory map is only a reference).
pub fn is_peer(name: &str) -> bool {
    name != "kv-engine" && name != "btreemap"
}

/// Opens engine `name` in the empty directory `dir`.
///
/// # Errors
///
/// Unknown engine names and the engine's own open errors.
pub fn open(name: &str, dir: &Path, durability: Durability) -> Result<Box<dyn Engine>> {
    Ok(match name {
        "kv-engine" => Box::new(kv::KvEngine::open(dir, durability)?),
        "fjall" => Box::new(fjall::Fjall::open(dir, durability)?),
        "redb" => Box::new(redb::Redb::open(dir, durability)?),
        "sled" => Box::new(sled::Sled::open(dir, durability)?),
        "sqlite" => Box::new(sqlite::Sqlite::open(dir, durability)?),
        "rocksdb" => Box::new(rocksdb::Rocks::open(dir, durability)?),
        "btreemap" => Box::new(btree::BTree::default()),
        other => anyhow::bail!("unknown engine {other:?} (known: {})", all().join(",")),
    })
}
