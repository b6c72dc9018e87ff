//! The crate's one error type.

use std::path::PathBuf;

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the search indexes.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The index is missing, incomplete, damaged, or was written with another
    /// format or embedder: rebuild it from the store
    /// ([`SearchIndex::rebuild`](crate::SearchIndex::rebuild) or
    /// [`SearchIndex::open_or_rebuild`](crate::SearchIndex::open_or_rebuild)).
    #[error("search index in {dir} needs a rebuild: {reason}")]
    NeedsRebuild {
        /// The index directory.
        dir: PathBuf,
        /// Why it cannot be used.
        reason: String,
    },
    /// A record of an open index does not decode: the index is damaged and
    /// must be rebuilt.
    #[error("corrupt search index record {key:?}: {reason}")]
    Corruption {
        /// Engine key of the record (lossy UTF-8 for display).
        key: String,
        /// What was wrong.
        reason: String,
    },
    /// The kv-engine database under the index failed.
    #[error("index engine: {0}")]
    Engine(#[from] kv_engine::Error),
    /// A file-system call on the index directory failed.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file or directory the call was about.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The query holds no word (only spaces or punctuation, or empty).
    #[error("the query has no words")]
    EmptyQuery,
    /// The embedding model could not be loaded.
    #[error("embedding model: {0}")]
    Model(String),
    /// The caller passed something the index cannot accept.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The iterator a rebuild reads the store from failed.
    #[error("reading the store for a rebuild: {0}")]
    Source(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl Error {
    /// True when the index cannot be used as it is and must be rebuilt from
    /// the store: [`Error::NeedsRebuild`], [`Error::Corruption`], or a
    /// corruption reported by the engine.
    pub fn needs_rebuild(&self) -> bool {
        matches!(
            self,
            Error::NeedsRebuild { .. }
                | Error::Corruption { .. }
                | Error::Engine(kv_engine::Error::Corruption { .. })
        )
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn corrupt(key: &[u8], reason: impl Into<String>) -> Self {
        Error::Corruption {
            key: String::from_utf8_lossy(key).into_owned(),
            reason: reason.into(),
        }
    }
}
