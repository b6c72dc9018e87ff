//! Packing an engine checkpoint directory into one byte string (a raft
//! snapshot) and back.
//!
//! ```text
//! archive := magic "FKVSNAP1" count:u32 (name_len:u16 name len:u64 data)* crc32:u32
//! ```
//!
//! All integers little-endian; the CRC32 covers every byte before it. Only
//! flat directories of plain files are packed; names must be plain file
//! names (no separators, not `.` or `..`).

use std::io::Write;
use std::path::Path;

use crate::error::{Error, IoContext, Result};

const MAGIC: &[u8; 8] = b"FKVSNAP1";

/// Packs every file of `dir` (sorted by name).
///
/// # Errors
///
/// I/O errors; [`Error::Corruption`] if `dir` holds something other than
/// plain files.
pub fn pack(dir: &Path) -> Result<Vec<u8>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).ctx(dir)? {
        let entry = entry.ctx(dir)?;
        let ty = entry.file_type().ctx(entry.path())?;
        if !ty.is_file() {
            return Err(Error::corruption(entry.path(), "not a plain file"));
        }
        let name = entry
            .file_name()
            .into_string()
            .map_err(|_| Error::corruption(entry.path(), "file name is not UTF-8"))?;
        names.push(name);
    }
    names.sort();
    let mut out = Vec::new();
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&u32::try_from(names.len()).unwrap_or(u32::MAX).to_le_bytes());
    for name in &names {
        let path = dir.join(name);
        let data = std::fs::read(&path).ctx(&path)?;
        let name_len = u16::try_from(name.len())
            .map_err(|_| Error::corruption(&path, "file name too long"))?;
        out.extend_from_slice(&name_len.to_le_bytes());
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&(data.len() as u64).to_le_bytes());
        out.extend_from_slice(&data);
    }
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    Ok(out)
}

/// Unpacks `archive` into `dir` (created; must not exist), fsyncing every
/// file and the directory.
///
/// # Errors
///
/// [`Error::Corruption`] (naming `source`) when the archive is damaged;
/// I/O errors. On error `dir` may be left partly written.
pub fn unpack(archive: &[u8], dir: &Path, source: &Path) -> Result<()> {
    let bad = |reason: &str| Error::corruption(source, format!("snapshot archive: {reason}"));
    if archive.len() < MAGIC.len() + 8 {
        return Err(bad("too short"));
    }
    let (body, crc) = archive.split_at(archive.len() - 4);
    let expected = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
    let got = crc32fast::hash(body);
    if got != expected {
        return Err(bad(&format!(
            "checksum mismatch: expected {expected:#010x}, got {got:#010x}"
        )));
    }
    let Some(rest) = body.strip_prefix(MAGIC.as_slice()) else {
        return Err(bad("bad magic"));
    };
    let mut r = rest;
    let mut take = |n: usize| -> Result<&[u8]> {
        if r.len() < n {
            return Err(bad("truncated"));
        }
        let (head, tail) = r.split_at(n);
        r = tail;
        Ok(head)
    };
    let count = u32::from_le_bytes(take(4)?.try_into().map_err(|_| bad("count"))?);
    std::fs::create_dir_all(dir).ctx(dir)?;
    for _ in 0..count {
        let name_len = u16::from_le_bytes(take(2)?.try_into().map_err(|_| bad("name"))?);
        let name = std::str::from_utf8(take(name_len.into())?).map_err(|_| bad("name"))?;
        if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\\', '\0']) {
            return Err(bad(&format!("bad file name {name:?}")));
        }
        let len = u64::from_le_bytes(take(8)?.try_into().map_err(|_| bad("length"))?);
        let data = take(usize::try_from(len).map_err(|_| bad("length"))?)?;
        let path = dir.join(name);
        let mut f = std::fs::File::create_new(&path).ctx(&path)?;
        f.write_all(data).ctx(&path)?;
        f.sync_all().ctx(&path)?;
    }
    if !r.is_empty() {
        return Err(bad("trailing bytes"));
    }
    sync_dir(dir)
}

/// Fsyncs a directory so that the entries created in it are durable.
///
/// # Errors
///
/// I/O errors.
pub fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir).and_then(|d| d.sync_all()).ctx(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_damage_detection() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        std::fs::create_dir(&src).unwrap();
        std::fs::write(src.join("a"), b"hello").unwrap();
        std::fs::write(src.join("b"), b"").unwrap();
        let packed = pack(&src).unwrap();
        let dst = tmp.path().join("dst");
        unpack(&packed, &dst, Path::new("test")).unwrap();
        assert_eq!(std::fs::read(dst.join("a")).unwrap(), b"hello");
        assert_eq!(std::fs::read(dst.join("b")).unwrap(), b"");
        for i in 0..packed.len() {
            let mut bad = packed.clone();
            bad[i] ^= 0x40;
            let d = tmp.path().join(format!("bad{i}"));
            assert!(unpack(&bad, &d, Path::new("test")).is_err(), "flip at {i}");
            assert!(unpack(&packed[..i], &d.with_extension("t"), Path::new("t")).is_err());
        }
    }
}
