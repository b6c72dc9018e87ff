//! Linearizable reads: ReadIndex rounds, batched, and (with
//! `Options::lease_reads`) the leader's lease.

use std::time::Instant;

use raft::StateRole;

use super::{Driver, Waiter};
use crate::error::Error;
use crate::state_machine::{StateMachine, Transport};

impl<S: StateMachine, T: Transport> Driver<S, T> {
    /// Whether this leader may serve reads alone now.
    pub(super) fn lease_holds(&self, now: Instant) -> bool {
        let raft = &self.raw.raft;
        self.opts.lease_reads
            && raft.state == StateRole::Leader
            && raft.lead_transferee.is_none()
            && raft.commit_to_current_term()
            && self
                .lease
                .is_some_and(|(term, until)| term == raft.term && now < until)
    }

    /// Sends all queued reads as one ReadIndex request.
    pub(super) fn flush_reads(&mut self) {
        if self.read_queue.is_empty() {
            return;
        }
        if self.raw.raft.leader_id == 0 {
            for w in self.read_queue.drain(..) {
                w.resolver.resolve(Err(Error::NotLeader { leader: None }));
            }
            return;
        }
        if self.raw.raft.state == StateRole::Leader && !self.raw.raft.commit_to_current_term() {
            // raft-rs drops such requests; keep them until the leader's
            // no-op entry commits (or they time out).
            return;
        }
        let now = Instant::now();
        if self.lease_holds(now) {
            let index = self.raw.raft.raft_log.committed;
            for w in std::mem::take(&mut self.read_queue) {
                if self.applied >= index {
                    w.resolver.resolve(Ok(index));
                } else {
                    self.read_waiting.entry(index).or_default().push(w.resolver);
                }
            }
            // Renewed ahead of time by a round of its own while reads come.
            let renewing = self
                .rounds_sent
                .values()
                .any(|&(_, sent)| sent + self.opts.lease() / 2 > now);
            if !renewing {
                self.send_round(Vec::new());
            }
            return;
        }
        let batch = std::mem::take(&mut self.read_queue);
        self.send_round(batch);
    }

    /// Sends one ReadIndex round for `batch`.
    pub(super) fn send_round(&mut self, batch: Vec<Waiter<u64>>) {
        let ctx = self.next_ctx;
        self.next_ctx += 1;
        // The leader keys pending reads by context, so it must be unique
        // across nodes and restarts: node id + a counter seeded by the clock.
        let mut rctx = self.raw.raft.id.to_le_bytes().to_vec();
        rctx.extend_from_slice(&ctx.to_le_bytes());
        self.raw.read_index(rctx);
        if self.opts.lease_reads && self.raw.raft.state == StateRole::Leader {
            self.rounds_sent
                .insert(ctx, (self.raw.raft.term, Instant::now()));
        }
        self.read_batches.insert(ctx, batch);
    }

    pub(super) fn read_ready(&mut self, index: u64, ctx: &[u8]) {
        let Some(bytes) = ctx.get(8..16).and_then(|b| <[u8; 8]>::try_from(b).ok()) else {
            return;
        };
        let ctx = u64::from_le_bytes(bytes);
        if let Some((term, sent)) = self.rounds_sent.remove(&ctx)
            && self.raw.raft.state == StateRole::Leader
            && self.raw.raft.term == term
            && self.raw.raft.lead_transferee.is_none()
        {
            // A quorum acknowledged this leader after `sent`.
            let until = sent + self.opts.lease();
            let longer = self
                .lease
                .filter(|&(t, u)| t == term && u > until)
                .map_or(until, |(_, u)| u);
            self.lease = Some((term, longer));
        }
        let Some(batch) = self.read_batches.remove(&ctx) else {
            return;
        };
        for w in batch {
            if self.applied >= index {
                w.resolver.resolve(Ok(index));
            } else {
                self.read_waiting.entry(index).or_default().push(w.resolver);
            }
        }
    }

    pub(super) fn resolve_reads(&mut self) {
        while let Some(entry) = self.read_waiting.first_entry() {
            if *entry.key() > self.applied {
                break;
            }
            let index = *entry.key();
            for r in entry.remove() {
                r.resolve(Ok(index));
            }
        }
    }
}
