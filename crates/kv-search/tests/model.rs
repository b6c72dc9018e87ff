//! Model test: random puts, overwrites, deletes, batches, replays, reopens
//! and rebuilds against a `BTreeMap` of the store; every search is compared
//! with a brute-force scan of the model (BM25 and cosine computed here).

use std::collections::BTreeMap;
use std::convert::Infallible;

use kv_search::{Change, Embedder, NgramEmbedder, SearchIndex, SearchOptions, quantize, text};
use proptest::prelude::*;

const WORDS: &[&str] = &[
    "apple", "Apple", "banana", "cherry", "Straße", "strasse", "naïve", "東京", "fox", "the",
    "running", "runner",
];

#[derive(Debug, Clone)]
enum Op {
    Put(u8, Vec<u8>),
    Delete(u8),
    Batch(Vec<(u8, Option<Vec<u8>>)>),
    /// Re-apply an old index with garbage: must change nothing.
    Replay(u8),
    Reopen,
    Rebuild,
}

fn value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        8 => prop::collection::vec(0..WORDS.len(), 0..7).prop_map(|ws| {
            ws.iter().map(|&i| WORDS[i]).collect::<Vec<_>>().join(" ").into_bytes()
        }),
        1 => Just(vec![0xff, 0xfe, b'f', b'o', b'x']),
        1 => Just(b"... ,,, !".to_vec()),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u8..16, value()).prop_map(|(k, v)| Op::Put(k, v)),
        2 => (0u8..16).prop_map(Op::Delete),
        2 => prop::collection::vec((0u8..16, prop::option::of(value())), 0..8).prop_map(Op::Batch),
        1 => (0u8..4).prop_map(Op::Replay),
        1 => Just(Op::Reopen),
        1 => Just(Op::Rebuild),
    ]
}

fn key(k: u8) -> Vec<u8> {
    format!("{}/{k:02}", if k.is_multiple_of(2) { "a" } else { "b" }).into_bytes()
}

/// Documents of the model: key → folded words.
fn docs(model: &BTreeMap<Vec<u8>, Vec<u8>>) -> BTreeMap<Vec<u8>, Vec<String>> {
    model
        .iter()
        .filter_map(|(k, v)| {
            let t = std::str::from_utf8(v).ok()?;
            let ws: Vec<String> = text::words(t).collect();
            (!ws.is_empty()).then(|| (k.clone(), ws))
        })
        .collect()
}

/// BM25 over the model, from scratch.
fn model_search(
    model: &BTreeMap<Vec<u8>, Vec<u8>>,
    query: &str,
    prefix: Option<&[u8]>,
) -> BTreeMap<Vec<u8>, f64> {
    let d = docs(model);
    let n = d.len() as f64;
    let avgdl = d.values().map(|w| w.len()).sum::<usize>() as f64 / n.max(1.0);
    let mut q: Vec<String> = text::words(query).collect();
    q.sort();
    q.dedup();
    let mut out = BTreeMap::new();
    'doc: for (k, ws) in &d {
        if prefix.is_some_and(|p| !k.starts_with(p)) {
            continue;
        }
        let mut score = 0.0;
        for t in &q {
            let tf = ws.iter().filter(|w| *w == t).count() as f64;
            if tf == 0.0 {
                continue 'doc;
            }
            let df = d.values().filter(|w| w.contains(t)).count() as f64;
            let idf = (1.0 + (n - df + 0.5) / (df + 0.5)).ln();
            score += idf * tf * 2.2 / (tf + 1.2 * (0.25 + 0.75 * ws.len() as f64 / avgdl));
        }
        out.insert(k.clone(), score);
    }
    out
}

fn unit(v: Vec<f32>) -> Option<Vec<f32>> {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    (n > 0.0).then(|| v.iter().map(|x| x / n).collect())
}

/// Cosine of `query` with every model document's 8-bit vector.
fn model_similar(
    model: &BTreeMap<Vec<u8>, Vec<u8>>,
    query: &str,
    prefix: Option<&[u8]>,
) -> BTreeMap<Vec<u8>, f32> {
    let e = NgramEmbedder::default();
    let Some(q) = unit(e.embed(query)) else {
        return BTreeMap::new();
    };
    let mut out = BTreeMap::new();
    for k in docs(model).keys() {
        if prefix.is_some_and(|p| !k.starts_with(p)) {
            continue;
        }
        let t = std::str::from_utf8(&model[k]).expect("document is UTF-8");
        let Some(v) = unit(e.embed(t)).and_then(|v| quantize(&v)) else {
            continue;
        };
        let vf: Vec<f32> = v.iter().map(|&x| f32::from(x)).collect();
        let Some(vu) = unit(vf) else { continue };
        out.insert(k.clone(), q.iter().zip(&vu).map(|(a, b)| a * b).sum());
    }
    out
}

fn check(index: &SearchIndex, model: &BTreeMap<Vec<u8>, Vec<u8>>) {
    let queries = [
        "apple",
        "STRASSE",
        "naïve fox",
        "東京",
        "the apple banana",
        "runner",
        "cherry",
    ];
    for q in queries {
        for prefix in [None, Some(&b"a/"[..]), Some(&b"b/0"[..])] {
            let want = model_search(model, q, prefix);
            let got = index.search(q, prefix, 100).expect("search");
            assert_eq!(
                got.iter()
                    .map(|(k, _)| k.clone())
                    .collect::<std::collections::BTreeSet<_>>(),
                want.keys().cloned().collect(),
                "query {q:?} prefix {prefix:?}"
            );
            for w in got.windows(2) {
                assert!(w[0].1 >= w[1].1, "not sorted: {got:?}");
            }
            for (k, s) in &got {
                assert!(
                    (s - want[k]).abs() < 1e-9,
                    "{q:?} {k:?}: {s} vs {}",
                    want[k]
                );
            }
            // limit keeps the best
            let top = index.search(q, prefix, 2).expect("search");
            assert_eq!(top.len(), want.len().min(2));
            if let Some(last) = top.last() {
                let better = want.values().filter(|&&s| s > last.1 + 1e-9).count();
                assert!(
                    better < top.len(),
                    "limit dropped a better hit: {top:?} {want:?}"
                );
            }

            let want = model_similar(model, q, prefix);
            let got = index.similar(q, 3, prefix).expect("similar");
            assert_eq!(got.len(), want.len().min(3), "similar {q:?} {prefix:?}");
            for (k, s) in &got {
                let w = want.get(k).expect("similar returned a non-document");
                assert!((s - w).abs() < 1e-4, "similar {q:?} {k:?}: {s} vs {w}");
            }
            if let Some(last) = got.last() {
                let better = want.values().filter(|&&s| s > last.1 + 1e-4).count();
                assert!(
                    better < got.len(),
                    "similar missed a better one: {got:?} {want:?}"
                );
            }
        }
    }
}

type Items = Vec<Result<(Vec<u8>, Vec<u8>), Infallible>>;

fn store_items(model: &BTreeMap<Vec<u8>, Vec<u8>>) -> Items {
    model
        .iter()
        .map(|(k, v)| Ok((k.clone(), v.clone())))
        .collect()
}

fn run(ops: Vec<Op>, ann_threshold: usize) {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = SearchOptions {
        ann_threshold,
        ..SearchOptions::default()
    };
    let (mut index, _) = SearchIndex::open_or_rebuild(dir.path(), opts.clone(), || {
        (0, store_items(&BTreeMap::new()))
    })
    .expect("create");
    let mut model: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    let mut applied = 0u64;
    for op in ops {
        match op {
            Op::Put(k, v) => {
                applied += 1;
                let key = key(k);
                assert!(
                    index
                        .apply(
                            applied,
                            &[Change::Put {
                                key: &key,
                                value: &v
                            }]
                        )
                        .expect("apply")
                );
                model.insert(key, v);
            }
            Op::Delete(k) => {
                applied += 1;
                let key = key(k);
                assert!(
                    index
                        .apply(applied, &[Change::Delete { key: &key }])
                        .expect("apply")
                );
                model.remove(&key);
            }
            Op::Batch(items) => {
                applied += 1;
                let keys: Vec<(Vec<u8>, Option<Vec<u8>>)> =
                    items.into_iter().map(|(k, v)| (key(k), v)).collect();
                let changes: Vec<Change<'_>> = keys
                    .iter()
                    .map(|(k, v)| match v {
                        Some(v) => Change::Put { key: k, value: v },
                        None => Change::Delete { key: k },
                    })
                    .collect();
                assert!(index.apply(applied, &changes).expect("apply"));
                for (k, v) in keys {
                    match v {
                        Some(v) => model.insert(k, v),
                        None => model.remove(&k),
                    };
                }
            }
            Op::Replay(back) => {
                let old = applied.saturating_sub(u64::from(back));
                let junk = Change::Put {
                    key: b"a/00",
                    value: b"cherry cherry",
                };
                assert!(
                    !index
                        .apply(old, &[junk, Change::Delete { key: b"b/01" }])
                        .expect("replay")
                );
            }
            Op::Reopen => {
                drop(index);
                index = SearchIndex::open(dir.path(), opts.clone()).expect("reopen");
            }
            Op::Rebuild => {
                index
                    .rebuild_from(store_items(&model), applied)
                    .expect("rebuild");
            }
        }
        assert_eq!(index.applied_index(), applied);
        check(&index, &model);
    }
    let d = docs(&model);
    assert_eq!(index.stats().documents, d.len() as u64);
    assert_eq!(
        index.stats().total_words,
        d.values().map(|w| w.len() as u64).sum::<u64>()
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn matches_brute_force_model(ops in prop::collection::vec(op(), 1..40)) {
        run(ops, 1_000_000);
    }

    /// Tiny threshold: the HNSW graph (with its tombstones and rebuilds)
    /// serves `similar`; with ef above the collection size it must be exact.
    #[test]
    fn matches_brute_force_model_with_graph(ops in prop::collection::vec(op(), 1..40)) {
        run(ops, 4);
    }
}

#[test]
fn overwrite_and_delete_keep_counts_exact() {
    let ops = vec![
        Op::Put(1, b"apple banana".to_vec()),
        Op::Put(1, b"cherry".to_vec()),
        Op::Put(2, b"apple apple".to_vec()),
        Op::Delete(3),
        Op::Batch(vec![
            (2, None),
            (2, Some(b"fox apple".to_vec())),
            (4, Some(b"the".to_vec())),
        ]),
        Op::Put(4, vec![0xff]),
        Op::Reopen,
        Op::Delete(1),
    ];
    run(ops, 1_000_000);
}

#[test]
fn similar_prefers_shared_words() {
    let dir = tempfile::tempdir().expect("tempdir");
    let index = SearchIndex::create(dir.path(), SearchOptions::default()).expect("create");
    index
        .apply(
            1,
            &[
                Change::Put {
                    key: b"1",
                    value: b"fast brown fox running in the field",
                },
                Change::Put {
                    key: b"2",
                    value: b"database replication with raft",
                },
                Change::Put {
                    key: b"3",
                    value: b"a runner runs fast",
                },
            ],
        )
        .expect("apply");
    let got = index
        .similar("the fast fox runs", 3, None)
        .expect("similar");
    assert_eq!(got.len(), 3);
    assert_eq!(got[2].0, b"2");
    assert!(got.iter().all(|(_, s)| (-1.0..=1.0).contains(s)));
}
