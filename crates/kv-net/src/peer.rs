//! Links to other nodes: raft messages and snapshots.
//!
//! A [`PeerSender`] owns a background task holding at most one connection to
//! the peer. It connects on the first message, sends a [`Hello`] (the peer
//! handshake: this node's [`PeerIdentity`]), then writes
//! queued raft messages batched into `PeerMessage` frames (everything queued
//! at once goes in one frame, up to `Options::peer_max_batch` messages and
//! the frame size limit), flushing when the queue is empty. Raft tolerates
//! lost messages, so the link never queues without bound: while the peer is
//! unreachable (a connect failed or the connection broke, until the backoff
//! delay has passed) and when the bounded queue is full, messages are dropped
//! and the peer is reported unreachable through the callback, so raft can
//! probe it instead of streaming to it. Reconnect delays grow exponentially
//! from `peer_backoff_initial` to `peer_backoff_max` and reset on success.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;

use crate::auth;
use crate::connection::{Connection, FrameReader, FrameWriter};
use crate::error::{Error, Result};
use crate::options::Options;
use crate::proto::{Frame, Hello, PeerMessage, frame};

/// Who this node is to its peers: the `Hello` that opens every peer
/// connection (raft links and snapshot transfers alike) carries it, and the
/// receiver accepts raft traffic on a connection only once the cluster id
/// matches its own and the node id is one of its members.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PeerIdentity {
    /// The cluster, fixed when it was bootstrapped.
    pub cluster_id: u64,
    /// This node's raft id (non-zero).
    pub node_id: u64,
}

impl PeerIdentity {
    /// The handshake frame.
    #[must_use]
    pub fn hello_frame(&self) -> Frame {
        let mut hello = Hello::new();
        hello.protocol_version = crate::PROTOCOL_VERSION;
        hello.node_id = self.node_id;
        hello.cluster_id = self.cluster_id;
        let mut frame = Frame::new();
        frame.set_hello(hello);
        frame
    }
}

/// The dialing side of the peer handshake on a new connection to node `to`:
/// the `Hello`, and with a peer secret the challenge-response of
/// [`crate::auth`] (the answer checked, the proof sent). The `Hello` alone
/// may still be buffered on return.
///
/// # Errors
///
/// [`Error::PeerAuth`] when `to` does not answer the challenge in time,
/// answers as another node, or cannot prove the secret; I/O errors.
pub(crate) async fn open_peer(
    reader: &mut FrameReader,
    writer: &mut FrameWriter,
    from: PeerIdentity,
    to: u64,
    options: &Options,
) -> Result<()> {
    let mut hello = from.hello_frame();
    let Some(secret) = &options.peer_secret else {
        return writer.feed_frame(hello).await;
    };
    let dialer_nonce = auth::nonce();
    if let Some(frame::Body::Hello(h)) = hello.body.as_mut() {
        h.nonce = dialer_nonce.to_vec().into();
    }
    writer.write_frame(hello).await?;
    let wait = options.handshake_timeout;
    let answer = tokio::time::timeout(wait, reader.read_frame())
        .await
        .map_err(|_| {
            Error::PeerAuth(format!(
                "node {to} sent no challenge within {wait:?} (is the same peer secret set on it?)"
            ))
        })??;
    let Some(Frame {
        body: Some(frame::Body::Hello(challenge)),
        ..
    }) = answer
    else {
        return Err(Error::PeerAuth(format!(
            "node {to} refused the peer handshake (another cluster, not a member, or no peer secret set on it)"
        )));
    };
    if challenge.node_id != to || challenge.cluster_id != from.cluster_id {
        return Err(Error::PeerAuth(format!(
            "dialed node {to} of cluster {:016x}, answered by node {} of cluster {:016x}",
            from.cluster_id, challenge.node_id, challenge.cluster_id
        )));
    }
    let binding = auth::Binding {
        cluster_id: from.cluster_id,
        dialer: from.node_id,
        acceptor: to,
        dialer_nonce: &dialer_nonce,
        acceptor_nonce: &challenge.nonce,
    };
    if !secret.verify(auth::Side::Acceptor, &binding, &challenge.proof) {
        return Err(Error::PeerAuth(format!(
            "node {to} could not prove the peer secret: the secrets differ"
        )));
    }
    let mut proof = Hello::new();
    proof.protocol_version = crate::PROTOCOL_VERSION;
    proof.node_id = from.node_id;
    proof.cluster_id = from.cluster_id;
    proof.proof = secret.prove(auth::Side::Dialer, &binding).into();
    let mut frame = Frame::new();
    frame.set_hello(proof);
    writer.feed_frame(frame).await
}

/// Called with the peer's id when messages to it were dropped.
pub type UnreachableFn = Arc<dyn Fn(u64) + Send + Sync>;

/// Bytes a frame spends besides the messages' own bytes, per message and in
/// all (ids, tags, lengths), with room to spare.
const PER_MESSAGE_OVERHEAD: usize = 8;
const FRAME_OVERHEAD: usize = 64;

/// The sending side of a link to one peer. Dropping it stops the link.
pub struct PeerSender {
    to: u64,
    tx: mpsc::Sender<Bytes>,
    link: Arc<LinkState>,
    on_unreachable: UnreachableFn,
    task: tokio::task::AbortHandle,
}

impl std::fmt::Debug for PeerSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerSender")
            .field("to", &self.to)
            .field("connected", &self.is_connected())
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Default)]
struct LinkState {
    /// Messages are dropped on arrival (backing off after a failure).
    down: AtomicBool,
    connected: AtomicBool,
}

impl Drop for PeerSender {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl PeerSender {
    /// Starts a link from node `from` (whose identity opens each connection)
    /// to node `to` at `addr` (`host:port`).
    /// Nothing is dialed before the first message. `on_unreachable` must not
    /// block; it is called from [`PeerSender::send`] and from the link task.
    /// Must be called within a tokio runtime.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidOptions`].
    pub fn spawn(
        from: PeerIdentity,
        to: u64,
        addr: impl Into<String>,
        options: &Options,
        on_unreachable: impl Fn(u64) + Send + Sync + 'static,
    ) -> Result<Self> {
        options.validate()?;
        let (tx, rx) = mpsc::channel(options.peer_queue_capacity);
        let link = Arc::new(LinkState::default());
        let on_unreachable: UnreachableFn = Arc::new(on_unreachable);
        let task = Link {
            from,
            to,
            addr: addr.into(),
            options: options.clone(),
            rx,
            state: link.clone(),
            on_unreachable: on_unreachable.clone(),
        };
        let task = tokio::spawn(task.run()).abort_handle();
        Ok(PeerSender {
            to,
            tx,
            link,
            on_unreachable,
            task,
        })
    }

    /// The peer's id.
    #[must_use]
    pub fn peer_id(&self) -> u64 {
        self.to
    }

    /// True while a connection to the peer is established.
    #[must_use]
    pub fn is_connected(&self) -> bool {
        self.link.connected.load(Ordering::Relaxed)
    }

    /// Queues one serialized raft message without waiting. Returns false when
    /// it was dropped instead (link down or queue full), in which case the
    /// peer has been reported unreachable.
    pub fn send(&self, raft_message: Bytes) -> bool {
        if !self.link.down.load(Ordering::Relaxed) {
            match self.tx.try_send(raft_message) {
                Ok(()) => return true,
                Err(TrySendError::Full(_) | TrySendError::Closed(_)) => {}
            }
        }
        (self.on_unreachable)(self.to);
        false
    }
}

/// The link task.
struct Link {
    from: PeerIdentity,
    to: u64,
    addr: String,
    options: Options,
    rx: mpsc::Receiver<Bytes>,
    state: Arc<LinkState>,
    on_unreachable: UnreachableFn,
}

enum Ended {
    /// The sender is gone.
    Closed,
    /// The connection failed.
    Failed(Error),
}

impl Link {
    async fn run(mut self) {
        let mut backoff = self.options.peer_backoff_initial;
        loop {
            // Lazy: dial only when there is something to send.
            let Some(first) = self.rx.recv().await else {
                return;
            };
            let error = match Connection::connect(&self.addr, &self.options).await {
                Ok(conn) => {
                    backoff = self.options.peer_backoff_initial;
                    self.state.connected.store(true, Ordering::Relaxed);
                    let ended = self.run_connected(conn, first).await;
                    self.state.connected.store(false, Ordering::Relaxed);
                    match ended {
                        Ended::Closed => return,
                        Ended::Failed(e) => e,
                    }
                }
                Err(e) => {
                    drop(first);
                    let delay = backoff;
                    backoff = (backoff * 2).min(self.options.peer_backoff_max);
                    if crate::tls::is_refusal(&e) {
                        tracing::warn!(peer = self.to, addr = %self.addr, error = %e, ?delay, "peer refused (TLS)");
                    } else {
                        tracing::debug!(peer = self.to, addr = %self.addr, error = %e, ?delay, "peer link down");
                    }
                    if !self.back_off(delay).await {
                        return;
                    }
                    continue;
                }
            };
            if matches!(error, Error::PeerAuth(_)) || crate::tls::is_refusal(&error) {
                tracing::warn!(peer = self.to, addr = %self.addr, error = %error, "peer refused");
            } else {
                tracing::debug!(peer = self.to, addr = %self.addr, error = %error, "peer link broke");
            }
            if !self.back_off(self.options.peer_backoff_initial).await {
                return;
            }
        }
    }

    /// Drops what is queued and what arrives for `delay`, reporting the peer
    /// unreachable. False when the sender is gone.
    async fn back_off(&mut self, delay: Duration) -> bool {
        self.state.down.store(true, Ordering::Relaxed);
        (self.on_unreachable)(self.to);
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        let alive = loop {
            tokio::select! {
                () = &mut sleep => break true,
                message = self.rx.recv() => {
                    if message.is_none() {
                        break false;
                    }
                    (self.on_unreachable)(self.to);
                }
            }
        };
        self.state.down.store(false, Ordering::Relaxed);
        alive
    }

    async fn run_connected(&mut self, conn: Connection, first: Bytes) -> Ended {
        let (mut reader, mut writer) = conn.into_split();
        if let Err(e) = open_peer(&mut reader, &mut writer, self.from, self.to, &self.options).await
        {
            return Ended::Failed(e);
        }
        let budget = self.options.max_frame_length - FRAME_OVERHEAD;
        let mut carry = Some(first);
        loop {
            let first = match carry.take() {
                Some(message) => message,
                None => tokio::select! {
                    message = self.rx.recv() => match message {
                        Some(message) => message,
                        None => {
                            let _ = writer.shutdown().await;
                            return Ended::Closed;
                        }
                    },
                    // A peer never writes on this connection: anything read,
                    // or its end, means the connection is unusable.
                    read = reader.read_frame() => {
                        let e = match read {
                            Err(e) => e,
                            Ok(_) => Error::Protocol("peer closed the connection".into()),
                        };
                        return Ended::Failed(e);
                    }
                },
            };
            if first.len() + PER_MESSAGE_OVERHEAD > budget {
                tracing::warn!(
                    peer = self.to,
                    len = first.len(),
                    "raft message over the frame limit dropped"
                );
                (self.on_unreachable)(self.to);
                continue;
            }
            let mut size = first.len() + PER_MESSAGE_OVERHEAD;
            let mut batch = vec![first];
            while batch.len() < self.options.peer_max_batch {
                let Ok(message) = self.rx.try_recv() else {
                    break;
                };
                size += message.len() + PER_MESSAGE_OVERHEAD;
                if size > budget {
                    carry = Some(message);
                    break;
                }
                batch.push(message);
            }
            let mut message = PeerMessage::new();
            message.from = self.from.node_id;
            message.to = self.to;
            message.raft_messages = batch;
            let mut frame = Frame::new();
            frame.set_peer(message);
            if let Err(e) = writer.feed_frame(frame).await {
                return Ended::Failed(e);
            }
            if carry.is_none()
                && self.rx.is_empty()
                && let Err(e) = writer.flush().await
            {
                return Ended::Failed(e);
            }
        }
    }
}
