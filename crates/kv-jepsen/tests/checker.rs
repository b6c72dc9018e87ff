//! The linearizability checker against histories whose verdict is known:
//! hand-written good and bad ones (stale read, lost write, a cas that
//! succeeded twice, a read of a value never written, a definite failure
//! whose write is later seen), large random linearizable histories and
//! corrupted copies of them, and a history that only the memo makes
//! tractable.

use std::time::{Duration, Instant};

use bytes::Bytes;
use kv_jepsen::checker::{Linearizability, Options, check};
use kv_jepsen::history::{History, Op, Outcome, Record};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn get(p: u32, t: (u64, u64), key: &str, v: Option<&str>) -> Record {
    Record {
        process: p,
        invoke: t.0,
        complete: t.1,
        op: Op::Get { key: b(key) },
        outcome: Outcome::Read(v.map(b)),
    }
}

fn put(p: u32, t: (u64, u64), key: &str, v: &str, outcome: Outcome) -> Record {
    Record {
        process: p,
        invoke: t.0,
        complete: t.1,
        op: Op::Put {
            key: b(key),
            value: b(v),
        },
        outcome,
    }
}

fn cas(p: u32, t: (u64, u64), key: &str, from: Option<&str>, to: &str, out: Outcome) -> Record {
    Record {
        process: p,
        invoke: t.0,
        complete: t.1,
        op: Op::Cas {
            key: b(key),
            expected: from.map(b),
            new: b(to),
        },
        outcome: out,
    }
}

fn fail() -> Outcome {
    Outcome::Fail {
        error: "unavailable".into(),
    }
}

fn info() -> Outcome {
    Outcome::Info {
        error: "timeout".into(),
    }
}

fn verdict(records: Vec<Record>) -> Linearizability {
    let h = History {
        records,
        events: Vec::new(),
    };
    check(&h, &Options::default())
        .expect("valid history")
        .verdict
}

fn assert_ok(records: Vec<Record>) {
    let v = verdict(records);
    assert_eq!(v, Linearizability::Linearizable, "{v:?}");
}

fn assert_violation(records: Vec<Record>) -> String {
    match verdict(records) {
        Linearizability::Violation(v) => v.to_string(),
        other => panic!("expected a violation, got {other:?}"),
    }
}

#[test]
fn sequential_and_concurrent_good_histories_pass() {
    assert_ok(vec![
        get(0, (0, 1), "x", None),
        put(0, (2, 3), "x", "a", Outcome::Ok),
        get(1, (4, 5), "x", Some("a")),
        cas(1, (6, 7), "x", Some("a"), "b", Outcome::Ok),
        cas(
            0,
            (8, 9),
            "x",
            Some("a"),
            "c",
            Outcome::CasFailed {
                current: Some(b("b")),
            },
        ),
        get(0, (10, 11), "x", Some("b")),
    ]);
    // A read concurrent with a write may see either value.
    for seen in [None, Some("a")] {
        assert_ok(vec![
            put(0, (0, 10), "x", "a", Outcome::Ok),
            get(1, (5, 6), "x", seen),
        ]);
    }
    // Keys are independent registers.
    assert_ok(vec![
        put(0, (0, 1), "x", "a", Outcome::Ok),
        get(1, (2, 3), "y", None),
        get(1, (4, 5), "x", Some("a")),
    ]);
}

#[test]
fn stale_read_is_a_violation() {
    let text = assert_violation(vec![
        put(0, (0, 10), "x", "a", Outcome::Ok),
        put(0, (20, 30), "x", "b", Outcome::Ok),
        get(1, (40, 50), "x", Some("a")),
    ]);
    assert!(text.contains("get x => a"), "{text}");
}

#[test]
fn lost_write_is_a_violation() {
    // An acknowledged write that a later read does not see, with nothing
    // that could have overwritten it.
    assert_violation(vec![
        put(0, (0, 10), "x", "a", Outcome::Ok),
        get(1, (100, 110), "x", None),
    ]);
    assert_violation(vec![
        put(0, (0, 10), "x", "a", Outcome::Ok),
        put(1, (20, 30), "x", "b", Outcome::Ok),
        get(2, (100, 110), "x", Some("a")),
        get(2, (120, 130), "x", Some("b")),
    ]);
}

#[test]
fn cas_that_succeeded_twice_is_a_violation() {
    // Two concurrent cas from the same value cannot both swap.
    assert_violation(vec![
        put(0, (0, 1), "x", "0", Outcome::Ok),
        cas(1, (10, 20), "x", Some("0"), "1", Outcome::Ok),
        cas(2, (10, 20), "x", Some("0"), "2", Outcome::Ok),
    ]);
    // One of them swapping is fine.
    assert_ok(vec![
        put(0, (0, 1), "x", "0", Outcome::Ok),
        cas(1, (10, 20), "x", Some("0"), "1", Outcome::Ok),
        cas(
            2,
            (10, 20),
            "x",
            Some("0"),
            "2",
            Outcome::CasFailed {
                current: Some(b("1")),
            },
        ),
    ]);
    // A failed compare that reports a value the key could not hold then.
    assert_violation(vec![
        put(0, (0, 1), "x", "0", Outcome::Ok),
        cas(
            1,
            (10, 20),
            "x",
            Some("9"),
            "1",
            Outcome::CasFailed {
                current: Some(b("5")),
            },
        ),
    ]);
}

#[test]
fn read_of_a_value_never_written_is_a_violation() {
    let text = assert_violation(vec![
        put(0, (0, 10), "x", "a", Outcome::Ok),
        get(1, (5, 15), "x", Some("zzz")),
    ]);
    assert!(
        text.contains("no write of it may have taken effect"),
        "{text}"
    );
}

#[test]
fn definite_failure_must_not_take_effect_but_unknown_may() {
    let seen_after = |outcome: Outcome| {
        vec![
            put(0, (0, 10), "x", "a", outcome),
            get(1, (20, 30), "x", Some("a")),
        ]
    };
    let text = assert_violation(seen_after(fail()));
    assert!(text.contains("failed definitely"), "{text}");
    assert_ok(seen_after(info()));
    // An unknown outcome may also never take effect...
    assert_ok(vec![
        put(0, (0, 10), "x", "a", info()),
        get(1, (20, 30), "x", None),
    ]);
    // ... or take effect long after it was given up on, after a later
    // acknowledged write.
    assert_ok(vec![
        put(0, (0, 10), "x", "a", info()),
        put(1, (20, 30), "x", "b", Outcome::Ok),
        get(2, (40, 50), "x", Some("b")),
        get(2, (60, 70), "x", Some("a")),
    ]);
    // But not before it was invoked.
    assert_violation(vec![
        get(2, (0, 5), "x", Some("a")),
        put(0, (10, 20), "x", "a", info()),
    ]);
    // An unknown cas takes effect only if its expectation holds.
    assert_violation(vec![
        put(0, (0, 1), "x", "0", Outcome::Ok),
        cas(1, (10, 20), "x", Some("9"), "1", info()),
        get(2, (30, 40), "x", Some("1")),
    ]);
}

#[test]
fn mismatched_outcomes_are_rejected_not_judged() {
    let h = History {
        records: vec![Record {
            process: 0,
            invoke: 0,
            complete: 1,
            op: Op::Get { key: b("x") },
            outcome: Outcome::Ok,
        }],
        events: Vec::new(),
    };
    assert!(check(&h, &Options::default()).is_err());
}

/// A linearizable history: each client runs one operation at a time; every
/// operation takes effect at a random point inside its interval, and its
/// result is what the registers held there. Some writes end with an
/// unknown outcome (taking effect or not) and some with a definite failure.
fn random_history(seed: u64, clients: u32, ops: usize, keys: usize) -> History {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut clock = vec![0u64; clients as usize];
    // (effect time, record index, applied)
    let mut planned = Vec::new();
    let mut records = Vec::new();
    for n in 0..ops {
        let p = rng.gen_range(0..clients);
        let start = clock[p as usize] + rng.gen_range(1..50);
        let end = start + rng.gen_range(1..400);
        clock[p as usize] = end;
        let effect = rng.gen_range(start..=end);
        let key = format!("k{}", rng.gen_range(0..keys));
        let value = Bytes::from(format!("{p}-{n}"));
        let op = match rng.gen_range(0..3) {
            0 => Op::Get { key: b(&key) },
            1 => Op::Put {
                key: b(&key),
                value,
            },
            _ => Op::Cas {
                key: b(&key),
                expected: None,
                new: value,
            },
        };
        let fate = rng.gen_range(0..20);
        planned.push((effect, records.len(), fate));
        records.push(Record {
            process: p,
            invoke: start,
            complete: end,
            op,
            outcome: Outcome::Ok,
        });
    }
    planned.sort_unstable();
    let mut state: std::collections::HashMap<Bytes, Bytes> = Default::default();
    let mut recent: Vec<Bytes> = Vec::new();
    for (_, i, fate) in planned {
        let r = &mut records[i];
        let key = r.op.key().clone();
        let current = state.get(&key).cloned();
        if let Op::Cas { expected, .. } = &mut r.op {
            // Expect a recent value of any key, often the right one.
            *expected = if fate % 2 == 0 {
                current.clone()
            } else {
                recent.last().cloned()
            };
        }
        let (outcome, applied) = match (&r.op, fate) {
            (Op::Get { .. }, _) => (Outcome::Read(current.clone()), None),
            (_, 0) => (fail(), None),
            (Op::Put { value, .. }, 1) => (info(), Some(value.clone())),
            (Op::Put { .. }, 2) | (Op::Cas { .. }, 1) => (info(), None),
            (Op::Put { value, .. }, _) => (Outcome::Ok, Some(value.clone())),
            (Op::Cas { expected, new, .. }, _) if *expected == current => (
                if fate == 2 { info() } else { Outcome::Ok },
                Some(new.clone()),
            ),
            (Op::Cas { .. }, _) => (
                Outcome::CasFailed {
                    current: current.clone(),
                },
                None,
            ),
        };
        if let Some(v) = applied {
            recent.push(v.clone());
            state.insert(key, v);
        }
        r.outcome = outcome;
    }
    History {
        records,
        events: Vec::new(),
    }
}

#[test]
fn large_random_linearizable_histories_pass() {
    for seed in 0..4 {
        let h = random_history(seed, 8, 8_000, 5);
        let started = Instant::now();
        let report = check(&h, &Options::default()).expect("valid");
        assert_eq!(
            report.verdict,
            Linearizability::Linearizable,
            "seed {seed}: {report}"
        );
        assert!(started.elapsed() < Duration::from_secs(30));
    }
}

#[test]
fn large_random_histories_with_one_stale_read_fail() {
    for seed in 10..14 {
        let mut h = random_history(seed, 8, 4_000, 3);
        // Make one late read return a value that was overwritten by an
        // acknowledged write completed before the read began.
        let n = h.records.len();
        let target = (n / 2..n).find_map(|i| {
            let r = &h.records[i];
            let Op::Get { key } = &r.op else { return None };
            let old = h.records.iter().find_map(|w| match (&w.op, &w.outcome) {
                (Op::Put { key: k, value }, Outcome::Ok) if k == key => {
                    let later = h.records.iter().any(|o| {
                        matches!((&o.op, &o.outcome), (Op::Put { key: k2, .. }, Outcome::Ok) if k2 == key)
                            && o.invoke > w.complete
                            && o.complete < r.invoke
                    });
                    later.then(|| value.clone())
                }
                _ => None,
            })?;
            Some((i, old))
        });
        let (i, old) = target.expect("a read to corrupt");
        h.records[i].outcome = Outcome::Read(Some(old));
        let report = check(&h, &Options::default()).expect("valid");
        assert!(
            matches!(report.verdict, Linearizability::Violation(_)),
            "seed {seed}: {report}"
        );
    }
}

/// `n` writes all concurrent with each other, then a read of a value none
/// of them wrote: every order of the writes has to be ruled out.
fn concurrent_writes_then_impossible_read(n: u32) -> History {
    let mut records: Vec<Record> = (0..n)
        .map(|p| put(p, (0, 1000), "x", &format!("w{p}"), Outcome::Ok))
        .collect();
    records.push(get(n, (2000, 2001), "x", Some("never")));
    History {
        records,
        events: Vec::new(),
    }
}

#[test]
fn memo_makes_a_factorial_search_tractable() {
    let h = concurrent_writes_then_impossible_read(14);
    let started = Instant::now();
    let report = check(&h, &Options::default()).expect("valid");
    assert!(
        matches!(report.verdict, Linearizability::Violation(_)),
        "{report}"
    );
    assert!(started.elapsed() < Duration::from_secs(10), "{report}");
    // Without the memo the same search (14! orders) does not finish in a
    // second, and the checker says so instead of hanging.
    let started = Instant::now();
    let report = check(
        &h,
        &Options {
            timeout: Duration::from_secs(1),
            memo: false,
            ..Options::default()
        },
    )
    .expect("valid");
    assert!(
        matches!(report.verdict, Linearizability::Unknown(_)),
        "{report}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn memo_bound_gives_unknown() {
    let h = concurrent_writes_then_impossible_read(14);
    let report = check(
        &h,
        &Options {
            max_memo: 1000,
            ..Options::default()
        },
    )
    .expect("valid");
    assert!(
        matches!(report.verdict, Linearizability::Unknown(_)),
        "{report}"
    );
}

#[test]
fn text_form_checks_the_same() {
    let h = random_history(99, 4, 500, 2);
    let again = History::parse(&h.to_text()).expect("parses");
    assert_eq!(
        check(&again, &Options::default()).expect("valid").verdict,
        Linearizability::Linearizable
    );
}
