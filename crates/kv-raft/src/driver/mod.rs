//! The driver: one thread that owns the `RawNode`, its [`LogStore`] and the
//! [`StateMachine`], fed through a channel by cloneable [`Handle`]s.
//!
//! Each loop iteration takes up to `Options::max_batch` requests from the
//! channel (so proposals arriving while a `Ready` was being persisted share the
//! next one's fsync), ticks when due, then handles the `Ready`:
//!
//! 1. send `messages` (they do not depend on this node's disk);
//! 2. install a received snapshot in the log store (the snapshot file is
//!    replaced atomically);
//! 3. append `entries`, record the hard state, **one fsync**;
//! 4. restore the state machine from the snapshot, if one came;
//! 5. send `persisted_messages` (votes, append responses);
//! 6. hand out read states; apply `committed_entries` (the commit index they
//!    need is already durable);
//! 7. `advance`; for the `LightReady`: persist a new commit index, send, apply;
//!    `advance_apply`.
//!
//! Afterwards, when more than `snapshot_threshold` entries or
//! `snapshot_threshold_bytes` bytes of entries were applied since the last
//! snapshot, the state machine is asked for one and the log is compacted (a
//! leader first gives a connected follower that is behind some time to catch
//! up from the log).

use std::collections::{BTreeMap, HashMap};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, TryRecvError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use protobuf::Message as _;
use raft::eraftpb::{ConfChange, ConfChangeV2, ConfState, Entry, EntryType, Snapshot};
use raft::{RawNode, SnapshotStatus, StateRole, Storage};

use crate::completion::Resolver;
use crate::error::{Error, Result};
use crate::log_store::{LogStore, WrittenCompact};
use crate::options::Options;
use crate::state_machine::{StateMachine, Transport};

mod failover;
mod handle;
mod node;
mod reads;

use handle::Request;
pub use handle::{Handle, PeerProgress, Role, Status};
pub use node::Node;

/// A `Ready` that takes this long to handle is logged: every request of the
/// node waits for it.
const SLOW_READY: Duration = Duration::from_millis(500);

enum PendingKind {
    Normal(Resolver<Vec<u8>>),
    Conf(Resolver<ConfState>),
}

struct Pending {
    term: u64,
    kind: PendingKind,
}

struct Waiter<T> {
    deadline: Instant,
    resolver: Resolver<T>,
}

struct Driver<S, T> {
    opts: Options,
    raw: RawNode<LogStore>,
    sm: S,
    transport: T,
    rx: Receiver<Request>,
    /// Proposals appended by this leader, by log index.
    proposals: BTreeMap<u64, Pending>,
    /// Reads not yet sent to raft.
    read_queue: Vec<Waiter<u64>>,
    /// Reads sent to raft, by request context.
    read_batches: HashMap<u64, Vec<Waiter<u64>>>,
    /// Reads that have their read index and wait for it to be applied.
    read_waiting: BTreeMap<u64, Vec<Resolver<u64>>>,
    next_ctx: u64,
    transfers: Vec<(u64, Instant, Resolver<()>)>,
    applied: u64,
    /// Bytes of entries applied since the last snapshot was begun.
    applied_bytes: u64,
    leader_id: u64,
    was_leader: bool,
    /// The snapshot being built off this thread, if any.
    snapshot_job: Option<Receiver<Result<WrittenCompact>>>,
    snapshot_thread: Option<JoinHandle<()>>,
    /// A campaign after the leader was seen gone: the next attempt and the
    /// attempts left (a voter may learn that the leader is gone a moment
    /// after this node, and ignore its pre-vote until then).
    rush: Option<failover::Rush>,
    /// ReadIndex rounds this leader sent: term and time sent, by context.
    rounds_sent: HashMap<u64, (u64, Instant)>,
    /// With `lease_reads`: the term and the end of this leader's lease.
    lease: Option<(u64, Instant)>,
}

impl<S: StateMachine, T: Transport> Driver<S, T> {
    fn run(mut self) -> Result<()> {
        let tick = self.opts.tick_interval;
        let mut next_tick = Instant::now() + tick;
        let result = loop {
            let now = Instant::now();
            let wake = self.rush.map_or(next_tick, |r| r.next.min(next_tick));
            let first = match self.rx.recv_timeout(wake.saturating_duration_since(now)) {
                Ok(r) => Some(r),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => break Ok(()),
            };
            let mut stop = false;
            if let Some(r) = first {
                stop = self.handle(r);
                let mut n = 1;
                while !stop && n < self.opts.max_batch {
                    match self.rx.try_recv() {
                        Ok(r) => stop = self.handle(r),
                        Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
                    }
                    n += 1;
                }
            }
            if stop {
                break Ok(());
            }
            let now = Instant::now();
            if now >= next_tick {
                self.raw.tick();
                next_tick += tick;
                if next_tick < now {
                    next_tick = now + tick;
                }
                self.expire(now);
            }
            self.rush_campaign(now);
            self.flush_reads();
            if let Err(e) = self.on_ready().and_then(|()| self.maybe_snapshot()) {
                break Err(e);
            }
        };
        // What was written without an fsync (commit-only hard states) is
        // made durable on a clean stop.
        let result = result.and_then(|()| self.raw.mut_store().sync());
        self.fail_all();
        // A snapshot thread must not outlive the node: a new node on the
        // same directory would write the same file. What it finished is
        // installed (unless the node failed).
        if let Some(t) = self.snapshot_thread.take() {
            let _ = t.join();
        }
        if result.is_ok()
            && let Some(rx) = self.snapshot_job.take()
            && let Ok(Ok(written)) = rx.try_recv()
        {
            let _ = self.raw.mut_store().finish_compact(written);
        }
        result
    }

    fn leader_hint(&self) -> Option<u64> {
        match self.raw.raft.leader_id {
            0 => None,
            id => Some(id),
        }
    }

    fn not_leader(&self) -> Error {
        Error::NotLeader {
            leader: self.leader_hint(),
        }
    }

    /// Handles one request; true means stop.
    fn handle(&mut self, req: Request) -> bool {
        match req {
            Request::Propose(cmd, r) => {
                if self.raw.raft.state != StateRole::Leader {
                    r.resolve(Err(self.not_leader()));
                    return false;
                }
                match self.raw.propose(Vec::new(), cmd) {
                    Ok(()) => self.track(PendingKind::Normal(r)),
                    Err(raft::Error::ProposalDropped) => r.resolve(Err(Error::ProposalDropped)),
                    Err(e) => r.resolve(Err(Error::Raft(e))),
                }
            }
            Request::ConfChange(cc, r) => {
                if self.raw.raft.state != StateRole::Leader {
                    r.resolve(Err(self.not_leader()));
                    return false;
                }
                match self.raw.propose_conf_change(Vec::new(), cc) {
                    Ok(()) => self.track(PendingKind::Conf(r)),
                    Err(raft::Error::ProposalDropped) => r.resolve(Err(Error::ProposalDropped)),
                    Err(e) => r.resolve(Err(Error::Raft(e))),
                }
            }
            Request::Read(r) => self.read_queue.push(Waiter {
                deadline: Instant::now() + self.opts.read_timeout,
                resolver: r,
            }),
            Request::Transfer(to, r) => {
                if self.raw.raft.state != StateRole::Leader {
                    r.resolve(Err(self.not_leader()));
                } else if to == self.raw.raft.id {
                    r.resolve(Ok(()));
                } else {
                    // The target may be elected at once, lease or not.
                    self.lease = None;
                    self.raw.transfer_leader(to);
                    let timeout = self.opts.tick_interval * (4 * self.opts.election_ticks) as u32;
                    self.transfers.push((to, Instant::now() + timeout, r));
                }
            }
            Request::Campaign(r) => r.resolve(self.raw.campaign().map_err(Error::Raft)),
            Request::Step(m) => {
                // Errors here are messages from unknown peers or of local
                // types; raft ignores them and so do we.
                let _ = self.raw.step(*m);
            }
            Request::Unreachable(id) => self.raw.report_unreachable(id),
            Request::LeaderGone(id) => self.leader_gone(id),
            Request::SnapshotStatus(id, ok) => self.raw.report_snapshot(
                id,
                if ok {
                    SnapshotStatus::Finish
                } else {
                    SnapshotStatus::Failure
                },
            ),
            Request::Status(r) => r.resolve(Ok(self.status())),
            Request::Stop => return true,
        }
        false
    }

    fn track(&mut self, kind: PendingKind) {
        let index = self.raw.raft.raft_log.last_index();
        let term = self.raw.raft.term;
        self.proposals.insert(index, Pending { term, kind });
    }

    fn status(&self) -> Status {
        let raft = &self.raw.raft;
        let conf = raft.prs().conf();
        let cs = conf.to_conf_state();
        let mut voters = cs.voters.clone();
        voters.extend(cs.voters_outgoing.iter().copied());
        voters.sort_unstable();
        voters.dedup();
        let mut progress = BTreeMap::new();
        if raft.state == StateRole::Leader {
            for (id, pr) in raft.prs().iter() {
                progress.insert(
                    *id,
                    PeerProgress {
                        matched: pr.matched,
                        next_index: pr.next_idx,
                        snapshot_pending: pr.pending_snapshot != 0,
                        learner: cs.learners.contains(id),
                        recent_active: pr.recent_active,
                    },
                );
            }
        }
        let store = self.raw.store();
        Status {
            id: raft.id,
            role: raft.state.into(),
            term: raft.term,
            leader_id: self.leader_hint(),
            commit: raft.raft_log.committed,
            applied: self.applied,
            first_index: store.first_index().unwrap_or(0),
            last_index: raft.raft_log.last_index(),
            voters,
            learners: cs.learners,
            progress,
        }
    }

    fn expire(&mut self, now: Instant) {
        let (late, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.read_queue)
            .into_iter()
            .partition(|w| w.deadline <= now);
        self.read_queue = keep;
        for w in late {
            w.resolver.resolve(Err(Error::Timeout));
        }
        for batch in self.read_batches.values_mut() {
            let (late, keep): (Vec<_>, Vec<_>) = std::mem::take(batch)
                .into_iter()
                .partition(|w| w.deadline <= now);
            *batch = keep;
            for w in late {
                w.resolver.resolve(Err(Error::Timeout));
            }
        }
        self.read_batches.retain(|_, b| !b.is_empty());
        let timeout = self.opts.read_timeout;
        self.rounds_sent
            .retain(|_, (_, sent)| now.duration_since(*sent) < timeout);
        let (late, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.transfers)
            .into_iter()
            .partition(|(_, d, _)| *d <= now);
        self.transfers = keep;
        for (_, _, r) in late {
            r.resolve(Err(Error::Timeout));
        }
    }

    fn on_ready(&mut self) -> Result<()> {
        if !self.raw.has_ready() {
            return Ok(());
        }
        let started = Instant::now();
        let mut rd = self.raw.ready();
        let ss = rd.ss().map(|ss| (ss.leader_id, ss.raft_state));
        let appended = rd.entries().len();

        if !rd.messages().is_empty() {
            self.transport.send(rd.take_messages());
        }
        let snapshot = if rd.snapshot().is_empty() {
            None
        } else {
            let snap = rd.snapshot().clone();
            self.raw.mut_store().apply_snapshot(snap.clone())?;
            Some(snap)
        };
        if !rd.entries().is_empty() {
            self.raw.mut_store().append(rd.entries())?;
        }
        if let Some(hs) = rd.hs() {
            self.raw.mut_store().set_hard_state(hs)?;
        }
        if rd.must_sync() || snapshot.is_some() {
            self.raw.mut_store().sync()?;
        } else {
            // Only `commit` moved: no fsync (raft-rs' `must_sync`).
            self.raw.mut_store().write_unsynced()?;
        }
        let persisted = started.elapsed();
        if let Some(snap) = snapshot {
            self.restore(&snap)?;
        }
        if !rd.persisted_messages().is_empty() {
            self.transport.send(rd.take_persisted_messages());
        }
        for rs in rd.take_read_states() {
            self.read_ready(rs.index, &rs.request_ctx);
        }
        let committed = rd.take_committed_entries();
        let mut applied = committed.len();
        self.apply(committed)?;

        let mut light = self.raw.advance(rd);
        if let Some(commit) = light.commit_index() {
            // A leader's commit index moved: persisted, not fsynced (a
            // crash may cost it; it is learned again, and recovery raises
            // it to the applied index).
            let mut hs = self.raw.store().hard_state().clone();
            hs.commit = commit;
            self.raw.mut_store().set_hard_state(&hs)?;
            self.raw.mut_store().write_unsynced()?;
        }
        if !light.messages().is_empty() {
            self.transport.send(light.take_messages());
        }
        let committed = light.take_committed_entries();
        applied += committed.len();
        self.apply(committed)?;
        self.raw.advance_apply();
        let took = started.elapsed();
        if took >= SLOW_READY {
            tracing::warn!(
                took_ms = took.as_millis(),
                persist_ms = persisted.as_millis(),
                appended,
                applied,
                "slow raft ready: requests wait for it"
            );
        }

        if let Some((leader, role)) = ss {
            self.on_soft_state(leader, role);
        }
        if let Some(o) = &self.opts.observer {
            o.raft_state(&crate::RaftState {
                term: self.raw.raft.term,
                commit: self.raw.raft.raft_log.committed,
                applied: self.applied,
                leader: self.raw.raft.state == StateRole::Leader,
            });
        }
        Ok(())
    }

    fn on_soft_state(&mut self, leader: u64, role: StateRole) {
        let is_leader = role == StateRole::Leader;
        if self.was_leader && !is_leader {
            for (_, p) in std::mem::take(&mut self.proposals) {
                let e = || Error::UnknownOutcome("leadership lost before the entry was applied");
                match p.kind {
                    PendingKind::Normal(r) => r.resolve(Err(e())),
                    PendingKind::Conf(r) => r.resolve(Err(e())),
                }
            }
        }
        if leader != self.leader_id {
            tracing::info!(
                leader,
                previous = self.leader_id,
                term = self.raw.raft.term,
                role = ?role,
                "leader changed"
            );
            if let Some(o) = &self.opts.observer {
                o.leader_changed((leader != 0).then_some(leader));
            }
            // Outstanding ReadIndex rounds die with the old leader's term.
            self.rounds_sent.clear();
            self.lease = None;
            for (_, batch) in self.read_batches.drain() {
                for w in batch {
                    w.resolver.resolve(Err(Error::NotLeader {
                        leader: (leader != 0).then_some(leader),
                    }));
                }
            }
            let (done, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.transfers)
                .into_iter()
                .partition(|(to, _, _)| *to == leader);
            self.transfers = keep;
            for (_, _, r) in done {
                r.resolve(Ok(()));
            }
        }
        self.leader_id = leader;
        self.was_leader = is_leader;
    }

    fn restore(&mut self, snap: &Snapshot) -> Result<()> {
        let meta = snap.get_metadata();
        self.sm
            .restore(meta.index, meta.term, &snap.data)
            .map_err(Error::StateMachine)?;
        self.applied = meta.index;
        self.applied_bytes = 0;
        let rest = self.proposals.split_off(&(meta.index + 1));
        for (_, p) in std::mem::replace(&mut self.proposals, rest) {
            let e = || Error::UnknownOutcome("replaced by a snapshot");
            match p.kind {
                PendingKind::Normal(r) => r.resolve(Err(e())),
                PendingKind::Conf(r) => r.resolve(Err(e())),
            }
        }
        self.resolve_reads();
        Ok(())
    }

    fn apply(&mut self, entries: Vec<Entry>) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        for e in entries {
            if e.index <= self.applied {
                continue;
            }
            let pending = self.proposals.remove(&e.index);
            match e.get_entry_type() {
                EntryType::EntryNormal => {
                    let out = self
                        .sm
                        .apply(e.index, e.term, &e.data)
                        .map_err(Error::StateMachine)?;
                    if let Some(p) = pending {
                        match p.kind {
                            PendingKind::Normal(r) if p.term == e.term => r.resolve(Ok(out)),
                            PendingKind::Normal(r) => {
                                r.resolve(Err(Error::Superseded { index: e.index }));
                            }
                            // raft turns a conf change it refuses into an
                            // empty normal entry.
                            PendingKind::Conf(r) if p.term == e.term => {
                                r.resolve(Err(Error::ProposalDropped));
                            }
                            PendingKind::Conf(r) => {
                                r.resolve(Err(Error::Superseded { index: e.index }));
                            }
                        }
                    }
                }
                EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => {
                    let outcome = self.apply_conf_change(&e)?;
                    self.sm
                        .apply(e.index, e.term, &[])
                        .map_err(Error::StateMachine)?;
                    if let Some(p) = pending {
                        let same = p.term == e.term;
                        match p.kind {
                            PendingKind::Conf(r) if same => r.resolve(outcome),
                            PendingKind::Conf(r) => {
                                r.resolve(Err(Error::Superseded { index: e.index }));
                            }
                            PendingKind::Normal(r) => {
                                r.resolve(Err(Error::Superseded { index: e.index }));
                            }
                        }
                    }
                }
            }
            self.applied = e.index;
            self.applied_bytes += (e.data.len() + e.context.len()) as u64;
        }
        self.resolve_reads();
        Ok(())
    }

    /// Applies a committed conf change. The outer error is fatal; the inner
    /// one is raft refusing this change (deterministically, on every node).
    fn apply_conf_change(&mut self, e: &Entry) -> Result<Result<ConfState>> {
        let bad = |why: String| Error::Raft(raft::Error::ConfChangeError(why));
        let applied = if e.get_entry_type() == EntryType::EntryConfChangeV2 {
            let cc = ConfChangeV2::parse_from_bytes(&e.data)
                .map_err(|err| bad(format!("entry {}: {err}", e.index)))?;
            self.raw.apply_conf_change(&cc)
        } else {
            let cc = ConfChange::parse_from_bytes(&e.data)
                .map_err(|err| bad(format!("entry {}: {err}", e.index)))?;
            self.raw.apply_conf_change(&cc)
        };
        match applied {
            Ok(cs) => {
                // Durable before the state machine can move past this index,
                // so a restart replays from a consistent configuration.
                self.raw.mut_store().set_conf_state(e.index, cs.clone())?;
                self.raw.mut_store().sync()?;
                Ok(Ok(cs))
            }
            Err(err) => Ok(Err(Error::Raft(err))),
        }
    }

    /// Takes a snapshot when due. Its slow part (the state machine's job,
    /// writing and syncing the file) runs on a thread of its own, so that
    /// this node keeps committing meanwhile; at most one runs at a time, and
    /// its result is installed here once it is done.
    fn maybe_snapshot(&mut self) -> Result<()> {
        if let Some(rx) = &self.snapshot_job {
            let written = match rx.try_recv() {
                Err(TryRecvError::Empty) => return Ok(()),
                Err(TryRecvError::Disconnected) => Err(Error::StateMachine(
                    "the snapshot thread ended without a result".into(),
                )),
                Ok(written) => written,
            };
            self.snapshot_job = None;
            self.raw.mut_store().finish_compact(written?)?;
            return Ok(());
        }
        let snap_index = self.raw.store().snapshot_ref().get_metadata().index;
        let wanted = self.raw.store().take_snapshot_wanted() && self.applied > snap_index;
        if !wanted && !self.snapshot_due(snap_index) {
            return Ok(());
        }
        self.applied_bytes = 0;
        let pending = self.raw.store().prepare_compact(self.applied)?;
        let job = self.sm.begin_snapshot().map_err(Error::StateMachine)?;
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name(format!("raft-{}-snapshot", self.raw.raft.id))
            .spawn(move || {
                let written = job()
                    .map_err(Error::StateMachine)
                    .and_then(|data| pending.write(data));
                let _ = tx.send(written);
            })
            .map_err(|e| Error::io("<thread spawn>", e))?;
        self.snapshot_job = Some(rx);
        self.snapshot_thread = Some(thread);
        Ok(())
    }

    /// Whether enough was applied since the snapshot at `snap_index` for a
    /// new one. A leader holds off while a connected follower is behind the
    /// applied index but still within the log (compacting would leave it a
    /// whole snapshot to fetch), up to four times the thresholds.
    fn snapshot_due(&self, snap_index: u64) -> bool {
        let entries = self.applied.saturating_sub(snap_index);
        let (n, b) = (
            self.opts.snapshot_threshold,
            self.opts.snapshot_threshold_bytes,
        );
        if entries < n && self.applied_bytes < b {
            return false;
        }
        if entries >= 4 * n || self.applied_bytes >= 4 * b {
            return true;
        }
        let raft = &self.raw.raft;
        if raft.state != StateRole::Leader {
            return true;
        }
        let me = raft.id;
        !raft.prs().iter().any(|(id, p)| {
            *id != me && p.recent_active && p.matched >= snap_index && p.matched < self.applied
        })
    }

    fn fail_all(&mut self) {
        for (_, p) in std::mem::take(&mut self.proposals) {
            let e = || Error::UnknownOutcome("node stopped");
            match p.kind {
                PendingKind::Normal(r) => r.resolve(Err(e())),
                PendingKind::Conf(r) => r.resolve(Err(e())),
            }
        }
        // Everything else resolves with Error::Stopped when dropped.
    }
}
