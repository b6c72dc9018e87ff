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
//! Afterwards, when more than `snapshot_threshold` entries were applied since
//! the last snapshot, the state machine is asked for one and the log is
//! compacted.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TryRecvError, TrySendError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use protobuf::Message as _;
use raft::eraftpb::{
    ConfChange, ConfChangeSingle, ConfChangeType, ConfChangeV2, ConfState, Entry, EntryType,
    Message, Snapshot,
};
use raft::{RawNode, SnapshotStatus, StateRole, Storage};

use crate::completion::{self, Completion, Resolver};
use crate::error::{Error, Result};
use crate::log_store::{LogStore, WrittenCompact};
use crate::options::Options;
use crate::state_machine::{StateMachine, Transport};

/// A `Ready` that takes this long to handle is logged: every request of the
/// node waits for it.
const SLOW_READY: Duration = Duration::from_millis(500);

/// The role of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Role {
    /// Follows a leader (or waits for one).
    Follower,
    /// Probing whether an election could be won (pre-vote).
    PreCandidate,
    /// Campaigning.
    Candidate,
    /// The leader.
    Leader,
}

impl From<StateRole> for Role {
    fn from(r: StateRole) -> Self {
        match r {
            StateRole::Follower => Role::Follower,
            StateRole::PreCandidate => Role::PreCandidate,
            StateRole::Candidate => Role::Candidate,
            StateRole::Leader => Role::Leader,
        }
    }
}

/// Replication progress of one peer, as seen by the leader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerProgress {
    /// Highest index known to be in the peer's log.
    pub matched: u64,
    /// Next index to send.
    pub next_index: u64,
    /// Whether a snapshot is being sent to it.
    pub snapshot_pending: bool,
    /// Whether it is a learner.
    pub learner: bool,
}

/// A point-in-time view of a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// This node's id.
    pub id: u64,
    /// Its role.
    pub role: Role,
    /// Current term.
    pub term: u64,
    /// The leader it knows of.
    pub leader_id: Option<u64>,
    /// Commit index.
    pub commit: u64,
    /// Applied index.
    pub applied: u64,
    /// First index still in the log (entries before are in the snapshot).
    pub first_index: u64,
    /// Last index in the log.
    pub last_index: u64,
    /// Voters of the current configuration (both halves when joint).
    pub voters: Vec<u64>,
    /// Learners of the current configuration.
    pub learners: Vec<u64>,
    /// Progress of every peer, this node included; empty unless leader.
    pub progress: BTreeMap<u64, PeerProgress>,
}

enum Request {
    Propose(Vec<u8>, Resolver<Vec<u8>>),
    Read(Resolver<u64>),
    ConfChange(ConfChangeV2, Resolver<ConfState>),
    Transfer(u64, Resolver<()>),
    Campaign(Resolver<()>),
    Step(Box<Message>),
    Unreachable(u64),
    SnapshotStatus(u64, bool),
    Status(Resolver<Status>),
    Stop,
}

impl Request {
    /// Answers a request the driver will not take.
    fn refuse(self, e: fn() -> Error) {
        match self {
            Request::Propose(_, r) => r.resolve(Err(e())),
            Request::Read(r) => r.resolve(Err(e())),
            Request::ConfChange(_, r) => r.resolve(Err(e())),
            Request::Transfer(_, r) | Request::Campaign(r) => r.resolve(Err(e())),
            Request::Status(r) => r.resolve(Err(e())),
            Request::Step(_)
            | Request::Unreachable(_)
            | Request::SnapshotStatus(..)
            | Request::Stop => {}
        }
    }
}

/// A cheap, cloneable, thread-safe way to talk to a running [`Node`].
///
/// Calls return a [`Completion`] at once; wait on it or `.await` it. When the
/// node has stopped, completions resolve with [`Error::Stopped`].
#[derive(Clone, Debug)]
pub struct Handle {
    id: u64,
    tx: SyncSender<Request>,
}

impl Handle {
    /// The node's id.
    #[must_use]
    pub fn id(&self) -> u64 {
        self.id
    }

    fn call<T>(&self, make: impl FnOnce(Resolver<T>) -> Request) -> Completion<T> {
        let (r, c) = completion::pair();
        match self.tx.try_send(make(r)) {
            Ok(()) => {}
            Err(TrySendError::Full(request)) => request.refuse(|| Error::Overloaded),
            // Dropping the request drops its resolver: Err(Stopped).
            Err(TrySendError::Disconnected(_)) => {}
        }
        c
    }

    /// Proposes `command`; resolves with the state machine's result once it
    /// is applied on this node.
    ///
    /// # Errors
    ///
    /// Through the completion: [`Error::NotLeader`], [`Error::ProposalDropped`]
    /// or [`Error::Superseded`] when it was certainly not applied;
    /// [`Error::UnknownOutcome`] or [`Error::Stopped`] when it may have been.
    pub fn propose(&self, command: Vec<u8>) -> Completion<Vec<u8>> {
        self.call(|r| Request::Propose(command, r))
    }

    /// A linearizable read barrier: resolves with a read index once this
    /// node has applied at least up to it; a read of the local state machine
    /// after that sees every write acknowledged before the call. Concurrent
    /// calls share one ReadIndex round.
    ///
    /// # Errors
    ///
    /// Through the completion: [`Error::NotLeader`] when no leader is known or
    /// leadership changed, [`Error::Timeout`] after `Options::read_timeout`.
    pub fn read_index(&self) -> Completion<u64> {
        self.call(Request::Read)
    }

    /// Proposes a membership change (must be called on the leader); resolves
    /// with the new conf state once applied here. Several changes at once enter
    /// a joint configuration, which raft leaves automatically.
    ///
    /// # Errors
    ///
    /// As for [`Handle::propose`]; [`Error::ProposalDropped`] also when raft
    /// refused the change because another one is still pending.
    pub fn change_membership(&self, changes: Vec<ConfChangeSingle>) -> Completion<ConfState> {
        let mut cc = ConfChangeV2::default();
        cc.set_changes(changes.into());
        self.call(|r| Request::ConfChange(cc, r))
    }

    fn single(&self, id: u64, ty: ConfChangeType) -> Completion<ConfState> {
        let mut c = ConfChangeSingle {
            node_id: id,
            ..Default::default()
        };
        c.set_change_type(ty);
        self.change_membership(vec![c])
    }

    /// Adds `id` as a voter (or promotes it if it is a learner).
    ///
    /// # Errors
    ///
    /// See [`Handle::change_membership`].
    pub fn add_voter(&self, id: u64) -> Completion<ConfState> {
        self.single(id, ConfChangeType::AddNode)
    }

    /// Adds `id` as a learner (or demotes a voter).
    ///
    /// # Errors
    ///
    /// See [`Handle::change_membership`].
    pub fn add_learner(&self, id: u64) -> Completion<ConfState> {
        self.single(id, ConfChangeType::AddLearnerNode)
    }

    /// Promotes learner `id` to voter.
    ///
    /// # Errors
    ///
    /// See [`Handle::change_membership`].
    pub fn promote_learner(&self, id: u64) -> Completion<ConfState> {
        self.add_voter(id)
    }

    /// Removes `id` (voter or learner) from the cluster.
    ///
    /// # Errors
    ///
    /// See [`Handle::change_membership`].
    pub fn remove_node(&self, id: u64) -> Completion<ConfState> {
        self.single(id, ConfChangeType::RemoveNode)
    }

    /// Asks the leader to hand leadership to `to`; resolves when this node
    /// sees `to` as leader.
    ///
    /// # Errors
    ///
    /// Through the completion: [`Error::NotLeader`], or [`Error::Timeout`]
    /// when the transfer did not happen within two election timeouts.
    pub fn transfer_leadership(&self, to: u64) -> Completion<()> {
        self.call(|r| Request::Transfer(to, r))
    }

    /// Starts an election at once (useful to pick the first leader quickly).
    ///
    /// # Errors
    ///
    /// Through the completion: a raft error.
    pub fn campaign(&self) -> Completion<()> {
        self.call(Request::Campaign)
    }

    /// The node's current status.
    ///
    /// # Errors
    ///
    /// Through the completion: [`Error::Stopped`].
    pub fn status(&self) -> Completion<Status> {
        self.call(Request::Status)
    }

    /// Feeds a raft message received from another node.
    ///
    /// # Errors
    ///
    /// [`Error::Stopped`] when the node is no longer running;
    /// [`Error::Overloaded`] when its queue is full (the message is dropped,
    /// as a lossy network would).
    pub fn step(&self, msg: Message) -> Result<()> {
        self.tx
            .try_send(Request::Step(Box::new(msg)))
            .map_err(|e| match e {
                TrySendError::Full(_) => Error::Overloaded,
                TrySendError::Disconnected(_) => Error::Stopped,
            })
    }

    /// Tells raft that messages to `id` could not be delivered (dropped if
    /// the queue is full: the next failure reports it again).
    pub fn report_unreachable(&self, id: u64) {
        let _ = self.tx.try_send(Request::Unreachable(id));
    }

    /// Tells raft whether a snapshot sent to `id` was delivered (`true`) or
    /// lost (`false`).
    pub fn report_snapshot(&self, id: u64, delivered: bool) {
        // Waits for room: raft keeps the peer paused until it hears this.
        let _ = self.tx.send(Request::SnapshotStatus(id, delivered));
    }
}

/// A running raft node: the driver thread and a [`Handle`] to it. Dropping
/// it stops the thread.
#[derive(Debug)]
pub struct Node {
    handle: Handle,
    thread: Option<JoinHandle<Result<()>>>,
}

impl Node {
    /// Opens the log store in `dir`, recovers the state machine from it and
    /// starts the driver thread.
    ///
    /// `peers` are the voters of a *new* cluster (this node included); they
    /// are recorded only when the log store is fresh. A node that is to join
    /// an existing cluster starts with empty `peers` and waits to be added.
    ///
    /// # Errors
    ///
    /// Invalid options, log store errors (see [`LogStore::open`]), a state
    /// machine that fails to restore or is ahead of the log, raft errors.
    pub fn start<S: StateMachine, T: Transport>(
        id: u64,
        dir: impl AsRef<Path>,
        peers: &[u64],
        opts: Options,
        mut sm: S,
        transport: T,
    ) -> Result<Node> {
        opts.validate()?;
        if id == 0 {
            return Err(Error::InvalidArgument("node id 0 is reserved".into()));
        }
        let mut store = LogStore::open(dir, &opts)?;
        if store.is_fresh() && !peers.is_empty() {
            let cs = ConfState {
                voters: peers.to_vec(),
                ..Default::default()
            };
            let empty = sm.snapshot().map_err(Error::StateMachine)?;
            store.bootstrap(cs, empty)?;
        }
        let snap = store.snapshot_ref().clone();
        let meta = snap.get_metadata();
        let mut applied = sm.applied_index();
        if applied < meta.index {
            sm.restore(meta.index, meta.term, &snap.data)
                .map_err(Error::StateMachine)?;
            applied = meta.index;
        }
        let last = store.last_index()?;
        if applied > last {
            return Err(Error::InvalidArgument(format!(
                "state machine applied index {applied} is beyond the raft log's last index {last}"
            )));
        }
        if applied > store.hard_state().commit {
            // Applied entries were committed; the commit index record was
            // lost only if written after them, which the driver never does.
            let mut hs = store.hard_state().clone();
            hs.commit = applied;
            store.set_hard_state(&hs)?;
            store.sync()?;
        }
        store.set_boot_applied(applied);
        let cfg = raft::Config {
            id,
            election_tick: opts.election_ticks,
            heartbeat_tick: opts.heartbeat_ticks,
            applied,
            max_size_per_msg: opts.max_size_per_msg,
            max_inflight_msgs: opts.max_inflight_msgs,
            max_uncommitted_size: opts.max_uncommitted_bytes,
            max_committed_size_per_ready: opts.max_committed_bytes_per_ready,
            check_quorum: true,
            pre_vote: true,
            ..Default::default()
        };
        cfg.validate()?;
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let raw = RawNode::new(&cfg, store, &logger)?;
        let (tx, rx) = mpsc::sync_channel(opts.max_queued_requests);
        let driver = Driver {
            opts,
            raw,
            sm,
            transport,
            rx,
            proposals: BTreeMap::new(),
            read_queue: Vec::new(),
            read_batches: HashMap::new(),
            read_waiting: BTreeMap::new(),
            next_ctx: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64),
            transfers: Vec::new(),
            applied,
            leader_id: 0,
            was_leader: false,
            snapshot_job: None,
            snapshot_thread: None,
        };
        let thread = std::thread::Builder::new()
            .name(format!("raft-{id}"))
            .spawn(move || {
                // raft-rs panics on states it deems impossible (e.g. a commit
                // index beyond the log). The panic ends the node like any
                // other fatal error, with its message kept for the owner.
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| driver.run()))
                    .unwrap_or_else(|payload| Err(Error::Panicked(panic_message(&*payload))))
            })
            .map_err(|e| Error::io("<thread spawn>", e))?;
        Ok(Node {
            handle: Handle { id, tx },
            thread: Some(thread),
        })
    }

    /// A handle to this node.
    #[must_use]
    pub fn handle(&self) -> Handle {
        self.handle.clone()
    }

    /// True while the driver thread runs. Once false, [`Node::shutdown`]
    /// returns why it stopped.
    #[must_use]
    pub fn is_running(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Stops the driver and waits for it. Pending operations resolve with
    /// [`Error::Stopped`] (their outcome unknown).
    ///
    /// # Errors
    ///
    /// The error that stopped the driver before, if any.
    pub fn shutdown(mut self) -> Result<()> {
        self.stop()
    }

    fn stop(&mut self) -> Result<()> {
        let _ = self.handle.tx.send(Request::Stop);
        match self.thread.take() {
            Some(t) => t.join().unwrap_or(Err(Error::Stopped)),
            None => Ok(()),
        }
    }
}

/// The text of a panic payload (`&str` or `String`, as `panic!` makes).
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-text panic payload".to_owned()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

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
    leader_id: u64,
    was_leader: bool,
    /// The snapshot being built off this thread, if any.
    snapshot_job: Option<Receiver<Result<WrittenCompact>>>,
    snapshot_thread: Option<JoinHandle<()>>,
}

impl<S: StateMachine, T: Transport> Driver<S, T> {
    fn run(mut self) -> Result<()> {
        let tick = self.opts.tick_interval;
        let mut next_tick = Instant::now() + tick;
        let result = loop {
            let now = Instant::now();
            let first = match self
                .rx
                .recv_timeout(next_tick.saturating_duration_since(now))
            {
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
            self.flush_reads();
            if let Err(e) = self.on_ready().and_then(|()| self.maybe_snapshot()) {
                break Err(e);
            }
        };
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
        let (late, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.transfers)
            .into_iter()
            .partition(|(_, d, _)| *d <= now);
        self.transfers = keep;
        for (_, _, r) in late {
            r.resolve(Err(Error::Timeout));
        }
    }

    /// Sends all queued reads as one ReadIndex request.
    fn flush_reads(&mut self) {
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
        let ctx = self.next_ctx;
        self.next_ctx += 1;
        // The leader keys pending reads by context, so it must be unique
        // across nodes and restarts: node id + a counter seeded by the clock.
        let mut rctx = self.raw.raft.id.to_le_bytes().to_vec();
        rctx.extend_from_slice(&ctx.to_le_bytes());
        self.raw.read_index(rctx);
        let batch = std::mem::take(&mut self.read_queue);
        self.read_batches.insert(ctx, batch);
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
        self.raw.mut_store().sync()?;
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
            let mut hs = self.raw.store().hard_state().clone();
            hs.commit = commit;
            self.raw.mut_store().set_hard_state(&hs)?;
            self.raw.mut_store().sync()?;
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
            // Outstanding ReadIndex rounds die with the old leader's term.
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

    fn read_ready(&mut self, index: u64, ctx: &[u8]) {
        let Some(bytes) = ctx.get(8..16).and_then(|b| <[u8; 8]>::try_from(b).ok()) else {
            return;
        };
        let Some(batch) = self.read_batches.remove(&u64::from_le_bytes(bytes)) else {
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

    fn resolve_reads(&mut self) {
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

    fn restore(&mut self, snap: &Snapshot) -> Result<()> {
        let meta = snap.get_metadata();
        self.sm
            .restore(meta.index, meta.term, &snap.data)
            .map_err(Error::StateMachine)?;
        self.applied = meta.index;
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
        if !wanted && self.applied < snap_index + self.opts.snapshot_threshold {
            return Ok(());
        }
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
