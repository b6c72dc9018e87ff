//! [`Observer`]: what a node measures of itself, for a metrics registry the
//! caller owns (kv-raft depends on none).

use std::fmt::Debug;
use std::time::Duration;

/// Receives a node's measurements. Called on the raft thread: every method
/// must be cheap and must not block (a counter or histogram update).
pub trait Observer: Debug + Send + Sync {
    /// The log store made a write durable; `elapsed` is the `fdatasync`.
    fn log_synced(&self, elapsed: Duration) {
        let _ = elapsed;
    }

    /// After each handled `Ready`: the node's term, commit and applied
    /// indexes, and whether it leads.
    fn raft_state(&self, state: &RaftState) {
        let _ = state;
    }

    /// The leader this node knows of changed (`None`: none known).
    fn leader_changed(&self, leader: Option<u64>) {
        let _ = leader;
    }
}

/// What [`Observer::raft_state`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RaftState {
    /// Current term.
    pub term: u64,
    /// Highest committed index.
    pub commit: u64,
    /// Highest applied index.
    pub applied: u64,
    /// This node leads.
    pub leader: bool,
}
