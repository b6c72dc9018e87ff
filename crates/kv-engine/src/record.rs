//! Framing of the records of write-ahead-log segments and the manifest.
//!
//! A record is `[len: u32 LE][crc32(len bytes): u32 LE][crc32(payload): u32 LE][payload]`.
//! The header has its own checksum so that a damaged length is told apart from
//! a torn tail: only damage a crash can produce is accepted as a torn tail.
//!
//! Only zero bytes from some record start to the end of the file is the end
//! of the records, in any file: WAL segments reserve space ahead of the
//! writes, and the unwritten reservation reads as zeros.
//!
//! A torn tail is (a) fewer bytes than a header at the end, (b) a valid
//! header whose payload runs past the end, or (c) a valid header whose
//! payload checksum fails when it is the very last record of the file.
//! Anything else is corruption.

use std::path::Path;

use crate::error::{Error, Result};

pub(crate) const HEADER_LEN: usize = 12;
/// Largest payload a record may carry.
pub(crate) const MAX_PAYLOAD: usize = u32::MAX as usize - HEADER_LEN;

pub(crate) fn encode(buf: &mut Vec<u8>, payload: &[u8]) {
    let len = (payload.len() as u32).to_le_bytes();
    buf.extend_from_slice(&len);
    buf.extend_from_slice(&crc32fast::hash(&len).to_le_bytes());
    buf.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    buf.extend_from_slice(payload);
}

/// The records of one file, in order.
#[derive(Debug)]
pub(crate) struct Records<'a> {
    /// `(offset of the record, payload)`.
    pub(crate) records: Vec<(u64, &'a [u8])>,
    /// Where a torn tail begins, if there is one.
    pub(crate) torn_at: Option<u64>,
}

/// Parses all records of `data` (the contents of `path`).
///
/// # Errors
///
/// [`Error::Corruption`] naming `path` and the offset of the bad record when
/// the damage is not a torn tail, or when it is one and `allow_torn_tail` is
/// false.
pub(crate) fn parse_all<'a>(
    path: &Path,
    data: &'a [u8],
    allow_torn_tail: bool,
) -> Result<Records<'a>> {
    parse_records(path, data, allow_torn_tail, false)
}

/// Parses the records of the last segment of a log whose files are reserved
/// ahead (zero-filled past the records), where a crash can leave the last,
/// never acknowledged write half on disk anywhere inside the reservation:
/// any damage counts as a torn tail as long as no intact record follows it.
/// Damage followed by an intact record is corruption. That holds only where
/// every record is its own write; WAL segments of commit groups (several
/// records in one write, whose bytes land in no particular order) are
/// parsed group by group instead (see the `wal` module).
///
/// # Errors
///
/// [`Error::Corruption`] naming `path` and the offset of the bad record.
pub(crate) fn parse_last_reserved<'a>(path: &Path, data: &'a [u8]) -> Result<Records<'a>> {
    parse_records(path, data, true, true)
}

/// The payload of an intact record at the start of `data`, and the offset
/// after it.
pub(crate) fn parse_first(data: &[u8]) -> Option<(&[u8], usize)> {
    match parse_at(data, 0) {
        Parsed::Ok(payload, next) => Some((payload, next)),
        Parsed::Torn(_) | Parsed::Corrupt(_) => None,
    }
}

fn parse_records<'a>(
    path: &Path,
    data: &'a [u8],
    allow_torn_tail: bool,
    reserved: bool,
) -> Result<Records<'a>> {
    let mut records = Vec::new();
    let mut pos = 0usize;
    while pos < data.len() {
        if data[pos..].iter().all(|&b| b == 0) {
            break;
        }
        match parse_at(&data[pos..], pos) {
            Parsed::Ok(payload, next) => {
                records.push((pos as u64, payload));
                pos = next;
            }
            Parsed::Torn(_) | Parsed::Corrupt(_) if reserved && !intact_record_after(data, pos) => {
                return Ok(Records {
                    records,
                    torn_at: Some(pos as u64),
                });
            }
            Parsed::Torn(why) => {
                if allow_torn_tail {
                    return Ok(Records {
                        records,
                        torn_at: Some(pos as u64),
                    });
                }
                return Err(Error::corruption(
                    path,
                    pos as u64,
                    format!("incomplete record ({why})"),
                ));
            }
            Parsed::Corrupt(why) => return Err(Error::corruption(path, pos as u64, why)),
        }
    }
    Ok(Records {
        records,
        torn_at: None,
    })
}

/// Whether an intact record (both checksums good) starts anywhere after
/// `pos`. Runs of zeros are skipped: a header of zeros is never intact.
fn intact_record_after(data: &[u8], pos: usize) -> bool {
    let mut q = pos + 1;
    while q + HEADER_LEN <= data.len() {
        if data[q..q + HEADER_LEN].iter().all(|&b| b == 0) {
            // Jump to just before the next non-zero byte.
            match data[q + HEADER_LEN..].iter().position(|&b| b != 0) {
                Some(i) => q = (q + 1 + i).max(q + 1),
                None => return false,
            }
            continue;
        }
        if let Parsed::Ok(..) = parse_at(&data[q..], q) {
            return true;
        }
        q += 1;
    }
    false
}

enum Parsed<'a> {
    Ok(&'a [u8], usize),
    Torn(&'static str),
    Corrupt(String),
}

fn parse_at(rest: &[u8], pos: usize) -> Parsed<'_> {
    let (Some(len_b), Some(hcrc), Some(pcrc)) = (
        rest.get(0..4),
        crate::coding::u32_at(rest, 4),
        crate::coding::u32_at(rest, 8),
    ) else {
        return Parsed::Torn("header cut short");
    };
    if crc32fast::hash(len_b) != hcrc {
        return Parsed::Corrupt("record header checksum mismatch".into());
    }
    let len = u32::from_le_bytes([len_b[0], len_b[1], len_b[2], len_b[3]]) as usize;
    let Some(payload) = rest.get(HEADER_LEN..HEADER_LEN + len) else {
        return Parsed::Torn("payload cut short");
    };
    let got = crc32fast::hash(payload);
    if got != pcrc {
        if HEADER_LEN + len == rest.len() {
            return Parsed::Torn("last record's payload checksum mismatch");
        }
        return Parsed::Corrupt(format!(
            "record payload checksum mismatch (expected {pcrc:#010x}, got {got:#010x})"
        ));
    }
    Parsed::Ok(payload, pos + HEADER_LEN + len)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(payloads: &[&[u8]]) -> Vec<u8> {
        let mut buf = Vec::new();
        for p in payloads {
            encode(&mut buf, p);
        }
        buf
    }

    #[test]
    fn every_truncation_keeps_a_prefix() {
        let data = file(&[b"one", b"two-two", b"three"]);
        for cut in 0..=data.len() {
            let r =
                parse_all(Path::new("t"), &data[..cut], true).expect("truncation is a torn tail");
            let got: Vec<&[u8]> = r.records.iter().map(|(_, p)| *p).collect();
            let want: Vec<&[u8]> = [&b"one"[..], b"two-two", b"three"]
                .into_iter()
                .take(got.len())
                .collect();
            assert_eq!(got, want, "cut at {cut}");
        }
    }

    #[test]
    fn middle_damage_is_corruption_and_names_offset() {
        let data = file(&[b"one", b"two-two", b"three"]);
        let second = HEADER_LEN + 3;
        for i in second..second + HEADER_LEN + 7 {
            let mut d = data.clone();
            d[i] ^= 0x10;
            match parse_all(Path::new("wal"), &d, true) {
                Err(Error::Corruption { offset, .. }) => assert_eq!(offset, second as u64),
                other => panic!("flip at {i}: expected corruption, got {other:?}"),
            }
        }
    }

    #[test]
    fn zero_tail_is_the_end_in_any_file() {
        let mut data = file(&[b"one"]);
        data.extend_from_slice(&[0u8; 100]);
        for last in [true, false] {
            let r = parse_all(Path::new("t"), &data, last).expect("zeros end the records");
            assert_eq!(r.records.len(), 1);
            assert_eq!(r.torn_at, None);
        }
        // Zeros followed by anything else are not a reservation.
        data.push(1);
        assert!(parse_all(Path::new("t"), &data, false).is_err());
    }
}
