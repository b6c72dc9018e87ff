//! One pipelined client connection.
//!
//! [`ClientConn::call`] assigns the request id, registers a waiter, and hands
//! the frame to a writer task, which batches whatever is queued into one
//! flush. A reader task routes each response to its waiter by id. When the
//! connection fails, every waiter gets [`Error::ConnectionLost`] (the request
//! may have been applied) and later calls get [`Error::NotSent`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::{mpsc, oneshot};

use crate::connection::{Connection, FrameReader, FrameWriter};
use crate::error::{Error, Result};
use crate::options::Options;
use crate::proto::{Frame, Request, Response, frame};

/// A pipelined connection to a server. Cheap to clone; all clones share the
/// connection, which closes when the last clone is dropped.
#[derive(Debug, Clone)]
pub struct ClientConn {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    shared: Arc<Shared>,
    outgoing: mpsc::UnboundedSender<(u64, Frame)>,
    next_id: AtomicU64,
    reader: tokio::task::AbortHandle,
    writer: tokio::task::AbortHandle,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.reader.abort();
        self.writer.abort();
    }
}

type Waiter = oneshot::Sender<Result<Response>>;

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    waiters: HashMap<u64, Waiter>,
    /// Why the connection is closed, once it is.
    closed: Option<String>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn take_waiter(&self, id: u64) -> Option<Waiter> {
        self.lock().waiters.remove(&id)
    }

    /// Marks the connection closed and fails every pending call.
    fn fail_all(&self, reason: &str) {
        let waiters = {
            let mut state = self.lock();
            state.closed.get_or_insert_with(|| reason.to_owned());
            std::mem::take(&mut state.waiters)
        };
        for (_, waiter) in waiters {
            let _ = waiter.send(Err(Error::ConnectionLost(reason.to_owned())));
        }
    }
}

impl ClientConn {
    /// Connects to `addr` (`host:port`).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidOptions`]; [`Error::Connect`] when the connection
    /// cannot be established within `options.connect_timeout`.
    pub async fn connect(addr: &str, options: &Options) -> Result<Self> {
        options.validate()?;
        let conn = Connection::connect(addr, options).await?;
        Ok(ClientConn::new(conn))
    }

    /// Takes over an established connection. Must be called within a tokio
    /// runtime.
    #[must_use]
    pub fn new(conn: Connection) -> Self {
        let shared = Arc::new(Shared::default());
        let (reader, writer) = conn.into_split();
        let (outgoing, rx) = mpsc::unbounded_channel();
        // Introduce the connection as a client's at once, so that the
        // server's handshake timeout never closes it while it is idle.
        let mut hello = crate::proto::Hello::new();
        hello.protocol_version = crate::PROTOCOL_VERSION;
        let mut frame = Frame::new();
        frame.set_hello(hello);
        let _ = outgoing.send((0, frame));
        let reader = tokio::spawn(read_responses(reader, shared.clone())).abort_handle();
        let writer = tokio::spawn(write_requests(writer, rx, shared.clone())).abort_handle();
        ClientConn {
            inner: Arc::new(Inner {
                shared,
                outgoing,
                next_id: AtomicU64::new(1),
                reader,
                writer,
            }),
        }
    }

    /// Sends `request` (its `id` is replaced by a fresh one) and waits for
    /// its response. Many calls may be in flight at once. Dropping the
    /// returned future (e.g. on a timeout) forgets the request.
    ///
    /// # Errors
    ///
    /// - [`Error::NotSent`]: the connection was closed before the request
    ///   was handed to it; nothing was sent.
    /// - [`Error::FrameTooLarge`] / [`Error::Encode`]: the request could not
    ///   be encoded; nothing was sent.
    /// - [`Error::ConnectionLost`]: the connection failed after the request
    ///   was handed to it; it may or may not have been applied.
    pub async fn call(&self, mut request: Request) -> Result<Response> {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        request.id = id;
        let (tx, rx) = oneshot::channel();
        {
            let mut state = self.inner.shared.lock();
            if let Some(reason) = &state.closed {
                return Err(Error::NotSent(reason.clone()));
            }
            state.waiters.insert(id, tx);
        }
        let mut guard = WaiterGuard {
            shared: &self.inner.shared,
            id,
            armed: true,
        };
        let mut frame = Frame::new();
        frame.set_request(request);
        if self.inner.outgoing.send((id, frame)).is_err() {
            return Err(Error::NotSent("connection closed".into()));
        }
        let result = rx
            .await
            .unwrap_or_else(|_| Err(Error::ConnectionLost("connection closed".into())));
        guard.armed = false;
        result
    }

    /// True once the connection has failed or been closed by the server.
    #[must_use]
    pub fn is_closed(&self) -> bool {
        self.inner.shared.lock().closed.is_some()
    }

    /// Calls waiting for a response.
    #[must_use]
    pub fn pending(&self) -> usize {
        self.inner.shared.lock().waiters.len()
    }
}

/// Removes a waiter whose caller went away before its response arrived.
struct WaiterGuard<'a> {
    shared: &'a Shared,
    id: u64,
    armed: bool,
}

impl Drop for WaiterGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.shared.take_waiter(self.id);
        }
    }
}

async fn read_responses(mut reader: FrameReader, shared: Arc<Shared>) {
    let reason = loop {
        match reader.read_frame().await {
            Ok(Some(Frame {
                body: Some(frame::Body::Response(response)),
                ..
            })) => {
                // No waiter: its caller gave up.
                if let Some(waiter) = shared.take_waiter(response.id) {
                    let _ = waiter.send(Ok(response));
                }
            }
            Ok(Some(_)) => break "server sent a frame that is not a response".to_owned(),
            Ok(None) => break "connection closed by the server".to_owned(),
            Err(e) => break e.to_string(),
        }
    };
    shared.fail_all(&reason);
}

async fn write_requests(
    mut writer: FrameWriter,
    mut rx: mpsc::UnboundedReceiver<(u64, Frame)>,
    shared: Arc<Shared>,
) {
    let reason = loop {
        let Some(first) = rx.recv().await else {
            // Every handle is gone: close our side politely.
            let _ = writer.shutdown().await;
            return;
        };
        let mut next = Some(first);
        let mut failed = None;
        while let Some((id, frame)) = next {
            match writer.feed_frame(frame).await {
                Ok(()) => {}
                // Nothing of this frame was written: fail only its call.
                Err(e @ (Error::FrameTooLarge { .. } | Error::Encode(_))) => {
                    if let Some(waiter) = shared.take_waiter(id) {
                        let _ = waiter.send(Err(e));
                    }
                }
                Err(e) => {
                    failed = Some(e.to_string());
                    break;
                }
            }
            next = rx.try_recv().ok();
        }
        if let Some(reason) = failed {
            break reason;
        }
        if let Err(e) = writer.flush().await {
            break e.to_string();
        }
    };
    shared.fail_all(&reason);
}
