//! The manifest: a log of [`VersionEdit`]s, plus `CURRENT`, an atomically
//! replaced file naming the live manifest.
//!
//! Every open writes a fresh manifest holding one edit that describes the
//! whole version, then points `CURRENT` at it (write `CURRENT.tmp`, fsync,
//! rename, fsync directory), so a crash at any instant leaves either the old
//! or the new manifest in charge. Later edits are appended and fsynced before
//! anything that depends on them (deleting a WAL segment or table) happens.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::coding::{Reader, put_len_prefixed, put_varint};
use crate::error::{Error, IoContext, Result};
use crate::filename;
use crate::record;
use crate::sstable::TableMeta;

/// A change to the version: tables added and removed, and counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VersionEdit {
    /// WAL segments with a smaller number than this are no longer needed.
    pub log_number: Option<u64>,
    /// The next file number to hand out.
    pub next_file: Option<u64>,
    /// The largest sequence number in the tables.
    pub last_seq: Option<u64>,
    /// `(level, file number)` removed.
    pub deleted: Vec<(usize, u64)>,
    /// `(level, table)` added.
    pub added: Vec<(usize, TableMeta)>,
}

const TAG_LOG: u64 = 1;
const TAG_NEXT_FILE: u64 = 2;
const TAG_LAST_SEQ: u64 = 3;
const TAG_DELETED: u64 = 4;
const TAG_ADDED: u64 = 5;

impl VersionEdit {
    /// Serializes the edit.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::new();
        for (tag, v) in [
            (TAG_LOG, self.log_number),
            (TAG_NEXT_FILE, self.next_file),
            (TAG_LAST_SEQ, self.last_seq),
        ] {
            if let Some(v) = v {
                put_varint(&mut b, tag);
                put_varint(&mut b, v);
            }
        }
        for &(level, n) in &self.deleted {
            put_varint(&mut b, TAG_DELETED);
            put_varint(&mut b, level as u64);
            put_varint(&mut b, n);
        }
        for (level, m) in &self.added {
            put_varint(&mut b, TAG_ADDED);
            put_varint(&mut b, *level as u64);
            for v in [m.number, m.size, m.entries, m.max_seq] {
                put_varint(&mut b, v);
            }
            put_len_prefixed(&mut b, &m.smallest);
            put_len_prefixed(&mut b, &m.largest);
        }
        b
    }

    /// Parses an edit; `None` when malformed.
    pub fn decode(data: &[u8]) -> Option<VersionEdit> {
        let mut e = VersionEdit::default();
        let mut r = Reader::new(data);
        while !r.is_empty() {
            match r.varint()? {
                TAG_LOG => e.log_number = Some(r.varint()?),
                TAG_NEXT_FILE => e.next_file = Some(r.varint()?),
                TAG_LAST_SEQ => e.last_seq = Some(r.varint()?),
                TAG_DELETED => e.deleted.push((r.varint_usize()?, r.varint()?)),
                TAG_ADDED => {
                    let level = r.varint_usize()?;
                    let (number, size, entries, max_seq) =
                        (r.varint()?, r.varint()?, r.varint()?, r.varint()?);
                    let smallest = r.len_prefixed()?.to_vec();
                    let largest = r.len_prefixed()?.to_vec();
                    e.added.push((
                        level,
                        TableMeta {
                            number,
                            size,
                            smallest,
                            largest,
                            entries,
                            max_seq,
                        },
                    ));
                }
                _ => return None,
            }
        }
        Some(e)
    }
}

/// The open manifest being appended to.
#[derive(Debug)]
pub struct Manifest {
    file: File,
    path: PathBuf,
    size: u64,
}

impl Manifest {
    /// Creates manifest `number` in `dir` holding `base` (a whole version),
    /// fsyncs it and points `CURRENT` at it.
    ///
    /// # Errors
    ///
    /// Any I/O failure; `CURRENT` then still names the previous manifest.
    pub fn create(dir: &Path, number: u64, base: &VersionEdit) -> Result<Manifest> {
        let name = filename::manifest_name(number);
        let path = dir.join(&name);
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .ctx(&path)?;
        let mut buf = Vec::new();
        record::encode(&mut buf, &base.encode());
        crate::fault::check("manifest-write", &path)?;
        file.write_all(&buf).ctx(&path)?;
        crate::fault::check("manifest-sync", &path)?;
        file.sync_all().ctx(&path)?;
        filename::sync_dir(dir).ctx(dir)?;
        let tmp = dir.join("CURRENT.tmp");
        {
            let mut f = File::create(&tmp).ctx(&tmp)?;
            f.write_all(format!("{name}\n").as_bytes()).ctx(&tmp)?;
            f.sync_all().ctx(&tmp)?;
        }
        crate::fault::check("current-rename", &tmp)?;
        std::fs::rename(&tmp, dir.join(filename::CURRENT)).ctx(&tmp)?;
        filename::sync_dir(dir).ctx(dir)?;
        Ok(Manifest {
            file,
            path,
            size: buf.len() as u64,
        })
    }

    /// Appends `edit` and fsyncs it.
    ///
    /// # Errors
    ///
    /// The write or fsync failed; the database must stop (poison).
    pub fn append(&mut self, edit: &VersionEdit) -> Result<()> {
        let mut buf = Vec::new();
        record::encode(&mut buf, &edit.encode());
        crate::fault::check("manifest-write", &self.path)?;
        self.file.write_all(&buf).ctx(&self.path)?;
        crate::fault::check("manifest-sync", &self.path)?;
        self.file.sync_data().ctx(&self.path)?;
        self.size += buf.len() as u64;
        Ok(())
    }

    /// Bytes in the manifest file.
    pub fn size(&self) -> u64 {
        self.size
    }
}

/// What recovery reads back from `CURRENT` and the manifest it names.
#[derive(Debug)]
pub(crate) struct Recovered {
    pub(crate) manifest_path: PathBuf,
    pub(crate) log_number: u64,
    pub(crate) next_file: u64,
    pub(crate) last_seq: u64,
    /// Live tables per level.
    pub(crate) levels: Vec<Vec<TableMeta>>,
}

/// Reads the version named by `CURRENT`.
///
/// # Errors
///
/// [`Error::Corruption`] naming the manifest (or `CURRENT`) and the offset of
/// a damaged edit; a torn final edit is ignored (it was never acted upon).
pub(crate) fn recover(dir: &Path, num_levels: usize) -> Result<Recovered> {
    let current_path = dir.join(filename::CURRENT);
    let current = std::fs::read(&current_path).ctx(&current_path)?;
    let name = std::str::from_utf8(&current)
        .ok()
        .and_then(|s| s.strip_suffix('\n'))
        .filter(|s| matches!(filename::parse(s), Some(filename::FileKind::Manifest(_))))
        .ok_or_else(|| Error::corruption(&current_path, 0, "CURRENT does not name a manifest"))?;
    let path = dir.join(name);
    let data = std::fs::read(&path).ctx(&path)?;
    let recs = record::parse_all(&path, &data, true)?;
    let mut levels: Vec<Vec<TableMeta>> = vec![Vec::new(); num_levels];
    let (mut log_number, mut next_file, mut last_seq) = (None, None, 0u64);
    if recs.records.is_empty() {
        return Err(Error::corruption(
            &path,
            0,
            "manifest holds no complete edit",
        ));
    }
    for (offset, payload) in recs.records {
        let bad = |why: &str| Error::corruption(&path, offset, why.to_string());
        let e = VersionEdit::decode(payload).ok_or_else(|| bad("malformed version edit"))?;
        log_number = e.log_number.or(log_number);
        next_file = e.next_file.or(next_file);
        last_seq = e.last_seq.map_or(last_seq, |s| s.max(last_seq));
        for (level, n) in e.deleted {
            let l = levels
                .get_mut(level)
                .ok_or_else(|| bad("edit names a level that does not exist"))?;
            let before = l.len();
            l.retain(|m| m.number != n);
            if l.len() == before {
                return Err(bad(&format!(
                    "edit deletes table {n} which is not in level {level}"
                )));
            }
        }
        for (level, m) in e.added {
            if crate::key::parse(&m.smallest).is_none() || crate::key::parse(&m.largest).is_none() {
                return Err(bad("edit adds a table with malformed key bounds"));
            }
            levels
                .get_mut(level)
                .ok_or_else(|| bad("edit names a level that does not exist"))?
                .push(m);
        }
    }
    let (Some(log_number), Some(next_file)) = (log_number, next_file) else {
        return Err(Error::corruption(
            &path,
            0,
            "manifest lacks the log or file number",
        ));
    };
    Ok(Recovered {
        manifest_path: path,
        log_number,
        next_file,
        last_seq,
        levels,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_roundtrip_and_truncation() {
        let e = VersionEdit {
            log_number: Some(7),
            next_file: Some(9),
            last_seq: Some(1000),
            deleted: vec![(0, 3)],
            added: vec![(
                1,
                TableMeta {
                    number: 8,
                    size: 4096,
                    smallest: crate::key::make(b"a", 1, crate::key::Kind::Put),
                    largest: crate::key::make(b"z", 2, crate::key::Kind::Put),
                    entries: 10,
                    max_seq: 2,
                },
            )],
        };
        let b = e.encode();
        assert_eq!(VersionEdit::decode(&b), Some(e));
        for cut in 1..b.len() {
            // Truncations either fail to parse or parse to a different edit;
            // they never panic.
            let _ = VersionEdit::decode(&b[..cut]);
        }
    }
}
