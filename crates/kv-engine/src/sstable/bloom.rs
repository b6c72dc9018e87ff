//! Bloom filter over user keys, one per table.

use xxhash_rust::xxh3::xxh3_64;

/// Builds a filter: `bits ... | k: u8`.
pub(crate) fn build(hashes: &[u64], bits_per_key: usize) -> Vec<u8> {
    let nbits = (hashes.len() * bits_per_key).max(64);
    let nbytes = nbits.div_ceil(8);
    let nbits = nbytes * 8;
    // k = bits_per_key * ln(2), the number of probes that minimises false positives.
    let k = ((bits_per_key as f64 * 0.69) as usize).clamp(1, 30);
    let mut out = vec![0u8; nbytes + 1];
    for &h in hashes {
        let (mut h1, h2) = (h as u32, (h >> 32) as u32 | 1);
        for _ in 0..k {
            let bit = h1 as usize % nbits;
            out[bit / 8] |= 1 << (bit % 8);
            h1 = h1.wrapping_add(h2);
        }
    }
    out[nbytes] = k as u8;
    out
}

pub(crate) fn hash(user_key: &[u8]) -> u64 {
    xxh3_64(user_key)
}

/// False when `hash`'s key is certainly not in the filter. A malformed filter
/// answers true (the caller then reads the table).
pub(crate) fn may_contain(filter: &[u8], hash: u64) -> bool {
    let Some((&k, bits)) = filter.split_last() else {
        return true;
    };
    if bits.is_empty() || k == 0 || k > 30 {
        return true;
    }
    let nbits = bits.len() * 8;
    let (mut h1, h2) = (hash as u32, (hash >> 32) as u32 | 1);
    for _ in 0..k {
        let bit = h1 as usize % nbits;
        if bits[bit / 8] & (1 << (bit % 8)) == 0 {
            return false;
        }
        h1 = h1.wrapping_add(h2);
    }
    true
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
