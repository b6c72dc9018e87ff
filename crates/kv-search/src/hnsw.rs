//! A small HNSW graph (Malkov & Yashunin, 2016) over vectors it does not own.
//!
//! Nodes are slot numbers of a [`Space`]; similarity is larger-is-closer.
//! Insertion is incremental; deletion marks a node deleted: it still routes
//! searches but is never returned (the owner rebuilds the graph when too many
//! are deleted). Levels come from a seeded generator, so a graph built from
//! the same inserts in the same order is the same.

use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashMap};

use parking_lot::Mutex;

/// Similarity between two nodes of the graph.
pub(crate) trait Space {
    fn sim(&self, a: u32, b: u32) -> f32;
}

const EMPTY: u32 = u32::MAX;
const NOT_IN_GRAPH: u8 = u8::MAX;

/// HNSW parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HnswParams {
    /// Links per node on the upper layers (twice as many on layer 0).
    pub m: usize,
    /// Candidate list size while inserting.
    pub ef_construction: usize,
    /// Candidate list size while searching (at least `k` is used).
    pub ef_search: usize,
}

impl Default for HnswParams {
    fn default() -> Self {
        HnswParams {
            m: 16,
            ef_construction: 100,
            ef_search: 96,
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
struct Scored(f32, u32);
impl Eq for Scored {}
impl PartialOrd for Scored {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Scored {
    fn cmp(&self, o: &Self) -> Ordering {
        self.0.total_cmp(&o.0).then_with(|| o.1.cmp(&self.1))
    }
}

/// Marks of visited nodes, cleared in O(1) by bumping the epoch.
struct Visited {
    marks: Vec<u32>,
    epoch: u32,
}

impl Visited {
    fn new() -> Self {
        Visited {
            marks: Vec::new(),
            epoch: 0,
        }
    }
    fn reset(&mut self, n: usize) {
        if self.marks.len() < n {
            self.marks.resize(n, 0);
        }
        self.epoch = self.epoch.wrapping_add(1);
        if self.epoch == 0 {
            self.marks.iter_mut().for_each(|m| *m = 0);
            self.epoch = 1;
        }
    }
    /// True the first time `n` is seen since the last reset.
    fn insert(&mut self, n: u32) -> bool {
        match self.marks.get_mut(n as usize) {
            Some(m) if *m != self.epoch => {
                *m = self.epoch;
                true
            }
            _ => false,
        }
    }
}

pub(crate) struct Hnsw {
    params: HnswParams,
    m0: usize,
    ml: f64,
    /// Top layer of each node; `NOT_IN_GRAPH` for slots never inserted.
    levels: Vec<u8>,
    /// Layer-0 links, `m0` slots per node, `EMPTY`-padded.
    layer0: Vec<u32>,
    /// Links on layers 1.. of the nodes that have them.
    upper: HashMap<u32, Vec<Vec<u32>>>,
    deleted: Vec<bool>,
    entry: Option<u32>,
    max_level: usize,
    live: usize,
    rng: u64,
    visited_pool: Mutex<Vec<Visited>>,
}

impl Hnsw {
    pub(crate) fn new(params: HnswParams) -> Self {
        let m = params.m.max(2);
        Hnsw {
            params: HnswParams { m, ..params },
            m0: 2 * m,
            ml: 1.0 / (m as f64).ln(),
            levels: Vec::new(),
            layer0: Vec::new(),
            upper: HashMap::new(),
            deleted: Vec::new(),
            entry: None,
            max_level: 0,
            live: 0,
            rng: 0x9E37_79B9_7F4A_7C15,
            visited_pool: Mutex::new(Vec::new()),
        }
    }

    /// Nodes inserted and not deleted.
    pub(crate) fn live(&self) -> usize {
        self.live
    }

    /// Nodes marked deleted.
    pub(crate) fn deleted(&self) -> usize {
        self.deleted.iter().filter(|d| **d).count()
    }

    /// Bytes of links held (for stats).
    pub(crate) fn link_bytes(&self) -> usize {
        self.layer0.len() * 4
            + self
                .upper
                .values()
                .map(|l| l.iter().map(|v| v.len() * 4 + 24).sum::<usize>())
                .sum::<usize>()
    }

    fn random_level(&mut self) -> usize {
        // xorshift64*
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        let r = self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D);
        let u = ((r >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
        ((-u.ln() * self.ml) as usize).min(32)
    }

    fn neighbors(&self, node: u32, layer: usize) -> &[u32] {
        if layer == 0 {
            let start = node as usize * self.m0;
            let links = self.layer0.get(start..start + self.m0).unwrap_or(&[]);
            let n = links
                .iter()
                .position(|&x| x == EMPTY)
                .unwrap_or(links.len());
            links.get(..n).unwrap_or(&[])
        } else {
            self.upper
                .get(&node)
                .and_then(|l| l.get(layer - 1))
                .map_or(&[], |v| v.as_slice())
        }
    }

    fn set_neighbors(&mut self, node: u32, layer: usize, links: &[u32]) {
        if layer == 0 {
            let start = node as usize * self.m0;
            if let Some(slots) = self.layer0.get_mut(start..start + self.m0) {
                for (i, s) in slots.iter_mut().enumerate() {
                    *s = links.get(i).copied().unwrap_or(EMPTY);
                }
            }
        } else if let Some(l) = self.upper.get_mut(&node).and_then(|l| l.get_mut(layer - 1)) {
            l.clear();
            l.extend_from_slice(links);
        }
    }

    fn grow(&mut self, node: u32) {
        let n = node as usize + 1;
        if self.levels.len() < n {
            self.levels.resize(n, NOT_IN_GRAPH);
            self.deleted.resize(n, false);
            self.layer0.resize(n * self.m0, EMPTY);
        }
    }

    /// Greedy descent from the entry point to `stop_layer + 1`.
    fn descend(&self, q: &dyn Fn(u32) -> f32, stop_layer: usize) -> Option<Scored> {
        let ep = self.entry?;
        let mut cur = Scored(q(ep), ep);
        for layer in (stop_layer + 1..=self.max_level).rev() {
            loop {
                let mut changed = false;
                for &n in self.neighbors(cur.1, layer) {
                    let s = q(n);
                    if s > cur.0 {
                        cur = Scored(s, n);
                        changed = true;
                    }
                }
                if !changed {
                    break;
                }
            }
        }
        Some(cur)
    }

    /// The best `ef` accepted nodes reachable on `layer` from `entry`,
    /// best first. Every node is explored; only accepted ones are kept.
    fn search_layer(
        &self,
        q: &dyn Fn(u32) -> f32,
        entry: &[Scored],
        ef: usize,
        layer: usize,
        accept: &dyn Fn(u32) -> bool,
        visited: &mut Visited,
    ) -> Vec<Scored> {
        visited.reset(self.levels.len());
        let mut candidates: BinaryHeap<Scored> = BinaryHeap::new();
        let mut results: BinaryHeap<Reverse<Scored>> = BinaryHeap::new();
        for &e in entry {
            if visited.insert(e.1) {
                candidates.push(e);
                if accept(e.1) {
                    results.push(Reverse(e));
                }
            }
        }
        while results.len() > ef {
            results.pop();
        }
        while let Some(c) = candidates.pop() {
            if results.len() >= ef && results.peek().is_some_and(|w| c.0 < w.0.0) {
                break;
            }
            for &n in self.neighbors(c.1, layer) {
                if !visited.insert(n) {
                    continue;
                }
                let s = Scored(q(n), n);
                let worst = results.peek().map(|w| w.0.0);
                if results.len() < ef || worst.is_some_and(|w| s.0 > w) {
                    candidates.push(s);
                    if accept(n) {
                        results.push(Reverse(s));
                        if results.len() > ef {
                            results.pop();
                        }
                    }
                }
            }
        }
        let mut out: Vec<Scored> = results.into_iter().map(|r| r.0).collect();
        out.sort_by(|a, b| b.cmp(a));
        out
    }

    /// Picks up to `m` of `candidates` (best first): a candidate is kept only
    /// if it is closer to the new node than to every one kept so far, which
    /// spreads links over directions (the paper's heuristic).
    fn select(space: &dyn Space, candidates: &[Scored], m: usize) -> Vec<u32> {
        let mut kept: Vec<u32> = Vec::with_capacity(m);
        for c in candidates {
            if kept.len() >= m {
                break;
            }
            if kept.iter().all(|&r| space.sim(c.1, r) < c.0) {
                kept.push(c.1);
            }
        }
        kept
    }

    /// Adds slot `node` (not yet in the graph).
    pub(crate) fn insert(&mut self, node: u32, space: &dyn Space) {
        self.grow(node);
        if self
            .levels
            .get(node as usize)
            .is_some_and(|&l| l != NOT_IN_GRAPH)
        {
            return;
        }
        let level = self.random_level();
        if let Some(l) = self.levels.get_mut(node as usize) {
            *l = level as u8;
        }
        if level > 0 {
            self.upper.insert(node, vec![Vec::new(); level]);
        }
        self.live += 1;
        let q = |n: u32| space.sim(node, n);
        let Some(start) = self.descend(&q, level) else {
            self.entry = Some(node);
            self.max_level = level;
            return;
        };
        let mut visited = self.visited_pool.lock().pop().unwrap_or_else(Visited::new);
        let mut eps = vec![start];
        for layer in (0..=level.min(self.max_level)).rev() {
            let w = self.search_layer(
                &q,
                &eps,
                self.params.ef_construction,
                layer,
                &|_| true,
                &mut visited,
            );
            let links = Self::select(space, &w, self.params.m);
            self.set_neighbors(node, layer, &links);
            let cap = if layer == 0 { self.m0 } else { self.params.m };
            for &n in &links {
                let mut theirs: Vec<u32> = self.neighbors(n, layer).to_vec();
                if theirs.len() < cap {
                    theirs.push(node);
                } else {
                    let mut cands: Vec<Scored> = theirs
                        .iter()
                        .chain(std::iter::once(&node))
                        .map(|&x| Scored(space.sim(n, x), x))
                        .collect();
                    cands.sort_by(|a, b| b.cmp(a));
                    theirs = Self::select(space, &cands, cap);
                }
                self.set_neighbors(n, layer, &theirs);
            }
            eps = w;
        }
        self.visited_pool.lock().push(visited);
        if level > self.max_level {
            self.max_level = level;
            self.entry = Some(node);
        }
    }

    /// Marks `node` deleted: never returned again; it keeps routing.
    pub(crate) fn delete(&mut self, node: u32) {
        if let Some(d) = self.deleted.get_mut(node as usize)
            && !*d
            && self
                .levels
                .get(node as usize)
                .is_some_and(|&l| l != NOT_IN_GRAPH)
        {
            *d = true;
            self.live -= 1;
        }
    }

    /// Up to `k` accepted, undeleted nodes most similar to the query `q`,
    /// best first.
    pub(crate) fn search(
        &self,
        q: &dyn Fn(u32) -> f32,
        k: usize,
        accept: &dyn Fn(u32) -> bool,
    ) -> Vec<(u32, f32)> {
        let Some(start) = self.descend(q, 0) else {
            return Vec::new();
        };
        let mut visited = self.visited_pool.lock().pop().unwrap_or_else(Visited::new);
        let ok = |n: u32| !self.deleted.get(n as usize).copied().unwrap_or(true) && accept(n);
        let ef = self.params.ef_search.max(k);
        let found = self.search_layer(q, &[start], ef, 0, &ok, &mut visited);
        self.visited_pool.lock().push(visited);
        found.into_iter().take(k).map(|s| (s.1, s.0)).collect()
    }
}
