//! The queries of a [`SearchIndex`]: full-text by BM25, similarity by the
//! graph or an exact scan.

use std::ops::Bound;

use super::{BM25_B, BM25_K1, SearchIndex};
use crate::codec;
use crate::embed::normalize;
use crate::error::{Error, Result};
use crate::text;

impl SearchIndex {
    /// Keys whose value contains every word of `query` (folded as values
    /// are), best first by BM25 (k1 = 1.2, b = 0.75; IDF
    /// `ln(1 + (N - df + 0.5) / (df + 0.5))`), ties by key; only keys
    /// starting with `prefix` when given; at most `limit`.
    ///
    /// # Errors
    ///
    /// [`Error::EmptyQuery`] when `query` has no word; engine errors;
    /// [`Error::Corruption`] for a damaged record.
    pub fn search(
        &self,
        query: &str,
        prefix: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, f64)>> {
        let mut terms: Vec<String> = text::words(query).collect();
        if terms.is_empty() {
            return Err(Error::EmptyQuery);
        }
        terms.sort();
        terms.dedup();
        if limit == 0 {
            return Ok(Vec::new());
        }
        let snap = self.db.snapshot();
        let [n, total] = match snap.get(codec::STATS)? {
            Some(b) => codec::decode_u64s::<2>(codec::STATS, &b)?,
            None => return Err(Error::corrupt(codec::STATS, "missing")),
        };
        if n == 0 {
            return Ok(Vec::new());
        }
        let avgdl = total as f64 / n as f64;
        let mut weighted: Vec<(u64, f64, &str)> = Vec::with_capacity(terms.len());
        for t in &terms {
            let fk = codec::df_key(t);
            let df = match snap.get(&fk)? {
                Some(b) => codec::decode_u64s::<1>(&fk, &b)?[0],
                None => return Ok(Vec::new()),
            };
            let idf = (1.0 + (n as f64 - df as f64 + 0.5) / (df as f64 + 0.5)).ln();
            weighted.push((df, idf, t));
        }
        weighted.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.2.cmp(b.2)));
        let bm25 = |idf: f64, tf: u32, dl: u32| {
            let tf = f64::from(tf);
            idf * tf * (BM25_K1 + 1.0)
                / (tf + BM25_K1 * (1.0 - BM25_B + BM25_B * f64::from(dl) / avgdl))
        };
        let Some((&(_, idf0, rarest), rest)) = weighted.split_first() else {
            return Ok(Vec::new());
        };
        let start = codec::posting_key(rarest, prefix.unwrap_or(&[]));
        let end = codec::prefix_end(&start).map_or(Bound::Unbounded, Bound::Excluded);
        let head = start.len() - prefix.map_or(0, <[u8]>::len);
        let mut hits: Vec<(Vec<u8>, f64)> = Vec::new();
        'postings: for item in snap.scan((Bound::Included(start.clone()), end))? {
            let (pk, pv) = item?;
            let key = pk.get(head..).unwrap_or(&[]);
            let (tf, dl) = codec::decode_posting(&pk, &pv)?;
            let mut score = bm25(idf0, tf, dl);
            for &(_, idf, t) in rest {
                let ok = codec::posting_key(t, key);
                match snap.get(&ok)? {
                    Some(v) => {
                        let (tf, dl) = codec::decode_posting(&ok, &v)?;
                        score += bm25(idf, tf, dl);
                    }
                    None => continue 'postings,
                }
            }
            hits.push((key.to_vec(), score));
        }
        let by = |a: &(Vec<u8>, f64), b: &(Vec<u8>, f64)| {
            b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0))
        };
        if hits.len() > limit {
            hits.select_nth_unstable_by(limit - 1, by);
            hits.truncate(limit);
        }
        hits.sort_by(by);
        Ok(hits)
    }

    /// The `k` keys whose values are most similar to `text` (cosine of the
    /// embedder's vectors, in [-1, 1]), best first, ties by key; only keys
    /// starting with `prefix` when given. Exact below
    /// [`SearchOptions::ann_threshold`] vectors (and for a prefix selecting
    /// fewer keys than that), approximate (HNSW) above.
    ///
    /// # Errors
    ///
    /// [`Error::EmptyQuery`] when `text` embeds to the zero vector (no
    /// word); [`Error::InvalidArgument`] when the embedder returns a vector
    /// of the wrong size.
    pub fn similar(
        &self,
        text: &str,
        k: usize,
        prefix: Option<&[u8]>,
    ) -> Result<Vec<(Vec<u8>, f32)>> {
        let q = self.query_vector(text)?;
        if k == 0 {
            return Ok(Vec::new());
        }
        Ok(self.vectors.read().search(&q, k, prefix.unwrap_or(&[])))
    }

    /// As [`SearchIndex::similar`], always by an exact scan (for measuring
    /// the approximate index against).
    ///
    /// # Errors
    ///
    /// As [`SearchIndex::similar`].
    pub fn similar_exact(
        &self,
        text: &str,
        k: usize,
        prefix: Option<&[u8]>,
    ) -> Result<Vec<(Vec<u8>, f32)>> {
        let q = self.query_vector(text)?;
        Ok(self.vectors.read().exact(&q, k, prefix.unwrap_or(&[])))
    }

    fn query_vector(&self, text: &str) -> Result<Vec<f32>> {
        normalize(self.embed(text)?).ok_or(Error::EmptyQuery)
    }

    /// The embedder's vector of `text`, checked to have the dimensions it
    /// declares (values and queries alike).
    pub(super) fn embed(&self, text: &str) -> Result<Vec<f32>> {
        let v = self.opts.embedder.embed(text);
        if v.len() != self.opts.embedder.dim() {
            return Err(Error::InvalidArgument(format!(
                "embedder returned {} dimensions, declares {}",
                v.len(),
                self.opts.embedder.dim()
            )));
        }
        Ok(v)
    }
}
