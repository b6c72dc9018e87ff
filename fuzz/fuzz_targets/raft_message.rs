//! The raft-rs message decoding kv-server applies to peer bytes: the
//! serialized `eraftpb.Message`s of a `PeerMessage`
//! (`transport::decode_message`, then `transport::check_peer_message`), and
//! `SnapshotChunk`s (offers and data) written to disk by
//! `snapshot::Receiver`. Several of either are packed in one input (see
//! `flashkv_fuzz_support::container`): kind 0 a raft message, kind 1 a
//! snapshot chunk.
//!
//! Checks: every decoded message re-encodes to bytes that decode to a
//! message with the same fields; no offer of a file outside its directory
//! is taken; an accepted offer resumes exactly at the bytes held; the
//! receiver takes exactly the data chunks a model of its rules takes (an
//! offer first, offsets in order, CRC32 intact, within the offered length,
//! the last one ending it), and a completed snapshot is a `MsgSnapshot`
//! whose directory holds the stream's bytes.
#![no_main]

use bytes::Bytes;
use flashkv_fuzz_support::container;
use kv_net::proto::SnapshotChunk;
use kv_raft::raft::eraftpb::{Message, MessageType};
use kv_server::snapshot::{Descriptor, Receiver, SnapshotDirs};
use kv_server::transport::{check_peer_message, decode_message};
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

    // The receiver writes what it takes to disk.
    let Ok(tmp) = tempfile::tempdir() else {
        return;
    };
    let dirs = std::sync::Arc::new(
        SnapshotDirs::open(tmp.path().join("snapshots")).expect("open the snapshots directory"),
    );
    let receiver = Receiver::new(dirs.clone(), std::time::Duration::from_secs(3600));
    // The model: the transfer in progress per sender (id, stream length,
    // the bytes taken so far).
    let mut model: std::collections::HashMap<u64, (u64, u64, Vec<u8>)> = Default::default();
    for (_, b) in files.iter().filter(|(k, _)| k & 1 == 1) {
        let Ok(chunk) = SnapshotChunk::parse_from_bytes(b) else {
            continue;
        };
        let from = chunk.from;
        if chunk.offer {
            let got = receiver.offer(from, 2, &chunk);
            let names_ok = chunk.files.iter().all(|f| {
                !f.name.is_empty() && f.name != "." && f.name != ".." && !f.name.contains(['/', '\\', '\0'])
            });
            match got {
                Ok(at) => {
                    assert!(names_ok, "an offer of a file outside its directory was taken");
                    let total = chunk.files.iter().map(|f| f.size).sum();
                    let entry = model.entry(from).or_insert((chunk.snapshot_id, total, Vec::new()));
                    if at == 0 {
                        *entry = (chunk.snapshot_id, total, Vec::new());
                    }
                    assert_eq!(at, entry.2.len() as u64, "resumed elsewhere than the bytes held");
                    assert!(at <= total);
                }
                Err(_) => {
                    // A refused offer leaves the transfer in progress alone
                    // (or dropped it in favour of nothing).
                }
            }
            continue;
        }
        let got = receiver.chunk(from, &chunk);
        let Some((id, total, held)) = model.get_mut(&from) else {
            assert!(got.is_err(), "a chunk without an offer was taken");
            continue;
        };
        let end = chunk.offset + chunk.data.len() as u64;
        let fits = chunk.snapshot_id == *id
            && chunk.offset == held.len() as u64
            && crc32fast::hash(&chunk.data) == chunk.crc32
            && end <= *total
            && (!chunk.last || end == *total);
        if !fits {
            assert!(got.is_err(), "a chunk out of order, damaged or out of bounds was taken");
            continue;
        }
        held.extend_from_slice(&chunk.data);
        if !chunk.last {
            assert!(matches!(got, Ok(None)), "an in-order chunk was refused: {got:?}");
            continue;
        }
        let (_, _, whole) = model.remove(&from).unwrap_or_default();
        let msg = got.expect("a complete snapshot was refused").expect("the last chunk completes");
        assert_eq!(msg.get_msg_type(), MessageType::MsgSnapshot);
        let name = Descriptor::decode(msg.get_snapshot().get_data()).expect("a descriptor").name();
        let dir = dirs.path(&name);
        let mut on_disk = Vec::new();
        for (file, _) in SnapshotDirs::files(&dir).expect("the placed directory") {
            on_disk.push(file);
        }
        let written: usize = on_disk
            .iter()
            .map(|f| std::fs::metadata(dir.join(f)).map_or(0, |m| m.len() as usize))
            .sum();
        assert_eq!(written, whole.len(), "the placed files do not hold the stream");
    }
});
