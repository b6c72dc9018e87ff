//! Tuning knobs of a [`SearchIndex`](crate::SearchIndex).

use std::sync::Arc;

use kv_engine::SyncMode;

use crate::embed::{Embedder, NgramEmbedder};
use crate::error::{Error, Result};
use crate::hnsw::HnswParams;

/// Options for [`SearchIndex::open`](crate::SearchIndex::open) and the
/// rebuilds.
#[derive(Debug, Clone)]
pub struct SearchOptions {
    /// Options of the index's own kv-engine database. Its `sync` defaults to
    /// [`SyncMode::Never`]: the index is derived state, its updates survive a
    /// crash of the process, and after a power loss
    /// [`SearchIndex::applied_index`](crate::SearchIndex::applied_index) may
    /// be behind the store's: re-apply the missing entries, or rebuild.
    pub engine: kv_engine::Options,
    /// Maps values and queries to vectors.
    pub embedder: Arc<dyn Embedder>,
    /// Live vectors from which similarity search uses the HNSW graph instead
    /// of an exact scan (default 20,000). Below half of it the graph is
    /// dropped again.
    pub ann_threshold: usize,
    /// Parameters of the HNSW graph.
    pub hnsw: HnswParams,
    /// Graph changes after which `apply` writes the graph file again
    /// (default 50,000; at least a quarter of the vectors is always
    /// waited for). A crash costs re-inserting the changes since.
    pub graph_save_every: usize,
}

impl Default for SearchOptions {
    fn default() -> Self {
        let engine = kv_engine::Options {
            sync: SyncMode::Never,
            ..kv_engine::Options::default()
        };
        SearchOptions {
            engine,
            embedder: Arc::new(NgramEmbedder::default()),
            ann_threshold: 20_000,
            hnsw: HnswParams::default(),
            graph_save_every: 50_000,
        }
    }
}

impl SearchOptions {
    /// Checks that the options are consistent.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] naming the offending option, or the
    /// engine's own complaint.
    pub fn validate(&self) -> Result<()> {
        self.engine.validate()?;
        let bad = |what: &str| Err(Error::InvalidArgument(what.to_string()));
        if self.embedder.dim() == 0 || self.embedder.dim() > 65_536 {
            return bad("embedder dim must be between 1 and 65536");
        }
        if self.graph_save_every == 0 {
            return bad("graph_save_every must be at least 1");
        }
        if self.ann_threshold == 0 {
            return bad("ann_threshold must be at least 1");
        }
        if self.hnsw.m < 2 || self.hnsw.m > 128 {
            return bad("hnsw.m must be between 2 and 128");
        }
        if self.hnsw.ef_construction == 0 || self.hnsw.ef_search == 0 {
            return bad("hnsw ef_construction and ef_search must be at least 1");
        }
        Ok(())
    }
}
