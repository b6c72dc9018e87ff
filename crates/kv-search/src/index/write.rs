//! The write path of a [`SearchIndex`]: a log entry's changes become one
//! atomic engine batch (postings, counters, vectors, the applied index),
//! then the in-memory vectors and graph follow.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;

use kv_engine::WriteBatch;

use super::{Analyzed, Change, Counters, SearchIndex};
use crate::codec::{self, DocRecord};
use crate::embed::{normalize, quantize};
use crate::error::{Error, Result};
use crate::text;

impl SearchIndex {
    /// Applies the changes of log entry `index` (a batch of any number of
    /// keys; for the same key the last change wins) and records `index` as
    /// applied, in one atomic engine write. Returns `false`, changing
    /// nothing, when `index <= applied_index()` (a replay).
    ///
    /// An overwrite removes the old value's words and vector; a delete of a
    /// key without a document is a no-op. A value that is not UTF-8 or has
    /// no word is not a document (it is found by neither search).
    ///
    /// # Errors
    ///
    /// [`Error::Corruption`] when a stored record does not decode (the index
    /// must be rebuilt), engine errors (a failed write poisons the engine:
    /// reopen or rebuild). On error nothing of the batch is applied.
    pub fn apply(&self, index: u64, changes: &[Change<'_>]) -> Result<bool> {
        self.write(changes, Some(index), false)
    }

    fn analyze(&self, value: &[u8]) -> Result<Option<Analyzed>> {
        let Ok(text) = std::str::from_utf8(value) else {
            return Ok(None);
        };
        let mut doc = DocRecord::default();
        for w in text::words(text) {
            doc.len = doc.len.saturating_add(1);
            *doc.terms.entry(w).or_insert(0) += 1;
        }
        if doc.len == 0 {
            return Ok(None);
        }
        let v = self.embed(text)?;
        let vector = normalize(v).and_then(|v| quantize(&v));
        Ok(Some(Analyzed { doc, vector }))
    }

    /// The shared write path of `apply` and rebuilds. `index: None` leaves
    /// the applied index as it is; `defer_graph` skips graph maintenance.
    pub(super) fn write(
        &self,
        changes: &[Change<'_>],
        index: Option<u64>,
        defer_graph: bool,
    ) -> Result<bool> {
        let mut counters = self.writer.lock();
        if let Some(i) = index
            && i <= self.applied_index()
        {
            return Ok(false);
        }
        let mut last: BTreeMap<&[u8], Option<&[u8]>> = BTreeMap::new();
        for c in changes {
            let v = match *c {
                Change::Put { value, .. } => Some(value),
                Change::Delete { .. } => None,
            };
            last.insert(c.key(), v);
        }
        let mut batch = WriteBatch::new();
        let mut df: HashMap<String, i64> = HashMap::new();
        let (mut docs, mut total) = (counters.docs as i128, counters.total as i128);
        let mut new_vectors: Vec<(&[u8], Option<Vec<i8>>)> = Vec::with_capacity(last.len());
        for (&key, value) in &last {
            let dk = codec::doc_key(key);
            if let Some(old) = self.db.get(&dk)? {
                let old = DocRecord::decode(&dk, &old)?;
                for t in old.terms.keys() {
                    batch.delete(codec::posting_key(t, key));
                    *df.entry(t.clone()).or_insert(0) -= 1;
                }
                docs -= 1;
                total -= i128::from(old.len);
                batch.delete(&dk);
                batch.delete(codec::vec_key(key));
            }
            let analyzed = match value {
                Some(v) => self.analyze(v)?,
                None => None,
            };
            let Some(a) = analyzed else {
                new_vectors.push((key, None));
                continue;
            };
            for (t, &tf) in &a.doc.terms {
                batch.put(
                    codec::posting_key(t, key),
                    codec::encode_posting(tf, a.doc.len),
                );
                *df.entry(t.clone()).or_insert(0) += 1;
            }
            docs += 1;
            total += i128::from(a.doc.len);
            batch.put(&dk, a.doc.encode());
            if let Some(q) = &a.vector {
                batch.put(
                    codec::vec_key(key),
                    q.iter().map(|&x| x as u8).collect::<Vec<u8>>(),
                );
            }
            new_vectors.push((key, a.vector));
        }
        for (t, delta) in df {
            if delta == 0 {
                continue;
            }
            let fk = codec::df_key(&t);
            let cur = match self.db.get(&fk)? {
                Some(b) => codec::decode_u64s::<1>(&fk, &b)?[0] as i64,
                None => 0,
            };
            let n = cur + delta;
            if n < 0 {
                return Err(Error::corrupt(&fk, "document frequency below zero"));
            }
            if n == 0 {
                batch.delete(&fk);
            } else {
                batch.put(&fk, codec::encode_u64s(&[n as u64]));
            }
        }
        if docs < 0 || total < 0 {
            return Err(Error::corrupt(codec::STATS, "document count below zero"));
        }
        let (docs, total) = (docs as u64, total as u64);
        batch.put(codec::STATS, codec::encode_u64s(&[docs, total]));
        if let Some(i) = index {
            batch.put(codec::APPLIED, i.to_le_bytes());
        }
        self.db.write(batch)?;
        *counters = Counters { docs, total };
        if let Some(i) = index {
            self.applied.store(i, Ordering::Release);
        }
        let mut vectors = self.vectors.write();
        for (key, v) in new_vectors {
            vectors.set(key, v.as_deref(), true);
        }
        vectors.maintain(defer_graph);
        let due =
            !defer_graph && vectors.unsaved() >= self.opts.graph_save_every.max(vectors.len() / 4);
        drop(vectors);
        if due {
            self.save_graph_if(1)?;
        }
        Ok(true)
    }
}
