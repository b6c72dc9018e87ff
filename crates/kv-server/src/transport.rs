//! Raft messages between nodes over kv-net: [`PeerTransport`] sends,
//! [`SnapshotAssembler`] puts received snapshot chunks back together.
//!
//! Ordinary raft messages go through one [`PeerSender`] per peer (batched
//! into `PeerMessage` frames, dropped with an unreachable report while the
//! link is down). A `MsgSnapshot` carries the whole snapshot: its data is
//! streamed in chunks on a connection of its own by a task, which reports
//! the outcome to raft with `report_snapshot`.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use kv_net::PeerSender;
use kv_net::proto::SnapshotChunk;
use kv_raft::raft::eraftpb::{Message, MessageType};
use kv_raft::{Handle, Transport};
use parking_lot::Mutex;
use protobuf2::Message as _;

/// The raft handle, set once the node has started (the transport is built
/// before it).
pub type HandleCell = Arc<OnceLock<Handle>>;

/// Longest time one snapshot transfer may take.
const SNAPSHOT_SEND_TIMEOUT: Duration = Duration::from_secs(120);

/// Sends raft messages to the other members.
pub struct PeerTransport {
    id: u64,
    addrs: BTreeMap<u64, String>,
    senders: HashMap<u64, PeerSender>,
    net: kv_net::Options,
    runtime: tokio::runtime::Handle,
    handle: HandleCell,
    next_snapshot_id: u64,
}

impl std::fmt::Debug for PeerTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerTransport")
            .field("id", &self.id)
            .field("addrs", &self.addrs)
            .finish_non_exhaustive()
    }
}

impl PeerTransport {
    /// Starts a link to each member of `addrs` other than `id`. Must be
    /// called within a tokio runtime.
    ///
    /// # Errors
    ///
    /// Invalid network options.
    pub fn start(
        id: u64,
        addrs: &BTreeMap<u64, String>,
        net: &kv_net::Options,
        handle: HandleCell,
    ) -> kv_net::Result<PeerTransport> {
        let mut senders = HashMap::new();
        for (&peer, addr) in addrs {
            if peer == id {
                continue;
            }
            let cell = handle.clone();
            let sender = PeerSender::spawn(id, peer, addr.clone(), net, move |to| {
                if let Some(h) = cell.get() {
                    h.report_unreachable(to);
                }
            })?;
            senders.insert(peer, sender);
        }
        Ok(PeerTransport {
            id,
            addrs: addrs.clone(),
            senders,
            net: net.clone(),
            runtime: tokio::runtime::Handle::current(),
            handle,
            next_snapshot_id: 1,
        })
    }

    fn send_snapshot(&mut self, mut msg: Message) {
        let to = msg.to;
        let Some(addr) = self.addrs.get(&to).cloned() else {
            return;
        };
        let data = msg.mut_snapshot().take_data();
        let raft_message = match msg.write_to_bytes() {
            Ok(b) => Bytes::from(b),
            Err(e) => {
                tracing::error!(error = %e, "cannot encode a snapshot message");
                return;
            }
        };
        let snapshot_id = self.next_snapshot_id;
        self.next_snapshot_id += 1;
        let (from, net, handle) = (self.id, self.net.clone(), self.handle.clone());
        self.runtime.spawn(async move {
            let started = std::time::Instant::now();
            let sent =
                kv_net::send_snapshot(&addr, &net, from, to, snapshot_id, raft_message, &data[..]);
            let delivered = match tokio::time::timeout(SNAPSHOT_SEND_TIMEOUT, sent).await {
                Ok(Ok(bytes)) => {
                    tracing::info!(peer = to, bytes, elapsed = ?started.elapsed(), "snapshot sent");
                    true
                }
                Ok(Err(e)) => {
                    tracing::warn!(peer = to, error = %e, "snapshot transfer failed");
                    false
                }
                Err(_) => {
                    tracing::warn!(peer = to, "snapshot transfer timed out");
                    false
                }
            };
            if let Some(h) = handle.get() {
                h.report_snapshot(to, delivered);
            }
        });
    }
}

impl Transport for PeerTransport {
    fn send(&mut self, msgs: Vec<Message>) {
        for msg in msgs {
            if msg.get_msg_type() == MessageType::MsgSnapshot {
                self.send_snapshot(msg);
                continue;
            }
            let Some(sender) = self.senders.get(&msg.to) else {
                tracing::debug!(to = msg.to, "raft message to an unknown node dropped");
                continue;
            };
            match msg.write_to_bytes() {
                Ok(b) => {
                    sender.send(Bytes::from(b));
                }
                Err(e) => tracing::error!(error = %e, "cannot encode a raft message"),
            }
        }
    }
}

/// Parses raft messages received in a `PeerMessage`; malformed ones are
/// skipped with a warning.
pub fn decode_messages(from: u64, raw: Vec<Bytes>) -> Vec<Message> {
    raw.into_iter()
        .filter_map(|b| match Message::parse_from_bytes(&b) {
            Ok(m) => Some(m),
            Err(e) => {
                tracing::warn!(from, error = %e, "malformed raft message dropped");
                None
            }
        })
        .collect()
}

/// Largest snapshot accepted from a peer.
const MAX_SNAPSHOT_BYTES: usize = 8 << 30;

/// Reassembles snapshots from their chunks, one in progress per sender.
#[derive(Debug, Default)]
pub struct SnapshotAssembler {
    partial: Mutex<HashMap<u64, (u64, Vec<u8>)>>,
}

impl SnapshotAssembler {
    /// Adds a chunk; returns the complete raft `MsgSnapshot` (with its data)
    /// after the last one.
    ///
    /// # Errors
    ///
    /// A message when the chunk does not continue the snapshot in progress
    /// or the result does not decode.
    pub fn add(&self, chunk: SnapshotChunk) -> Result<Option<Message>, String> {
        let mut partial = self.partial.lock();
        let entry = partial
            .entry(chunk.from)
            .or_insert_with(|| (chunk.snapshot_id, Vec::new()));
        if entry.0 != chunk.snapshot_id {
            // A new transfer replaces an abandoned one.
            *entry = (chunk.snapshot_id, Vec::new());
        }
        let have = entry.1.len() as u64;
        if chunk.offset != have {
            partial.remove(&chunk.from);
            return Err(format!(
                "snapshot chunk at offset {} does not follow {have} bytes",
                chunk.offset
            ));
        }
        if entry.1.len() + chunk.data.len() > MAX_SNAPSHOT_BYTES {
            partial.remove(&chunk.from);
            return Err("snapshot too large".into());
        }
        entry.1.extend_from_slice(&chunk.data);
        if !chunk.last {
            return Ok(None);
        }
        let (_, data) = partial.remove(&chunk.from).unwrap_or_default();
        let mut msg = Message::parse_from_bytes(&chunk.raft_message)
            .map_err(|e| format!("malformed snapshot message: {e}"))?;
        if msg.get_msg_type() != MessageType::MsgSnapshot {
            return Err("snapshot chunk does not carry a MsgSnapshot".into());
        }
        msg.mut_snapshot().set_data(Bytes::from(data));
        Ok(Some(msg))
    }
}
