//! Persistence, rebuilds and damage: reopen keeps everything; a deleted,
//! corrupted or truncated index is reported as needing a rebuild (never a
//! panic) and `open_or_rebuild` restores it from the store.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::path::{Path, PathBuf};

use kv_search::{Change, Error, Opened, SearchIndex, SearchOptions};

type Items = Vec<Result<(Vec<u8>, Vec<u8>), Infallible>>;

fn store() -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut c = kv_search::corpus::Corpus::new(300, 7);
    (0..400)
        .map(|i| {
            (
                format!("k{i:04}").into_bytes(),
                c.sentence(3, 10).into_bytes(),
            )
        })
        .collect()
}

fn items(m: &BTreeMap<Vec<u8>, Vec<u8>>) -> Items {
    m.iter().map(|(k, v)| Ok((k.clone(), v.clone()))).collect()
}

fn opts() -> SearchOptions {
    SearchOptions {
        ann_threshold: 100,
        ..SearchOptions::default()
    }
}

/// Builds the index by `apply` in batches of 50 (one log index each).
fn build(dir: &Path, m: &BTreeMap<Vec<u8>, Vec<u8>>) -> SearchIndex {
    let (index, how) =
        SearchIndex::open_or_rebuild(dir, opts(), || (0, Items::new())).expect("create");
    assert!(matches!(how, Opened::Rebuilt { .. }));
    let all: Vec<_> = m.iter().collect();
    for (i, chunk) in all.chunks(50).enumerate() {
        let changes: Vec<Change<'_>> = chunk
            .iter()
            .map(|(k, v)| Change::Put { key: k, value: v })
            .collect();
        assert!(index.apply(i as u64 + 1, &changes).expect("apply"));
    }
    index
}

type Answers = Vec<(Vec<(Vec<u8>, f64)>, Vec<(Vec<u8>, f32)>)>;

fn answers(index: &SearchIndex, m: &BTreeMap<Vec<u8>, Vec<u8>>) -> kv_search::Result<Answers> {
    let mut out = Vec::new();
    for v in m.values().take(10) {
        let t = std::str::from_utf8(v).expect("utf8");
        let two: String = t.split(' ').take(2).collect::<Vec<_>>().join(" ");
        out.push((index.search(&two, None, 10)?, index.similar(t, 5, None)?));
    }
    Ok(out)
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).expect("read_dir") {
        let p = e.expect("entry").path();
        if p.is_dir() {
            out.extend(files(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read_dir") {
        let p = e.expect("entry").path();
        let dst = to.join(p.file_name().expect("name"));
        if p.is_dir() {
            copy_dir(&p, &dst);
        } else {
            std::fs::copy(&p, &dst).expect("copy");
        }
    }
}

#[test]
fn reopen_keeps_index_and_applied() {
    let dir = tempfile::tempdir().expect("tempdir");
    let m = store();
    let index = build(dir.path(), &m);
    let before = answers(&index, &m).expect("answers");
    assert_eq!(index.applied_index(), 8);
    assert!(index.stats().approximate);
    drop(index);
    let index = SearchIndex::open(dir.path(), opts()).expect("reopen");
    assert_eq!(index.applied_index(), 8);
    assert_eq!(answers(&index, &m).expect("answers"), before);
    // Replays of applied entries change nothing.
    assert!(
        !index
            .apply(8, &[Change::Delete { key: b"k0000" }])
            .expect("replay")
    );
    assert!(
        !index
            .apply(3, &[Change::Delete { key: b"k0000" }])
            .expect("replay")
    );
    assert_eq!(answers(&index, &m).expect("answers"), before);
}

#[test]
fn rebuild_equals_incremental_build() {
    let dir = tempfile::tempdir().expect("tempdir");
    let m = store();
    let index = build(dir.path(), &m);
    let want = answers(&index, &m).expect("answers");
    drop(index);
    let dir2 = tempfile::tempdir().expect("tempdir");
    let rebuilt = SearchIndex::rebuild(dir2.path(), opts(), items(&m), 8).expect("rebuild");
    assert_eq!(rebuilt.applied_index(), 8);
    assert_eq!(answers(&rebuilt, &m).expect("answers"), want);
}

#[test]
fn missing_index_is_rebuilt() {
    let dir = tempfile::tempdir().expect("tempdir");
    let m = store();
    let want = answers(&build(dir.path(), &m), &m).expect("answers");
    std::fs::remove_dir_all(dir.path()).expect("rm");
    let err = SearchIndex::open(dir.path(), opts()).expect_err("gone");
    assert!(err.needs_rebuild(), "{err}");
    let (index, how) =
        SearchIndex::open_or_rebuild(dir.path(), opts(), || (8, items(&m))).expect("rebuild");
    assert!(matches!(how, Opened::Rebuilt { .. }), "{how:?}");
    assert_eq!(index.applied_index(), 8);
    assert_eq!(answers(&index, &m).expect("answers"), want);
    drop(index);
    let (_, how) = SearchIndex::open_or_rebuild(dir.path(), opts(), || -> (u64, Items) {
        panic!("a sound index is not rebuilt")
    })
    .expect("open");
    assert_eq!(how, Opened::Existing);
}

#[test]
fn another_embedder_needs_rebuild() {
    let dir = tempfile::tempdir().expect("tempdir");
    drop(build(dir.path(), &store()));
    let other = SearchOptions {
        embedder: std::sync::Arc::new(kv_search::NgramEmbedder::new(64)),
        ..opts()
    };
    let err = SearchIndex::open(dir.path(), other).expect_err("other embedder");
    assert!(matches!(err, Error::NeedsRebuild { .. }), "{err}");
}

#[test]
fn rebuild_after_snapshot_install_replaces_content() {
    let dir = tempfile::tempdir().expect("tempdir");
    let m = store();
    let mut index = build(dir.path(), &m);
    let mut snap = BTreeMap::new();
    snap.insert(b"x".to_vec(), b"zebra crossing".to_vec());
    index.rebuild_from(items(&snap), 1000).expect("rebuild");
    assert_eq!(index.applied_index(), 1000);
    assert_eq!(index.stats().documents, 1);
    let first = String::from_utf8(m.values().next().expect("one").clone()).expect("utf8");
    assert!(index.search(&first, None, 10).expect("search").is_empty());
    assert_eq!(index.search("ZEBRA", None, 10).expect("search").len(), 1);
    drop(index);
    let index = SearchIndex::open(dir.path(), opts()).expect("reopen");
    assert_eq!(index.applied_index(), 1000);
    let gens: Vec<_> = std::fs::read_dir(dir.path())
        .expect("ls")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("gen-"))
        .collect();
    assert_eq!(gens.len(), 1, "old generation removed: {gens:?}");
}

/// Each file of the index, damaged in turn (bytes overwritten in the middle,
/// or truncated to half): opening must not panic; either the damage is
/// reported as needing a rebuild, or everything the index answers is right.
#[test]
fn damaged_files_are_detected_and_rebuilt() {
    let root = tempfile::tempdir().expect("tempdir");
    let pristine = root.path().join("pristine");
    let m = store();
    let index = build(&pristine, &m);
    index.flush().expect("flush");
    let want = answers(&index, &m).expect("answers");
    drop(index);
    let mut detected = 0;
    for (n, file) in files(&pristine).into_iter().enumerate() {
        let rel = file.strip_prefix(&pristine).expect("under").to_path_buf();
        if rel.ends_with("LOCK") {
            continue;
        }
        for truncate in [false, true] {
            let dir = root.path().join(format!("case-{n}-{truncate}"));
            copy_dir(&pristine, &dir);
            let target = dir.join(&rel);
            let mut bytes = std::fs::read(&target).expect("read");
            if bytes.is_empty() {
                continue;
            }
            if truncate {
                bytes.truncate(bytes.len() / 2);
            } else {
                let mid = bytes.len() / 2;
                let end = (mid + 64).min(bytes.len());
                bytes[mid..end].iter_mut().for_each(|b| *b ^= 0x5a);
            }
            std::fs::write(&target, &bytes).expect("write");
            let outcome = std::panic::catch_unwind(|| {
                let opened = SearchIndex::open(&dir, opts());
                match opened {
                    Err(e) => {
                        assert!(e.needs_rebuild(), "{rel:?}: unexpected error {e}");
                        true
                    }
                    Ok(index) => match answers(&index, &m) {
                        Err(e) => {
                            assert!(e.needs_rebuild(), "{rel:?}: unexpected error {e}");
                            true
                        }
                        Ok(got) => {
                            assert_eq!(got, want, "{rel:?} damaged yet answers differ");
                            false
                        }
                    },
                }
            });
            let was_detected = outcome.unwrap_or_else(|_| panic!("panic on damaged {rel:?}"));
            if was_detected {
                detected += 1;
                let (index, how) =
                    SearchIndex::open_or_rebuild(&dir, opts(), || (8, items(&m))).expect("rebuild");
                assert!(matches!(how, Opened::Rebuilt { .. }));
                assert_eq!(answers(&index, &m).expect("answers"), want);
            }
            std::fs::remove_dir_all(&dir).expect("rm");
        }
    }
    assert!(detected > 0, "no damage was detected at all");
}

#[test]
fn damaged_current_needs_rebuild() {
    let dir = tempfile::tempdir().expect("tempdir");
    drop(build(dir.path(), &store()));
    std::fs::write(dir.path().join("CURRENT"), b"gen-\xff\n").expect("write");
    let err = SearchIndex::open(dir.path(), opts()).expect_err("damaged");
    assert!(err.needs_rebuild(), "{err}");
}
