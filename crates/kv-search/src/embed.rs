//! Turning a value into a vector for similarity search.

use std::collections::BTreeMap;

use xxhash_rust::xxh3::xxh3_64_with_seed;

use crate::text;

/// Maps a text to a fixed-size vector whose cosine similarity to another
/// text's vector says how alike they are.
///
/// Implement it to plug in a real sentence-embedding model; the index only
/// needs `embed` to be deterministic (the stored vectors are recomputed only
/// by a rebuild).
pub trait Embedder: Send + Sync + std::fmt::Debug {
    /// Number of dimensions of every vector `embed` returns.
    fn dim(&self) -> usize;

    /// A name of the method and its parameters. The index stores it and
    /// reports [`Error::NeedsRebuild`](crate::Error::NeedsRebuild) when it is
    /// opened with an embedder of another id, since its stored vectors would
    /// no longer be comparable to the query's.
    fn id(&self) -> String;

    /// The vector of `text`, of length [`dim`](Embedder::dim). All zeros when
    /// the text holds nothing to embed; otherwise the index normalises it, so
    /// it need not be a unit vector.
    fn embed(&self, text: &str) -> Vec<f32>;
}

/// The default, local embedder: hashed character 3-grams and whole words.
///
/// For each distinct word `w` of the text (as [`text::words`] folds them),
/// with `tf` occurrences:
///
/// - weight `(1 + ln tf) * ln(1 + chars(w))`: term frequency log-scaled, and
///   longer words weighted up as a corpus-independent stand-in for IDF (by
///   Zipf's law of abbreviation frequent words are short: "the", "a", "of");
/// - the word itself is one feature with that weight, and the 3-grams of
///   `<w>` (with boundary markers, so "cat" gives `<ca`, `cat`, `at>`) share
///   the same weight again, `weight / sqrt(#grams)` each. The grams make
///   "running" close to "runner" and tolerate typos; the word feature
///   separates words that share grams.
/// - each feature is hashed (xxh3) to one of `dim` buckets with a hashed sign
///   (so collisions cancel out on average rather than pile up).
///
/// Why no global IDF: a value's vector must depend on that value only, so
/// that writes to other keys never change a stored vector, a rebuild
/// reproduces exactly the vectors incremental updates made, and every node of
/// a cluster computes the same. Document frequencies shift with every write.
///
/// This captures spelling and shared vocabulary, not synonyms: "car" and
/// "automobile" are unrelated to it. A model behind [`Embedder`] can.
#[derive(Debug, Clone)]
pub struct NgramEmbedder {
    dim: usize,
}

impl NgramEmbedder {
    /// An embedder into `dim` dimensions (at least 8).
    pub fn new(dim: usize) -> Self {
        NgramEmbedder { dim: dim.max(8) }
    }
}

impl Default for NgramEmbedder {
    /// 256 dimensions.
    fn default() -> Self {
        NgramEmbedder::new(256)
    }
}

const WORD_SEED: u64 = 0x5eed_0001;
const GRAM_SEED: u64 = 0x5eed_0003;

impl Embedder for NgramEmbedder {
    fn dim(&self) -> usize {
        self.dim
    }

    fn id(&self) -> String {
        format!("ngram3+word/xxh3/dim={}/v1", self.dim)
    }

    fn embed(&self, text: &str) -> Vec<f32> {
        // Ordered, so that the float sums run in one order and the same
        // text always gets the same vector, bit for bit.
        let mut tf: BTreeMap<String, u32> = BTreeMap::new();
        for w in text::words(text) {
            *tf.entry(w).or_insert(0) += 1;
        }
        let mut v = vec![0f32; self.dim];
        let mut add = |bytes: &[u8], seed: u64, weight: f32| {
            let h = xxh3_64_with_seed(bytes, seed);
            let bucket = (h % self.dim as u64) as usize;
            let sign = if h >> 63 == 0 { 1.0 } else { -1.0 };
            if let Some(x) = v.get_mut(bucket) {
                *x += sign * weight;
            }
        };
        let mut gram = Vec::with_capacity(16);
        for (word, &n) in &tf {
            let chars: Vec<char> = word.chars().collect();
            let weight = (1.0 + (n as f32).ln()) * (1.0 + chars.len() as f32).ln();
            add(word.as_bytes(), WORD_SEED, weight);
            let marked: Vec<char> = std::iter::once('<')
                .chain(chars.iter().copied())
                .chain(std::iter::once('>'))
                .collect();
            let grams = marked.len().saturating_sub(2).max(1);
            let gw = weight / (grams as f32).sqrt();
            for win in marked.windows(3) {
                gram.clear();
                for c in win {
                    let mut buf = [0u8; 4];
                    gram.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                }
                add(&gram, GRAM_SEED, gw);
            }
        }
        v
    }
}

/// `v` scaled to unit length; `None` when it is all zeros (or not finite).
pub(crate) fn normalize(mut v: Vec<f32>) -> Option<Vec<f32>> {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if !norm.is_finite() || norm == 0.0 {
        return None;
    }
    v.iter_mut().for_each(|x| *x /= norm);
    Some(v)
}

/// A unit vector in 8 bits per dimension: each component scaled by
/// `127 / max |component|` and rounded. Cosine similarity only needs the
/// direction, so no scale is kept. `None` when `v` is all zeros.
pub fn quantize(v: &[f32]) -> Option<Vec<i8>> {
    let max = v.iter().fold(0f32, |m, x| m.max(x.abs()));
    if !max.is_finite() || max == 0.0 {
        return None;
    }
    let s = 127.0 / max;
    Some(
        v.iter()
            .map(|x| (x * s).round().clamp(-127.0, 127.0) as i8)
            .collect(),
    )
}

/// `1 / |q|` of a quantized vector, 0 for the zero vector.
pub(crate) fn inv_norm(q: &[i8]) -> f32 {
    let n2: i64 = q.iter().map(|&x| i64::from(x) * i64::from(x)).sum();
    if n2 == 0 {
        0.0
    } else {
        1.0 / (n2 as f32).sqrt()
    }
}

/// Dot product of two quantized vectors. Summed in 16 independent lanes
/// so that the compiler vectorises it (a plain `zip().sum()` stays scalar).
#[inline]
pub(crate) fn dot_i8(a: &[i8], b: &[i8]) -> i32 {
    let mut acc = [0i32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: i32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(&x, &y)| i32::from(x) * i32::from(y))
        .sum();
    for (x, y) in ca.zip(cb) {
        for ((s, &p), &q) in acc.iter_mut().zip(x).zip(y) {
            *s += i32::from(i16::from(p) * i16::from(q));
        }
    }
    acc.iter().sum::<i32>() + tail
}

/// Dot product of a float query with a quantized vector, in 16 lanes.
#[inline]
pub(crate) fn dot_f32_i8(a: &[f32], b: &[i8]) -> f32 {
    let mut acc = [0f32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(&x, &y)| x * f32::from(y))
        .sum();
    for (x, y) in ca.zip(cb) {
        for ((s, &p), &q) in acc.iter_mut().zip(x).zip(y) {
            *s += p * f32::from(q);
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cos(a: &str, b: &str) -> f32 {
        let e = NgramEmbedder::default();
        let (Some(x), Some(y)) = (normalize(e.embed(a)), normalize(e.embed(b))) else {
            return 0.0;
        };
        x.iter().zip(&y).map(|(a, b)| a * b).sum()
    }

    #[test]
    fn similar_texts_score_higher() {
        let q = "the quick brown fox jumps";
        assert!((cos(q, q) - 1.0).abs() < 1e-5);
        assert!(cos(q, "a quick brown fox jumped") > cos(q, "database replication log"));
        assert!(cos("running shoes", "runner shoe") > cos("running shoes", "ocean tide"));
        assert_eq!(cos("", "anything"), 0.0);
    }

    #[test]
    fn quantized_cosine_is_close() {
        let e = NgramEmbedder::default();
        let a = normalize(e.embed("lazy dogs sleep in the sun")).expect("words");
        let b = normalize(e.embed("the lazy dog sleeps")).expect("words");
        let exact: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        let qb = quantize(&b).expect("nonzero");
        let approx = dot_f32_i8(&a, &qb) * inv_norm(&qb);
        assert!((exact - approx).abs() < 0.02, "{exact} vs {approx}");
        assert!(quantize(&[0.0; 4]).is_none());
    }
}
