//! `kv-jepsen`: a Jepsen-style fault suite for FlashKV.
//!
//! A run starts a cluster of real `kvd` processes on loopback, with every
//! peer link through an in-process TCP proxy; runs concurrent clients doing
//! get / put / cas on a few keys with unique values; lets a nemesis kill
//! (SIGKILL, then restart on the same data dir), pause (SIGSTOP / SIGCONT)
//! and partition (cut or stall proxy links) nodes; heals everything; reads
//! every key once more; and checks the recorded history.
//!
//! Layout:
//! - [`history`]: the recorded operations and faults, and their text form;
//! - [`checker`]: linearizability per key against a register model;
//! - [`cluster`]: `kvd` processes and the proxy mesh between them;
//! - [`nemesis`]: the faults and their schedule;
//! - [`runner`]: one whole run and its [`runner::Report`].
//!
//! What a run checks: (1) the history, final reads included, is
//! linearizable; (2) hence every acknowledged write is visible afterwards
//! unless a later operation overwrote it; (3) definite failures never took
//! effect (they are left out of the history the checker explains, so a read
//! of their value is a violation); and, after healing, every node holds the
//! same value of every key.
//!
//! Limits: one fault at a time; registers only (no ranges, batches or
//! deletes); the checker's search is exponential in the worst case and
//! gives up with an unknown verdict at its deadline.
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod checker;
pub mod cluster;
pub mod history;
pub mod nemesis;
pub mod runner;

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A history's text form is malformed.
    #[error("history line {line}: {reason}")]
    Parse {
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// A history that no register could produce by construction (an
    /// outcome that does not fit its operation).
    #[error("invalid history: {0}")]
    InvalidHistory(String),
    /// Starting or driving the cluster failed.
    #[error("cluster: {0}")]
    Cluster(String),
    /// An I/O error, with what was being done.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
}
