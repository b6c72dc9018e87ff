//! The raft-rs message decoding kv-server applies to peer bytes: the
//! serialized `eraftpb.Message`s of a `PeerMessage`
//! (`transport::decode_messages`), and `SnapshotChunk`s put back together
//! by `transport::SnapshotAssembler`. Several of either are packed in one
//! input (see `flashkv_fuzz_support::container`): kind 0 a raft message,
//! kind 1 a snapshot chunk.
//!
//! Checks: every decoded message re-encodes to bytes that decode to a
//! message with the same fields; a completed snapshot is a `MsgSnapshot` whose data is the
//! chunks' data in order.
#![no_main]

use bytes::Bytes;
use flashkv_fuzz_support::container;
use kv_net::proto::SnapshotChunk;
use kv_raft::raft::eraftpb::{Message, MessageType};
use kv_server::transport::{SnapshotAssembler, decode_messages};
use libfuzzer_sys::fuzz_target;
use protobuf::Message as _;
use protobuf2::Message as _;

fuzz_target!(|data: &[u8]| {
    let files = container::decode(data);
    let raw: Vec<Bytes> = files
        .iter()
        .filter(|(k, _)| k & 1 == 0)
        .map(|(_, b)| Bytes::copy_from_slice(b))
        .collect();
    for m in decode_messages(1, raw) {
        let bytes = m.write_to_bytes().expect("a decoded message encodes");
        let again = Message::parse_from_bytes(&bytes).expect("a re-encoded message decodes");
        // Compared by their known fields: protobuf 2 keeps unknown fields
        // in a hash map, and a field sent twice merges on decode, so `==`
        // can tell apart messages that carry the same raft content.
        assert_eq!(
            format!("{again:?}"),
            format!("{m:?}"),
            "a re-encoded raft message decodes differently"
        );
    }

    let assembler = SnapshotAssembler::default();
    // The data of the transfer in progress per sender, as the chunks say.
    let mut expect: std::collections::HashMap<u64, (u64, Vec<u8>)> = Default::default();
    for (_, b) in files.iter().filter(|(k, _)| k & 1 == 1) {
        let Ok(chunk) = SnapshotChunk::parse_from_bytes(b) else {
            continue;
        };
        let (from, id, last) = (chunk.from, chunk.snapshot_id, chunk.last);
        let e = expect.entry(from).or_insert_with(|| (id, Vec::new()));
        if e.0 != id {
            *e = (id, Vec::new());
        }
        let follows = chunk.offset == e.1.len() as u64;
        e.1.extend_from_slice(&chunk.data);
        match assembler.add(chunk) {
            Ok(Some(msg)) => {
                assert!(follows && last);
                assert_eq!(msg.get_msg_type(), MessageType::MsgSnapshot);
                let (_, data) = expect.remove(&from).expect("a transfer in progress");
                assert_eq!(&msg.get_snapshot().get_data()[..], &data[..]);
            }
            Ok(None) => assert!(follows && !last, "an out-of-order chunk was taken"),
            Err(_) => {
                expect.remove(&from);
            }
        }
    }
});
