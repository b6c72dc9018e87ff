//! Framing of the records in segment and snapshot files.
//!
//! ```text
//! +---------+------+---------+-------------+-------------+---------------+
//! | len u32 | kind | 3 x 0   | hdr_crc u32 | data_crc u32| payload (len) |
//! +---------+------+---------+-------------+-------------+---------------+
//! ```
//! All integers little-endian. `hdr_crc` covers the first 8 bytes, so a
//! damaged length is detected before it is trusted; `data_crc` covers the
//! payload. A header that checks out but whose payload runs past the end of the
//! file, and a bad payload checksum on the very last record of a file, are what
//! a write cut short by a crash leaves behind.

/// Size of a record header in bytes.
pub(crate) const HEADER_LEN: usize = 16;

/// Payloads above this size are rejected as corrupt rather than allocated.
pub(crate) const MAX_PAYLOAD: usize = 1 << 30;

/// What a record holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Kind {
    /// A protobuf `Entry`.
    Entry = 1,
    /// A protobuf `HardState`.
    HardState = 2,
    /// `u64` index followed by a protobuf `ConfState` in force from that index.
    ConfState = 3,
    /// `u64` index, `u64` term: a snapshot was installed; entries before are void.
    SnapshotMark = 4,
    /// A protobuf `Snapshot` (only in the snapshot file).
    Snapshot = 5,
}

impl Kind {
    fn from_u8(b: u8) -> Option<Kind> {
        Some(match b {
            1 => Kind::Entry,
            2 => Kind::HardState,
            3 => Kind::ConfState,
            4 => Kind::SnapshotMark,
            5 => Kind::Snapshot,
            _ => return None,
        })
    }
}

/// Appends one framed record to `out`.
pub(crate) fn encode(out: &mut Vec<u8>, kind: Kind, payload: &[u8]) {
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    let mut head = [0u8; 8];
    head[..4].copy_from_slice(&len.to_le_bytes());
    head[4] = kind as u8;
    out.extend_from_slice(&head);
    out.extend_from_slice(&crc32fast::hash(&head).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
}

/// The outcome of reading one record at an offset.
#[derive(Debug)]
pub(crate) enum Step<'a> {
    /// A good record; `next` is the offset after it.
    Record {
        kind: Kind,
        payload: &'a [u8],
        next: usize,
    },
    /// The offset is exactly the end of the buffer.
    End,
    /// The buffer ends inside the record (or only zero bytes follow).
    Incomplete,
    /// The header's checksum is wrong, or it names an unknown kind or an
    /// absurd length.
    BadHeader(String),
    /// The payload's checksum is wrong; `is_final` when the record ends
    /// exactly at the end of the buffer.
    BadData {
        expected: u32,
        got: u32,
        is_final: bool,
    },
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    if let Some(s) = b.get(at..at + 4) {
        a.copy_from_slice(s);
    }
    u32::from_le_bytes(a)
}

/// Reads the record at `off` in `buf`. Never panics.
pub(crate) fn read(buf: &[u8], off: usize) -> Step<'_> {
    let Some(rest) = buf.get(off..) else {
        return Step::Incomplete;
    };
    if rest.is_empty() {
        return Step::End;
    }
    if rest.len() < HEADER_LEN || rest.iter().all(|&b| b == 0) {
        return Step::Incomplete;
    }
    let head = &rest[..8];
    let hcrc = le_u32(rest, 8);
    let got = crc32fast::hash(head);
    if hcrc != got {
        return Step::BadHeader(format!(
            "header checksum mismatch: expected {hcrc:#010x}, got {got:#010x}"
        ));
    }
    let len = le_u32(rest, 0) as usize;
    let Some(kind) = Kind::from_u8(rest[4]) else {
        return Step::BadHeader(format!("unknown record kind {}", rest[4]));
    };
    if len > MAX_PAYLOAD {
        return Step::BadHeader(format!("record length {len} too large"));
    }
    let Some(payload) = rest.get(HEADER_LEN..HEADER_LEN + len) else {
        return Step::Incomplete;
    };
    let expected = le_u32(rest, 12);
    let got = crc32fast::hash(payload);
    if expected != got {
        return Step::BadData {
            expected,
            got,
            is_final: HEADER_LEN + len == rest.len(),
        };
    }
    Step::Record {
        kind,
        payload,
        next: off + HEADER_LEN + len,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_truncation() {
        let mut buf = Vec::new();
        encode(&mut buf, Kind::Entry, b"hello");
        encode(&mut buf, Kind::HardState, b"");
        let Step::Record {
            kind,
            payload,
            next,
        } = read(&buf, 0)
        else {
            panic!("expected record")
        };
        assert_eq!((kind, payload), (Kind::Entry, &b"hello"[..]));
        let Step::Record { kind, next: n2, .. } = read(&buf, next) else {
            panic!("expected record")
        };
        assert_eq!(kind, Kind::HardState);
        assert!(matches!(read(&buf, n2), Step::End));
        for cut in 1..next {
            assert!(
                matches!(read(&buf[..cut], 0), Step::Incomplete),
                "cut {cut}"
            );
        }
    }

    #[test]
    fn flips_are_detected() {
        let mut buf = Vec::new();
        encode(&mut buf, Kind::Entry, b"hello world");
        for i in 0..buf.len() {
            let mut b = buf.clone();
            b[i] ^= 0x10;
            assert!(!matches!(read(&b, 0), Step::Record { .. }), "flip at {i}");
        }
    }
}
