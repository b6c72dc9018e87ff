//! A framed TCP connection: read and write whole [`Frame`]s.
//!
//! Writes are buffered: [`FrameWriter::feed_frame`] only encodes into the
//! write buffer (flushing by itself when it grows past a few KiB), and
//! [`FrameWriter::flush`] sends what is buffered, so many frames queued at
//! once go out in few system calls.

use std::io;
use std::net::SocketAddr;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio_util::codec::{FramedRead, FramedWrite};

use crate::error::{Error, Result};
use crate::frame::FrameCodec;
use crate::options::Options;
use crate::proto::Frame;

/// Both directions of a framed TCP connection.
#[derive(Debug)]
pub struct Connection {
    reader: FrameReader,
    writer: FrameWriter,
}

impl Connection {
    /// Wraps an established stream.
    #[must_use]
    pub fn new(stream: TcpStream, options: &Options) -> Self {
        if options.nodelay {
            // Best effort: only latency suffers without it.
            let _ = stream.set_nodelay(true);
        }
        let (read, write) = stream.into_split();
        Connection {
            reader: FrameReader {
                inner: FramedRead::new(read, FrameCodec::new(options.max_frame_length)),
            },
            writer: FrameWriter {
                inner: FramedWrite::new(write, FrameCodec::new(options.max_frame_length)),
            },
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
        Ok(Connection::new(stream, options))
    }

    /// The remote address.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] when the socket no longer has one.
    pub fn peer_addr(&self) -> Result<SocketAddr> {
        Ok(self.reader.inner.get_ref().peer_addr()?)
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
#[derive(Debug)]
pub struct FrameReader {
    inner: FramedRead<OwnedReadHalf, FrameCodec>,
}

impl FrameReader {
    /// Reads the next frame; `Ok(None)` when the peer closed the connection
    /// between frames.
    ///
    /// # Errors
    ///
    /// [`Error::FrameTooLarge`] (checked from the length prefix, before the
    /// frame is buffered), [`Error::Decode`] for a malformed frame,
    /// [`Error::Io`] for a socket error or a connection closed mid-frame.
    /// After an error the connection must be dropped.
    pub async fn read_frame(&mut self) -> Result<Option<Frame>> {
        self.inner.next().await.transpose()
    }
}

/// The writing half of a [`Connection`].
#[derive(Debug)]
pub struct FrameWriter {
    inner: FramedWrite<OwnedWriteHalf, FrameCodec>,
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
        SinkExt::<Frame>::flush(&mut self.inner).await
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
