//! Entry points for the fuzz targets in `fuzz/`: the decoders of on-disk
//! bytes (WAL segments, manifests, tables), reached through the same
//! functions recovery and reads use, without opening a whole [`crate::Db`].
//! Not a stable interface.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;

use crate::batch::{self, WriteBatch};
use crate::error::Result;
use crate::iterator::InternalIterator;
use crate::key::{self, Kind};
use crate::manifest::{self, Manifest};
use crate::options::Options;
use crate::record;
use crate::sstable::{Table, TableBuilder, TableIter};

pub use crate::manifest::VersionEdit;
pub use crate::sstable::TableMeta;

/// One operation of a replayed write batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Op {
    /// A put (else a delete).
    pub put: bool,
    /// The user key.
    pub key: Vec<u8>,
    /// The value (empty for a delete).
    pub value: Vec<u8>,
}

/// A replayed write batch: its first sequence number and its operations.
pub type Batch = (u64, Vec<Op>);

/// Replays the WAL segment at `path` as recovery does (cutting a torn tail
/// off the file when `last_segment`), and returns its batches.
///
/// # Errors
///
/// What recovery reports for the segment.
pub fn replay_wal(path: &Path, last_segment: bool) -> Result<Vec<Batch>> {
    let mut out = Vec::new();
    crate::wal::replay(path, last_segment, &mut None, |seq, ops| {
        let ops = ops
            .iter()
            .map(|op| Op {
                put: op.kind == Kind::Put,
                key: op.key.to_vec(),
                value: op.value.to_vec(),
            })
            .collect();
        out.push((seq, ops));
        Ok(())
    })?;
    Ok(out)
}

/// The bytes of a WAL segment holding `batches`, one commit group each,
/// framed as the write path frames them (checksum seed `seed`).
#[must_use]
pub fn encode_wal(batches: &[Batch]) -> Vec<u8> {
    let groups: Vec<Vec<u8>> = batches
        .iter()
        .map(|(seq, ops)| {
            let mut b = WriteBatch::new();
            for op in ops {
                if op.put {
                    b.put(&op.key, &op.value);
                } else {
                    b.delete(&op.key);
                }
            }
            let mut payload = Vec::new();
            batch::encode_wal_payload(&mut payload, *seq, &b);
            let mut body = Vec::new();
            record::encode(&mut body, &payload);
            body
        })
        .collect();
    crate::wal::encode_segment(0x5eed_f00d, &groups)
}

/// Recomputes the checksums of a WAL segment in the commit-group layout
/// (header record, group headers, group bodies and the records in them),
/// with `repair_records` fixing the records of a byte range; a segment in
/// the older layout is left to `repair_records` whole.
pub fn repair_wal(buf: &mut [u8], repair_records: impl Fn(&mut [u8])) {
    if crate::wal::is_grouped(buf) {
        crate::wal::repair_checksums(buf, repair_records);
    } else {
        repair_records(buf);
    }
}

/// The version a manifest describes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveredManifest {
    /// WAL segments below this number are no longer needed.
    pub log_number: u64,
    /// The next file number to hand out.
    pub next_file: u64,
    /// The largest sequence number in the tables.
    pub last_seq: u64,
    /// Live tables per level.
    pub levels: Vec<Vec<TableMeta>>,
}

/// Reads the version named by `dir/CURRENT`, as open does.
///
/// # Errors
///
/// What recovery reports for `CURRENT` and the manifest.
pub fn recover_manifest(dir: &Path, num_levels: usize) -> Result<RecoveredManifest> {
    let r = manifest::recover(dir, num_levels)?;
    Ok(RecoveredManifest {
        log_number: r.log_number,
        next_file: r.next_file,
        last_seq: r.last_seq,
        levels: r.levels,
    })
}

/// The payloads of the records of a manifest file (a torn tail allowed, as
/// recovery allows it).
///
/// # Errors
///
/// Damage other than a torn tail.
pub fn manifest_records(data: &[u8]) -> Result<Vec<Vec<u8>>> {
    let recs = record::parse_all(Path::new("MANIFEST"), data, true)?;
    Ok(recs.records.into_iter().map(|(_, p)| p.to_vec()).collect())
}

/// Writes manifest `number` in `dir` holding `base` and points `CURRENT` at
/// it, as every open does with the recovered version.
///
/// # Errors
///
/// I/O errors.
pub fn write_manifest(dir: &Path, number: u64, base: &VersionEdit) -> Result<()> {
    Manifest::create(dir, number, base).map(drop)
}

/// Opens the table at `path` as recovery opens the tables a manifest names.
///
/// # Errors
///
/// What open reports for a damaged table.
pub fn open_table(path: &Path) -> Result<Arc<Table>> {
    Table::open(path, false)
}

/// Every entry of `table` in order, `(internal key, value)`, read with the
/// iterator that scans and compactions use.
///
/// # Errors
///
/// The first damaged block.
pub fn scan_table(table: &Arc<Table>) -> Result<Vec<(Vec<u8>, Bytes)>> {
    let mut it = TableIter::new(Arc::clone(table));
    it.seek_to_first()?;
    let mut out = Vec::new();
    while it.valid() {
        out.push((it.key().to_vec(), it.value()));
        it.next()?;
    }
    Ok(out)
}

/// The first entry at or after `target` (an internal key), by a seek of the
/// table iterator.
///
/// # Errors
///
/// A damaged block.
pub fn seek_table(table: &Arc<Table>, target: &[u8]) -> Result<Option<(Vec<u8>, Bytes)>> {
    let mut it = TableIter::new(Arc::clone(table));
    it.seek(target)?;
    Ok(it.valid().then(|| (it.key().to_vec(), it.value())))
}

/// A point lookup of `user_key` as of `seq`, as reads probe a table:
/// `Some((is_put, value))` when the table has an entry for the key.
///
/// # Errors
///
/// A damaged block.
pub fn get_table(table: &Table, user_key: &[u8], seq: u64) -> Result<Option<(bool, Bytes)>> {
    let lookup = key::lookup(user_key, seq);
    if !table.may_contain(crate::sstable::bloom::hash(user_key)) {
        return Ok(None);
    }
    Ok(table.get(&lookup)?.map(|(kind, v)| (kind == Kind::Put, v)))
}

/// `(user key, sequence, is_put)` of an internal key; `None` when malformed.
#[must_use]
pub fn parse_internal_key(ikey: &[u8]) -> Option<(&[u8], u64, bool)> {
    key::parse(ikey).map(|(uk, seq, kind)| (uk, seq, kind == Kind::Put))
}

/// Whether internal key `a` sorts before `b`.
#[must_use]
pub fn internal_key_less(a: &[u8], b: &[u8]) -> bool {
    key::compare(a, b) == std::cmp::Ordering::Less
}

/// Writes `entries` (internal keys in ascending order) into a new table at
/// `path` with the table builder, with small blocks so that a few entries
/// span several.
///
/// # Errors
///
/// I/O errors.
pub fn build_table(path: &Path, entries: &[(Vec<u8>, Bytes)]) -> Result<TableMeta> {
    let opts = Options {
        block_size: 256,
        ..Options::default()
    };
    let mut b = TableBuilder::create(path, 1, &opts)?;
    for (k, v) in entries {
        b.add(k, v)?;
    }
    b.finish()
}
