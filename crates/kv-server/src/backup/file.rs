//! The backup file of `kvctl snapshot save` (SPEC section 7).
//!
//! ```text
//! file   := magic "FKVBAK01" header_len:u32 header data crc32:u32
//! header := "index I\nterm T\nkeys K\n" ("file NAME SIZE\n")*     (UTF-8)
//! data   := the files' bytes, in header order
//! ```
//!
//! Integers little-endian; the CRC32 covers every byte before it. Written to
//! `FILE.part`, fsynced, then renamed; read as a stream (never whole).

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use crate::archive::sync_dir;
use crate::error::{Error, IoContext, Result};
use crate::snapshot::is_plain_name;

const MAGIC: &[u8; 8] = b"FKVBAK01";
const MAX_HEADER: usize = 64 << 20;

/// What a backup holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Applied raft index of the state.
    pub index: u64,
    /// Its term.
    pub term: u64,
    /// User keys in it.
    pub keys: u64,
    /// The engine checkpoint's files and their lengths.
    pub files: Vec<(String, u64)>,
}

impl Header {
    fn encode(&self) -> Vec<u8> {
        let mut s = format!(
            "index {}\nterm {}\nkeys {}\n",
            self.index, self.term, self.keys
        );
        for (name, size) in &self.files {
            s.push_str(&format!("file {name} {size}\n"));
        }
        s.into_bytes()
    }

    fn decode(b: &[u8]) -> std::result::Result<Header, String> {
        let text = std::str::from_utf8(b).map_err(|_| "header is not UTF-8".to_owned())?;
        let mut lines = text.lines();
        let mut num = |key: &str| -> std::result::Result<u64, String> {
            lines
                .next()
                .and_then(|l| l.strip_prefix(key))
                .and_then(|v| v.strip_prefix(' '))
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| format!("header lacks `{key}`"))
        };
        let (index, term, keys) = (num("index")?, num("term")?, num("keys")?);
        let mut files = Vec::new();
        for line in lines {
            let mut parts = line.split(' ');
            match (parts.next(), parts.next(), parts.next(), parts.next()) {
                (Some("file"), Some(name), Some(size), None) if is_plain_name(name) => {
                    let size = size.parse().map_err(|_| format!("bad size in {line:?}"))?;
                    files.push((name.to_owned(), size));
                }
                _ => return Err(format!("bad header line {line:?}")),
            }
        }
        Ok(Header {
            index,
            term,
            keys,
            files,
        })
    }

    /// Bytes of file data.
    #[must_use]
    pub fn data_bytes(&self) -> u64 {
        self.files.iter().map(|(_, s)| s).sum()
    }
}

/// Writes a backup file: [`Writer::create`], [`Writer::write`] the files'
/// bytes in header order, [`Writer::finish`].
#[derive(Debug)]
pub struct Writer {
    out: BufWriter<File>,
    part: PathBuf,
    path: PathBuf,
    crc: crc32fast::Hasher,
    size: u64,
    expected: u64,
    data: u64,
}

impl Writer {
    /// Starts `path` (as `path.part`) for a backup described by `header`.
    ///
    /// # Errors
    ///
    /// I/O errors.
    pub fn create(path: &Path, header: &Header) -> Result<Writer> {
        let mut part = path.as_os_str().to_owned();
        part.push(".part");
        let part = PathBuf::from(part);
        let file = File::create(&part).ctx(&part)?;
        let mut w = Writer {
            out: BufWriter::with_capacity(1 << 20, file),
            part,
            path: path.to_path_buf(),
            crc: crc32fast::Hasher::new(),
            size: 0,
            expected: header.data_bytes(),
            data: 0,
        };
        let h = header.encode();
        w.put(MAGIC)?;
        w.put(&u32::try_from(h.len()).unwrap_or(u32::MAX).to_le_bytes())?;
        w.put(&h)?;
        Ok(w)
    }

    fn put(&mut self, b: &[u8]) -> Result<()> {
        self.crc.update(b);
        self.size += b.len() as u64;
        self.out.write_all(b).ctx(&self.part)
    }

    /// Appends file data.
    ///
    /// # Errors
    ///
    /// I/O errors; more data than the header announced.
    pub fn write(&mut self, b: &[u8]) -> Result<()> {
        self.data += b.len() as u64;
        if self.data > self.expected {
            return Err(Error::Config("more snapshot data than announced".into()));
        }
        self.put(b)
    }

    /// Writes the checksum, fsyncs and renames into place; returns the file's
    /// size and checksum.
    ///
    /// # Errors
    ///
    /// I/O errors; less data than announced.
    pub fn finish(mut self) -> Result<(u64, u32)> {
        if self.data != self.expected {
            return Err(Error::Config(format!(
                "snapshot data ended at {} of {} bytes",
                self.data, self.expected
            )));
        }
        let crc = self.crc.clone().finalize();
        self.out.write_all(&crc.to_le_bytes()).ctx(&self.part)?;
        self.size += 4;
        let file = self
            .out
            .into_inner()
            .map_err(|e| Error::io(&self.part, e.into_error()))?;
        file.sync_all().ctx(&self.part)?;
        std::fs::rename(&self.part, &self.path).ctx(&self.path)?;
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            sync_dir(dir)?;
        }
        Ok((self.size, crc))
    }
}

/// A backup file that passed its checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// Its header.
    pub header: Header,
    /// File size.
    pub size: u64,
    /// Its CRC32.
    pub checksum: u32,
}

/// Reads `path` through, checking structure, lengths and checksum; with
/// `unpack_to`, also writes the files into that directory (created,
/// fsynced). Nothing is held in memory but one buffer.
///
/// # Errors
///
/// [`Error::Corruption`] naming the file when it is damaged or not a
/// backup; I/O errors.
pub fn read(path: &Path, unpack_to: Option<&Path>) -> Result<Verified> {
    let bad = |why: String| Error::corruption(path, format!("not an intact snapshot file: {why}"));
    let file = File::open(path).ctx(path)?;
    let total = file.metadata().ctx(path)?.len();
    let mut r = BufReader::with_capacity(1 << 20, file);
    let mut crc = crc32fast::Hasher::new();
    let mut take = |r: &mut BufReader<File>, n: usize| -> Result<Vec<u8>> {
        let mut b = vec![0u8; n];
        r.read_exact(&mut b).map_err(|_| bad("truncated".into()))?;
        crc.update(&b);
        Ok(b)
    };
    if total < 16 || take(&mut r, 8)? != MAGIC {
        return Err(bad("bad magic".into()));
    }
    let len = take(&mut r, 4)?;
    let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
    if len > MAX_HEADER || len as u64 > total {
        return Err(bad(format!("header of {len} bytes")));
    }
    let header = Header::decode(&take(&mut r, len)?).map_err(bad)?;
    let expected = 8 + 4 + len as u64 + header.data_bytes() + 4;
    if expected != total {
        return Err(bad(format!(
            "{total} bytes, the header announces {expected}"
        )));
    }
    if let Some(dir) = unpack_to {
        std::fs::create_dir_all(dir).ctx(dir)?;
    }
    let mut buf = vec![0u8; 1 << 20];
    for (name, size) in &header.files {
        let mut out = match unpack_to {
            Some(dir) => Some(File::create_new(dir.join(name)).ctx(dir.join(name))?),
            None => None,
        };
        let mut left = *size;
        while left > 0 {
            let n = usize::try_from(left.min(buf.len() as u64)).unwrap_or(buf.len());
            r.read_exact(&mut buf[..n])
                .map_err(|_| bad("truncated".into()))?;
            crc.update(&buf[..n]);
            if let Some(f) = &mut out {
                f.write_all(&buf[..n]).ctx(dir_of(unpack_to, name))?;
            }
            left -= n as u64;
        }
        if let Some(f) = out {
            f.sync_all().ctx(dir_of(unpack_to, name))?;
        }
    }
    let mut tail = [0u8; 4];
    r.read_exact(&mut tail)
        .map_err(|_| bad("truncated".into()))?;
    let (want, got) = (u32::from_le_bytes(tail), crc.finalize());
    if want != got {
        return Err(bad(format!(
            "checksum mismatch: recorded {want:08x}, computed {got:08x}"
        )));
    }
    if let Some(dir) = unpack_to {
        sync_dir(dir)?;
    }
    Ok(Verified {
        header,
        size: total,
        checksum: got,
    })
}

fn dir_of(dir: Option<&Path>, name: &str) -> PathBuf {
    dir.map_or_else(|| PathBuf::from(name), |d| d.join(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_every_damage_is_found() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("b.snap");
        let header = Header {
            index: 42,
            term: 3,
            keys: 2,
            files: vec![("000001.sst".into(), 5), ("MANIFEST-000003".into(), 3)],
        };
        let mut w = Writer::create(&path, &header).unwrap();
        w.write(b"hel").unwrap();
        w.write(b"loabc").unwrap();
        let (size, crc) = w.finish().unwrap();
        assert!(!tmp.path().join("b.snap.part").exists());
        let v = read(&path, None).unwrap();
        assert_eq!((v.size, v.checksum, &v.header), (size, crc, &header));
        let out = tmp.path().join("out");
        read(&path, Some(&out)).unwrap();
        assert_eq!(std::fs::read(out.join("000001.sst")).unwrap(), b"hello");
        assert_eq!(std::fs::read(out.join("MANIFEST-000003")).unwrap(), b"abc");

        let bytes = std::fs::read(&path).unwrap();
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x10;
            std::fs::write(&path, &bad).unwrap();
            let e = read(&path, None).expect_err("damage found");
            assert!(e.to_string().contains("b.snap"), "{e}");
        }
        std::fs::write(&path, &bytes[..bytes.len() - 1]).unwrap();
        assert!(read(&path, None).is_err());
        // Too little data is refused at the writer.
        let mut w = Writer::create(&path, &header).unwrap();
        w.write(b"x").unwrap();
        assert!(w.finish().is_err());
    }
}
