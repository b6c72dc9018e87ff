//! FlashKV networking: length-prefixed protobuf frames over TCP.
//!
//! # Wire format (SPEC section 6)
//!
//! Every frame is a 4-byte big-endian length followed by that many bytes of
//! one protobuf [`proto::Frame`] (`proto/flashkv.proto`, compiled at build time
//! with pure-Rust codegen). A frame longer than [`Options::max_frame_length`]
//! (16 MiB by default) is rejected from its length prefix, before it is
//! buffered, and the connection is closed; a malformed frame closes the
//! connection with an error and never panics.
//!
//! # Layout
//!
//! - [`frame`]: the codec ([`FrameCodec`]).
//! - [`connection`]: a framed TCP connection ([`Connection`]) with buffered
//!   writes, splittable into a reader and a writer.
//! - [`server`]: [`Listener`] accepts connections (with a connection cap and
//!   accept backoff) and serves each one: client requests go to a
//!   [`Service`] concurrently (pipelining: responses are written as they
//!   complete, matched by request id), peer frames go to the same service in
//!   order. Graceful shutdown stops accepting and lets in-flight requests
//!   finish for a bounded time.
//! - [`client`]: [`ClientConn`], one pipelined client connection.
//! - [`peer`]: [`PeerSender`], a lazily connected, reconnecting link to
//!   another node that batches raft messages and drops them (reporting the
//!   peer unreachable) while the link is down.
//! - [`snapshot`]: [`send_snapshot`] streams a snapshot's files in chunks,
//!   resuming a transfer that broke off.
//!
//! # Peer handshake (SPEC sections 6 and 10)
//!
//! A client connection needs no handshake. A peer connection opens with a
//! `Hello` carrying a [`PeerIdentity`]; the [`Service`] decides whether it
//! names this cluster and a member ([`Service::peer_hello`]). Raft messages
//! and snapshot chunks are handed to the service only on a connection whose
//! handshake it accepted, and only when their `from` is that member. Any
//! frame a connection is not entitled to send (peer traffic without or
//! before the handshake, a second `Hello`, a client request on a peer
//! connection, a frame naming another sender) closes the connection and
//! reaches nothing.
//!
//! With [`Options::peer_secret`] set, both sides also prove the shared
//! secret by challenge-response ([`auth`]) before any raft traffic. On a
//! listener that serves only peers ([`Serves::Peers`]) with
//! [`Options::server_tls`] from a [`PeerTls`], a peer must also present a
//! certificate of the peer CA (mutual TLS), and plaintext is refused.
//!
//! # Limits
//!
//! Without a peer secret or peer TLS, any process that knows the cluster id
//! and a member id passes the handshake.
//! Raft messages are opaque bytes here: this crate does not depend on
//! raft-rs.

#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod auth;
#[cfg(feature = "certgen")]
pub mod certgen;
pub mod client;
pub mod connection;
mod error;
pub mod frame;
mod options;
pub mod peer;
pub mod server;
pub mod snapshot;
pub mod tls;

/// Generated protobuf messages of `proto/flashkv.proto` (package `flashkv`).
///
/// `bytes` fields are [`bytes::Bytes`], sliced from the received frame
/// without copying.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/proto/mod.rs"));
    pub use self::flashkv::*;

    /// The serialized `FileDescriptorProto` of `proto/flashkv.proto`, as
    /// compiled: other languages' protobuf runtimes build the same messages
    /// from it (`cargo xtask python-proto`).
    #[must_use]
    pub fn file_descriptor_bytes() -> Vec<u8> {
        use protobuf::Message as _;
        flashkv::file_descriptor()
            .proto()
            .write_to_bytes()
            .expect("a parsed descriptor serializes")
    }
}

pub use auth::PeerSecret;
pub use client::ClientConn;
pub use connection::{Connection, FrameReader, FrameWriter};
pub use error::{Error, Result};
pub use frame::FrameCodec;
pub use options::{DEFAULT_MAX_FRAME_LENGTH, OVERFLOW_CONNECTIONS, Options, Serves};
pub use peer::{PeerIdentity, PeerSender};
pub use server::{Counters, LISTEN_BACKLOG, Listener, Service, bind_tcp};
pub use snapshot::{SnapshotOffer, SnapshotSent, send_snapshot};
pub use tls::{ClientTls, PeerTls, ServerTls};

/// Version sent in [`proto::Hello`]; bumped on incompatible wire changes.
/// Version 2: peers must open with a `Hello` naming the cluster id.
/// Version 3: snapshots are offered, then streamed file by file.
pub const PROTOCOL_VERSION: u32 = 3;
