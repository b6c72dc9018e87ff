//! Turning a value into words: Unicode word segmentation and case folding.

use unicode_normalization::UnicodeNormalization;
use unicode_segmentation::UnicodeSegmentation;

/// Longest word kept, in bytes (after folding); longer "words" (base64
/// blobs, hashes) are not indexed.
pub const MAX_WORD_BYTES: usize = 128;

/// The words of `text`, in order, folded: UAX #29 words (`unicode_words`:
/// runs with at least one letter or digit), NFKC-normalised when not ASCII
/// (so a precomposed and a combining "ï" are the same word, and full-width
/// letters match their ASCII form), lowercased, and with `ß` written `ss` (the
/// one full case folding that lowercase misses in everyday text, so
/// "Straße" matches "STRASSE"). Han ideographs are one word each, as UAX #29
/// has it, so a CJK query matches by its characters.
pub fn words(text: &str) -> impl Iterator<Item = String> + '_ {
    text.unicode_words().filter_map(fold)
}

fn fold(word: &str) -> Option<String> {
    let mut w = if word.is_ascii() {
        word.to_ascii_lowercase()
    } else {
        let n: String = word.nfkc().collect();
        n.to_lowercase().replace('ß', "ss")
    };
    // NUL separates a term from a key in the posting keys.
    if w.contains('\0') || w.is_empty() || w.len() > MAX_WORD_BYTES {
        return None;
    }
    w.shrink_to_fit();
    Some(w)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ws(t: &str) -> Vec<String> {
        words(t).collect()
    }

    #[test]
    fn folds_case_and_unicode() {
        assert_eq!(
            ws("The quick, BROWN fox."),
            ["the", "quick", "brown", "fox"]
        );
        assert_eq!(ws("Straße STRASSE"), ["strasse", "strasse"]);
        // precomposed and combining diaeresis
        assert_eq!(ws("naïve nai\u{308}ve NAÏVE"), ["naïve", "naïve", "naïve"]);
        assert_eq!(ws("東京タワー"), ["東", "京", "タワー"]);
        assert_eq!(ws("ＡＢＣ"), ["abc"]);
        assert!(ws("  ... ,, !").is_empty());
        assert_eq!(ws("can't stop"), ["can't", "stop"]);
    }
}
