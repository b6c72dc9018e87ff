//! SQLite (bundled, via rusqlite).
//!
//! FAIR settings: `journal_mode=WAL` (SQLite's write-ahead log, the closest
//! match to an LSM's WAL), one table `kv(k BLOB PRIMARY KEY, v BLOB) WITHOUT
//! ROWID` (a clustered B-tree on the key, no separate rowid index), prepared
//! (cached) statements, and one autocommit transaction per put, as a
//! single-op call on the other engines is. Unsynced runs use
//! `synchronous=OFF` (each commit is written to the WAL file, never fsynced:
//! the same class as kv-engine's `SyncMode::Never`); `sync()` switches to
//! `synchronous=FULL` and runs `wal_checkpoint(FULL)`, which fsyncs. fillsync
//! uses `synchronous=FULL` (the WAL is fsynced at every commit). Page cache
//! 64 MiB (`cache_size=-65536`). Writers share one connection behind a mutex
//! (SQLite allows one writer; several connections would spin on
//! SQLITE_BUSY); readers take a connection of their own from a pool, so a
//! reader never waits for the writer (WAL mode). Compaction: checkpoint,
//! `VACUUM`, checkpoint(TRUNCATE).

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::Result;
use rusqlite::{Connection, OptionalExtension, params};

use super::{CACHE_BYTES, Durability, Engine};

pub struct Sqlite {
    path: PathBuf,
    writer: Mutex<Connection>,
    readers: Mutex<Vec<Connection>>,
}

fn connect(path: &Path, durability: Durability) -> Result<Connection> {
    let conn = Connection::open(path)?;
    let sync = match durability {
        Durability::Unsynced => "OFF",
        Durability::SyncEachWrite => "FULL",
    };
    let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
    anyhow::ensure!(mode.eq_ignore_ascii_case("wal"), "journal_mode is {mode}");
    conn.execute_batch(&format!(
        "PRAGMA synchronous={sync}; PRAGMA cache_size=-{};",
        CACHE_BYTES / 1024
    ))?;
    Ok(conn)
}

impl Sqlite {
    pub fn open(dir: &Path, durability: Durability) -> Result<Self> {
        let path = dir.join("bench.sqlite");
        let writer = connect(&path, durability)?;
        writer.execute_batch(
            "CREATE TABLE IF NOT EXISTS kv (k BLOB PRIMARY KEY, v BLOB NOT NULL) WITHOUT ROWID",
        )?;
        Ok(Sqlite {
            path,
            writer: Mutex::new(writer),
            readers: Mutex::new(Vec::new()),
        })
    }

    fn with_reader<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        let pooled = self.readers.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let conn = match pooled {
            Some(c) => c,
            None => connect(&self.path, Durability::Unsynced)?,
        };
        let result = f(&conn);
        self.readers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(conn);
        result
    }
}

impl Engine for Sqlite {
    fn put(&self, key: &[u8], value: &[u8]) -> Result<()> {
        let conn = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        conn.prepare_cached("INSERT OR REPLACE INTO kv (k, v) VALUES (?1, ?2)")?
            .execute(params![key, value])?;
        Ok(())
    }

    fn put_batch(&self, pairs: &[(&[u8], &[u8])]) -> Result<()> {
        let mut conn = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let tx = conn.transaction()?;
        {
            let mut stmt = tx.prepare_cached("INSERT OR REPLACE INTO kv (k, v) VALUES (?1, ?2)")?;
            for (k, v) in pairs {
                stmt.execute(params![k, v])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn get(&self, key: &[u8], out: &mut Vec<u8>) -> Result<bool> {
        self.with_reader(|conn| {
            let mut stmt = conn.prepare_cached("SELECT v FROM kv WHERE k = ?1")?;
            let found = stmt
                .query_row(params![key], |row| {
                    out.clear();
                    out.extend_from_slice(row.get_ref(0)?.as_blob()?);
                    Ok(())
                })
                .optional()?;
            Ok(found.is_some())
        })
    }

    fn scan_from(&self, start: &[u8], n: usize) -> Result<usize> {
        self.with_reader(|conn| {
            let mut stmt =
                conn.prepare_cached("SELECT k, v FROM kv WHERE k >= ?1 ORDER BY k LIMIT ?2")?;
            let mut rows = stmt.query(params![start, n as i64])?;
            let mut count = 0;
            while let Some(row) = rows.next()? {
                let k = row.get_ref(0)?.as_blob()?;
                let v = row.get_ref(1)?.as_blob()?;
                std::hint::black_box((k.len(), v.len()));
                count += 1;
            }
            Ok(count)
        })
    }

    fn sync(&self) -> Result<()> {
        let conn = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let old: i64 = conn.query_row("PRAGMA synchronous", [], |r| r.get(0))?;
        conn.execute_batch("PRAGMA synchronous=FULL")?;
        conn.query_row("PRAGMA wal_checkpoint(FULL)", [], |_| Ok(()))?;
        conn.execute_batch(&format!("PRAGMA synchronous={old}"))?;
        Ok(())
    }

    fn compact(&mut self) -> Result<bool> {
        // Pooled readers hold no transaction between calls, so VACUUM and
        // the truncating checkpoint are not blocked by them.
        let conn = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        conn.execute_batch("VACUUM")?;
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        Ok(true)
    }
}
