//! Encoding of the index's records in the engine.
//!
//! | key | value |
//! |---|---|
//! | `m/format` | `kv-search/1 ` + embedder id |
//! | `m/applied` | applied index, u64 LE |
//! | `m/stats` | varint documents, varint total words |
//! | `t/<term>\0<key>` | varint tf, varint document length (words) |
//! | `f/<term>` | varint document frequency |
//! | `d/<key>` | varint length, varint #terms, per term: varint len, bytes, varint tf |
//! | `v/<key>` | `dim` bytes: the 8-bit vector |

use std::collections::BTreeMap;

use crate::error::{Error, Result};

pub(crate) const FORMAT: &[u8] = b"m/format";
pub(crate) const APPLIED: &[u8] = b"m/applied";
pub(crate) const STATS: &[u8] = b"m/stats";
pub(crate) const FORMAT_VERSION: &str = "kv-search/1";

pub(crate) fn posting_key(term: &str, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(3 + term.len() + key.len());
    k.extend_from_slice(b"t/");
    k.extend_from_slice(term.as_bytes());
    k.push(0);
    k.extend_from_slice(key);
    k
}

pub(crate) fn tagged(tag: &[u8], body: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(tag.len() + body.len());
    k.extend_from_slice(tag);
    k.extend_from_slice(body);
    k
}

pub(crate) fn df_key(term: &str) -> Vec<u8> {
    tagged(b"f/", term.as_bytes())
}
pub(crate) fn doc_key(key: &[u8]) -> Vec<u8> {
    tagged(b"d/", key)
}
pub(crate) fn vec_key(key: &[u8]) -> Vec<u8> {
    tagged(b"v/", key)
}

pub(crate) fn put_varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

/// Reads records, reporting damage against the record's key.
pub(crate) struct Reader<'a> {
    key: &'a [u8],
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(key: &'a [u8], buf: &'a [u8]) -> Self {
        Reader { key, buf }
    }

    fn bad(&self, why: &str) -> Error {
        Error::corrupt(self.key, why)
    }

    pub(crate) fn varint(&mut self) -> Result<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let (&b, rest) = self
                .buf
                .split_first()
                .ok_or_else(|| self.bad("truncated varint"))?;
            self.buf = rest;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(self.bad("varint too long"))
    }

    pub(crate) fn u32(&mut self) -> Result<u32> {
        u32::try_from(self.varint()?).map_err(|_| self.bad("value out of range"))
    }

    pub(crate) fn bytes(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.buf.len() < n {
            return Err(self.bad("truncated record"));
        }
        let (b, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(b)
    }

    pub(crate) fn finish(&self) -> Result<()> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(self.bad("trailing bytes"))
        }
    }
}

/// What the index holds about one document.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct DocRecord {
    /// Words in the value.
    pub(crate) len: u32,
    /// Distinct terms with their counts.
    pub(crate) terms: BTreeMap<String, u32>,
}

impl DocRecord {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(8 + self.terms.len() * 8);
        put_varint(&mut b, u64::from(self.len));
        put_varint(&mut b, self.terms.len() as u64);
        for (t, &tf) in &self.terms {
            put_varint(&mut b, t.len() as u64);
            b.extend_from_slice(t.as_bytes());
            put_varint(&mut b, u64::from(tf));
        }
        b
    }

    pub(crate) fn decode(key: &[u8], value: &[u8]) -> Result<DocRecord> {
        let mut r = Reader::new(key, value);
        let len = r.u32()?;
        let n = r.varint()?;
        let mut terms = BTreeMap::new();
        for _ in 0..n {
            let tl = r.varint()? as usize;
            let t = std::str::from_utf8(r.bytes(tl)?)
                .map_err(|_| Error::corrupt(key, "term is not UTF-8"))?;
            let tf = r.u32()?;
            terms.insert(t.to_string(), tf);
        }
        r.finish()?;
        Ok(DocRecord { len, terms })
    }
}

pub(crate) fn encode_posting(tf: u32, len: u32) -> Vec<u8> {
    let mut b = Vec::with_capacity(6);
    put_varint(&mut b, u64::from(tf));
    put_varint(&mut b, u64::from(len));
    b
}

pub(crate) fn decode_posting(key: &[u8], v: &[u8]) -> Result<(u32, u32)> {
    let mut r = Reader::new(key, v);
    let tf = r.u32()?;
    let len = r.u32()?;
    r.finish()?;
    Ok((tf, len))
}

pub(crate) fn encode_u64s(vals: &[u64]) -> Vec<u8> {
    let mut b = Vec::new();
    for &v in vals {
        put_varint(&mut b, v);
    }
    b
}

pub(crate) fn decode_u64s<const N: usize>(key: &[u8], v: &[u8]) -> Result<[u64; N]> {
    let mut r = Reader::new(key, v);
    let mut out = [0u64; N];
    for o in &mut out {
        *o = r.varint()?;
    }
    r.finish()?;
    Ok(out)
}

/// The smallest key after every key starting with `prefix`, `None` when
/// there is none (the prefix is all 0xff).
pub(crate) fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doc_record_roundtrip_and_truncation() {
        let mut d = DocRecord {
            len: 7,
            ..Default::default()
        };
        d.terms.insert("straße".into(), 2);
        d.terms.insert("a".into(), 5);
        let b = d.encode();
        assert_eq!(DocRecord::decode(b"k", &b).expect("decodes"), d);
        for cut in 0..b.len() {
            assert!(DocRecord::decode(b"k", &b[..cut]).is_err(), "cut {cut}");
        }
        assert_eq!(prefix_end(b"ab\xff"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(b"\xff"), None);
    }
}
