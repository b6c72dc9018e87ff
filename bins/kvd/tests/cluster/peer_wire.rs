//! Peer-protocol frames built by hand, for tests that play a hostile or
//! forged peer: the handshake, raft-rs messages (encoded without depending
//! on raft-rs) and snapshot chunks.

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kv_net::PROTOCOL_VERSION;
use kv_net::proto::{Frame, Hello, PeerMessage, SnapshotChunk, SnapshotFile};
use protobuf::Message as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// raft-rs `MessageType` numbers.
pub const MSG_APPEND: u64 = 3;
pub const MSG_SNAPSHOT: u64 = 7;
pub const MSG_HEARTBEAT: u64 = 8;

/// A serialized raft-rs `eraftpb.Message` with the fields these tests set.
pub fn raft_message(msg_type: u64, to: u64, from: u64, term: u64, commit: u64) -> Bytes {
    let mut m = Vec::new();
    for (field, value) in [(1u8, msg_type), (2, to), (3, from), (4, term), (8, commit)] {
        if value != 0 {
            m.push(field << 3); // varint wire type
            put_varint(&mut m, value);
        }
    }
    Bytes::from(m)
}

/// A serialized raft-rs `MsgSnapshot` whose data is a valid descriptor of
/// a snapshot at (`index`, `term`).
pub fn snapshot_message(to: u64, from: u64, term: u64, index: u64) -> Bytes {
    let data = kv_server::snapshot::Descriptor {
        group_id: 1,
        index,
        term,
    }
    .encode();
    let mut meta = Vec::new();
    for (field, value) in [(2u8, index), (3, term)] {
        meta.push(field << 3);
        put_varint(&mut meta, value);
    }
    let mut snap = Vec::new();
    put_bytes(&mut snap, 1, &data);
    put_bytes(&mut snap, 2, &meta);
    let mut m = raft_message(MSG_SNAPSHOT, to, from, term, 0).to_vec();
    put_bytes(&mut m, 9, &snap);
    Bytes::from(m)
}

fn put_bytes(out: &mut Vec<u8>, field: u8, bytes: &[u8]) {
    out.push((field << 3) | 2); // length-delimited wire type
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

pub fn hello(cluster_id: u64, node_id: u64) -> Frame {
    let mut h = Hello::new();
    h.protocol_version = PROTOCOL_VERSION;
    h.cluster_id = cluster_id;
    h.node_id = node_id;
    let mut f = Frame::new();
    f.set_hello(h);
    f
}

pub fn peer(from: u64, to: u64, messages: Vec<Bytes>) -> Frame {
    let mut m = PeerMessage::new();
    m.from = from;
    m.to = to;
    m.raft_messages = messages;
    let mut f = Frame::new();
    f.set_peer(m);
    f
}

pub fn chunk(from: u64, to: u64, offset: u64, data: Vec<u8>, last: bool) -> Frame {
    let mut c = SnapshotChunk::new();
    c.from = from;
    c.to = to;
    c.snapshot_id = 77;
    c.offset = offset;
    c.crc32 = crc32fast::hash(&data);
    c.data = data.into();
    c.last = last;
    let mut f = Frame::new();
    f.set_snapshot_chunk(c);
    f
}

/// A snapshot offer of `files` carrying `raft_message`.
pub fn offer(from: u64, to: u64, raft_message: Bytes, files: &[(&str, u64)]) -> Frame {
    let mut c = SnapshotChunk::new();
    c.from = from;
    c.to = to;
    c.snapshot_id = 77;
    c.group_id = 1;
    c.offer = true;
    c.raft_message = raft_message;
    c.files = files
        .iter()
        .map(|(name, size)| {
            let mut f = SnapshotFile::new();
            f.name = (*name).to_owned();
            f.size = *size;
            f
        })
        .collect();
    let mut f = Frame::new();
    f.set_snapshot_chunk(c);
    f
}

/// A length-prefixed frame.
pub fn encode(frame: &Frame) -> Vec<u8> {
    let body = frame.write_to_bytes().expect("encode");
    let mut out = u32::try_from(body.len())
        .expect("fits")
        .to_be_bytes()
        .to_vec();
    out.extend_from_slice(&body);
    out
}

/// A `PeerMessage` frame from `from` to `to` whose body is exactly `len`
/// bytes, its one raft message garbage.
pub fn peer_of_length(from: u64, to: u64, len: usize) -> Vec<u8> {
    let mut payload = len - 32;
    loop {
        let frame = peer(from, to, vec![Bytes::from(vec![0xff; payload])]);
        let size = frame.compute_size() as usize;
        if size == len {
            return encode(&frame);
        }
        payload = payload + len - size;
    }
}

/// The cluster id a node persisted in its data directory.
pub fn cluster_id(data_dir: &Path) -> u64 {
    let text = std::fs::read_to_string(data_dir.join("cluster-id")).expect("cluster-id file");
    let line = text.lines().nth(1).expect("cluster id line");
    u64::from_str_radix(line.trim(), 16).expect("hex cluster id")
}

/// Sends `bytes` on a fresh connection; true when the node closed it
/// within `within` (EOF or reset).
pub async fn closed_after(addr: &str, bytes: &[u8], within: Duration) -> bool {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    if s.write_all(bytes).await.is_err() {
        return true;
    }
    let mut buf = [0u8; 1024];
    let deadline = Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline.into(), s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

/// The frames, each encoded, on one buffer.
pub fn frames(list: &[Frame]) -> Vec<u8> {
    list.iter().flat_map(encode).collect()
}

/// Peak resident set size of process `pid` in KiB (`VmHWM`).
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}
