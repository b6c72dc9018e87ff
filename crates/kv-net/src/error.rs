//! The crate's one error type.

use std::io;

/// Errors of `kv-net`.
///
/// For a client call, the variant tells whether the request may have reached
/// the server: [`Error::NotSent`] is definite (nothing was sent),
/// [`Error::ConnectionLost`] is not (the outcome is unknown). See
/// [`Error::outcome_unknown`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An [`Options`](crate::Options) field is out of range.
    #[error("invalid kv-net options: {0}")]
    InvalidOptions(String),

    /// Binding a listen address failed.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: String,
        /// The underlying error.
        source: io::Error,
    },

    /// Connecting to `addr` failed or timed out; nothing was sent.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// The address dialed.
        addr: String,
        /// The underlying error (`TimedOut` for the connect timeout).
        source: io::Error,
    },

    /// A frame's length prefix exceeds the configured maximum. Received: the
    /// connection is closed without buffering the frame. To be sent: nothing
    /// was written.
    #[error("frame of {len} bytes exceeds the maximum of {max} bytes")]
    FrameTooLarge {
        /// The frame's length.
        len: u64,
        /// The configured maximum (`Options::max_frame_length`).
        max: usize,
    },

    /// A frame did not hold a valid protobuf `Frame`.
    #[error("malformed frame: {0}")]
    Decode(#[source] protobuf::Error),

    /// Encoding a message failed (nothing was sent).
    #[error("cannot encode frame: {0}")]
    Encode(#[source] protobuf::Error),

    /// The peer handshake failed to authenticate one side: a wrong or
    /// missing proof of the peer secret, or no challenge where one was due.
    #[error("peer authentication failed: {0}")]
    PeerAuth(String),

    /// The peer sent a frame that is not valid at this point of the protocol
    /// (e.g. a `Response` to a server, or an empty `Frame`).
    #[error("protocol violation: {0}")]
    Protocol(String),

    /// The request was not sent: the connection was already closed.
    #[error("request not sent: {0}")]
    NotSent(String),

    /// The connection was lost after the request was handed to it, before its
    /// response arrived: the request may or may not have been applied.
    #[error("connection lost after send: {0}")]
    ConnectionLost(String),

    /// The other side took too long: a frame begun but not completed within
    /// the frame timeout, or no first frame within the handshake timeout.
    #[error("timed out: {0}")]
    Timeout(String),

    /// Another I/O failure on an established connection.
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
}

impl Error {
    /// True when a request that failed with this error may still have been
    /// applied by the server (the caller must report an unknown outcome).
    #[must_use]
    pub fn outcome_unknown(&self) -> bool {
        matches!(self, Error::ConnectionLost(_) | Error::Io(_))
    }
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
