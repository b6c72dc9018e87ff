//! `kv-raft`: a replicated state machine on raft-rs's `RawNode`, with its own
//! durable raft log.
//!
//! The crate knows nothing of the storage engine or the network. The
//! application supplies a [`StateMachine`] (apply committed commands in order,
//! make and restore snapshots) and a [`Transport`] (carry raft messages to the
//! other nodes, feeding received ones to [`Handle::step`]).
//!
//! ```no_run
//! # use kv_raft::*;
//! # fn demo<S: StateMachine, T: Transport>(sm: S, transport: T) -> Result<()> {
//! let node = Node::start(1, "data/raft", &[1, 2, 3], Options::default(), sm, transport)?;
//! let h = node.handle();
//! let result: Vec<u8> = h.propose(b"set x 1".to_vec()).wait()?; // or `.await`
//! let read_index = h.read_index().wait()?; // then read the local state machine
//! # Ok(()) }
//! ```
//!
//! # Layout
//!
//! - [`log_store`]: the raft log as append-only segment files of CRC-checked
//!   records (entries, hard state, conf states), a snapshot file replaced
//!   atomically, an in-memory index; implements [`raft::Storage`]. One fsync
//!   per `Ready`; torn tails truncated on recovery, other damage reported.
//! - [`driver`]: [`Node`] (one thread owning the `RawNode`, ticking,
//!   handling each `Ready` in the documented order) and [`Handle`] (proposals,
//!   ReadIndex reads, membership changes, leadership transfer, status).
//! - [`state_machine`]: the [`StateMachine`] and [`Transport`] traits.
//! - [`completion`]: the one-shot [`Completion`] every call returns; block on
//!   it with `wait` or `.await` it (no async runtime needed).
//! - [`options`], [`error`]: the crate's [`Options`] and its one [`Error`].
//! - [`observer`]: the [`Observer`] a caller's metrics registry implements
//!   (fsync durations, leader changes).
//!
//! # Guarantees
//!
//! - A proposal resolves with the state machine's result once applied, matched
//!   by (term, index); it fails with an error that says truthfully whether the
//!   command may still be applied ([`Error::is_definite`]).
//! - Reads via [`Handle::read_index`] are linearizable (ReadIndex, batched).
//! - pre-vote and check-quorum are on.
//!
//! # Limits
//!
//! - Entries since the last snapshot are cached in memory, and snapshots are
//!   held in memory whole and travel in one raft message (a transport may
//!   chunk it). `Options::snapshot_threshold` bounds the former.
//! - A snapshot is begun on the driver thread
//!   ([`StateMachine::begin_snapshot`]); its slow part (the state machine's
//!   job, writing and syncing the snapshot file) runs on a thread of its
//!   own, and the log is compacted once it is done. A state machine that
//!   only implements [`StateMachine::snapshot`] stalls the node for its
//!   duration.
//! - The request channel is unbounded: callers apply their own backpressure.
//!   Proposals beyond `Options::max_uncommitted_bytes` of uncommitted
//!   entries are dropped (a definite error).
//! - A node removed from the configuration keeps running until its owner
//!   stops it.
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod completion;
pub mod driver;
pub mod error;
pub mod log_store;
pub mod observer;
pub mod options;
mod record;
pub mod state_machine;

pub use completion::Completion;
pub use driver::{Handle, Node, PeerProgress, Role, Status};
pub use error::{BoxError, Error, Result};
pub use log_store::LogStore;
pub use observer::{Observer, RaftState};
pub use options::Options;
pub use state_machine::{SnapshotJob, StateMachine, Transport};

/// The raft-rs crate this one is built on, for its message types.
pub use raft;
