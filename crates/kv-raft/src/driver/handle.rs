//! What the world sees of a node: its [`Handle`] (cloneable, thread-safe
//! calls into the driver thread), its [`Status`], and the requests the
//! handle queues for the driver.

use std::collections::BTreeMap;
use std::sync::mpsc::{SyncSender, TrySendError};

use raft::StateRole;
use raft::eraftpb::{ConfChangeSingle, ConfChangeType, ConfChangeV2, ConfState, Message};

use crate::completion::{self, Completion, Resolver};
use crate::error::{Error, Result};

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
    /// Whether the leader heard from it within the last election timeout
    /// (check-quorum's notion of alive).
    pub recent_active: bool,
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

pub(super) enum Request {
    Propose(Vec<u8>, Resolver<Vec<u8>>),
    Read(Resolver<u64>),
    ConfChange(ConfChangeV2, Resolver<ConfState>),
    Transfer(u64, Resolver<()>),
    Campaign(Resolver<()>),
    Step(Box<Message>),
    Unreachable(u64),
    LeaderGone(u64),
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
            | Request::LeaderGone(_)
            | Request::SnapshotStatus(..)
            | Request::Stop => {}
        }
    }
}

/// A cheap, cloneable, thread-safe way to talk to a running
/// [`Node`](super::Node).
///
/// Calls return a [`Completion`] at once; wait on it or `.await` it. When the
/// node has stopped, completions resolve with [`Error::Stopped`].
#[derive(Clone, Debug)]
pub struct Handle {
    pub(super) id: u64,
    pub(super) tx: SyncSender<Request>,
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

    /// Tells raft that node `id` is gone: its connections closed and a new
    /// one was refused (nothing listens at its address), which a timer
    /// would take an election timeout to conclude. If `id` is this
    /// follower's leader, the follower stops honouring the leader's lease
    /// at once, and the first of the other voters (by id) campaigns. A
    /// leader that is in fact alive loses nothing: campaigns start with
    /// pre-vote, which the voters that still hear from it ignore.
    pub fn leader_gone(&self, id: u64) {
        let _ = self.tx.try_send(Request::LeaderGone(id));
    }

    /// Tells raft whether a snapshot sent to `id` was delivered (`true`) or
    /// lost (`false`).
    pub fn report_snapshot(&self, id: u64, delivered: bool) {
        // Waits for room: raft keeps the peer paused until it hears this.
        let _ = self.tx.send(Request::SnapshotStatus(id, delivered));
    }
}
