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
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use tokio::net::{TcpListener, TcpStream, ToSocketAddrs};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::connection::{Connection, FrameWriter};
use crate::error::{Error, Result};
use crate::options::{OVERFLOW_CONNECTIONS, Options};
use crate::proto::{
    self, ErrorCode, Frame, Hello, PeerMessage, Request, Response, SnapshotChunk, frame,
};

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

    /// Takes one chunk of a snapshot from `peer` (the handshake's member,
    /// `chunk.from`); chunks of one snapshot arrive in order on one
    /// connection.
    ///
    /// # Errors
    ///
    /// An error message closes the connection, which the sender sees as a
    /// failed transfer.
    fn snapshot_chunk(
        &self,
        peer: u64,
        chunk: SnapshotChunk,
    ) -> impl Future<Output = std::result::Result<(), String>> + Send {
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
}

impl Listener {
    /// Binds `addr`.
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
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| Error::Bind {
                addr: shown.trim_matches('"').to_owned(),
                source,
            })?;
        Ok(Listener {
            listener,
            options: Arc::new(options),
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
        })
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
                        refusals.note(&self.options, addr);
                        drop(stream);
                        continue;
                    };
                    if matches!(admission, Admission::Over { .. }) {
                        refusals.note(&self.options, addr);
                    }
                    let handler = Handler {
                        service: service.clone(),
                        options: self.options.clone(),
                        shutdown: token.clone(),
                        budget: budget.clone(),
                        admission,
                    };
                    connections.spawn(async move {
                        match handler.run(stream).await {
                            Ok(()) => {}
                            Err(e @ Error::Protocol(_)) => {
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
enum Admission {
    /// Within the connection limit (or there is none).
    Within {
        _permit: Option<OwnedSemaphorePermit>,
    },
    /// Over the limit: a client is told so, a peer is served.
    Over { _permit: OwnedSemaphorePermit },
}

/// Serves one connection.
struct Handler<S> {
    service: Arc<S>,
    options: Arc<Options>,
    shutdown: CancellationToken,
    /// The listener's receive budget for large frames.
    budget: Arc<Semaphore>,
    admission: Admission,
}

/// What a connection has shown itself to be, which decides the frames it
/// may send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Speaker {
    /// Nothing read yet: a client request or a `Hello` may come.
    Unknown,
    /// A client: requests only.
    Client,
    /// The member whose handshake was accepted: peer traffic from it only.
    Peer(u64),
}

impl Speaker {
    /// The member a peer frame naming `from` may come from.
    fn peer(self, from: u64, what: &str) -> Result<u64> {
        match self {
            Speaker::Peer(peer) if peer == from => Ok(peer),
            Speaker::Peer(peer) => Err(Error::Protocol(format!(
                "{what} from node {from} on the connection of node {peer}"
            ))),
            _ => Err(Error::Protocol(format!(
                "{what} on a connection without a peer handshake"
            ))),
        }
    }
}

/// A frame to write; the permit, if any, is returned once it is written.
type Outgoing = (Frame, Option<OwnedSemaphorePermit>);

impl<S: Service> Handler<S> {
    async fn run(self, stream: TcpStream) -> Result<()> {
        let (mut reader, writer) = Connection::new(stream, &self.options).into_split();
        reader.set_receive_budget(self.budget.clone());
        let over_limit = matches!(self.admission, Admission::Over { .. });
        let (tx, rx) = mpsc::unbounded_channel::<Outgoing>();
        let max_frame_length = self.options.max_frame_length;
        let mut writer = AbortOnDrop(tokio::spawn(write_responses(writer, rx, max_frame_length)));
        // A permit is held from reading a request until its response is
        // written: this bounds both the handler tasks and the responses
        // waiting for a slow reader.
        let in_flight = Arc::new(Semaphore::new(self.options.max_in_flight_per_connection));
        let mut requests = JoinSet::new();
        let mut speaker = Speaker::Unknown;

        loop {
            let permit = tokio::select! {
                biased;
                () = self.shutdown.cancelled() => break,
                permit = in_flight.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break, // never closed
                },
            };
            // Until a connection has shown what it is (and, over the limit,
            // for as long as it is not a peer) its next frame must come in
            // time.
            let timed =
                speaker == Speaker::Unknown || (over_limit && !matches!(speaker, Speaker::Peer(_)));
            let frame = tokio::select! {
                biased;
                () = self.shutdown.cancelled() => break,
                done = &mut writer.0 => return writer_ended(done),
                frame = read_within(&mut reader, timed.then_some(self.options.handshake_timeout)) => {
                    match frame {
                        Err(Error::Timeout(why)) if !reader.in_frame() => {
                            tracing::debug!(%why, "closing a connection that sent nothing");
                            return Ok(());
                        }
                        frame => frame?,
                    }
                }
            };
            // Reap finished request tasks so the set does not grow.
            while requests.try_join_next().is_some() {}
            let Some(frame) = frame else { break };
            match frame.body {
                Some(frame::Body::Request(request)) => {
                    if let Speaker::Peer(peer) = speaker {
                        return Err(Error::Protocol(format!(
                            "client request on the peer connection of node {peer}"
                        )));
                    }
                    speaker = Speaker::Client;
                    if over_limit {
                        let limit = self.options.max_connections.unwrap_or_default();
                        let refusal = error_response(
                            request.id,
                            ErrorCode::UNAVAILABLE,
                            format!(
                                "too many connections: this node serves at most {limit} at once; \
                                 nothing was applied, try again later"
                            ),
                        );
                        let mut frame = Frame::new();
                        frame.set_response(refusal);
                        let _ = tx.send((frame, Some(permit)));
                        break;
                    }
                    let service = self.service.clone();
                    let tx = tx.clone();
                    requests.spawn(async move {
                        let response = answer(&*service, request).await;
                        let mut frame = Frame::new();
                        frame.set_response(response);
                        // Fails only when the writer is gone, i.e. the
                        // connection is being torn down.
                        let _ = tx.send((frame, Some(permit)));
                    });
                }
                Some(frame::Body::Peer(message)) => {
                    let peer = speaker.peer(message.from, "raft messages")?;
                    self.service
                        .peer_message(peer, message)
                        .await
                        .map_err(|e| Error::Protocol(format!("raft messages refused: {e}")))?;
                }
                Some(frame::Body::SnapshotChunk(chunk)) => {
                    let peer = speaker.peer(chunk.from, "snapshot chunk")?;
                    let ack = chunk.last.then(|| snapshot_ack(&chunk));
                    self.service
                        .snapshot_chunk(peer, chunk)
                        .await
                        .map_err(|e| Error::Protocol(format!("snapshot chunk refused: {e}")))?;
                    if let Some(ack) = ack {
                        let _ = tx.send((ack, None));
                    }
                }
                Some(frame::Body::Hello(hello)) => {
                    speaker = self.handshake(speaker, hello).await?;
                }
                Some(frame::Body::Response(_)) => {
                    return Err(Error::Protocol("a server does not take responses".into()));
                }
                _ => return Err(Error::Protocol("empty frame".into())),
            }
        }

        // Stop reading; let in-flight requests finish and their responses be
        // written. The writer ends (flushing, then closing the socket) when
        // the last sender is gone.
        drop(reader);
        drop(tx);
        let grace = self.options.shutdown_grace;
        let shutdown = self.shutdown.clone();
        let deadline = async move {
            shutdown.cancelled().await;
            tokio::time::sleep(grace).await;
        };
        tokio::select! {
            done = &mut writer.0 => writer_ended(done),
            () = deadline => {
                tracing::debug!("in-flight requests outlived the shutdown grace period");
                Ok(())
            }
        }
        // Dropping `requests` and `writer` aborts whatever is left.
    }
}

impl<S: Service> Handler<S> {
    /// A `Hello` is only valid as the first frame. One naming no node is a
    /// client introducing itself; one naming a node must pass the service's
    /// check before any peer traffic is taken.
    async fn handshake(&self, speaker: Speaker, hello: Hello) -> Result<Speaker> {
        if speaker != Speaker::Unknown {
            return Err(Error::Protocol("hello after the first frame".into()));
        }
        if hello.node_id == 0 {
            return Ok(Speaker::Client);
        }
        if hello.protocol_version != crate::PROTOCOL_VERSION {
            return Err(Error::Protocol(format!(
                "peer handshake of node {} refused: protocol version {}, this node speaks {}",
                hello.node_id,
                hello.protocol_version,
                crate::PROTOCOL_VERSION
            )));
        }
        let peer = hello.node_id;
        self.service
            .peer_hello(hello)
            .await
            .map_err(|e| Error::Protocol(format!("peer handshake of node {peer} refused: {e}")))?;
        Ok(Speaker::Peer(peer))
    }
}

/// Reads a frame, within `wait` if given.
async fn read_within(
    reader: &mut crate::connection::FrameReader,
    wait: Option<Duration>,
) -> Result<Option<Frame>> {
    match wait {
        None => reader.read_frame().await,
        Some(wait) => tokio::time::timeout(wait, reader.read_frame())
            .await
            .unwrap_or_else(|_| {
                Err(Error::Timeout(format!(
                    "no whole frame within the handshake timeout of {wait:?}"
                )))
            }),
    }
}

fn writer_ended(done: std::result::Result<Result<()>, tokio::task::JoinError>) -> Result<()> {
    match done {
        Ok(result) => result,
        Err(e) => Err(Error::Io(std::io::Error::other(e))),
    }
}

/// Runs the service on one request, never unwinding.
async fn answer<S: Service>(service: &S, request: Request) -> Response {
    let id = request.id;
    if request.cmd.is_none() {
        return error_response(id, ErrorCode::INVALID_ARGUMENT, "request without a command");
    }
    match AssertUnwindSafe(service.handle(request))
        .catch_unwind()
        .await
    {
        Ok(mut response) => {
            response.id = id;
            response
        }
        Err(_) => {
            let mut response =
                error_response(id, ErrorCode::INTERNAL, "the request handler panicked");
            response.mut_error().outcome_unknown = true;
            response
        }
    }
}

/// The acknowledgement of a fully received snapshot: a data-less last chunk
/// sent back to the sender.
fn snapshot_ack(chunk: &SnapshotChunk) -> Frame {
    let mut ack = SnapshotChunk::new();
    ack.from = chunk.to;
    ack.to = chunk.from;
    ack.snapshot_id = chunk.snapshot_id;
    ack.offset = chunk.offset + chunk.data.len() as u64;
    ack.last = true;
    let mut frame = Frame::new();
    frame.set_snapshot_chunk(ack);
    frame
}

/// Writes frames as they arrive, batching those that are ready together into
/// one flush.
async fn write_responses(
    mut writer: FrameWriter,
    mut rx: mpsc::UnboundedReceiver<Outgoing>,
    max_frame_length: usize,
) -> Result<()> {
    while let Some((frame, permit)) = rx.recv().await {
        feed(&mut writer, frame, max_frame_length).await?;
        drop(permit);
        while let Ok((frame, permit)) = rx.try_recv() {
            feed(&mut writer, frame, max_frame_length).await?;
            drop(permit);
        }
        writer.flush().await?;
    }
    writer.shutdown().await
}

async fn feed(writer: &mut FrameWriter, frame: Frame, max_frame_length: usize) -> Result<()> {
    let id = match &frame.body {
        Some(frame::Body::Response(response)) => response.id,
        _ => 0,
    };
    match writer.feed_frame(frame).await {
        Err(Error::FrameTooLarge { len, .. }) => {
            // The client still gets an answer to this id.
            let mut response = error_response(
                id,
                ErrorCode::INTERNAL,
                format!("response of {len} bytes exceeds the frame limit of {max_frame_length}"),
            );
            response.mut_error().outcome_unknown = true;
            let mut frame = Frame::new();
            frame.set_response(response);
            writer.feed_frame(frame).await
        }
        other => other,
    }
}

/// Aborts the task when dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}
