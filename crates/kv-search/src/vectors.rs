//! The in-memory vector set: every stored vector (8-bit), exact search over
//! them, and an HNSW graph once there are enough of them.

use std::collections::BTreeMap;

use crate::embed::{dot_f32_i8, dot_i8, inv_norm};
use crate::hnsw::{ByteReader, Hnsw, HnswParams, Space};

/// First bytes of a graph file ([`VectorSet::encode_graph`]).
const GRAPH_MAGIC: &[u8; 8] = b"FKVHNSW\x01";

/// A vector's fingerprint in the graph file: tells whether the vector the
/// store holds for a key is still the one the graph was built with.
fn fingerprint(v: &[i8]) -> u64 {
    let bytes: Vec<u8> = v.iter().map(|&x| x as u8).collect();
    xxhash_rust::xxh3::xxh3_64(&bytes)
}

/// Flat storage of the vectors by slot.
struct Slots {
    dim: usize,
    data: Vec<i8>,
    inv_norm: Vec<f32>,
}

impl Slots {
    fn get(&self, slot: u32) -> &[i8] {
        let s = slot as usize * self.dim;
        self.data.get(s..s + self.dim).unwrap_or(&[])
    }
    fn inv(&self, slot: u32) -> f32 {
        self.inv_norm.get(slot as usize).copied().unwrap_or(0.0)
    }
    /// Cosine of the float unit query `q` and slot `slot`.
    fn query_sim(&self, q: &[f32], slot: u32) -> f32 {
        dot_f32_i8(q, self.get(slot)) * self.inv(slot)
    }
}

impl Space for Slots {
    fn sim(&self, a: u32, b: u32) -> f32 {
        dot_i8(self.get(a), self.get(b)) as f32 * self.inv(a) * self.inv(b)
    }
}

/// The vectors of the documents, by key.
pub(crate) struct VectorSet {
    slots: Slots,
    keys: Vec<Option<Box<[u8]>>>,
    by_key: BTreeMap<Box<[u8]>, u32>,
    free: Vec<u32>,
    hnsw: Option<Hnsw>,
    params: HnswParams,
    /// Live vectors from which the graph is kept.
    threshold: usize,
    /// Changes to the graph since it was last encoded (or built).
    unsaved: usize,
}

/// A graph file being matched against the vectors of the store
/// ([`VectorSet::restore`]): a key whose stored vector is the one the graph
/// holds keeps its node; every other key is inserted afresh, and nodes of
/// keys that changed or went away become deleted nodes.
pub(crate) struct Restoring {
    set: VectorSet,
    /// Per slot, the fingerprint the graph file recorded for its key.
    expect: Vec<Option<u64>>,
    matched: Vec<bool>,
    pending: Vec<(Box<[u8]>, Vec<i8>)>,
}

/// How an open matched the saved similarity graph with the stored vectors
/// ([`SearchIndex::graph_restored`](crate::SearchIndex::graph_restored)).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GraphRestored {
    /// Nodes whose key still has the vector they were built with.
    pub kept: usize,
    /// Vectors inserted after loading (new or changed since the file).
    pub inserted: usize,
    /// Nodes of keys deleted or changed since the file (now deleted nodes).
    pub dropped: usize,
}

impl Restoring {
    /// The stored vector of `key` (each key once).
    pub(crate) fn offer(&mut self, key: &[u8], v: &[i8]) {
        let dim = self.set.slots.dim;
        if let Some(&slot) = self.set.by_key.get(key) {
            let s = slot as usize;
            if v.len() == dim
                && self.expect.get(s).copied().flatten() == Some(fingerprint(v))
                && self.matched.get(s) == Some(&false)
            {
                if let Some(dst) = self.set.slots.data.get_mut(s * dim..(s + 1) * dim) {
                    dst.copy_from_slice(v);
                }
                if let Some(n) = self.set.slots.inv_norm.get_mut(s) {
                    *n = inv_norm(v);
                }
                if let Some(m) = self.matched.get_mut(s) {
                    *m = true;
                }
                return;
            }
        }
        self.pending.push((key.into(), v.to_vec()));
    }

    /// The vector set: unmatched nodes deleted, pending vectors inserted.
    pub(crate) fn finish(mut self) -> (VectorSet, GraphRestored) {
        let mut how = GraphRestored::default();
        for (slot, matched) in self.matched.iter().enumerate() {
            if *matched {
                how.kept += 1;
                continue;
            }
            let Some(key) = self.set.keys.get_mut(slot).and_then(Option::take) else {
                continue;
            };
            self.set.by_key.remove(&key);
            if let Some(h) = &mut self.set.hnsw {
                h.delete(slot as u32);
            }
            how.dropped += 1;
        }
        how.inserted = self.pending.len();
        for (key, v) in std::mem::take(&mut self.pending) {
            self.set.set(&key, Some(&v), true);
        }
        self.set.unsaved = how.inserted + how.dropped;
        self.set.maintain(false);
        (self.set, how)
    }
}

impl VectorSet {
    pub(crate) fn new(dim: usize, params: HnswParams, threshold: usize) -> Self {
        VectorSet {
            slots: Slots {
                dim,
                data: Vec::new(),
                inv_norm: Vec::new(),
            },
            keys: Vec::new(),
            by_key: BTreeMap::new(),
            free: Vec::new(),
            hnsw: None,
            params,
            threshold: threshold.max(1),
            unsaved: 0,
        }
    }

    /// Changes to the graph since it was last encoded; 0 without a graph.
    pub(crate) fn unsaved(&self) -> usize {
        if self.hnsw.is_some() { self.unsaved } else { 0 }
    }

    /// The graph and the keys of its nodes, for [`VectorSet::restore`]:
    /// `None` when there is no graph. The vectors themselves stay in the
    /// store; only deleted nodes (which keep routing searches) carry theirs.
    /// Ends in an xxh3 checksum of everything before it. Also returns the
    /// count of [`VectorSet::unsaved`] changes it holds.
    pub(crate) fn encode_graph(&self) -> Option<(Vec<u8>, usize)> {
        let h = self.hnsw.as_ref()?;
        let dim = self.slots.dim;
        let mut out = Vec::with_capacity(self.keys.len() * (dim / 4 + 160));
        out.extend_from_slice(GRAPH_MAGIC);
        out.extend_from_slice(&(dim as u32).to_le_bytes());
        out.extend_from_slice(&(self.keys.len() as u32).to_le_bytes());
        for (slot, key) in self.keys.iter().enumerate() {
            match key {
                Some(k) => {
                    out.push(1);
                    out.extend_from_slice(&(k.len() as u32).to_le_bytes());
                    out.extend_from_slice(k);
                    let v = self.slots.get(slot as u32);
                    out.extend_from_slice(&fingerprint(v).to_le_bytes());
                }
                None => {
                    out.push(2);
                    out.extend(self.slots.get(slot as u32).iter().map(|&x| x as u8));
                }
            }
        }
        h.encode(&mut out);
        let sum = xxhash_rust::xxh3::xxh3_64(&out);
        out.extend_from_slice(&sum.to_le_bytes());
        Some((out, self.unsaved))
    }

    /// `n` of the changes counted by [`VectorSet::unsaved`] are now in a
    /// graph file.
    pub(crate) fn saved(&mut self, n: usize) {
        self.unsaved = self.unsaved.saturating_sub(n);
    }

    /// Starts matching a graph file written by [`VectorSet::encode_graph`]
    /// against the store's vectors; `None` when `bytes` is not such a file
    /// (wrong magic, dimension or `m`, checksum mismatch, any bound broken):
    /// then build the set from the vectors alone.
    pub(crate) fn restore(
        dim: usize,
        params: HnswParams,
        threshold: usize,
        bytes: &[u8],
    ) -> Option<Restoring> {
        let (body, sum) = bytes.split_at_checked(bytes.len().checked_sub(8)?)?;
        if xxhash_rust::xxh3::xxh3_64(body).to_le_bytes() != sum {
            return None;
        }
        let mut r = ByteReader::new(body);
        if r.bytes(GRAPH_MAGIC.len())? != GRAPH_MAGIC || r.u32()? as usize != dim {
            return None;
        }
        let slots = r.u32()? as usize;
        let mut set = VectorSet::new(dim, params, threshold);
        set.slots.data = vec![0; slots.checked_mul(dim)?];
        set.slots.inv_norm = vec![0.0; slots];
        let mut expect = Vec::with_capacity(slots);
        for slot in 0..slots {
            match r.u8()? {
                1 => {
                    let len = r.u32()? as usize;
                    let key: Box<[u8]> = r.bytes(len)?.into();
                    expect.push(Some(r.u64()?));
                    if set.by_key.insert(key.clone(), slot as u32).is_some() {
                        return None;
                    }
                    set.keys.push(Some(key));
                }
                2 => {
                    let v: Vec<i8> = r.bytes(dim)?.iter().map(|&b| b as i8).collect();
                    set.slots
                        .data
                        .get_mut(slot * dim..(slot + 1) * dim)?
                        .copy_from_slice(&v);
                    *set.slots.inv_norm.get_mut(slot)? = inv_norm(&v);
                    expect.push(None);
                    set.keys.push(None);
                }
                _ => return None,
            }
        }
        let h = Hnsw::decode(params, slots, &mut r)?;
        if !r.is_empty() {
            return None;
        }
        set.hnsw = Some(h);
        Some(Restoring {
            set,
            expect,
            matched: vec![false; slots],
            pending: Vec::new(),
        })
    }

    pub(crate) fn len(&self) -> usize {
        self.by_key.len()
    }

    pub(crate) fn has_graph(&self) -> bool {
        self.hnsw.is_some()
    }

    /// Approximate bytes held in memory.
    pub(crate) fn memory_bytes(&self) -> usize {
        self.slots.data.len()
            + self.slots.inv_norm.len() * 4
            + self.by_key.keys().map(|k| k.len() * 2 + 64).sum::<usize>()
            + self.hnsw.as_ref().map_or(0, |h| h.link_bytes())
    }

    /// Sets the vector of `key` (replacing any) when `vector` is `Some`,
    /// removes it when `None`. `vector` has `dim` components.
    pub(crate) fn set(&mut self, key: &[u8], vector: Option<&[i8]>, defer_graph: bool) {
        if let Some(slot) = self.by_key.remove(key) {
            if let Some(k) = self.keys.get_mut(slot as usize) {
                *k = None;
            }
            match &mut self.hnsw {
                // A graph node's slot stays taken until the graph is rebuilt.
                Some(h) => {
                    h.delete(slot);
                    self.unsaved += 1;
                }
                None => self.free.push(slot),
            }
        }
        let Some(v) = vector else {
            self.maintain(defer_graph);
            return;
        };
        let slot = match self.free.pop() {
            Some(s) => {
                let start = s as usize * self.slots.dim;
                if let Some(dst) = self.slots.data.get_mut(start..start + self.slots.dim) {
                    dst.copy_from_slice(v);
                }
                if let Some(n) = self.slots.inv_norm.get_mut(s as usize) {
                    *n = inv_norm(v);
                }
                if let Some(k) = self.keys.get_mut(s as usize) {
                    *k = Some(key.into());
                }
                s
            }
            None => {
                let s = self.keys.len() as u32;
                self.slots.data.extend_from_slice(v);
                self.slots.inv_norm.push(inv_norm(v));
                self.keys.push(Some(key.into()));
                s
            }
        };
        self.by_key.insert(key.into(), slot);
        if let Some(h) = &mut self.hnsw {
            h.insert(slot, &self.slots);
        }
        self.unsaved += 1;
        self.maintain(defer_graph);
    }

    /// Builds the graph when the set has grown past the threshold, drops it
    /// when it shrank well below, and rebuilds it (compacting the slots) when
    /// a quarter of its nodes are deleted.
    pub(crate) fn maintain(&mut self, defer: bool) {
        if defer {
            return;
        }
        let live = self.len();
        match &self.hnsw {
            None if live >= self.threshold => self.rebuild_graph(),
            Some(_) if live < self.threshold / 2 => {
                self.hnsw = None;
                self.compact();
            }
            Some(h) if h.deleted() * 4 > h.live().max(1024) => self.rebuild_graph(),
            _ => {}
        }
    }

    /// Renumbers the live vectors densely, by key order.
    fn compact(&mut self) {
        let dim = self.slots.dim;
        let mut data = Vec::with_capacity(self.by_key.len() * dim);
        let mut inv = Vec::with_capacity(self.by_key.len());
        let mut keys = Vec::with_capacity(self.by_key.len());
        for (new, (key, slot)) in self.by_key.iter_mut().enumerate() {
            data.extend_from_slice(self.slots.get(*slot));
            inv.push(self.slots.inv(*slot));
            keys.push(Some(key.clone()));
            *slot = new as u32;
        }
        self.slots.data = data;
        self.slots.inv_norm = inv;
        self.keys = keys;
        self.free.clear();
    }

    fn rebuild_graph(&mut self) {
        self.compact();
        let mut h = Hnsw::new(self.params);
        for slot in 0..self.keys.len() as u32 {
            h.insert(slot, &self.slots);
        }
        self.hnsw = Some(h);
        self.unsaved = self.unsaved.max(self.keys.len()).max(1);
    }

    fn key(&self, slot: u32) -> Option<&[u8]> {
        self.keys.get(slot as usize).and_then(|k| k.as_deref())
    }

    /// Exact top `k` by scanning the vectors of keys starting with `prefix`.
    pub(crate) fn exact(&self, q: &[f32], k: usize, prefix: &[u8]) -> Vec<(Vec<u8>, f32)> {
        let mut best: Vec<(f32, u32)> = Vec::new();
        let range = self.by_key.range::<[u8], _>((
            std::ops::Bound::Included(prefix),
            std::ops::Bound::Unbounded,
        ));
        for (key, &slot) in range {
            if !key.starts_with(prefix) {
                break;
            }
            best.push((self.slots.query_sim(q, slot), slot));
        }
        self.top(best, k)
    }

    fn top(&self, mut v: Vec<(f32, u32)>, k: usize) -> Vec<(Vec<u8>, f32)> {
        let by = |a: &(f32, u32), b: &(f32, u32)| {
            b.0.total_cmp(&a.0)
                .then_with(|| self.key(a.1).cmp(&self.key(b.1)))
        };
        if v.len() > k && k > 0 {
            v.select_nth_unstable_by(k - 1, by);
            v.truncate(k);
        }
        v.sort_by(by);
        v.into_iter()
            .take(k)
            .filter_map(|(s, slot)| Some((self.key(slot)?.to_vec(), s.clamp(-1.0, 1.0))))
            .collect()
    }

    /// Top `k` by the graph when there is one (exact otherwise, and for a
    /// prefix that selects few keys).
    pub(crate) fn search(&self, q: &[f32], k: usize, prefix: &[u8]) -> Vec<(Vec<u8>, f32)> {
        let Some(h) = &self.hnsw else {
            return self.exact(q, k, prefix);
        };
        if !prefix.is_empty() {
            let few = self
                .by_key
                .range::<[u8], _>((
                    std::ops::Bound::Included(prefix),
                    std::ops::Bound::Unbounded,
                ))
                .take(self.threshold)
                .take_while(|(key, _)| key.starts_with(prefix))
                .count()
                < self.threshold;
            if few {
                return self.exact(q, k, prefix);
            }
        }
        let qs = |slot: u32| self.slots.query_sim(q, slot);
        let accept = |slot: u32| self.key(slot).is_some_and(|key| key.starts_with(prefix));
        let found = h.search(&qs, k, &accept);
        if found.len() < k.min(self.len()) && !prefix.is_empty() {
            return self.exact(q, k, prefix);
        }
        self.top(found.into_iter().map(|(s, v)| (v, s)).collect(), k)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn set_with_graph() -> VectorSet {
        let mut s = VectorSet::new(8, HnswParams::default(), 4);
        let mut x: u64 = 1;
        for i in 0..200u32 {
            let v: Vec<i8> = (0..8)
                .map(|_| {
                    x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                    (x >> 56) as i8
                })
                .collect();
            s.set(format!("k{i:03}").as_bytes(), Some(&v), false);
        }
        for i in (0..200u32).step_by(7) {
            s.set(format!("k{i:03}").as_bytes(), None, false);
        }
        assert!(s.has_graph());
        s
    }

    #[test]
    fn every_prefix_and_every_flip_of_a_graph_file_is_refused_without_panic() {
        let s = set_with_graph();
        let (bytes, _) = s.encode_graph().unwrap();
        assert!(VectorSet::restore(8, HnswParams::default(), 4, &bytes).is_some());
        for n in 0..bytes.len() {
            assert!(VectorSet::restore(8, HnswParams::default(), 4, &bytes[..n]).is_none());
        }
        for at in 0..bytes.len() {
            let mut b = bytes.clone();
            b[at] ^= 0x10;
            assert!(
                VectorSet::restore(8, HnswParams::default(), 4, &b).is_none(),
                "{at}"
            );
        }
        // Another dimension or another `m` is not this graph.
        assert!(VectorSet::restore(16, HnswParams::default(), 4, &bytes).is_none());
        let m8 = HnswParams {
            m: 8,
            ..HnswParams::default()
        };
        assert!(VectorSet::restore(8, m8, 4, &bytes).is_none());
    }

    #[test]
    fn a_graph_file_with_a_valid_checksum_but_bad_links_is_refused() {
        let s = set_with_graph();
        let (mut bytes, _) = s.encode_graph().unwrap();
        // A link of the layer-0 table pointing past the last slot, with the
        // checksum recomputed: only the bounds checks can catch it.
        let body = bytes.len() - 8;
        let at = body - 4;
        bytes[at..body].copy_from_slice(&10_000u32.to_le_bytes());
        let sum = xxhash_rust::xxh3::xxh3_64(&bytes[..body]);
        bytes[body..].copy_from_slice(&sum.to_le_bytes());
        assert!(VectorSet::restore(8, HnswParams::default(), 4, &bytes).is_none());
    }
}
