//! The engine's one error type.

use std::path::{Path, PathBuf};

/// Result alias used throughout the engine.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the engine.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An operating-system I/O call failed.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file or directory the call was about.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A file's contents are not what the engine wrote.
    #[error("corruption in {file} at offset {offset}: {reason}")]
    Corruption {
        /// The damaged file.
        file: PathBuf,
        /// Byte offset in the file where the damage was found.
        offset: u64,
        /// What was wrong.
        reason: String,
    },
    /// Another process (or another `Db` in this process) holds the directory.
    #[error("database directory {path} is locked by another process")]
    Locked {
        /// The lock file.
        path: PathBuf,
    },
    /// An earlier fatal error (a failed fsync or write) stopped the database.
    #[error("database is stopped after an earlier fatal error: {0}")]
    Poisoned(String),
    /// The caller passed something the engine cannot accept.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

impl Error {
    pub(crate) fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.as_ref().to_path_buf(),
            source,
        }
    }

    /// A copy of this error for each writer of a failed commit group.
    pub(crate) fn duplicate(&self) -> Self {
        match self {
            Error::Io { path, source } => Error::Io {
                path: path.clone(),
                source: std::io::Error::new(source.kind(), source.to_string()),
            },
            Error::Corruption {
                file,
                offset,
                reason,
            } => Error::Corruption {
                file: file.clone(),
                offset: *offset,
                reason: reason.clone(),
            },
            Error::Locked { path } => Error::Locked { path: path.clone() },
            Error::Poisoned(s) => Error::Poisoned(s.clone()),
            Error::InvalidArgument(s) => Error::InvalidArgument(s.clone()),
        }
    }

    /// This error with a corruption offset taken as relative to `base`
    /// (the error came from parsing a part of a file that starts there).
    pub(crate) fn shifted(self, base: u64) -> Self {
        match self {
            Error::Corruption {
                file,
                offset,
                reason,
            } => Error::Corruption {
                file,
                offset: offset.saturating_add(base),
                reason,
            },
            other => other,
        }
    }

    pub(crate) fn corruption(
        file: impl AsRef<Path>,
        offset: u64,
        reason: impl Into<String>,
    ) -> Self {
        Error::Corruption {
            file: file.as_ref().to_path_buf(),
            offset,
            reason: reason.into(),
        }
    }
}

/// Extension to attach a path to `std::io::Result`.
pub(crate) trait IoContext<T> {
    fn ctx(self, path: impl AsRef<Path>) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn ctx(self, path: impl AsRef<Path>) -> Result<T> {
        self.map_err(|e| Error::io(path, e))
    }
}
