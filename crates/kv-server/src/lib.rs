//! `kv-server`: the FlashKV node — kv-engine under a kv-raft state machine,
//! served to clients and peers over kv-net.
//!
//! # Layout
//!
//! - [`command`]: the commands in the raft log and their outcomes (a compact
//!   versioned encoding of our own).
//! - [`keys`]: the engine key space (`u` user keys, `m` metadata) and the
//!   versioned value record.
//! - [`store`]: the engine directory, replaced whole by a snapshot install.
//! - [`snapshot`]: raft snapshots as engine checkpoints on disk, streamed
//!   to peers file by file and received straight to disk.
//! - [`backup`]: `kvctl snapshot save` (checkpoints read by the client)
//!   and `kvd --restore`, with the backup file format.
//! - [`archive`]: the packed snapshots of older builds (read on restore).
//! - [`state_machine`]: [`KvStateMachine`], the `StateMachine` on the engine:
//!   one `WriteBatch` per applied entry holding its effects, its
//!   de-duplication record and the applied index.
//! - [`config`]: [`Config`] and the persisted membership file.
//! - [`transport`]: raft messages over kv-net peer links; snapshots in chunks,
//!   reassembled within bounds; the checks a received raft message passes.
//! - [`proposer`]: groups concurrent client writes into one raft entry, no
//!   larger than a peer frame allows, and refuses writes beyond the node's
//!   budget ([`proposer::WriteLimits`]) with a definite UNAVAILABLE before
//!   proposing them.
//! - [`service`]: [`KvService`], kv-net's `Service`: client requests and peer
//!   traffic.
//! - [`membership`]: the replicated address book and the membership
//!   requests (add, promote, remove, leader transfer).
//! - [`search`]: `kvd --search`: the kv-search index of the values, fed
//!   by the state machine to a thread of its own, and the `Search` /
//!   `Similar` requests (linearizable: read index, then the index catches
//!   up).
//! - [`metrics`]: [`Metrics`], the node's Prometheus registry (SPEC
//!   section 9's names).
//! - [`server`]: [`Server`] / [`run`]: one node, from data directory to
//!   graceful shutdown.
//!
//! # Peers and failures
//!
//! A peer connection opens with the handshake of SPEC section 10: the
//! cluster id (fixed at bootstrap, persisted in `<data-dir>/cluster-id`) and
//! the sender's member id; raft traffic is taken only after it, only in that
//! member's name and only when addressed to this node. If the raft thread
//! dies (a storage failure, a panic in raft-rs), the node stops serving and
//! [`Server::run`] returns the cause, so `kvd` exits non-zero.
//!
//! # Limits
//!
//! - Without a peer secret (`kv_net::Options::peer_secret`) peer traffic is
//!   unauthenticated: whoever knows the cluster id and a member id passes
//!   the handshake. With one, the handshake authenticates who opened a
//!   connection, not each frame after it (no TLS yet).
//! - De-duplication records are kept for the last 1024 writes of each client
//!   id, and dropped once a client has not written for an hour (by the
//!   proposers' clocks): a write retried later than that may apply twice.
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod archive;
pub mod auth;
pub mod backup;
pub mod command;
pub mod config;
mod error;
pub mod join;
pub mod keys;
mod liveness;
pub mod membership;
pub mod metrics;
pub mod proposer;
pub mod search;
pub mod server;
pub mod service;
pub mod sessions;
pub mod snapshot;
pub mod state_machine;
pub mod store;
pub mod transport;

pub use config::{Config, SearchEmbedder, parse_peers};
pub use error::{Error, Result};
pub use kv_net::{ClientTls, PeerSecret, PeerTls, ServerTls, bind_tcp};
pub use metrics::Metrics;
pub use server::{Server, run};
pub use service::KvService;
pub use state_machine::KvStateMachine;
pub use store::Store;
