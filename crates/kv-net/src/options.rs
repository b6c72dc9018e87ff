//! Tunables of connections, the listener and peer links.

use std::time::Duration;

use crate::error::{Error, Result};

/// Default maximum frame length: 16 MiB (SPEC section 6).
pub const DEFAULT_MAX_FRAME_LENGTH: usize = 16 << 20;

/// Options shared by the listener, client connections and peer links.
#[derive(Debug, Clone)]
pub struct Options {
    /// Largest frame accepted or sent, length prefix excluded.
    pub max_frame_length: usize,
    /// At most this many connections are served at once. A connection over
    /// the limit is accepted only to be told so: its first client request
    /// is answered `UNAVAILABLE` ("too many connections", nothing applied)
    /// and it is closed. A peer's handshake is still admitted over the limit
    /// (up to [`OVERFLOW_CONNECTIONS`] connections over it), so a flood of
    /// clients cannot cut a node off from its cluster. `None`: no limit.
    pub max_connections: Option<usize>,
    /// A new connection must deliver its first whole frame within this
    /// time, or it is closed (connections that send nothing, or trickle
    /// their first frame).
    pub handshake_timeout: Duration,
    /// Once the first bytes of a frame arrive, the whole frame must within
    /// this time, or the connection is closed (slowloris).
    pub frame_timeout: Duration,
    /// Bytes all connections of a listener may buffer at once for partly
    /// received frames larger than 64 KiB; a connection whose frame does not
    /// fit waits (is not read) until others complete theirs.
    pub max_receive_buffer: usize,
    /// Requests of one connection being handled or waiting to be written;
    /// the connection is not read further while this many are pending.
    pub max_in_flight_per_connection: usize,
    /// Bytes of one connection's requests being handled and responses
    /// waiting to be written; the connection is not read further while
    /// they hold this many (one frame may go over it). Bounds what a client
    /// that pipelines large requests, or reads no responses, can pin.
    pub max_bytes_in_flight_per_connection: usize,
    /// A client connection with no request in flight that sends nothing
    /// for this long is closed. `None`: idle clients may stay (bounded by
    /// `max_connections`).
    pub idle_timeout: Option<Duration>,
    /// On shutdown, how long in-flight requests may take before their
    /// connections are closed anyway.
    pub shutdown_grace: Duration,
    /// Timeout of one TCP connect.
    pub connect_timeout: Duration,
    /// Raft messages queued for one peer while its link connects; more are
    /// dropped and the peer is reported unreachable.
    pub peer_queue_capacity: usize,
    /// Most raft messages in one `PeerMessage` frame.
    pub peer_max_batch: usize,
    /// First delay before reconnecting a failed peer link; doubled on each
    /// failure up to `peer_backoff_max`.
    pub peer_backoff_initial: Duration,
    /// Longest reconnect delay of a peer link.
    pub peer_backoff_max: Duration,
    /// Data bytes per `SnapshotChunk`.
    pub snapshot_chunk_size: usize,
    /// Set `TCP_NODELAY` on every connection (writes are batched by us).
    pub nodelay: bool,
    /// Peers must prove this shared secret in the handshake, and this node
    /// proves it to them ([`crate::auth`]). `None`: peer traffic is
    /// unauthenticated (any process naming the cluster id and a member is
    /// taken for it).
    pub peer_secret: Option<crate::auth::PeerSecret>,
    /// Serve client connections over TLS ([`crate::tls`]); plaintext
    /// connections are then taken only as peer links.
    pub server_tls: Option<crate::tls::ServerTls>,
    /// Dial over TLS (clients of a node with `server_tls`, and peer links
    /// to nodes whose peer port uses mutual TLS).
    pub client_tls: Option<crate::tls::ClientTls>,
    /// What a listener serves: clients and peers on one port, or one of
    /// them on a port of its own (`kvd --peer-listen`).
    pub serves: Serves,
}

/// What a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Serves {
    /// Clients and peer links on one port. With `server_tls`, clients use
    /// TLS and peer links plaintext (told apart by their first byte).
    #[default]
    ClientsAndPeers,
    /// Clients only: a peer handshake is refused (peers have a port of
    /// their own).
    Clients,
    /// Peer links only: a client request is answered with a refusal naming
    /// the client port. With `server_tls` (mutual TLS between peers), a
    /// plaintext connection is refused.
    Peers,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            max_frame_length: DEFAULT_MAX_FRAME_LENGTH,
            max_connections: Some(16_384),
            handshake_timeout: Duration::from_secs(10),
            frame_timeout: Duration::from_secs(30),
            max_receive_buffer: 1 << 30,
            max_in_flight_per_connection: 4096,
            max_bytes_in_flight_per_connection: 64 << 20,
            idle_timeout: None,
            shutdown_grace: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(3),
            peer_queue_capacity: 4096,
            peer_max_batch: 512,
            peer_backoff_initial: Duration::from_millis(50),
            peer_backoff_max: Duration::from_secs(2),
            snapshot_chunk_size: 1 << 20,
            nodelay: true,
            peer_secret: None,
            server_tls: None,
            client_tls: None,
            serves: Serves::ClientsAndPeers,
        }
    }
}

/// Unit of [`Options::max_bytes_in_flight_per_connection`]'s permits.
pub(crate) const IN_FLIGHT_UNIT: usize = 1 << 10;
/// Most permits a semaphore holds, in units (1 TiB).
pub(crate) const MAX_IN_FLIGHT_UNITS: usize = 1 << 30;

/// Connections a listener admits over [`Options::max_connections`]: those
/// being told they are over it, and peers.
pub const OVERFLOW_CONNECTIONS: usize = 64;

/// Room for the fields of a `SnapshotChunk` besides its data, which includes
/// a raft `MsgSnapshot` with its metadata (conf state) but without its data.
const CHUNK_OVERHEAD: usize = 4 << 10;

impl Options {
    /// Checks that every field is in range.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidOptions`] naming the first bad field.
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: &str| Err(Error::InvalidOptions(msg.to_owned()));
        if self.max_frame_length < 1024 || self.max_frame_length > u32::MAX as usize {
            return bad("max_frame_length must be between 1 KiB and 4 GiB - 1");
        }
        if self.max_connections == Some(0) {
            return bad("max_connections must be at least 1");
        }
        if self.handshake_timeout.is_zero() || self.frame_timeout.is_zero() {
            return bad("handshake_timeout and frame_timeout must be positive");
        }
        if self.max_receive_buffer < self.max_frame_length {
            return bad("max_receive_buffer must hold at least one frame of max_frame_length");
        }
        if self.max_in_flight_per_connection == 0 {
            return bad("max_in_flight_per_connection must be at least 1");
        }
        if self.max_bytes_in_flight_per_connection < IN_FLIGHT_UNIT
            || self.max_bytes_in_flight_per_connection / IN_FLIGHT_UNIT > MAX_IN_FLIGHT_UNITS
        {
            return bad("max_bytes_in_flight_per_connection must be between 1 KiB and 1 TiB");
        }
        if self.idle_timeout.is_some_and(|t| t.is_zero()) {
            return bad("idle_timeout must be positive");
        }
        if self.connect_timeout.is_zero() {
            return bad("connect_timeout must be positive");
        }
        if self.peer_queue_capacity == 0 || self.peer_max_batch == 0 {
            return bad("peer_queue_capacity and peer_max_batch must be at least 1");
        }
        if self.peer_backoff_initial.is_zero() || self.peer_backoff_initial > self.peer_backoff_max
        {
            return bad("peer_backoff_initial must be positive and at most peer_backoff_max");
        }
        if self.snapshot_chunk_size == 0
            || self.snapshot_chunk_size.saturating_add(CHUNK_OVERHEAD) > self.max_frame_length
        {
            return bad("snapshot_chunk_size must be positive and leave 4 KiB of max_frame_length");
        }
        Ok(())
    }
}
