//! Tunables of the log store and the driver.

use std::sync::Arc;
use std::time::Duration;

use crate::error::{Error, Result};

/// Options of a raft node and its log store. Start from [`Options::default`].
#[derive(Debug, Clone)]
pub struct Options {
    /// Interval between two raft ticks.
    pub tick_interval: Duration,
    /// Ticks without hearing from a leader before a follower campaigns
    /// (randomized in `[election_ticks, 2 * election_ticks)`).
    pub election_ticks: usize,
    /// Ticks between two leader heartbeats. Must be below `election_ticks`.
    pub heartbeat_ticks: usize,
    /// Take a snapshot and compact the log once this many entries were
    /// applied since the last snapshot.
    pub snapshot_threshold: u64,
    /// Also take one once this many bytes of entries were applied since the
    /// last snapshot: the log since the snapshot is held in memory, so this
    /// bounds that memory whatever the entries' size. A leader waits for a
    /// follower that is connected and behind (so that it need not be sent a
    /// whole snapshot) until four times either threshold is reached.
    pub snapshot_threshold_bytes: u64,
    /// Start a new segment file once the active one is this large.
    pub segment_bytes: u64,
    /// Upper bound on the bytes of entries in one append message.
    pub max_size_per_msg: u64,
    /// Maximum number of in-flight append messages per follower.
    pub max_inflight_msgs: usize,
    /// Bytes of entries appended by this leader and not yet committed; more
    /// proposals are dropped ([`Error::ProposalDropped`](crate::Error),
    /// certainly not applied) until the backlog commits. At least one entry
    /// is always let in. Must be at least `max_size_per_msg`.
    pub max_uncommitted_bytes: u64,
    /// Bytes of committed entries handed to the state machine in one
    /// `Ready` (at least one entry), so that a backlog is applied in steps
    /// between which the node keeps ticking and answering.
    pub max_committed_bytes_per_ready: u64,
    /// At most this many requests are taken from the queue before a `Ready`
    /// is handled; they share the `Ready`'s one fsync.
    pub max_batch: usize,
    /// Requests (proposals, reads, status calls, raft messages) queued for
    /// the driver thread; when full, further ones are refused with
    /// [`crate::Error::Overloaded`] (definite; a raft message is dropped,
    /// which raft tolerates) instead of queueing without bound.
    pub max_queued_requests: usize,
    /// Largest record (an entry, a snapshot's metadata and data) the log
    /// store writes; at most (and by default) 1 GiB. A write of a larger one
    /// fails, which stops the node.
    pub max_record_bytes: usize,
    /// How long a linearizable read may wait for its read index.
    pub read_timeout: Duration,
    /// Call `fsync` (`fdatasync`). Only tests and benchmarks of the
    /// non-durable path turn this off.
    pub sync: bool,
    /// Told of fsync durations and leader changes (metrics).
    pub observer: Option<Arc<dyn crate::Observer>>,
    /// Serve linearizable reads on the leader without a heartbeat round
    /// while its lease holds (see [`Options::lease`]). Off by default.
    ///
    /// The lease rests on a clock assumption: the nodes' monotonic clocks
    /// advance at rates within 20% of each other, and a node's raft thread
    /// is never ahead of its clock (ticks are never early). A quorum that
    /// acknowledged a heartbeat round sent at T will not elect another
    /// leader before T plus an election timeout by their clocks; the leader
    /// uses its lease only until T + [`Options::lease`], shorter by the
    /// drift allowed and a tick. Leadership transfers end the lease first;
    /// a follower that learns its leader is gone
    /// ([`crate::Handle::leader_gone`]) waits out a lease before it
    /// campaigns.
    pub lease_reads: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            tick_interval: Duration::from_millis(100),
            election_ticks: 10,
            heartbeat_ticks: 3,
            snapshot_threshold: 10_000,
            snapshot_threshold_bytes: 64 << 20,
            segment_bytes: 64 << 20,
            max_size_per_msg: 1 << 20,
            max_inflight_msgs: 256,
            max_uncommitted_bytes: 128 << 20,
            max_committed_bytes_per_ready: 32 << 20,
            max_batch: 1024,
            max_queued_requests: 65_536,
            max_record_bytes: 1 << 30,
            read_timeout: Duration::from_secs(3),
            sync: true,
            observer: None,
            lease_reads: false,
        }
    }
}

impl Options {
    /// How long after a heartbeat round is sent its acknowledgement by a
    /// quorum lets the leader serve reads alone: 80% of the minimum
    /// election timeout, less one tick.
    #[must_use]
    pub fn lease(&self) -> Duration {
        let election = self.tick_interval * u32::try_from(self.election_ticks).unwrap_or(u32::MAX);
        (election * 4 / 5).saturating_sub(self.tick_interval)
    }

    /// Checks that the options are usable together.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] naming the first bad option.
    pub fn validate(&self) -> Result<()> {
        let bad = |s: &str| Err(Error::InvalidArgument(s.to_owned()));
        if self.tick_interval.is_zero() {
            return bad("tick_interval must be positive");
        }
        if self.heartbeat_ticks == 0 {
            return bad("heartbeat_ticks must be positive");
        }
        if self.election_ticks <= self.heartbeat_ticks {
            return bad("election_ticks must be greater than heartbeat_ticks");
        }
        if self.lease_reads && self.lease().is_zero() {
            return bad("lease_reads needs an election timeout of more than 1.25 ticks");
        }
        if self.snapshot_threshold == 0 {
            return bad("snapshot_threshold must be positive");
        }
        if self.snapshot_threshold_bytes == 0 {
            return bad("snapshot_threshold_bytes must be positive");
        }
        if self.segment_bytes < 4096 {
            return bad("segment_bytes must be at least 4096");
        }
        if self.max_inflight_msgs == 0 {
            return bad("max_inflight_msgs must be positive");
        }
        if self.max_uncommitted_bytes < self.max_size_per_msg {
            return bad("max_uncommitted_bytes must be at least max_size_per_msg");
        }
        if self.max_committed_bytes_per_ready == 0 {
            return bad("max_committed_bytes_per_ready must be positive");
        }
        if self.max_batch == 0 {
            return bad("max_batch must be positive");
        }
        if self.max_queued_requests == 0 {
            return bad("max_queued_requests must be positive");
        }
        if self.read_timeout.is_zero() {
            return bad("read_timeout must be positive");
        }
        if self.max_record_bytes < 4096 || self.max_record_bytes > 1 << 30 {
            return bad("max_record_bytes must be within [4 KiB, 1 GiB]");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid() {
        Options::default().validate().unwrap();
    }

    #[test]
    fn election_must_exceed_heartbeat() {
        let o = Options {
            election_ticks: 3,
            heartbeat_ticks: 3,
            ..Options::default()
        };
        assert!(matches!(o.validate(), Err(Error::InvalidArgument(_))));
    }
}
