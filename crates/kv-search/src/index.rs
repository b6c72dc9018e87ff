//! [`SearchIndex`]: the persistent full-text and similarity indexes.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use kv_engine::{Db, WriteBatch};
use parking_lot::{Mutex, RwLock};

use crate::codec::{self, DocRecord};
use crate::error::{Error, Result};
use crate::generations::{
    CURRENT, gen_dir, graph_path, list_gens, read_current, remove_gens_except, write_current,
    write_durably,
};
use crate::options::SearchOptions;
use crate::vectors::{GraphRestored, VectorSet};

mod query;
mod write;

/// BM25 term-frequency saturation.
pub const BM25_K1: f64 = 1.2;
/// BM25 length normalisation.
pub const BM25_B: f64 = 0.75;

/// Source entries per engine batch in a rebuild.
const REBUILD_CHUNK: usize = 4096;

/// An item of an empty store.
type NoItem<'a> = std::result::Result<(&'a [u8], &'a [u8]), std::convert::Infallible>;

/// One change to the store, as a state machine applies it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change<'a> {
    /// `key` now holds `value` (new, or overwriting).
    Put {
        /// The store key.
        key: &'a [u8],
        /// Its new value.
        value: &'a [u8],
    },
    /// `key` no longer exists (it may never have).
    Delete {
        /// The store key.
        key: &'a [u8],
    },
}

impl<'a> Change<'a> {
    fn key(&self) -> &'a [u8] {
        match *self {
            Change::Put { key, .. } | Change::Delete { key } => key,
        }
    }
}

/// How [`SearchIndex::open_or_rebuild`] got its index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Opened {
    /// The stored index was sound and was opened.
    Existing,
    /// It was missing or unusable and was rebuilt from the store.
    Rebuilt {
        /// Why the stored index could not be used.
        reason: String,
    },
}

/// Sizes of an index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexStats {
    /// Values with at least one word.
    pub documents: u64,
    /// Words in all of them.
    pub total_words: u64,
    /// Stored vectors.
    pub vectors: usize,
    /// Whether similarity search uses the HNSW graph.
    pub approximate: bool,
    /// Bytes of the vectors, key map and graph in memory (estimate).
    pub memory_bytes: usize,
    /// The candidate list size a top-10 similarity search uses now
    /// ([`HnswParams::effective_ef`](crate::HnswParams::effective_ef)); 0
    /// without the graph.
    pub ef_search: usize,
}

/// What the writer knows besides the engine: the counters it keeps.
#[derive(Debug, Default)]
struct Counters {
    docs: u64,
    total: u64,
}

/// A value turned into index content.
struct Analyzed {
    doc: DocRecord,
    vector: Option<Vec<i8>>,
}

/// The full-text and similarity indexes of one store, kept in a kv-engine
/// database of their own as derived state. `Send + Sync`: searches run
/// concurrently with each other and with `apply`; `apply` calls are
/// serialized.
pub struct SearchIndex {
    root: PathBuf,
    generation: u64,
    db: Db,
    opts: SearchOptions,
    writer: Mutex<Counters>,
    applied: AtomicU64,
    vectors: RwLock<VectorSet>,
    /// How the open used the graph file.
    restored: Option<GraphRestored>,
}

impl std::fmt::Debug for SearchIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SearchIndex")
            .field("root", &self.root)
            .field("generation", &self.generation)
            .field("applied", &self.applied_index())
            .finish_non_exhaustive()
    }
}

fn format_record(opts: &SearchOptions) -> Vec<u8> {
    format!("{} {}", codec::FORMAT_VERSION, opts.embedder.id()).into_bytes()
}

impl SearchIndex {
    /// Opens the index in `dir`.
    ///
    /// The directory holds `CURRENT`, naming the live generation, and that
    /// generation's kv-engine database `gen-NNNNNN/`; other generations
    /// (left by an interrupted rebuild) are removed.
    ///
    /// # Errors
    ///
    /// [`Error::NeedsRebuild`] when there is no complete index, or it is
    /// damaged (the engine reports corruption, a record does not decode), or
    /// it was built with another format or embedder: see
    /// [`Error::needs_rebuild`] and [`SearchIndex::open_or_rebuild`].
    /// [`Error::InvalidArgument`] for bad options; the engine's
    /// `Locked` and I/O errors as [`Error::Engine`] or [`Error::Io`].
    pub fn open(dir: impl AsRef<Path>, opts: SearchOptions) -> Result<SearchIndex> {
        opts.validate()?;
        let root = dir.as_ref().to_path_buf();
        let needs = |reason: String| Error::NeedsRebuild {
            dir: root.clone(),
            reason,
        };
        let generation = read_current(&root)?.ok_or_else(|| {
            needs(if root.join(CURRENT).exists() {
                "CURRENT is damaged".into()
            } else {
                "no index".into()
            })
        })?;
        let engine = kv_engine::Options {
            create_if_missing: false,
            ..opts.engine.clone()
        };
        let db = match Db::open_with(gen_dir(&root, generation), engine) {
            Ok(db) => db,
            Err(e @ kv_engine::Error::Corruption { .. })
            | Err(e @ kv_engine::Error::InvalidArgument(_)) => return Err(needs(e.to_string())),
            Err(e) => return Err(e.into()),
        };
        let index = Self::load(root.clone(), generation, db, opts).map_err(|e| {
            if e.needs_rebuild() {
                needs(e.to_string())
            } else {
                e
            }
        })?;
        remove_gens_except(&root, &[generation])?;
        Ok(index)
    }

    /// Reads the counters and vectors of an opened database.
    fn load(root: PathBuf, generation: u64, db: Db, opts: SearchOptions) -> Result<SearchIndex> {
        let format = db.get(codec::FORMAT)?;
        let want = format_record(&opts);
        if format.as_deref() != Some(want.as_slice()) {
            return Err(Error::corrupt(
                codec::FORMAT,
                format!(
                    "index format is {:?}, this build wants {:?}",
                    format.map(|f| String::from_utf8_lossy(&f).into_owned()),
                    String::from_utf8_lossy(&want)
                ),
            ));
        }
        let applied = match db.get(codec::APPLIED)? {
            Some(b) => u64::from_le_bytes(
                b.as_ref()
                    .try_into()
                    .map_err(|_| Error::corrupt(codec::APPLIED, "not 8 bytes"))?,
            ),
            None => return Err(Error::corrupt(codec::APPLIED, "missing")),
        };
        let [docs, total] = match db.get(codec::STATS)? {
            Some(b) => codec::decode_u64s::<2>(codec::STATS, &b)?,
            None => return Err(Error::corrupt(codec::STATS, "missing")),
        };
        let dim = opts.embedder.dim();
        // The graph as last saved, matched against the stored vectors; a
        // missing or damaged file only costs building the graph again.
        let graph = match std::fs::read(graph_path(&root, generation)) {
            Ok(bytes) => VectorSet::restore(dim, opts.hnsw, opts.ann_threshold, &bytes),
            Err(_) => None,
        };
        let mut restoring = graph;
        let mut fresh = VectorSet::new(dim, opts.hnsw, opts.ann_threshold);
        for item in db.prefix(b"v/")? {
            let (k, v) = item?;
            if v.len() != dim {
                return Err(Error::corrupt(
                    &k,
                    format!("vector of {} bytes, want {dim}", v.len()),
                ));
            }
            let q: Vec<i8> = v.iter().map(|&b| b as i8).collect();
            let key = k.get(2..).unwrap_or(&[]);
            match &mut restoring {
                Some(r) => r.offer(key, &q),
                None => fresh.set(key, Some(&q), true),
            }
        }
        let (vectors, restored) = match restoring {
            Some(r) => {
                let (set, how) = r.finish();
                (set, Some(how))
            }
            None => {
                fresh.maintain(false);
                (fresh, None)
            }
        };
        let index = SearchIndex {
            root,
            generation,
            db,
            opts,
            writer: Mutex::new(Counters { docs, total }),
            applied: AtomicU64::new(applied),
            vectors: RwLock::new(vectors),
            restored,
        };
        index.save_graph_if(1)?;
        Ok(index)
    }

    /// Writes the graph file when at least `min` graph changes are not in
    /// it. A search may run meanwhile; `apply` waits (callers hold the
    /// writer lock or own the index).
    fn save_graph_if(&self, min: usize) -> Result<bool> {
        let encoded = {
            let v = self.vectors.read();
            if v.unsaved() < min.max(1) {
                return Ok(false);
            }
            v.encode_graph()
        };
        let Some((bytes, count)) = encoded else {
            return Ok(false);
        };
        write_durably(&graph_path(&self.root, self.generation), &bytes)?;
        self.vectors.write().saved(count);
        Ok(true)
    }

    /// Writes the similarity graph to its file beside the index (when it
    /// changed since last written), so that the next open loads it instead
    /// of building it again. `apply` does this by itself every
    /// [`SearchOptions::graph_save_every`] graph changes (or a quarter of the
    /// vectors), a rebuild when it completes,
    /// and dropping the index does it last; a crash only costs re-inserting
    /// what changed since (matched by fingerprint against the stored
    /// vectors on open). Returns whether a file was written.
    ///
    /// # Errors
    ///
    /// I/O errors writing the file (the index itself is unaffected).
    pub fn save_graph(&self) -> Result<bool> {
        let _writer = self.writer.lock();
        self.save_graph_if(1)
    }

    /// How the last open used the saved graph: `None` when there was no
    /// usable graph file (the graph, if any, was built from the vectors).
    pub fn graph_restored(&self) -> Option<GraphRestored> {
        self.restored
    }

    /// Opens the index in `dir`, or rebuilds it from the store when it is
    /// missing or unusable ([`Error::needs_rebuild`]). `source` is called
    /// only for a rebuild and returns the store's applied index and every
    /// `(key, value)` of the store at that index.
    ///
    /// # Errors
    ///
    /// As [`SearchIndex::open`] for errors that a rebuild cannot cure (a
    /// locked directory, I/O errors); as [`SearchIndex::rebuild`].
    pub fn open_or_rebuild<F, I, K, V, E>(
        dir: impl AsRef<Path>,
        opts: SearchOptions,
        source: F,
    ) -> Result<(SearchIndex, Opened)>
    where
        F: FnOnce() -> (u64, I),
        I: IntoIterator<Item = std::result::Result<(K, V), E>>,
        K: AsRef<[u8]>,
        V: AsRef<[u8]>,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        match Self::open(dir.as_ref(), opts.clone()) {
            Ok(index) => Ok((index, Opened::Existing)),
            Err(e) if e.needs_rebuild() => {
                let (applied, items) = source();
                let index = Self::rebuild(dir, opts, items, applied)?;
                Ok((
                    index,
                    Opened::Rebuilt {
                        reason: e.to_string(),
                    },
                ))
            }
            Err(e) => Err(e),
        }
    }

    /// Builds a new index in `dir` from `items` (every `(key, value)` of the
    /// store as of `applied_index`) and opens it, replacing whatever was
    /// there: a damaged index, an old one, none. Use it after a snapshot
    /// install too.
    ///
    /// The new generation becomes current only once it is complete and
    /// durable; a crash midway leaves the previous one current (the partial
    /// one is removed at the next open).
    ///
    /// # Errors
    ///
    /// [`Error::Source`] when `items` yields an error, engine and I/O errors.
    pub fn rebuild<I, K, V, E>(
        dir: impl AsRef<Path>,
        opts: SearchOptions,
        items: I,
        applied_index: u64,
    ) -> Result<SearchIndex>
    where
        I: IntoIterator<Item = std::result::Result<(K, V), E>>,
        K: AsRef<[u8]>,
        V: AsRef<[u8]>,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let root = dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&root).map_err(|e| Error::io(&root, e))?;
        let current = read_current(&root)?;
        remove_gens_except(&root, &current.into_iter().collect::<Vec<_>>())?;
        let index = Self::build(root.clone(), opts, items, applied_index, current)?;
        remove_gens_except(&root, &[index.generation])?;
        Ok(index)
    }

    /// A new, empty index at applied index 0 in `dir`, replacing any (a
    /// rebuild from an empty store).
    ///
    /// # Errors
    ///
    /// As [`SearchIndex::rebuild`].
    pub fn create(dir: impl AsRef<Path>, opts: SearchOptions) -> Result<SearchIndex> {
        Self::rebuild(dir, opts, std::iter::empty::<NoItem<'_>>(), 0)
    }

    /// Replaces this index's content with `items` as of `applied_index`
    /// (see [`SearchIndex::rebuild`]).
    ///
    /// # Errors
    ///
    /// As [`SearchIndex::rebuild`]; on error `self` is unchanged.
    pub fn rebuild_from<I, K, V, E>(&mut self, items: I, applied_index: u64) -> Result<()>
    where
        I: IntoIterator<Item = std::result::Result<(K, V), E>>,
        K: AsRef<[u8]>,
        V: AsRef<[u8]>,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let fresh = Self::build(
            self.root.clone(),
            self.opts.clone(),
            items,
            applied_index,
            Some(self.generation),
        )?;
        let old = std::mem::replace(self, fresh);
        // Its generation is about to go: no graph file for it.
        old.vectors.write().saved(usize::MAX);
        drop(old);
        remove_gens_except(&self.root, &[self.generation])
    }

    fn build<I, K, V, E>(
        root: PathBuf,
        opts: SearchOptions,
        items: I,
        applied_index: u64,
        current: Option<u64>,
    ) -> Result<SearchIndex>
    where
        I: IntoIterator<Item = std::result::Result<(K, V), E>>,
        K: AsRef<[u8]>,
        V: AsRef<[u8]>,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        opts.validate()?;
        let existing = list_gens(&root)?;
        let generation = existing
            .iter()
            .copied()
            .chain(current)
            .max()
            .map_or(1, |g| g + 1);
        let dir = gen_dir(&root, generation);
        let engine = kv_engine::Options {
            create_if_missing: true,
            ..opts.engine.clone()
        };
        let db = Db::open_with(&dir, engine)?;
        let mut b = WriteBatch::new();
        b.put(codec::FORMAT, format_record(&opts));
        b.put(codec::APPLIED, 0u64.to_le_bytes());
        b.put(codec::STATS, codec::encode_u64s(&[0, 0]));
        db.write(b)?;
        let dim = opts.embedder.dim();
        let index = SearchIndex {
            root: root.clone(),
            generation,
            db,
            vectors: RwLock::new(VectorSet::new(dim, opts.hnsw, opts.ann_threshold)),
            opts,
            writer: Mutex::new(Counters::default()),
            applied: AtomicU64::new(0),
            restored: None,
        };
        let mut chunk: Vec<(Vec<u8>, Vec<u8>)> = Vec::with_capacity(REBUILD_CHUNK);
        let flush = |chunk: &mut Vec<(Vec<u8>, Vec<u8>)>| -> Result<()> {
            let changes: Vec<Change<'_>> = chunk
                .iter()
                .map(|(k, v)| Change::Put { key: k, value: v })
                .collect();
            index.write(&changes, None, true)?;
            chunk.clear();
            Ok(())
        };
        for item in items {
            let (k, v) = item.map_err(|e| Error::Source(e.into()))?;
            chunk.push((k.as_ref().to_vec(), v.as_ref().to_vec()));
            if chunk.len() >= REBUILD_CHUNK {
                flush(&mut chunk)?;
            }
        }
        flush(&mut chunk)?;
        index.write(&[], Some(applied_index), false)?;
        // Durable before it becomes current, whatever the sync mode; the
        // graph just built is saved too, or the next open builds it again.
        index.db.flush()?;
        index.save_graph_if(1)?;
        write_current(&root, generation)?;
        Ok(index)
    }

    /// The log index the index reflects: every change applied with an index
    /// up to it is in, none after it.
    pub fn applied_index(&self) -> u64 {
        self.applied.load(Ordering::Acquire)
    }

    /// The index directory.
    pub fn path(&self) -> &Path {
        &self.root
    }

    /// Document and vector counts.
    pub fn stats(&self) -> IndexStats {
        let c = self.writer.lock();
        let v = self.vectors.read();
        IndexStats {
            documents: c.docs,
            total_words: c.total,
            vectors: v.len(),
            approximate: v.has_graph(),
            memory_bytes: v.memory_bytes(),
            ef_search: if v.has_graph() {
                self.opts.hnsw.effective_ef(10, v.len())
            } else {
                0
            },
        }
    }

    /// Makes everything applied so far durable (an engine flush), whatever
    /// the sync mode.
    ///
    /// # Errors
    ///
    /// Engine errors.
    pub fn flush(&self) -> Result<()> {
        Ok(self.db.flush()?)
    }

    /// Flushes and compacts the index's engine (to measure its size).
    ///
    /// # Errors
    ///
    /// Engine errors.
    pub fn compact(&self) -> Result<()> {
        Ok(self.db.compact()?)
    }
}

impl Drop for SearchIndex {
    /// Saves the similarity graph if it changed (best effort: a failure
    /// only means the next open inserts those changes again).
    fn drop(&mut self) {
        let _ = self.save_graph_if(1);
    }
}
