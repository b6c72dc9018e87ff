//! The crate's one error type.

use std::path::PathBuf;

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in `kv-server`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The storage engine failed.
    #[error("storage engine: {0}")]
    Engine(#[from] kv_engine::Error),
    /// The raft node failed.
    #[error("raft: {0}")]
    Raft(#[from] kv_raft::Error),
    /// The network layer failed (e.g. the listen address is unusable).
    #[error("{0}")]
    Net(#[from] kv_net::Error),
    /// A file or directory operation failed.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file or directory concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Data on disk (or a received snapshot) is not what this crate wrote.
    #[error("corruption in {path}: {reason}")]
    Corruption {
        /// The file or snapshot concerned.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Another process holds the data directory.
    #[error("data directory {0} is locked by another process (is another kvd running on it?)")]
    Locked(PathBuf),
    /// Invalid configuration.
    #[error("invalid configuration: {0}")]
    Config(String),
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn corruption(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Error::Corruption {
            path: path.into(),
            reason: reason.into(),
        }
    }
}

/// Attaches a path to I/O errors.
pub(crate) trait IoContext<T> {
    fn ctx(self, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn ctx(self, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|e| Error::io(path, e))
    }
}
