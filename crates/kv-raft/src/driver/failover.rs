//! Failover without a timer: what the driver does when it learns that its
//! leader's process is gone ([`Handle::leader_gone`](super::Handle::leader_gone)).

use std::time::{Duration, Instant};

use raft::StateRole;

use super::Driver;
use crate::state_machine::{StateMachine, Transport};

/// See [`Driver::rush`].
#[derive(Debug, Clone, Copy)]
pub(super) struct Rush {
    /// The leader seen gone, and the term in which it was.
    leader: u64,
    term: u64,
    pub(super) next: Instant,
    left: u32,
    /// This node campaigns (else it only gives up the lease).
    campaign: bool,
    /// The lease has been given up.
    released: bool,
}

/// Campaigns after the leader was seen gone, and the time between them.
const RUSH_ATTEMPTS: u32 = 5;
const RUSH_EVERY: Duration = Duration::from_millis(25);

impl<S: StateMachine, T: Transport> Driver<S, T> {
    /// See [`Handle::leader_gone`](super::Handle::leader_gone).
    pub(super) fn leader_gone(&mut self, id: u64) {
        let raft = &self.raw.raft;
        if raft.state != StateRole::Follower || raft.leader_id != id || self.rush.is_some() {
            return;
        }
        let first = raft
            .prs()
            .conf()
            .voters()
            .ids()
            .iter()
            .filter(|&v| v != id)
            .min();
        let campaign = first == Some(raft.id);
        // With lease reads the gone leader's lease is waited out: it began
        // before this node last heard from it.
        let wait = if self.opts.lease_reads {
            self.opts.lease()
        } else {
            Duration::ZERO
        };
        tracing::info!(leader = id, campaign, ?wait, "the leader is gone");
        self.rush = Some(Rush {
            leader: id,
            term: raft.term,
            next: Instant::now() + wait,
            left: RUSH_ATTEMPTS,
            campaign,
            released: false,
        });
    }

    /// Gives up the lease and campaigns (again) while a rush is on and no
    /// new leader is known.
    pub(super) fn rush_campaign(&mut self, now: Instant) {
        let Some(mut rush) = self.rush else {
            return;
        };
        let raft = &mut self.raw.raft;
        let settled = raft.term > rush.term
            && (raft.state == StateRole::Leader
                || (raft.state == StateRole::Follower && raft.leader_id != 0));
        // Heard from the leader again (it was not gone after all).
        let back = !rush.released && (raft.term != rush.term || raft.leader_id != rush.leader);
        if settled || back || rush.left == 0 {
            self.rush = None;
            return;
        }
        if now < rush.next {
            return;
        }
        if !rush.released {
            // The lease is given up: this node now grants votes.
            raft.election_elapsed = raft.election_elapsed.max(raft.election_timeout());
            rush.released = true;
        }
        if !rush.campaign {
            self.rush = None;
            return;
        }
        // A candidate waits for its votes: campaigning again would start
        // a new term and throw away the election under way.
        if raft.state != StateRole::Candidate {
            let _ = self.raw.campaign();
        }
        rush.next = now + RUSH_EVERY;
        rush.left -= 1;
        self.rush = Some(rush);
    }
}
