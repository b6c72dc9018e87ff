//! The feed: user changes taken from entries, searched as a brute-force
//! model says, merged, and start-up opening or rebuilding the index.

use super::*;

#[test]
fn user_changes_picks_user_keys_strips_the_tag_and_decodes_values() {
    let mut writes: HashMap<Vec<u8>, Option<Vec<u8>>> = HashMap::new();
    writes.insert(keys::user_key(b"a"), Some(keys::encode_value(b"hello")));
    writes.insert(keys::user_key(b"b"), None);
    writes.insert(keys::user_key(b""), Some(keys::encode_value(b"empty key")));
    writes.insert(keys::user_key(b"h"), Some(keys::encode_value(b"")));
    // Records this build cannot read: another version, unknown flags, too
    // short. Each is a delete.
    writes.insert(keys::user_key(b"v"), Some(vec![2, 0, b'x']));
    writes.insert(keys::user_key(b"f"), Some(vec![1, 0x80, b'x']));
    writes.insert(keys::user_key(b"s"), Some(vec![1]));
    // Metadata is not a user change, even when it looks like a value.
    writes.insert(keys::APPLIED.to_vec(), Some(vec![0; 16]));
    writes.insert(keys::client_max_key(7), Some(keys::encode_value(b"x")));
    writes.insert(keys::dedup_key(7, 1), None);
    writes.insert(keys::advertise_key(1), Some(b"127.0.0.1:1".to_vec()));

    let mut got = user_changes(&writes);
    got.sort();
    let want: UserChanges = vec![
        (b(""), Some(b("empty key"))),
        (b("a"), Some(b("hello"))),
        (b("b"), None),
        (b("f"), None),
        (b("h"), Some(b(""))),
        (b("s"), None),
        (b("v"), None),
    ];
    assert_eq!(got, want);
    assert!(user_changes(&HashMap::new()).is_empty());
}

#[test]
fn entries_fed_in_order_are_searched_as_a_brute_force_model_says() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open_store(&tmp.path().join("kv"));
    let dir = tmp.path().join("search");
    let (ix, feed) = start_indexer(dir, store, 0);
    assert_eq!(wait_for(&ix, 0), 0);

    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let mut model: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut queries: Vec<String> = VOCAB.iter().map(|w| (*w).to_owned()).collect();
    queries.extend(
        [
            "apple banana",
            "CHERRY date",
            "fig grape kiwi",
            "nothinghere",
        ]
        .map(String::from),
    );
    let check = |model: &BTreeMap<String, Vec<u8>>, what: &str| {
        for q in &queries {
            assert_eq!(found(&ix, q), brute_force(model, q), "{what}: {q:?}");
        }
    };
    let mut index = 0;
    for round in 0..2 {
        for _ in 0..120 {
            index += 1;
            let mut entry: Vec<(Bytes, Option<Bytes>)> = Vec::new();
            for _ in 0..=rng.below(3) {
                let key = format!("k{:02}", rng.below(30));
                let value: Option<Vec<u8>> = match rng.below(10) {
                    0 | 1 => None,
                    2 => Some(b"!!! ... ---".to_vec()),
                    3 => Some(vec![0xff, 0xfe, b'a', b'p']),
                    _ => {
                        let n = 1 + rng.below(5);
                        let ws: Vec<&str> = (0..n).map(|_| VOCAB[rng.below(VOCAB.len())]).collect();
                        Some(ws.join(" ").into_bytes())
                    }
                };
                match &value {
                    Some(v) => model.insert(key.clone(), v.clone()),
                    None => model.remove(&key),
                };
                entry.push((Bytes::from(key), value.map(Bytes::from)));
            }
            // Within an entry a key is changed once (the state machine's
            // writes are a map).
            let mut seen = BTreeSet::new();
            entry.reverse();
            entry.retain(|(k, _)| seen.insert(k.clone()));
            feed.entry(index, entry);
        }
        assert_eq!(wait_for(&ix, index), index);
        check(&model, &format!("after round {round}"));
    }
    // A prefix narrows the same answer.
    let with_prefix: BTreeSet<String> = hits(&ix, "apple", Some(b"k1"))
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    let want: BTreeSet<String> = brute_force(&model, "apple")
        .into_iter()
        .filter(|k| k.starts_with("k1"))
        .collect();
    assert_eq!(with_prefix, want);
    shut(ix);
}

#[test]
fn overwrites_and_deletes_are_reflected() {
    let (_tmp, ix, feed) = fresh_indexer();
    feed.entry(
        1,
        changes(&[("a", Some("red apple")), ("b", Some("red berry"))]),
    );
    assert_eq!(wait_for(&ix, 1), 1);
    assert_eq!(found(&ix, "red"), set(&["a", "b"]));
    feed.entry(2, changes(&[("a", Some("green apple"))]));
    feed.entry(3, changes(&[("b", None)]));
    // A delete of a key that was never indexed changes nothing.
    feed.entry(4, changes(&[("never", None)]));
    assert_eq!(wait_for(&ix, 4), 4);
    assert_eq!(found(&ix, "red"), set(&[]));
    assert_eq!(found(&ix, "apple"), set(&["a"]));
    assert_eq!(found(&ix, "green apple"), set(&["a"]));
    assert_eq!(found(&ix, "berry"), set(&[]));
    shut(ix);
}

#[test]
fn consecutive_entries_merge_and_the_last_change_of_a_key_wins() {
    let (_tmp, ix, feed) = fresh_indexer();
    assert_eq!(wait_for(&ix, 0), 0);
    {
        // While the test holds the index, the indexer cannot take the first
        // entry's turn: everything below is queued and handled as one merged
        // update once it lets go.
        let held = ix.shared.index.write();
        feed.entry(
            1,
            changes(&[
                ("a", Some("red apple")),
                ("b", Some("red berry")),
                ("c", Some("red cherry")),
            ]),
        );
        feed.entry(2, changes(&[("a", Some("green apple")), ("b", None)]));
        feed.entry(3, changes(&[("a", None), ("c", Some("blue cherry"))]));
        feed.entry(
            4,
            changes(&[("a", Some("yellow apple")), ("b", Some("red berry"))]),
        );
        feed.entry(5, changes(&[("c", None)]));
        feed.entry(6, changes(&[("d", Some("red dot")), ("b", None)]));
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(ix.applied_index(), Some(0), "nothing applied while held");
        drop(held);
    }
    assert_eq!(wait_for(&ix, 6), 6);
    assert_eq!(found(&ix, "apple"), set(&["a"]));
    assert_eq!(found(&ix, "yellow"), set(&["a"]));
    assert_eq!(found(&ix, "green"), set(&[]));
    assert_eq!(found(&ix, "red"), set(&["d"]));
    assert_eq!(found(&ix, "berry"), set(&[]));
    assert_eq!(found(&ix, "cherry"), set(&[]));

    // The same keys in many entries fed as fast as the feed takes them.
    let mut model: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for i in 7..=400u64 {
        let v = format!(
            "round{} {}",
            i % 7,
            VOCAB[usize::try_from(i).unwrap() % VOCAB.len()]
        );
        let mut entry = vec![(b("hot"), Some(Bytes::from(v.clone())))];
        model.insert("hot".into(), v.into_bytes());
        if i % 3 == 0 {
            entry.push((b("flip"), None));
            model.remove("flip");
        } else {
            entry.push((b("flip"), Some(b("flip kiwi"))));
            model.insert("flip".into(), b"flip kiwi".to_vec());
        }
        feed.entry(i, entry);
    }
    assert_eq!(wait_for(&ix, 400), 400);
    for q in ["round1", "round2", "kiwi", "flip", "mango", "round1 apple"] {
        assert_eq!(found(&ix, q), brute_force(&model, q), "{q:?}");
    }
    assert_eq!(found(&ix, "round1 apple"), set(&["hot"]));
    shut(ix);
}

#[test]
fn an_entry_without_user_changes_still_advances_the_applied_index() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open_store(&tmp.path().join("kv"));
    let dir = tmp.path().join("search");
    let (ix, feed) = start_indexer(dir.clone(), store.clone(), 0);
    feed.entry(1, changes(&[("a", Some("kept apple"))]));
    assert_eq!(wait_for(&ix, 1), 1);
    feed.entry(2, Vec::new());
    assert_eq!(wait_for(&ix, 2), 2);
    // An entry that wrote metadata only.
    let mut meta: HashMap<Vec<u8>, Option<Vec<u8>>> = HashMap::new();
    meta.insert(keys::APPLIED.to_vec(), Some(vec![0; 16]));
    meta.insert(keys::client_max_key(3), Some(vec![0; 16]));
    feed.entry(3, user_changes(&meta));
    assert_eq!(wait_for(&ix, 3), 3);
    // The index itself records it, not only the published value.
    let recorded = ix
        .with_index(Instant::now() + WAIT, SearchIndex::applied_index)
        .unwrap();
    assert_eq!(recorded, 3);
    assert_eq!(found(&ix, "apple"), set(&["a"]));
    shut(ix);

    // It is durable: a start with the engine at 3 opens the index as is.
    let before = generation(&dir);
    write_engine(&store, 3, &[]);
    let (ix, _feed) = start_indexer(dir.clone(), store, 3);
    assert_eq!(wait_for(&ix, 3), 3);
    assert_eq!(generation(&dir), before, "opened, not rebuilt");
    assert_eq!(found(&ix, "apple"), set(&["a"]));
    shut(ix);
}

#[test]
fn start_rebuilds_an_index_that_does_not_match_the_engine() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open_store(&tmp.path().join("kv"));
    let dir = tmp.path().join("search");

    // A missing index is built from the engine.
    write_engine(&store, 2, &[("a", Some("first apple"))]);
    let (ix, feed) = start_indexer(dir.clone(), store.clone(), 2);
    assert_eq!(wait_for(&ix, 2), 2);
    assert_eq!(found(&ix, "first"), set(&["a"]));
    feed.entry(3, changes(&[("a", Some("old apple"))]));
    assert_eq!(wait_for(&ix, 3), 3);
    shut(ix);
    let old_generation = generation(&dir);

    // The engine moved on without the index (its applied index 3 is not
    // the engine's 10): the engine's content replaces the index's.
    write_engine(
        &store,
        10,
        &[
            ("a", Some("new apple")),
            ("b", Some("new banana")),
            ("c", Some("...")),
        ],
    );
    let (ix, _feed) = start_indexer(dir.clone(), store.clone(), 10);
    assert_eq!(wait_for(&ix, 10), 10);
    assert_ne!(generation(&dir), old_generation, "rebuilt");
    assert_eq!(found(&ix, "old"), set(&[]));
    assert_eq!(found(&ix, "new"), set(&["a", "b"]));
    assert_eq!(found(&ix, "apple"), set(&["a"]));
    shut(ix);

    // An index ahead of the engine (the engine lost its tail) too.
    let (ix, feed) = start_indexer(dir.clone(), store.clone(), 10);
    feed.entry(11, changes(&[("z", Some("ahead zebra"))]));
    assert_eq!(wait_for(&ix, 11), 11);
    shut(ix);
    let ahead = generation(&dir);
    let (ix, _feed) = start_indexer(dir.clone(), store, 10);
    assert_eq!(wait_for(&ix, 10), 10);
    assert_eq!(ix.applied_index(), Some(10));
    assert_ne!(generation(&dir), ahead, "rebuilt");
    assert_eq!(found(&ix, "zebra"), set(&[]));
    assert_eq!(found(&ix, "new"), set(&["a", "b"]));
    shut(ix);
}

#[test]
fn start_opens_an_existing_index_that_matches_the_engine() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open_store(&tmp.path().join("kv"));
    let dir = tmp.path().join("search");
    write_engine(&store, 5, &[("a", Some("engine apple"))]);
    let (ix, feed) = start_indexer(dir.clone(), store.clone(), 5);
    assert_eq!(wait_for(&ix, 5), 5);
    // Entry 6 reaches the index only: its content tells an opened index
    // from one rebuilt from the engine.
    feed.entry(6, changes(&[("b", Some("fed banana"))]));
    assert_eq!(wait_for(&ix, 6), 6);
    shut(ix);
    let before = generation(&dir);

    write_engine(&store, 6, &[("c", Some("engine cherry"))]);
    let (ix, _feed) = start_indexer(dir.clone(), store.clone(), 6);
    assert_eq!(wait_for(&ix, 6), 6);
    assert_eq!(generation(&dir), before, "opened, not rebuilt");
    assert_eq!(found(&ix, "fed"), set(&["b"]));
    assert_eq!(found(&ix, "engine"), set(&["a"]));
    assert_eq!(found(&ix, "cherry"), set(&[]));
    shut(ix);

    // A damaged index is rebuilt from the engine.
    std::fs::write(dir.join("CURRENT"), "garbage").unwrap();
    let (ix, _feed) = start_indexer(dir.clone(), store, 6);
    assert_eq!(wait_for(&ix, 6), 6);
    assert_eq!(found(&ix, "fed"), set(&[]));
    assert_eq!(found(&ix, "engine"), set(&["a", "c"]));
    shut(ix);
}
