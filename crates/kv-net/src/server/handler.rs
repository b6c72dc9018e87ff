//! Serving one connection: what it may send, its requests handled
//! concurrently, its peer frames in order, its responses written as they
//! complete (see the parent module's doc).

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::outgoing::{
    AbortOnDrop, Held, Outgoing, RESPONSE_RESERVE, take_bytes, write_responses, writer_ended,
};
use super::{Admission, Counters, Service, error_response};
use crate::auth::{Binding, NONCE_LEN, Side};
use crate::connection::Connection;
use crate::error::{Error, Result};
use crate::options::{IN_FLIGHT_UNIT, Options, Serves};
use crate::proto::{ErrorCode, Frame, Hello, Request, Response, frame};

/// Serves one connection.
pub(super) struct Handler<S> {
    pub(super) service: Arc<S>,
    pub(super) options: Arc<Options>,
    pub(super) shutdown: CancellationToken,
    /// The listener's receive budget for large frames.
    pub(super) budget: Arc<Semaphore>,
    pub(super) admission: Admission,
    pub(super) counters: Arc<Counters>,
}

/// What a connection has shown itself to be, which decides the frames it
/// may send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Speaker {
    /// Nothing read yet: a client request or a `Hello` may come.
    Unknown,
    /// A client: requests only.
    Client,
    /// A member that has been sent the challenge of the peer secret and
    /// must answer it before anything else.
    Proving {
        peer: u64,
        cluster_id: u64,
        dialer_nonce: [u8; NONCE_LEN],
        acceptor_nonce: [u8; NONCE_LEN],
    },
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

impl<S: Service> Handler<S> {
    pub(super) async fn run(self, stream: TcpStream) -> Result<()> {
        let Some((conn, plain_under_tls)) = self.open(stream).await? else {
            return Ok(());
        };
        let (mut reader, writer) = conn.into_split();
        reader.set_receive_budget(self.budget.clone());
        let over_limit = matches!(self.admission, Admission::Over { .. });
        let (tx, rx) = mpsc::unbounded_channel::<Outgoing>();
        let max_frame_length = self.options.max_frame_length;
        let mut writer = AbortOnDrop(tokio::spawn(write_responses(
            writer,
            rx,
            max_frame_length,
            self.options.frame_timeout,
            self.counters.clone(),
        )));
        // A permit is held from reading a request until its response is
        // written: this bounds both the handler tasks and the responses
        // waiting for a slow reader.
        let max_in_flight = self.options.max_in_flight_per_connection;
        let in_flight = Arc::new(Semaphore::new(max_in_flight));
        // Bytes of requests being handled and of responses not yet written.
        let total_units =
            u32::try_from(self.options.max_bytes_in_flight_per_connection / IN_FLIGHT_UNIT)
                .unwrap_or(u32::MAX);
        let bytes = Arc::new(Semaphore::new(total_units as usize));
        let mut requests = JoinSet::new();
        let mut speaker = Speaker::Unknown;
        let mut gone = PeerGone {
            service: self.service.clone(),
            shutdown: self.shutdown.clone(),
            peer: 0,
        };

        loop {
            let permit = match in_flight.clone().try_acquire_owned() {
                Ok(permit) => permit,
                Err(_) => {
                    Counters::bump(&self.counters.in_flight_waits);
                    tokio::select! {
                        biased;
                        () = self.shutdown.cancelled() => break,
                        permit = in_flight.clone().acquire_owned() => match permit {
                            Ok(permit) => permit,
                            Err(_) => break, // never closed
                        },
                    }
                }
            };
            // Until a connection has shown what it is (and, over the limit,
            // for as long as it is not a peer) its next frame must come in
            // time.
            let timed = matches!(speaker, Speaker::Unknown | Speaker::Proving { .. })
                || (over_limit && !matches!(speaker, Speaker::Peer(_)));
            // A client with nothing in flight (this loop holds one permit)
            // that starts no frame within the idle timeout is closed; with
            // requests in flight the timer only looks again.
            let idle_timer = self
                .options
                .idle_timeout
                .filter(|_| !timed && speaker == Speaker::Client);
            let quiet = in_flight.available_permits() + 1 == max_in_flight;
            let frame = tokio::select! {
                biased;
                () = self.shutdown.cancelled() => break,
                done = &mut writer.0 => return writer_ended(done),
                () = tokio::time::sleep(idle_timer.unwrap_or_default()), if idle_timer.is_some() => {
                    if quiet && !reader.in_frame() {
                        Counters::bump(&self.counters.idle_closed);
                        tracing::debug!(?idle_timer, "closing an idle client connection");
                        return Ok(());
                    }
                    continue;
                }
                frame = read_within(&mut reader, timed.then_some(self.options.handshake_timeout)) => {
                    match frame {
                        Err(Error::Timeout(_)) | Ok(None) if matches!(speaker, Speaker::Proving { .. }) => {
                            Counters::bump(&self.counters.handshake_timeouts);
                            return Err(unproven(speaker));
                        }
                        Err(Error::Timeout(why)) if !reader.in_frame() => {
                            Counters::bump(&self.counters.handshake_timeouts);
                            tracing::debug!(%why, "closing a connection that sent nothing");
                            return Ok(());
                        }
                        Err(e @ Error::Timeout(_)) => {
                            Counters::bump(if timed {
                                &self.counters.handshake_timeouts
                            } else {
                                &self.counters.frame_timeouts
                            });
                            return Err(e);
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
                    if let Speaker::Peer(peer) | Speaker::Proving { peer, .. } = speaker {
                        return Err(Error::Protocol(format!(
                            "client request on the peer connection of node {peer}"
                        )));
                    }
                    speaker = Speaker::Client;
                    if self.options.serves == Serves::Peers {
                        let refusal = error_response(
                            request.id,
                            ErrorCode::INVALID_ARGUMENT,
                            "this is the node's peer port: clients use its client address \
                             (kvd --listen); nothing was applied",
                        );
                        let mut frame = Frame::new();
                        frame.set_response(refusal);
                        let _ = tx.send((frame, Held::count(permit)));
                        break;
                    }
                    if plain_under_tls {
                        let refusal = error_response(
                            request.id,
                            ErrorCode::PERMISSION_DENIED,
                            "this node takes clients over TLS only (kvctl --cacert FILE); \
                             nothing was applied",
                        );
                        let mut frame = Frame::new();
                        frame.set_response(refusal);
                        let _ = tx.send((frame, Held::count(permit)));
                        break;
                    }
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
                        Counters::bump(&self.counters.connections_refused);
                        let _ = tx.send((frame, Held::count(permit)));
                        break;
                    }
                    // The request's bytes (at least a reservation for its
                    // response) are held while it is handled: the
                    // connection is not read further until they fit, and,
                    // the semaphore being fair, not while responses wait
                    // for room either.
                    let len = reader.last_frame_len().max(RESPONSE_RESERVE);
                    let request_bytes = tokio::select! {
                        biased;
                        () = self.shutdown.cancelled() => break,
                        held = take_bytes(&bytes, total_units, len, &self.counters) => held,
                    };
                    let service = self.service.clone();
                    let tx = tx.clone();
                    let (bytes, counters) = (bytes.clone(), self.counters.clone());
                    requests.spawn(async move {
                        let response = answer(&*service, request).await;
                        drop(request_bytes);
                        // The response's bytes are held until it is written:
                        // responses a client does not read stop its
                        // connection from being read too.
                        let len = protobuf::Message::compute_size(&response);
                        let len = usize::try_from(len).unwrap_or(usize::MAX);
                        let response_bytes = take_bytes(&bytes, total_units, len, &counters).await;
                        let mut frame = Frame::new();
                        frame.set_response(response);
                        // Fails only when the writer is gone, i.e. the
                        // connection is being torn down.
                        let _ = tx.send((
                            frame,
                            Held {
                                _count: Some(permit),
                                _bytes: response_bytes,
                            },
                        ));
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
                    let reply = self
                        .service
                        .snapshot_chunk(peer, chunk)
                        .await
                        .map_err(|e| Error::Protocol(format!("snapshot chunk refused: {e}")))?;
                    if let Some(reply) = reply {
                        let mut frame = Frame::new();
                        frame.set_snapshot_chunk(reply);
                        let _ = tx.send((frame, Held::default()));
                    }
                }
                Some(frame::Body::Hello(hello)) => {
                    if hello.node_id != 0 {
                        self.peer_port_check(hello.node_id, plain_under_tls)?;
                    }
                    speaker = self.handshake(speaker, hello, &tx).await?;
                    if let Speaker::Peer(peer) = speaker {
                        gone.peer = peer;
                    }
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
    /// The connection on `stream`, and whether it is plaintext on a node
    /// that serves clients over TLS (then only a peer link may use it).
    /// `None` for a connection that closed or sent nothing in time.
    async fn open(&self, stream: TcpStream) -> Result<Option<(Connection, bool)>> {
        let Some(tls) = &self.options.server_tls else {
            return Ok(Some((Connection::new(stream, &self.options), false)));
        };
        let wait = self.options.handshake_timeout;
        let mut first = [0u8; 1];
        match tokio::time::timeout(wait, stream.peek(&mut first)).await {
            Err(_) => {
                Counters::bump(&self.counters.handshake_timeouts);
                return Ok(None);
            }
            Ok(Ok(0)) => return Ok(None),
            Ok(Err(e)) => return Err(Error::Io(e)),
            Ok(Ok(_)) => {}
        }
        if first[0] != crate::tls::HANDSHAKE_BYTE {
            return Ok(Some((Connection::new(stream, &self.options), true)));
        }
        let tls = tokio::time::timeout(wait, tls.acceptor().accept(stream))
            .await
            .map_err(|_| {
                Counters::bump(&self.counters.handshake_timeouts);
                Error::Timeout(format!("TLS handshake not done within {wait:?}"))
            })?
            .map_err(|e| Error::Protocol(format!("TLS handshake failed: {e}")))?;
        Ok(Some((
            Connection::from_tls(tokio_rustls::TlsStream::Server(tls), &self.options),
            false,
        )))
    }

    /// Refuses a peer handshake on a port for clients only, and a
    /// plaintext one on a peer port that takes mutual TLS.
    fn peer_port_check(&self, node: u64, plain_under_tls: bool) -> Result<()> {
        match self.options.serves {
            Serves::Clients => Err(Error::PeerAuth(format!(
                "peer handshake of node {node} on the client port refused: peers use the \
                 peer port (kvd --peer-listen)"
            ))),
            Serves::Peers if plain_under_tls => Err(Error::PeerAuth(format!(
                "plaintext peer handshake of node {node} refused: this port takes peers over \
                 mutual TLS only (kvd --peer-cert-file on every node)"
            ))),
            _ => Ok(()),
        }
    }

    /// A `Hello` is only valid as the first frame (and, with a peer secret,
    /// as the answer to its challenge). One naming no node is a client
    /// introducing itself; one naming a node must pass the service's check,
    /// and prove the peer secret if one is set ([`crate::auth`]), before any
    /// peer traffic is taken.
    async fn handshake(
        &self,
        speaker: Speaker,
        hello: Hello,
        tx: &mpsc::UnboundedSender<Outgoing>,
    ) -> Result<Speaker> {
        if let Speaker::Proving {
            peer,
            cluster_id,
            dialer_nonce,
            acceptor_nonce,
        } = speaker
        {
            let secret = self
                .options
                .peer_secret
                .as_ref()
                .ok_or_else(|| Error::Protocol("no peer secret to check".into()))?;
            let binding = Binding {
                cluster_id,
                dialer: peer,
                acceptor: self.service.local_node_id(),
                dialer_nonce: &dialer_nonce,
                acceptor_nonce: &acceptor_nonce,
            };
            if hello.node_id != peer || !secret.verify(Side::Dialer, &binding, &hello.proof) {
                return Err(Error::PeerAuth(format!(
                    "peer handshake of node {peer} refused: wrong proof of the peer secret"
                )));
            }
            return Ok(Speaker::Peer(peer));
        }
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
        let (peer, cluster_id) = (hello.node_id, hello.cluster_id);
        let dialer_nonce = hello.nonce.clone();
        self.service
            .peer_hello(hello)
            .await
            .map_err(|e| Error::Protocol(format!("peer handshake of node {peer} refused: {e}")))?;
        let Some(secret) = &self.options.peer_secret else {
            return Ok(Speaker::Peer(peer));
        };
        let dialer_nonce: [u8; NONCE_LEN] = dialer_nonce.as_ref().try_into().map_err(|_| {
            Error::PeerAuth(format!(
                "peer handshake of node {peer} refused: no nonce (is the peer secret set on it?)"
            ))
        })?;
        let acceptor_nonce = crate::auth::nonce();
        let me = self.service.local_node_id();
        let binding = Binding {
            cluster_id,
            dialer: peer,
            acceptor: me,
            dialer_nonce: &dialer_nonce,
            acceptor_nonce: &acceptor_nonce,
        };
        let mut challenge = Hello::new();
        challenge.protocol_version = crate::PROTOCOL_VERSION;
        challenge.node_id = me;
        challenge.cluster_id = cluster_id;
        challenge.nonce = acceptor_nonce.to_vec().into();
        challenge.proof = secret.prove(Side::Acceptor, &binding).into();
        let mut frame = Frame::new();
        frame.set_hello(challenge);
        tx.send((frame, Held::default()))
            .map_err(|_| Error::Protocol("connection closing".into()))?;
        Ok(Speaker::Proving {
            peer,
            cluster_id,
            dialer_nonce,
            acceptor_nonce,
        })
    }
}

/// The error of a connection that was challenged and did not answer.
/// Tells the service when the connection of a proven peer ends, however it
/// ends (but not at shutdown).
struct PeerGone<S: Service> {
    service: Arc<S>,
    shutdown: CancellationToken,
    peer: u64,
}

impl<S: Service> Drop for PeerGone<S> {
    fn drop(&mut self) {
        if self.peer != 0 && !self.shutdown.is_cancelled() {
            self.service.peer_disconnected(self.peer);
        }
    }
}

fn unproven(speaker: Speaker) -> Error {
    let peer = match speaker {
        Speaker::Proving { peer, .. } | Speaker::Peer(peer) => peer,
        _ => 0,
    };
    Error::PeerAuth(format!(
        "node {peer} did not prove the peer secret (none, or another one, set on it?)"
    ))
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
