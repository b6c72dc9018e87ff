//! [`MiniLmEmbedder`]: a sentence-embedding model, run locally on the CPU.

use crate::embed::Embedder;
use crate::error::{Error, Result};

/// Bytes of a value the model sees. It reads at most 128 WordPiece tokens
/// (right truncation), a few hundred bytes of ordinary text; the crate
/// refuses inputs over 64 KiB, so longer values are cut here (at a
/// character boundary) instead of being left without a vector.
const MAX_TEXT_BYTES: usize = 16 * 1024;

/// Embeddings by meaning: sentence-transformers `paraphrase-MiniLM-L3-v2`
/// (3 layers, 384 dimensions), quantised to 4 bits, whose weights and
/// tokenizer are compiled into the `pocket-encoder` crate: no file and no
/// network is touched to load it. Candle runs it on the CPU.
///
/// Against [`NgramEmbedder`](crate::NgramEmbedder) on 30 paraphrase pairs
/// (`benches/search --bin embedders`) it ranks a text's paraphrase first
/// 0.97 of the time against 0.17, because "automobile" and "car" are near
/// to it and unrelated to hashed n-grams. It costs about 7 ms per value on
/// one core (148 texts/s against 414,937): a choice for collections
/// written at a few hundred values per second or less.
///
/// Its [`id`](Embedder::id) carries the bundled weights' SHA-256, so an
/// index built with other weights is rebuilt rather than mixed. The same
/// text gives the same vector on every run and node (checked by
/// `tests/minilm.rs`).
pub struct MiniLmEmbedder {
    encoder: pocket_encoder::Encoder,
    info: pocket_encoder::ModelInfo,
}

impl MiniLmEmbedder {
    /// Loads the bundled model (once per process; later calls share it).
    ///
    /// # Errors
    ///
    /// [`Error::Model`] when the compiled-in weights or tokenizer fail to
    /// load.
    pub fn new() -> Result<Self> {
        let encoder = pocket_encoder::Encoder::new().map_err(|e| Error::Model(e.to_string()))?;
        Ok(MiniLmEmbedder {
            encoder,
            info: pocket_encoder::model_info(),
        })
    }

    /// The upstream model this embedder runs.
    pub fn model(&self) -> &str {
        &self.info.upstream_model
    }
}

impl std::fmt::Debug for MiniLmEmbedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MiniLmEmbedder")
            .field("id", &self.info.id)
            .field("revision", &self.info.revision)
            .finish()
    }
}

impl Embedder for MiniLmEmbedder {
    fn dim(&self) -> usize {
        self.info.dimensions
    }

    fn id(&self) -> String {
        format!("{}@{}", self.info.id, self.info.revision)
    }

    /// All zeros for a text with nothing but white space (the model refuses
    /// it), and if inference fails (it has no failure on valid input; a
    /// value without a vector is simply not found by similarity search).
    fn embed(&self, text: &str) -> Vec<f32> {
        let text = truncate(text, MAX_TEXT_BYTES);
        if text.trim().is_empty() {
            return vec![0.0; self.dim()];
        }
        match self.encoder.embed(&[text]) {
            Ok(mut vs) if vs.len() == 1 && vs[0].len() == self.dim() => vs.swap_remove(0),
            _ => vec![0.0; self.dim()],
        }
    }
}

/// The longest prefix of `text` of at most `max` bytes ending at a
/// character boundary.
fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::truncate;

    #[test]
    fn truncate_keeps_whole_characters() {
        assert_eq!(truncate("abc", 10), "abc");
        assert_eq!(truncate("abcdef", 3), "abc");
        // 'é' is two bytes: cutting inside it keeps the text before it.
        assert_eq!(truncate("aé", 2), "a");
        assert_eq!(truncate("ééé", 5), "éé");
    }
}
