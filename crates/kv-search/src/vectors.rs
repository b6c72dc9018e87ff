//! The in-memory vector set: every stored vector (8-bit), exact search over
//! them, and an HNSW graph once there are enough of them.

use std::collections::BTreeMap;

use crate::embed::{dot_f32_i8, dot_i8, inv_norm};
use crate::hnsw::{Hnsw, HnswParams, Space};

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
        }
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
                Some(h) => h.delete(slot),
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
