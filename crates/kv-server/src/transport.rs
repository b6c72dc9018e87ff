//! Raft messages between nodes over kv-net: [`PeerTransport`] sends.
//!
//! Ordinary raft messages go through one [`PeerSender`] per peer (batched
//! into `PeerMessage` frames, dropped with an unreachable report while the
//! link is down). A `MsgSnapshot` names a checkpoint on disk (see
//! [`crate::snapshot`]): a task streams its files on a connection of its
//! own and reports the outcome to raft with `report_snapshot`. Every
//! connection opens with this node's handshake ([`PeerIdentity`]).
//!
//! Receiving: [`check_peer_message`] is what a raft message from a member
//! must satisfy to be stepped.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use kv_net::{PeerIdentity, PeerSender};
use kv_raft::raft::eraftpb::{Message, MessageType};
use kv_raft::{Handle, Transport};
use protobuf2::Message as _;

use crate::snapshot::Descriptor;
use crate::store::Store;

/// The raft handle, set once the node has started (the transport is built
/// before it).
pub type HandleCell = Arc<OnceLock<Handle>>;

/// How often the links are checked against the address book.
const LINK_CHECK_EVERY: Duration = Duration::from_secs(2);

/// Sends raft messages to the other members.
pub struct PeerTransport {
    identity: PeerIdentity,
    /// The initial members (the `members` file); later ones are in the
    /// replicated address book.
    addrs: BTreeMap<u64, String>,
    senders: HashMap<u64, (String, PeerSender)>,
    /// When the links were last checked against the address book.
    checked: Instant,
    net: kv_net::Options,
    runtime: tokio::runtime::Handle,
    handle: HandleCell,
    store: Arc<Store>,
    metrics: crate::Metrics,
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
        store: Arc<Store>,
        metrics: crate::Metrics,
    ) -> kv_net::Result<PeerTransport> {
        let mut senders = HashMap::new();
        for (&peer, addr) in addrs {
            if peer == identity.node_id {
                continue;
            }
            senders.insert(
                peer,
                (
                    addr.clone(),
                    spawn_sender(identity, peer, addr, net, &handle)?,
                ),
            );
        }
        Ok(PeerTransport {
            identity,
            addrs: addrs.clone(),
            senders,
            checked: Instant::now(),
            net: net.clone(),
            runtime: tokio::runtime::Handle::current(),
            handle,
            store,
            metrics,
        })
    }

    /// The peer address of `to` in the address book.
    fn addr_of(&self, to: u64) -> Option<String> {
        crate::membership::peer_addr(self.store.current().db(), &self.addrs, to)
    }

    /// The link to `to`, dialled on first use from the address book.
    fn sender(&mut self, to: u64) -> Option<&PeerSender> {
        if !self.senders.contains_key(&to) {
            let addr = self.addr_of(to)?;
            let _runtime = self.runtime.enter();
            match spawn_sender(self.identity, to, &addr, &self.net, &self.handle) {
                Ok(sender) => {
                    tracing::info!(peer = to, %addr, "link to a new member");
                    self.senders.insert(to, (addr, sender));
                }
                Err(e) => {
                    tracing::warn!(peer = to, error = %e, "cannot start a link");
                    return None;
                }
            }
        }
        self.senders.get(&to).map(|(_, s)| s)
    }

    /// Drops the links of nodes the address book no longer holds (removed
    /// members) or holds at another address.
    fn prune(&mut self) {
        let now = Instant::now();
        if now.duration_since(self.checked) < LINK_CHECK_EVERY {
            return;
        }
        self.checked = now;
        let stale: Vec<u64> = self
            .senders
            .iter()
            .filter(|(id, (addr, _))| self.addr_of(**id).as_ref() != Some(addr))
            .map(|(id, _)| *id)
            .collect();
        for id in stale {
            tracing::info!(
                peer = id,
                "link to a node no longer in the address book dropped"
            );
            self.senders.remove(&id);
        }
    }

    fn send_snapshot(&mut self, msg: Message) {
        let to = msg.to;
        let Some(addr) = self.addr_of(to) else {
            tracing::warn!(peer = to, "snapshot for a node without an address");
            return;
        };
        let handle = self.handle.clone();
        let report = move |delivered: bool| {
            if let Some(h) = handle.get() {
                h.report_snapshot(to, delivered);
            }
        };
        let data = msg.get_snapshot().get_data();
        let pin = match Descriptor::decode(data) {
            Ok(d) => self.store.snapshots().pin(&d.name()),
            Err(e) => {
                tracing::warn!(peer = to, error = %e, "a snapshot this node cannot send");
                None
            }
        };
        let Some(pin) = pin else {
            tracing::warn!(
                peer = to,
                "the snapshot's checkpoint is gone; raft will ask for a newer one"
            );
            report(false);
            return;
        };
        let raft_message = match msg.write_to_bytes() {
            Ok(b) => Bytes::from(b),
            Err(e) => {
                tracing::error!(error = %e, "cannot encode a snapshot message");
                report(false);
                return;
            }
        };
        let snapshot_id = msg.get_snapshot().get_metadata().index;
        let (from, net, metrics) = (self.identity, self.net.clone(), self.metrics.clone());
        self.runtime.spawn(async move {
            let sent =
                crate::snapshot::send::send(pin, &addr, &net, from, to, snapshot_id, raft_message)
                    .await;
            match &sent {
                Ok(s) => metrics.snapshot_sent(s.sent),
                Err(e) => tracing::warn!(peer = to, error = %e, "snapshot transfer failed"),
            }
            report(sent.is_ok());
        });
    }
}

impl Transport for PeerTransport {
    fn send(&mut self, msgs: Vec<Message>) {
        self.prune();
        for msg in msgs {
            if msg.get_msg_type() == MessageType::MsgSnapshot {
                self.send_snapshot(msg);
                continue;
            }
            let Some(sender) = self.sender(msg.to) else {
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

/// Starts the link to `peer` at `addr`; must be called within a tokio
/// runtime.
fn spawn_sender(
    identity: PeerIdentity,
    peer: u64,
    addr: &str,
    net: &kv_net::Options,
    handle: &HandleCell,
) -> kv_net::Result<PeerSender> {
    let cell = handle.clone();
    PeerSender::spawn(identity, peer, addr.to_owned(), net, move |to| {
        if let Some(h) = cell.get() {
            h.report_unreachable(to);
        }
    })
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

#[cfg(test)]
mod tests {
    use super::*;

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
