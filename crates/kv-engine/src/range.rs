//! [`KeyRange`]: the ranges `scan` accepts.

use std::ops::{Bound, Range, RangeFrom, RangeFull, RangeInclusive, RangeTo, RangeToInclusive};

/// Owned `(start, end)` bounds over byte keys.
pub(crate) type OwnedBounds = (Bound<Vec<u8>>, Bound<Vec<u8>>);

/// A range of byte keys: every standard range type (`a..b`, `a..=b`, `a..`,
/// `..b`, `..=b`, `..`) and `(Bound<K>, Bound<K>)`, over any `K: AsRef<[u8]>`
/// (`&[u8]`, `Vec<u8>`, `&str`, `bytes::Bytes`, ...).
///
/// Unlike a generic `RangeBounds<K>` parameter, the key type is always
/// inferred, so `db.scan(..)` and `db.scan((Bound::Included(a), Bound::Unbounded))`
/// need no annotations.
pub trait KeyRange {
    /// The start and end bounds as owned byte strings.
    fn into_bounds(self) -> (Bound<Vec<u8>>, Bound<Vec<u8>>);
}

fn own<K: AsRef<[u8]>>(b: Bound<K>) -> Bound<Vec<u8>> {
    match b {
        Bound::Included(k) => Bound::Included(k.as_ref().to_vec()),
        Bound::Excluded(k) => Bound::Excluded(k.as_ref().to_vec()),
        Bound::Unbounded => Bound::Unbounded,
    }
}

impl<K: AsRef<[u8]>> KeyRange for Range<K> {
    fn into_bounds(self) -> OwnedBounds {
        (
            own(Bound::Included(self.start)),
            own(Bound::Excluded(self.end)),
        )
    }
}

impl<K: AsRef<[u8]>> KeyRange for RangeInclusive<K> {
    fn into_bounds(self) -> OwnedBounds {
        let (s, e) = self.into_inner();
        (own(Bound::Included(s)), own(Bound::Included(e)))
    }
}

impl<K: AsRef<[u8]>> KeyRange for RangeFrom<K> {
    fn into_bounds(self) -> OwnedBounds {
        (own(Bound::Included(self.start)), Bound::Unbounded)
    }
}

impl<K: AsRef<[u8]>> KeyRange for RangeTo<K> {
    fn into_bounds(self) -> OwnedBounds {
        (Bound::Unbounded, own(Bound::Excluded(self.end)))
    }
}

impl<K: AsRef<[u8]>> KeyRange for RangeToInclusive<K> {
    fn into_bounds(self) -> OwnedBounds {
        (Bound::Unbounded, own(Bound::Included(self.end)))
    }
}

impl KeyRange for RangeFull {
    fn into_bounds(self) -> OwnedBounds {
        (Bound::Unbounded, Bound::Unbounded)
    }
}

impl<K: AsRef<[u8]>> KeyRange for (Bound<K>, Bound<K>) {
    fn into_bounds(self) -> OwnedBounds {
        (own(self.0), own(self.1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_range_form_converts() {
        let a = b"a".as_slice();
        assert_eq!(
            (a..b"b".as_slice()).into_bounds(),
            (
                Bound::Included(b"a".to_vec()),
                Bound::Excluded(b"b".to_vec())
            )
        );
        assert_eq!((..).into_bounds(), (Bound::Unbounded, Bound::Unbounded));
        assert_eq!(
            ("x"..="y").into_bounds(),
            (
                Bound::Included(b"x".to_vec()),
                Bound::Included(b"y".to_vec())
            )
        );
        assert_eq!(
            (Bound::Excluded(a), Bound::Unbounded).into_bounds(),
            (Bound::Excluded(b"a".to_vec()), Bound::Unbounded)
        );
        assert_eq!(
            (..vec![1u8]).into_bounds(),
            (Bound::Unbounded, Bound::Excluded(vec![1]))
        );
    }
}
