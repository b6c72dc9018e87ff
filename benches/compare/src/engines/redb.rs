//! redb 2.x (copy-on-write B-tree, no write-ahead log).
//!
//! FAIR settings: one write transaction per put, one read transaction per get
//! or scan (each call sees the latest commit, like a single-op call on the
//! other engines). redb has no unsynced-WAL mode: unsynced runs commit with
//! `Durability::None` (not persisted until a later durable commit, and weaker
//! than a WAL: a process crash loses them too), and `sync()` commits an empty
//! transaction with `Durability::Immediate`. fillsync commits every put with
//! `Durability::Immediate` (redb serializes writers, no group commit).
//! (`Durability::Eventual` is the same fsync as Immediate on Linux.)
//! Cache 64 MiB (default 1 GiB, larger than the others). Compaction:
//! `Database::compact`.

use std::path::Path;

use anyhow::Result;
use redb::{Builder, Database, TableDefinition};

use super::{CACHE_BYTES, Durability, Engine};

const TABLE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("bench");

pub struct Redb {
    db: Database,
    durability: redb::Durability,
}

impl Redb {
    pub fn open(dir: &Path, durability: Durability) -> Result<Self> {
        let db = Builder::new()
            .set_cache_size(CACHE_BYTES)
            .create(dir.join("bench.redb"))?;
        let tx = db.begin_write()?;
        tx.open_table(TABLE)?;
        tx.commit()?;
        let durability = match durability {
            Durability::Unsynced => redb::Durability::None,
            Durability::SyncEachWrite => redb::Durability::Immediate,
        };
        Ok(Redb { db, durability })
    }
}

impl Engine for Redb {
    fn put(&self, key: &[u8], value: &[u8]) -> Result<()> {
        let mut tx = self.db.begin_write()?;
        tx.set_durability(self.durability);
        tx.open_table(TABLE)?.insert(key, value)?;
        tx.commit()?;
        Ok(())
    }

    fn put_batch(&self, pairs: &[(&[u8], &[u8])]) -> Result<()> {
        let mut tx = self.db.begin_write()?;
        tx.set_durability(self.durability);
        {
            let mut table = tx.open_table(TABLE)?;
            for (k, v) in pairs {
                table.insert(*k, *v)?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn get(&self, key: &[u8], out: &mut Vec<u8>) -> Result<bool> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(TABLE)?;
        match table.get(key)? {
            Some(v) => {
                out.clear();
                out.extend_from_slice(v.value());
                Ok(true)
            }
            None => Ok(false),
        }
    }

    fn scan_from(&self, start: &[u8], n: usize) -> Result<usize> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(TABLE)?;
        let mut count = 0;
        for item in table.range(start..)?.take(n) {
            let (k, v) = item?;
            std::hint::black_box((k.value().len(), v.value().len()));
            count += 1;
        }
        Ok(count)
    }

    fn sync(&self) -> Result<()> {
        let mut tx = self.db.begin_write()?;
        tx.set_durability(redb::Durability::Immediate);
        tx.commit()?;
        Ok(())
    }

    fn compact(&mut self) -> Result<bool> {
        self.db.compact()?;
        Ok(true)
    }
}
