//! Recall@10 of the HNSW graph against exact search on generated texts.
//!
//! 5,000 texts in CI; `KV_SEARCH_RECALL_TEXTS=20000` for the full check.

use kv_search::corpus::Corpus;
use kv_search::{Change, SearchIndex, SearchOptions};

#[test]
fn hnsw_recall_at_10() {
    let n: usize = std::env::var("KV_SEARCH_RECALL_TEXTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5_000);
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = SearchOptions {
        ann_threshold: 1_000,
        ..SearchOptions::default()
    };
    let mut c = Corpus::new(5_000, 42);
    let texts: Vec<(Vec<u8>, String)> = (0..n)
        .map(|i| (format!("doc{i:07}").into_bytes(), c.sentence(4, 12)))
        .collect();
    let mut index = SearchIndex::rebuild(
        dir.path(),
        opts,
        Vec::<Result<(Vec<u8>, Vec<u8>), std::convert::Infallible>>::new(),
        0,
    )
    .expect("create");
    // Half by incremental apply (the graph grows past the threshold on the
    // way), then deletes and overwrites, so tombstones are exercised.
    for (i, chunk) in texts.chunks(500).enumerate() {
        let changes: Vec<Change<'_>> = chunk
            .iter()
            .map(|(k, v)| Change::Put {
                key: k,
                value: v.as_bytes(),
            })
            .collect();
        index.apply(i as u64 + 1, &changes).expect("apply");
    }
    let deletes: Vec<Change<'_>> = texts
        .iter()
        .step_by(7)
        .map(|(k, _)| Change::Delete { key: k })
        .collect();
    index.apply(100_000, &deletes).expect("delete");
    assert!(index.stats().approximate);
    let recall = |index: &SearchIndex, c: &mut Corpus| {
        let (mut hit, mut total) = (0usize, 0usize);
        for _ in 0..100 {
            let q = c.sentence(2, 6);
            let exact = index.similar_exact(&q, 10, None).expect("exact");
            let approx = index.similar(&q, 10, None).expect("approx");
            let Some(kth) = exact.last().map(|e| e.1) else {
                continue;
            };
            // Ties at the 10th score count as hits (generated texts repeat).
            hit += approx
                .iter()
                .filter(|a| a.1 >= kth - 1e-6)
                .count()
                .min(exact.len());
            total += exact.len();
        }
        hit as f64 / total as f64
    };
    let r = recall(&index, &mut c);
    println!("recall@10 over {n} texts (incremental, 1/7 deleted): {r:.3}");
    assert!(r >= 0.9, "recall@10 {r}");
    // The graph a rebuild makes.
    let live: Vec<Result<_, std::convert::Infallible>> = texts
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 7 != 0)
        .map(|(_, (k, v))| Ok((k.as_slice(), v.as_bytes())))
        .collect();
    index.rebuild_from(live, 100_000).expect("rebuild");
    let r = recall(&index, &mut c);
    println!("recall@10 over {n} texts (rebuilt): {r:.3}");
    assert!(r >= 0.9, "recall@10 {r}");
}
