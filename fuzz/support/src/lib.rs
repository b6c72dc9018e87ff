//! Helpers shared by the fuzz targets and the seed generator.

use std::path::{Path, PathBuf};

/// Several files packed into one fuzz input, for targets whose decoder reads
/// a directory (a raft log: segments and a snapshot file).
///
/// ```text
/// input := file*
/// file  := kind:u8 len:u16 LE bytes[len]
/// ```
/// A length running past the end takes what is left, so every byte string
/// is a valid container and mutations of the lengths stay meaningful.
pub mod container {
    /// Packs `(kind, bytes)` files; files longer than 65,535 bytes are cut.
    #[must_use]
    pub fn encode(files: &[(u8, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (kind, data) in files {
            let len = u16::try_from(data.len()).unwrap_or(u16::MAX);
            out.push(*kind);
            out.extend_from_slice(&len.to_le_bytes());
            out.extend_from_slice(&data[..usize::from(len)]);
        }
        out
    }

    /// Unpacks every file of `data`.
    #[must_use]
    pub fn decode(mut data: &[u8]) -> Vec<(u8, &[u8])> {
        let mut files = Vec::new();
        while let Some((&kind, rest)) = data.split_first() {
            let len = match rest {
                [a, b, ..] => usize::from(u16::from_le_bytes([*a, *b])),
                _ => 0,
            };
            let rest = rest.get(2..).unwrap_or(&[]);
            let (file, tail) = rest.split_at(len.min(rest.len()));
            files.push((kind, file));
            data = tail;
        }
        files
    }
}

/// An empty directory `name` private to this process, emptied on every
/// call. It lives under the system temporary directory (`TMPDIR`; `run.sh`
/// points it at a tmpfs when there is one, so that the fsyncs of recovery
/// cost little).
///
/// # Panics
///
/// When the directory cannot be made: the fuzz run cannot go on.
#[must_use]
pub fn fresh_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir()
        .join(format!("flashkv-fuzz-{}", std::process::id()))
        .join(name);
    match std::fs::remove_dir_all(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => panic!("cannot empty {}: {e}", dir.display()),
    }
    std::fs::create_dir_all(&dir)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    dir
}

/// Writes `data` to `dir/name`.
///
/// # Panics
///
/// When the file cannot be written: the fuzz run cannot go on.
pub fn write_file(dir: &Path, name: &str, data: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, data).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    path
}

/// Checksum repair, so that mutated inputs get past the CRCs that guard
/// every on-disk structure and reach the decoders behind them. A target
/// repairs when the first byte of its input has its low bit set; the
/// repair follows the framing the crates document, and leaves alone what
/// it cannot frame.
pub mod fixup {
    fn put_crc(buf: &mut [u8], at: usize, covered: std::ops::Range<usize>) {
        let crc = crc32fast::hash(&buf[covered]);
        buf[at..at + 4].copy_from_slice(&crc.to_le_bytes());
    }

    fn u32_le(b: &[u8], at: usize) -> Option<u32> {
        Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
    }

    fn u64_le(b: &[u8], at: usize) -> Option<u64> {
        Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
    }

    /// kv-engine WAL segments and manifests:
    /// `[len u32][crc(len) u32][crc(payload) u32][payload]` records, ended
    /// by zeros.
    pub fn engine_records(buf: &mut [u8]) {
        let mut pos = 0usize;
        while pos + 12 <= buf.len() {
            if buf[pos..pos + 12].iter().all(|&b| b == 0) {
                return;
            }
            put_crc(buf, pos + 4, pos..pos + 4);
            let len = u32_le(buf, pos).unwrap_or(0) as usize;
            let Some(end) = (pos + 12).checked_add(len).filter(|&e| e <= buf.len()) else {
                return;
            };
            put_crc(buf, pos + 8, pos + 12..end);
            pos = end;
        }
    }

    /// kv-engine WAL segments: the commit groups' checksums (seeded by the
    /// segment header) and the records inside them.
    pub fn engine_wal(buf: &mut [u8]) {
        kv_engine::fuzzing::repair_wal(buf, engine_records);
    }

    /// kv-raft segment and snapshot files:
    /// `[len u32][kind u8][3 x 0][crc(first 8) u32][crc(payload) u32][payload]`.
    pub fn raft_records(buf: &mut [u8]) {
        let mut pos = 0usize;
        while pos + 16 <= buf.len() {
            if buf[pos..].iter().all(|&b| b == 0) {
                return;
            }
            put_crc(buf, pos + 8, pos..pos + 8);
            let len = u32_le(buf, pos).unwrap_or(0) as usize;
            let Some(end) = (pos + 16).checked_add(len).filter(|&e| e <= buf.len()) else {
                return;
            };
            put_crc(buf, pos + 12, pos + 16..end);
            pos = end;
        }
    }

    /// kv-engine tables: the footer's checksum and those of the bloom
    /// filter and index blocks it points to. (Data blocks are found only
    /// through the index block's encoding, which is the crate's own.)
    pub fn table(buf: &mut [u8]) {
        const FOOTER: usize = 5 * 8 + 4 + 8;
        let Some(foot) = buf.len().checked_sub(FOOTER) else {
            return;
        };
        for field in [0usize, 2] {
            let (Some(off), Some(len)) = (
                u64_le(buf, foot + field * 8),
                u64_le(buf, foot + field * 8 + 8),
            ) else {
                continue;
            };
            let (Ok(off), Ok(len)) = (usize::try_from(off), usize::try_from(len)) else {
                continue;
            };
            if let Some(end) = off
                .checked_add(len)
                .filter(|&e| e.checked_add(4).is_some_and(|e4| e4 <= foot))
            {
                put_crc(buf, end, off..end);
            }
        }
        put_crc(buf, foot + 40, foot..foot + 40);
    }

    /// kv-server snapshot archives: a CRC32 of everything before it at the end.
    pub fn archive(buf: &mut [u8]) {
        if let Some(at) = buf.len().checked_sub(4) {
            put_crc(buf, at, 0..at);
        }
    }

    /// Splits a target's input into its mode byte (repair or not) and the
    /// bytes, repaired with `fix` when asked.
    #[must_use]
    pub fn input(data: &[u8], fix: impl FnOnce(&mut [u8])) -> Vec<u8> {
        match data.split_first() {
            Some((&mode, rest)) => {
                let mut bytes = rest.to_vec();
                if mode & 1 == 1 {
                    fix(&mut bytes);
                }
                bytes
            }
            None => Vec::new(),
        }
    }
}

/// Name of the manifest file the `manifest` target writes, and which its
/// `CURRENT` names.
pub const MANIFEST_NAME: &str = "MANIFEST-000001";

/// Number of levels the engine's default options have.
pub const NUM_LEVELS: usize = 7;

/// Frame size limit the `frame` target decodes with: small, so that inputs
/// reach both sides of it.
pub const FUZZ_MAX_FRAME: usize = 4096;

/// Kinds of the files of a `raft_log` input.
pub mod raft_file {
    /// A segment file (named by its position among the segments).
    pub const SEGMENT: u8 = 0;
    /// The snapshot file.
    pub const SNAPSHOT: u8 = 1;
}

#[cfg(test)]
mod tests {
    use super::container;

    #[test]
    fn container_roundtrip() {
        let files: Vec<(u8, &[u8])> = vec![(0, b"abc"), (1, b""), (0, &[7u8; 300])];
        assert_eq!(container::decode(&container::encode(&files)), files);
        // A length past the end takes the rest.
        assert_eq!(container::decode(&[1, 9, 0, 5]), vec![(1u8, &[5u8][..])]);
    }
}
