//! kv-engine, the engine under test.
//!
//! FAIR settings: `Options::default()` except `sync`. Unsynced runs use
//! `SyncMode::Never` (WAL on: each write is handed to the OS with one
//! `write`, no fsync); `sync()` is `Db::flush`, the only public way to make
//! unsynced writes durable. fillsync uses `SyncMode::Always` (fdatasync
//! before a write returns; concurrent writers share fsyncs). kv-engine has no
//! block cache setting (tables are mmapped, so the OS page cache is its
//! cache) and no compression. Defaults: 16 MiB memtable, 10 bloom bits/key.

use std::path::Path;

use anyhow::Result;
use kv_engine::{Db, Options, SyncMode};

use super::{Durability, Engine};

pub struct KvEngine {
    db: Db,
}

impl KvEngine {
    pub fn open(dir: &Path, durability: Durability) -> Result<Self> {
        let sync = match durability {
            Durability::Unsynced => SyncMode::Never,
            Durability::SyncEachWrite => SyncMode::Always,
        };
        let db = Db::open_with(
            dir,
            Options {
                sync,
                ..Options::default()
            },
        )?;
        Ok(KvEngine { db })
    }
}

impl Engine for KvEngine {
    fn put(&self, key: &[u8], value: &[u8]) -> Result<()> {
        Ok(self.db.put(key, value)?)
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
        for item in self.db.scan(start..)?.take(n) {
            let (k, v) = item?;
            std::hint::black_box((k.len(), v.len()));
            count += 1;
        }
        Ok(count)
    }

    fn sync(&self) -> Result<()> {
        Ok(self.db.flush()?)
    }

    fn compact(&mut self) -> Result<bool> {
        self.db.compact()?;
        Ok(true)
    }

    fn shape(&self) -> Option<String> {
        let s = self.db.stats();
        let levels: Vec<String> = s
            .levels
            .iter()
            .enumerate()
            .filter(|(_, l)| l.files > 0)
            .map(|(i, l)| {
                format!(
                    "L{i}: {} files {:.1} MiB",
                    l.files,
                    l.bytes as f64 / 1048576.0
                )
            })
            .collect();
        Some(format!(
            "{}; memtable {:.1} MiB, {} frozen; flushes {}, compactions {}, stalls {}, slowdowns {}, bloom {}/{} negative; {} writes in {} WAL syncs",
            levels.join(", "),
            s.memtable_bytes as f64 / 1048576.0,
            s.immutable_memtables,
            s.flushes,
            s.compactions,
            s.write_stalls,
            s.write_slowdowns,
            s.bloom_negatives,
            s.bloom_checks,
            s.writes,
            s.wal_syncs,
        ))
    }
}
