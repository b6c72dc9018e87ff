//! Raft messages between nodes over kv-net: [`PeerTransport`] sends,
//! [`SnapshotAssembler`] puts received snapshot chunks back together.
//!
//! Ordinary raft messages go through one [`PeerSender`] per peer (batched
//! into `PeerMessage` frames, dropped with an unreachable report while the
//! link is down). A `MsgSnapshot` carries the whole snapshot: its data is
//! streamed in chunks on a connection of its own by a task, which reports
//! the outcome to raft with `report_snapshot`. Every connection opens with
//! this node's handshake ([`PeerIdentity`]).
//!
//! Receiving: [`check_peer_message`] is what a raft message from a member
//! must satisfy to be stepped; [`SnapshotAssembler`] bounds what snapshot
//! transfers in progress may hold.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use kv_net::proto::SnapshotChunk;
use kv_net::{PeerIdentity, PeerSender};
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
    identity: PeerIdentity,
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
            .field("identity", &self.identity)
            .field("addrs", &self.addrs)
            .finish_non_exhaustive()
    }
}

impl PeerTransport {
    /// Starts a link to each member of `addrs` other than this node (the
    /// one `identity` names). Must be called within a tokio runtime.
    ///
    /// # Errors
    ///
    /// Invalid network options.
    pub fn start(
        identity: PeerIdentity,
        addrs: &BTreeMap<u64, String>,
        net: &kv_net::Options,
        handle: HandleCell,
    ) -> kv_net::Result<PeerTransport> {
        let mut senders = HashMap::new();
        for (&peer, addr) in addrs {
            if peer == identity.node_id {
                continue;
            }
            let cell = handle.clone();
            let sender = PeerSender::spawn(identity, peer, addr.clone(), net, move |to| {
                if let Some(h) = cell.get() {
                    h.report_unreachable(to);
                }
            })?;
            senders.insert(peer, sender);
        }
        Ok(PeerTransport {
            identity,
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
        let (from, net, handle) = (self.identity, self.net.clone(), self.handle.clone());
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

/// Parses one raft message received from a peer.
///
/// # Errors
///
/// A message naming the decode failure.
pub fn decode_message(raw: &[u8]) -> Result<Message, String> {
    Message::parse_from_bytes(raw).map_err(|e| format!("malformed raft message: {e}"))
}

/// Checks that a raft message received on the connection of member `peer`
/// may be stepped on node `this`: it comes from that member, is addressed
/// to this node, and is of a kind that travels between nodes (not one that
/// raft only makes locally).
///
/// # Errors
///
/// A message naming what is wrong.
pub fn check_peer_message(m: &Message, peer: u64, this: u64) -> Result<(), String> {
    if m.from != peer {
        return Err(format!(
            "raft message from node {} on the connection of node {peer}",
            m.from
        ));
    }
    if m.to != this {
        return Err(format!("raft message to node {}, this is {this}", m.to));
    }
    match m.get_msg_type() {
        MessageType::MsgHup
        | MessageType::MsgBeat
        | MessageType::MsgUnreachable
        | MessageType::MsgSnapStatus
        | MessageType::MsgCheckQuorum => Err(format!("{:?} is local to a node", m.get_msg_type())),
        _ => Ok(()),
    }
}

/// Bounds on snapshots being received.
#[derive(Debug, Clone, Copy)]
pub struct SnapshotLimits {
    /// Most bytes held by all partial transfers together (and so by any
    /// one snapshot).
    pub max_bytes: usize,
    /// A partial transfer that received no chunk for this long is dropped.
    pub idle_timeout: Duration,
}

/// A snapshot being received from one member.
#[derive(Debug)]
struct Transfer {
    snapshot_id: u64,
    data: Vec<u8>,
    last_chunk: Instant,
}

/// Reassembles snapshots from their chunks: at most one transfer per
/// sender (a new transfer from it, starting at offset 0, replaces one it
/// abandoned), chunks in order, all partial transfers together within
/// [`SnapshotLimits::max_bytes`], and a transfer idle for
/// [`SnapshotLimits::idle_timeout`] dropped (on the next chunk from anyone
/// and by [`SnapshotAssembler::expire`]).
#[derive(Debug)]
pub struct SnapshotAssembler {
    limits: SnapshotLimits,
    partial: Mutex<HashMap<u64, Transfer>>,
}

impl SnapshotAssembler {
    /// An assembler holding nothing.
    #[must_use]
    pub fn new(limits: SnapshotLimits) -> SnapshotAssembler {
        SnapshotAssembler {
            limits,
            partial: Mutex::new(HashMap::new()),
        }
    }

    /// Adds a chunk that arrived on the connection of member `peer`;
    /// returns the complete raft `MsgSnapshot` (with its data) after the
    /// last one.
    ///
    /// # Errors
    ///
    /// A message when the chunk is not `peer`'s, does not continue its
    /// transfer in progress (or start one at offset 0), would exceed the
    /// size limit, or the result does not decode as a `MsgSnapshot`. A
    /// chunk that breaks its transfer drops that transfer.
    pub fn add(
        &self,
        peer: u64,
        chunk: SnapshotChunk,
        now: Instant,
    ) -> Result<Option<Message>, String> {
        if chunk.from != peer {
            return Err(format!(
                "snapshot chunk from node {} on the connection of node {peer}",
                chunk.from
            ));
        }
        let mut partial = self.partial.lock();
        self.expire_locked(&mut partial, now);
        let continues = partial
            .get(&peer)
            .is_some_and(|t| t.snapshot_id == chunk.snapshot_id);
        if !continues {
            if chunk.offset != 0 {
                return Err(format!(
                    "snapshot {} chunk at offset {} without its start",
                    chunk.snapshot_id, chunk.offset
                ));
            }
            if let Some(old) = partial.remove(&peer) {
                tracing::info!(
                    from = peer,
                    snapshot_id = old.snapshot_id,
                    bytes = old.data.len(),
                    "partial snapshot replaced by a new transfer"
                );
            }
        }
        let held: usize = partial.values().map(|t| t.data.len()).sum();
        let transfer = partial.entry(peer).or_insert_with(|| Transfer {
            snapshot_id: chunk.snapshot_id,
            data: Vec::new(),
            last_chunk: now,
        });
        let have = transfer.data.len() as u64;
        if chunk.offset != have {
            partial.remove(&peer);
            return Err(format!(
                "snapshot chunk at offset {} does not follow {have} bytes",
                chunk.offset
            ));
        }
        if held.saturating_add(chunk.data.len()) > self.limits.max_bytes {
            partial.remove(&peer);
            return Err(format!(
                "snapshot data over the limit of {} bytes being received",
                self.limits.max_bytes
            ));
        }
        transfer.data.extend_from_slice(&chunk.data);
        transfer.last_chunk = now;
        if !chunk.last {
            return Ok(None);
        }
        let data = partial.remove(&peer).map(|t| t.data).unwrap_or_default();
        drop(partial);
        let mut msg = Message::parse_from_bytes(&chunk.raft_message)
            .map_err(|e| format!("malformed snapshot message: {e}"))?;
        if msg.get_msg_type() != MessageType::MsgSnapshot {
            return Err("snapshot chunk does not carry a MsgSnapshot".into());
        }
        msg.mut_snapshot().set_data(Bytes::from(data));
        Ok(Some(msg))
    }

    /// Drops partial transfers idle for longer than the timeout; returns
    /// how many.
    pub fn expire(&self, now: Instant) -> usize {
        self.expire_locked(&mut self.partial.lock(), now)
    }

    fn expire_locked(&self, partial: &mut HashMap<u64, Transfer>, now: Instant) -> usize {
        let before = partial.len();
        partial.retain(|&from, t| {
            let live = now.saturating_duration_since(t.last_chunk) < self.limits.idle_timeout;
            if !live {
                tracing::warn!(
                    from,
                    snapshot_id = t.snapshot_id,
                    bytes = t.data.len(),
                    "stale partial snapshot dropped"
                );
            }
            live
        });
        before - partial.len()
    }

    /// Bytes held by partial transfers.
    #[must_use]
    pub fn buffered_bytes(&self) -> usize {
        self.partial.lock().values().map(|t| t.data.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    fn assembler(max_bytes: usize) -> SnapshotAssembler {
        SnapshotAssembler::new(SnapshotLimits {
            max_bytes,
            idle_timeout: 10 * SECOND,
        })
    }

    fn snapshot_message(from: u64, to: u64) -> Bytes {
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgSnapshot);
        m.from = from;
        m.to = to;
        Bytes::from(m.write_to_bytes().unwrap())
    }

    fn chunk(from: u64, id: u64, offset: u64, data: &[u8], last: bool) -> SnapshotChunk {
        let mut c = SnapshotChunk::new();
        c.from = from;
        c.to = 9;
        c.snapshot_id = id;
        c.offset = offset;
        c.data = Bytes::copy_from_slice(data);
        c.last = last;
        if last {
            c.raft_message = snapshot_message(from, 9);
        }
        c
    }

    #[test]
    fn chunks_in_order_make_the_snapshot() {
        let a = assembler(1 << 20);
        let now = Instant::now();
        assert!(
            a.add(1, chunk(1, 5, 0, b"abc", false), now)
                .unwrap()
                .is_none()
        );
        assert_eq!(a.buffered_bytes(), 3);
        let msg = a.add(1, chunk(1, 5, 3, b"de", true), now).unwrap().unwrap();
        assert_eq!(msg.get_snapshot().get_data(), b"abcde");
        assert_eq!(a.buffered_bytes(), 0);
    }

    #[test]
    fn only_the_handshaken_member_may_send() {
        let a = assembler(1 << 20);
        let now = Instant::now();
        assert!(a.add(2, chunk(1, 5, 0, b"abc", false), now).is_err());
        assert_eq!(a.buffered_bytes(), 0);
    }

    #[test]
    fn chunks_out_of_order_are_refused_and_drop_the_transfer() {
        let a = assembler(1 << 20);
        let now = Instant::now();
        // A transfer must start at offset 0.
        assert!(a.add(1, chunk(1, 5, 7, b"abc", false), now).is_err());
        assert_eq!(a.buffered_bytes(), 0);
        a.add(1, chunk(1, 5, 0, b"abc", false), now).unwrap();
        // A gap, then a repeat.
        assert!(a.add(1, chunk(1, 5, 4, b"x", false), now).is_err());
        assert_eq!(a.buffered_bytes(), 0);
        a.add(1, chunk(1, 6, 0, b"abc", false), now).unwrap();
        assert!(a.add(1, chunk(1, 6, 0, b"abc", false), now).is_err());
        assert_eq!(a.buffered_bytes(), 0);
        // A chunk of an unknown transfer past its start leaves the
        // transfer in progress alone.
        a.add(1, chunk(1, 7, 0, b"abc", false), now).unwrap();
        assert!(a.add(1, chunk(1, 8, 3, b"abc", false), now).is_err());
        assert_eq!(a.buffered_bytes(), 3);
    }

    #[test]
    fn one_transfer_per_sender() {
        let a = assembler(1 << 20);
        let now = Instant::now();
        a.add(1, chunk(1, 5, 0, b"old", false), now).unwrap();
        a.add(2, chunk(2, 5, 0, b"other", false), now).unwrap();
        // A new transfer from the same sender replaces its abandoned one.
        a.add(1, chunk(1, 6, 0, b"n", false), now).unwrap();
        assert_eq!(a.buffered_bytes(), 1 + 5);
        // The replaced transfer cannot continue.
        assert!(a.add(1, chunk(1, 5, 3, b"more", false), now).is_err());
        let msg = a.add(2, chunk(2, 5, 5, b"!", true), now).unwrap().unwrap();
        assert_eq!(msg.get_snapshot().get_data(), b"other!");
    }

    #[test]
    fn the_total_size_is_capped() {
        let a = assembler(10);
        let now = Instant::now();
        a.add(1, chunk(1, 5, 0, b"123456", false), now).unwrap();
        // Two senders together may not exceed the cap either.
        assert!(a.add(2, chunk(2, 5, 0, b"12345", false), now).is_err());
        assert_eq!(a.buffered_bytes(), 6);
        a.add(1, chunk(1, 5, 6, b"7890", false), now).unwrap();
        assert!(a.add(1, chunk(1, 5, 10, b"x", true), now).is_err());
        assert_eq!(a.buffered_bytes(), 0);
        // At the cap exactly is fine.
        let msg = a
            .add(1, chunk(1, 6, 0, b"1234567890", true), now)
            .unwrap()
            .unwrap();
        assert_eq!(msg.get_snapshot().get_data().len(), 10);
    }

    #[test]
    fn stale_transfers_are_dropped() {
        let a = assembler(1 << 20);
        let start = Instant::now();
        a.add(1, chunk(1, 5, 0, b"abc", false), start).unwrap();
        a.add(2, chunk(2, 5, 0, b"abc", false), start + 8 * SECOND)
            .unwrap();
        assert_eq!(a.expire(start + 9 * SECOND), 0);
        assert_eq!(a.expire(start + 10 * SECOND), 1);
        assert_eq!(a.buffered_bytes(), 3);
        // A chunk from anyone sweeps too, and the stale sender must start
        // over.
        assert!(
            a.add(1, chunk(1, 5, 3, b"d", false), start + 20 * SECOND)
                .is_err()
        );
        assert_eq!(a.buffered_bytes(), 0);
    }

    #[test]
    fn the_last_chunk_must_carry_a_snapshot_message() {
        let a = assembler(1 << 20);
        let now = Instant::now();
        let mut c = chunk(1, 5, 0, b"abc", true);
        c.raft_message = Bytes::from_static(b"\xff\xff\xff");
        assert!(a.add(1, c, now).is_err());
        let mut c = chunk(1, 6, 0, b"abc", true);
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgHeartbeat);
        c.raft_message = Bytes::from(m.write_to_bytes().unwrap());
        assert!(a.add(1, c, now).is_err());
        assert_eq!(a.buffered_bytes(), 0);
    }

    #[test]
    fn peer_messages_are_checked() {
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgHeartbeat);
        m.from = 1;
        m.to = 2;
        assert!(check_peer_message(&m, 1, 2).is_ok());
        assert!(check_peer_message(&m, 3, 2).is_err());
        assert!(check_peer_message(&m, 1, 3).is_err());
        m.set_msg_type(MessageType::MsgHup);
        assert!(check_peer_message(&m, 1, 2).is_err());
        assert!(decode_message(b"\xff\xff\xff\xff").is_err());
    }
}
