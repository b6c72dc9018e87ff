//! Cluster tests with real `kvd` processes on loopback, driven through
//! kv-client and the `kvctl` binary. One behaviour per module; the tests run
//! one at a time (see `common::serial`).

mod adversarial_peers;
mod auth;
mod backup;
mod bad_frames;
mod big_writes;
mod cas_counter;
mod client_api;
mod cluster_id;
mod common;
mod config;
mod connection_abuse;
mod fail_stop;
mod failover;
mod gateway;
mod gateway_tls;
mod kvctl_commands;
mod membership;
mod overload;
mod partition;
mod peer_secret;
mod peer_tls;
mod peer_wire;
mod restart;
mod search;
mod snapshot_catch_up;
mod startup_errors;
mod startup_signal;
mod status_page;
mod stray_peer_frame;
mod tls;
