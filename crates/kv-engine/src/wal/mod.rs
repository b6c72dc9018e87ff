//! Write-ahead log: one segment file per memtable, a sequence of commit
//! groups of [`record`](crate::record)-framed write batches.
//!
//! Group commit lives in the `Db` write path: the write leader encodes the
//! batches of every waiting writer, appends them with one copy into the
//! segment's mapping (see [`Wal`]) and makes them durable with one
//! `fdatasync`.
//!
//! # Segment layout
//!
//! ```text
//! segment := header group*
//! header  := record(MAGIC "FKVWAL02" | seed u32 LE)        written and synced at creation
//! group   := body_len u64 LE | body_crc u32 LE | header_crc u32 LE | body
//! body    := record(write batch)+                            one per writer of the group
//! ```
//!
//! Both group checksums are CRC-32 seeded with the segment's random `seed`.
//!
//! # Why groups
//!
//! A group reaches the file as one copy, and nothing orders the bytes of one
//! copy: glibc's `memcpy` stores the first 32-64 bytes of a large copy last
//! (after its aligned main loop), so a process killed in the middle of a
//! copy leaves zeros at the start of the group followed by later batches of
//! the same group; after a power loss before the group's `fdatasync`, any
//! subset of its pages may be on disk. Records alone cannot tell such a
//! never-acknowledged group from damage to acknowledged data (both look like
//! a bad record followed by intact ones). A group is written only after the
//! one before it is complete (and, with `SyncMode::Always`, durable), so in
//! the last segment a group that fails its checksum is a torn tail exactly
//! when no intact group follows it. The seed keeps bytes inside a torn
//! group (user values among them) from passing for an intact group.
//!
//! Segments written before groups existed (no header record) are still
//! replayed, with the record-level rules of [`record::parse_last_reserved`].

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext, Result};
use crate::filename;
use crate::record;

/// First bytes of the header record of a segment made of commit groups. As
/// the first 8 bytes of an old-style batch record it would be a sequence
/// number above [`crate::key::MAX_SEQ`], so the two layouts never mix up.
const MAGIC: &[u8; 8] = b"FKVWAL02";
/// Bytes of a group header: body length, body checksum, header checksum.
pub(crate) const GROUP_HEADER_LEN: usize = 16;
/// Mixed into the seed for the header checksum, so that the header and the
/// body checksum of a group never use the same function.
const HEADER_SEED_MIX: u32 = 0x9e37_79b9;

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
    /// Seed of the group checksums of this segment.
    seed: u32,
}

impl Wal {
    /// Creates segment `number` in `dir` and makes its directory entry durable.
    ///
    /// # Errors
    ///
    /// I/O errors, including when the file already exists.
    /// The header with the segment's checksum seed is synced before the
    /// segment is used: recovery must be able to check every group.
    pub fn create(dir: &Path, number: u64) -> Result<Wal> {
        let (file, path) = create_file(dir, number)?;
        let seed = random_seed(number);
        let mut wal = Wal {
            file,
            path,
            len: 0,
            map: None,
            seed,
        };
        wal.reserve(FIRST_CHUNK)?;
        let mut payload = MAGIC.to_vec();
        payload.extend_from_slice(&seed.to_le_bytes());
        let mut header = Vec::new();
        record::encode(&mut header, &payload);
        wal.append(&header)?;
        wal.sync()?;
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

    /// Hands one commit group to the OS. `group` starts with
    /// [`GROUP_HEADER_LEN`] bytes of room for the group header (see
    /// [`begin_group`]), followed by the framed records; the header is
    /// filled in here.
    ///
    /// # Errors
    ///
    /// The write failed; the caller must treat the database as poisoned.
    pub fn append_group(&mut self, group: &mut [u8]) -> Result<()> {
        let Some((header, body)) = group.split_first_chunk_mut::<GROUP_HEADER_LEN>() else {
            return Err(Error::InvalidArgument(
                "a WAL group needs its header".into(),
            ));
        };
        seal_group(header, body, self.seed);
        self.append(group)
    }

    /// Hands bytes to the OS at the end of the segment.
    fn append(&mut self, framed: &[u8]) -> Result<()> {
        crate::fault::check("wal-write", &self.path)?;
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
        crate::fault::check("wal-sync", &self.path)?;
        self.file.sync_data().ctx(&self.path)
    }
}

/// Starts a commit group in `buf`: room for its header.
pub(crate) fn begin_group(buf: &mut Vec<u8>) {
    buf.clear();
    buf.resize(GROUP_HEADER_LEN, 0);
}

fn seal_group(header: &mut [u8; GROUP_HEADER_LEN], body: &[u8], seed: u32) {
    header[0..8].copy_from_slice(&(body.len() as u64).to_le_bytes());
    header[8..12].copy_from_slice(&seeded_crc(seed, body).to_le_bytes());
    let hcrc = seeded_crc(seed ^ HEADER_SEED_MIX, &header[0..12]);
    header[12..16].copy_from_slice(&hcrc.to_le_bytes());
}

fn seeded_crc(seed: u32, data: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new_with_initial(seed);
    h.update(data);
    h.finalize()
}

/// A seed nobody writing values can predict (the standard library's
/// per-process random hash keys, mixed with the segment number and the
/// time), so no value can carry bytes that pass for an intact group.
fn random_seed(number: u64) -> u32 {
    use std::hash::BuildHasher;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let h = std::collections::hash_map::RandomState::new().hash_one((number, nanos));
    (h ^ (h >> 32)) as u32
}

/// Creates the file of segment `number` and makes its directory entry durable.
fn create_file(dir: &Path, number: u64) -> Result<(File, PathBuf)> {
    let path = filename::wal(dir, number);
    crate::fault::check("wal-create", &path)?;
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

/// The bytes of a segment in the group layout with checksum `seed`, each
/// element of `groups` one commit group of already framed records (for the
/// fuzz targets' seeds and checks).
pub(crate) fn encode_segment(seed: u32, groups: &[Vec<u8>]) -> Vec<u8> {
    let mut payload = MAGIC.to_vec();
    payload.extend_from_slice(&seed.to_le_bytes());
    let mut out = Vec::new();
    record::encode(&mut out, &payload);
    for body in groups {
        let mut group = Vec::new();
        begin_group(&mut group);
        group.extend_from_slice(body);
        if let Some((header, body)) = group.split_first_chunk_mut::<GROUP_HEADER_LEN>() {
            seal_group(header, body, seed);
        }
        out.extend_from_slice(&group);
    }
    out
}

mod replay;

pub(crate) use replay::{holds_no_records, is_grouped, repair_checksums, replay};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::{self, WriteBatch};

    /// A commit group of one batch of one put.
    fn framed(seq: u64, key: &[u8], value: &[u8]) -> Vec<u8> {
        let mut b = WriteBatch::new();
        b.put(key, value);
        let mut payload = Vec::new();
        batch::encode_wal_payload(&mut payload, seq, &b);
        let mut out = Vec::new();
        begin_group(&mut out);
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

    /// What the fuzz targets build segments and repair their checksums with
    /// agrees with replay.
    #[test]
    fn encoded_segments_replay_and_repaired_checksums_hold() -> Result<()> {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("000003.log");
        let groups: Vec<Vec<u8>> = (0..3u64)
            .map(|i| {
                let mut g = framed(i + 1, format!("k{i}").as_bytes(), b"v");
                g.drain(..GROUP_HEADER_LEN);
                g
            })
            .collect();
        let mut data = encode_segment(7, &groups);
        std::fs::write(&path, &data).expect("write");
        assert_eq!(replay_all(&path, false).len(), 3);
        // A changed value byte breaks the group and record checksums; the
        // repair makes the segment whole again, with the new byte.
        let at = data.len() - 1;
        data[at] = b'w';
        std::fs::write(&path, &data).expect("write");
        assert!(replay(&path, false, &mut None, |_, _| Ok(())).is_err());
        repair_checksums(&mut data, |b| {
            let mut pos = 0;
            while let Some(l) = b.get(pos..pos + 4) {
                let len = u32::from_le_bytes([l[0], l[1], l[2], l[3]]) as usize;
                let end = pos + record::HEADER_LEN + len;
                if end > b.len() {
                    return;
                }
                let mut fixed = Vec::new();
                let payload = b[pos + record::HEADER_LEN..end].to_vec();
                record::encode(&mut fixed, &payload);
                b[pos..end].copy_from_slice(&fixed);
                pos = end;
            }
        });
        std::fs::write(&path, &data).expect("write");
        let got = replay_all(&path, false);
        assert_eq!(got[2].2, b"w".to_vec());
        Ok(())
    }

    /// Segments written before commit groups: records from offset 0, no
    /// header. They still replay, with their torn tail cut.
    #[test]
    fn segments_without_groups_still_replay() -> Result<()> {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("000009.log");
        let mut data = Vec::new();
        let mut want = Vec::new();
        for i in 0..10u64 {
            let key = format!("old{i}").into_bytes();
            let mut payload = Vec::new();
            let mut b = WriteBatch::new();
            b.put(&key, b"v");
            batch::encode_wal_payload(&mut payload, i + 1, &b);
            record::encode(&mut data, &payload);
            want.push((i + 1, key, b"v".to_vec()));
        }
        std::fs::write(&path, &data).expect("write");
        assert_eq!(replay_all(&path, false), want);
        data.truncate(data.len() - 3);
        std::fs::write(&path, &data).expect("write");
        assert_eq!(replay_all(&path, true), want[..9]);
        Ok(())
    }

    #[test]
    fn reservation_grows_replays_and_is_trimmed_on_drop() -> Result<()> {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut wal = Wal::create(dir.path(), 7)?;
        let path = filename::wal(dir.path(), 7);
        let value = vec![0xabu8; 1000];
        let mut want = Vec::new();
        let mut written = wal.len;
        // Past the first chunk and its first doubling.
        for i in 0..4000u64 {
            let key = format!("key{i:06}").into_bytes();
            let mut rec = framed(i + 1, &key, &value);
            written += rec.len() as u64;
            wal.append_group(&mut rec)?;
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
