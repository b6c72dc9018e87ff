//! [`Receiver`]: snapshots streamed by peers, written to disk as they come.
//!
//! One transfer per sending peer. An offer names the snapshot (its raft
//! message and descriptor) and its files; the answer is how many bytes of
//! exactly that snapshot are already here, so a transfer that broke off
//! resumes instead of starting over. Chunks must continue the stream at the
//! byte where it stands and pass their CRC32; each is written straight to its
//! file. After the last byte every file is fsynced, the directory is moved
//! into `snapshots/` (see [`SnapshotDirs::place`]) and the raft message is
//! handed back for stepping. A transfer that sees no chunk for the idle
//! timeout is dropped with its files. Nothing but the transfer's metadata is
//! held in memory.

use std::collections::HashMap;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kv_net::proto::SnapshotChunk;
use kv_raft::raft::eraftpb::{Message, MessageType};
use parking_lot::Mutex;
use protobuf2::Message as _;

use super::{Descriptor, SnapshotDirs, is_plain_name};
use crate::archive::sync_dir;

/// Most files one snapshot may have.
pub const MAX_FILES: usize = 1 << 20;

#[derive(Debug)]
struct Transfer {
    snapshot_id: u64,
    name: String,
    files: Vec<(String, u64)>,
    total: u64,
    held: u64,
    raft_message: Message,
    dir: PathBuf,
    last_activity: Instant,
}

impl Transfer {
    /// Writes `data` at stream offset `self.held`.
    fn write(&mut self, mut data: &[u8]) -> std::io::Result<()> {
        let mut start = 0u64;
        for (name, size) in &self.files {
            let end = start + size;
            if self.held < end && !data.is_empty() {
                let at = self.held - start;
                let n =
                    usize::try_from((end - self.held).min(data.len() as u64)).unwrap_or(data.len());
                let path = self.dir.join(name);
                let f = std::fs::OpenOptions::new().write(true).open(&path)?;
                f.write_all_at(&data[..n], at)?;
                data = &data[n..];
                self.held += n as u64;
            }
            start = end;
        }
        Ok(())
    }

    fn finish(&self) -> std::io::Result<()> {
        for (name, size) in &self.files {
            let f = std::fs::File::open(self.dir.join(name))?;
            if f.metadata()?.len() != *size {
                return Err(std::io::Error::other(format!(
                    "{name}: {} bytes, {size} offered",
                    f.metadata()?.len()
                )));
            }
            f.sync_all()?;
        }
        sync_dir(&self.dir).map_err(std::io::Error::other)
    }
}

/// Snapshots being received.
#[derive(Debug)]
pub struct Receiver {
    dirs: Arc<SnapshotDirs>,
    idle_timeout: Duration,
    transfers: Mutex<HashMap<u64, Transfer>>,
}

impl Receiver {
    /// A receiver writing under `dirs`.
    #[must_use]
    pub fn new(dirs: Arc<SnapshotDirs>, idle_timeout: Duration) -> Receiver {
        Receiver {
            dirs,
            idle_timeout,
            transfers: Mutex::new(HashMap::new()),
        }
    }

    /// Takes an offer from `peer` (the handshake's member) addressed to node
    /// `this`; returns the stream offset to resume at.
    ///
    /// # Errors
    ///
    /// A message when the offer is malformed; the transfer is not started.
    pub fn offer(&self, peer: u64, this: u64, chunk: &SnapshotChunk) -> Result<u64, String> {
        let now = Instant::now();
        self.expire(now);
        if chunk.from != peer || chunk.to != this {
            return Err(format!(
                "snapshot offer from {} to {} on the connection of node {peer} to {this}",
                chunk.from, chunk.to
            ));
        }
        let msg = Message::parse_from_bytes(&chunk.raft_message)
            .map_err(|e| format!("malformed snapshot message: {e}"))?;
        if msg.get_msg_type() != MessageType::MsgSnapshot || msg.from != peer || msg.to != this {
            return Err("snapshot offer does not carry this peer's MsgSnapshot".into());
        }
        let desc = Descriptor::decode(msg.get_snapshot().get_data())?;
        let meta = msg.get_snapshot().get_metadata();
        if desc.index != meta.index
            || desc.term != meta.term
            || desc.group_id != chunk.group_id
            || desc.index != chunk.snapshot_id
        {
            return Err(format!(
                "snapshot descriptor {}/{} does not match its metadata {}/{}",
                desc.index, desc.term, meta.index, meta.term
            ));
        }
        if chunk.files.len() > MAX_FILES {
            return Err(format!("snapshot of {} files", chunk.files.len()));
        }
        let mut files = Vec::with_capacity(chunk.files.len());
        let mut total = 0u64;
        for f in &chunk.files {
            if !is_plain_name(&f.name) || files.iter().any(|(n, _)| n == &f.name) {
                return Err(format!("bad snapshot file name {:?}", f.name));
            }
            total = total.checked_add(f.size).ok_or("snapshot size overflows")?;
            files.push((f.name.clone(), f.size));
        }
        let mut transfers = self.transfers.lock();
        if let Some(t) = transfers.get_mut(&peer)
            && t.snapshot_id == chunk.snapshot_id
            && t.name == desc.name()
            && t.files == files
        {
            t.last_activity = now;
            tracing::info!(
                from = peer,
                resume_at = t.held,
                total,
                "snapshot transfer resumed"
            );
            return Ok(t.held);
        }
        if let Some(old) = transfers.remove(&peer) {
            tracing::info!(from = peer, snapshot = %old.name, "partial snapshot replaced by a new one");
            let _ = std::fs::remove_dir_all(&old.dir);
        }
        let dir = self.dirs.incoming(peer);
        let created = (|| {
            if dir.exists() {
                std::fs::remove_dir_all(&dir)?;
            }
            std::fs::create_dir_all(&dir)?;
            for (name, _) in &files {
                std::fs::File::create_new(dir.join(name))?;
            }
            Ok::<_, std::io::Error>(())
        })();
        if let Err(e) = created {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(format!("cannot create {}: {e}", dir.display()));
        }
        transfers.insert(
            peer,
            Transfer {
                snapshot_id: chunk.snapshot_id,
                name: desc.name(),
                files,
                total,
                held: 0,
                raft_message: msg,
                dir,
                last_activity: now,
            },
        );
        Ok(0)
    }

    /// Takes a data chunk from `peer`; after the last one, returns the raft
    /// message to step (its snapshot's directory is then in place).
    ///
    /// # Errors
    ///
    /// A message when the chunk does not continue the transfer, fails its
    /// checksum, overruns the offer, or the files cannot be written; the
    /// transfer is dropped on a write error and kept otherwise (the sender
    /// may resume it).
    pub fn chunk(&self, peer: u64, chunk: &SnapshotChunk) -> Result<Option<Message>, String> {
        let mut transfers = self.transfers.lock();
        let Some(t) = transfers.get_mut(&peer) else {
            return Err("snapshot chunk without an offer".into());
        };
        if chunk.from != peer || chunk.snapshot_id != t.snapshot_id {
            return Err("snapshot chunk of another transfer".into());
        }
        if chunk.offset != t.held {
            return Err(format!(
                "snapshot chunk at offset {} does not follow {} bytes",
                chunk.offset, t.held
            ));
        }
        if crc32fast::hash(&chunk.data) != chunk.crc32 {
            return Err(format!(
                "snapshot chunk at {} fails its checksum",
                chunk.offset
            ));
        }
        if t.held + chunk.data.len() as u64 > t.total {
            return Err("snapshot chunk beyond the offered size".into());
        }
        if chunk.last && t.held + chunk.data.len() as u64 != t.total {
            return Err("snapshot ends before the offered size".into());
        }
        t.last_activity = Instant::now();
        if let Err(e) = t.write(&chunk.data) {
            let t = transfers.remove(&peer);
            if let Some(t) = t {
                let _ = std::fs::remove_dir_all(&t.dir);
            }
            return Err(format!("cannot write a received snapshot: {e}"));
        }
        if !chunk.last {
            return Ok(None);
        }
        let t = transfers.remove(&peer).ok_or("transfer vanished")?;
        drop(transfers);
        let placed = t
            .finish()
            .map_err(|e| format!("cannot sync a received snapshot: {e}"))
            .and_then(|()| {
                self.dirs
                    .place(&t.dir, &t.name)
                    .map_err(|e| format!("cannot place a received snapshot: {e}"))
            });
        if let Err(e) = placed {
            let _ = std::fs::remove_dir_all(&t.dir);
            return Err(e);
        }
        tracing::info!(from = peer, snapshot = %t.name, bytes = t.total, "snapshot received");
        Ok(Some(t.raft_message))
    }

    /// Drops transfers idle for longer than the timeout (with their files);
    /// returns how many.
    pub fn expire(&self, now: Instant) -> usize {
        let mut transfers = self.transfers.lock();
        let before = transfers.len();
        transfers.retain(|&from, t| {
            let live = now.saturating_duration_since(t.last_activity) < self.idle_timeout;
            if !live {
                tracing::warn!(from, snapshot = %t.name, bytes = t.held, "stale partial snapshot dropped");
                let _ = std::fs::remove_dir_all(&t.dir);
            }
            live
        });
        before - transfers.len()
    }

    /// Bytes written by transfers in progress.
    #[must_use]
    pub fn held_bytes(&self) -> u64 {
        self.transfers.lock().values().map(|t| t.held).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use kv_net::proto::SnapshotFile;

    const PEER: u64 = 1;
    const THIS: u64 = 2;

    fn snapshot_message(index: u64, term: u64) -> Bytes {
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgSnapshot);
        m.from = PEER;
        m.to = THIS;
        let snap = m.mut_snapshot();
        snap.mut_metadata().index = index;
        snap.mut_metadata().term = term;
        snap.set_data(
            Descriptor {
                group_id: 1,
                index,
                term,
            }
            .encode()
            .into(),
        );
        Bytes::from(m.write_to_bytes().unwrap())
    }

    fn offer(index: u64, files: &[(&str, u64)]) -> SnapshotChunk {
        let mut c = SnapshotChunk::new();
        c.from = PEER;
        c.to = THIS;
        c.snapshot_id = index;
        c.group_id = 1;
        c.offer = true;
        c.raft_message = snapshot_message(index, 3);
        c.files = files
            .iter()
            .map(|(n, s)| {
                let mut f = SnapshotFile::new();
                f.name = (*n).to_owned();
                f.size = *s;
                f
            })
            .collect();
        c
    }

    fn data(index: u64, offset: u64, bytes: &[u8], last: bool) -> SnapshotChunk {
        let mut c = SnapshotChunk::new();
        c.from = PEER;
        c.to = THIS;
        c.snapshot_id = index;
        c.offset = offset;
        c.crc32 = crc32fast::hash(bytes);
        c.data = Bytes::copy_from_slice(bytes);
        c.last = last;
        c
    }

    fn receiver(dir: &std::path::Path) -> (Receiver, Arc<SnapshotDirs>) {
        let dirs = Arc::new(SnapshotDirs::open(dir.join("snapshots")).unwrap());
        (Receiver::new(dirs.clone(), Duration::from_secs(60)), dirs)
    }

    #[test]
    fn files_arrive_across_chunks_and_are_placed_before_raft_sees_them() {
        let tmp = tempfile::tempdir().unwrap();
        let (r, dirs) = receiver(tmp.path());
        let files = [("a.sst", 5), ("empty", 0), ("MANIFEST-000002", 3)];
        assert_eq!(r.offer(PEER, THIS, &offer(10, &files)).unwrap(), 0);
        assert!(
            r.chunk(PEER, &data(10, 0, b"hel", false))
                .unwrap()
                .is_none()
        );
        assert_eq!(r.held_bytes(), 3);
        let msg = r
            .chunk(PEER, &data(10, 3, b"loabc", true))
            .unwrap()
            .unwrap();
        assert_eq!(msg.get_snapshot().get_metadata().index, 10);
        let dir = dirs.path(
            &Descriptor {
                group_id: 1,
                index: 10,
                term: 3,
            }
            .name(),
        );
        assert_eq!(std::fs::read(dir.join("a.sst")).unwrap(), b"hello");
        assert_eq!(std::fs::read(dir.join("empty")).unwrap(), b"");
        assert_eq!(std::fs::read(dir.join("MANIFEST-000002")).unwrap(), b"abc");
        assert!(!dirs.incoming(PEER).exists());
        assert_eq!(r.held_bytes(), 0);
    }

    #[test]
    fn a_broken_transfer_resumes_where_it_stopped() {
        let tmp = tempfile::tempdir().unwrap();
        let (r, _) = receiver(tmp.path());
        let files = [("a", 4), ("b", 4)];
        r.offer(PEER, THIS, &offer(7, &files)).unwrap();
        r.chunk(PEER, &data(7, 0, b"aaaab", false)).unwrap();
        // The connection broke; the same snapshot is offered again.
        assert_eq!(r.offer(PEER, THIS, &offer(7, &files)).unwrap(), 5);
        // A different snapshot starts over.
        assert_eq!(r.offer(PEER, THIS, &offer(8, &files)).unwrap(), 0);
        r.chunk(PEER, &data(8, 0, b"xx", false)).unwrap();
        // As does the same snapshot with other files.
        assert_eq!(r.offer(PEER, THIS, &offer(8, &[("a", 4)])).unwrap(), 0);
    }

    #[test]
    fn bad_offers_and_chunks_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let (r, dirs) = receiver(tmp.path());
        for name in ["../x", "a/b", "", ".", ".."] {
            assert!(
                r.offer(PEER, THIS, &offer(5, &[(name, 1)])).is_err(),
                "{name:?}"
            );
        }
        assert!(
            r.offer(PEER, THIS, &offer(5, &[("a", 1), ("a", 1)]))
                .is_err()
        );
        assert!(
            r.offer(PEER, THIS, &offer(5, &[("a", u64::MAX), ("b", 2)]))
                .is_err()
        );
        // Another sender's name, another addressee, no snapshot inside.
        assert!(r.offer(3, THIS, &offer(5, &[("a", 1)])).is_err());
        assert!(r.offer(PEER, 9, &offer(5, &[("a", 1)])).is_err());
        let mut not_snapshot = offer(5, &[("a", 1)]);
        not_snapshot.raft_message = Bytes::from_static(b"\x08\x03");
        assert!(r.offer(PEER, THIS, &not_snapshot).is_err());
        let mut mismatched = offer(5, &[("a", 1)]);
        mismatched.raft_message = snapshot_message(6, 3);
        assert!(r.offer(PEER, THIS, &mismatched).is_err());
        // Chunks: without an offer, out of place, damaged, too long, short.
        assert!(r.chunk(PEER, &data(5, 0, b"x", true)).is_err());
        r.offer(PEER, THIS, &offer(5, &[("a", 4)])).unwrap();
        assert!(r.chunk(PEER, &data(5, 1, b"x", false)).is_err());
        let mut damaged = data(5, 0, b"ab", false);
        damaged.crc32 ^= 1;
        assert!(r.chunk(PEER, &damaged).is_err());
        assert!(r.chunk(PEER, &data(5, 0, b"abcde", false)).is_err());
        assert!(r.chunk(PEER, &data(5, 0, b"abc", true)).is_err());
        // None of it broke the transfer, which completes.
        r.chunk(PEER, &data(5, 0, b"ab", false)).unwrap();
        assert!(r.chunk(PEER, &data(5, 2, b"cd", true)).unwrap().is_some());
        assert!(
            dirs.path(
                &Descriptor {
                    group_id: 1,
                    index: 5,
                    term: 3
                }
                .name()
            )
            .is_dir()
        );
    }

    #[test]
    fn idle_transfers_are_dropped_with_their_files() {
        let tmp = tempfile::tempdir().unwrap();
        let (r, dirs) = receiver(tmp.path());
        r.offer(PEER, THIS, &offer(5, &[("a", 4)])).unwrap();
        r.chunk(PEER, &data(5, 0, b"ab", false)).unwrap();
        assert!(dirs.incoming(PEER).is_dir());
        assert_eq!(r.expire(Instant::now()), 0);
        assert_eq!(r.expire(Instant::now() + Duration::from_secs(61)), 1);
        assert!(!dirs.incoming(PEER).exists());
        assert!(r.chunk(PEER, &data(5, 2, b"cd", true)).is_err());
    }
}
