//! Groups concurrent client writes into one raft proposal, and refuses
//! writes the node cannot commit in time.
//!
//! At most [`WriteLimits::max_in_flight`] proposals are outstanding; writes
//! that arrive meanwhile queue up and go out together, as one [`Op::Multi`]
//! log entry, as soon as a slot frees. Under light load every write is
//! proposed at once on its own; under heavy load the entries (and the engine
//! batches and raft messages they cause) grow instead of multiplying.
//!
//! Admission control: a node that accepts writes faster than it commits them
//! only grows its queue until clients time out on writes that were already
//! proposed, whose outcome they then cannot know. So the queue is bounded
//! (in writes and in bytes, counted from submission until the reply) and a
//! write that waited in it past [`WriteLimits::max_queue_wait`] is not
//! proposed either; both are answered at once with a definite
//! [`ProposeError::Overloaded`], which clients may retry after a pause.
//!
//! Size: a group never exceeds [`WriteLimits::max_entry_bytes`], so every
//! raft entry (and the append message carrying it) fits in a peer frame; a
//! single write larger than that is refused before anything is proposed.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use kv_raft::Handle;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::time::Instant;

use crate::command::{Command, Op, Outcome, now_ms};

/// Most commands in one group.
const MAX_GROUP: usize = 256;
/// Most command bytes in one group of several commands (a bigger single
/// command goes alone).
const MAX_GROUP_BYTES: usize = 1 << 20;
/// Bytes a command's encoding takes besides its keys and values (header,
/// tags, lengths, its place in a group), with room to spare.
const COMMAND_OVERHEAD: usize = 64;
/// Room in a peer frame for what surrounds one entry's data: the entry's
/// and the raft message's fields, the `PeerMessage` and `Frame` around it.
pub const ENTRY_FRAME_OVERHEAD: usize = 64 << 10;

/// Bounds of the write path.
#[derive(Debug, Clone)]
pub struct WriteLimits {
    /// Proposals (groups) outstanding at once.
    pub max_in_flight: usize,
    /// Writes accepted and not yet answered (queued or proposed); more are
    /// refused as overloaded.
    pub max_pending: usize,
    /// Bytes of the writes accepted and not yet answered; more are refused
    /// as overloaded (a single write is always let in when none is pending).
    pub max_pending_bytes: usize,
    /// A write that waited this long for its turn to be proposed is refused
    /// as overloaded instead: proposing it would leave too little of the
    /// client's time for the commit.
    pub max_queue_wait: Duration,
    /// Largest encoded raft entry. Derive it from the peer frame limit with
    /// [`WriteLimits::for_frame_length`].
    pub max_entry_bytes: usize,
}

impl WriteLimits {
    /// The defaults for peer frames of at most `max_frame_length` bytes.
    #[must_use]
    pub fn for_frame_length(max_frame_length: usize) -> WriteLimits {
        WriteLimits {
            max_in_flight: 8,
            max_pending: 8192,
            max_pending_bytes: 128 << 20,
            max_queue_wait: Duration::from_secs(1),
            max_entry_bytes: max_frame_length.saturating_sub(ENTRY_FRAME_OVERHEAD),
        }
    }
}

/// Why a proposal failed, as the client must hear it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProposeError {
    /// This node is not the leader (the leader's id, if known): not applied.
    NotLeader(Option<u64>),
    /// Refused before proposing because the node is over its write budget:
    /// not applied; worth retrying after a pause.
    Overloaded(String),
    /// The write can never be proposed (too large): not applied.
    Invalid(String),
    /// Certainly not applied.
    Definite(String),
    /// May or may not be applied.
    Unknown(String),
}

impl From<kv_raft::Error> for ProposeError {
    fn from(e: kv_raft::Error) -> Self {
        match e {
            kv_raft::Error::NotLeader { leader } => ProposeError::NotLeader(leader),
            e if e.is_definite() => ProposeError::Definite(e.to_string()),
            e => ProposeError::Unknown(e.to_string()),
        }
    }
}

type Reply = oneshot::Sender<Result<Outcome, ProposeError>>;

/// What the pending writes hold of the budget.
#[derive(Debug, Default)]
struct Budget {
    writes: AtomicUsize,
    bytes: AtomicUsize,
}

/// One write's share of the budget, returned when dropped (after its reply).
#[derive(Debug)]
struct Share {
    budget: Arc<Budget>,
    bytes: usize,
}

impl Drop for Share {
    fn drop(&mut self) {
        self.budget.writes.fetch_sub(1, Ordering::Relaxed);
        self.budget.bytes.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

/// A write waiting for its turn.
#[derive(Debug)]
struct Queued {
    cmd: Command,
    reply: Reply,
    size: usize,
    since: Instant,
    /// When the client must have its answer.
    deadline: Instant,
    share: Share,
}

/// The submitting side; cheap to clone.
#[derive(Debug, Clone)]
pub struct Proposer {
    tx: mpsc::Sender<Queued>,
    budget: Arc<Budget>,
    limits: Arc<WriteLimits>,
}

impl Proposer {
    /// Starts the grouping task for `handle`. Must be called within a tokio
    /// runtime; the task ends when every `Proposer` clone is dropped.
    #[must_use]
    pub fn start(handle: Handle, limits: WriteLimits) -> Proposer {
        let limits = Arc::new(WriteLimits {
            max_in_flight: limits.max_in_flight.max(1),
            max_pending: limits.max_pending.max(1),
            ..limits
        });
        // Admission keeps the queue below `max_pending`; the channel bound
        // is only a backstop.
        let (tx, rx) = mpsc::channel(limits.max_pending);
        tokio::spawn(run(handle, rx, limits.clone()));
        Proposer {
            tx,
            budget: Arc::default(),
            limits,
        }
    }

    /// Writes accepted and not yet answered.
    #[must_use]
    pub fn pending(&self) -> usize {
        self.budget.writes.load(Ordering::Relaxed)
    }

    /// Takes a share of the budget for a write of `size` bytes.
    fn admit(&self, size: usize) -> Result<Share, ProposeError> {
        let writes = self.budget.writes.fetch_add(1, Ordering::Relaxed);
        let bytes = self.budget.bytes.fetch_add(size, Ordering::Relaxed);
        let share = Share {
            budget: self.budget.clone(),
            bytes: size,
        };
        if writes >= self.limits.max_pending {
            return Err(ProposeError::Overloaded(format!(
                "overloaded: {writes} writes pending"
            )));
        }
        if writes > 0 && bytes + size > self.limits.max_pending_bytes {
            return Err(ProposeError::Overloaded(format!(
                "overloaded: {bytes} bytes of writes pending"
            )));
        }
        Ok(share)
    }

    /// Proposes `cmd` (possibly grouped with others) and waits until it is
    /// applied here. Cancel-safe: dropping the future abandons the wait,
    /// not the proposal.
    ///
    /// # Errors
    ///
    /// [`ProposeError`]; [`ProposeError::Overloaded`] and
    /// [`ProposeError::Invalid`] come before anything is proposed.
    pub async fn submit(&self, cmd: Command, deadline: Instant) -> Result<Outcome, ProposeError> {
        let size = cmd.approximate_size() + COMMAND_OVERHEAD;
        if size > self.limits.max_entry_bytes {
            return Err(ProposeError::Invalid(format!(
                "write of about {size} bytes exceeds the largest replicable entry \
                 ({} bytes)",
                self.limits.max_entry_bytes
            )));
        }
        let share = self.admit(size)?;
        let (tx, rx) = oneshot::channel();
        let queued = Queued {
            cmd,
            reply: tx,
            size,
            since: Instant::now(),
            deadline,
            share,
        };
        match self.tx.try_send(queued) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                return Err(ProposeError::Overloaded(
                    "overloaded: write queue full".into(),
                ));
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                return Err(ProposeError::Definite("node is shutting down".into()));
            }
        }
        rx.await
            .unwrap_or_else(|_| Err(ProposeError::Unknown("node stopped".into())))
    }
}

/// Whether a write waited too long in the queue to be proposed now: past
/// `max_queue_wait`, or past half of its client's time (the other half is
/// the commit's: proposing later would likely end in a timeout whose
/// outcome the client cannot know).
fn expired(q: &Queued, limits: &WriteLimits) -> bool {
    let waited = q.since.elapsed();
    let allowed = limits
        .max_queue_wait
        .min(q.deadline.saturating_duration_since(q.since) / 2);
    waited > allowed
}

fn refuse(q: Queued) {
    let waited = q.since.elapsed();
    let _ = q.reply.send(Err(ProposeError::Overloaded(format!(
        "overloaded: waited {} ms in the write queue, of {} ms left to answer",
        waited.as_millis(),
        q.deadline.saturating_duration_since(q.since).as_millis()
    ))));
}

async fn run(handle: Handle, mut rx: mpsc::Receiver<Queued>, limits: Arc<WriteLimits>) {
    let slots = Arc::new(Semaphore::new(limits.max_in_flight));
    let group_bytes = MAX_GROUP_BYTES.min(limits.max_entry_bytes);
    let mut carry: Option<Queued> = None;
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let first = loop {
            let next = match carry.take() {
                Some(q) => q,
                None => match rx.recv().await {
                    Some(q) => q,
                    None => return,
                },
            };
            if expired(&next, &limits) {
                refuse(next);
            } else {
                break next;
            }
        };
        let mut bytes = first.size;
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            let Ok(next) = rx.try_recv() else { break };
            if expired(&next, &limits) {
                refuse(next);
                continue;
            }
            if bytes + next.size > group_bytes {
                carry = Some(next);
                break;
            }
            bytes += next.size;
            group.push(next);
        }
        let handle = handle.clone();
        tokio::spawn(async move {
            let _slot = slot;
            propose(&handle, group).await;
        });
    }
}

async fn propose(handle: &Handle, mut group: Vec<Queued>) {
    if group.len() == 1 {
        let Some(q) = group.pop() else {
            return;
        };
        let result = match handle.propose(q.cmd.encode()).await {
            Ok(bytes) => Outcome::decode(&bytes)
                .map_err(|e| ProposeError::Unknown(format!("undecodable result: {e}"))),
            Err(e) => Err(e.into()),
        };
        let _ = q.reply.send(result);
        return;
    }
    let n = group.len();
    let mut cmds = Vec::with_capacity(n);
    let mut replies = Vec::with_capacity(n);
    for q in group {
        cmds.push(q.cmd);
        replies.push((q.reply, q.share));
    }
    let multi = Command {
        client_id: 0,
        seq: 0,
        time_ms: now_ms(),
        op: Op::Multi(cmds),
    };
    let outcomes = match handle.propose(multi.encode()).await {
        Ok(bytes) => match Outcome::decode(&bytes) {
            Ok(Outcome::Multi(outcomes)) if outcomes.len() == n => Ok(outcomes),
            Ok(Outcome::Invalid(m)) => Err(ProposeError::Definite(m)),
            Ok(other) => Err(ProposeError::Unknown(format!(
                "unexpected group result {other:?}"
            ))),
            Err(e) => Err(ProposeError::Unknown(format!("undecodable result: {e}"))),
        },
        Err(e) => Err(ProposeError::from(e)),
    };
    match outcomes {
        Ok(outcomes) => {
            for ((reply, _share), outcome) in replies.into_iter().zip(outcomes) {
                let _ = reply.send(Ok(outcome));
            }
        }
        Err(e) => {
            for (reply, _share) in replies {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
}
