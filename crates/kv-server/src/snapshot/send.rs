//! Streaming a pinned checkpoint's files to a peer.

use std::io::Read;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kv_net::{PeerIdentity, SnapshotOffer, SnapshotSent};
use tokio::sync::mpsc;

use super::Pin;
use super::dirs::SnapshotDirs;

/// A transfer fails when one step (connecting, a chunk written, an answer)
/// takes longer than this.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Chunks read ahead of the socket.
const READ_AHEAD: usize = 4;

/// Sends the checkpoint `pin` holds to node `to` at `addr`; the transfer
/// keeps the pin until it ends.
///
/// # Errors
///
/// A message naming what failed.
pub async fn send(
    pin: Pin,
    addr: &str,
    net: &kv_net::Options,
    from: PeerIdentity,
    to: u64,
    snapshot_id: u64,
    raft_message: Bytes,
) -> Result<SnapshotSent, String> {
    let idle = IDLE_TIMEOUT;
    let started = Instant::now();
    let dir = pin.path().to_path_buf();
    let listed = dir.clone();
    let files = tokio::task::spawn_blocking(move || SnapshotDirs::files(&listed))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    let offer = SnapshotOffer {
        snapshot_id,
        group_id: super::GROUP_ID,
        raft_message,
        files: files.clone(),
    };
    let total = offer.total_bytes();
    let chunk = net.snapshot_chunk_size;
    let sent = kv_net::send_snapshot(addr, net, from, to, offer, idle, move |offset| {
        let (tx, rx) = mpsc::channel(READ_AHEAD);
        tokio::task::spawn_blocking(move || read_files(&dir, &files, offset, chunk, &tx));
        rx
    })
    .await
    .map_err(|e| e.to_string())?;
    drop(pin);
    tracing::info!(
        peer = to,
        bytes = total,
        sent = sent.sent,
        resumed_at = sent.resumed_at,
        elapsed = ?started.elapsed(),
        "snapshot sent"
    );
    Ok(sent)
}

/// Feeds the stream of `files` from `offset` on into `tx`, in chunks of
/// `chunk` bytes; stops early when the receiving side is gone.
fn read_files(
    dir: &std::path::Path,
    files: &[(String, u64)],
    offset: u64,
    chunk: usize,
    tx: &mpsc::Sender<std::io::Result<Bytes>>,
) {
    let mut start = 0u64;
    for (name, size) in files {
        let end = start + size;
        if offset < end {
            let path: PathBuf = dir.join(name);
            let result = (|| {
                let mut f = std::fs::File::open(&path)?;
                let skip = offset.saturating_sub(start);
                std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(skip))?;
                let mut left = size - skip;
                while left > 0 {
                    let n = usize::try_from(left.min(chunk as u64)).unwrap_or(chunk);
                    let mut buf = vec![0u8; n];
                    f.read_exact(&mut buf)?;
                    left -= n as u64;
                    if tx.blocking_send(Ok(Bytes::from(buf))).is_err() {
                        return Ok(false);
                    }
                }
                Ok::<_, std::io::Error>(true)
            })();
            match result {
                Ok(true) => {}
                Ok(false) => return,
                Err(e) => {
                    let e = std::io::Error::new(e.kind(), format!("{}: {e}", path.display()));
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
            }
        }
        start = end;
    }
}
