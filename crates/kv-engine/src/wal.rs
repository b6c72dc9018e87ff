//! Write-ahead log: one segment file per memtable, a sequence of
//! [`record`](crate::record)-framed write batches.
//!
//! Group commit lives in the `Db` write path: the write leader encodes the
//! batches of every waiting writer, appends them with one `write` and makes
//! them durable with one `fdatasync`.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::batch::{self, Op};
use crate::error::{Error, IoContext, Result};
use crate::filename;
use crate::record;

/// An open WAL segment being appended to.
#[derive(Debug)]
pub struct Wal {
    file: File,
    path: PathBuf,
}

impl Wal {
    /// Creates segment `number` in `dir` and makes its directory entry durable.
    ///
    /// # Errors
    ///
    /// I/O errors, including when the file already exists.
    pub fn create(dir: &Path, number: u64) -> Result<Wal> {
        let path = filename::wal(dir, number);
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .ctx(&path)?;
        filename::sync_dir(dir).ctx(dir)?;
        Ok(Wal { file, path })
    }

    /// Hands already framed records to the OS.
    ///
    /// # Errors
    ///
    /// The write failed; the caller must treat the database as poisoned.
    pub fn append(&mut self, framed: &[u8]) -> Result<()> {
        self.file.write_all(framed).ctx(&self.path)
    }

    /// Makes everything appended durable.
    ///
    /// # Errors
    ///
    /// The fsync failed; the caller must treat the database as poisoned.
    pub fn sync(&mut self) -> Result<()> {
        fail_point("wal-sync", &self.path)?;
        self.file.sync_data().ctx(&self.path)
    }
}

#[cfg(test)]
thread_local! {
    /// Fault injection for unit tests: the named point fails on this thread.
    pub(crate) static FAIL_POINT: std::cell::RefCell<Option<String>> =
        const { std::cell::RefCell::new(None) };
}

#[cfg(test)]
fn fail_point(name: &str, path: &Path) -> Result<()> {
    if FAIL_POINT.with(|p| p.borrow().as_deref() == Some(name)) {
        return Err(Error::io(
            path,
            std::io::Error::other(format!("injected failure at {name}")),
        ));
    }
    Ok(())
}

#[cfg(not(test))]
fn fail_point(_name: &str, _path: &Path) -> Result<()> {
    Ok(())
}

/// Replays segment `path`, calling `apply(first_seq, ops)` for each batch in
/// order. With `last_segment`, a torn tail is cut off the file (it was never
/// acknowledged); in any other segment it is corruption.
///
/// # Errors
///
/// [`Error::Corruption`] naming the file and offset of a damaged record, or
/// whatever `apply` returns.
pub(crate) fn replay(
    path: &Path,
    last_segment: bool,
    mut apply: impl FnMut(u64, &[Op<'_>]) -> Result<()>,
) -> Result<()> {
    let data = std::fs::read(path).ctx(path)?;
    let recs = record::parse_all(path, &data, last_segment)?;
    for (offset, payload) in &recs.records {
        let (seq, ops) = batch::decode_wal_payload(payload)
            .ok_or_else(|| Error::corruption(path, *offset, "malformed write batch"))?;
        apply(seq, &ops)?;
    }
    if let Some(at) = recs.torn_at {
        let f = OpenOptions::new().write(true).open(path).ctx(path)?;
        f.set_len(at).ctx(path)?;
        f.sync_all().ctx(path)?;
    }
    Ok(())
}
