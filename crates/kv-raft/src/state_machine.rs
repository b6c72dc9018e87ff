//! What the driver needs from the application: a state machine to apply
//! committed commands to, and a transport for raft messages.

use raft::eraftpb::Message;

use crate::error::BoxError;

/// The slow part of a snapshot, run off the driver thread; see
/// [`StateMachine::begin_snapshot`].
pub type SnapshotJob = Box<dyn FnOnce() -> Result<Vec<u8>, BoxError> + Send>;

/// The replicated state machine.
///
/// The driver calls it from its own thread only, in log order.
pub trait StateMachine: Send + 'static {
    /// Applies the committed entry at `index`. Called for *every* committed
    /// entry, in order: raft's own no-op entries and configuration changes
    /// arrive with an empty `command`, so that [`StateMachine::applied_index`]
    /// can track the log exactly. The returned bytes go to the proposer.
    ///
    /// A deterministic rejection of a command (say, a failed compare) is a
    /// result, not an error.
    ///
    /// # Errors
    ///
    /// An error is fatal: the node stops, since the state machine can no
    /// longer follow the log.
    fn apply(&mut self, index: u64, term: u64, command: &[u8]) -> Result<Vec<u8>, BoxError>;

    /// The index of the last entry applied that will survive a restart. On
    /// start the driver replays the log after it.
    fn applied_index(&self) -> u64;

    /// A snapshot of the state at [`StateMachine::applied_index`], which is
    /// the index of the last `apply` call. It must stay valid after the call.
    ///
    /// # Errors
    ///
    /// An error stops the node.
    fn snapshot(&mut self) -> Result<Vec<u8>, BoxError>;

    /// Starts a snapshot of the state at [`StateMachine::applied_index`]:
    /// what must see exactly that state happens in this call, on the driver
    /// thread; the returned job, which may be slow (say, packing files),
    /// runs on a thread of its own while the driver goes on applying, and
    /// yields the same bytes [`StateMachine::snapshot`] would have. The
    /// default does the whole snapshot here.
    ///
    /// # Errors
    ///
    /// An error here or from the job stops the node.
    fn begin_snapshot(&mut self) -> Result<SnapshotJob, BoxError> {
        let data = self.snapshot()?;
        Ok(Box::new(move || Ok(data)))
    }

    /// Replaces the whole state with `data` (made by [`StateMachine::snapshot`]
    /// at `index`), atomically: after a crash either the old state or the new
    /// one, and `applied_index` then reports `index`.
    ///
    /// # Errors
    ///
    /// An error stops the node.
    fn restore(&mut self, index: u64, term: u64, data: &[u8]) -> Result<(), BoxError>;
}

/// Carries raft messages to other nodes.
///
/// `send` runs on the driver thread and must not block: queue and return.
/// Delivery is best-effort (raft retries). The transport tells the node about
/// failures through [`crate::Handle::report_unreachable`] and, for messages
/// of type `MsgSnapshot` (which carry the whole snapshot; a transport may
/// chunk it), [`crate::Handle::report_snapshot`] once it is delivered or lost.
pub trait Transport: Send + 'static {
    /// Queues messages for their `to` nodes.
    fn send(&mut self, msgs: Vec<Message>);
}
