//! The similarity graph's file: an open loads the saved graph instead of
//! building it again; a stale file (a crash after changes) keeps the nodes
//! whose vectors did not change and re-inserts the rest; a damaged file is
//! ignored, never trusted and never a panic; `apply` saves the graph by
//! itself as it changes.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use kv_search::{Change, GraphRestored, SearchIndex, SearchOptions};

const TEXTS: usize = 1_500;

fn opts() -> SearchOptions {
    SearchOptions {
        ann_threshold: 100,
        ..SearchOptions::default()
    }
}

fn corpus(n: usize, seed: u64) -> BTreeMap<Vec<u8>, String> {
    let mut c = kv_search::corpus::Corpus::new(2_000, seed);
    (0..n)
        .map(|i| (format!("k{i:05}").into_bytes(), c.sentence(4, 12)))
        .collect()
}

/// An index at `dir` built by `apply`, 100 keys per log entry.
fn build(dir: &Path, m: &BTreeMap<Vec<u8>, String>, opts: SearchOptions) -> SearchIndex {
    let index = SearchIndex::create(dir, opts).expect("create");
    let all: Vec<_> = m.iter().collect();
    for (i, chunk) in all.chunks(100).enumerate() {
        let changes: Vec<Change<'_>> = chunk
            .iter()
            .map(|(k, v)| Change::Put {
                key: k,
                value: v.as_bytes(),
            })
            .collect();
        assert!(index.apply(i as u64 + 1, &changes).expect("apply"));
    }
    assert!(index.stats().approximate, "the graph is in use");
    index
}

fn graph_file(dir: &Path) -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "graph"))
        .collect();
    assert_eq!(found.len(), 1, "one graph file in {}", dir.display());
    found.remove(0)
}

fn queries(m: &BTreeMap<Vec<u8>, String>) -> Vec<String> {
    let mut c = kv_search::corpus::Corpus::new(2_000, 99);
    let mut q: Vec<String> = (0..30).map(|_| c.sentence(3, 8)).collect();
    q.extend(m.values().step_by(97).cloned());
    q
}

type Hits = Vec<Vec<(Vec<u8>, f32)>>;

/// Asserts two sets of answers equal, showing the first that differs.
fn same(got: &Hits, want: &Hits, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(g, w, "{what}: query {i}");
    }
}

fn similar_all(index: &SearchIndex, qs: &[String]) -> Hits {
    qs.iter()
        .map(|q| index.similar(q, 10, None).expect("similar"))
        .collect()
}

/// Recall@10 of the graph against exact search, counting a hit when its
/// exact score ties or beats the exact 10th.
fn recall(index: &SearchIndex, qs: &[String]) -> f64 {
    let (mut hit, mut want) = (0usize, 0usize);
    for q in qs {
        let exact = index.similar_exact(q, 10, None).expect("exact");
        let Some(floor) = exact.last().map(|h| h.1) else {
            continue;
        };
        let got = index.similar(q, 10, None).expect("similar");
        want += exact.len();
        hit += got.iter().filter(|h| h.1 >= floor - 1e-6).count();
    }
    hit as f64 / want.max(1) as f64
}

#[test]
fn an_open_loads_the_saved_graph() {
    let dir = tempfile::tempdir().expect("tempdir");
    let m = corpus(TEXTS, 1);
    let qs = queries(&m);
    let index = build(dir.path(), &m, opts());
    let before = similar_all(&index, &qs);
    drop(index);
    let index = SearchIndex::open(dir.path(), opts()).expect("reopen");
    assert_eq!(
        index.graph_restored(),
        Some(GraphRestored {
            kept: TEXTS,
            inserted: 0,
            dropped: 0
        })
    );
    same(&similar_all(&index, &qs), &before, "the same graph answers");
    // Nothing changed, so nothing is written on the next drop or save.
    assert!(!index.save_graph().expect("save"));
}

#[test]
fn a_stale_graph_keeps_what_did_not_change() {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path().join("index");
    let mut m = corpus(TEXTS, 2);
    drop(build(&dir, &m, opts()));
    let old_graph = std::fs::read(graph_file(&dir)).expect("graph file");

    // After the save: 30 overwrites, 20 deletes, 40 new keys.
    let index = SearchIndex::open(&dir, opts()).expect("reopen");
    let fresh = corpus(90, 3);
    let mut fresh = fresh.values();
    let keys: Vec<Vec<u8>> = m.keys().cloned().collect();
    let mut changes: Vec<(Vec<u8>, Option<String>)> = Vec::new();
    for k in keys.iter().step_by(50).take(30) {
        changes.push((k.clone(), fresh.next().cloned()));
    }
    for k in keys.iter().skip(25).step_by(50).take(20) {
        changes.push((k.clone(), None));
    }
    for i in 0..40 {
        changes.push((format!("new{i:03}").into_bytes(), fresh.next().cloned()));
    }
    let mut deleted = BTreeSet::new();
    for (next, (k, v)) in (index.applied_index() + 1..).zip(&changes) {
        let c = match v {
            Some(v) => Change::Put {
                key: k,
                value: v.as_bytes(),
            },
            None => Change::Delete { key: k },
        };
        assert!(index.apply(next, &[c]).expect("apply"));
        match v {
            Some(v) => {
                m.insert(k.clone(), v.clone());
            }
            None => {
                m.remove(k);
                deleted.insert(k.clone());
            }
        }
    }
    drop(index);
    // As after a crash that lost the later saves: the old file is back.
    std::fs::write(graph_file(&dir), &old_graph).expect("old graph back");
    let index = SearchIndex::open(&dir, opts()).expect("reopen");
    assert_eq!(
        index.graph_restored(),
        Some(GraphRestored {
            kept: TEXTS - 50,
            inserted: 70,
            dropped: 50
        })
    );
    assert_eq!(index.stats().vectors, m.len());
    let qs = queries(&m);
    for hits in similar_all(&index, &qs) {
        for (k, _) in hits {
            assert!(!deleted.contains(&k), "deleted key {k:?} returned");
            assert!(m.contains_key(&k), "unknown key {k:?} returned");
        }
    }
    // Every changed or new value finds itself (cosine 1, ties allowed).
    for (k, v) in changes.iter().filter_map(|(k, v)| Some((k, v.as_ref()?))) {
        let top = index.similar(v, 1, None).expect("similar");
        assert!(
            top.first().is_some_and(|h| &h.0 == k || h.1 >= 0.999),
            "{k:?}: {top:?}"
        );
    }
    let r = recall(&index, &qs);
    assert!(r >= 0.9, "recall@10 {r}");
}

#[test]
fn a_damaged_graph_file_is_ignored() {
    let root = tempfile::tempdir().expect("tempdir");
    let pristine = root.path().join("pristine");
    let m = corpus(TEXTS, 4);
    let qs = queries(&m);
    drop(build(&pristine, &m, opts()));
    let graph = graph_file(&pristine);
    let bytes = std::fs::read(&graph).expect("graph");
    // The answers of a graph built from the stored vectors alone.
    std::fs::remove_file(&graph).expect("remove");
    let index = SearchIndex::open(&pristine, opts()).expect("open without a graph file");
    assert_eq!(index.graph_restored(), None);
    let want = similar_all(&index, &qs);
    drop(index);
    let len = bytes.len();
    let mut damages: Vec<(String, Vec<u8>)> = vec![
        ("empty".into(), Vec::new()),
        ("truncated to half".into(), bytes[..len / 2].to_vec()),
        ("last byte gone".into(), bytes[..len - 1].to_vec()),
        ("a byte more".into(), [&bytes[..], &[0]].concat()),
    ];
    for at in [0, 9, 20, len / 3, len / 2, len - 9, len - 1] {
        let mut b = bytes.clone();
        b[at] ^= 0x41;
        damages.push((format!("byte {at} flipped"), b));
    }
    for (what, damaged) in damages {
        let dir = root.path().join("case");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("mkdir");
        for e in std::fs::read_dir(&pristine).expect("read_dir") {
            let p = e.expect("entry").path();
            let to = dir.join(p.file_name().expect("name"));
            if p.is_dir() {
                std::fs::create_dir_all(&to).expect("mkdir");
                for f in std::fs::read_dir(&p).expect("read_dir") {
                    let f = f.expect("entry").path();
                    std::fs::copy(&f, to.join(f.file_name().expect("name"))).expect("copy");
                }
            } else {
                std::fs::copy(&p, &to).expect("copy");
            }
        }
        std::fs::write(dir.join(graph.file_name().expect("name")), &damaged).expect("damage");
        let index = SearchIndex::open(&dir, opts()).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(
            index.graph_restored(),
            None,
            "{what}: a damaged file was used"
        );
        same(&similar_all(&index, &qs), &want, &what);
        drop(index);
        // The graph built instead was saved, and is used next time.
        let index = SearchIndex::open(&dir, opts()).expect("reopen");
        assert!(index.graph_restored().is_some(), "{what}: not saved again");
    }
}

#[test]
fn apply_saves_the_graph_as_it_changes() {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path().join("index");
    let m = corpus(TEXTS, 5);
    let o = SearchOptions {
        graph_save_every: 100,
        ..opts()
    };
    let index = build(&dir, &m, o.clone());
    // What is on disk while the index is open, as a crash would leave it.
    let on_disk = std::fs::read(graph_file(&dir)).expect("saved while applying");
    drop(index);
    std::fs::write(graph_file(&dir), &on_disk).expect("as at the crash");
    let index = SearchIndex::open(&dir, o).expect("reopen");
    let how = index.graph_restored().expect("the file was usable");
    assert_eq!(how.kept + how.inserted, TEXTS, "{how:?}");
    assert_eq!(how.dropped, 0, "{how:?}");
    // Saved at least every quarter of the vectors: little was left over.
    assert!(how.inserted <= TEXTS / 4 + 100, "{how:?}");
}
