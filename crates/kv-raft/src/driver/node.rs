//! [`Node`]: starting the driver thread on a recovered log store and state
//! machine, and stopping it.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::mpsc;
use std::thread::JoinHandle;

use raft::eraftpb::ConfState;
use raft::{RawNode, Storage};

use super::{Driver, Handle, Request};
use crate::error::{Error, Result};
use crate::log_store::LogStore;
use crate::options::Options;
use crate::state_machine::{StateMachine, Transport};

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
            applied_bytes: 0,
            snapshot_job: None,
            snapshot_thread: None,
            rush: None,
            rounds_sent: HashMap::new(),
            lease: None,
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
