//! The raft-rs message decoding kv-server applies to peer bytes: the
//! serialized `eraftpb.Message`s of a `PeerMessage`
//! (`transport::decode_message`, then `transport::check_peer_message`), and
//! `SnapshotChunk`s put back together by `transport::SnapshotAssembler`. Several of either are packed in one
//! input (see `flashkv_fuzz_support::container`): kind 0 a raft message,
//! kind 1 a snapshot chunk.
//!
//! Checks: every decoded message re-encodes to bytes that decode to a
//! message with the same fields; the assembler takes exactly the chunks a
//! model of its rules takes (one transfer per sender, offsets in order, a
//! new transfer starting at 0 replacing an abandoned one, a byte limit over
//! all transfers), and a completed snapshot is a `MsgSnapshot` whose data is
//! the chunks' data in order.
#![no_main]

use bytes::Bytes;
use flashkv_fuzz_support::container;
use kv_net::proto::SnapshotChunk;
use kv_raft::raft::eraftpb::{Message, MessageType};
use kv_server::transport::{
    SnapshotAssembler, SnapshotLimits, check_peer_message, decode_message,
};
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
    for m in raw.iter().filter_map(|b| decode_message(b).ok()) {
        // Never panics, whatever the message says.
        let _ = check_peer_message(&m, m.from, 1);
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

    // Small, so that inputs reach the limit.
    const MAX_BYTES: usize = 64 << 10;
    let assembler = SnapshotAssembler::new(SnapshotLimits {
        max_bytes: MAX_BYTES,
        idle_timeout: std::time::Duration::from_secs(3600),
    });
    let now = std::time::Instant::now();
    // The model: the transfer in progress per sender (its id and data).
    let mut model: std::collections::HashMap<u64, (u64, Vec<u8>)> = Default::default();
    for (_, b) in files.iter().filter(|(k, _)| k & 1 == 1) {
        let Ok(chunk) = SnapshotChunk::parse_from_bytes(b) else {
            continue;
        };
        let (from, id, offset, last) = (chunk.from, chunk.snapshot_id, chunk.offset, chunk.last);
        let data = chunk.data.to_vec();
        let raft_message = chunk.raft_message.clone();
        let got = assembler.add(from, chunk, now);
        let continues = model.get(&from).is_some_and(|(t, _)| *t == id);
        if !continues && offset != 0 {
            assert!(got.is_err(), "a chunk without its transfer's start was taken");
            continue;
        }
        if !continues {
            model.insert(from, (id, Vec::new()));
        }
        let held: usize = model.values().map(|(_, d)| d.len()).sum();
        let have = model.get(&from).map_or(0, |(_, d)| d.len());
        if offset != have as u64 || held + data.len() > MAX_BYTES {
            assert!(got.is_err(), "a chunk out of order or over the limit was taken");
            model.remove(&from);
            continue;
        }
        if let Some((_, d)) = model.get_mut(&from) {
            d.extend_from_slice(&data);
        }
        if !last {
            assert!(matches!(got, Ok(None)), "an in-order chunk was refused: {got:?}");
            continue;
        }
        let (_, whole) = model.remove(&from).unwrap_or_default();
        let is_snapshot = Message::parse_from_bytes(&raft_message)
            .is_ok_and(|m| m.get_msg_type() == MessageType::MsgSnapshot);
        match got {
            Ok(Some(msg)) => {
                assert!(is_snapshot);
                assert_eq!(msg.get_msg_type(), MessageType::MsgSnapshot);
                assert_eq!(&msg.get_snapshot().get_data()[..], &whole[..]);
            }
            Ok(None) => panic!("the last chunk did not complete its transfer"),
            Err(e) => assert!(!is_snapshot, "a complete snapshot was refused: {e}"),
        }
    }
});
