//! The listener and the per-connection handler.
//!
//! Structure after tokio-rs/mini-redis: [`Listener::run`] accepts connections
//! (retrying accept errors with backoff, capped by a semaphore) and spawns a
//! handler per connection. A handler reads frames: each client [`Request`] is
//! handled in its own task so many are in flight at once, and a writer task
//! sends responses as they complete, in completion order; the client matches
//! them by id. Peer frames (accepted only after the peer handshake, see the
//! crate doc) are handed to the [`Service`] in arrival order on the reading
//! task, so a slow consumer slows that peer's connection down rather than
//! queueing without bound.
//!
//! Shutdown: when the shutdown future completes the listener stops accepting
//! (its socket is closed, so new connections are refused), every handler
//! stops reading, lets its in-flight requests finish and their responses be
//! written for at most [`Options::shutdown_grace`], then closes.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream, ToSocketAddrs};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::options::{OVERFLOW_CONNECTIONS, Options};
use crate::proto::{self, ErrorCode, Hello, PeerMessage, Request, Response, SnapshotChunk};

mod counters;
mod handler;
mod outgoing;

pub use counters::Counters;
use handler::Handler;

/// What a node does with the frames it receives.
///
/// Implementations are shared by all connections (`Arc<S>`).
pub trait Service: Send + Sync + 'static {
    /// Answers one client request. Called concurrently for the requests in
    /// flight on a connection and across connections. The response's `id` is
    /// set to the request's by the caller. A panic is answered with an
    /// `INTERNAL` error whose outcome is unknown. The future may be dropped
    /// before it completes (its connection failed, or shutdown outlived the
    /// grace period), so it must be cancel-safe.
    fn handle(&self, request: Request) -> impl Future<Output = Response> + Send;

    /// This node's raft id, which proofs of the peer secret are bound to (0:
    /// not a raft node).
    fn local_node_id(&self) -> u64 {
        0
    }

    /// Decides the peer handshake: `hello` is the first frame of a
    /// connection that names a node (`node_id` non-zero, the protocol
    /// version already checked). Once accepted, the connection speaks for
    /// `hello.node_id`: every raft message and snapshot chunk on it must
    /// name that sender.
    ///
    /// # Errors
    ///
    /// Why the handshake is refused (another cluster, not a member, this node
    /// itself, ...); the connection is closed.
    fn peer_hello(
        &self,
        hello: Hello,
    ) -> impl Future<Output = std::result::Result<(), String>> + Send {
        drop(hello);
        async { Err("this node does not accept peer connections".to_owned()) }
    }

    /// Takes a batch of raft messages from `peer`, the member whose
    /// handshake opened the connection (`message.from` is `peer`). Called in
    /// arrival order for each connection; the connection is not read while
    /// this runs.
    ///
    /// # Errors
    ///
    /// A message the connection was not entitled to send; the connection is
    /// closed, and nothing of the batch should have taken effect.
    fn peer_message(
        &self,
        peer: u64,
        message: PeerMessage,
    ) -> impl Future<Output = std::result::Result<(), String>> + Send {
        drop((peer, message));
        async { Err("this node does not accept raft messages".to_owned()) }
    }

    /// The connection of `peer` (opened with a proven handshake) has ended:
    /// closed by the peer, broken, or refused for what it sent. Not called
    /// at shutdown. Must not block.
    fn peer_disconnected(&self, peer: u64) {
        let _ = peer;
    }

    /// Takes one frame of a snapshot transfer from `peer` (the handshake's
    /// member, `chunk.from`); the frames of one transfer arrive in order on
    /// one connection (see `SnapshotChunk` in the protocol). Returns the
    /// frame to send back, if any: the answer to an offer, the
    /// acknowledgement of the last chunk.
    ///
    /// # Errors
    ///
    /// An error message closes the connection, which the sender sees as a
    /// failed transfer.
    fn snapshot_chunk(
        &self,
        peer: u64,
        chunk: SnapshotChunk,
    ) -> impl Future<Output = std::result::Result<Option<SnapshotChunk>, String>> + Send {
        drop((peer, chunk));
        async { Err("this node does not accept snapshots".to_owned()) }
    }
}

/// Builds an error response.
#[must_use]
pub fn error_response(id: u64, code: ErrorCode, message: impl Into<String>) -> Response {
    let mut error = proto::Error::new();
    error.code = code.into();
    error.message = message.into();
    let mut response = Response::new();
    response.id = id;
    response.set_error(error);
    response
}

/// A bound listen socket, ready to serve.
#[derive(Debug)]
pub struct Listener {
    listener: TcpListener,
    options: Arc<Options>,
    counters: Arc<Counters>,
}

/// The accept queue a listening socket asks the kernel for (which caps it
/// at `net.core.somaxconn`, 4096 by default).
///
/// `std` and tokio ask for 128. A burst of more new connections than that
/// (hundreds of clients starting at once, a reconnect storm after a
/// failover) overflows the queue: the kernel drops the handshakes it has no
/// room for, and those clients retry only after TCP's initial retransmission
/// timeout, one second, which shows as one-second tail latency. Go's
/// listeners (etcd's) use `somaxconn`, and so does this.
pub const LISTEN_BACKLOG: u32 = 4096;

/// Binds a TCP listener to `addr` (each address it resolves to in turn, the
/// first that binds wins) with `SO_REUSEADDR`, as `TcpListener::bind` does,
/// but with an accept queue of [`LISTEN_BACKLOG`].
///
/// # Errors
///
/// The last address's bind or listen error, or the resolver's.
pub async fn bind_tcp(addr: impl ToSocketAddrs) -> std::io::Result<TcpListener> {
    let mut last = None;
    for a in tokio::net::lookup_host(addr).await? {
        let bound = (|| {
            let socket = if a.is_ipv4() {
                tokio::net::TcpSocket::new_v4()?
            } else {
                tokio::net::TcpSocket::new_v6()?
            };
            socket.set_reuseaddr(true)?;
            socket.bind(a)?;
            socket.listen(LISTEN_BACKLOG)
        })();
        match bound {
            Ok(l) => return Ok(l),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "the address resolved to nothing",
        )
    }))
}

impl Listener {
    /// Binds `addr` (with an accept queue of [`LISTEN_BACKLOG`]).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidOptions`] for bad options, [`Error::Bind`] when the
    /// address cannot be bound.
    pub async fn bind(
        addr: impl ToSocketAddrs + std::fmt::Debug,
        options: Options,
    ) -> Result<Self> {
        options.validate()?;
        let shown = format!("{addr:?}");
        let listener = bind_tcp(addr).await.map_err(|source| Error::Bind {
            addr: shown.trim_matches('"').to_owned(),
            source,
        })?;
        Ok(Listener {
            listener,
            options: Arc::new(options),
            counters: Arc::default(),
        })
    }

    /// Serves on an already bound socket.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidOptions`] for bad options.
    pub fn from_tcp(listener: TcpListener, options: Options) -> Result<Self> {
        options.validate()?;
        Ok(Listener {
            listener,
            options: Arc::new(options),
            counters: Arc::default(),
        })
    }

    /// How often this listener's limits were hit (shared: read it while
    /// [`Listener::run`] serves).
    #[must_use]
    pub fn counters(&self) -> Arc<Counters> {
        self.counters.clone()
    }

    /// The bound address (useful after binding port 0).
    ///
    /// # Errors
    ///
    /// [`Error::Io`] when the socket has no address.
    pub fn local_addr(&self) -> Result<SocketAddr> {
        Ok(self.listener.local_addr()?)
    }

    /// Accepts and serves connections until `shutdown` completes, then shuts
    /// down gracefully (see the module doc) and returns.
    ///
    /// Accept errors (e.g. out of file descriptors) are logged and retried
    /// with backoff; they never end the server.
    pub async fn run<S: Service>(self, service: Arc<S>, shutdown: impl Future<Output = ()>) {
        let token = CancellationToken::new();
        let limit = self
            .options
            .max_connections
            .map(|n| Arc::new(Semaphore::new(n)));
        let overflow = Arc::new(Semaphore::new(OVERFLOW_CONNECTIONS));
        let budget = Arc::new(Semaphore::new(
            self.options.max_receive_buffer / crate::connection::BUDGET_UNIT,
        ));
        let mut refusals = RefusalLog::default();
        let mut connections = JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                biased;
                () = &mut shutdown => break,
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
                (stream, addr) = accept(&self.listener) => {
                    let admission = match &limit {
                        None => Some(Admission::Within { _permit: None }),
                        Some(limit) => match limit.clone().try_acquire_owned() {
                            Ok(permit) => Some(Admission::Within { _permit: Some(permit) }),
                            Err(_) => overflow
                                .clone()
                                .try_acquire_owned()
                                .ok()
                                .map(|p| Admission::Over { _permit: p }),
                        },
                    };
                    let Some(admission) = admission else {
                        // Over the limit and its overflow: not even told.
                        Counters::bump(&self.counters.connections_refused);
                        refusals.note(&self.options, addr);
                        drop(stream);
                        continue;
                    };
                    if matches!(admission, Admission::Over { .. }) {
                        refusals.note(&self.options, addr);
                    }
                    let counters = self.counters.clone();
                    let handler = Handler {
                        service: service.clone(),
                        options: self.options.clone(),
                        shutdown: token.clone(),
                        budget: budget.clone(),
                        admission,
                        counters,
                    };
                    connections.spawn(async move {
                        match handler.run(stream).await {
                            Ok(()) => {}
                            Err(e @ (Error::Protocol(_) | Error::PeerAuth(_))) => {
                                tracing::warn!(%addr, error = %e, "connection closed");
                            }
                            Err(e) => {
                                tracing::debug!(%addr, error = %e, "connection closed with an error");
                            }
                        }
                    });
                }
            }
        }
        // Closing the socket refuses new connections from here on.
        drop(self.listener);
        token.cancel();
        let grace = self.options.shutdown_grace + Duration::from_millis(500);
        let all_done = async { while connections.join_next().await.is_some() {} };
        if tokio::time::timeout(grace, all_done).await.is_err() {
            tracing::warn!("connections still open after the shutdown grace period; aborting them");
            connections.shutdown().await;
        }
    }
}

/// Accepts one connection, retrying failures with capped exponential
/// backoff.
async fn accept(listener: &TcpListener) -> (TcpStream, SocketAddr) {
    let mut backoff = Duration::from_millis(5);
    loop {
        match listener.accept().await {
            Ok(accepted) => return accepted,
            Err(e) => {
                tracing::warn!(error = %e, ?backoff, "accept failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}

/// Logs connections refused for the connection limit, at most once per
/// interval (a flood must not flood the log too).
#[derive(Default)]
struct RefusalLog {
    last: Option<std::time::Instant>,
    since: u64,
}

impl RefusalLog {
    const INTERVAL: Duration = Duration::from_secs(10);

    fn note(&mut self, options: &Options, addr: SocketAddr) {
        self.since += 1;
        if self.last.is_some_and(|t| t.elapsed() < Self::INTERVAL) {
            return;
        }
        tracing::warn!(
            limit = options.max_connections,
            refused = self.since,
            latest = %addr,
            "connection limit reached: refusing client connections"
        );
        self.last = Some(std::time::Instant::now());
        self.since = 0;
    }
}

/// How a connection was let in; the permit returns when the handler ends.
pub(crate) enum Admission {
    /// Within the connection limit (or there is none).
    Within {
        _permit: Option<OwnedSemaphorePermit>,
    },
    /// Over the limit: a client is told so, a peer is served.
    Over { _permit: OwnedSemaphorePermit },
}
