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

    /// The leader this node knows of changed (`None`: none known).
    fn leader_changed(&self, leader: Option<u64>) {
        let _ = leader;
    }
}
