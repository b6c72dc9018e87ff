//! Generated short texts for tests and benchmarks: sentences of words drawn
//! from a fixed vocabulary with a Zipf distribution, from a seed.

/// A seeded generator of sentences.
#[derive(Debug, Clone)]
pub struct Corpus {
    vocab: Vec<String>,
    cdf: Vec<f64>,
    state: u64,
}

const SYLLABLES: &[&str] = &[
    "ka", "lo", "mi", "ne", "ra", "tu", "shi", "po", "de", "va", "gri", "sel", "mon", "tar", "bel",
    "qu", "fen", "dor", "ix", "um", "zan", "ol", "pre", "str", "an",
];

impl Corpus {
    /// `words` distinct words (Zipf exponent 1.0 over their ranks), seeded.
    pub fn new(words: usize, seed: u64) -> Self {
        let mut c = Corpus {
            vocab: Vec::with_capacity(words),
            cdf: Vec::with_capacity(words),
            state: 0x1234_5678,
        };
        // Vocabulary from a fixed seed, so every corpus shares it.
        let mut seen = std::collections::HashSet::new();
        while c.vocab.len() < words.max(1) {
            let n = 1 + (c.next_u64() % 4) as usize;
            let w: String = (0..n)
                .map(|_| SYLLABLES[(c.next_u64() % SYLLABLES.len() as u64) as usize])
                .collect();
            if seen.insert(w.clone()) {
                c.vocab.push(w);
            }
        }
        let mut acc = 0.0;
        for rank in 1..=c.vocab.len() {
            acc += 1.0 / rank as f64;
            c.cdf.push(acc);
        }
        for p in &mut c.cdf {
            *p /= acc;
        }
        c.state = seed ^ 0x9E37_79B9_7F4A_7C15;
        c
    }

    /// The next pseudo-random number (splitmix64).
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A Zipf-distributed word.
    pub fn word(&mut self) -> &str {
        let u = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        let i = self
            .cdf
            .partition_point(|&p| p < u)
            .min(self.vocab.len() - 1);
        &self.vocab[i]
    }

    /// A sentence of `min..=max` words.
    pub fn sentence(&mut self, min: usize, max: usize) -> String {
        let n = min + (self.next_u64() % (max - min + 1) as u64) as usize;
        let mut s = String::new();
        for i in 0..n {
            if i > 0 {
                s.push(' ');
            }
            let w = self.word().to_string();
            s.push_str(&w);
        }
        s
    }
}
