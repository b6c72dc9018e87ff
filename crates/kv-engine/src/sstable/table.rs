//! Reading a table: footer, index and bloom filter are checked at open; each
//! data block's checksum the first time it is used.

use std::cmp::Ordering;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};

use bytes::Bytes;

use super::block::{self, BadBlock, BlockIter};
use super::{FOOTER_LEN, MAGIC, bloom};
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
/// key and where it starts. Blocks are contiguous (each followed by its
/// 4-byte checksum), so block `i` ends 4 bytes before block `i + 1` starts; a
/// sentinel slot after the last block holds the end of the data blocks.
///
/// A lookup's binary search runs over these 16-byte slots, and its last
/// probe has already brought the block's offset (and usually the next
/// slot's) into cache, instead of a separate index entry and flag.
#[derive(Debug)]
#[repr(C, align(16))]
struct Slot {
    prefix: u64,
    /// Offset of the block, with [`VERIFIED`] set once its checksum passed.
    offset: AtomicU64,
}

const VERIFIED: u64 = 1 << 63;

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
    /// The last key of every data block, back to back (read only when
    /// prefixes tie).
    index_keys: Vec<u8>,
    /// Where each block's last key ends in `index_keys`.
    key_ends: Vec<usize>,
    filter: Bytes,
}

impl Table {
    /// Opens and checks the table at `path`.
    ///
    /// # Errors
    ///
    /// I/O errors, or [`Error::Corruption`] naming the file when the footer,
    /// index or filter are damaged.
    pub fn open(path: &Path) -> Result<Arc<Table>> {
        let file = File::open(path).ctx(path)?;
        let len = file.metadata().ctx(path)?.len();
        if len < FOOTER_LEN as u64 {
            return Err(Error::corruption(
                path,
                0,
                format!("file of {len} bytes is too short for a table"),
            ));
        }
        let data = crate::mmap::map_readonly(&file, path)?;
        let corrupt = |off: usize, why: &str| Error::corruption(path, off as u64, why.to_string());
        let foot_at = data.len() - FOOTER_LEN;
        let footer = &data[foot_at..];
        match u64_at(footer, 44) {
            Some(MAGIC) => {}
            Some(super::MAGIC_V1) => {
                return Err(corrupt(
                    foot_at,
                    "table format FlashKV1 (written before restart-key prefixes) is not \
                     readable by this version",
                ));
            }
            _ => return Err(corrupt(foot_at, "bad table magic")),
        }
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
            if off != expect_off {
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
            slots.push(Slot {
                prefix: key::prefix(it.key()),
                offset: AtomicU64::new(off as u64),
            });
            index_keys.extend_from_slice(it.key());
            key_ends.push(index_keys.len());
            it.next().map_err(|e| corrupt(index_off, e.0))?;
        }
        slots.push(Slot {
            prefix: u64::MAX,
            offset: AtomicU64::new(expect_off as u64),
        });
        Ok(Arc::new(Table {
            path: path.to_path_buf(),
            data,
            slots,
            index_keys,
            key_ends,
            filter,
        }))
    }

    /// Number of data blocks.
    fn num_blocks(&self) -> usize {
        self.slots.len() - 1
    }

    /// Offset of data block `i` (`i <= num_blocks()`).
    fn block_offset(&self, i: usize) -> usize {
        (self.slots[i].offset.load(AtomicOrdering::Relaxed) & !VERIFIED) as usize
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
        let offset = (raw & !VERIFIED) as usize;
        // Checked at open: blocks are contiguous and end within the data.
        let end = self.block_offset(i + 1) - 4;
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
        BlockIter::new(self.data.slice_ref(block)).map_err(|e| self.bad(i, e))
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
    /// Up to [`INTERPOLATION_ROUNDS`] rounds guess the block from where the
    /// target's prefix falls between the prefixes at the ends of the range
    /// and bracket the guess with a probe `guard` slots away; a binary search
    /// finishes the rest. On evenly spread keys two rounds leave a few
    /// adjacent slots, so a lookup touches about four cache lines of the
    /// index instead of one per halving. Prefixes that do not spread (a
    /// shared 8-byte head, skew) only cost the few bracketing probes: every
    /// probe still narrows the range, and the binary search is unchanged.
    fn find_block(&self, target: &[u8]) -> usize {
        let prefix = key::prefix(target);
        let (mut lo, mut hi) = (0, self.num_blocks());
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

    /// Where in block `i` `target` is expected (0.0 = start, 1.0 = end),
    /// from where its prefix falls between the last prefixes of blocks
    /// `i - 1` and `i`.
    fn position_in_block(&self, i: usize, target: &[u8]) -> f64 {
        match i.checked_sub(1) {
            Some(p) => fraction(
                key::prefix(target),
                self.slots[p].prefix,
                self.slots[i].prefix,
            ),
            None => 0.5,
        }
    }

    /// The newest entry for the user key of `lookup` (an internal lookup key)
    /// visible at its sequence, if this table has one.
    pub(crate) fn get(&self, lookup: &[u8]) -> Result<Option<(Kind, Bytes)>> {
        let i = self.find_block(lookup);
        if i >= self.num_blocks() {
            return Ok(None);
        }
        let block = self.block_slice(i)?;
        block::touch_for_seek(block, self.position_in_block(i, lookup));
        // Point lookups on one thread reuse one key buffer instead of
        // allocating and freeing one per lookup.
        let buf = KEY_BUF.with(|b| b.take());
        let mut it = BlockIter::with_key_buf(block, buf).map_err(|e| self.bad(i, e))?;
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

/// Iterates over a whole table.
#[derive(Debug)]
pub(crate) struct TableIter {
    table: Arc<Table>,
    block_idx: usize,
    block: Option<BlockIter>,
}

impl TableIter {
    pub(crate) fn new(table: Arc<Table>) -> Self {
        TableIter {
            table,
            block_idx: 0,
            block: None,
        }
    }

    /// Moves forward to the next non-empty block if the current one is done.
    fn skip_exhausted(&mut self) -> Result<()> {
        while self.block.as_ref().is_some_and(|b| !b.valid()) {
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
        Table::open(&path).expect("open")
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

    #[test]
    fn position_in_block_lands_near_the_entry_on_spread_keys() {
        let mut rng = StdRng::seed_from_u64(11);
        let mut user_keys: Vec<[u8; 16]> = (0..20_000).map(|_| rng.r#gen()).collect();
        user_keys.sort();
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("000001.sst");
        let mut b = TableBuilder::create(&path, 1, &Options::default()).expect("create");
        for (i, uk) in user_keys.iter().enumerate() {
            b.add(&key::make(uk, i as u64 + 1, Kind::Put), &[7u8; 100])
                .expect("add");
        }
        b.finish().expect("finish");
        let t = Table::open(&path).expect("open");
        assert!(t.num_blocks() > 100, "only {} blocks", t.num_blocks());
        let (mut total_err, mut far) = (0.0, 0);
        for uk in &user_keys {
            let lookup = key::lookup(uk, key::MAX_SEQ);
            let i = t.find_block(&lookup);
            let guess = t.position_in_block(i, &lookup);
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
