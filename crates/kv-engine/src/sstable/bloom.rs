//! Blocked bloom filter over user keys, one per table.
//!
//! The bit array is split into 64-byte cache lines; a key's probes all land
//! in one line chosen by the high half of its hash, so a lookup costs one
//! cache miss instead of one per probe. Format: `bits (n * 64 bytes) | k: u8`.

use xxhash_rust::xxh3::xxh3_64;

const LINE_BYTES: usize = 64;
const LINE_BITS: u32 = 512;

/// Builds a filter for keys with the given hashes.
pub(crate) fn build(hashes: &[u64], bits_per_key: usize) -> Vec<u8> {
    let lines = (hashes.len() * bits_per_key)
        .div_ceil(LINE_BITS as usize)
        .max(1);
    // k = bits_per_key * ln(2), the number of probes that minimises false positives.
    let k = ((bits_per_key as f64 * 0.69) as usize).clamp(1, 30);
    let mut out = vec![0u8; lines * LINE_BYTES + 1];
    for &h in hashes {
        let line = line_of(h, lines) * LINE_BYTES;
        for bit in probes(h, k) {
            out[line + (bit / 8) as usize] |= 1 << (bit % 8);
        }
    }
    out[lines * LINE_BYTES] = k as u8;
    out
}

pub(crate) fn hash(user_key: &[u8]) -> u64 {
    xxh3_64(user_key)
}

fn line_of(h: u64, lines: usize) -> usize {
    ((h >> 32) as usize) % lines
}

/// Bit positions within a line (double hashing on the low half of the hash).
fn probes(h: u64, k: usize) -> impl Iterator<Item = u32> {
    let mut h1 = h as u32;
    let delta = h1.rotate_right(17) | 1;
    (0..k).map(move |_| {
        let bit = h1 % LINE_BITS;
        h1 = h1.wrapping_add(delta);
        bit
    })
}

/// False when `hash`'s key is certainly not in the filter. A malformed filter
/// answers true (the caller then reads the table).
pub(crate) fn may_contain(filter: &[u8], hash: u64) -> bool {
    let Some((&k, bits)) = filter.split_last() else {
        return true;
    };
    if bits.is_empty() || bits.len() % LINE_BYTES != 0 || k == 0 || k > 30 {
        return true;
    }
    let line = &bits[line_of(hash, bits.len() / LINE_BYTES) * LINE_BYTES..][..LINE_BYTES];
    probes(hash, k as usize).all(|bit| line[(bit / 8) as usize] & (1 << (bit % 8)) != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_false_negatives_and_few_false_positives() {
        let keys: Vec<u64> = (0..10_000u32).map(|i| hash(&i.to_be_bytes())).collect();
        let f = build(&keys, 10);
        assert!(keys.iter().all(|&h| may_contain(&f, h)));
        let fp = (10_000..20_000u32)
            .filter(|i| may_contain(&f, hash(&i.to_be_bytes())))
            .count();
        assert!(fp < 300, "false positive rate too high: {fp}/10000");
    }
}
