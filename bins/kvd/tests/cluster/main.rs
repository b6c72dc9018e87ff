//! Cluster tests with real `kvd` processes on loopback, driven through
//! kv-client and the `kvctl` binary. One behaviour per module; the tests run
//! one at a time (see `common::serial`).

mod bad_frames;
mod big_writes;
mod cas_counter;
mod client_api;
mod common;
mod failover;
mod kvctl_commands;
mod overload;
mod partition;
mod restart;
mod snapshot_catch_up;
mod startup_errors;
mod startup_signal;
