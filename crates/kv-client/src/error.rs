//! The crate's one error type.

/// Why an operation failed, and whether it may have taken effect.
///
/// [`Error::is_definite`] is true only when the operation was certainly
/// **not** applied; otherwise its outcome is unknown.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The request is invalid (e.g. an empty key); nothing was applied.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The operation's deadline passed.
    #[error("timeout")]
    Timeout {
        /// True when no attempt may have been applied.
        definite: bool,
    },
    /// No node could serve the operation (no leader, nodes unreachable).
    #[error("unavailable: {message}")]
    Unavailable {
        /// What happened last.
        message: String,
        /// True when no attempt may have been applied.
        definite: bool,
    },
    /// The token is missing or unknown, or its role may not do this;
    /// nothing was applied.
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// The server failed the operation.
    #[error("server error: {message}")]
    Server {
        /// What the server said.
        message: String,
        /// True when no attempt may have been applied.
        definite: bool,
    },
}

impl Error {
    /// True when the operation was certainly not applied.
    #[must_use]
    pub fn is_definite(&self) -> bool {
        match self {
            Error::InvalidArgument(_) | Error::PermissionDenied(_) => true,
            Error::Timeout { definite }
            | Error::Unavailable { definite, .. }
            | Error::Server { definite, .. } => *definite,
        }
    }

    /// The same error, downgraded to an unknown outcome when `maybe_applied`.
    #[must_use]
    pub(crate) fn unless_applied(self, maybe_applied: bool) -> Error {
        if !maybe_applied {
            return self;
        }
        match self {
            Error::InvalidArgument(message)
            | Error::PermissionDenied(message)
            | Error::Server { message, .. } => Error::Server {
                message,
                definite: false,
            },
            Error::Timeout { .. } => Error::Timeout { definite: false },
            Error::Unavailable { message, .. } => Error::Unavailable {
                message,
                definite: false,
            },
        }
    }
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
