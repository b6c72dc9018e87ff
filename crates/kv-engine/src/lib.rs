//! `kv-engine`: an embeddable LSM-tree key-value storage engine.
//!
//! ```no_run
//! use kv_engine::{Db, WriteBatch};
//! # fn main() -> Result<(), kv_engine::Error> {
//! let db = Db::open("data/")?;
//! db.put(b"user:1", b"Jane")?;
//! assert_eq!(db.get(b"user:1")?.as_deref(), Some(&b"Jane"[..]));
//! let mut batch = WriteBatch::new();
//! batch.put(b"a", b"1");
//! batch.delete(b"user:1");
//! db.write(batch)?; // atomic, also across a crash
//! for item in db.scan(b"a".as_slice()..b"z".as_slice())? {
//!     let (key, value) = item?;
//!     println!("{key:?} = {value:?}");
//! }
//! # Ok(()) }
//! ```
//!
//! # Layout
//!
//! - `wal`: write-ahead log segments of checksummed commit groups (one per
//!   group commit) of CRC-checked records, and their replay (`wal::replay`);
//!   segments are reserved ahead with `fallocate` and written through a
//!   mapping, and an unwritten (zero) tail ends a segment.
//! - `memtable`: the in-memory sorted buffer (crossbeam-skiplist whose keys
//!   carry their values, carved from 1 MiB arena chunks).
//! - `sstable`: immutable sorted tables (data blocks with restart points whose
//!   key prefixes are packed in the block trailer, index block, bloom filter,
//!   checksummed footer), read through `mmap`. Data blocks start on 4 KiB
//!   page boundaries, and tables are written in 2 MiB chunks so that the
//!   kernel can cache and map them with 2 MiB pages
//!   ([`Options::block_align`], [`Options::huge_page_tables`]).
//! - `manifest` / `version`: the set of live tables as a log of edits with an
//!   atomically replaced `CURRENT` pointer.
//! - `compaction`: leveled background compaction.
//! - `db`: the [`Db`] handle that ties the parts together.
//!
//! On disk a database directory holds `LOCK`, `CURRENT`, `MANIFEST-NNNNNN`,
//! `NNNNNN.log` (one WAL segment per memtable) and `NNNNNN.sst` files.
//!
//! # Limits
//!
//! Keys and values are at most 4 GiB − 1 bytes each (in practice keep keys
//! small). Sequence numbers are 56 bits. There is no block cache: tables are
//! memory-mapped and the OS page cache serves reads. No compression.
#![deny(unsafe_code)]
#![deny(clippy::unwrap_used)]

mod batch;
mod coding;
mod compaction;
mod db;
mod error;
mod fault;
mod filename;
#[doc(hidden)]
pub mod fuzzing;
mod iterator;
mod key;
mod manifest;
mod memtable;
mod mmap;
mod options;
mod range;
mod record;
mod sstable;
mod stats;
mod version;
mod wal;

pub use batch::WriteBatch;
pub use db::{Db, DbIterator, Snapshot};
pub use error::{Error, Result};
pub use options::{Options, SyncMode};
pub use range::KeyRange;
pub use stats::{LevelStats, Stats};

#[doc = include_str!("../../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
