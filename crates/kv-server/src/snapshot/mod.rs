//! Raft snapshots as engine checkpoints on disk.
//!
//! A raft snapshot's data is a [`Descriptor`] of a few dozen bytes that
//! *names* a checkpoint directory; the state itself never passes through
//! memory or the raft log store:
//!
//! ```text
//! <kv>/snapshots/<index>-<term>/    an engine checkpoint (hard links of the
//!                                   immutable tables, a fresh manifest) of
//!                                   the state at that applied index
//! <kv>/snapshots/incoming/<peer>/   a snapshot being received from a peer
//! ```
//!
//! - [`dirs`]: [`SnapshotDirs`], which makes, lists, pins (while a transfer
//!   reads one) and removes checkpoint directories.
//! - [`receive`]: [`Receiver`], which writes a snapshot streamed by a peer
//!   into `incoming/`, resumes a broken transfer, and moves the complete,
//!   fsynced directory into place before raft sees the snapshot.
//! - [`send`]: streams a pinned checkpoint's files to a peer from disk.
//!
//! Two checkpoints at the same (index, term) hold the same state (raft's
//! log matching), wherever they were made; a node installs a received one by
//! linking its tables into a new engine generation and keeps the directory to
//! serve it onwards.

pub mod dirs;
pub mod receive;
pub mod send;

pub use dirs::{Pin, SnapshotDirs};
pub use receive::Receiver;

/// The raft group a node's snapshots belong to while it runs one group.
pub const GROUP_ID: u64 = 1;

const MAGIC: &[u8; 8] = b"FKVSNAP2";
const LEN: usize = MAGIC.len() + 3 * 8 + 4;

/// The data of a raft snapshot: which checkpoint holds it.
///
/// ```text
/// descriptor := "FKVSNAP2" group_id:u64 index:u64 term:u64 crc32:u32   (little-endian)
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Descriptor {
    /// The raft group.
    pub group_id: u64,
    /// The applied index of the state.
    pub index: u64,
    /// The term of the entry at `index`.
    pub term: u64,
}

impl Descriptor {
    /// The checkpoint directory's name.
    #[must_use]
    pub fn name(&self) -> String {
        format!("{:020}-{}", self.index, self.term)
    }

    /// The raft snapshot data.
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(LEN);
        out.extend_from_slice(MAGIC);
        for v in [self.group_id, self.index, self.term] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// Whether `data` is in this format (not necessarily intact).
    #[must_use]
    pub fn is_descriptor(data: &[u8]) -> bool {
        data.starts_with(MAGIC)
    }

    /// Parses raft snapshot data.
    ///
    /// # Errors
    ///
    /// What is wrong with it.
    pub fn decode(data: &[u8]) -> Result<Descriptor, String> {
        if data.len() != LEN || !data.starts_with(MAGIC) {
            return Err(format!("not a snapshot descriptor ({} bytes)", data.len()));
        }
        let (body, crc) = data.split_at(LEN - 4);
        let u64_at = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&body[MAGIC.len() + 8 * i..MAGIC.len() + 8 * i + 8]);
            u64::from_le_bytes(b)
        };
        let mut c = [0u8; 4];
        c.copy_from_slice(crc);
        if crc32fast::hash(body) != u32::from_le_bytes(c) {
            return Err("snapshot descriptor checksum mismatch".into());
        }
        Ok(Descriptor {
            group_id: u64_at(0),
            index: u64_at(1),
            term: u64_at(2),
        })
    }
}

/// Whether `name` is a plain file name (no separators, not `.` or `..`).
#[must_use]
pub fn is_plain_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name != "."
        && name != ".."
        && !name.contains(['/', '\\', '\0'])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptor_roundtrip_and_damage() {
        let d = Descriptor {
            group_id: 1,
            index: 42,
            term: 7,
        };
        let bytes = d.encode();
        assert_eq!(Descriptor::decode(&bytes).unwrap(), d);
        assert_eq!(d.name(), "00000000000000000042-7");
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 1;
            assert!(Descriptor::decode(&bad).is_err(), "flip at {i}");
        }
        assert!(Descriptor::decode(&bytes[..bytes.len() - 1]).is_err());
        assert!(Descriptor::decode(b"").is_err());
    }
}
