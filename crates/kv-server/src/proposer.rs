//! Groups concurrent client writes into one raft proposal.
//!
//! At most [`MAX_IN_FLIGHT`] proposals are outstanding; writes that arrive
//! meanwhile queue up and go out together, as one [`Op::Multi`] log entry,
//! as soon as a slot frees. Under light load every write is proposed at
//! once on its own; under heavy load the entries (and the engine batches and
//! raft messages they cause) grow instead of multiplying.

use std::sync::Arc;

use kv_raft::Handle;
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::command::{Command, Op, Outcome, now_ms};

/// Proposals outstanding at once.
pub const MAX_IN_FLIGHT: usize = 8;
/// Most commands in one group.
const MAX_GROUP: usize = 256;
/// Most command bytes in one group (a bigger single command goes alone).
const MAX_GROUP_BYTES: usize = 1 << 20;

/// Why a proposal failed, as the client must hear it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProposeError {
    /// This node is not the leader (the leader's id, if known): not applied.
    NotLeader(Option<u64>),
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

/// The submitting side; cheap to clone.
#[derive(Debug, Clone)]
pub struct Proposer {
    tx: mpsc::UnboundedSender<(Command, Reply)>,
}

impl Proposer {
    /// Starts the grouping task for `handle`. Must be called within a tokio
    /// runtime; the task ends when every `Proposer` clone is dropped.
    #[must_use]
    pub fn start(handle: Handle) -> Proposer {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(handle, rx));
        Proposer { tx }
    }

    /// Proposes `cmd` (possibly grouped with others) and waits until it is
    /// applied here. Cancel-safe: dropping the future abandons the wait,
    /// not the proposal.
    ///
    /// # Errors
    ///
    /// [`ProposeError`].
    pub async fn submit(&self, cmd: Command) -> Result<Outcome, ProposeError> {
        let (tx, rx) = oneshot::channel();
        if self.tx.send((cmd, tx)).is_err() {
            return Err(ProposeError::Definite("node is shutting down".into()));
        }
        rx.await
            .unwrap_or_else(|_| Err(ProposeError::Unknown("node stopped".into())))
    }
}

async fn run(handle: Handle, mut rx: mpsc::UnboundedReceiver<(Command, Reply)>) {
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = rx.recv().await else {
            return;
        };
        let mut bytes = first.0.approximate_size();
        let mut group = vec![first];
        while group.len() < MAX_GROUP && bytes < MAX_GROUP_BYTES {
            let Ok(next) = rx.try_recv() else { break };
            bytes += next.0.approximate_size();
            group.push(next);
        }
        let handle = handle.clone();
        tokio::spawn(async move {
            let _slot = slot;
            propose(&handle, group).await;
        });
    }
}

async fn propose(handle: &Handle, mut group: Vec<(Command, Reply)>) {
    if group.len() == 1 {
        let Some((cmd, reply)) = group.pop() else {
            return;
        };
        let result = match handle.propose(cmd.encode()).await {
            Ok(bytes) => Outcome::decode(&bytes)
                .map_err(|e| ProposeError::Unknown(format!("undecodable result: {e}"))),
            Err(e) => Err(e.into()),
        };
        let _ = reply.send(result);
        return;
    }
    let (cmds, replies): (Vec<Command>, Vec<Reply>) = group.into_iter().unzip();
    let n = cmds.len();
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
            for (reply, outcome) in replies.into_iter().zip(outcomes) {
                let _ = reply.send(Ok(outcome));
            }
        }
        Err(e) => {
            for reply in replies {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
}
