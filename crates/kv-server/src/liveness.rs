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

/// Dials of a peer whose connection closed, and the pause before each:
/// a dying process closes its connections a moment before its listener,
/// so an accepted dial right away proves little.
const PROBE_PAUSES_MS: [u64; 4] = [0, 10, 30, 60];

/// Dials `addr` (peer `peer`'s) in the background a few times; tells raft
/// if a dial is refused. Does nothing outside a tokio runtime.
pub(crate) fn probe(handle: Handle, peer: u64, addr: String) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    runtime.spawn(async move {
        for pause in PROBE_PAUSES_MS {
            tokio::time::sleep(Duration::from_millis(pause)).await;
            match tokio::time::timeout(PROBE_TIMEOUT, tokio::net::TcpStream::connect(&addr)).await
            {
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    tracing::info!(peer, %addr, "peer connection closed and its address refuses connections: the peer is gone");
                    handle.leader_gone(peer);
                    return;
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    tracing::debug!(peer, %addr, error = %e, "peer connection closed; dialing it failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(peer, %addr, "peer connection closed; dialing it timed out");
                    return;
                }
            }
        }
        tracing::debug!(peer, %addr, "peer connection closed; the peer still accepts connections");
    });
}
