//! Tests of the search indexer on a real engine and a real index: what the
//! feed brings is searched as a brute-force model says, start-up opens or
//! rebuilds, snapshot installs and failures rebuild from the engine, `stop`
//! leaves a durable index; the request path through a single-node raft.

use std::collections::{BTreeMap, BTreeSet};

use kv_engine::{Options, SyncMode, WriteBatch};
use kv_raft::StateMachine as _;
use kv_raft::raft::eraftpb::Message;

use kv_net::proto::{self, ErrorCode, Response, SearchResult};

use super::requests::{count, search_error, wait_error};
use super::*;
use crate::KvStateMachine;
use crate::command::{BatchOp, Command, Op};
use crate::service::KvService;
use crate::snapshot::Descriptor;

/// Bound of every wait (indexing in a debug build on a busy machine).
const WAIT: Duration = Duration::from_secs(60);

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn open_store(dir: &Path) -> Arc<Store> {
    let opts = Options {
        sync: SyncMode::Never,
        ..Options::default()
    };
    Arc::new(Store::open(dir, opts).unwrap())
}

/// Writes `pairs` (`None`: delete) to the engine, recording applied index
/// `applied`, as the state machine's batch for an entry does.
fn write_engine(store: &Store, applied: u64, pairs: &[(&str, Option<&str>)]) {
    let mut batch = WriteBatch::new();
    for (k, v) in pairs {
        let key = keys::user_key(k.as_bytes());
        match v {
            Some(v) => batch.put(&key, keys::encode_value(v.as_bytes())),
            None => batch.delete(&key),
        };
    }
    let mut record = [0u8; 16];
    record[..8].copy_from_slice(&applied.to_be_bytes());
    record[8..].copy_from_slice(&1u64.to_be_bytes());
    batch.put(keys::APPLIED, record);
    store.current().db().write(batch).unwrap();
}

fn changes(pairs: &[(&str, Option<&str>)]) -> UserChanges {
    pairs.iter().map(|(k, v)| (b(k), v.map(b))).collect()
}

/// The generation `<dir>/CURRENT` names: a rebuild writes a new one.
fn generation(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("CURRENT")).unwrap()
}

/// An indexer over an empty store in a new temporary directory (kept
/// alive by the returned guard).
fn fresh_indexer() -> (tempfile::TempDir, Arc<Indexer>, IndexFeed) {
    let tmp = tempfile::tempdir().unwrap();
    let store = open_store(&tmp.path().join("kv"));
    let (ix, feed) = Indexer::start(
        tmp.path().join("search"),
        store,
        0,
        SearchOptions::default(),
    )
    .unwrap();
    (tmp, ix, feed)
}

/// Waits until the indexer has published at least `n`; returns what it
/// published.
fn wait_for(ix: &Indexer, n: u64) -> u64 {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(at) = ix.applied_index()
            && at >= n
        {
            return at;
        }
        assert_eq!(ix.failure(), None, "waiting for {n}");
        assert!(
            Instant::now() < deadline,
            "the indexer's applied index {:?} did not reach {n} within {WAIT:?}",
            ix.applied_index()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Stops the indexer (it must finish within [`WAIT`]) and drops it, so that
/// its index directory can be opened again.
fn shut(ix: Arc<Indexer>) {
    ix.stop(WAIT);
    assert_eq!(
        ix.failure().as_deref(),
        Some("the search indexer has stopped")
    );
    // The thread is gone (joined): nothing else holds the index open.
    assert_eq!(Arc::strong_count(&ix.shared), 1);
    let ix = Arc::into_inner(ix).expect("the test holds the only reference");
    drop(ix);
}

/// A search on the open index: `(key, score)`, best first.
fn hits(ix: &Indexer, query: &str, prefix: Option<&[u8]>) -> Vec<(String, f64)> {
    ix.with_index(Instant::now() + WAIT, |s| {
        s.search(query, prefix, MAX_RESULTS)
    })
    .expect("the index is open")
    .expect("the search runs")
    .into_iter()
    .map(|(k, s)| (String::from_utf8(k).unwrap(), s))
    .collect()
}

/// The keys a search finds (checked to be distinct and best first).
fn found(ix: &Indexer, query: &str) -> BTreeSet<String> {
    let h = hits(ix, query, None);
    assert!(
        h.windows(2).all(|w| w[0].1 >= w[1].1),
        "{query:?}: not best first: {h:?}"
    );
    let set: BTreeSet<String> = h.iter().map(|(k, _)| k.clone()).collect();
    assert_eq!(set.len(), h.len(), "{query:?}: a key twice: {h:?}");
    set
}

fn set(keys: &[&str]) -> BTreeSet<String> {
    keys.iter().map(|&k| k.to_owned()).collect()
}

fn words(text: &str) -> BTreeSet<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

/// The keys of `model` whose value (UTF-8) holds every word of `query`.
fn brute_force(model: &BTreeMap<String, Vec<u8>>, query: &str) -> BTreeSet<String> {
    let want = words(query);
    model
        .iter()
        .filter(|(_, v)| std::str::from_utf8(v).is_ok_and(|v| want.is_subset(&words(v))))
        .map(|(k, _)| k.clone())
        .collect()
}

/// xorshift64*: reproducible without a dependency.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let x = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d);
        usize::try_from(x >> 33).unwrap() % n
    }
}

const VOCAB: [&str; 10] = [
    "apple", "Banana", "cherry", "date", "elder", "fig", "grape", "kiwi", "lemon", "mango",
];

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
    let (ix, feed) = Indexer::start(dir, store, 0, SearchOptions::default()).unwrap();
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
    let (ix, feed) =
        Indexer::start(dir.clone(), store.clone(), 0, SearchOptions::default()).unwrap();
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
    let (ix, _feed) = Indexer::start(dir.clone(), store, 3, SearchOptions::default()).unwrap();
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
    let (ix, feed) =
        Indexer::start(dir.clone(), store.clone(), 2, SearchOptions::default()).unwrap();
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
    let (ix, _feed) =
        Indexer::start(dir.clone(), store.clone(), 10, SearchOptions::default()).unwrap();
    assert_eq!(wait_for(&ix, 10), 10);
    assert_ne!(generation(&dir), old_generation, "rebuilt");
    assert_eq!(found(&ix, "old"), set(&[]));
    assert_eq!(found(&ix, "new"), set(&["a", "b"]));
    assert_eq!(found(&ix, "apple"), set(&["a"]));
    shut(ix);

    // An index ahead of the engine (the engine lost its tail) too.
    let (ix, feed) =
        Indexer::start(dir.clone(), store.clone(), 10, SearchOptions::default()).unwrap();
    feed.entry(11, changes(&[("z", Some("ahead zebra"))]));
    assert_eq!(wait_for(&ix, 11), 11);
    shut(ix);
    let ahead = generation(&dir);
    let (ix, _feed) = Indexer::start(dir.clone(), store, 10, SearchOptions::default()).unwrap();
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
    let (ix, feed) =
        Indexer::start(dir.clone(), store.clone(), 5, SearchOptions::default()).unwrap();
    assert_eq!(wait_for(&ix, 5), 5);
    // Entry 6 reaches the index only: its content tells an opened index
    // from one rebuilt from the engine.
    feed.entry(6, changes(&[("b", Some("fed banana"))]));
    assert_eq!(wait_for(&ix, 6), 6);
    shut(ix);
    let before = generation(&dir);

    write_engine(&store, 6, &[("c", Some("engine cherry"))]);
    let (ix, _feed) =
        Indexer::start(dir.clone(), store.clone(), 6, SearchOptions::default()).unwrap();
    assert_eq!(wait_for(&ix, 6), 6);
    assert_eq!(generation(&dir), before, "opened, not rebuilt");
    assert_eq!(found(&ix, "fed"), set(&["b"]));
    assert_eq!(found(&ix, "engine"), set(&["a"]));
    assert_eq!(found(&ix, "cherry"), set(&[]));
    shut(ix);

    // A damaged index is rebuilt from the engine.
    std::fs::write(dir.join("CURRENT"), "garbage").unwrap();
    let (ix, _feed) = Indexer::start(dir.clone(), store, 6, SearchOptions::default()).unwrap();
    assert_eq!(wait_for(&ix, 6), 6);
    assert_eq!(found(&ix, "fed"), set(&[]));
    assert_eq!(found(&ix, "engine"), set(&["a", "c"]));
    shut(ix);
}

fn put_cmd(key: &str, value: &str) -> Vec<u8> {
    Command {
        client_id: 0,
        seq: 0,
        time_ms: 0,
        op: Op::Put {
            key: b(key),
            value: b(value),
        },
    }
    .encode()
}

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
    let (ix, feed) = Indexer::start(
        tmp.path().join("search"),
        store.clone(),
        0,
        SearchOptions::default(),
    )
    .unwrap();
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
    let (ix, feed) =
        Indexer::start(dir.clone(), store.clone(), 0, SearchOptions::default()).unwrap();
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
    let (ix, _feed) = Indexer::start(dir.clone(), store, 50, SearchOptions::default()).unwrap();
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
    let (ix, feed) =
        Indexer::start(dir.clone(), store.clone(), 3, SearchOptions::default()).unwrap();
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
    let (ix, feed) = Indexer::start(dir, store.clone(), 5, SearchOptions::default()).unwrap();
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

#[test]
fn counts_default_and_clamp_to_max_results() {
    assert_eq!(count(0, DEFAULT_LIMIT), DEFAULT_LIMIT);
    assert_eq!(count(0, DEFAULT_TOP_K), DEFAULT_TOP_K);
    assert_eq!(count(7, DEFAULT_LIMIT), 7);
    assert_eq!(count(1000, DEFAULT_LIMIT), 1000);
    assert_eq!(count(1001, DEFAULT_LIMIT), MAX_RESULTS);
    assert_eq!(count(u32::MAX, DEFAULT_TOP_K), MAX_RESULTS);
}

#[test]
fn an_empty_query_is_an_invalid_argument() {
    assert_eq!(
        code(&search_error(&kv_search::Error::EmptyQuery)),
        ErrorCode::INVALID_ARGUMENT
    );
    let (_tmp, ix, feed) = fresh_indexer();
    feed.entry(1, changes(&[("a", Some("some words"))]));
    assert_eq!(wait_for(&ix, 1), 1);
    for q in ["", "   ", "!?, ..."] {
        let e = ix
            .with_index(Instant::now() + WAIT, |s| s.search(q, None, 10))
            .unwrap()
            .unwrap_err();
        assert!(matches!(e, kv_search::Error::EmptyQuery), "{q:?}: {e}");
        assert_eq!(code(&search_error(&e)), ErrorCode::INVALID_ARGUMENT);
        let e = ix
            .with_index(Instant::now() + WAIT, |s| s.similar(q, 10, None))
            .unwrap()
            .unwrap_err();
        assert_eq!(code(&search_error(&e)), ErrorCode::INVALID_ARGUMENT);
    }
    shut(ix);
}

fn error_of(r: &Response) -> Option<&proto::Error> {
    match &r.result {
        Some(proto::response::Result::Error(e)) => Some(e),
        _ => None,
    }
}

fn code(r: &Response) -> ErrorCode {
    error_of(r)
        .expect("an error response")
        .code
        .enum_value_or_default()
}

fn message(r: &Response) -> String {
    error_of(r).expect("an error response").message.clone()
}

struct Nowhere;

impl kv_raft::Transport for Nowhere {
    fn send(&mut self, _msgs: Vec<Message>) {}
}

fn search_cmd(query: &str, limit: u32, serializable: bool) -> proto::request::Cmd {
    let mut s = proto::Search::new();
    query.clone_into(&mut s.query);
    s.limit = limit;
    s.serializable = serializable;
    proto::request::Cmd::Search(s)
}

fn similar_cmd(text: &str, top_k: u32) -> proto::request::Cmd {
    let mut s = proto::Similar::new();
    text.clone_into(&mut s.text);
    s.top_k = top_k;
    proto::request::Cmd::Similar(s)
}

/// The hits of a successful answer.
fn answer(r: Result<Response, Response>) -> SearchResult {
    match r {
        Ok(resp) => match resp.result {
            Some(proto::response::Result::Search(s)) => s,
            other => panic!("not a search result: {other:?}"),
        },
        Err(e) => panic!("refused: {e:?}"),
    }
}

#[test]
fn requests_through_a_single_node() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open_store(&tmp.path().join("kv"));
    let mut sm = KvStateMachine::open(store.clone()).unwrap();
    let (ix, feed) = Indexer::start(
        tmp.path().join("search"),
        store.clone(),
        0,
        SearchOptions::default(),
    )
    .unwrap();
    sm.set_search_feed(feed);
    let opts = kv_raft::Options {
        tick_interval: Duration::from_millis(10),
        sync: false,
        ..kv_raft::Options::default()
    };
    let node = kv_raft::Node::start(1, tmp.path().join("raft"), &[1], opts, sm, Nowhere).unwrap();
    let handle = node.handle();
    let deadline = Instant::now() + WAIT;
    while !matches!(handle.status().wait(), Ok(s) if s.role == kv_raft::Role::Leader) {
        assert!(Instant::now() < deadline, "no leader");
        let _ = handle.campaign().wait();
        std::thread::sleep(Duration::from_millis(20));
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let config = crate::Config::new(1, "127.0.0.1:0", tmp.path());
    let peers = BTreeMap::from([(1, "127.0.0.1:0".to_owned())]);
    let propose = |cmd: Vec<u8>| {
        handle
            .propose(cmd)
            .wait_timeout(WAIT)
            .ok()
            .unwrap()
            .unwrap()
    };
    rt.block_on(async {
        let mut service = KvService::new(
            &config,
            handle.clone(),
            store.clone(),
            peers,
            1,
            crate::Metrics::new(),
        );
        let deadline = || TokioInstant::now() + WAIT;

        // Without --search.
        for cmd in [search_cmd("apple", 0, false), similar_cmd("apple", 0)] {
            let e = service.search_request(cmd, deadline()).await.unwrap_err();
            assert_eq!(code(&e), ErrorCode::UNAVAILABLE);
            assert_eq!(message(&e), NOT_ENABLED);
        }
        service.search = Some(ix.clone());

        // 1,200 matching documents in one entry.
        let ops: Vec<BatchOp> = (0..1200)
            .map(|i| BatchOp::Put {
                key: Bytes::from(format!("doc{i:04}")),
                value: Bytes::from(format!("common word{i}")),
            })
            .collect();
        propose(
            Command {
                client_id: 0,
                seq: 0,
                time_ms: 0,
                op: Op::Batch(ops),
            }
            .encode(),
        );
        // Linearizable: the write acknowledged above is in the answer.
        let all = answer(
            service
                .search_request(search_cmd("common", 5000, false), deadline())
                .await,
        );
        assert_eq!(all.hits.len(), MAX_RESULTS);
        assert!(all.index >= 1, "{}", all.index);
        let default = answer(
            service
                .search_request(search_cmd("common", 0, false), deadline())
                .await,
        );
        assert_eq!(default.hits.len(), DEFAULT_LIMIT);
        let seven = answer(
            service
                .search_request(search_cmd("common", 7, true), deadline())
                .await,
        );
        assert_eq!(seven.hits.len(), 7);
        let one = answer(
            service
                .search_request(search_cmd("word17", 0, false), deadline())
                .await,
        );
        assert_eq!(one.hits.len(), 1);
        assert_eq!(one.hits[0].key, b("doc0017"));
        let near = answer(
            service
                .search_request(similar_cmd("common word17", 0), deadline())
                .await,
        );
        assert_eq!(near.hits.len(), DEFAULT_TOP_K);
        assert_eq!(near.hits[0].key, b("doc0017"), "{:?}", near.hits);
        let many = answer(
            service
                .search_request(similar_cmd("common", 5000), deadline())
                .await,
        );
        assert_eq!(many.hits.len(), MAX_RESULTS);

        // A delete, then at once a linearizable search.
        propose(
            Command {
                client_id: 0,
                seq: 0,
                time_ms: 0,
                op: Op::Delete { key: b("doc0017") },
            }
            .encode(),
        );
        let gone = answer(
            service
                .search_request(search_cmd("word17", 0, false), deadline())
                .await,
        );
        assert!(gone.hits.is_empty(), "{:?}", gone.hits);
        assert!(gone.index > one.index);

        // Queries without a word.
        for cmd in [search_cmd(" ,. ", 0, false), similar_cmd("", 0)] {
            let e = service.search_request(cmd, deadline()).await.unwrap_err();
            assert_eq!(code(&e), ErrorCode::INVALID_ARGUMENT);
        }
        drop(service);
    });
    node.shutdown().unwrap();
    drop(rt);
    shut(ix);
}
