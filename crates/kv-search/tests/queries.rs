//! Query behaviour: Unicode words, prefix filter, limit, empty queries.

use kv_search::{Change, Error, SearchIndex, SearchOptions};

fn index(dir: &std::path::Path) -> SearchIndex {
    let index = SearchIndex::create(dir, SearchOptions::default()).expect("create");
    let docs: &[(&[u8], &str)] = &[
        (b"de/1", "Die Straße ist lang"),
        (b"de/2", "STRASSE und Weg"),
        (b"fr/1", "une idée naïve"),
        (b"fr/2", "NAI\u{308}VE encore naïve"),
        (b"jp/1", "東京タワーに行く"),
        (b"jp/2", "京都"),
        (b"en/1", "the lazy dog"),
        (b"en/2", "the lazy lazy cat"),
        (b"en/3", "the quick fox"),
    ];
    let changes: Vec<Change<'_>> = docs
        .iter()
        .map(|(k, v)| Change::Put {
            key: k,
            value: v.as_bytes(),
        })
        .collect();
    index.apply(1, &changes).expect("apply");
    index
}

fn keys(hits: Vec<(Vec<u8>, f64)>) -> Vec<String> {
    hits.into_iter()
        .map(|(k, _)| String::from_utf8(k).expect("utf8"))
        .collect()
}

#[test]
fn unicode_words_match_case_insensitively() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ix = index(dir.path());
    assert_eq!(keys(ix.search("straße", None, 10).expect("q")).len(), 2);
    assert_eq!(keys(ix.search("Strasse", None, 10).expect("q")).len(), 2);
    // fr/2 has it twice (once with a combining diaeresis): ranked first.
    assert_eq!(
        keys(ix.search("NAÏVE", None, 10).expect("q")),
        ["fr/2", "fr/1"]
    );
    assert_eq!(keys(ix.search("東京", None, 10).expect("q")), ["jp/1"]);
    assert_eq!(keys(ix.search("京", None, 10).expect("q")).len(), 2);
    assert_eq!(keys(ix.search("タワー", None, 10).expect("q")), ["jp/1"]);
}

#[test]
fn every_word_must_match_and_bm25_ranks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ix = index(dir.path());
    assert_eq!(
        keys(ix.search("lazy THE", None, 10).expect("q")),
        ["en/2", "en/1"]
    );
    assert!(ix.search("lazy fox", None, 10).expect("q").is_empty());
    assert!(ix.search("nowhere", None, 10).expect("q").is_empty());
}

#[test]
fn prefix_and_limit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ix = index(dir.path());
    assert_eq!(
        keys(ix.search("the", Some(b"en/"), 10).expect("q")).len(),
        3
    );
    assert_eq!(
        keys(ix.search("the", Some(b"en/3"), 10).expect("q")),
        ["en/3"]
    );
    assert!(ix.search("the", Some(b"de/"), 10).expect("q").is_empty());
    assert_eq!(ix.search("the", None, 2).expect("q").len(), 2);
    assert!(ix.search("the", None, 0).expect("q").is_empty());
    let near = ix.similar("lazy", 10, Some(b"en/")).expect("similar");
    assert_eq!(near.len(), 3);
    assert!(near.iter().all(|(k, _)| k.starts_with(b"en/")));
    assert_eq!(ix.similar("lazy", 1, None).expect("similar").len(), 1);
}

#[test]
fn empty_queries_are_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ix = index(dir.path());
    for q in ["", "   ", "!?,."] {
        assert!(
            matches!(ix.search(q, None, 10), Err(Error::EmptyQuery)),
            "{q:?}"
        );
        assert!(
            matches!(ix.similar(q, 10, None), Err(Error::EmptyQuery)),
            "{q:?}"
        );
    }
}

#[test]
fn non_utf8_values_are_not_indexed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ix = index(dir.path());
    ix.apply(
        2,
        &[Change::Put {
            key: b"en/1",
            value: b"\xff lazy dog",
        }],
    )
    .expect("apply");
    assert_eq!(keys(ix.search("lazy", None, 10).expect("q")), ["en/2"]);
    assert_eq!(ix.stats().documents, 8);
}
