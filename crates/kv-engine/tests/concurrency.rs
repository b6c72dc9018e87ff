//! Readers and writers on many threads while background flushes and
//! compactions run: every read sees an atomic, consistent state.
//!
//! Each writer owns half of the pairs `pNNNNNa`/`pNNNNNb` and writes them
//! only in batches that give both halves the same value (or delete both) and
//! record in `ctrW` the batch number, the pair and what was done to it. So in
//! any consistent view: the halves of a pair agree, no pair carries a batch
//! number above its writer's counter, and the pair named by the counter shows
//! exactly that batch's effect.

mod common;

use std::collections::BTreeMap;
use std::ops::Bound::{Excluded, Included, Unbounded};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use kv_engine::{Db, Options, SyncMode, WriteBatch};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const WRITERS: u64 = 2;
const READERS: u64 = 4;
const PAIRS: u64 = 400;
const RUN_FOR: Duration = Duration::from_secs(5);
const MAX_BATCHES_PER_WRITER: u64 = 200_000;

fn options() -> Options {
    Options {
        sync: SyncMode::Never,
        memtable_size: 16 << 10,
        target_file_size: 16 << 10,
        block_size: 512,
        l0_compaction_trigger: 2,
        l0_slowdown_trigger: 6,
        l0_stop_trigger: 10,
        level_base_bytes: 64 << 10,
        level_multiplier: 4,
        ..Options::default()
    }
}

fn pair_key(idx: u64, half: u8) -> Vec<u8> {
    format!("p{idx:05}{}", half as char).into_bytes()
}

fn ctr_key(w: u64) -> Vec<u8> {
    format!("ctr{w}").into_bytes()
}

fn pair_value(w: u64, n: u64) -> Vec<u8> {
    let mut v = format!("w{w}:n{n:010}:").into_bytes();
    v.resize(v.len() + 40 + (n % 160) as usize, b'a' + (n % 26) as u8);
    v
}

/// `(writer, batch number)` of a pair value, checking its padding.
fn parse_pair_value(v: &[u8]) -> (u64, u64) {
    let s = std::str::from_utf8(v).unwrap_or_else(|_| panic!("pair value is not UTF-8: {v:?}"));
    let mut parts = s.splitn(3, ':');
    let w: u64 = parts
        .next()
        .and_then(|p| p.strip_prefix('w'))
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("garbled pair value {s:?}"));
    let n: u64 = parts
        .next()
        .and_then(|p| p.strip_prefix('n'))
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("garbled pair value {s:?}"));
    assert_eq!(v, pair_value(w, n).as_slice(), "pair value corrupted");
    (w, n)
}

/// Counter value: `batch number:pair index:P|D`.
fn ctr_value(n: u64, idx: u64, put: bool) -> Vec<u8> {
    format!("{n:010}:{idx}:{}", if put { 'P' } else { 'D' }).into_bytes()
}

fn parse_ctr(v: &[u8]) -> (u64, u64, bool) {
    let s = std::str::from_utf8(v).unwrap_or_else(|_| panic!("counter is not UTF-8: {v:?}"));
    let parts: Vec<&str> = s.split(':').collect();
    match parts.as_slice() {
        [n, idx, kind] => (
            n.parse()
                .unwrap_or_else(|_| panic!("garbled counter {s:?}")),
            idx.parse()
                .unwrap_or_else(|_| panic!("garbled counter {s:?}")),
            *kind == "P",
        ),
        _ => panic!("garbled counter {s:?}"),
    }
}

/// Checks a consistent view given as sorted `(key, value)` pairs covering
/// `[lo, hi)` of the pair keys (and the counters when `full`).
fn check_view(items: &[(Bytes, Bytes)], what: &str, full: bool) {
    for w in items.windows(2) {
        assert!(
            w[0].0 < w[1].0,
            "{what}: keys not strictly ascending: {:?} then {:?}",
            w[0].0,
            w[1].0
        );
    }
    let mut ctrs: BTreeMap<u64, (u64, u64, bool)> = BTreeMap::new();
    let mut pairs: BTreeMap<u64, (Option<Bytes>, Option<Bytes>)> = BTreeMap::new();
    for (k, v) in items {
        let ks = std::str::from_utf8(k).unwrap_or_else(|_| panic!("{what}: strange key {k:?}"));
        if let Some(w) = ks.strip_prefix("ctr") {
            ctrs.insert(w.parse().expect("ctr key"), parse_ctr(v));
        } else if let Some(rest) = ks.strip_prefix('p') {
            let (idx, half) = rest.split_at(5);
            let idx: u64 = idx
                .parse()
                .unwrap_or_else(|_| panic!("{what}: strange key {ks}"));
            let e = pairs.entry(idx).or_default();
            match half {
                "a" => e.0 = Some(v.clone()),
                "b" => e.1 = Some(v.clone()),
                _ => panic!("{what}: strange key {ks}"),
            }
        } else {
            panic!("{what}: key {ks:?} was never written");
        }
    }
    for (idx, (a, b)) in &pairs {
        assert_eq!(a, b, "{what}: halves of pair {idx} disagree (torn batch)");
        if let Some(v) = a {
            let (w, n) = parse_pair_value(v);
            assert_eq!(
                idx % WRITERS,
                w,
                "{what}: pair {idx} written by the wrong writer"
            );
            if full {
                let c = ctrs.get(&w).map(|c| c.0);
                assert!(
                    c.is_some_and(|c| c >= n),
                    "{what}: pair {idx} is from batch {n} of writer {w} but the counter says {c:?}"
                );
            }
        }
    }
    if full {
        for (w, (n, idx, put)) in &ctrs {
            let got = pairs
                .get(idx)
                .and_then(|p| p.0.as_ref())
                .map(|v| parse_pair_value(v));
            let want = put.then_some((*w, *n));
            assert_eq!(
                got,
                want,
                "{what}: counter of writer {w} says batch {n} {} pair {idx}, but the view shows otherwise",
                if *put { "wrote" } else { "deleted" }
            );
        }
    }
}

fn collect<I: Iterator<Item = kv_engine::Result<(Bytes, Bytes)>>>(
    it: I,
    what: &str,
    slow: bool,
) -> Vec<(Bytes, Bytes)> {
    let mut out = Vec::new();
    for (i, item) in it.enumerate() {
        out.push(item.unwrap_or_else(|e| panic!("{what}: iterator error: {e}")));
        if slow && i % 16 == 0 {
            // Give writers and compactions time to change things under the iterator.
            std::thread::yield_now();
        }
        assert!(i < 10 * PAIRS as usize, "{what}: iterator does not end");
    }
    out
}

#[test]
fn readers_and_writers_see_consistent_views() {
    let (mut seed_rng, seed) = common::seeded_rng("readers_and_writers_see_consistent_views");
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Db::open_with(dir.path(), options()).expect("open");
    let stop = AtomicBool::new(false);
    let scans_done = AtomicU64::new(0);
    let snapshot_checks = AtomicU64::new(0);
    let deadline = Instant::now() + RUN_FOR;
    let checkpoint_root = tempfile::tempdir().expect("tempdir");
    let checkpoints = checkpoint_root.path();
    let seeds: Vec<u64> = (0..WRITERS + READERS).map(|_| seed_rng.r#gen()).collect();

    let models: Vec<BTreeMap<u64, Option<Vec<u8>>>> = std::thread::scope(|s| {
        let mut writers = Vec::new();
        for w in 0..WRITERS {
            let (db, stop, seed) = (&db, &stop, seeds[w as usize]);
            writers.push(s.spawn(move || {
                let mut rng = StdRng::seed_from_u64(seed);
                let mut model: BTreeMap<u64, Option<Vec<u8>>> = BTreeMap::new();
                let mut n = 0u64;
                while n < MAX_BATCHES_PER_WRITER
                    && Instant::now() < deadline
                    && !stop.load(Ordering::Relaxed)
                {
                    n += 1;
                    let idx = rng.gen_range(0..PAIRS / WRITERS) * WRITERS + w;
                    let put = rng.gen_bool(0.9);
                    let mut batch = WriteBatch::new();
                    if put {
                        let v = pair_value(w, n);
                        batch.put(pair_key(idx, b'a'), &v);
                        batch.put(pair_key(idx, b'b'), &v);
                        model.insert(idx, Some(v));
                    } else {
                        batch.delete(pair_key(idx, b'a'));
                        batch.delete(pair_key(idx, b'b'));
                        model.insert(idx, None);
                    }
                    batch.put(ctr_key(w), ctr_value(n, idx, put));
                    db.write(batch)
                        .unwrap_or_else(|e| panic!("writer {w} batch {n} (seed {seed}): {e}"));
                }
                eprintln!("writer {w}: {n} batches");
                model
            }));
        }
        for r in 0..READERS {
            let (db, stop, scans_done, snapshot_checks, seed) = (
                &db,
                &stop,
                &scans_done,
                &snapshot_checks,
                seeds[(WRITERS + r) as usize],
            );
            s.spawn(move || {
                let mut rng = StdRng::seed_from_u64(seed);
                let mut last_ctr = vec![0u64; WRITERS as usize];
                let mut rounds = 0u64;
                while !stop.load(Ordering::Relaxed) && rounds < 1_000_000 {
                    rounds += 1;
                    match rng.gen_range(0..4) {
                        0 => {
                            // Counters never go back for one reader.
                            for w in 0..WRITERS {
                                if let Some(v) = db.get(ctr_key(w)).expect("get counter") {
                                    let (n, _, _) = parse_ctr(&v);
                                    assert!(
                                        n >= last_ctr[w as usize],
                                        "reader {r}: counter {w} went back from {} to {n} (seed {seed})",
                                        last_ctr[w as usize]
                                    );
                                    last_ctr[w as usize] = n;
                                }
                            }
                        }
                        1 => {
                            let snap = db.snapshot();
                            let idx = rng.gen_range(0..PAIRS);
                            let a = snap.get(pair_key(idx, b'a')).expect("snapshot get a");
                            std::thread::yield_now();
                            let b = snap.get(pair_key(idx, b'b')).expect("snapshot get b");
                            assert_eq!(a, b, "reader {r}: snapshot shows a torn pair {idx} (seed {seed})");
                        }
                        2 => {
                            let full = rng.gen_bool(0.3);
                            let items = if full {
                                collect(db.iter().expect("iter"), "full iter", true)
                            } else {
                                let lo = rng.gen_range(0..PAIRS);
                                let hi = rng.gen_range(lo..=PAIRS);
                                let (lo, hi) = (pair_key(lo, b'a'), pair_key(hi, b'a'));
                                collect(
                                    db.scan((Included(lo.as_slice()), Excluded(hi.as_slice())))
                                        .expect("scan"),
                                    "range scan",
                                    true,
                                )
                            };
                            check_view(&items, &format!("reader {r} scan (seed {seed})"), full);
                            scans_done.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => {
                            // A snapshot reads the same before and after writers moved on.
                            let snap = db.snapshot();
                            let first = collect(snap.iter().expect("snapshot iter"), "snapshot iter", false);
                            check_view(&first, &format!("reader {r} snapshot (seed {seed})"), true);
                            let wait_until = Instant::now() + Duration::from_millis(50);
                            while Instant::now() < wait_until && !stop.load(Ordering::Relaxed) {
                                std::thread::yield_now();
                            }
                            let lo = pair_key(rng.gen_range(0..PAIRS), b'a');
                            let second = collect(
                                snap.scan((Unbounded, Excluded(lo.as_slice()))).expect("snapshot scan"),
                                "snapshot scan",
                                true,
                            );
                            let want: Vec<(Bytes, Bytes)> =
                                first.iter().filter(|(k, _)| k.as_ref() < lo.as_slice()).cloned().collect();
                            assert!(
                                second == want,
                                "reader {r}: snapshot changed while writers went on (seed {seed})"
                            );
                            for w in 0..WRITERS {
                                let via_get = snap.get(ctr_key(w)).expect("snapshot get");
                                let via_iter = first.iter().find(|(k, _)| k.as_ref() == ctr_key(w)).map(|p| p.1.clone());
                                assert_eq!(via_get, via_iter, "reader {r}: snapshot get and iter disagree (seed {seed})");
                            }
                            snapshot_checks.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            });
        }
        // Manual flushes, compactions and checkpoints race with the background
        // work and the writers; each checkpoint must be a consistent view.
        let maintenance = {
            let (db, stop, checkpoints) = (&db, &stop, &checkpoints);
            s.spawn(move || {
                let mut n = 0u32;
                // At least two rounds (two checkpoints) even on a machine so
                // loaded that the writers finish first; at most twelve.
                while n < 12 && (n < 6 || !stop.load(Ordering::Relaxed)) {
                    let pause_until = Instant::now() + Duration::from_millis(250);
                    while Instant::now() < pause_until && !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    match n % 3 {
                        0 => db
                            .flush()
                            .unwrap_or_else(|e| panic!("manual flush (seed {seed}): {e}")),
                        1 => db
                            .compact()
                            .unwrap_or_else(|e| panic!("manual compact (seed {seed}): {e}")),
                        _ => {
                            let cp = checkpoints.join(format!("cp{n}"));
                            db.checkpoint(&cp)
                                .unwrap_or_else(|e| panic!("checkpoint (seed {seed}): {e}"));
                        }
                    }
                    n += 1;
                }
            })
        };
        let models = writers
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| panic!("writer panicked (seed {seed})"))
            })
            .collect();
        stop.store(true, Ordering::Relaxed);
        maintenance
            .join()
            .unwrap_or_else(|_| panic!("maintenance thread panicked (seed {seed})"));
        models
    });

    let scans = scans_done.load(Ordering::Relaxed);
    let snaps = snapshot_checks.load(Ordering::Relaxed);
    let stats = db.stats();
    eprintln!("{scans} scans and {snaps} snapshot checks; {stats:?}");
    assert!(
        scans >= 20,
        "readers completed only {scans} scans, too few to mean anything"
    );
    assert!(snaps >= 8, "readers completed only {snaps} snapshot checks");
    assert!(
        stats.flushes >= 2,
        "no background flushes ran during the test: {stats:?}"
    );
    assert!(
        stats.compactions >= 1,
        "no background compaction ran during the test: {stats:?}"
    );

    let check_final = |db: &Db, when: &str| {
        for (w, model) in models.iter().enumerate() {
            for (idx, v) in model {
                for half in [b'a', b'b'] {
                    assert_eq!(
                        db.get(pair_key(*idx, half))
                            .expect("get")
                            .map(|b| b.to_vec()),
                        *v,
                        "writer {w} pair {idx}{} {when} (seed {seed})",
                        half as char
                    );
                }
            }
        }
        check_view(
            &collect(db.iter().expect("iter"), "final", false),
            when,
            true,
        );
    };
    check_final(&db, "after the run");
    let mut opened = 0;
    for cp in std::fs::read_dir(checkpoints).expect("read_dir") {
        let cp = cp.expect("entry").path();
        let copy = Db::open_with(&cp, options())
            .unwrap_or_else(|e| panic!("open checkpoint {} (seed {seed}): {e}", cp.display()));
        let items = collect(copy.iter().expect("iter"), "checkpoint", false);
        check_view(
            &items,
            &format!("checkpoint {} (seed {seed})", cp.display()),
            true,
        );
        opened += 1;
    }
    assert!(
        opened >= 2,
        "only {opened} checkpoints were taken during the run"
    );
    drop(db);
    let db = Db::open_with(dir.path(), options()).expect("reopen");
    check_final(&db, "after reopen");
}
