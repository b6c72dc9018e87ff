//! Data and index blocks: prefix-compressed entries with restart points.
//!
//! Entry: `shared: varint, unshared: varint, value_len: varint, key[shared..], value`.
//! Trailer: `restart key prefixes: u64 LE each, restart offsets: u32 LE each,
//! count: u32 LE`.
//!
//! A restart key's prefix is its user key's first 8 bytes as a big-endian
//! number ([`key::prefix`]). A seek binary-searches those packed numbers,
//! which sit in one or two cache lines, and reads a restart entry itself only
//! when a prefix ties, instead of touching a scattered entry on every probe.
//!
//! A restart point is placed only where a new user key begins (the interval
//! stretches while versions of one user key follow each other), so all
//! versions of a user key sit in the interval of its newest one. A seek for a
//! user key can then start at the restart point holding it, instead of one
//! interval earlier as when the restart's internal key (an older version)
//! compares after the target. Tables written before this rule
//! (`FlashKV2`) are read with [`BlockIter::with_old_restarts`].

use std::cmp::Ordering;

use bytes::Bytes;

use crate::coding::{Reader, put_varint, u32_at, u64_at, varint_len};
use crate::key;

/// Accumulates sorted entries into one block.
#[derive(Debug)]
pub(crate) struct BlockBuilder {
    buf: Vec<u8>,
    restarts: Vec<u32>,
    prefixes: Vec<u64>,
    interval: usize,
    since_restart: usize,
    last_key: Vec<u8>,
}

impl BlockBuilder {
    pub(crate) fn new(interval: usize) -> Self {
        BlockBuilder {
            buf: Vec::new(),
            restarts: Vec::new(),
            prefixes: Vec::new(),
            interval,
            since_restart: 0,
            last_key: Vec::new(),
        }
    }

    /// Whether `key` starts a restart interval (the block is empty, or the
    /// interval is full and `key` begins a new user key), and the bytes it
    /// shares with the previous key (0 at a restart point).
    fn plan(&self, key: &[u8]) -> (bool, usize) {
        let restart = self.restarts.is_empty()
            || (self.since_restart >= self.interval
                && key::user_key(key) != key::user_key(&self.last_key));
        if restart {
            return (true, 0);
        }
        let shared = key
            .iter()
            .zip(&self.last_key)
            .take_while(|(a, b)| a == b)
            .count();
        (false, shared)
    }

    pub(crate) fn add(&mut self, key: &[u8], value: &[u8]) {
        let plan = self.plan(key);
        self.add_planned(key, value, plan);
    }

    /// Adds the entry if the block stays within `cap` bytes (finished) or is
    /// empty; returns whether it did.
    pub(crate) fn add_within(&mut self, key: &[u8], value: &[u8], cap: usize) -> bool {
        let plan = self.plan(key);
        if !self.is_empty() && self.size_with(key, value, plan) > cap {
            return false;
        }
        self.add_planned(key, value, plan);
        true
    }

    fn add_planned(&mut self, key: &[u8], value: &[u8], (restart, shared): (bool, usize)) {
        if restart {
            self.restarts.push(self.buf.len() as u32);
            self.prefixes.push(key::prefix(key));
            self.since_restart = 0;
        }
        put_varint(&mut self.buf, shared as u64);
        put_varint(&mut self.buf, (key.len() - shared) as u64);
        put_varint(&mut self.buf, value.len() as u64);
        self.buf.extend_from_slice(&key[shared..]);
        self.buf.extend_from_slice(value);
        self.last_key.clear();
        self.last_key.extend_from_slice(key);
        self.since_restart += 1;
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub(crate) fn size_estimate(&self) -> usize {
        self.buf.len() + self.restarts.len() * 12 + 4
    }

    /// What [`BlockBuilder::size_estimate`] would be after adding `key` and
    /// `value` as `plan`ned (the finished block's exact length).
    fn size_with(&self, key: &[u8], value: &[u8], (restart, shared): (bool, usize)) -> usize {
        let unshared = key.len() - shared;
        self.size_estimate()
            + if restart { 12 } else { 0 }
            + varint_len(shared as u64)
            + varint_len(unshared as u64)
            + varint_len(value.len() as u64)
            + unshared
            + value.len()
    }

    pub(crate) fn last_key(&self) -> &[u8] {
        &self.last_key
    }

    /// Finishes the block and resets the builder.
    pub(crate) fn finish(&mut self) -> Vec<u8> {
        let mut out = std::mem::take(&mut self.buf);
        if self.restarts.is_empty() {
            self.restarts.push(0);
            self.prefixes.push(0);
        }
        for p in &self.prefixes {
            out.extend_from_slice(&p.to_le_bytes());
        }
        for r in &self.restarts {
            out.extend_from_slice(&r.to_le_bytes());
        }
        out.extend_from_slice(&(self.restarts.len() as u32).to_le_bytes());
        self.restarts.clear();
        self.prefixes.clear();
        self.since_restart = 0;
        self.last_key.clear();
        out
    }
}

/// Why a block could not be decoded; the table layer adds file and offset.
#[derive(Debug)]
pub(crate) struct BadBlock(pub(crate) &'static str);

/// A cursor over one block. Keys are internal keys ordered by [`key::compare`].
///
/// Generic over the block's storage: `Bytes` for iterators that outlive the
/// call, `&[u8]` for point lookups that need no reference count.
#[derive(Debug, Clone)]
pub(crate) struct BlockIter<B = Bytes> {
    data: B,
    /// End of the entries (start of the restart prefixes).
    limit: usize,
    /// Start of the restart offsets.
    offsets_at: usize,
    num_restarts: usize,
    /// Offset of the current entry; `limit` when exhausted.
    cur: usize,
    next: usize,
    key: Vec<u8>,
    value: (usize, usize),
    /// Restart points start user keys (see the module docs).
    user_key_restarts: bool,
}

impl BlockIter<Bytes> {
    pub(crate) fn value(&self) -> Bytes {
        self.data.slice(self.value.0..self.value.1)
    }
}

impl<B: AsRef<[u8]>> BlockIter<B> {
    pub(crate) fn new(data: B) -> Result<Self, BadBlock> {
        Self::with_key_buf(data, Vec::new())
    }

    /// Like [`BlockIter::new`], reusing `key_buf`'s allocation for the
    /// current key (see [`BlockIter::into_key_buf`]).
    pub(crate) fn with_key_buf(data: B, mut key_buf: Vec<u8>) -> Result<Self, BadBlock> {
        key_buf.clear();
        let n = data.as_ref().len();
        let count = n
            .checked_sub(4)
            .and_then(|at| u32_at(data.as_ref(), at))
            .ok_or(BadBlock("block too short"))? as usize;
        let limit = count
            .checked_mul(12)
            .and_then(|r| n.checked_sub(4 + r))
            .ok_or(BadBlock("restart count larger than block"))?;
        if count == 0 {
            return Err(BadBlock("block without restart points"));
        }
        Ok(BlockIter {
            data,
            limit,
            offsets_at: limit + count * 8,
            num_restarts: count,
            cur: limit,
            next: limit,
            key: key_buf,
            value: (0, 0),
            user_key_restarts: true,
        })
    }

    /// For a block written before restart points started user keys: a
    /// seek compares whole internal keys with the restart keys.
    pub(crate) fn with_old_restarts(mut self) -> Self {
        self.user_key_restarts = false;
        self
    }

    /// The key buffer, for reuse by a later iterator.
    pub(crate) fn into_key_buf(self) -> Vec<u8> {
        self.key
    }

    pub(crate) fn valid(&self) -> bool {
        self.cur < self.limit
    }

    pub(crate) fn key(&self) -> &[u8] {
        &self.key
    }

    pub(crate) fn value_slice(&self) -> &[u8] {
        &self.data.as_ref()[self.value.0..self.value.1]
    }

    /// Byte range of the current value within the block.
    pub(crate) fn value_range(&self) -> std::ops::Range<usize> {
        self.value.0..self.value.1
    }

    fn restart(&self, i: usize) -> Result<usize, BadBlock> {
        let off = u32_at(self.data.as_ref(), self.offsets_at + i * 4)
            .ok_or(BadBlock("restart array cut short"))? as usize;
        if off > self.limit {
            return Err(BadBlock("restart point past the entries"));
        }
        Ok(off)
    }

    /// Decodes the entry at `self.next` into the current position.
    fn decode_next(&mut self) -> Result<(), BadBlock> {
        self.cur = self.next;
        if self.cur >= self.limit {
            self.cur = self.limit;
            return Ok(());
        }
        let entry = self.data.as_ref()[..self.limit]
            .get(self.cur..)
            .ok_or(BadBlock("entry offset out of range"))?;
        // Header lengths below 128 (nearly all) are one varint byte each.
        let (shared, unshared, vlen, header) = match *entry {
            [a, b, c, ..] if (a | b | c) < 0x80 => (a as usize, b as usize, c as usize, 3),
            _ => {
                let mut r = Reader::new(entry);
                let bad = || BadBlock("malformed entry header");
                let shared = r.varint_usize().ok_or_else(bad)?;
                let unshared = r.varint_usize().ok_or_else(bad)?;
                let vlen = r.varint_usize().ok_or_else(bad)?;
                (shared, unshared, vlen, r.pos())
            }
        };
        if shared > self.key.len() {
            return Err(BadBlock("malformed entry"));
        }
        let delta = header
            .checked_add(unshared)
            .and_then(|end| entry.get(header..end))
            .ok_or(BadBlock("key runs past block"))?;
        let vstart = self.cur + header + unshared;
        let vend = vstart
            .checked_add(vlen)
            .filter(|&e| e <= self.limit)
            .ok_or(BadBlock("value runs past block"))?;
        self.key.truncate(shared);
        self.key.extend_from_slice(delta);
        self.value = (vstart, vend);
        self.next = vend;
        Ok(())
    }

    pub(crate) fn seek_to_first(&mut self) -> Result<(), BadBlock> {
        self.key.clear();
        self.next = self.restart(0)?;
        self.decode_next()
    }

    pub(crate) fn next(&mut self) -> Result<(), BadBlock> {
        self.decode_next()
    }

    /// The full key stored at restart point `i` (restart entries share no
    /// prefix, so the key is contiguous in the block and needs no copy).
    fn restart_key(&self, i: usize) -> Result<&[u8], BadBlock> {
        let at = self.restart(i)?;
        let entries = &self.data.as_ref()[..self.limit];
        let mut r = Reader::new(
            entries
                .get(at..)
                .ok_or(BadBlock("entry offset out of range"))?,
        );
        let header = (r.varint_usize(), r.varint_usize(), r.varint_usize());
        let (Some(0), Some(len), Some(_)) = header else {
            return Err(BadBlock("malformed restart entry"));
        };
        r.bytes(len).ok_or(BadBlock("key runs past block"))
    }

    /// Positions at the first entry whose key is >= `target`.
    pub(crate) fn seek(&mut self, target: &[u8]) -> Result<(), BadBlock> {
        // Binary search for the last restart point the target's entry cannot
        // be before: the last whose user key is <= the target's (all of a
        // user key's versions follow its restart point), or in older blocks
        // the last whose internal key is < target.
        let target_prefix = key::prefix(target);
        let (mut lo, mut hi) = (0usize, self.num_restarts - 1);
        while lo < hi {
            let mid = (lo + hi).div_ceil(2);
            let prefix = u64_at(self.data.as_ref(), self.limit + mid * 8)
                .ok_or(BadBlock("restart prefixes cut short"))?;
            let at_or_before = match prefix.cmp(&target_prefix) {
                Ordering::Equal if self.user_key_restarts => {
                    let restart = key::user_key(self.restart_key(mid)?);
                    key::compare_user(restart, key::user_key(target)) != Ordering::Greater
                }
                Ordering::Equal => key::compare(self.restart_key(mid)?, target) == Ordering::Less,
                o => o == Ordering::Less,
            };
            if at_or_before {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        self.key.clear();
        self.next = self.restart(lo)?;
        // The entries up to the next restart point are read one after the
        // other, each found only once the previous one is decoded: load
        // their cache lines now, together, instead of one miss at a time.
        let end = if lo + 1 < self.num_restarts {
            self.restart(lo + 1)?
        } else {
            self.limit
        };
        touch_lines(&self.data.as_ref()[self.next..end.max(self.next)]);
        self.decode_next()?;
        while self.valid() && key::compare(&self.key, target) == Ordering::Less {
            self.decode_next()?;
        }
        Ok(())
    }
}

/// Reads one byte of each cache line of `bytes` (at most the first
/// [`TOUCH_MAX`] bytes), so that the CPU fetches the lines in parallel.
fn touch_lines(bytes: &[u8]) {
    let bytes = &bytes[..bytes.len().min(TOUCH_MAX)];
    // The loads are independent; only their combined result is kept.
    let mut any = 0u8;
    for at in (0..bytes.len()).step_by(64) {
        any |= bytes[at];
    }
    if let Some(&last) = bytes.last() {
        any |= last;
    }
    std::hint::black_box(any);
}

/// Starts loading, together, the cache lines a seek in `block` will read
/// first: the end of the trailer (restart count, offsets and the last
/// prefixes) and the entries around `frac` (0.0..=1.0, where the target is
/// expected among the entries, e.g. interpolated from key prefixes). A seek
/// otherwise waits for the trailer before it knows which entries to read,
/// two memory round trips one after the other. A wrong guess only costs the
/// extra lines.
pub(crate) fn touch_for_seek(block: &[u8], frac: f64) {
    let n = block.len();
    touch_lines(&block[n.saturating_sub(TRAILER_TOUCH)..]);
    // `as` saturates: NaN and negatives give 0, the `min` caps the top.
    let at = ((frac * n as f64) as usize).min(n);
    touch_lines(&block[at.saturating_sub(GUESS_BEFORE)..(at + GUESS_AFTER).min(n)]);
}

/// Bytes at the end of a block that [`touch_for_seek`] loads.
const TRAILER_TOUCH: usize = 128;
/// Bytes before and after the guessed position that [`touch_for_seek`]
/// loads: a seek starts at the restart point before its target, and with
/// ~30 random keys in a 4 KiB block the guess is off by a few entries. (A
/// wider window measured faster than 512 or 320 bytes; touching the whole
/// block, slower.)
const GUESS_BEFORE: usize = 640;
const GUESS_AFTER: usize = 256;

/// How much of a restart interval [`touch_lines`] loads ahead.
const TOUCH_MAX: usize = 1024;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::Kind;

    fn build(n: u32) -> (Bytes, Vec<Vec<u8>>) {
        let mut b = BlockBuilder::new(4);
        let keys: Vec<Vec<u8>> = (0..n)
            .map(|i| key::make(format!("key{i:05}").as_bytes(), 7, Kind::Put))
            .collect();
        for k in &keys {
            b.add(k, b"value");
        }
        (Bytes::from(b.finish()), keys)
    }

    #[test]
    fn touch_for_seek_accepts_any_block_length_and_guess() {
        for n in [0, 1, 63, 64, 65, 200, 1000, 5000] {
            let block = vec![0u8; n];
            for frac in [f64::NAN, -1.0, 0.0, 0.3, 1.0, 2.0, f64::INFINITY] {
                touch_for_seek(&block, frac);
            }
        }
    }

    #[test]
    fn seek_finds_each_key_and_iterates_in_order() {
        let (data, keys) = build(100);
        let mut it = BlockIter::new(data).expect("valid block");
        for k in &keys {
            it.seek(k).expect("seek");
            assert_eq!(it.key(), &k[..]);
        }
        it.seek_to_first().expect("first");
        let mut n = 0;
        while it.valid() {
            assert_eq!(it.key(), &keys[n][..]);
            assert_eq!(it.value_slice(), b"value");
            it.next().expect("next");
            n += 1;
        }
        assert_eq!(n, keys.len());
        it.seek(&key::lookup(b"zzz", 1)).expect("seek past end");
        assert!(!it.valid());
    }

    /// Restart prefixes that tie (long shared prefixes) or are zero-padded
    /// (keys shorter than 8 bytes, keys ending in zero bytes) must fall back
    /// to comparing whole keys.
    #[test]
    fn seek_with_tied_and_short_prefixes() {
        let mut users: Vec<Vec<u8>> = (0..60)
            .map(|i| format!("shared-prefix-{i:04}").into_bytes())
            .collect();
        for k in [
            &b""[..],
            b"a",
            b"a\0",
            b"a\0\0",
            b"ab",
            b"ab\0\0\0\0\0\0\x01",
            b"b",
        ] {
            users.push(k.to_vec());
        }
        users.sort();
        for interval in [1, 2, 4, 16] {
            let mut b = BlockBuilder::new(interval);
            for u in &users {
                b.add(&key::make(u, 9, Kind::Put), u);
            }
            let mut it = BlockIter::new(Bytes::from(b.finish())).expect("valid block");
            for u in &users {
                it.seek(&key::lookup(u, 20)).expect("seek");
                assert_eq!(key::user_key(it.key()), &u[..], "interval {interval}");
                assert_eq!(it.value_slice(), &u[..]);
            }
            // Between keys: lands on the next one.
            it.seek(&key::lookup(b"a\0\0\0", 20)).expect("seek");
            assert_eq!(key::user_key(it.key()), b"ab");
        }
    }

    /// Keys and values of 128 bytes or more have multi-byte varint lengths
    /// (the decoder's slow path); shorter ones take the one-byte fast path.
    #[test]
    fn long_and_short_entries_round_trip() {
        let mut entries: Vec<(Vec<u8>, Vec<u8>)> = (0..50u32)
            .map(|i| {
                let klen = [1, 20, 127, 128, 300][i as usize % 5];
                let vlen = [0, 100, 127, 128, 5000][(i as usize / 5) % 5];
                let mut k = format!("{i:04}").into_bytes();
                k.resize(klen.max(4), b'k');
                (k, vec![i as u8; vlen])
            })
            .collect();
        entries.sort();
        let mut b = BlockBuilder::new(4);
        for (k, v) in &entries {
            b.add(&key::make(k, 3, Kind::Put), v);
        }
        let mut it = BlockIter::new(Bytes::from(b.finish())).expect("valid block");
        for (k, v) in &entries {
            it.seek(&key::lookup(k, 5)).expect("seek");
            assert_eq!(key::user_key(it.key()), &k[..]);
            assert_eq!(it.value_slice(), &v[..]);
        }
        it.seek_to_first().expect("first");
        for (k, v) in &entries {
            assert_eq!(key::user_key(it.key()), &k[..]);
            assert_eq!(it.value_slice(), &v[..]);
            it.next().expect("next");
        }
        assert!(!it.valid());
    }

    /// A user key and the sequence numbers of its versions, newest first.
    type Versions = (Vec<u8>, Vec<u64>);

    /// Each user key has 1-6 versions; the interval would otherwise put
    /// restart points on older versions.
    fn versioned_block(interval: usize) -> (Vec<u8>, Vec<Versions>) {
        let users: Vec<Versions> = (0..80u64)
            .map(|i| {
                let seqs = (0..=(i * 7) % 6).map(|v| 100 - v * 10).collect();
                (format!("user{i:03}").into_bytes(), seqs)
            })
            .collect();
        let mut b = BlockBuilder::new(interval);
        for (u, seqs) in &users {
            for &seq in seqs {
                b.add(&key::make(u, seq, Kind::Put), &seq.to_le_bytes());
            }
        }
        (b.finish(), users)
    }

    #[test]
    fn restart_points_start_user_keys() {
        for interval in [1, 2, 4, 16] {
            let (block, _) = versioned_block(interval);
            let mut it = BlockIter::new(&block[..]).expect("valid block");
            let restarts: Vec<usize> = (0..it.num_restarts)
                .map(|i| it.restart(i).expect("restart"))
                .collect();
            assert!(restarts.len() > 80 / (interval + 6), "interval {interval}");
            let (mut prev_user, mut n) = (Vec::new(), 0);
            it.seek_to_first().expect("first");
            while it.valid() {
                let user = key::user_key(it.key()).to_vec();
                if restarts.contains(&it.cur) {
                    assert_ne!(
                        user, prev_user,
                        "interval {interval}: restart inside a user key"
                    );
                } else {
                    n += 1;
                }
                prev_user = user;
                it.next().expect("next");
            }
            assert!(n > 0, "interval {interval}: every entry is a restart point");
        }
    }

    /// A seek at each read sequence finds the newest version visible there,
    /// both when restart points start user keys and with the older search
    /// that compares whole internal keys.
    #[test]
    fn seek_finds_the_visible_version_among_many() {
        for interval in [1, 2, 4, 16] {
            let (block, users) = versioned_block(interval);
            for old in [false, true] {
                let mut it = BlockIter::new(&block[..]).expect("valid block");
                if old {
                    it = it.with_old_restarts();
                }
                for (i, (u, seqs)) in users.iter().enumerate() {
                    for read in [5, 55, 95, 100, 200] {
                        it.seek(&key::lookup(u, read)).expect("seek");
                        match seqs.iter().find(|&&s| s <= read) {
                            Some(&s) => {
                                assert_eq!(key::user_key(it.key()), &u[..]);
                                assert_eq!(it.value_slice(), s.to_le_bytes());
                            }
                            None => {
                                let next = users.get(i + 1).map(|(n, _)| &n[..]);
                                assert_eq!(it.valid().then(|| key::user_key(it.key())), next);
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn size_with_is_the_finished_length() {
        let mut b = BlockBuilder::new(3);
        for i in 0..200u32 {
            let k = key::make(
                format!("k{:06}", i / 3).as_bytes(),
                1000 - u64::from(i),
                Kind::Put,
            );
            let v = vec![1u8; (i as usize * 37) % 300];
            let want = b.size_with(&k, &v, b.plan(&k));
            b.add(&k, &v);
            assert_eq!(b.size_estimate(), want, "entry {i}");
        }
        let n = b.size_estimate();
        assert_eq!(b.finish().len(), n);
    }

    #[test]
    fn garbage_never_panics() {
        let (data, keys) = build(40);
        for i in 0..data.len() {
            for bit in [0x01u8, 0x80] {
                let mut d = data.to_vec();
                d[i] ^= bit;
                if let Ok(mut it) = BlockIter::new(Bytes::from(d)) {
                    let _ = it.seek(&keys[17]);
                    if it.seek_to_first().is_ok() {
                        for _ in 0..100 {
                            if !it.valid() || it.next().is_err() {
                                break;
                            }
                        }
                    }
                }
            }
        }
        for cut in 0..data.len() {
            if let Ok(mut it) = BlockIter::new(data.slice(..cut)) {
                let _ = it.seek(&keys[3]);
            }
        }
    }
}
