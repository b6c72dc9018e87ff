//! Model-based test: random sequences of puts, deletes, batches, gets, scans,
//! snapshots, flushes, compactions and reopens give the same answers as a
//! `BTreeMap`. Options are tiny so that a few kilobytes of writes flush and
//! compact on their own too.
//!
//! `PROPTEST_CASES=n` changes the number of cases (default 64); a failure is
//! shrunk and printed as the list of operations that reproduces it.

mod common;

use std::collections::BTreeMap;
use std::ops::Bound::{self, Excluded, Included, Unbounded};
use std::ops::RangeBounds;
use std::path::Path;

use kv_engine::{Db, WriteBatch};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

type Model = BTreeMap<Vec<u8>, Vec<u8>>;

/// A value described by its length and a tag byte, so failures print short.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Val {
    len: u16,
    tag: u8,
}

impl std::fmt::Debug for Val {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "v{}x{}", self.tag, self.len)
    }
}

impl Val {
    fn bytes(self) -> Vec<u8> {
        (0..self.len)
            .map(|i| self.tag.wrapping_add((i % 251) as u8))
            .collect()
    }
}

#[derive(Debug, Clone)]
enum Op {
    Put(Vec<u8>, Val),
    Delete(Vec<u8>),
    Batch(Vec<(Vec<u8>, Option<Val>)>),
    Get(Vec<u8>),
    /// Bounds are ordered (low <= high) when built.
    Scan(Bound<Vec<u8>>, Bound<Vec<u8>>),
    Snapshot,
    /// Reads snapshot number `.0` (modulo the live ones): a get and a full scan.
    CheckSnapshot(usize, Vec<u8>),
    Flush,
    Compact,
    Reopen,
}

fn key() -> impl Strategy<Value = Vec<u8>> {
    // Short keys over a 4-letter alphabet with the extreme bytes: many
    // prefixes of each other, the empty key, and 0x00/0xff edges.
    prop::collection::vec(prop::sample::select(vec![0u8, b'a', b'b', 0xff]), 0..4)
}

fn val() -> impl Strategy<Value = Val> {
    (
        prop_oneof![3 => 0u16..40, 2 => 40u16..400, 1 => Just(0u16)],
        any::<u8>(),
    )
        .prop_map(|(len, tag)| Val { len, tag })
}

fn bound(k: Vec<u8>, kind: u8) -> Bound<Vec<u8>> {
    match kind {
        0 => Unbounded,
        1 => Included(k),
        _ => Excluded(k),
    }
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        30 => (key(), val()).prop_map(|(k, v)| Op::Put(k, v)),
        10 => key().prop_map(Op::Delete),
        8 => prop::collection::vec((key(), prop::option::weighted(0.7, val())), 0..8).prop_map(Op::Batch),
        15 => key().prop_map(Op::Get),
        10 => (key(), 0u8..3, key(), 0u8..3).prop_map(|(a, ka, b, kb)| {
            let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
            Op::Scan(bound(lo, ka), bound(hi, kb))
        }),
        4 => Just(Op::Snapshot),
        6 => (any::<usize>(), key()).prop_map(|(i, k)| Op::CheckSnapshot(i, k)),
        4 => Just(Op::Flush),
        2 => Just(Op::Compact),
        3 => Just(Op::Reopen),
    ]
}

fn fail(msg: String) -> TestCaseError {
    TestCaseError::fail(msg)
}

fn open(path: &Path) -> Result<Db, TestCaseError> {
    Db::open_with(path, common::tiny_options()).map_err(|e| fail(format!("open: {e}")))
}

fn collect<I>(it: I, what: &str) -> Result<Model, TestCaseError>
where
    I: Iterator<Item = kv_engine::Result<(bytes::Bytes, bytes::Bytes)>>,
{
    let mut out = Model::new();
    let mut prev: Option<Vec<u8>> = None;
    for item in it {
        let (k, v) = item.map_err(|e| fail(format!("{what}: iterator error: {e}")))?;
        prop_assert!(
            prev.as_deref() < Some(k.as_ref()),
            "{}: keys not strictly ascending: {:?} after {:?}",
            what,
            k,
            prev
        );
        prev = Some(k.to_vec());
        out.insert(k.to_vec(), v.to_vec());
        prop_assert!(out.len() <= 100_000, "{}: iterator does not end", what);
    }
    Ok(out)
}

fn model_range(model: &Model, range: &(Bound<Vec<u8>>, Bound<Vec<u8>>)) -> Model {
    model
        .iter()
        .filter(|(k, _)| range.contains(*k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn as_slices(range: &(Bound<Vec<u8>>, Bound<Vec<u8>>)) -> (Bound<&[u8]>, Bound<&[u8]>) {
    (
        range.0.as_ref().map(Vec::as_slice),
        range.1.as_ref().map(Vec::as_slice),
    )
}

fn check_all(db: &Db, model: &Model, when: &str) -> Result<(), TestCaseError> {
    let got = collect(
        db.iter().map_err(|e| fail(format!("iter {when}: {e}")))?,
        when,
    )?;
    prop_assert_eq!(&got, model, "full contents {}", when);
    Ok(())
}

fn run(ops: &[Op]) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().map_err(|e| fail(format!("tempdir: {e}")))?;
    let mut model = Model::new();
    for (epoch, segment) in ops.split(|op| matches!(op, Op::Reopen)).enumerate() {
        let db = open(dir.path())?;
        check_all(&db, &model, &format!("after reopen #{epoch}"))?;
        let mut snaps = Vec::new();
        for (i, op) in segment.iter().enumerate() {
            let at = format!("epoch {epoch} op {i} {op:?}");
            match op {
                Op::Put(k, v) => {
                    db.put(k, v.bytes())
                        .map_err(|e| fail(format!("{at}: {e}")))?;
                    model.insert(k.clone(), v.bytes());
                }
                Op::Delete(k) => {
                    db.delete(k).map_err(|e| fail(format!("{at}: {e}")))?;
                    model.remove(k);
                }
                Op::Batch(entries) => {
                    let mut batch = WriteBatch::new();
                    for (k, v) in entries {
                        match v {
                            Some(v) => {
                                batch.put(k, v.bytes());
                                model.insert(k.clone(), v.bytes());
                            }
                            None => {
                                batch.delete(k);
                                model.remove(k);
                            }
                        }
                    }
                    db.write(batch).map_err(|e| fail(format!("{at}: {e}")))?;
                }
                Op::Get(k) => {
                    let got = db.get(k).map_err(|e| fail(format!("{at}: {e}")))?;
                    prop_assert_eq!(got.as_deref(), model.get(k).map(|v| v.as_slice()), "{}", at);
                }
                Op::Scan(lo, hi) => {
                    let range = (lo.clone(), hi.clone());
                    let it = db
                        .scan(as_slices(&range))
                        .map_err(|e| fail(format!("{at}: {e}")))?;
                    let got = collect(it, &at)?;
                    prop_assert_eq!(got, model_range(&model, &range), "{}", at);
                }
                Op::Snapshot => {
                    if snaps.len() >= 8 {
                        snaps.remove(0);
                    }
                    snaps.push((db.snapshot(), model.clone()));
                }
                Op::CheckSnapshot(sel, k) => {
                    if snaps.is_empty() {
                        continue;
                    }
                    let (snap, frozen) = &snaps[sel % snaps.len()];
                    let got = snap.get(k).map_err(|e| fail(format!("{at}: {e}")))?;
                    prop_assert_eq!(
                        got.as_deref(),
                        frozen.get(k).map(|v| v.as_slice()),
                        "{} get",
                        at
                    );
                    let all = collect(snap.iter().map_err(|e| fail(format!("{at}: {e}")))?, &at)?;
                    prop_assert_eq!(&all, frozen, "{} full scan", at);
                    let range = (Included(k.clone()), Unbounded);
                    let it = snap
                        .scan(as_slices(&range))
                        .map_err(|e| fail(format!("{at}: {e}")))?;
                    prop_assert_eq!(
                        collect(it, &at)?,
                        model_range(frozen, &range),
                        "{} scan from key",
                        at
                    );
                }
                Op::Flush => db.flush().map_err(|e| fail(format!("{at}: {e}")))?,
                Op::Compact => {
                    db.compact().map_err(|e| fail(format!("{at}: {e}")))?;
                    check_all(&db, &model, &at)?;
                }
                Op::Reopen => unreachable!("segments are split at reopens"),
            }
        }
        check_all(&db, &model, &format!("end of epoch {epoch}"))?;
        drop(snaps);
        drop(db);
    }
    Ok(())
}

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(64);
    ProptestConfig {
        cases,
        max_shrink_iters: 2_000,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn engine_matches_btreemap(ops in prop::collection::vec(op(), 1..200)) {
        run(&ops)?;
    }
}

/// The same machinery on a fixed, long sequence that is sure to flush,
/// compact and reopen with snapshots alive, so every run covers those paths
/// whatever proptest happens to draw.
#[test]
fn fixed_long_sequence() {
    let mut ops = Vec::new();
    for round in 0..6u8 {
        for i in 0..120u16 {
            let k = vec![
                b'a' + (i % 7) as u8,
                b'a' + (i % 5) as u8,
                (i % 3) as u8 * 0x7f,
            ];
            ops.push(Op::Put(
                k.clone(),
                Val {
                    len: 50 + i,
                    tag: round,
                },
            ));
            if i % 11 == 0 {
                ops.push(Op::Delete(k));
            }
            if i % 40 == 0 {
                ops.push(Op::Snapshot);
            }
            if i % 17 == 0 {
                ops.push(Op::CheckSnapshot(i as usize, vec![b'a', b'b']));
            }
        }
        ops.push(Op::Scan(Excluded(vec![b'b']), Included(vec![b'e', 0xff])));
        match round % 3 {
            0 => ops.push(Op::Flush),
            1 => ops.push(Op::Compact),
            _ => ops.push(Op::Reopen),
        }
        ops.push(Op::CheckSnapshot(round as usize, vec![b'c']));
    }
    if let Err(e) = run(&ops) {
        panic!("{e}");
    }
}
