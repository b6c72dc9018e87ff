//! [`WriteBatch`]: several writes applied atomically.

use crate::coding::{Reader, put_len_prefixed};
use crate::key::Kind;

/// A group of puts and deletes that [`Db::write`](crate::Db::write) applies
/// atomically: after a crash either all of them are there or none.
///
/// Later operations on the same key in one batch win.
#[derive(Debug, Clone, Default)]
pub struct WriteBatch {
    /// Encoded operations: `kind: u8, key: varint-prefixed, [value: varint-prefixed]`.
    pub(crate) rep: Vec<u8>,
    pub(crate) count: u32,
}

impl WriteBatch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty batch with room for `bytes` of encoded operations.
    pub fn with_capacity(bytes: usize) -> Self {
        WriteBatch {
            rep: Vec::with_capacity(bytes),
            count: 0,
        }
    }

    /// Adds a put of `key` = `value`.
    pub fn put(&mut self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> &mut Self {
        self.rep.push(Kind::Put as u8);
        put_len_prefixed(&mut self.rep, key.as_ref());
        put_len_prefixed(&mut self.rep, value.as_ref());
        self.count += 1;
        self
    }

    /// Adds a delete of `key`.
    pub fn delete(&mut self, key: impl AsRef<[u8]>) -> &mut Self {
        self.rep.push(Kind::Delete as u8);
        put_len_prefixed(&mut self.rep, key.as_ref());
        self.count += 1;
        self
    }

    /// Number of operations in the batch.
    pub fn len(&self) -> usize {
        self.count as usize
    }

    /// True when the batch holds no operation.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Removes all operations.
    pub fn clear(&mut self) {
        self.rep.clear();
        self.count = 0;
    }

    /// Bytes the batch occupies once encoded.
    pub fn approximate_size(&self) -> usize {
        self.rep.len()
    }
}

/// One decoded operation.
pub(crate) struct Op<'a> {
    pub(crate) kind: Kind,
    pub(crate) key: &'a [u8],
    pub(crate) value: &'a [u8],
}

/// Decodes an encoded batch body. `None` when it is malformed.
pub(crate) fn decode(rep: &[u8], count: u32) -> Option<Vec<Op<'_>>> {
    let mut r = Reader::new(rep);
    let mut ops = Vec::with_capacity(count.min(1 << 16) as usize);
    while !r.is_empty() {
        let kind = match r.u8()? {
            0 => Kind::Delete,
            1 => Kind::Put,
            _ => return None,
        };
        let key = r.len_prefixed()?;
        let value = if kind == Kind::Put {
            r.len_prefixed()?
        } else {
            &[]
        };
        ops.push(Op { kind, key, value });
    }
    (ops.len() == count as usize).then_some(ops)
}

/// WAL payload of a batch: `seq: u64 LE, count: u32 LE, rep`.
pub(crate) fn encode_wal_payload(buf: &mut Vec<u8>, seq: u64, batch: &WriteBatch) {
    buf.extend_from_slice(&seq.to_le_bytes());
    buf.extend_from_slice(&batch.count.to_le_bytes());
    buf.extend_from_slice(&batch.rep);
}

/// Parses a WAL payload into `(first sequence, operations)`.
pub(crate) fn decode_wal_payload(p: &[u8]) -> Option<(u64, Vec<Op<'_>>)> {
    let mut r = Reader::new(p);
    let seq = r.u64()?;
    let count = r.u32()?;
    let ops = decode(p.get(r.pos()..)?, count)?;
    Some((seq, ops))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_garbage() {
        let mut b = WriteBatch::new();
        b.put(b"k", b"v").delete(b"gone").put(b"", b"");
        let mut p = Vec::new();
        encode_wal_payload(&mut p, 42, &b);
        let (seq, ops) = decode_wal_payload(&p).expect("decodes");
        assert_eq!(seq, 42);
        assert_eq!(ops.len(), 3);
        assert_eq!((ops[0].key, ops[0].value), (&b"k"[..], &b"v"[..]));
        assert_eq!(ops[1].kind, Kind::Delete);
        for cut in 0..p.len() {
            assert!(decode_wal_payload(&p[..cut]).is_none(), "cut {cut}");
        }
    }
}
