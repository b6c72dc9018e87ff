//! A snapshot install, `stop`, waits, failures and rebuilds.

use super::*;

#[test]
fn a_snapshot_install_replaces_the_index_with_the_engine() {
    let tmp = tempfile::tempdir().unwrap();
    // The leader's state at 20, checkpointed as a raft snapshot.
    let mut leader = KvStateMachine::open(open_store(&tmp.path().join("a"))).unwrap();
    for i in 1..=20u64 {
        let word = VOCAB[usize::try_from(i).unwrap() % VOCAB.len()];
        leader
            .apply(i, 1, &put_cmd(&format!("k{i:02}"), &format!("snap {word}")))
            .unwrap();
    }
    let snap = leader.snapshot().unwrap();
    let name = Descriptor::decode(&snap).unwrap().name();

    // A follower with an index of its own content.
    let store = open_store(&tmp.path().join("b"));
    let mut sm = KvStateMachine::open(store.clone()).unwrap();
    let (ix, feed) = start_indexer(tmp.path().join("search"), store.clone(), 0);
    sm.set_search_feed(feed.clone());
    sm.apply(1, 1, &put_cmd("stale", "stale apple")).unwrap();
    sm.apply(2, 1, &put_cmd("k01", "stale banana")).unwrap();
    assert_eq!(wait_for(&ix, 2), 2);
    assert_eq!(found(&ix, "stale"), set(&["k01", "stale"]));

    let (src, dst) = (
        leader.store().snapshots().path(&name),
        store.snapshots().path(&name),
    );
    std::fs::create_dir(&dst).unwrap();
    for entry in std::fs::read_dir(src).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dst.join(entry.file_name())).unwrap();
    }
    sm.restore(20, 1, &snap).unwrap();
    assert_eq!(wait_for(&ix, 20), 20);
    assert_eq!(found(&ix, "stale"), set(&[]));
    let all: BTreeSet<String> = (1..=20).map(|i| format!("k{i:02}")).collect();
    assert_eq!(found(&ix, "snap"), all);
    let apples: BTreeSet<String> = (1..=20usize)
        .filter(|i| VOCAB[i % VOCAB.len()] == "apple")
        .map(|i| format!("k{i:02}"))
        .collect();
    assert_eq!(found(&ix, "apple"), apples);

    // An entry the snapshot already holds is skipped; later ones apply.
    feed.entry(15, changes(&[("ghost", Some("ghost zebra"))]));
    sm.apply(21, 1, &put_cmd("after", "after zebra")).unwrap();
    assert_eq!(wait_for(&ix, 21), 21);
    assert_eq!(found(&ix, "zebra"), set(&["after"]));

    // A rebuild queued by hand reads the engine as it is now.
    write_engine(
        &store,
        22,
        &[("k01", None), ("direct", Some("direct zebra"))],
    );
    feed.rebuild();
    assert_eq!(wait_for(&ix, 22), 22);
    assert_eq!(found(&ix, "zebra"), set(&["after", "direct"]));
    assert!(!found(&ix, "snap").contains("k01"));
    shut(ix);
}

#[test]
fn stop_applies_what_is_queued_and_the_next_start_opens_it() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open_store(&tmp.path().join("kv"));
    let dir = tmp.path().join("search");
    let (ix, feed) = start_indexer(dir.clone(), store.clone(), 0);
    assert_eq!(wait_for(&ix, 0), 0);
    let held = ix.shared.index.write();
    for i in 1..=50u64 {
        feed.entry(
            i,
            vec![(
                Bytes::from(format!("k{i:02}")),
                Some(Bytes::from(format!("durable item{}", i % 5))),
            )],
        );
    }
    std::thread::scope(|s| {
        // `stop` is called with all fifty queued and none applied.
        let stopping = s.spawn(|| ix.stop(WAIT));
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(ix.applied_index(), Some(0));
        drop(held);
        stopping.join().unwrap();
    });
    assert_eq!(ix.applied_index(), Some(50), "the queue was applied");
    let recorded = ix
        .with_index(Instant::now() + WAIT, SearchIndex::applied_index)
        .unwrap();
    assert_eq!(recorded, 50);
    // A stopped indexer refuses to wait.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let waited = rt.block_on(ix.wait_applied(0, TokioInstant::now() + WAIT));
    assert!(matches!(waited, Err(WaitError::Failed(_))), "{waited:?}");
    drop((feed, rt));
    shut(ix);
    let before = generation(&dir);

    write_engine(&store, 50, &[]);
    let (ix, _feed) = start_indexer(dir.clone(), store, 50);
    assert_eq!(wait_for(&ix, 50), 50);
    assert_eq!(generation(&dir), before, "opened, not rebuilt");
    let all: BTreeSet<String> = (1..=50).map(|i| format!("k{i:02}")).collect();
    assert_eq!(found(&ix, "durable"), all);
    let threes: BTreeSet<String> = (1..=50)
        .filter(|i| i % 5 == 3)
        .map(|i| format!("k{i:02}"))
        .collect();
    assert_eq!(found(&ix, "item3"), threes);
    shut(ix);
}

#[test]
fn a_stop_that_times_out_returns_and_the_thread_ends_later() {
    let (_tmp, ix, feed) = fresh_indexer();
    assert_eq!(wait_for(&ix, 0), 0);
    let held = ix.shared.index.write();
    feed.entry(1, changes(&[("a", Some("late apple"))]));
    let started = Instant::now();
    ix.stop(Duration::from_millis(200));
    assert!(started.elapsed() < WAIT);
    assert_eq!(
        ix.failure().as_deref(),
        Some("the search indexer has stopped")
    );
    drop(held);
    // The thread was let go; it applies the entry and ends by itself.
    let deadline = Instant::now() + WAIT;
    while Arc::strong_count(&ix.shared) > 1 {
        assert!(Instant::now() < deadline, "the indexer thread did not end");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(ix.applied_index(), Some(1));
}

#[test]
fn wait_applied_waits_times_out_and_wait_errors_map_to_codes() {
    let (_tmp, ix, feed) = fresh_indexer();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    assert_eq!(
        rt.block_on(ix.wait_applied(0, TokioInstant::now() + WAIT)),
        Ok(0)
    );
    let started = Instant::now();
    let late = rt.block_on(ix.wait_applied(5, TokioInstant::now() + Duration::from_millis(300)));
    assert_eq!(late, Err(WaitError::Timeout));
    assert!(started.elapsed() >= Duration::from_millis(300));
    let waiter = {
        let ix = ix.clone();
        rt.spawn(async move { ix.wait_applied(5, TokioInstant::now() + WAIT).await })
    };
    for i in 1..=5 {
        feed.entry(i, changes(&[("k", Some("wait word"))]));
    }
    assert_eq!(rt.block_on(waiter).unwrap(), Ok(5));

    assert_eq!(code(&wait_error(WaitError::Timeout)), ErrorCode::TIMEOUT);
    let failed = wait_error(WaitError::Failed("broken".into()));
    assert_eq!(code(&failed), ErrorCode::UNAVAILABLE);
    assert!(message(&failed).contains("broken"), "{}", message(&failed));
    drop(rt);
    shut(ix);
}

#[test]
fn an_index_that_cannot_be_opened_refuses_searches_until_a_retried_rebuild_succeeds() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open_store(&tmp.path().join("kv"));
    write_engine(&store, 3, &[("a", Some("engine apple"))]);
    // A file where the index directory should be: it can be neither opened
    // nor rebuilt.
    let dir = tmp.path().join("search");
    std::fs::write(&dir, "in the way").unwrap();
    let (ix, feed) = start_indexer(dir.clone(), store.clone(), 3);
    let deadline = Instant::now() + WAIT;
    while ix.failure().is_none() {
        assert!(Instant::now() < deadline, "the failure was not reported");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(ix.applied_index(), None);
    assert!(matches!(
        ix.with_index(Instant::now() + WAIT, |_| ()),
        Err(WaitError::Failed(_))
    ));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let waited = rt.block_on(ix.wait_applied(0, TokioInstant::now() + WAIT));
    assert!(matches!(waited, Err(WaitError::Failed(_))), "{waited:?}");

    // Once the obstacle is gone, the next entry brings a retried rebuild,
    // from the engine (which holds that entry too).
    std::fs::remove_file(&dir).unwrap();
    write_engine(&store, 4, &[("b", Some("engine banana"))]);
    feed.entry(4, changes(&[("b", Some("engine banana"))]));
    let deadline = Instant::now() + WAIT;
    while ix.applied_index() != Some(4) {
        assert!(
            Instant::now() < deadline,
            "not rebuilt: {:?}, {:?}",
            ix.applied_index(),
            ix.failure()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(ix.failure(), None);
    assert_eq!(found(&ix, "engine"), set(&["a", "b"]));
    shut(ix);
}

#[test]
fn a_rebuild_leaves_out_value_records_it_cannot_read_as_an_update_does() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open_store(&tmp.path().join("kv"));
    write_engine(&store, 5, &[("a", Some("readable apple"))]);
    // A value record of a later format (unknown flags), as a snapshot from
    // a newer node could hold.
    let mut batch = WriteBatch::new();
    batch.put(keys::user_key(b"future"), [1, 0x80, b'a', b'p', b'p']);
    store.current().db().write(batch).unwrap();
    let dir = tmp.path().join("search");
    let (ix, feed) = start_indexer(dir, store.clone(), 5);
    assert_eq!(wait_for(&ix, 5), 5);
    assert_eq!(found(&ix, "apple"), set(&["a"]));
    // A snapshot-install rebuild as well.
    feed.rebuild();
    write_engine(&store, 6, &[("b", Some("readable banana"))]);
    feed.entry(6, changes(&[("b", Some("readable banana"))]));
    assert_eq!(wait_for(&ix, 6), 6);
    assert_eq!(found(&ix, "readable"), set(&["a", "b"]));
    shut(ix);
}
