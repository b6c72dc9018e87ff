//! Writes the seed corpus of every fuzz target into `<out>/<target>/`
//! (default `fuzz/corpus`), made with the crates' own encoders: frames by
//! kv-net's codec, WAL segments, manifests and tables by a real `Db`, raft
//! logs by `LogStore`, archives by `archive::pack` of a `Db` checkpoint,
//! raft messages by raft-rs, commands by kv-server.
//!
//! `cargo run --manifest-path fuzz/Cargo.toml -p flashkv-fuzz-support --bin seeds [OUT]`

use std::path::{Path, PathBuf};

use bytes::Bytes;
use flashkv_fuzz_support::{container, raft_file};
use kv_engine::{Db, Options as DbOptions, SyncMode, WriteBatch};
use kv_net::proto::{self, Frame};
use kv_raft::raft::eraftpb::{
    ConfState, Entry, EntryType, HardState, Message, MessageType, Snapshot,
};
use kv_raft::{LogStore, Options as RaftOptions};
use kv_server::command::{BatchOp, Command, Op, Outcome};
use protobuf::Message as _;
use protobuf2::Message as _;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// Mode byte of the targets that repair checksums (see
/// `flashkv_fuzz_support::fixup`): seeds ask for repair, so that their
/// mutations keep valid checksums.
const REPAIR: u8 = 1;

struct Out {
    root: PathBuf,
    count: usize,
}

impl Out {
    fn seed(&mut self, target: &str, name: &str, data: &[u8]) -> Res<()> {
        let dir = self.root.join(target);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(format!("seed-{name}")), data)?;
        self.count += 1;
        Ok(())
    }

    fn repaired(&mut self, target: &str, name: &str, data: &[u8]) -> Res<()> {
        let mut v = vec![REPAIR];
        v.extend_from_slice(data);
        self.seed(target, name, &v)?;
        // The same bytes without repair: mutations then reach the checksum
        // checks themselves.
        v[0] = 0;
        self.seed(target, &format!("{name}-raw"), &v)
    }
}

fn frames(out: &mut Out) -> Res<()> {
    let max = flashkv_fuzz_support::FUZZ_MAX_FRAME;
    let mut all = Vec::new();
    let mut add = |name: &str, f: Frame, out: &mut Out| -> Res<()> {
        let wire = kv_net::frame::encode(&f, max)?;
        let mut v = vec![0u8];
        v.extend_from_slice(&wire);
        out.seed("frame", name, &v)?;
        all.extend_from_slice(&wire);
        Ok(())
    };
    let req = |id: u64, set: &dyn Fn(&mut proto::Request)| {
        let mut r = proto::Request::new();
        r.id = id;
        r.client_id = 7;
        r.seq = id;
        set(&mut r);
        let mut f = Frame::new();
        f.set_request(r);
        f
    };
    let mut put = proto::Put::new();
    put.key = Bytes::from_static(b"user:1");
    put.value = Bytes::from_static(b"Jane");
    add("put", req(1, &|r| r.set_put(put.clone())), out)?;
    let mut get = proto::Get::new();
    get.key = Bytes::from_static(b"user:1");
    add("get", req(2, &|r| r.set_get(get.clone())), out)?;
    let mut del = proto::Delete::new();
    del.key = Bytes::from_static(b"user:1");
    add("delete", req(3, &|r| r.set_delete(del.clone())), out)?;
    let mut cas = proto::Cas::new();
    cas.key = Bytes::from_static(b"k");
    cas.new_value = Bytes::from_static(b"v2");
    add("cas", req(4, &|r| r.set_cas(cas.clone())), out)?;
    let mut range = proto::Range::new();
    range.start = Bytes::from_static(b"a");
    range.end = Bytes::from_static(b"z");
    range.limit = 10;
    add("range", req(5, &|r| r.set_range(range.clone())), out)?;
    let mut batch = proto::Batch::new();
    for i in 0..3u8 {
        let mut op = proto::BatchOp::new();
        let mut p = proto::Put::new();
        p.key = Bytes::from(vec![b'k', i]);
        p.value = Bytes::from(vec![i; 5]);
        op.set_put(p);
        batch.ops.push(op);
    }
    add("batch", req(6, &|r| r.set_batch(batch.clone())), out)?;
    add(
        "status",
        req(7, &|r| r.set_status(proto::Status::new())),
        out,
    )?;

    let mut resp = proto::Response::new();
    resp.id = 2;
    let mut gr = proto::GetResult::new();
    gr.value = Bytes::from_static(b"Jane");
    resp.set_get(gr);
    let mut f = Frame::new();
    f.set_response(resp);
    add("response-get", f, out)?;
    let mut resp = proto::Response::new();
    resp.id = 5;
    let mut rr = proto::RangeResult::new();
    for i in 0..3u8 {
        let mut kv = proto::KeyValue::new();
        kv.key = Bytes::from(vec![b'a' + i]);
        kv.value = Bytes::from(vec![i; 3]);
        rr.pairs.push(kv);
    }
    resp.set_range(rr);
    let mut f = Frame::new();
    f.set_response(resp);
    add("response-range", f, out)?;
    let mut resp = proto::Response::new();
    resp.id = 9;
    let mut err = proto::Error::new();
    err.message = "not leader".into();
    resp.set_error(err);
    let mut f = Frame::new();
    f.set_response(resp);
    add("response-error", f, out)?;

    let mut pm = proto::PeerMessage::new();
    pm.from = 1;
    pm.to = 2;
    for m in raft_messages() {
        pm.raft_messages.push(Bytes::from(m.write_to_bytes()?));
    }
    let mut f = Frame::new();
    f.set_peer(pm);
    add("peer", f, out)?;
    let mut f = Frame::new();
    f.set_snapshot_chunk(snapshot_chunk(0, b"chunk data", false));
    add("snapshot-chunk", f, out)?;
    let mut hello = proto::Hello::new();
    hello.protocol_version = kv_net::PROTOCOL_VERSION;
    hello.node_id = 3;
    let mut f = Frame::new();
    f.set_hello(hello);
    add("hello", f, out)?;

    let mut v = vec![5u8];
    v.extend_from_slice(&all);
    out.seed("frame", "all-in-pieces", &v)
}

fn raft_messages() -> Vec<Message> {
    let mut v = Vec::new();
    let mut m = Message::default();
    m.set_msg_type(MessageType::MsgHeartbeat);
    (m.from, m.to, m.term, m.commit) = (1, 2, 5, 10);
    v.push(m);
    let mut m = Message::default();
    m.set_msg_type(MessageType::MsgAppend);
    (m.from, m.to, m.term, m.index, m.log_term, m.commit) = (1, 3, 5, 10, 4, 9);
    for i in 11..14 {
        m.entries.push(Entry {
            index: i,
            term: 5,
            data: format!("cmd {i}").into_bytes().into(),
            ..Default::default()
        });
    }
    let mut cc = Entry {
        index: 14,
        term: 5,
        ..Default::default()
    };
    cc.set_entry_type(EntryType::EntryConfChangeV2);
    m.entries.push(cc);
    v.push(m);
    let mut m = Message::default();
    m.set_msg_type(MessageType::MsgRequestVote);
    (m.from, m.to, m.term, m.index, m.log_term) = (2, 1, 6, 14, 5);
    v.push(m);
    let mut m = Message::default();
    m.set_msg_type(MessageType::MsgAppendResponse);
    (m.from, m.to, m.term, m.index, m.reject, m.reject_hint) = (3, 1, 5, 13, true, 12);
    v.push(m);
    v.push(snapshot_message());
    v
}

fn snapshot_message() -> Message {
    let mut m = Message::default();
    m.set_msg_type(MessageType::MsgSnapshot);
    (m.from, m.to, m.term) = (1, 2, 7);
    let mut s = Snapshot::default();
    s.mut_metadata().index = 40;
    s.mut_metadata().term = 6;
    s.mut_metadata().mut_conf_state().voters = vec![1, 2, 3];
    let descriptor = kv_server::snapshot::Descriptor {
        group_id: 1,
        index: 40,
        term: 6,
    };
    s.data = descriptor.encode().into();
    m.set_snapshot(s);
    m
}

fn snapshot_offer(files: &[(&str, u64)]) -> proto::SnapshotChunk {
    let mut c = proto::SnapshotChunk::new();
    (c.from, c.to, c.snapshot_id, c.group_id, c.offer) = (1, 2, 40, 1, true);
    c.raft_message = Bytes::from(snapshot_message().write_to_bytes().unwrap_or_default());
    for (name, size) in files {
        let mut f = proto::SnapshotFile::new();
        f.name = (*name).to_owned();
        f.size = *size;
        c.files.push(f);
    }
    c
}

fn snapshot_chunk(offset: u64, data: &'static [u8], last: bool) -> proto::SnapshotChunk {
    let mut c = proto::SnapshotChunk::new();
    (c.from, c.to, c.snapshot_id, c.offset, c.last) = (1, 2, 40, offset, last);
    c.data = Bytes::from_static(data);
    c.crc32 = crc32fast::hash(data);
    c
}

fn raft_message_seeds(out: &mut Out) -> Res<()> {
    for (i, m) in raft_messages().into_iter().enumerate() {
        let b = m.write_to_bytes()?;
        out.seed(
            "raft_message",
            &format!("msg-{i}"),
            &container::encode(&[(0, &b)]),
        )?;
    }
    let chunks = [
        snapshot_offer(&[("000005.sst", 15), ("MANIFEST-000007", 7)]),
        snapshot_chunk(0, b"first part ", false),
        snapshot_chunk(11, b"second part", false),
        snapshot_chunk(22, b"", true),
    ];
    let encoded: Vec<Vec<u8>> = chunks
        .iter()
        .map(|c| c.write_to_bytes())
        .collect::<Result<_, _>>()?;
    let files: Vec<(u8, &[u8])> = encoded.iter().map(|b| (1u8, &b[..])).collect();
    out.seed(
        "raft_message",
        "snapshot-chunks",
        &container::encode(&files),
    )
}

fn commands(out: &mut Out) -> Res<()> {
    let cmd = |seq: u64, op: Op| Command {
        client_id: 9,
        seq,
        time_ms: 1_700_000_000_000,
        op,
    };
    let key = Bytes::from_static(b"key");
    let ops = vec![
        Op::Put {
            key: key.clone(),
            value: Bytes::from_static(b"value"),
        },
        Op::Delete { key: key.clone() },
        Op::Cas {
            key: key.clone(),
            expected: Some(Bytes::from_static(b"old")),
            new: Bytes::from_static(b"new"),
        },
        Op::Cas {
            key: key.clone(),
            expected: None,
            new: Bytes::from_static(b"new"),
        },
        Op::Batch(vec![
            BatchOp::Put {
                key: key.clone(),
                value: Bytes::from_static(b"v"),
            },
            BatchOp::Delete { key: key.clone() },
        ]),
        Op::SetAdvertise {
            node_id: 2,
            addr: "127.0.0.1:7001".into(),
        },
    ];
    let mut group = Vec::new();
    for (i, op) in ops.into_iter().enumerate() {
        let c = cmd(i as u64 + 1, op);
        out.seed("command", &format!("cmd-{i}"), &c.encode())?;
        group.push(c);
    }
    out.seed("command", "multi", &cmd(100, Op::Multi(group)).encode())?;
    let outcomes = [
        Outcome::Ok,
        Outcome::CompareFailed {
            current: Some(Bytes::from_static(b"cur")),
        },
        Outcome::CompareFailed { current: None },
        Outcome::Stale,
        Outcome::Invalid("bad".into()),
        Outcome::Multi(vec![Outcome::Ok, Outcome::Stale]),
    ];
    for (i, o) in outcomes.iter().enumerate() {
        out.seed("command", &format!("outcome-{i}"), &o.encode())?;
    }
    Ok(())
}

/// Writes batches of every shape into a `Db` at `dir`, flushing and
/// compacting along the way, and returns it open.
fn fill_db(dir: &Path, opts: DbOptions, keys: usize) -> Res<Db> {
    let db = Db::open_with(dir, opts)?;
    for i in 0..keys {
        let k = format!("key{:05}", i * 7 % keys);
        match i % 4 {
            0 => db.put(&k, vec![i as u8; i % 50])?,
            1 => db.delete(&k)?,
            2 => {
                let mut b = WriteBatch::new();
                b.put(&k, b"batched")
                    .put(format!("{k}-x"), b"")
                    .delete("gone");
                db.write(b)?;
            }
            _ => db.put(&k, format!("value {i}"))?,
        }
        if i == keys / 2 {
            db.flush()?;
        }
    }
    Ok(db)
}

fn files_with(dir: &Path, ext: &str) -> Res<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    v.retain(|p| {
        p.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.ends_with(ext))
    });
    v.sort();
    Ok(v)
}

/// A WAL segment's bytes without most of its zero reservation (a few zeros
/// stay: replay must take them as the end).
fn trimmed(mut b: Vec<u8>) -> Vec<u8> {
    let end = b.iter().rposition(|&x| x != 0).map_or(0, |i| i + 1);
    b.truncate((end + 64).min(b.len()));
    b
}

fn engine(out: &mut Out, scratch: &Path) -> Res<()> {
    for (n, (align, block_size, keys)) in [(false, 256, 300), (true, 4096, 200), (false, 1024, 40)]
        .into_iter()
        .enumerate()
    {
        let dir = scratch.join(format!("db{n}"));
        let opts = DbOptions {
            sync: SyncMode::Never,
            block_size,
            block_align: align,
            ..DbOptions::default()
        };
        let db = fill_db(&dir, opts.clone(), keys)?;
        // Open segments: records followed by the zeros of the reservation.
        for (i, p) in files_with(&dir, ".log")?.into_iter().enumerate() {
            out.repaired(
                "wal_segment",
                &format!("db{n}-open-{i}"),
                &trimmed(std::fs::read(p)?),
            )?;
        }
        drop(db);
        // Closed segments: trimmed to their records.
        for (i, p) in files_with(&dir, ".log")?.into_iter().enumerate() {
            let b = std::fs::read(p)?;
            if !b.is_empty() {
                out.repaired("wal_segment", &format!("db{n}-closed-{i}"), &b)?;
            }
        }
        let db = Db::open_with(&dir, opts.clone())?;
        if n == 0 {
            db.compact()?;
        } else {
            db.flush()?;
        }
        let ckpt = scratch.join(format!("ckpt{n}"));
        db.checkpoint(&ckpt)?;
        drop(db);
        for (i, p) in files_with(&dir, ".sst")?.into_iter().enumerate() {
            let b = std::fs::read(p)?;
            if b.len() <= 64 << 10 {
                out.repaired("sstable", &format!("db{n}-{i}"), &b)?;
            }
        }
        for (i, p) in files_with(&dir, "")?.into_iter().enumerate() {
            let is_manifest = p
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("MANIFEST-"));
            if is_manifest {
                out.repaired("manifest", &format!("db{n}-{i}"), &std::fs::read(p)?)?;
            }
        }
        let packed = kv_server::archive::pack(&ckpt)?;
        if packed.len() <= 256 << 10 {
            out.repaired("snapshot_archive", &format!("ckpt{n}"), &packed)?;
        }
        // Reopening replays the WAL and writes a manifest with several
        // edits once tables change.
        let db = Db::open_with(&dir, opts)?;
        db.put("after-reopen", "1")?;
        db.flush()?;
        drop(db);
        for (i, p) in files_with(&dir, "")?.into_iter().enumerate() {
            if p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("MANIFEST-"))
            {
                out.repaired(
                    "manifest",
                    &format!("db{n}-reopened-{i}"),
                    &std::fs::read(p)?,
                )?;
            }
        }
    }
    let small = scratch.join("small");
    std::fs::create_dir_all(&small)?;
    std::fs::write(small.join("a"), b"hello")?;
    std::fs::write(small.join("b"), b"")?;
    out.repaired(
        "snapshot_archive",
        "small",
        &kv_server::archive::pack(&small)?,
    )?;
    Ok(())
}

fn ent(index: u64, term: u64) -> Entry {
    Entry {
        index,
        term,
        data: format!("entry {index}").into_bytes().into(),
        ..Default::default()
    }
}

/// The files of a raft log directory, packed as the `raft_log` target reads
/// them.
fn pack_raft_dir(dir: &Path) -> Res<Vec<u8>> {
    let mut files = Vec::new();
    for p in files_with(dir, ".seg")? {
        files.push((raft_file::SEGMENT, std::fs::read(p)?));
    }
    let snap = dir.join("snapshot");
    if snap.exists() {
        files.push((raft_file::SNAPSHOT, std::fs::read(snap)?));
    }
    let refs: Vec<(u8, &[u8])> = files.iter().map(|(k, b)| (*k, &b[..])).collect();
    Ok(container::encode(&refs))
}

fn raft(out: &mut Out, scratch: &Path) -> Res<()> {
    let opts = RaftOptions {
        sync: false,
        segment_bytes: 4096,
        ..RaftOptions::default()
    };
    let voters = ConfState {
        voters: vec![1, 2, 3],
        ..Default::default()
    };
    // A log with entries, hard states, an overwritten suffix and a conf
    // change, over several segments.
    let dir = scratch.join("raft-plain");
    {
        let mut s = LogStore::open(&dir, &opts)?;
        s.set_conf_state(0, voters.clone())?;
        s.append(&(1..=120).map(|i| ent(i, 1)).collect::<Vec<_>>())?;
        s.set_hard_state(&HardState {
            term: 1,
            vote: 1,
            commit: 90,
            ..Default::default()
        })?;
        s.sync()?;
        s.append(&(100..=130).map(|i| ent(i, 2)).collect::<Vec<_>>())?;
        let mut joint = voters.clone();
        joint.learners = vec![4];
        s.set_conf_state(125, joint)?;
        s.set_hard_state(&HardState {
            term: 2,
            vote: 2,
            commit: 110,
            ..Default::default()
        })?;
        s.sync()?;
    }
    out.repaired("raft_log", "plain", &pack_raft_dir(&dir)?)?;
    // A log compacted into a snapshot, with entries after it.
    let dir = scratch.join("raft-compacted");
    {
        let mut s = LogStore::open(&dir, &opts)?;
        s.bootstrap(voters.clone(), b"initial state".to_vec())?;
        let first = raft_first(&s);
        s.append(&(first..first + 30).map(|i| ent(i, 1)).collect::<Vec<_>>())?;
        s.set_hard_state(&HardState {
            term: 1,
            vote: 1,
            commit: first + 20,
            ..Default::default()
        })?;
        s.sync()?;
        s.compact(first + 10, b"state machine at 10".to_vec())?;
        s.append(&[ent(first + 30, 1)])?;
        s.sync()?;
    }
    out.repaired("raft_log", "compacted", &pack_raft_dir(&dir)?)?;
    // A log that installed a snapshot received from a leader.
    let dir = scratch.join("raft-installed");
    {
        let mut s = LogStore::open(&dir, &opts)?;
        s.append(&(1..=5).map(|i| ent(i, 1)).collect::<Vec<_>>())?;
        s.sync()?;
        let mut snap = Snapshot::default();
        snap.set_data(b"snapshot data".to_vec().into());
        snap.mut_metadata().index = 50;
        snap.mut_metadata().term = 3;
        snap.mut_metadata().set_conf_state(voters);
        s.apply_snapshot(snap)?;
        s.append(&[ent(51, 3), ent(52, 3)])?;
        s.set_hard_state(&HardState {
            term: 3,
            vote: 0,
            commit: 51,
            ..Default::default()
        })?;
        s.sync()?;
    }
    out.repaired("raft_log", "installed", &pack_raft_dir(&dir)?)
}

fn raft_first(s: &LogStore) -> u64 {
    use kv_raft::raft::Storage;
    s.last_index().map_or(1, |l| l + 1)
}

fn main() -> Res<()> {
    let root = std::env::args_os().nth(1).map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../corpus"),
        PathBuf::from,
    );
    let scratch = std::env::temp_dir().join(format!("flashkv-seeds-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;
    let mut out = Out { root, count: 0 };
    let result = (|| -> Res<()> {
        frames(&mut out)?;
        raft_message_seeds(&mut out)?;
        commands(&mut out)?;
        engine(&mut out, &scratch)?;
        raft(&mut out, &scratch)
    })();
    let _ = std::fs::remove_dir_all(&scratch);
    result?;
    println!("seeds: {} files in {}", out.count, out.root.display());
    Ok(())
}
