//! Proposal throughput and commit latency of a 3-node in-process cluster
//! whose nodes use the real, fsyncing log store in a temporary directory.
//! Messages go straight from one driver's outbox to the other's inbox.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use kv_raft::raft::eraftpb::{Message, MessageType};
use kv_raft::{BoxError, Handle, Node, Options, Role, StateMachine, Transport};

type Peers = Arc<RwLock<HashMap<u64, Handle>>>;

struct Direct {
    id: u64,
    peers: Peers,
}

impl Transport for Direct {
    fn send(&mut self, msgs: Vec<Message>) {
        let peers = self.peers.read().unwrap();
        for m in msgs {
            let (to, snap) = (m.to, m.get_msg_type() == MessageType::MsgSnapshot);
            let ok = peers.get(&to).is_some_and(|h| h.step(m).is_ok());
            if snap && let Some(me) = peers.get(&self.id) {
                me.report_snapshot(to, ok);
            }
        }
    }
}

#[derive(Default)]
struct Counter {
    applied: u64,
    sum: u64,
}

impl StateMachine for Counter {
    fn apply(&mut self, index: u64, _term: u64, command: &[u8]) -> Result<Vec<u8>, BoxError> {
        self.applied = index;
        self.sum = self.sum.wrapping_add(command.len() as u64);
        Ok(Vec::new())
    }
    fn applied_index(&self) -> u64 {
        self.applied
    }
    fn snapshot(&mut self) -> Result<Vec<u8>, BoxError> {
        Ok(self.sum.to_le_bytes().to_vec())
    }
    fn restore(&mut self, index: u64, _term: u64, data: &[u8]) -> Result<(), BoxError> {
        self.sum = u64::from_le_bytes(data.try_into()?);
        self.applied = index;
        Ok(())
    }
}

struct Bench {
    _dir: tempfile::TempDir,
    nodes: Vec<Node>,
    leader: Handle,
}

fn cluster() -> Bench {
    let dir = tempfile::tempdir().unwrap();
    let peers: Peers = Arc::default();
    let opts = Options {
        tick_interval: Duration::from_millis(20),
        ..Options::default()
    };
    let nodes: Vec<Node> = (1..=3)
        .map(|id| {
            let t = Direct {
                id,
                peers: peers.clone(),
            };
            let n = Node::start(
                id,
                dir.path().join(format!("n{id}")),
                &[1, 2, 3],
                opts.clone(),
                Counter::default(),
                t,
            )
            .unwrap();
            peers.write().unwrap().insert(id, n.handle());
            n
        })
        .collect();
    nodes[0].handle().campaign().wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = nodes[0].handle().status().wait().unwrap();
        if s.role == Role::Leader && nodes[0].handle().propose(b"warm".to_vec()).wait().is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "no leader");
        std::thread::sleep(Duration::from_millis(10));
    }
    let leader = nodes[0].handle();
    Bench {
        _dir: dir,
        nodes,
        leader,
    }
}

fn benches(c: &mut Criterion) {
    let b = cluster();
    let payload = vec![7u8; 128];

    let mut g = c.benchmark_group("raft_3_nodes");
    g.sample_size(20).measurement_time(Duration::from_secs(6));
    g.bench_function("commit_latency_1x128B", |bench| {
        bench.iter(|| b.leader.propose(payload.clone()).wait().unwrap());
    });
    for batch in [64usize, 512] {
        g.throughput(Throughput::Elements(batch as u64));
        g.bench_function(format!("throughput_{batch}x128B"), |bench| {
            bench.iter(|| {
                let cs: Vec<_> = (0..batch)
                    .map(|_| b.leader.propose(payload.clone()))
                    .collect();
                for c in cs {
                    c.wait().unwrap();
                }
            });
        });
    }
    g.finish();
    drop(b.nodes);
}

criterion_group!(cluster_benches, benches);
criterion_main!(cluster_benches);
