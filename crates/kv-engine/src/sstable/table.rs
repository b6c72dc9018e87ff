//! Reading a table: footer, index and bloom filter are checked at open; each
//! data block's checksum the first time it is used.

use std::cmp::Ordering;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};

use bytes::Bytes;

use super::block::{self, BadBlock, BlockIter};
use super::{FOOTER_LEN, MAGIC, MAGIC_V2, PAGE, bloom};
use crate::coding::{u32_at, u64_at};
use crate::error::{Error, IoContext, Result};
use crate::iterator::InternalIterator;
use crate::key::{self, Kind};

/// What the manifest records about a table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableMeta {
    /// File number (`NNNNNN.sst`).
    pub number: u64,
    /// File size in bytes.
    pub size: u64,
    /// Smallest internal key.
    pub smallest: Vec<u8>,
    /// Largest internal key.
    pub largest: Vec<u8>,
    /// Number of entries.
    pub entries: u64,
    /// Largest sequence number in the table.
    pub max_seq: u64,
}

impl TableMeta {
    pub(crate) fn smallest_user_key(&self) -> &[u8] {
        key::user_key(&self.smallest)
    }

    pub(crate) fn largest_user_key(&self) -> &[u8] {
        key::user_key(&self.largest)
    }
}

/// One data block in the in-memory index: the `key::prefix` of its last
/// key, where it starts and how much padding comes before it. Each block is
/// followed by its 4-byte checksum and then the next block's padding, so
/// block `i` ends where block `i + 1`'s padding begins, 4 bytes before; a
/// sentinel slot after the last block holds the end of the data blocks.
///
/// A lookup's binary search runs over these 16-byte slots, and its last
/// probe has already brought the block's offset (and usually the next
/// slot's) into cache, instead of a separate index entry and flag.
#[derive(Debug)]
#[repr(C, align(16))]
struct Slot {
    prefix: u64,
    /// Offset of the block (low [`OFFSET_BITS`] bits), the padding before it
    /// (the next 12 bits, always < [`PAGE`]) and [`VERIFIED`], set once its
    /// checksum passed.
    offset: AtomicU64,
}

const OFFSET_BITS: u32 = 48;
const OFFSET_MASK: u64 = (1 << OFFSET_BITS) - 1;
const VERIFIED: u64 = 1 << 63;

fn slot(prefix: u64, offset: u64, pad: u64) -> Slot {
    Slot {
        prefix,
        offset: AtomicU64::new(offset | pad << OFFSET_BITS),
    }
}

/// Where each slice of the prefix space starts among a table's blocks, so
/// that a lookup starts its search among the one or two blocks of its
/// slice instead of probing the index from the ends.
///
/// The prefixes of a table's blocks share their first `common` bits; the
/// next `bits` bits of a prefix name its bucket, and `starts[j]` is the
/// first block whose last prefix falls in bucket `j` or later (`starts` has
/// one more entry, the number of blocks). A target in bucket `j` then lies in
/// blocks `starts[j]..=starts[j + 1]`: every block before `starts[j]` ends
/// in a lower bucket, and block `starts[j + 1]` ends in a higher one.
#[derive(Debug)]
struct Radix {
    /// The shared leading bits, the rest zero.
    base: u64,
    /// Mask of the shared leading bits.
    high: u64,
    common: u32,
    bits: u32,
    starts: Vec<u32>,
}

impl Radix {
    /// About one bucket per block; `None` when the blocks are too few to
    /// need it or their prefixes do not spread (all equal).
    fn build(blocks: &[Slot]) -> Option<Radix> {
        let n = blocks.len();
        let (first, last) = (blocks.first()?.prefix, blocks.last()?.prefix);
        if n <= INTERPOLATION_MIN || first == last || u32::try_from(n).is_err() {
            return None;
        }
        let common = (first ^ last).leading_zeros();
        let high = (!0u64).checked_shl(64 - common).unwrap_or(0);
        let bits = n
            .next_power_of_two()
            .trailing_zeros()
            .min(64 - common)
            .min(24);
        let mut radix = Radix {
            base: first & high,
            high,
            common,
            bits,
            starts: Vec::with_capacity((1 << bits) + 1),
        };
        for (i, s) in blocks.iter().enumerate() {
            let b = radix.bucket(s.prefix);
            while radix.starts.len() <= b {
                radix.starts.push(i as u32);
            }
        }
        radix.starts.resize((1 << bits) + 1, n as u32);
        Some(radix)
    }

    /// The bucket of `prefix`; prefixes outside the shared leading bits
    /// fall in the first or the last bucket.
    fn bucket(&self, prefix: u64) -> usize {
        if prefix & self.high != self.base {
            return if prefix < self.base {
                0
            } else {
                (1 << self.bits) - 1
            };
        }
        // `bits` > 0 and `common + bits` <= 64, so neither shift overflows.
        ((prefix << self.common) >> (64 - self.bits)) as usize
    }

    /// Blocks `lo..hi` that can hold the first block ending at or after a
    /// target with `prefix` (it may also be `hi`).
    fn range(&self, prefix: u64) -> (usize, usize) {
        let b = self.bucket(prefix);
        (self.starts[b] as usize, self.starts[b + 1] as usize)
    }
}

/// Interpolation rounds of [`Table::find_block`] before its binary search.
const INTERPOLATION_ROUNDS: usize = 3;
/// Ranges of at most this many blocks go straight to the binary search.
const INTERPOLATION_MIN: usize = 16;

/// An open, memory-mapped table.
#[derive(Debug)]
pub struct Table {
    path: PathBuf,
    data: Bytes,
    /// One slot per data block plus the sentinel.
    slots: Vec<Slot>,
    radix: Option<Radix>,
    /// The last key of every data block, back to back (read only when
    /// prefixes tie).
    index_keys: Vec<u8>,
    /// Where each block's last key ends in `index_keys`.
    key_ends: Vec<usize>,
    filter: Bytes,
    /// Format `FlashKV3`: data-block restart points start user keys.
    user_key_restarts: bool,
}

impl Table {
    /// Opens and checks the table at `path`.
    ///
    /// # Errors
    ///
    /// I/O errors, or [`Error::Corruption`] naming the file when the footer,
    /// index or filter are damaged.
    pub fn open(path: &Path, huge_pages: bool) -> Result<Arc<Table>> {
        let file = File::open(path).ctx(path)?;
        let len = file.metadata().ctx(path)?.len();
        if len < FOOTER_LEN as u64 {
            return Err(Error::corruption(
                path,
                0,
                format!("file of {len} bytes is too short for a table"),
            ));
        }
        let data = crate::mmap::map_readonly(&file, path, huge_pages)?;
        let corrupt = |off: usize, why: &str| Error::corruption(path, off as u64, why.to_string());
        let foot_at = data.len() - FOOTER_LEN;
        let footer = &data[foot_at..];
        let v3 = match u64_at(footer, 44) {
            Some(MAGIC) => true,
            Some(MAGIC_V2) => false,
            Some(super::MAGIC_V1) => {
                return Err(corrupt(
                    foot_at,
                    "table format FlashKV1 (written before restart-key prefixes) is not \
                     readable by this version",
                ));
            }
            _ => return Err(corrupt(foot_at, "bad table magic")),
        };
        if u32_at(footer, 40) != Some(crc32fast::hash(&footer[..40])) {
            return Err(corrupt(foot_at, "footer checksum mismatch"));
        }
        let field = |i: usize| {
            u64_at(footer, i * 8)
                .and_then(|v| usize::try_from(v).ok())
                .unwrap_or(usize::MAX)
        };
        let (bloom_off, bloom_len, index_off, index_len) = (field(0), field(1), field(2), field(3));
        let check = |off: usize, len: usize, what: &str| -> Result<Bytes> {
            let end = off
                .checked_add(len)
                .filter(|&e| e.checked_add(4).is_some_and(|e4| e4 <= foot_at))
                .ok_or_else(|| corrupt(foot_at, &format!("{what} block out of range")))?;
            let block = data.slice(off..end);
            if u32_at(&data, end) != Some(crc32fast::hash(&block)) {
                return Err(corrupt(off, &format!("{what} block checksum mismatch")));
            }
            Ok(block)
        };
        let filter = check(bloom_off, bloom_len, "bloom filter")?;
        let index_block = check(index_off, index_len, "index")?;
        let data_end = bloom_off.min(index_off);
        let mut slots = Vec::new();
        let mut index_keys = Vec::new();
        let mut key_ends = Vec::new();
        let mut expect_off = 0usize;
        let mut it = BlockIter::new(index_block).map_err(|e| corrupt(index_off, e.0))?;
        it.seek_to_first().map_err(|e| corrupt(index_off, e.0))?;
        while it.valid() {
            let v = it.value_slice();
            let (Some(off), Some(len)) = (u64_at(v, 0), u32_at(v, 8)) else {
                return Err(corrupt(index_off, "malformed index entry"));
            };
            let (off, len) = (off as usize, len as usize);
            let pad = off.wrapping_sub(expect_off) as u64;
            if off < expect_off || pad >= if v3 { PAGE } else { 1 } || off as u64 > OFFSET_MASK {
                return Err(corrupt(
                    index_off,
                    "index entry does not start where the previous block ended",
                ));
            }
            expect_off = off
                .checked_add(len)
                .and_then(|e| e.checked_add(4))
                .filter(|&e| e <= data_end)
                .ok_or_else(|| corrupt(index_off, "index entry points outside the data blocks"))?;
            if key::parse(it.key()).is_none() {
                return Err(corrupt(index_off, "malformed key in index"));
            }
            slots.push(slot(key::prefix(it.key()), off as u64, pad));
            index_keys.extend_from_slice(it.key());
            key_ends.push(index_keys.len());
            it.next().map_err(|e| corrupt(index_off, e.0))?;
        }
        slots.push(slot(u64::MAX, expect_off as u64, 0));
        let radix = Radix::build(&slots[..slots.len() - 1]);
        Ok(Arc::new(Table {
            path: path.to_path_buf(),
            data,
            slots,
            radix,
            index_keys,
            key_ends,
            filter,
            user_key_restarts: v3,
        }))
    }

    /// Number of data blocks.
    fn num_blocks(&self) -> usize {
        self.slots.len() - 1
    }

    /// Offset of data block `i` (`i <= num_blocks()`).
    fn block_offset(&self, i: usize) -> usize {
        (self.slots[i].offset.load(AtomicOrdering::Relaxed) & OFFSET_MASK) as usize
    }

    /// Where data block `i` (`i < num_blocks()`) ends and its checksum starts.
    fn block_end(&self, i: usize) -> usize {
        let next = self.slots[i + 1].offset.load(AtomicOrdering::Relaxed);
        // Checked at open: the next block's padding starts after this
        // block's checksum.
        ((next & OFFSET_MASK) - ((next & !VERIFIED) >> OFFSET_BITS) - 4) as usize
    }

    pub(crate) fn may_contain(&self, hash: u64) -> bool {
        self.filter.is_empty() || bloom::may_contain(&self.filter, hash)
    }

    fn bad(&self, block: usize, e: BadBlock) -> Error {
        let off = if block < self.slots.len() {
            self.block_offset(block)
        } else {
            0
        };
        Error::corruption(&self.path, off as u64, e.0)
    }

    /// Data block `i`, its checksum verified on first use.
    fn block_slice(&self, i: usize) -> Result<&[u8]> {
        if i >= self.num_blocks() {
            return Err(Error::corruption(&self.path, 0, "block index out of range"));
        }
        let raw = self.slots[i].offset.load(AtomicOrdering::Relaxed);
        let offset = (raw & OFFSET_MASK) as usize;
        let end = self.block_end(i);
        let block = &self.data[offset..end];
        if raw & VERIFIED == 0 {
            if u32_at(&self.data, end) != Some(crc32fast::hash(block)) {
                return Err(Error::corruption(
                    &self.path,
                    offset as u64,
                    "data block checksum mismatch",
                ));
            }
            self.slots[i]
                .offset
                .fetch_or(VERIFIED, AtomicOrdering::Relaxed);
        }
        Ok(block)
    }

    fn block(&self, i: usize) -> Result<BlockIter> {
        let block = self.block_slice(i)?;
        self.block_iter(i, self.data.slice_ref(block), Vec::new())
    }

    fn block_iter<B: AsRef<[u8]>>(
        &self,
        i: usize,
        block: B,
        key_buf: Vec<u8>,
    ) -> Result<BlockIter<B>> {
        let it = BlockIter::with_key_buf(block, key_buf).map_err(|e| self.bad(i, e))?;
        Ok(if self.user_key_restarts {
            it
        } else {
            it.with_old_restarts()
        })
    }

    /// The last key of block `i`, as the index holds it.
    fn index_key(&self, i: usize) -> &[u8] {
        let start = if i == 0 { 0 } else { self.key_ends[i - 1] };
        &self.index_keys[start..self.key_ends[i]]
    }

    /// Whether block `i`'s last key is < `target` (whose prefix is `prefix`).
    fn block_before(&self, i: usize, target: &[u8], prefix: u64) -> bool {
        match self.slots[i].prefix.cmp(&prefix) {
            Ordering::Equal => key::compare(self.index_key(i), target) == Ordering::Less,
            o => o == Ordering::Less,
        }
    }

    /// Index of the first block whose last key is >= `target`.
    ///
    /// The [`Radix`] table narrows the search to the blocks of the target's
    /// prefix bucket: one or two on evenly spread keys, one cache line of
    /// the radix and one of the slots. Where a bucket holds many blocks
    /// (skewed keys), up to [`INTERPOLATION_ROUNDS`] rounds guess the block
    /// from where the target's prefix falls between the prefixes at the ends
    /// of the range and bracket the guess with a probe `guard` slots away; a
    /// binary search finishes the rest. Prefixes that do not spread (a shared
    /// 8-byte head) only cost the few bracketing probes: every probe still
    /// narrows the range, and the binary search is unchanged.
    fn find_block(&self, target: &[u8]) -> usize {
        self.find_block_by(target, key::prefix(target))
    }

    /// [`Table::find_block`] for a `target` whose `key::prefix` is `prefix`.
    fn find_block_by(&self, target: &[u8], prefix: u64) -> usize {
        let (mut lo, mut hi) = match &self.radix {
            Some(r) => r.range(prefix),
            None => (0, self.num_blocks()),
        };
        // Invariant: blocks before `lo` end before `target`, blocks from `hi` on do not.
        for _ in 0..INTERPOLATION_ROUNDS {
            let len = hi - lo;
            if len <= INTERPOLATION_MIN {
                break;
            }
            let (a, b) = (self.slots[lo].prefix, self.slots[hi - 1].prefix);
            if b <= a {
                break;
            }
            let guess = if prefix <= a {
                lo
            } else if prefix >= b {
                hi - 1
            } else {
                (lo + (fraction(prefix, a, b) * (len - 1) as f64) as usize).min(hi - 1)
            };
            // About the square root of `len` (a power of two at or above it).
            let guard = 1usize << (usize::BITS - len.leading_zeros()).div_ceil(2);
            // Narrow to one side of the guess, then probe `guard` further on
            // that side to bound the range there too.
            let far = if self.block_before(guess, target, prefix) {
                lo = guess + 1;
                Some(guess + guard).filter(|&f| f < hi)
            } else {
                hi = guess;
                guess.checked_sub(guard).filter(|&f| f >= lo)
            };
            if let Some(far) = far {
                if self.block_before(far, target, prefix) {
                    lo = far + 1;
                } else {
                    hi = far;
                }
            }
        }
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.block_before(mid, target, prefix) {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo
    }

    /// Where in block `i` a target with `key::prefix` `prefix` is expected
    /// (0.0 = start, 1.0 = end), from where the prefix falls between the
    /// last prefixes of blocks `i - 1` and `i`.
    fn position_in_block(&self, i: usize, prefix: u64) -> f64 {
        match i.checked_sub(1) {
            Some(p) => fraction(prefix, self.slots[p].prefix, self.slots[i].prefix),
            None => 0.5,
        }
    }

    /// The newest entry for the user key of `lookup` (an internal lookup key)
    /// visible at its sequence, if this table has one.
    pub(crate) fn get(&self, lookup: &[u8]) -> Result<Option<(Kind, Bytes)>> {
        let prefix = key::prefix(lookup);
        let i = self.find_block_by(lookup, prefix);
        if i >= self.num_blocks() {
            return Ok(None);
        }
        let block = self.block_slice(i)?;
        block::touch_for_seek(block, self.position_in_block(i, prefix));
        // Point lookups on one thread reuse one key buffer instead of
        // allocating and freeing one per lookup.
        let buf = KEY_BUF.with(|b| b.take());
        let mut it = self.block_iter(i, block, buf)?;
        let found = self.found_in(i, block, &mut it, lookup);
        KEY_BUF.with(|b| b.replace(it.into_key_buf()));
        found
    }

    /// Seeks `it` (over `block`, data block `i`) to `lookup` and returns the
    /// entry there if it has `lookup`'s user key.
    fn found_in(
        &self,
        i: usize,
        block: &[u8],
        it: &mut BlockIter<&[u8]>,
        lookup: &[u8],
    ) -> Result<Option<(Kind, Bytes)>> {
        it.seek(lookup).map_err(|e| self.bad(i, e))?;
        if !it.valid() {
            return Ok(None);
        }
        let (uk, _, kind) =
            key::parse(it.key()).ok_or_else(|| self.bad(i, BadBlock("malformed internal key")))?;
        if uk != key::user_key(lookup) {
            return Ok(None);
        }
        let range = it.value_range();
        Ok(Some((kind, self.data.slice_ref(&block[range]))))
    }
}

/// Where `x` falls between `lo` and `hi`, from 0.0 (at or below `lo`) to
/// 1.0 (at or above `hi`); 0.0 when the range is empty. A float estimate is
/// plenty for a guess, and far cheaper than a 128-bit division.
fn fraction(x: u64, lo: u64, hi: u64) -> f64 {
    if hi <= lo || x <= lo {
        return 0.0;
    }
    (x.min(hi) - lo) as f64 / (hi - lo) as f64
}

thread_local! {
    /// The key buffer of [`Table::get`]'s block iterator.
    static KEY_BUF: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

/// How far a streaming [`TableIter`] reads past its last release before
/// releasing again.
const RELEASE_STEP: usize = 1 << 20;

/// Iterates over a whole table.
#[derive(Debug)]
pub(crate) struct TableIter {
    table: Arc<Table>,
    block_idx: usize,
    block: Option<BlockIter>,
    /// A one-pass reader ([`TableIter::streaming`]): the pages of blocks it
    /// has left are released from the process (below this offset).
    released: Option<usize>,
}

impl TableIter {
    pub(crate) fn new(table: Arc<Table>) -> Self {
        TableIter {
            table,
            block_idx: 0,
            block: None,
            released: None,
        }
    }

    /// An iterator for one pass from the first key to the last (compaction
    /// inputs): the pages of the blocks it moves past, and at the end all of
    /// the table's, are released from this process's resident memory
    /// ([`crate::mmap::release`]); they stay in the page cache.
    pub(crate) fn streaming(table: Arc<Table>) -> Self {
        let mut it = TableIter::new(table);
        it.released = Some(0);
        it
    }

    /// Releases the pages below `offset` (streaming iterators only).
    fn release_below(&mut self, offset: usize) {
        if let Some(done) = self.released.as_mut()
            && offset > *done
        {
            crate::mmap::release(&self.table.data, *done..offset);
            *done = offset;
        }
    }

    /// Moves forward to the next non-empty block if the current one is done.
    fn skip_exhausted(&mut self) -> Result<()> {
        while self.block.as_ref().is_some_and(|b| !b.valid()) {
            if let Some(done) = self.released
                && self.block_idx < self.table.num_blocks()
            {
                // In steps of a megabyte or more: one system call (and TLB
                // shootdown) per block would cost more than it saves.
                let next = self.table.block_offset(self.block_idx + 1);
                if next >= done + RELEASE_STEP {
                    self.release_below(next);
                }
            }
            self.block_idx += 1;
            if self.block_idx >= self.table.num_blocks() {
                self.block = None;
                return Ok(());
            }
            let mut b = self.table.block(self.block_idx)?;
            b.seek_to_first()
                .map_err(|e| self.table.bad(self.block_idx, e))?;
            self.block = Some(b);
        }
        Ok(())
    }
}

impl InternalIterator for TableIter {
    fn valid(&self) -> bool {
        self.block.as_ref().is_some_and(|b| b.valid())
    }

    fn key(&self) -> &[u8] {
        self.block.as_ref().map_or(&[], |b| b.key())
    }

    fn value(&self) -> Bytes {
        self.block.as_ref().map_or_else(Bytes::new, |b| b.value())
    }

    fn next(&mut self) -> Result<()> {
        if let Some(b) = self.block.as_mut() {
            let r = b.next();
            r.map_err(|e| self.table.bad(self.block_idx, e))?;
        }
        self.skip_exhausted()
    }

    fn seek(&mut self, target: &[u8]) -> Result<()> {
        self.block_idx = self.table.find_block(target);
        if self.block_idx >= self.table.num_blocks() {
            self.block = None;
            return Ok(());
        }
        let mut b = self.table.block(self.block_idx)?;
        b.seek(target)
            .map_err(|e| self.table.bad(self.block_idx, e))?;
        self.block = Some(b);
        self.skip_exhausted()
    }

    fn seek_to_first(&mut self) -> Result<()> {
        self.block_idx = 0;
        if self.table.num_blocks() == 0 {
            self.block = None;
            return Ok(());
        }
        let mut b = self.table.block(0)?;
        b.seek_to_first().map_err(|e| self.table.bad(0, e))?;
        self.block = Some(b);
        self.skip_exhausted()
    }
}

impl Drop for TableIter {
    fn drop(&mut self) {
        let len = self.table.data.len();
        self.release_below(len);
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::key::Kind;
    use crate::options::Options;
    use crate::sstable::builder::TableBuilder;

    /// Writes `user_keys` (sorted, distinct) into a table with small blocks.
    fn table_of(dir: &Path, user_keys: &[Vec<u8>]) -> Arc<Table> {
        let path = dir.join("000001.sst");
        let opts = Options {
            block_size: 256,
            ..Options::default()
        };
        let mut b = TableBuilder::create(&path, 1, &opts).expect("create");
        for (i, uk) in user_keys.iter().enumerate() {
            b.add(&key::make(uk, i as u64 + 1, Kind::Put), b"value")
                .expect("add");
        }
        b.finish().expect("finish");
        Table::open(&path, true).expect("open")
    }

    /// The first block whose last key is >= `target`, by a linear scan.
    fn reference(t: &Table, target: &[u8]) -> usize {
        (0..t.num_blocks())
            .find(|&i| key::compare(t.index_key(i), target) != Ordering::Less)
            .unwrap_or(t.num_blocks())
    }

    fn check(name: &str, mut user_keys: Vec<Vec<u8>>, rng: &mut StdRng) {
        user_keys.sort();
        user_keys.dedup();
        let dir = tempfile::tempdir().expect("tempdir");
        let t = table_of(dir.path(), &user_keys);
        assert!(
            t.num_blocks() > 100,
            "{name}: only {} blocks",
            t.num_blocks()
        );
        let mut targets: Vec<Vec<u8>> = user_keys.iter().step_by(7).cloned().collect();
        for _ in 0..2000 {
            // Keys between and around the stored ones, of varying length.
            let mut k = user_keys[rng.gen_range(0..user_keys.len())].clone();
            match rng.gen_range(0..4) {
                0 => k.push(rng.r#gen()),
                1 => {
                    k.pop();
                }
                2 => {
                    if let Some(last) = k.last_mut() {
                        *last = last.wrapping_add(1);
                    }
                }
                _ => k = (0..rng.gen_range(0..20)).map(|_| rng.r#gen()).collect(),
            }
            targets.push(k);
        }
        targets.push(Vec::new());
        targets.push(vec![0xff; 24]);
        for uk in &targets {
            for seq in [0, 1, u64::MAX >> 8] {
                let lookup = key::lookup(uk, seq);
                assert_eq!(
                    t.find_block(&lookup),
                    reference(&t, &lookup),
                    "{name}: target {uk:02x?} at seq {seq}"
                );
            }
        }
    }

    #[test]
    fn find_block_matches_a_linear_scan_on_every_key_shape() {
        let mut rng = StdRng::seed_from_u64(7);
        let uniform = (0..20_000)
            .map(|_| rng.r#gen::<[u8; 16]>().to_vec())
            .collect();
        check("uniform", uniform, &mut rng);
        // Every key shares its first 8 bytes: all prefixes tie.
        let shared = (0..20_000u32)
            .map(|i| [b"user:000".as_slice(), &i.to_be_bytes()].concat())
            .collect();
        check("shared 8-byte head", shared, &mut rng);
        // Skewed: most keys crowd near zero, a few are far out.
        let skewed = (0..20_000u64)
            .map(|i| (i * i * i).to_be_bytes().to_vec())
            .collect();
        check("cubic", skewed, &mut rng);
        // Two dense clusters far apart, and short keys.
        let clusters = (0..10_000u32)
            .flat_map(|i| {
                [
                    [&[0x00u8][..], &i.to_be_bytes()].concat(),
                    [&[0xffu8][..], &i.to_be_bytes()].concat(),
                ]
            })
            .collect();
        check("two clusters", clusters, &mut rng);
    }

    /// On spread keys the radix leaves one or two candidate blocks; on
    /// prefixes that all tie it is not built; short keys (zero-padded
    /// prefixes) and a table whose prefixes share most leading bits still
    /// spread over the buckets.
    #[test]
    fn radix_narrows_spread_keys_to_a_block_or_two() {
        let mut rng = StdRng::seed_from_u64(3);
        let dir = tempfile::tempdir().expect("tempdir");
        let uniform: Vec<Vec<u8>> = (0..20_000)
            .map(|_| rng.r#gen::<[u8; 16]>().to_vec())
            .collect();
        // One slice of the key space: the first 40 bits are all the same.
        let narrow: Vec<Vec<u8>> = (0..20_000)
            .map(|_| [&[1u8, 2, 3, 4, 5][..], &rng.r#gen::<[u8; 11]>()].concat())
            .collect();
        for (name, mut keys) in [("uniform", uniform), ("narrow", narrow)] {
            keys.sort();
            keys.dedup();
            let t = table_of(dir.path(), &keys);
            let radix = t.radix.as_ref().expect("radix");
            let (mut total, mut wide) = (0, 0);
            for uk in &keys {
                let lookup = key::lookup(uk, key::MAX_SEQ);
                let (lo, hi) = radix.range(key::prefix(&lookup));
                let found = t.find_block(&lookup);
                assert!(
                    (lo..=hi).contains(&found),
                    "{name}: {found} outside {lo}..={hi}"
                );
                total += hi - lo;
                wide += usize::from(hi - lo > 4);
            }
            let mean = total as f64 / keys.len() as f64;
            assert!(mean < 2.0, "{name}: {mean:.2} candidate blocks on average");
            assert!(
                wide * 100 < keys.len(),
                "{name}: {wide} targets with > 4 candidates"
            );
        }
        let tied: Vec<Vec<u8>> = (0..5_000u32)
            .map(|i| [b"user:000".as_slice(), &i.to_be_bytes()].concat())
            .collect();
        assert!(table_of(dir.path(), &tied).radix.is_none());
    }

    /// Writes 20,000 random 16-byte keys with 100-byte values (one of
    /// 10,000 bytes among them) and returns the keys.
    fn write_spread(path: &Path, opts: &Options) -> Vec<[u8; 16]> {
        let mut rng = StdRng::seed_from_u64(5);
        let mut user_keys: Vec<[u8; 16]> = (0..20_000).map(|_| rng.r#gen()).collect();
        user_keys.sort();
        let mut b = TableBuilder::create(path, 1, opts).expect("create");
        for (i, uk) in user_keys.iter().enumerate() {
            let value = vec![i as u8; if i == 7_000 { 10_000 } else { 100 }];
            b.add(&key::make(uk, i as u64 + 1, Kind::Put), &value)
                .expect("add");
        }
        b.finish().expect("finish");
        user_keys
    }

    fn check_all_found(t: &Table, user_keys: &[[u8; 16]]) {
        for (i, uk) in user_keys.iter().enumerate() {
            let (kind, v) = t
                .get(&key::lookup(uk, key::MAX_SEQ))
                .expect("get")
                .expect("present");
            assert_eq!(kind, Kind::Put);
            assert_eq!(v[0], i as u8);
        }
    }

    /// Resident bytes of this process's mapping of `path` (/proc/self/smaps).
    #[cfg(target_os = "linux")]
    fn mapped_rss(path: &Path) -> u64 {
        let smaps = std::fs::read_to_string("/proc/self/smaps").expect("smaps");
        let name = path.to_str().expect("utf-8 path");
        let mut total = 0;
        let mut ours = false;
        for line in smaps.lines() {
            if let Some(kib) = line.strip_prefix("Rss:") {
                if ours {
                    let kib: u64 = kib
                        .trim()
                        .trim_end_matches("kB")
                        .trim()
                        .parse()
                        .expect("kB");
                    total += kib * 1024;
                }
            } else if line.contains('-') && !line.starts_with(char::is_uppercase) {
                ours = line.ends_with(name);
            }
        }
        total
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn streaming_iterators_release_the_pages_they_have_read_and_values_stay_right() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("000001.sst");
        let n = 2048usize;
        let value = |i: usize| vec![(i % 251) as u8; 4096];
        let mut b = TableBuilder::create(&path, 1, &Options::default()).expect("create");
        for i in 0..n {
            let uk = format!("k{i:06}");
            b.add(
                &key::make(uk.as_bytes(), i as u64 + 1, Kind::Put),
                &value(i),
            )
            .expect("add");
        }
        b.finish().expect("finish");
        let size = std::fs::metadata(&path).expect("stat").len();
        let t = Table::open(&path, false).expect("open");

        // A plain pass leaves the table resident, also once it is dropped.
        let mut it = TableIter::new(t.clone());
        it.seek_to_first().expect("seek");
        let mut seen = 0;
        while it.valid() {
            assert_eq!(it.value(), value(seen).as_slice());
            seen += 1;
            it.next().expect("next");
        }
        drop(it);
        assert_eq!(seen, n);
        assert!(
            mapped_rss(&path) > size * 3 / 4,
            "plain pass: {} of {size} resident",
            mapped_rss(&path)
        );

        // A streaming pass releases what it has passed: halfway, the first
        // half is gone; at the end, all of it.
        let mut it = TableIter::streaming(t.clone());
        it.seek_to_first().expect("seek");
        let mut seen = 0;
        let mut halfway = 0;
        while it.valid() {
            assert_eq!(it.value(), value(seen).as_slice(), "entry {seen}");
            seen += 1;
            if seen == n / 2 {
                halfway = mapped_rss(&path);
            }
            it.next().expect("next");
        }
        let kept = it.value();
        drop(it);
        assert_eq!(seen, n);
        // Pages the kernel maps in 2 MiB folios go once the whole folio is
        // passed.
        assert!(
            halfway < size / 2 + (3 << 20),
            "halfway: {halfway} of {size} resident"
        );
        assert!(
            mapped_rss(&path) < size / 10,
            "after: {} of {size} resident",
            mapped_rss(&path)
        );

        // Released pages read back the same bytes.
        assert!(kept.is_empty());
        for i in (0..n).step_by(7) {
            let uk = format!("k{i:06}");
            let (kind, v) = t
                .get(&key::lookup(uk.as_bytes(), key::MAX_SEQ))
                .expect("get")
                .expect("present");
            assert_eq!(kind, Kind::Put);
            assert_eq!(v, value(i).as_slice());
        }
    }

    #[test]
    fn aligned_blocks_start_on_a_page_and_fill_at_most_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("000001.sst");
        let user_keys = write_spread(&path, &Options::default());
        let t = Table::open(&path, true).expect("open");
        assert!(t.num_blocks() > 500, "only {} blocks", t.num_blocks());
        let (mut big, mut used) = (0, 0);
        for i in 0..t.num_blocks() {
            let (start, end) = (t.block_offset(i), t.block_end(i));
            assert_eq!(start % PAGE as usize, 0, "block {i} starts at {start}");
            used += end + 4 - start;
            if end + 4 - start > PAGE as usize {
                // Only the block holding the one 10,000-byte value may.
                big += 1;
                let mut it = t.block(i).expect("block");
                it.seek_to_first().expect("first");
                it.next().expect("next");
                assert!(
                    !it.valid(),
                    "block {i} spans pages with more than one entry"
                );
            }
        }
        assert_eq!(big, 1);
        // Blocks are filled: on average less than two entries of a page unused.
        let pages = t.block_offset(t.num_blocks() - 1) / PAGE as usize + 1;
        assert!(
            pages * PAGE as usize - used < pages * 2 * 130,
            "{used} bytes in {pages} pages"
        );
        check_all_found(&t, &user_keys);
    }

    #[test]
    fn huge_page_tables_changes_how_tables_are_written_not_their_bytes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut files = Vec::new();
        for huge_page_tables in [true, false] {
            let path = dir.path().join(format!("{huge_page_tables}.sst"));
            let opts = Options {
                huge_page_tables,
                ..Options::default()
            };
            let keys = write_spread(&path, &opts);
            let t = Table::open(&path, huge_page_tables).expect("open");
            check_all_found(&t, &keys);
            files.push(std::fs::read(&path).expect("read"));
        }
        assert!(files[0].len() > 2 << 20, "{} bytes", files[0].len());
        assert!(files[0] == files[1], "the two files differ");
    }

    /// `block_align: false` writes contiguous blocks; a table written so and
    /// marked `FlashKV2` (as before padding and user-key restart points)
    /// still reads, and one with padding marked `FlashKV2` is refused.
    #[test]
    fn contiguous_and_older_tables_read_and_padding_needs_the_new_format() {
        let dir = tempfile::tempdir().expect("tempdir");
        let as_v2 = |path: &Path| {
            let mut bytes = std::fs::read(path).expect("read");
            let at = bytes.len() - 8;
            bytes[at..].copy_from_slice(&MAGIC_V2.to_le_bytes());
            std::fs::write(path, bytes).expect("write");
        };
        let path = dir.path().join("000001.sst");
        let opts = Options {
            block_align: false,
            ..Options::default()
        };
        let user_keys = write_spread(&path, &opts);
        let t = Table::open(&path, true).expect("open");
        for i in 1..t.num_blocks() {
            assert_eq!(
                t.block_offset(i),
                t.block_end(i - 1) + 4,
                "gap before block {i}"
            );
        }
        check_all_found(&t, &user_keys);
        drop(t);
        as_v2(&path);
        let t = Table::open(&path, true).expect("open as FlashKV2");
        assert!(!t.user_key_restarts);
        check_all_found(&t, &user_keys);

        let aligned = dir.path().join("000002.sst");
        write_spread(&aligned, &Options::default());
        as_v2(&aligned);
        let err = Table::open(&aligned, true).expect_err("padding in a FlashKV2 table");
        assert!(err.to_string().contains("does not start where"), "{err}");
    }

    #[test]
    fn position_in_block_lands_near_the_entry_on_spread_keys() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("000001.sst");
        let user_keys = write_spread(&path, &Options::default());
        let t = Table::open(&path, true).expect("open");
        assert!(t.num_blocks() > 100, "only {} blocks", t.num_blocks());
        let (mut total_err, mut far) = (0.0, 0);
        for uk in &user_keys {
            let lookup = key::lookup(uk, key::MAX_SEQ);
            let i = t.find_block(&lookup);
            let guess = t.position_in_block(i, key::prefix(&lookup));
            assert!((0.0..=1.0).contains(&guess), "guess {guess} out of range");
            let block = t.block_slice(i).expect("block");
            let mut it = BlockIter::new(block).expect("iter");
            it.seek(&lookup).expect("seek");
            assert_eq!(key::user_key(it.key()), uk.as_slice());
            let actual = it.value_range().start as f64 / block.len() as f64;
            total_err += (guess - actual).abs();
            // Farther than a quarter block: well outside the window of lines
            // a seek loads ahead.
            far += usize::from((guess - actual).abs() > 0.25);
        }
        let mean = total_err / user_keys.len() as f64;
        assert!(mean < 0.1, "mean error {mean:.3} of a block");
        assert!(
            far * 50 < user_keys.len(),
            "{far} guesses off by > 1/4 block"
        );
    }
}
