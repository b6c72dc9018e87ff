//! The pre-generated data every engine gets: the same keys, values and
//! access orders from one fixed seed.
//!
//! Besides an index per access, each random-order workload has its keys laid
//! out in that order (`overwrite_keys`, `read_keys`, `seek_keys`), so the
//! harness fetches its next key as part of one sequential stream. Picking
//! `keys[order[i]]` instead costs a cache miss per op in a 16 MB array, time
//! that profiles showed charged to the engine under test (db_bench derives
//! each key from an integer for the same reason). Every engine reads the
//! same keys in the same order either way.

use std::collections::HashSet;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, RngCore, SeedableRng};

/// Key length in bytes.
pub const KEY_LEN: usize = 16;
/// Value length in bytes.
pub const VALUE_LEN: usize = 100;
/// Random bytes that values are cut from (incompressible).
const VALUE_POOL: usize = 1 << 20;

pub type Key = [u8; KEY_LEN];

pub struct Data {
    /// `num` distinct random keys, in fill order.
    pub keys: Vec<Key>,
    /// The same keys sorted, for fillseq.
    pub sorted: Vec<Key>,
    /// `reads` random keys that are not in `keys`.
    pub missing: Vec<Key>,
    /// A permutation of `0..num`: the overwrite order.
    pub overwrite_order: Vec<u32>,
    /// `keys` in `overwrite_order`.
    pub overwrite_keys: Vec<Key>,
    /// `reads` random indexes into `keys` (with repetition).
    pub read_order: Vec<u32>,
    /// `keys` in `read_order`.
    pub read_keys: Vec<Key>,
    /// `seeks` random indexes into `keys`.
    pub seek_order: Vec<u32>,
    /// `keys` in `seek_order`.
    pub seek_keys: Vec<Key>,
    /// Distinct random keys for fillsync (not in `keys`).
    pub sync_keys: Vec<Key>,
    pool: Vec<u8>,
}

impl Data {
    pub fn generate(seed: u64, num: usize, reads: usize, seeks: usize, sync_num: usize) -> Data {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut seen = HashSet::with_capacity(num + reads + sync_num);
        let mut fresh = |rng: &mut StdRng, n: usize| -> Vec<Key> {
            let mut out = Vec::with_capacity(n);
            while out.len() < n {
                let mut k = [0u8; KEY_LEN];
                rng.fill_bytes(&mut k);
                if seen.insert(k) {
                    out.push(k);
                }
            }
            out
        };
        let keys = fresh(&mut rng, num);
        let missing = fresh(&mut rng, reads);
        let sync_keys = fresh(&mut rng, sync_num);
        let mut sorted = keys.clone();
        sorted.sort_unstable();
        let mut overwrite_order: Vec<u32> = (0..num as u32).collect();
        overwrite_order.shuffle(&mut rng);
        let read_order: Vec<u32> = (0..reads).map(|_| rng.gen_range(0..num as u32)).collect();
        let seek_order: Vec<u32> = (0..seeks).map(|_| rng.gen_range(0..num as u32)).collect();
        let in_order = |order: &[u32]| order.iter().map(|&k| keys[k as usize]).collect();
        let overwrite_keys = in_order(&overwrite_order);
        let read_keys = in_order(&read_order);
        let seek_keys = in_order(&seek_order);
        let mut pool = vec![0u8; VALUE_POOL];
        rng.fill_bytes(&mut pool);
        Data {
            keys,
            sorted,
            missing,
            overwrite_order,
            overwrite_keys,
            read_order,
            read_keys,
            seek_order,
            seek_keys,
            sync_keys,
            pool,
        }
    }

    /// The value written for key number `i` in generation `generation`
    /// (0 = fill, 1 = overwrite, 2 = readwhilewriting's writer).
    pub fn value(&self, i: usize, generation: usize) -> &[u8] {
        let off = (i.wrapping_mul(101) + generation * 7919) % (VALUE_POOL - VALUE_LEN);
        &self.pool[off..off + VALUE_LEN]
    }

    /// Bytes of live data: keys plus values.
    pub fn live_bytes(&self) -> u64 {
        (self.keys.len() * (KEY_LEN + VALUE_LEN)) as u64
    }
}
