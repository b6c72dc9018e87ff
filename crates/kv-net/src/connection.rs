//! A framed TCP connection, plain or TLS: read and write whole [`Frame`]s.
//!
//! Writes are buffered: [`FrameWriter::feed_frame`] only encodes into the
//! write buffer (flushing by itself when it grows past a few KiB), and
//! [`FrameWriter::flush`] sends what is buffered, so many frames queued at
//! once go out in few system calls.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use futures_util::SinkExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::codec::{Decoder, FramedWrite};

use crate::error::{Error, Result};
use crate::frame::{FrameCodec, HEADER_LEN};
use crate::options::Options;
use crate::proto::Frame;

type Tls = tokio_rustls::TlsStream<TcpStream>;

/// The reading side of the socket.
#[derive(Debug)]
enum Input {
    Plain(OwnedReadHalf),
    Tls(ReadHalf<Tls>),
}

/// The writing side of the socket.
#[derive(Debug)]
enum Output {
    Plain(OwnedWriteHalf),
    Tls(WriteHalf<Tls>),
}

impl Input {
    /// Waits until the socket has data (plain sockets only: a TLS session
    /// buffers records of its own, so there it returns at once).
    async fn readable(&self) -> io::Result<()> {
        match self {
            Input::Plain(s) => s.readable().await,
            Input::Tls(_) => Ok(()),
        }
    }
}

impl AsyncRead for Input {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Input::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Input::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Output {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Output::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Output::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Output::Plain(s) => Pin::new(s).poll_flush(cx),
            Output::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Output::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Output::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// Both directions of a framed connection.
#[derive(Debug)]
pub struct Connection {
    reader: FrameReader,
    writer: FrameWriter,
    peer_addr: Option<SocketAddr>,
}

fn set_nodelay(stream: &TcpStream, options: &Options) {
    if options.nodelay {
        // Best effort: only latency suffers without it.
        let _ = stream.set_nodelay(true);
    }
}

impl Connection {
    /// Wraps an established plaintext stream.
    #[must_use]
    pub fn new(stream: TcpStream, options: &Options) -> Self {
        set_nodelay(&stream, options);
        let peer_addr = stream.peer_addr().ok();
        let (read, write) = stream.into_split();
        Connection::of(Input::Plain(read), Output::Plain(write), peer_addr, options)
    }

    /// Wraps an established TLS stream (either side).
    #[must_use]
    pub fn from_tls(stream: tokio_rustls::TlsStream<TcpStream>, options: &Options) -> Self {
        set_nodelay(stream.get_ref().0, options);
        let peer_addr = stream.get_ref().0.peer_addr().ok();
        let (read, write) = tokio::io::split(stream);
        Connection::of(Input::Tls(read), Output::Tls(write), peer_addr, options)
    }

    fn of(read: Input, write: Output, peer_addr: Option<SocketAddr>, options: &Options) -> Self {
        Connection {
            reader: FrameReader::new(read, options),
            writer: FrameWriter {
                inner: {
                    let mut w = FramedWrite::new(write, FrameCodec::new(options.max_frame_length));
                    // Allocated when the first frame is written.
                    *w.write_buffer_mut() = BytesMut::new();
                    w
                },
            },
            peer_addr,
        }
    }

    /// Connects to `addr` (`host:port`) within `options.connect_timeout`.
    ///
    /// # Errors
    ///
    /// [`Error::Connect`] when resolving or connecting fails or times out.
    pub async fn connect(addr: &str, options: &Options) -> Result<Self> {
        let connect_error = |source| Error::Connect {
            addr: addr.to_owned(),
            source,
        };
        let stream = tokio::time::timeout(options.connect_timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| connect_error(io::Error::new(io::ErrorKind::TimedOut, "timed out")))?
            .map_err(connect_error)?;
        let Some(tls) = &options.client_tls else {
            return Ok(Connection::new(stream, options));
        };
        let name = crate::tls::server_name(addr)
            .map_err(|e| connect_error(io::Error::new(io::ErrorKind::InvalidInput, e)))?;
        let stream = tokio::time::timeout(
            options.connect_timeout,
            tls.connector().connect(name, stream),
        )
        .await
        .map_err(|_| {
            connect_error(io::Error::new(
                io::ErrorKind::TimedOut,
                "TLS handshake timed out",
            ))
        })?
        .map_err(connect_error)?;
        Ok(Connection::from_tls(
            tokio_rustls::TlsStream::Client(stream),
            options,
        ))
    }

    /// The remote address.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] when the socket no longer has one.
    pub fn peer_addr(&self) -> Result<SocketAddr> {
        self.peer_addr.ok_or_else(|| {
            Error::Io(io::Error::new(
                io::ErrorKind::NotConnected,
                "no peer address",
            ))
        })
    }

    /// See [`FrameReader::read_frame`].
    ///
    /// # Errors
    ///
    /// As [`FrameReader::read_frame`].
    pub async fn read_frame(&mut self) -> Result<Option<Frame>> {
        self.reader.read_frame().await
    }

    /// See [`FrameWriter::write_frame`].
    ///
    /// # Errors
    ///
    /// As [`FrameWriter::write_frame`].
    pub async fn write_frame(&mut self, frame: Frame) -> Result<()> {
        self.writer.write_frame(frame).await
    }

    /// Splits into halves that can be used from different tasks.
    #[must_use]
    pub fn into_split(self) -> (FrameReader, FrameWriter) {
        (self.reader, self.writer)
    }
}

/// The reading half of a [`Connection`].
///
/// Reads into a buffer that is allocated only once the socket has data, so
/// an idle connection holds no read buffer, and is given back after a large
/// frame. A frame whose first bytes have arrived must be complete within
/// [`Options::frame_timeout`] (a peer trickling a frame byte by byte is cut
/// off); a large frame's body is buffered only once it holds its share of
/// the receive budget, if one is set ([`FrameReader::set_receive_budget`]).
#[derive(Debug)]
pub struct FrameReader {
    stream: Input,
    codec: FrameCodec,
    buf: BytesMut,
    frame_timeout: Duration,
    /// When the first bytes of the frame being received arrived.
    frame_started: Option<Instant>,
    budget: Option<Arc<Semaphore>>,
    /// The budget held for the frame being received.
    held: Option<OwnedSemaphorePermit>,
    /// Bytes of the last frame read, length prefix included.
    last_len: usize,
}

/// Bytes read from the socket at a time (at least).
const READ_CHUNK: usize = 8 << 10;
/// Frames up to this size take nothing from the receive budget: what they
/// hold is bounded by the connection limit times this.
pub const BUDGET_FREE_FRAME: usize = 64 << 10;
/// Unit of the receive budget's permits.
pub const BUDGET_UNIT: usize = 1 << 10;

impl FrameReader {
    fn new(stream: Input, options: &Options) -> Self {
        FrameReader {
            stream,
            codec: FrameCodec::new(options.max_frame_length),
            buf: BytesMut::new(),
            frame_timeout: options.frame_timeout,
            frame_started: None,
            budget: None,
            held: None,
            last_len: 0,
        }
    }

    /// Shares `budget` (permits of [`BUDGET_UNIT`] bytes) among the readers
    /// of many connections: a frame larger than [`BUDGET_FREE_FRAME`] waits
    /// for its share before its body is buffered, and returns it once
    /// decoded.
    pub fn set_receive_budget(&mut self, budget: Arc<Semaphore>) {
        self.budget = Some(budget);
    }

    /// Bytes of the frame [`FrameReader::read_frame`] returned last, its
    /// length prefix included.
    #[must_use]
    pub fn last_frame_len(&self) -> usize {
        self.last_len
    }

    /// True when part of a frame has been received.
    #[must_use]
    pub fn in_frame(&self) -> bool {
        !self.buf.is_empty() || self.codec.in_frame()
    }

    /// Reads the next frame; `Ok(None)` when the peer closed the connection
    /// between frames. Cancel-safe: a partly received frame is kept for the
    /// next call.
    ///
    /// # Errors
    ///
    /// [`Error::FrameTooLarge`] (checked from the length prefix, before the
    /// frame is buffered), [`Error::Decode`] for a malformed frame,
    /// [`Error::Timeout`] when a begun frame is not complete within the frame
    /// timeout, [`Error::Io`] for a socket error or a connection closed
    /// mid-frame. After an error the connection must be dropped.
    pub async fn read_frame(&mut self) -> Result<Option<Frame>> {
        loop {
            self.take_budget().await?;
            let before = self.buf.len();
            if let Some(frame) = self.codec.decode(&mut self.buf)? {
                self.last_len = before - self.buf.len();
                self.held = None;
                self.frame_started = (!self.buf.is_empty()).then(Instant::now);
                if self.buf.is_empty() {
                    // Whatever capacity is left is shared with the frame's
                    // bytes; an idle connection keeps none of it.
                    self.buf = BytesMut::new();
                }
                return Ok(Some(frame));
            }
            if self.fill().await? == 0 {
                return self.codec.decode_eof(&mut self.buf);
            }
        }
    }

    /// Waits for the budget share of the frame whose header is buffered.
    async fn take_budget(&mut self) -> Result<()> {
        let Some(budget) = &self.budget else {
            return Ok(());
        };
        if self.held.is_some() || self.codec.in_frame() {
            return Ok(());
        }
        let Some(header) = self.buf.get(..HEADER_LEN) else {
            return Ok(());
        };
        let mut len = [0u8; HEADER_LEN];
        len.copy_from_slice(header);
        let len = u32::from_be_bytes(len) as usize;
        if len <= BUDGET_FREE_FRAME || len > self.codec.max_frame_length() {
            // Small, or refused by the codec without being buffered.
            return Ok(());
        }
        let units = u32::try_from(len.div_ceil(BUDGET_UNIT)).unwrap_or(u32::MAX);
        let acquire = budget.clone().acquire_many_owned(units);
        let permit = match self.deadline() {
            Some(deadline) => tokio::time::timeout_at(deadline, acquire)
                .await
                .map_err(|_| self.timed_out())?,
            None => acquire.await,
        };
        // The semaphore is never closed; a failure would mean no budget at all.
        self.held = Some(permit.map_err(|_| Error::Protocol("receive budget closed".into()))?);
        Ok(())
    }

    /// Reads more bytes; 0 at end of stream.
    async fn fill(&mut self) -> Result<usize> {
        if self.buf.capacity() - self.buf.len() < READ_CHUNK / 2 {
            if self.buf.is_empty() {
                // Idle connections hold no buffer until data comes.
                self.stream.readable().await?;
            }
            self.buf.reserve(READ_CHUNK);
        }
        let n = match self.deadline() {
            Some(deadline) => {
                tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf))
                    .await
                    .map_err(|_| self.timed_out())??
            }
            None => self.stream.read_buf(&mut self.buf).await?,
        };
        if n > 0 && self.frame_started.is_none() {
            self.frame_started = Some(Instant::now());
        }
        Ok(n)
    }

    fn deadline(&self) -> Option<Instant> {
        self.frame_started.map(|t| t + self.frame_timeout)
    }

    fn timed_out(&self) -> Error {
        Error::Timeout(format!(
            "frame not received within {:?} of its first bytes",
            self.frame_timeout
        ))
    }
}

/// The writing half of a [`Connection`].
#[derive(Debug)]
pub struct FrameWriter {
    inner: FramedWrite<Output, FrameCodec>,
}

impl FrameWriter {
    /// Writes one frame and flushes it.
    ///
    /// # Errors
    ///
    /// [`Error::FrameTooLarge`] or [`Error::Encode`] when the frame cannot be
    /// sent (nothing of it was written); [`Error::Io`] on a socket error.
    pub async fn write_frame(&mut self, frame: Frame) -> Result<()> {
        self.inner.send(frame).await
    }

    /// Buffers one frame without flushing (unless the buffer is full).
    ///
    /// # Errors
    ///
    /// As [`FrameWriter::write_frame`].
    pub async fn feed_frame(&mut self, frame: Frame) -> Result<()> {
        self.inner.feed(frame).await
    }

    /// Sends everything buffered.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] on a socket error.
    pub async fn flush(&mut self) -> Result<()> {
        SinkExt::<Frame>::flush(&mut self.inner).await?;
        // An idle connection holds no write buffer.
        let buf = self.inner.write_buffer_mut();
        if buf.is_empty() && buf.capacity() > 0 {
            *buf = BytesMut::new();
        }
        Ok(())
    }

    /// Flushes, then shuts down the sending direction (the peer reads EOF).
    ///
    /// # Errors
    ///
    /// [`Error::Io`] on a socket error.
    pub async fn shutdown(&mut self) -> Result<()> {
        SinkExt::<Frame>::close(&mut self.inner).await
    }
}
