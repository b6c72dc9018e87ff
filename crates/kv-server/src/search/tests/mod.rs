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

/// `Indexer::start` with the default index options.
fn start_indexer(
    dir: PathBuf,
    store: Arc<Store>,
    engine_applied: u64,
) -> (Arc<Indexer>, IndexFeed) {
    Indexer::start(dir, store, engine_applied, SearchOptions::default()).unwrap()
}

/// An indexer over an empty store in a new temporary directory (kept
/// alive by the returned guard).
fn fresh_indexer() -> (tempfile::TempDir, Arc<Indexer>, IndexFeed) {
    let tmp = tempfile::tempdir().unwrap();
    let store = open_store(&tmp.path().join("kv"));
    let (ix, feed) = start_indexer(tmp.path().join("search"), store, 0);
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

mod feed;
mod lifecycle;
mod requests;
