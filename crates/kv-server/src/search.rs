//! Search over values (`kvd --search`, SPEC section 11): a [`kv_search`]
//! index of the user values, kept on every node as derived state in
//! `<data-dir>/search`, and the `Search` / `Similar` requests.
//!
//! Indexing costs far more than the engine write it follows (see the
//! kv-search README), so it runs on a thread of its own, behind the applied
//! index: after its engine write, the state machine hands each entry's user
//! changes (or, for an entry without any, its index alone) to an
//! [`IndexFeed`], a bounded channel ([`FEED_CAPACITY`] entries; when it is
//! full the state machine waits, which is the backpressure). The
//! [`Indexer`] thread applies what it finds queued as one
//! [`SearchIndex::apply`] (consecutive entries merge: a key's last change
//! wins), and publishes the index's applied index.
//!
//! - Start: the index is opened (rebuilt when missing or damaged); when its
//!   applied index is not the engine's as the state machine opened it (the
//!   entries the feed will bring start right after that), it is rebuilt from
//!   the engine.
//! - A snapshot install ([`KvStateMachine::restore`]) queues a rebuild, in
//!   order with the feed. A rebuild reads one engine snapshot: its user
//!   pairs at the applied index recorded in it; queued entries up to that
//!   index are skipped.
//! - A failed index update rebuilds the index from the engine; while that
//!   fails too, searches are refused (UNAVAILABLE) and rebuilds retried.
//! - A search is linearizable unless serializable: a raft read index, a
//!   wait until the index has applied it (bounded by the request's
//!   deadline: TIMEOUT), then the query. A rebuild holds searches off until
//!   it is done (they wait within their deadline).
//!
//! [`KvStateMachine::restore`]: crate::KvStateMachine

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender};
use std::time::{Duration, Instant};

use bytes::Bytes;
use kv_search::{Change, SearchIndex, SearchOptions};

use crate::config::SearchEmbedder;
use parking_lot::{Mutex, RwLock};
use tokio::sync::watch;
use tokio::time::Instant as TokioInstant;

use crate::keys;
use crate::store::Store;

/// Entries queued between the state machine and the indexer.
pub const FEED_CAPACITY: usize = 4096;

/// Most changes merged into one index update.
const MAX_MERGED_CHANGES: usize = 4096;

/// Keys a search answers when the request names no limit.
pub const DEFAULT_LIMIT: usize = 100;

/// Neighbours a similar answers when the request names no `top_k`.
pub const DEFAULT_TOP_K: usize = 10;

/// Most keys in one answer.
pub const MAX_RESULTS: usize = 1000;

/// Bytes of keys in one answer (well within a frame).
const MAX_RESULT_BYTES: usize = 4 << 20;

/// A failed index is rebuilt again at most this often.
const RETRY_REBUILD_EVERY: Duration = Duration::from_secs(10);

/// The message of a node without `--search`.
pub const NOT_ENABLED: &str = "search is not enabled on this node (kvd --search)";

/// The user changes of one entry: user key, new value (`None`: deleted).
pub type UserChanges = Vec<(Bytes, Option<Bytes>)>;

enum Msg {
    /// The changes of applied entry `index` (none: it wrote no user key).
    Entry { index: u64, changes: UserChanges },
    /// A snapshot was installed: rebuild from the engine.
    Rebuild,
}

/// The state machine's end of the indexer's queue.
#[derive(Clone)]
pub struct IndexFeed {
    tx: SyncSender<Msg>,
    gone: Arc<AtomicBool>,
}

impl std::fmt::Debug for IndexFeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IndexFeed").finish_non_exhaustive()
    }
}

impl IndexFeed {
    /// Queues the user changes of applied entry `index`; waits while the
    /// queue is full.
    pub fn entry(&self, index: u64, changes: UserChanges) {
        self.send(Msg::Entry { index, changes });
    }

    /// Queues a rebuild from the engine (after a snapshot install).
    pub fn rebuild(&self) {
        self.send(Msg::Rebuild);
    }

    fn send(&self, msg: Msg) {
        if self.tx.send(msg).is_err() && !self.gone.swap(true, Ordering::Relaxed) {
            tracing::error!("the search indexer has stopped; the search index no longer follows");
        }
    }
}

/// The user changes among an entry's engine writes (`u` keys; values are
/// the user's bytes). A value record this build cannot read counts as a
/// delete: such a value is not indexed.
#[must_use]
pub fn user_changes(writes: &HashMap<Vec<u8>, Option<Vec<u8>>>) -> UserChanges {
    writes
        .iter()
        .filter(|(k, _)| k.first() == Some(&keys::USER))
        .map(|(k, v)| {
            let key = Bytes::copy_from_slice(k.get(1..).unwrap_or_default());
            let value = v
                .as_ref()
                .and_then(|rec| keys::decode_value(&Bytes::copy_from_slice(rec)).ok());
            (key, value)
        })
        .collect()
}

struct Shared {
    index: RwLock<Option<SearchIndex>>,
    /// The index's applied index, published after each update (`None`
    /// until it is open).
    applied: watch::Sender<Option<u64>>,
    /// Why the index cannot be used (`None`: it can, once opened).
    failed: Mutex<Option<String>>,
    stop: AtomicBool,
}

/// The search index of a node and the thread that keeps it up to date.
pub struct Indexer {
    shared: Arc<Shared>,
    dir: PathBuf,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl std::fmt::Debug for Indexer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Indexer")
            .field("dir", &self.dir)
            .field("applied", &*self.shared.applied.borrow())
            .finish_non_exhaustive()
    }
}

/// Why a search cannot be answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WaitError {
    /// The deadline passed first.
    Timeout,
    /// The index failed (or its thread ended).
    Failed(String),
}

impl Indexer {
    /// Starts the indexer of `store` with its index in `dir`; the state
    /// machine opened the engine at `engine_applied` and feeds the entries
    /// after it through the returned [`IndexFeed`].
    ///
    /// `opts` (see [`index_options`]) are the index's; an index built with
    /// another embedder is rebuilt.
    ///
    /// # Errors
    ///
    /// When the thread cannot be started.
    pub fn start(
        dir: PathBuf,
        store: Arc<Store>,
        engine_applied: u64,
        opts: SearchOptions,
    ) -> std::io::Result<(Arc<Indexer>, IndexFeed)> {
        let (tx, rx) = mpsc::sync_channel(FEED_CAPACITY);
        let shared = Arc::new(Shared {
            index: RwLock::new(None),
            applied: watch::Sender::new(None),
            failed: Mutex::new(None),
            stop: AtomicBool::new(false),
        });
        let worker = Worker {
            shared: shared.clone(),
            store,
            dir: dir.clone(),
            opts,
            last_rebuild: None,
            broken: false,
        };
        let thread = std::thread::Builder::new()
            .name("search-indexer".into())
            .spawn(move || worker.run(&rx, engine_applied))?;
        let feed = IndexFeed {
            tx,
            gone: Arc::new(AtomicBool::new(false)),
        };
        let indexer = Arc::new(Indexer {
            shared,
            dir,
            thread: Mutex::new(Some(thread)),
        });
        Ok((indexer, feed))
    }

    /// The index directory.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The applied index the index reflects (`None` until it is open).
    #[must_use]
    pub fn applied_index(&self) -> Option<u64> {
        *self.shared.applied.borrow()
    }

    fn failure(&self) -> Option<String> {
        if let Some(why) = self.shared.failed.lock().clone() {
            return Some(why);
        }
        let ended = self
            .thread
            .lock()
            .as_ref()
            .is_none_or(std::thread::JoinHandle::is_finished);
        ended.then(|| "the search indexer has stopped".to_owned())
    }

    /// Waits until the index reflects at least `index`, or `deadline`.
    ///
    /// # Errors
    ///
    /// [`WaitError`].
    pub async fn wait_applied(&self, index: u64, deadline: TokioInstant) -> Result<u64, WaitError> {
        let mut rx = self.shared.applied.subscribe();
        loop {
            if let Some(why) = self.failure() {
                return Err(WaitError::Failed(why));
            }
            if let Some(at) = *rx.borrow_and_update()
                && at >= index
            {
                return Ok(at);
            }
            // Woken by a new applied index, and now and then to notice a
            // failure.
            let tick = (TokioInstant::now() + Duration::from_millis(200)).min(deadline);
            if tokio::time::timeout_at(tick, rx.changed()).await.is_err() && tick >= deadline {
                return Err(WaitError::Timeout);
            }
        }
    }

    /// Runs `f` on the open index, waiting for it (a rebuild holds it)
    /// until `deadline`.
    fn with_index<T>(
        &self,
        deadline: Instant,
        f: impl FnOnce(&SearchIndex) -> T,
    ) -> Result<T, WaitError> {
        let left = deadline.saturating_duration_since(Instant::now());
        let guard = self
            .shared
            .index
            .try_read_for(left)
            .ok_or(WaitError::Timeout)?;
        match guard.as_ref() {
            Some(index) => Ok(f(index)),
            None => {
                Err(WaitError::Failed(self.failure().unwrap_or_else(|| {
                    "the search index is not open yet".into()
                })))
            }
        }
    }

    /// Stops the thread once it has applied what is queued (waiting at most
    /// `within`) and makes the index durable.
    pub fn stop(&self, within: Duration) {
        self.shared.stop.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + within;
        let thread = self.thread.lock().take();
        if let Some(t) = thread {
            while !t.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if t.is_finished() {
                if t.join().is_err() {
                    tracing::error!("the search indexer panicked");
                }
            } else {
                tracing::warn!(
                    ?within,
                    "the search indexer did not finish in time; the index is rebuilt at the next start"
                );
                return;
            }
        }
        if let Some(index) = self.shared.index.read().as_ref() {
            if let Err(e) = index.flush() {
                tracing::warn!(error = %e, "flushing the search index failed");
            }
            // The similarity graph too, so that the next start loads it.
            if let Err(e) = index.save_graph() {
                tracing::warn!(error = %e, "saving the similarity graph failed; it is rebuilt at the next start");
            }
        }
    }
}

impl Drop for Indexer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
    }
}

/// The engine's user pairs and applied index, from one engine snapshot.
type Source = (
    u64,
    Box<dyn Iterator<Item = Result<(Bytes, Bytes), String>> + Send>,
);

fn engine_source(store: &Store) -> Result<Source, String> {
    let generation = store.current();
    let snap = generation.db().snapshot();
    let applied = match snap.get(keys::APPLIED).map_err(|e| e.to_string())? {
        None => 0,
        Some(v) => keys::be_u64(&v).ok_or("malformed applied-index record in the engine")?,
    };
    let (lower, upper) = (keys::user_key(b""), keys::user_end());
    let iter = snap
        .scan(lower.as_slice()..upper.as_slice())
        .map_err(|e| e.to_string())?;
    // The generation stays alive while its pairs are read.
    let items = iter.filter_map(move |item| {
        let _keep = &generation;
        let (k, rec) = match item {
            Ok(pair) => pair,
            Err(e) => return Some(Err(e.to_string())),
        };
        // As in `user_changes`: a value record this build cannot read is
        // not indexed (rather than failing the whole rebuild).
        let value = keys::decode_value(&rec).ok()?;
        Some(Ok((keys::strip_user(&k), value)))
    });
    Ok((applied, Box::new(items)))
}

/// The options of a node's index with `embedder` (`kvd --search-embedder`).
///
/// # Errors
///
/// When the model cannot be loaded, or this build lacks it (the `minilm`
/// feature).
pub fn index_options(embedder: SearchEmbedder) -> Result<SearchOptions, String> {
    let embedder: Arc<dyn kv_search::Embedder> = match embedder {
        SearchEmbedder::Ngram => Arc::new(kv_search::NgramEmbedder::default()),
        #[cfg(feature = "minilm")]
        SearchEmbedder::MiniLm => {
            Arc::new(kv_search::MiniLmEmbedder::new().map_err(|e| e.to_string())?)
        }
        #[cfg(not(feature = "minilm"))]
        SearchEmbedder::MiniLm => return Err(SearchEmbedder::NOT_BUILT.to_owned()),
    };
    Ok(SearchOptions {
        embedder,
        ..SearchOptions::default()
    })
}

struct Worker {
    shared: Arc<Shared>,
    store: Arc<Store>,
    dir: PathBuf,
    opts: SearchOptions,
    last_rebuild: Option<Instant>,
    /// The last update or rebuild failed: entries are dropped until a
    /// rebuild succeeds.
    broken: bool,
}

impl Worker {
    fn run(mut self, rx: &Receiver<Msg>, engine_applied: u64) {
        let started = Instant::now();
        match self.open(engine_applied) {
            Ok(how) => {
                let applied = self.publish();
                tracing::info!(
                    dir = %self.dir.display(),
                    applied,
                    how,
                    took_ms = started.elapsed().as_millis(),
                    "search index ready"
                );
            }
            Err(e) => self.fail(format!("cannot open the search index: {e}")),
        }
        loop {
            let first = match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(m) => m,
                Err(RecvTimeoutError::Timeout) => {
                    if self.shared.stop.load(Ordering::SeqCst) {
                        return;
                    }
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => return,
            };
            self.handle(first, rx);
        }
    }

    /// Handles `first` and whatever else is queued, merging consecutive
    /// entries into one update.
    fn handle(&mut self, first: Msg, rx: &Receiver<Msg>) {
        let mut merged: HashMap<Bytes, Option<Bytes>> = HashMap::new();
        let mut last = None;
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            match msg {
                Msg::Rebuild => {
                    self.update(&mut merged, &mut last);
                    self.rebuild("a snapshot was installed");
                }
                Msg::Entry { index, changes } => {
                    if index > self.applied_floor() {
                        merged.extend(changes);
                        last = Some(index);
                    }
                }
            }
            if merged.len() < MAX_MERGED_CHANGES {
                next = rx.try_recv().ok();
            }
        }
        self.update(&mut merged, &mut last);
    }

    /// Entries up to this are in the index already.
    fn applied_floor(&self) -> u64 {
        self.shared
            .index
            .read()
            .as_ref()
            .map_or(0, SearchIndex::applied_index)
    }

    /// Applies the merged changes as entry `last`.
    fn update(&mut self, merged: &mut HashMap<Bytes, Option<Bytes>>, last: &mut Option<u64>) {
        let Some(index) = last.take() else {
            return;
        };
        let changes: Vec<Change<'_>> = merged
            .iter()
            .map(|(k, v)| match v {
                Some(v) => Change::Put { key: k, value: v },
                None => Change::Delete { key: k },
            })
            .collect();
        if self.broken {
            drop(changes);
            merged.clear();
            if self
                .last_rebuild
                .is_none_or(|t| t.elapsed() >= RETRY_REBUILD_EVERY)
            {
                self.rebuild("retrying after a failure");
            }
            return;
        }
        let result = match self.shared.index.read().as_ref() {
            Some(ix) => ix.apply(index, &changes).map_err(|e| e.to_string()),
            None => Err("the index is not open".into()),
        };
        drop(changes);
        merged.clear();
        match result {
            Ok(_) => {
                self.publish();
            }
            Err(e) => {
                tracing::error!(index, error = %e, "search index update failed; rebuilding it");
                self.rebuild("an update failed");
            }
        }
    }

    /// Opens the index (rebuilt when missing or damaged, or when it does
    /// not end where the feed starts).
    fn open(&mut self, engine_applied: u64) -> Result<String, String> {
        let (index, how) = SearchIndex::open_or_rebuild(&self.dir, self.opts.clone(), || {
            match engine_source(&self.store) {
                Ok((applied, items)) => (applied, items),
                Err(e) => (0, Box::new(std::iter::once(Err(e))) as Box<_>),
            }
        })
        .map_err(|e| e.to_string())?;
        let (existing, mut how) = match how {
            kv_search::Opened::Existing => (
                true,
                match index.graph_restored() {
                    Some(g) => format!(
                        "opened (similarity graph loaded: {} nodes kept, {} inserted, {} dropped)",
                        g.kept, g.inserted, g.dropped
                    ),
                    None => "opened".to_owned(),
                },
            ),
            kv_search::Opened::Rebuilt { reason } => (false, format!("rebuilt ({reason})")),
        };
        let at = index.applied_index();
        *self.shared.index.write() = Some(index);
        if existing && at != engine_applied {
            tracing::info!(
                index_applied = at,
                engine_applied,
                "the search index does not match the engine; rebuilding it"
            );
            self.rebuild("it did not match the engine");
            if self.broken {
                return Err(self.shared.failed.lock().clone().unwrap_or_default());
            }
            how = format!("rebuilt (its applied index {at} was not the engine's {engine_applied})");
        }
        Ok(how)
    }

    /// Rebuilds the index from one engine snapshot.
    fn rebuild(&mut self, why: &str) {
        self.last_rebuild = Some(Instant::now());
        let started = Instant::now();
        let result = engine_source(&self.store).and_then(|(applied, items)| {
            let mut guard = self.shared.index.write();
            match guard.as_mut() {
                Some(ix) => ix.rebuild_from(items, applied),
                None => {
                    SearchIndex::rebuild(&self.dir, self.opts.clone(), items, applied).map(|ix| {
                        *guard = Some(ix);
                    })
                }
            }
            .map_err(|e| e.to_string())
            .map(|()| applied)
        });
        match result {
            Ok(applied) => {
                self.broken = false;
                *self.shared.failed.lock() = None;
                self.publish();
                tracing::info!(
                    applied,
                    why,
                    took_ms = started.elapsed().as_millis(),
                    "search index rebuilt from the engine"
                );
            }
            Err(e) => self.fail(format!("rebuilding the search index failed: {e}")),
        }
    }

    fn fail(&mut self, why: String) {
        tracing::error!(error = %why, "the search index is unavailable");
        self.broken = true;
        *self.shared.failed.lock() = Some(why);
    }

    fn publish(&self) -> u64 {
        let at = self.applied_floor();
        self.shared.applied.send_replace(Some(at));
        at
    }
}

mod requests;

#[cfg(test)]
mod tests;
