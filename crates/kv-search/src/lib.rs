//! `kv-search`: full-text and similarity indexes over the values of a
//! key-value store, kept as derived state in a kv-engine database of their
//! own.
//!
//! It knows nothing of raft or the network: a state machine calls
//! [`SearchIndex::apply`] with the changes of each log entry it applies
//! (and the entry's index), and [`SearchIndex::rebuild`] (or
//! [`SearchIndex::open_or_rebuild`]) from the store when the index is
//! missing, damaged, or after a snapshot install; nothing of it belongs in a
//! snapshot.
//!
//! ```
//! use kv_search::{Change, SearchIndex, SearchOptions};
//! # fn main() -> Result<(), kv_search::Error> {
//! let dir = tempfile::tempdir().expect("tempdir");
//! let store: Vec<Result<(&[u8], &[u8]), std::convert::Infallible>> = Vec::new();
//! let (index, _) = SearchIndex::open_or_rebuild(dir.path(), SearchOptions::default(), || (0, store))?;
//! index.apply(1, &[
//!     Change::Put { key: b"doc:1", value: "The quick brown fox".as_bytes() },
//!     Change::Put { key: b"doc:2", value: "A lazy dog sleeps".as_bytes() },
//! ])?;
//! let hits = index.search("QUICK fox", None, 10)?;
//! assert_eq!(hits[0].0, b"doc:1");
//! let near = index.similar("lazy dogs", 1, Some(b"doc:"))?;
//! assert_eq!(near[0].0, b"doc:2");
//! assert_eq!(index.applied_index(), 1);
//! # Ok(()) }
//! ```
//!
//! # Layout
//!
//! - `text`: words of a value (UAX #29 segmentation, NFKC, lowercase).
//! - `embed`: the [`Embedder`] trait and the default [`NgramEmbedder`]
//!   (hashed character 3-grams and words), 8-bit quantisation.
//! - `minilm` (feature `minilm`): `MiniLmEmbedder`, a sentence-embedding
//!   model whose weights ship in its crate, for similarity by meaning.
//! - `codec`: the records kept in the engine (table in its module doc):
//!   postings `t/<term>\0<key>` → tf and document length, `f/<term>` →
//!   document frequency, `d/<key>` → length and term list (to delete it),
//!   `v/<key>` → vector, and `m/` counters and the applied index. Each
//!   [`SearchIndex::apply`] is one atomic engine batch.
//! - `vectors` / `hnsw`: all vectors in memory (loaded on open), exact scan
//!   or an HNSW graph above [`SearchOptions::ann_threshold`], saved to
//!   `gen-NNNNNN.graph` beside the database and loaded on open (matched
//!   against the stored vectors by fingerprint; rebuilt when the file is
//!   missing or damaged).
//! - `index`: [`SearchIndex`], generations of the engine database under
//!   `CURRENT` so that a rebuild replaces the index atomically.
//! - `generations`: the directory's files (`CURRENT`, `gen-NNNNNN/`,
//!   `gen-NNNNNN.graph`) and their durable writes.
//!
//! # Limits
//!
//! Values that are not UTF-8, and values without any word, are not
//! indexed: neither search finds them. Words over 128 bytes are dropped.
//! Full-text search scans the postings of the query's rarest word (from
//! the prefix on, when given) and looks up the others per candidate, so a
//! query of only very common words costs in proportion to their document
//! frequency. The vectors and the graph live in memory (`dim` bytes plus
//! about 150 bytes of graph per value, plus the keys); the graph is rebuilt
//! after a quarter of its nodes were deleted, and on an open without a
//! usable graph file. An empty
//! query (no word) is an error, [`Error::EmptyQuery`]. See README.md for
//! the measurements and the choice against tantivy.
#![deny(unsafe_code)]
#![deny(clippy::unwrap_used)]
#![warn(missing_docs)]

mod codec;
#[doc(hidden)]
#[allow(clippy::indexing_slicing, missing_docs)]
pub mod corpus;
mod embed;
mod error;
mod generations;
mod hnsw;
mod index;
#[cfg(feature = "minilm")]
mod minilm;
mod options;
pub mod text;
mod vectors;

pub use embed::{Embedder, NgramEmbedder, quantize};
pub use error::{Error, Result};
pub use hnsw::HnswParams;
pub use index::{BM25_B, BM25_K1, Change, IndexStats, Opened, SearchIndex};
#[cfg(feature = "minilm")]
pub use minilm::MiniLmEmbedder;
pub use options::SearchOptions;
pub use vectors::GraphRestored;
