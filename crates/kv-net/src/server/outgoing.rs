//! The writing half of a served connection: responses written as they
//! complete, and what each holds of the connection's in-flight limits
//! until it is written.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use super::Counters;
use super::error_response;
use crate::connection::FrameWriter;
use crate::error::{Error, Result};
use crate::options::IN_FLIGHT_UNIT;
use crate::proto::{ErrorCode, Frame, frame};

/// What a frame to write holds of its connection's in-flight limits,
/// returned once it is written.
#[derive(Default)]
pub(super) struct Held {
    /// One of `max_in_flight_per_connection`.
    pub(super) _count: Option<OwnedSemaphorePermit>,
    /// Its bytes of `max_bytes_in_flight_per_connection`.
    pub(super) _bytes: Option<OwnedSemaphorePermit>,
}

impl Held {
    pub(super) fn count(permit: OwnedSemaphorePermit) -> Held {
        Held {
            _count: Some(permit),
            _bytes: None,
        }
    }
}

/// Bytes of `max_bytes_in_flight_per_connection` a request holds at least
/// while it is handled (so that small requests are bounded by the count
/// limit first: 64 MiB / 16 KiB = 4096).
pub(super) const RESPONSE_RESERVE: usize = 16 << 10;

/// A frame to write and what it holds until written.
pub(super) type Outgoing = (Frame, Held);

/// The permits of `len` bytes from `bytes` (at most all `total` units),
/// taken at once if free, else counted as a wait and waited for. `None`
/// only if the semaphore were closed, which it never is.
pub(super) async fn take_bytes(
    bytes: &Arc<Semaphore>,
    total: u32,
    len: usize,
    counters: &Counters,
) -> Option<OwnedSemaphorePermit> {
    let units = u32::try_from(len.div_ceil(IN_FLIGHT_UNIT))
        .unwrap_or(u32::MAX)
        .clamp(1, total);
    if let Ok(p) = bytes.clone().try_acquire_many_owned(units) {
        return Some(p);
    }
    Counters::bump(&counters.in_flight_waits);
    bytes.clone().acquire_many_owned(units).await.ok()
}

pub(super) fn writer_ended(
    done: std::result::Result<Result<()>, tokio::task::JoinError>,
) -> Result<()> {
    match done {
        Ok(result) => result,
        Err(e) => Err(Error::Io(std::io::Error::other(e))),
    }
}

/// Writes frames as they arrive, batching those that are ready together into
/// one flush.
///
/// A write the client does not take within `stall` (it reads no
/// responses) closes the connection.
pub(super) async fn write_responses(
    mut writer: FrameWriter,
    mut rx: mpsc::UnboundedReceiver<Outgoing>,
    max_frame_length: usize,
    stall: Duration,
    counters: Arc<Counters>,
) -> Result<()> {
    let within = |what: &'static str| {
        let counters = counters.clone();
        move |_| {
            Counters::bump(&counters.frame_timeouts);
            Error::Timeout(format!("the client took no {what} within {stall:?}"))
        }
    };
    while let Some((frame, permit)) = rx.recv().await {
        tokio::time::timeout(stall, feed(&mut writer, frame, max_frame_length))
            .await
            .map_err(within("response"))??;
        drop(permit);
        while let Ok((frame, permit)) = rx.try_recv() {
            tokio::time::timeout(stall, feed(&mut writer, frame, max_frame_length))
                .await
                .map_err(within("response"))??;
            drop(permit);
        }
        tokio::time::timeout(stall, writer.flush())
            .await
            .map_err(within("flush"))??;
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
pub(super) struct AbortOnDrop<T>(pub(super) tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}
