//! Write-ahead log: one segment file per memtable, a sequence of
//! [`record`](crate::record)-framed write batches.
//!
//! Group commit lives in the `Db` write path: the write leader encodes the
//! batches of every waiting writer, appends them with one copy into the
//! segment's mapping (see [`Wal`]) and makes them durable with one
//! `fdatasync`.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use crate::batch::{self, Op};
use crate::error::{Error, IoContext, Result};
use crate::filename;
use crate::record;

/// Bytes reserved for a new segment; the reservation doubles as the segment
/// grows, by at most [`MAX_GROWTH`] at a time.
const FIRST_CHUNK: u64 = 1 << 20;
const MAX_GROWTH: u64 = 16 << 20;

/// An open WAL segment being appended to.
///
/// The segment's blocks are reserved ahead of the writes with `fallocate`
/// and the reserved part is mapped into memory, so an append is a memory copy
/// instead of a `write` system call. The data is in the OS page cache as soon
/// as it is copied, exactly as after `write`: it survives the process
/// crashing, and `sync` (`fdatasync`) makes it survive the machine crashing.
/// The unwritten reserved tail reads as zeros, which replay takes as the end
/// of the segment; dropping the `Wal` trims the file to what was written.
/// Where the file system cannot reserve blocks, appends fall back to
/// `pwrite`.
#[derive(Debug)]
pub struct Wal {
    file: File,
    path: PathBuf,
    /// Bytes of records in the segment.
    len: u64,
    /// The mapping of the reserved bytes, `None` in the `pwrite` fallback.
    map: Option<memmap2::MmapMut>,
}

impl Wal {
    /// Creates segment `number` in `dir` and makes its directory entry durable.
    ///
    /// # Errors
    ///
    /// I/O errors, including when the file already exists.
    pub fn create(dir: &Path, number: u64) -> Result<Wal> {
        let (file, path) = create_file(dir, number)?;
        let mut wal = Wal {
            file,
            path,
            len: 0,
            map: None,
        };
        wal.reserve(FIRST_CHUNK)?;
        Ok(wal)
    }

    /// Creates segment `number` in `dir` empty, with nothing reserved, for a
    /// database that is not opened here (a checkpoint).
    ///
    /// # Errors
    ///
    /// I/O errors, including when the file already exists.
    pub(crate) fn create_empty(dir: &Path, number: u64) -> Result<()> {
        create_file(dir, number).map(drop)
    }

    /// Reserved (mapped) bytes.
    fn capacity(&self) -> u64 {
        self.map.as_ref().map_or(0, |m| m.len() as u64)
    }

    /// Reserves and maps at least `want` bytes; on a file system without
    /// `fallocate`, switches to the `pwrite` fallback instead.
    fn reserve(&mut self, want: u64) -> Result<()> {
        self.map = None;
        #[cfg(any(target_os = "linux", target_os = "android"))]
        loop {
            match rustix::fs::fallocate(&self.file, rustix::fs::FallocateFlags::empty(), 0, want) {
                Ok(()) => break,
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) if e == rustix::io::Errno::OPNOTSUPP || e == rustix::io::Errno::NOSYS => {
                    return Ok(());
                }
                Err(e) => return Err(Error::io(&self.path, e.into())),
            }
        }
        // Elsewhere blocks cannot be reserved portably: append with pwrite.
        #[cfg(not(any(target_os = "linux", target_os = "android")))]
        return Ok(());
        self.map = Some(crate::mmap::map_wal(&self.file, &self.path, want)?);
        Ok(())
    }

    /// Hands already framed records to the OS.
    ///
    /// # Errors
    ///
    /// The write failed; the caller must treat the database as poisoned.
    pub fn append(&mut self, framed: &[u8]) -> Result<()> {
        let end = self.len + framed.len() as u64;
        if self.map.is_some() && end > self.capacity() {
            let cap = self.capacity();
            self.reserve(end.max(cap + cap.clamp(FIRST_CHUNK, MAX_GROWTH)))?;
        }
        match &mut self.map {
            Some(map) => {
                // `len` and `end` are within the mapping, which is at most
                // `usize::MAX` bytes long.
                map[self.len as usize..end as usize].copy_from_slice(framed);
            }
            None => {
                use std::os::unix::fs::FileExt;
                self.file.write_all_at(framed, self.len).ctx(&self.path)?;
            }
        }
        self.len = end;
        Ok(())
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

/// Creates the file of segment `number` and makes its directory entry durable.
fn create_file(dir: &Path, number: u64) -> Result<(File, PathBuf)> {
    let path = filename::wal(dir, number);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .ctx(&path)?;
    filename::sync_dir(dir).ctx(dir)?;
    Ok((file, path))
}

impl Drop for Wal {
    fn drop(&mut self) {
        if self.map.take().is_some() {
            // Trim the unused reservation. Best effort: if this is lost, the
            // zero tail reads as the end of the segment anyway.
            let _ = self.file.set_len(self.len);
        }
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
///
/// `next_seq` carries sequence continuity across the segments of one
/// recovery: each batch must start right after the previous one ended (in
/// this segment or an earlier one), so a segment that lost records at its
/// end (zeroed or cut pages, which alone look like a clean end) is reported
/// as corruption once a later batch shows the hole, instead of being
/// replayed without them.
pub(crate) fn replay(
    path: &Path,
    last_segment: bool,
    next_seq: &mut Option<u64>,
    mut apply: impl FnMut(u64, &[Op<'_>]) -> Result<()>,
) -> Result<()> {
    let data = std::fs::read(path).ctx(path)?;
    let recs = if last_segment {
        record::parse_last_reserved(path, &data)?
    } else {
        record::parse_all(path, &data, false)?
    };
    for (offset, payload) in &recs.records {
        let (seq, ops) = batch::decode_wal_payload(payload)
            .ok_or_else(|| Error::corruption(path, *offset, "malformed write batch"))?;
        if let Some(expected) = *next_seq
            && seq != expected
        {
            return Err(Error::corruption(
                path,
                *offset,
                format!(
                    "write batch starts at sequence {seq}, but the log before it ended at \
                     {}: records are missing",
                    expected.saturating_sub(1)
                ),
            ));
        }
        *next_seq = seq.checked_add(ops.len() as u64);
        apply(seq, &ops)?;
    }
    if let Some(at) = recs.torn_at {
        let f = OpenOptions::new().write(true).open(path).ctx(path)?;
        f.set_len(at).ctx(path)?;
        f.sync_all().ctx(path)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::WriteBatch;

    fn framed(seq: u64, key: &[u8], value: &[u8]) -> Vec<u8> {
        let mut b = WriteBatch::new();
        b.put(key, value);
        let mut payload = Vec::new();
        batch::encode_wal_payload(&mut payload, seq, &b);
        let mut out = Vec::new();
        record::encode(&mut out, &payload);
        out
    }

    fn replay_all(path: &Path, last: bool) -> Vec<(u64, Vec<u8>, Vec<u8>)> {
        let mut got = Vec::new();
        replay(path, last, &mut None, |seq, ops| {
            for op in ops {
                got.push((seq, op.key.to_vec(), op.value.to_vec()));
            }
            Ok(())
        })
        .expect("replay");
        got
    }

    #[test]
    fn reservation_grows_replays_and_is_trimmed_on_drop() -> Result<()> {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut wal = Wal::create(dir.path(), 7)?;
        let path = filename::wal(dir.path(), 7);
        let value = vec![0xabu8; 1000];
        let mut want = Vec::new();
        let mut written = 0u64;
        // Past the first chunk and its first doubling.
        for i in 0..4000u64 {
            let key = format!("key{i:06}").into_bytes();
            let rec = framed(i + 1, &key, &value);
            written += rec.len() as u64;
            wal.append(&rec)?;
            want.push((i + 1, key, value.clone()));
        }
        wal.sync()?;
        let on_disk = std::fs::metadata(&path).expect("stat").len();
        assert!(
            on_disk > written,
            "the open segment keeps a reservation ({on_disk} <= {written})"
        );
        // What a crash leaves behind: records, then zeros; it replays whole
        // whether or not it is the last segment.
        assert_eq!(replay_all(&path, false), want);
        drop(wal);
        assert_eq!(std::fs::metadata(&path).expect("stat").len(), written);
        assert_eq!(replay_all(&path, true), want);
        Ok(())
    }
}
