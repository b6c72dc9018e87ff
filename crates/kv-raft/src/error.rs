//! The crate's one error type.

use std::path::PathBuf;

/// Errors of the boxed kind a [`crate::StateMachine`] may return.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in `kv-raft`.
///
/// For a proposal, [`Error::is_definite`] tells whether the command was
/// certainly *not* applied (safe to retry) or whether its outcome is unknown.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An I/O operation on a file of the log store failed.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file or directory concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A record on disk failed its checksum.
    #[error(
        "checksum mismatch in {path} at offset {offset}: expected {expected:#010x}, got {got:#010x}"
    )]
    ChecksumMismatch {
        /// The file.
        path: PathBuf,
        /// Byte offset of the record.
        offset: u64,
        /// Checksum stored in the record.
        expected: u32,
        /// Checksum computed over the bytes read.
        got: u32,
    },
    /// Bytes on disk that cannot be a valid log store state.
    #[error("corruption in {path} at offset {offset}: {reason}")]
    Corruption {
        /// The file.
        path: PathBuf,
        /// Byte offset of the bad record.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// Another process (or another `LogStore` in this one) holds the directory.
    #[error("log store directory {0} is locked by another user")]
    Locked(PathBuf),
    /// An earlier write or fsync failed; the store refuses all further work.
    #[error("log store is poisoned by an earlier I/O failure")]
    Poisoned,
    /// Invalid options or arguments.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// An error reported by raft-rs.
    #[error("raft: {0}")]
    Raft(#[from] raft::Error),
    /// This node is not the leader. The operation was not performed.
    #[error("not leader (leader hint: {leader:?})")]
    NotLeader {
        /// The leader this node knows of, if any.
        leader: Option<u64>,
    },
    /// Raft refused the proposal (leadership transfer in progress, pending
    /// configuration change, uncommitted size limit). It was not appended.
    #[error("proposal dropped by raft: not applied")]
    ProposalDropped,
    /// The proposal was appended but overwritten by another leader's entry:
    /// it will never be applied.
    #[error("proposal was superseded at index {index}: not applied")]
    Superseded {
        /// Log index the proposal had been given.
        index: u64,
    },
    /// The proposal was appended to the log but this node lost leadership (or
    /// stopped) before seeing it applied: it may or may not be committed.
    #[error("unknown outcome: {0}")]
    UnknownOutcome(&'static str),
    /// The driver's request queue is full
    /// ([`Options::max_queued_requests`](crate::Options)): the request was
    /// not taken, nothing was applied.
    #[error("raft node overloaded: request queue full, not applied")]
    Overloaded,
    /// The operation did not complete in time.
    #[error("timed out")]
    Timeout,
    /// The driver thread has stopped.
    #[error("raft node stopped")]
    Stopped,
    /// The state machine failed; the node stops.
    #[error("state machine: {0}")]
    StateMachine(#[source] BoxError),
    /// The driver thread panicked (raft-rs met a state it cannot handle, for
    /// example a message claiming a commit index beyond the log); the node
    /// stops.
    #[error("raft driver panicked: {0}")]
    Panicked(String),
}

impl Error {
    /// True when the failed operation was certainly not applied, so that a
    /// caller may retry it without risk of applying it twice.
    #[must_use]
    pub fn is_definite(&self) -> bool {
        matches!(
            self,
            Error::NotLeader { .. }
                | Error::ProposalDropped
                | Error::Superseded { .. }
                | Error::InvalidArgument(_)
                | Error::Overloaded
        )
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn corruption(
        path: impl Into<PathBuf>,
        offset: u64,
        reason: impl Into<String>,
    ) -> Self {
        Error::Corruption {
            path: path.into(),
            offset,
            reason: reason.into(),
        }
    }
}

impl From<Error> for raft::Error {
    fn from(e: Error) -> Self {
        raft::Error::Store(raft::StorageError::Other(Box::new(e)))
    }
}
