//! Internal keys: user key followed by an 8-byte trailer `seq << 8 | kind`
//! (big-endian). Internal keys sort by user key ascending, then by trailer
//! descending, so the newest version of a key comes first.

use std::cmp::Ordering;

use bytes::Bytes;

/// Largest sequence number (56 bits).
pub(crate) const MAX_SEQ: u64 = (1 << 56) - 1;
pub(crate) const TRAILER_LEN: usize = 8;

/// What an internal entry records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Delete = 0,
    Put = 1,
}

/// Builds an internal key.
#[cfg(test)]
pub(crate) fn make(user_key: &[u8], seq: u64, kind: Kind) -> Vec<u8> {
    let mut v = Vec::with_capacity(user_key.len() + TRAILER_LEN);
    v.extend_from_slice(user_key);
    v.extend_from_slice(&trailer_of(seq, kind).to_be_bytes());
    v
}

/// The trailer of an internal key.
pub(crate) fn trailer_of(seq: u64, kind: Kind) -> u64 {
    (seq << 8) | kind as u64
}

/// The smallest internal key for `user_key` visible at `seq`: entries with
/// sequence <= `seq` sort at or after it.
pub(crate) fn lookup(user_key: &[u8], seq: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(user_key.len() + TRAILER_LEN);
    v.extend_from_slice(user_key);
    v.extend_from_slice(&lookup_trailer(seq).to_be_bytes());
    v
}

/// The trailer of a lookup key: sorts before every entry of `seq` or older.
fn lookup_trailer(seq: u64) -> u64 {
    (seq << 8) | 0xff
}

/// A lookup key ([`lookup`]) built on the stack when the user key is short,
/// so that a point read allocates nothing.
pub(crate) enum LookupKey {
    Inline([u8; LookupKey::INLINE], usize),
    Heap(Vec<u8>),
}

impl LookupKey {
    const INLINE: usize = 64;

    pub(crate) fn new(user_key: &[u8], seq: u64) -> Self {
        let n = user_key.len() + TRAILER_LEN;
        if n > Self::INLINE {
            return LookupKey::Heap(lookup(user_key, seq));
        }
        let mut buf = [0u8; Self::INLINE];
        buf[..user_key.len()].copy_from_slice(user_key);
        buf[user_key.len()..n].copy_from_slice(&lookup_trailer(seq).to_be_bytes());
        LookupKey::Inline(buf, n)
    }
}

impl std::ops::Deref for LookupKey {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            LookupKey::Inline(buf, n) => &buf[..*n],
            LookupKey::Heap(v) => v,
        }
    }
}

/// Splits an internal key. `None` if it is too short or has an unknown kind.
pub(crate) fn parse(ikey: &[u8]) -> Option<(&[u8], u64, Kind)> {
    let split = ikey.len().checked_sub(TRAILER_LEN)?;
    let (user, trailer) = ikey.split_at(split);
    let t = u64::from_be_bytes(trailer.try_into().ok()?);
    let kind = match t & 0xff {
        0 => Kind::Delete,
        1 => Kind::Put,
        _ => return None,
    };
    Some((user, t >> 8, kind))
}

/// The user-key part; the whole slice if it is too short to hold a trailer.
pub(crate) fn user_key(ikey: &[u8]) -> &[u8] {
    &ikey[..ikey.len().saturating_sub(TRAILER_LEN)]
}

fn trailer(ikey: &[u8]) -> u64 {
    let n = ikey.len();
    if n < TRAILER_LEN {
        return 0;
    }
    let mut b = [0u8; 8];
    b.copy_from_slice(&ikey[n - TRAILER_LEN..]);
    u64::from_be_bytes(b)
}

/// Total order on internal keys.
#[inline]
pub(crate) fn compare(a: &[u8], b: &[u8]) -> Ordering {
    compare_user(user_key(a), user_key(b)).then_with(|| trailer(b).cmp(&trailer(a)))
}

/// Orders user keys bytewise, like `ua.cmp(ub)`.
pub(crate) fn compare_user(ua: &[u8], ub: &[u8]) -> Ordering {
    // Most comparisons of distinct keys are decided in the first 8 bytes;
    // comparing them as one integer avoids a call to memcmp.
    if let (Some(pa), Some(pb)) = (ua.first_chunk::<8>(), ub.first_chunk::<8>()) {
        let (pa, pb) = (u64::from_be_bytes(*pa), u64::from_be_bytes(*pb));
        if pa != pb {
            return pa.cmp(&pb);
        }
    }
    ua.cmp(ub)
}

/// The first 8 bytes of an internal key's user key as a big-endian number,
/// zero padded. If `prefix(a) < prefix(b)` then `a < b`, so comparisons can
/// often stop at this integer.
pub(crate) fn prefix(ikey: &[u8]) -> u64 {
    let uk = user_key(ikey);
    let mut b = [0u8; 8];
    let n = uk.len().min(8);
    b[..n].copy_from_slice(&uk[..n]);
    u64::from_be_bytes(b)
}

/// An owned internal key ordered by [`compare`], used as the memtable's key.
///
/// The memtable stores a whole entry in it: `entry` holds the internal key
/// (its first `klen` bytes) followed by the value, so one buffer (carved from
/// the memtable's arena) carries both and the skiplist needs no separate
/// value. It carries the key's 8-byte prefix inline, laid out last so that it
/// sits next to the skiplist node's tower: most comparisons during a search
/// are decided by the prefix, in the cache line the search loads anyway.
#[derive(Debug, Clone)]
#[repr(C)]
pub(crate) struct InternalKey {
    entry: Bytes,
    klen: usize,
    prefix: u64,
}

impl InternalKey {
    /// A key alone (no value), e.g. a lookup key.
    pub(crate) fn new(bytes: Bytes) -> Self {
        let klen = bytes.len();
        Self::with_value(bytes, klen)
    }

    /// An internal key of `klen` bytes followed by its value in `entry`.
    pub(crate) fn with_value(entry: Bytes, klen: usize) -> Self {
        let klen = klen.min(entry.len());
        InternalKey {
            prefix: prefix(&entry[..klen]),
            klen,
            entry,
        }
    }

    /// The internal key.
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.entry[..self.klen]
    }

    /// The internal key as a shared buffer.
    pub(crate) fn key_bytes(&self) -> Bytes {
        self.entry.slice(..self.klen)
    }

    /// The value stored after the key, borrowed.
    pub(crate) fn value_slice(&self) -> &[u8] {
        &self.entry[self.klen..]
    }

    /// The value stored after the key (empty for a key alone).
    pub(crate) fn value(&self) -> Bytes {
        self.entry.slice(self.klen..)
    }
}

impl Ord for InternalKey {
    fn cmp(&self, other: &Self) -> Ordering {
        self.prefix
            .cmp(&other.prefix)
            .then_with(|| compare(self.bytes(), other.bytes()))
    }
}

/// Equal as keys: the value stored alongside plays no part.
impl PartialEq for InternalKey {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for InternalKey {}

impl PartialOrd for InternalKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_is_user_key_then_newest_first() {
        let a1 = make(b"a", 1, Kind::Put);
        let a2 = make(b"a", 2, Kind::Put);
        let ab = make(b"ab", 1, Kind::Put);
        assert_eq!(compare(&a2, &a1), Ordering::Less);
        assert_eq!(compare(&a1, &ab), Ordering::Less);
        assert_eq!(compare(&lookup(b"a", 1), &a1), Ordering::Less);
        assert_eq!(compare(&lookup(b"a", 1), &a2), Ordering::Greater);
        assert_eq!(parse(&a2), Some((&b"a"[..], 2, Kind::Put)));
        for k in [&b""[..], b"a", &[7u8; 56], &[7u8; 57], &[9u8; 300]] {
            assert_eq!(&*LookupKey::new(k, 42), &lookup(k, 42)[..]);
        }
        assert_eq!(parse(b"short"), None);
    }
}
