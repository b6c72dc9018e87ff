//! Tests of the state machine on a real engine.

use super::*;
use kv_engine::{Options, SyncMode};

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn open(dir: &std::path::Path) -> KvStateMachine {
    let opts = Options {
        sync: SyncMode::Never,
        ..Options::default()
    };
    KvStateMachine::open(Arc::new(Store::open(dir, opts).unwrap())).unwrap()
}

fn cmd(client_id: u64, seq: u64, op: Op) -> Vec<u8> {
    cmd_at(client_id, seq, 0, op)
}

fn cmd_at(client_id: u64, seq: u64, time_ms: u64, op: Op) -> Vec<u8> {
    Command {
        client_id,
        seq,
        time_ms,
        op,
    }
    .encode()
}

fn put(k: &str, v: &str) -> Op {
    Op::Put {
        key: b(k),
        value: b(v),
    }
}

fn get(sm: &KvStateMachine, k: &str) -> Option<Bytes> {
    get_user(sm.store().current().db(), k.as_bytes()).unwrap()
}

fn outcome(r: Vec<u8>) -> Outcome {
    Outcome::decode(&r).unwrap()
}

#[test]
fn applies_put_delete_cas_batch() {
    let tmp = tempfile::tempdir().unwrap();
    let mut sm = open(tmp.path());
    assert_eq!(sm.apply(1, 1, &[]).unwrap(), Vec::<u8>::new());
    assert_eq!(
        outcome(sm.apply(2, 1, &cmd(0, 0, put("a", "1"))).unwrap()),
        Outcome::Ok
    );
    assert_eq!(get(&sm, "a"), Some(b("1")));
    let cas = |expected: Option<&str>, new: &str| Op::Cas {
        key: b("a"),
        expected: expected.map(b),
        new: b(new),
    };
    assert_eq!(
        outcome(sm.apply(3, 1, &cmd(0, 0, cas(Some("x"), "2"))).unwrap()),
        Outcome::CompareFailed {
            current: Some(b("1"))
        }
    );
    assert_eq!(
        outcome(sm.apply(4, 1, &cmd(0, 0, cas(None, "2"))).unwrap()),
        Outcome::CompareFailed {
            current: Some(b("1"))
        }
    );
    assert_eq!(
        outcome(sm.apply(5, 1, &cmd(0, 0, cas(Some("1"), "2"))).unwrap()),
        Outcome::Ok
    );
    assert_eq!(get(&sm, "a"), Some(b("2")));
    sm.apply(6, 1, &cmd(0, 0, Op::Delete { key: b("a") }))
        .unwrap();
    assert_eq!(get(&sm, "a"), None);
    assert_eq!(
        outcome(sm.apply(7, 1, &cmd(0, 0, cas(None, "3"))).unwrap()),
        Outcome::Ok
    );
    let batch = Op::Batch(vec![
        BatchOp::Put {
            key: b("x"),
            value: b("1"),
        },
        BatchOp::Delete { key: b("a") },
    ]);
    sm.apply(8, 1, &cmd(0, 0, batch)).unwrap();
    assert_eq!((get(&sm, "x"), get(&sm, "a")), (Some(b("1")), None));
    // Garbage is a deterministic rejection, not a fatal error.
    assert!(matches!(
        outcome(sm.apply(9, 1, b"garbage").unwrap()),
        Outcome::Invalid(_)
    ));
    assert_eq!(sm.applied_index(), 9);
}

#[test]
fn user_keys_cannot_touch_metadata() {
    let tmp = tempfile::tempdir().unwrap();
    let mut sm = open(tmp.path());
    sm.apply(1, 1, &cmd(0, 0, put("mapplied", "x"))).unwrap();
    sm.apply(2, 1, &cmd(0, 0, put("", "empty"))).unwrap();
    let g = sm.store().current();
    assert_eq!(read_applied(g.db()).unwrap(), (2, 1));
    assert_eq!(get(&sm, "mapplied"), Some(b("x")));
}

#[test]
fn duplicates_return_the_first_outcome() {
    let tmp = tempfile::tempdir().unwrap();
    let mut sm = open(tmp.path());
    let cas = cmd(
        7,
        1,
        Op::Cas {
            key: b("k"),
            expected: None,
            new: b("v1"),
        },
    );
    assert_eq!(outcome(sm.apply(1, 1, &cas).unwrap()), Outcome::Ok);
    // The retry would fail its compare if applied again.
    assert_eq!(outcome(sm.apply(2, 1, &cas).unwrap()), Outcome::Ok);
    sm.apply(3, 1, &cmd(7, 2, put("k", "v2"))).unwrap();
    // A duplicate of seq 2 after other writes does not overwrite them.
    sm.apply(4, 1, &cmd(8, 1, put("k", "other"))).unwrap();
    sm.apply(5, 1, &cmd(7, 2, put("k", "v2"))).unwrap();
    assert_eq!(get(&sm, "k"), Some(b("other")));
}

#[test]
fn dedup_window_forgets_old_requests_and_reports_them_stale() {
    let tmp = tempfile::tempdir().unwrap();
    let mut sm = open(tmp.path());
    let mut index = 0;
    for seq in 1..=DEDUP_WINDOW + 10 {
        index += 1;
        sm.apply(index, 1, &cmd(5, seq, put("k", &seq.to_string())))
            .unwrap();
    }
    // Pipelined requests may arrive out of order within the window.
    index += 1;
    assert_eq!(
        outcome(sm.apply(index, 1, &cmd(5, 11, put("z", "1"))).unwrap()),
        Outcome::Ok
    );
    index += 1;
    assert_eq!(
        outcome(sm.apply(index, 1, &cmd(5, 5, put("z", "1"))).unwrap()),
        Outcome::Stale
    );
    // Plain writes leave no outcome records behind, only the session.
    let db = sm.store().current();
    assert_eq!(db.db().prefix(b"mc").unwrap().count(), 0);
    assert_eq!(db.db().prefix(keys::CLIENT_PREFIX).unwrap().count(), 1);
}

#[test]
fn failed_compares_keep_their_outcome_until_the_window_passes() {
    let tmp = tempfile::tempdir().unwrap();
    let mut sm = open(tmp.path());
    sm.apply(1, 1, &cmd(9, 1, put("k", "now"))).unwrap();
    let cas = cmd(
        9,
        2,
        Op::Cas {
            key: b("k"),
            expected: Some(b("before")),
            new: b("x"),
        },
    );
    let failed = Outcome::CompareFailed {
        current: Some(b("now")),
    };
    assert_eq!(outcome(sm.apply(2, 1, &cas).unwrap()), failed);
    sm.apply(3, 1, &cmd(9, 3, put("k", "before"))).unwrap();
    // The retry gets the first outcome even now that the compare would
    // succeed, after a restart too (the cache starts empty).
    drop(sm);
    let mut sm = open(tmp.path());
    assert_eq!(outcome(sm.apply(4, 1, &cas).unwrap()), failed);
    assert_eq!(get(&sm, "k"), Some(b("before")));
    let mut index = 4;
    for seq in 4..=DEDUP_WINDOW + 2 {
        index += 1;
        sm.apply(index, 1, &cmd(9, seq, put("k", "v"))).unwrap();
    }
    let db = sm.store().current();
    assert_eq!(db.db().prefix(b"mc").unwrap().count(), 0);
    drop(db);
    index += 1;
    assert_eq!(outcome(sm.apply(index, 1, &cas).unwrap()), Outcome::Stale);
}

#[test]
fn sessions_of_older_builds_are_read() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let sm = open(tmp.path());
        // What an older build left: a 16-byte client record and an
        // outcome record per write.
        let mut batch = WriteBatch::new();
        let mut record = 3u64.to_be_bytes().to_vec();
        record.extend_from_slice(&0u64.to_be_bytes());
        batch.put(keys::client_max_key(4), &record);
        for seq in [1, 3] {
            batch.put(keys::dedup_key(4, seq), Outcome::Ok.encode());
        }
        sm.store().current().db().write(batch).unwrap();
    }
    let mut sm = open(tmp.path());
    // Seq 3 was applied (its record says so), seq 2 was not.
    assert_eq!(
        outcome(sm.apply(1, 1, &cmd(4, 3, put("a", "3"))).unwrap()),
        Outcome::Ok
    );
    assert_eq!(get(&sm, "a"), None);
    sm.apply(2, 1, &cmd(4, 2, put("a", "2"))).unwrap();
    assert_eq!(get(&sm, "a"), Some(b("2")));
    let mut index = 2;
    for seq in 4..=DEDUP_WINDOW + 3 {
        index += 1;
        sm.apply(index, 1, &cmd(4, seq, put("b", "1"))).unwrap();
    }
    let db = sm.store().current();
    assert_eq!(db.db().prefix(b"mc").unwrap().count(), 0);
}

#[test]
fn a_damaged_session_record_is_corruption() {
    let tmp = tempfile::tempdir().unwrap();
    let mut sm = open(tmp.path());
    let mut batch = WriteBatch::new();
    batch.put(keys::client_max_key(6), [0u8; 20]);
    sm.store().current().db().write(batch).unwrap();
    let err = sm.apply(1, 1, &cmd(6, 1, put("a", "1"))).unwrap_err();
    assert!(err.to_string().contains("client 6"), "{err}");
    assert_eq!(get(&sm, "a"), None);
}

#[test]
fn a_group_applies_in_order_and_sees_its_own_writes() {
    let tmp = tempfile::tempdir().unwrap();
    let mut sm = open(tmp.path());
    let c = |client_id, seq, op| Command {
        client_id,
        seq,
        time_ms: 0,
        op,
    };
    let cas = Op::Cas {
        key: b("a"),
        expected: Some(b("1")),
        new: b("2"),
    };
    let group = Command {
        client_id: 0,
        seq: 0,
        time_ms: 0,
        op: Op::Multi(vec![
            c(1, 1, put("a", "1")),
            c(2, 1, cas.clone()),
            // A retry of the cas in the same entry: same outcome, and
            // not applied twice.
            c(2, 1, cas),
            c(
                3,
                1,
                Op::Cas {
                    key: b("a"),
                    expected: Some(b("1")),
                    new: b("3"),
                },
            ),
        ]),
    };
    let out = outcome(sm.apply(1, 1, &group.encode()).unwrap());
    assert_eq!(
        out,
        Outcome::Multi(vec![
            Outcome::Ok,
            Outcome::Ok,
            Outcome::Ok,
            Outcome::CompareFailed {
                current: Some(b("2"))
            },
        ])
    );
    assert_eq!(get(&sm, "a"), Some(b("2")));
    // A later retry of a grouped command is de-duplicated too.
    let retry = cmd(1, 1, put("a", "again"));
    assert_eq!(outcome(sm.apply(2, 1, &retry).unwrap()), Outcome::Ok);
    assert_eq!(get(&sm, "a"), Some(b("2")));
}

#[test]
fn idle_clients_expire_by_log_time() {
    let tmp = tempfile::tempdir().unwrap();
    let mut sm = open(tmp.path());
    let hour = CLIENT_EXPIRY_MS;
    sm.apply(1, 1, &cmd_at(1, 1, 1000, put("a", "1"))).unwrap();
    sm.apply(2, 1, &cmd_at(2, 1, 1000 + hour, put("b", "1")))
        .unwrap();
    for index in 3..EXPIRY_EVERY {
        sm.apply(index, 1, &[]).unwrap();
    }
    // The pass at EXPIRY_EVERY runs with this command's time.
    let now = 2000 + hour;
    sm.apply(EXPIRY_EVERY, 1, &cmd_at(3, 1, now, put("c", "1")))
        .unwrap();
    let g = sm.store().current();
    let clients: Vec<u64> = g
        .db()
        .prefix(keys::CLIENT_PREFIX)
        .unwrap()
        .map(|kv| keys::be_u64(&kv.unwrap().0[2..]).unwrap())
        .collect();
    assert_eq!(clients, vec![2, 3]);
    assert_eq!(g.db().prefix(keys::dedup_prefix(1)).unwrap().count(), 0);
    assert_eq!(get(&sm, "a"), Some(b("1")));
}

#[test]
fn applied_index_survives_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let mut sm = open(tmp.path());
        for i in 1..=50 {
            sm.apply(i, 2, &cmd(0, 0, put(&format!("k{i}"), "v")))
                .unwrap();
        }
        sm.apply(51, 2, &[]).unwrap();
    }
    let sm = open(tmp.path());
    assert_eq!(sm.applied_index(), 51);
    assert_eq!(get(&sm, "k50"), Some(b("v")));
}

#[test]
fn snapshot_restore_roundtrip() {
    let tmp = tempfile::tempdir().unwrap();
    let mut a = open(&tmp.path().join("a"));
    for i in 1..=20 {
        a.apply(i, 1, &cmd(9, i, put(&format!("k{i:02}"), &i.to_string())))
            .unwrap();
    }
    let snap = a.snapshot().unwrap();
    // The snapshot names a checkpoint, which a transfer copies over.
    let name = Descriptor::decode(&snap).unwrap().name();
    let copy_checkpoint = |to: &KvStateMachine| {
        let dst = to.store().snapshots().path(&name);
        let src = a.store().snapshots().path(&name);
        std::fs::create_dir(&dst).unwrap();
        for entry in std::fs::read_dir(src).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), dst.join(entry.file_name())).unwrap();
        }
    };

    let mut bsm = open(&tmp.path().join("b"));
    bsm.apply(1, 1, &cmd(0, 0, put("stale", "x"))).unwrap();
    // Without its checkpoint the snapshot cannot be installed.
    assert!(bsm.restore(20, 1, &snap).is_err());
    assert_eq!(get(&bsm, "stale"), Some(b("x")));
    copy_checkpoint(&bsm);
    bsm.restore(20, 1, &snap).unwrap();
    assert_eq!(bsm.applied_index(), 20);
    assert_eq!(get(&bsm, "stale"), None);
    assert_eq!(get(&bsm, "k07"), Some(b("7")));
    // The dedup table travelled with it.
    let dup = bsm.apply(21, 1, &cmd(9, 3, put("k03", "again"))).unwrap();
    assert_eq!(outcome(dup), Outcome::Ok);
    assert_eq!(get(&bsm, "k03"), Some(b("3")));
    drop(bsm);
    // After reopening, the restored generation is the one in use and the
    // old one is gone.
    let bsm = open(&tmp.path().join("b"));
    assert_eq!(bsm.applied_index(), 21);
    assert_eq!(get(&bsm, "k07"), Some(b("7")));
    let gens: Vec<_> = std::fs::read_dir(tmp.path().join("b"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("gen-"))
        .collect();
    assert_eq!(gens, vec!["gen-2".to_string()]);

    // A damaged snapshot is refused and the old state stays.
    let mut c = open(&tmp.path().join("c"));
    c.apply(1, 1, &cmd(0, 0, put("keep", "1"))).unwrap();
    copy_checkpoint(&c);
    let mut bad = snap.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 1;
    assert!(c.restore(20, 1, &bad).is_err());
    assert_eq!(get(&c, "keep"), Some(b("1")));
    // So is a checkpoint with a damaged table.
    let dir = c.store().snapshots().path(&name);
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "sst") {
            let mut bytes = std::fs::read(&path).unwrap();
            let n = bytes.len();
            bytes[n - 10] ^= 0xff;
            std::fs::write(&path, bytes).unwrap();
        }
    }
    assert!(c.restore(20, 1, &snap).is_err());
    assert_eq!(get(&c, "keep"), Some(b("1")));
}

#[test]
fn corrupt_current_pointer_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    drop(open(tmp.path()));
    std::fs::write(tmp.path().join("CURRENT"), "nonsense").unwrap();
    let err = Store::open(tmp.path(), Options::default()).unwrap_err();
    assert!(err.to_string().contains("CURRENT"), "{err}");
}
