//! Sending a snapshot: [`send_snapshot`] streams a snapshot's files to a
//! peer on a connection of its own (the exchange is described at
//! `SnapshotChunk` in the protocol).
//!
//! The sender offers the snapshot (its files and the raft message), the
//! receiver answers how much of it it already holds (a transfer that broke
//! off resumes there instead of starting over), then the data follows in
//! chunks, each with its CRC32. Memory stays bounded on both sides: the data
//! comes from a bounded channel the caller fills from disk, and the socket's
//! own flow control paces the sender to the receiver's disk.

use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::connection::{Connection, FrameReader};
use crate::error::{Error, Result};
use crate::options::Options;
use crate::peer::PeerIdentity;
use crate::proto::{Frame, SnapshotChunk, SnapshotFile, frame};

/// What a snapshot transfer carries, besides the files' bytes.
#[derive(Debug, Clone)]
pub struct SnapshotOffer {
    /// Names the snapshot; the same snapshot offered again (after a broken
    /// transfer) has the same id, which is what lets the receiver resume.
    pub snapshot_id: u64,
    /// The raft group the snapshot belongs to.
    pub group_id: u64,
    /// The serialized raft `MsgSnapshot`, stepped by the receiver once the
    /// files are in.
    pub raft_message: Bytes,
    /// The files, in stream order: plain names and lengths.
    pub files: Vec<(String, u64)>,
}

impl SnapshotOffer {
    /// Length of the stream: all files together.
    #[must_use]
    pub fn total_bytes(&self) -> u64 {
        self.files.iter().map(|(_, size)| size).sum()
    }
}

/// The outcome of a transfer the receiver acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotSent {
    /// Where the transfer began: bytes the receiver already held.
    pub resumed_at: u64,
    /// Data bytes sent on this connection.
    pub sent: u64,
}

/// Streams a snapshot to node `to` at `addr`, opening the connection with
/// `from`'s handshake. After the receiver has answered the offer with the
/// offset to resume at, `open(offset)` gives the stream's bytes from there
/// on as a channel of chunks of at most `options.snapshot_chunk_size` bytes
/// (an `Err` item aborts the transfer); the channel's end is the stream's
/// end, which must come exactly after [`SnapshotOffer::total_bytes`].
///
/// Returns once the receiver has acknowledged the whole snapshot (made its
/// data durable and stepped the raft message). Any step that waits longer
/// than `idle` (connect, a write the receiver does not take, an answer) fails
/// the transfer.
///
/// # Errors
///
/// [`Error::Connect`], [`Error::Io`] (from the socket or the data),
/// [`Error::Protocol`] when the receiver refuses or closes, and
/// [`Error::Timeout`]-like protocol errors when a step stalls.
pub async fn send_snapshot(
    addr: &str,
    options: &Options,
    from: PeerIdentity,
    to: u64,
    offer: SnapshotOffer,
    idle: Duration,
    open: impl FnOnce(u64) -> mpsc::Receiver<std::io::Result<Bytes>>,
) -> Result<SnapshotSent> {
    options.validate()?;
    let stalled = |what: &str| Error::Protocol(format!("snapshot transfer stalled ({what})"));
    let conn = tokio::time::timeout(idle, Connection::connect(addr, options))
        .await
        .map_err(|_| stalled("connect"))??;
    let (mut reader, mut writer) = conn.into_split();
    tokio::time::timeout(
        idle,
        crate::peer::open_peer(&mut reader, &mut writer, from, to, options),
    )
    .await
    .map_err(|_| stalled("handshake"))??;

    let total = offer.total_bytes();
    let mut first = chunk_of(from.node_id, to, &offer);
    first.offer = true;
    first.raft_message = offer.raft_message.clone();
    first.files = offer
        .files
        .iter()
        .map(|(name, size)| {
            let mut f = SnapshotFile::new();
            f.name.clone_from(name);
            f.size = *size;
            f
        })
        .collect();
    tokio::time::timeout(idle, writer.write_frame(frame_of(first)))
        .await
        .map_err(|_| stalled("offer"))??;
    let answer = read_answer(&mut reader, idle, offer.snapshot_id, "offer").await?;
    let resumed_at = answer.resume_offset;
    if resumed_at > total {
        return Err(Error::Protocol(format!(
            "receiver resumes at {resumed_at}, past the snapshot's {total} bytes"
        )));
    }

    let mut data = open(resumed_at);
    let mut offset = resumed_at;
    loop {
        let next = tokio::time::timeout(idle, data.recv())
            .await
            .map_err(|_| stalled("reading the snapshot's files"))?;
        let bytes = match next {
            Some(Ok(bytes)) => bytes,
            Some(Err(e)) => return Err(Error::Io(e)),
            None => Bytes::new(),
        };
        let last = bytes.is_empty();
        if last && offset != total {
            return Err(Error::Protocol(format!(
                "snapshot data ended at {offset} of {total} bytes"
            )));
        }
        if bytes.len() > options.snapshot_chunk_size || offset + bytes.len() as u64 > total {
            return Err(Error::Protocol("snapshot data chunk out of bounds".into()));
        }
        let mut chunk = chunk_of(from.node_id, to, &offer);
        chunk.offset = offset;
        chunk.crc32 = crc32fast::hash(&bytes);
        offset += bytes.len() as u64;
        chunk.data = bytes;
        chunk.last = last;
        tokio::time::timeout(idle, writer.write_frame(frame_of(chunk)))
            .await
            .map_err(|_| stalled("receiver not reading"))??;
        if last {
            break;
        }
    }
    let ack = read_answer(&mut reader, idle, offer.snapshot_id, "last chunk").await?;
    if !ack.last {
        return Err(Error::Protocol("unexpected answer to a snapshot".into()));
    }
    let _ = writer.shutdown().await;
    Ok(SnapshotSent {
        resumed_at,
        sent: offset - resumed_at,
    })
}

fn chunk_of(from: u64, to: u64, offer: &SnapshotOffer) -> SnapshotChunk {
    let mut c = SnapshotChunk::new();
    c.from = from;
    c.to = to;
    c.snapshot_id = offer.snapshot_id;
    c.group_id = offer.group_id;
    c
}

fn frame_of(chunk: SnapshotChunk) -> Frame {
    let mut frame = Frame::new();
    frame.set_snapshot_chunk(chunk);
    frame
}

async fn read_answer(
    reader: &mut FrameReader,
    idle: Duration,
    snapshot_id: u64,
    to_what: &str,
) -> Result<SnapshotChunk> {
    let read = tokio::time::timeout(idle, reader.read_frame())
        .await
        .map_err(|_| Error::Protocol(format!("no answer to the snapshot {to_what}")))??;
    match read {
        Some(Frame {
            body: Some(frame::Body::SnapshotChunk(answer)),
            ..
        }) if answer.snapshot_id == snapshot_id => Ok(answer),
        Some(_) => Err(Error::Protocol(format!(
            "unexpected answer to the snapshot {to_what}"
        ))),
        None => Err(Error::Protocol(format!(
            "snapshot receiver closed the connection after the {to_what}"
        ))),
    }
}

/// The receiver's answer to an offer: continue at `resume_offset`.
#[must_use]
pub fn offer_answer(offer: &SnapshotChunk, resume_offset: u64) -> SnapshotChunk {
    let mut a = SnapshotChunk::new();
    a.from = offer.to;
    a.to = offer.from;
    a.snapshot_id = offer.snapshot_id;
    a.group_id = offer.group_id;
    a.resume_offset = resume_offset;
    a
}

/// The receiver's acknowledgement of a complete snapshot.
#[must_use]
pub fn snapshot_ack(last: &SnapshotChunk) -> SnapshotChunk {
    let mut a = offer_answer(last, last.offset + last.data.len() as u64);
    a.last = true;
    a
}
