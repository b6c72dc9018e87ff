//! Telling raft at once that a peer's process is gone.
//!
//! When a proven peer's connection ends, this node dials the peer's
//! address: a refused connection means nothing listens there (the process
//! died or stopped), which raft would otherwise conclude only after an
//! election timeout of silence. Raft is told ([`Handle::leader_gone`]) and,
//! if that peer was its leader, an election starts within milliseconds.
//! Pre-vote keeps this safe when the conclusion is wrong: voters that still
//! hear from a live leader ignore the campaign.

use std::time::Duration;

use kv_raft::Handle;

/// How long the dial may take before the peer counts as present (a slow
/// or paused peer is left to raft's timers).
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// Dials `addr` (peer `peer`'s) in the background; tells raft if it is
/// refused. Does nothing outside a tokio runtime.
pub(crate) fn probe(handle: Handle, peer: u64, addr: String) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    runtime.spawn(async move {
        match tokio::time::timeout(PROBE_TIMEOUT, tokio::net::TcpStream::connect(&addr)).await {
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                tracing::info!(peer, %addr, "peer connection closed and its address refuses connections: the peer is gone");
                handle.leader_gone(peer);
            }
            _ => tracing::debug!(peer, %addr, "peer connection closed; the peer still answers"),
        }
    });
}
