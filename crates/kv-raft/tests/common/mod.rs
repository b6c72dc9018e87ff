//! An in-process cluster over a simulated network, for the scenario tests.
//!
//! The network drops, delays (and so reorders), duplicates and partitions
//! messages; a delivery thread hands them to the nodes' `step`. A checker
//! watches every state machine `apply`/`restore` and every leader message.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kv_raft::raft::eraftpb::{Message, MessageType};
use kv_raft::{BoxError, Error, Handle, Node, Options, Role, StateMachine, Transport};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Seed from `KV_RAFT_SEED` or the clock; printed so a failure can be rerun.
pub fn seed() -> u64 {
    let seed = std::env::var("KV_RAFT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    eprintln!("seed: {seed} (rerun with KV_RAFT_SEED={seed})");
    seed
}

pub fn test_options() -> Options {
    Options {
        tick_interval: Duration::from_millis(10),
        election_ticks: 10,
        heartbeat_ticks: 2,
        snapshot_threshold: 100,
        segment_bytes: 16 << 10,
        read_timeout: Duration::from_millis(800),
        ..Options::default()
    }
}

// ---------------------------------------------------------------- checker

/// Global record of what was applied where, and of leaders per term.
#[derive(Default)]
pub struct Checker {
    applied: Mutex<BTreeMap<u64, (u64, Vec<u8>)>>,
    leaders: Mutex<HashMap<u64, u64>>,
    violations: Mutex<Vec<String>>,
}

impl Checker {
    pub fn violation(&self, v: String) {
        eprintln!("VIOLATION: {v}");
        self.violations.lock().unwrap().push(v);
    }

    /// Every node must apply the same (term, command) at an index.
    fn check_entry(&self, node: u64, index: u64, term: u64, cmd: &[u8]) {
        let mut m = self.applied.lock().unwrap();
        match m.get(&index) {
            Some((t, c)) if *t == term && c == cmd => {}
            Some((t, c)) => self.violation(format!(
                "node {node} applied ({term}, {:?}) at {index}, another applied ({t}, {:?})",
                String::from_utf8_lossy(cmd),
                String::from_utf8_lossy(c)
            )),
            None => {
                m.insert(index, (term, cmd.to_vec()));
            }
        }
    }

    fn leader_seen(&self, term: u64, id: u64) {
        let mut l = self.leaders.lock().unwrap();
        match l.get(&term) {
            Some(&other) if other != id => {
                drop(l);
                self.violation(format!("two leaders in term {term}: {other} and {id}"));
            }
            Some(_) => {}
            None => {
                l.insert(term, id);
            }
        }
    }

    pub fn violations(&self) -> Vec<String> {
        self.violations.lock().unwrap().clone()
    }

    pub fn terms_with_leader(&self) -> usize {
        self.leaders.lock().unwrap().len()
    }
}

// ---------------------------------------------------------- state machine

/// What a test state machine holds; shared with the test.
#[derive(Default, Clone)]
pub struct SmState {
    pub applied: u64,
    /// Every applied entry: (index, term, command); empty commands included.
    pub log: Vec<(u64, u64, Vec<u8>)>,
    pub restores: usize,
}

pub struct TestSm {
    pub id: u64,
    pub state: Arc<Mutex<SmState>>,
    pub checker: Arc<Checker>,
}

fn encode_log(log: &[(u64, u64, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, t, c) in log {
        out.extend_from_slice(&i.to_le_bytes());
        out.extend_from_slice(&t.to_le_bytes());
        out.extend_from_slice(&(c.len() as u32).to_le_bytes());
        out.extend_from_slice(c);
    }
    out
}

fn decode_log(mut b: &[u8]) -> Result<Vec<(u64, u64, Vec<u8>)>, BoxError> {
    let mut v = Vec::new();
    while !b.is_empty() {
        if b.len() < 20 {
            return Err("short snapshot".into());
        }
        let i = u64::from_le_bytes(b[0..8].try_into()?);
        let t = u64::from_le_bytes(b[8..16].try_into()?);
        let n = u32::from_le_bytes(b[16..20].try_into()?) as usize;
        let c = b.get(20..20 + n).ok_or("short snapshot")?.to_vec();
        b = &b[20 + n..];
        v.push((i, t, c));
    }
    Ok(v)
}

impl StateMachine for TestSm {
    fn apply(&mut self, index: u64, term: u64, command: &[u8]) -> Result<Vec<u8>, BoxError> {
        let mut s = self.state.lock().unwrap();
        if index != s.applied + 1 {
            self.checker.violation(format!(
                "node {} applied {index} after {}",
                self.id, s.applied
            ));
        }
        self.checker.check_entry(self.id, index, term, command);
        s.log.push((index, term, command.to_vec()));
        s.applied = index;
        Ok(index.to_le_bytes().to_vec())
    }

    fn applied_index(&self) -> u64 {
        self.state.lock().unwrap().applied
    }

    fn snapshot(&mut self) -> Result<Vec<u8>, BoxError> {
        Ok(encode_log(&self.state.lock().unwrap().log))
    }

    fn restore(&mut self, index: u64, _term: u64, data: &[u8]) -> Result<(), BoxError> {
        let log = decode_log(data)?;
        for (i, t, c) in &log {
            self.checker.check_entry(self.id, *i, *t, c);
        }
        let mut s = self.state.lock().unwrap();
        // Only the bootstrap snapshot is empty.
        if log.last().map_or(index != 1, |e| e.0 != index) {
            self.checker.violation(format!(
                "node {}: snapshot at {index} ends at {:?}",
                self.id,
                log.last().map(|e| e.0)
            ));
        }
        s.log = log;
        s.applied = index;
        s.restores += 1;
        Ok(())
    }
}

// ---------------------------------------------------------------- network

#[derive(Clone, Copy, Debug)]
pub struct Faults {
    pub drop: f64,
    pub duplicate: f64,
    pub max_delay: Duration,
}

impl Faults {
    pub const NONE: Faults = Faults {
        drop: 0.0,
        duplicate: 0.0,
        max_delay: Duration::ZERO,
    };
    pub const LOSSY: Faults = Faults {
        drop: 0.05,
        duplicate: 0.03,
        max_delay: Duration::from_millis(6),
    };
}

struct NetState {
    rng: StdRng,
    faults: Faults,
    seq: u64,
    queue: BTreeMap<(Instant, u64), Message>,
    handles: HashMap<u64, Handle>,
    /// Directed links that lose everything.
    cut: HashSet<(u64, u64)>,
    snapshots_delivered: HashMap<u64, usize>,
}

struct NetInner {
    state: Mutex<NetState>,
    cond: Condvar,
    stop: AtomicBool,
    checker: Arc<Checker>,
}

#[derive(Clone)]
pub struct SimNet {
    inner: Arc<NetInner>,
}

pub struct SimTransport {
    id: u64,
    net: SimNet,
}

impl Transport for SimTransport {
    fn send(&mut self, msgs: Vec<Message>) {
        let inner = &self.net.inner;
        let mut st = inner.state.lock().unwrap();
        let now = Instant::now();
        for m in msgs {
            if matches!(
                m.get_msg_type(),
                MessageType::MsgAppend | MessageType::MsgHeartbeat | MessageType::MsgSnapshot
            ) {
                inner.checker.leader_seen(m.term, m.from);
            }
            let is_snap = m.get_msg_type() == MessageType::MsgSnapshot;
            let to = m.to;
            let faults = st.faults;
            let lost = st.cut.contains(&(self.id, to)) || st.rng.gen_bool(faults.drop);
            if lost {
                if is_snap && let Some(h) = st.handles.get(&self.id) {
                    h.report_snapshot(to, false);
                }
                if st.cut.contains(&(self.id, to))
                    && let Some(h) = st.handles.get(&self.id)
                {
                    h.report_unreachable(to);
                }
                continue;
            }
            let copies = if st.rng.gen_bool(faults.duplicate) {
                2
            } else {
                1
            };
            for _ in 0..copies {
                let delay = if faults.max_delay.is_zero() {
                    Duration::ZERO
                } else {
                    st.rng.gen_range(Duration::ZERO..faults.max_delay)
                };
                st.seq += 1;
                let key = (now + delay, st.seq);
                st.queue.insert(key, m.clone());
            }
        }
        drop(st);
        inner.cond.notify_one();
    }
}

impl SimNet {
    pub fn new(seed: u64, faults: Faults, checker: Arc<Checker>) -> (SimNet, JoinHandle<()>) {
        let net = SimNet {
            inner: Arc::new(NetInner {
                state: Mutex::new(NetState {
                    rng: StdRng::seed_from_u64(seed),
                    faults,
                    seq: 0,
                    queue: BTreeMap::new(),
                    handles: HashMap::new(),
                    cut: HashSet::new(),
                    snapshots_delivered: HashMap::new(),
                }),
                cond: Condvar::new(),
                stop: AtomicBool::new(false),
                checker,
            }),
        };
        let n = net.clone();
        let t = std::thread::spawn(move || n.deliver_loop());
        (net, t)
    }

    fn deliver_loop(&self) {
        let inner = &self.inner;
        let mut st = inner.state.lock().unwrap();
        while !inner.stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            let mut due = Vec::new();
            while let Some(entry) = st.queue.first_entry() {
                if entry.key().0 > now {
                    break;
                }
                due.push(entry.remove());
            }
            for m in due {
                let (from, to) = (m.from, m.to);
                let is_snap = m.get_msg_type() == MessageType::MsgSnapshot;
                let cut = st.cut.contains(&(from, to));
                let target = st.handles.get(&to).cloned();
                let delivered = !cut && target.is_some_and(|h| h.step(m).is_ok());
                if is_snap {
                    if delivered {
                        *st.snapshots_delivered.entry(to).or_default() += 1;
                    }
                    if let Some(h) = st.handles.get(&from) {
                        h.report_snapshot(to, delivered);
                    }
                }
            }
            let wait = st
                .queue
                .first_key_value()
                .map(|(k, _)| k.0.saturating_duration_since(Instant::now()))
                .unwrap_or(Duration::from_millis(5))
                .min(Duration::from_millis(5));
            st = inner.cond.wait_timeout(st, wait).unwrap().0;
        }
    }

    pub fn stop(&self) {
        self.inner.stop.store(true, Ordering::Relaxed);
        self.inner.cond.notify_all();
    }

    pub fn register(&self, h: Handle) {
        self.inner.state.lock().unwrap().handles.insert(h.id(), h);
    }

    pub fn unregister(&self, id: u64) {
        self.inner.state.lock().unwrap().handles.remove(&id);
    }

    pub fn transport(&self, id: u64) -> SimTransport {
        SimTransport {
            id,
            net: self.clone(),
        }
    }

    pub fn set_faults(&self, f: Faults) {
        self.inner.state.lock().unwrap().faults = f;
    }

    /// Cuts every link between `id` and `others`, both ways.
    pub fn isolate(&self, id: u64, others: &[u64]) {
        let mut st = self.inner.state.lock().unwrap();
        for &o in others {
            if o != id {
                st.cut.insert((id, o));
                st.cut.insert((o, id));
            }
        }
    }

    /// Splits the nodes into two sides that cannot talk.
    pub fn partition(&self, a: &[u64], b: &[u64]) {
        let mut st = self.inner.state.lock().unwrap();
        for &x in a {
            for &y in b {
                st.cut.insert((x, y));
                st.cut.insert((y, x));
            }
        }
    }

    pub fn heal(&self) {
        self.inner.state.lock().unwrap().cut.clear();
    }

    pub fn snapshots_delivered(&self, to: u64) -> usize {
        self.inner
            .state
            .lock()
            .unwrap()
            .snapshots_delivered
            .get(&to)
            .copied()
            .unwrap_or(0)
    }
}

// ---------------------------------------------------------------- cluster

pub struct Cluster {
    pub net: SimNet,
    net_thread: Option<JoinHandle<()>>,
    pub checker: Arc<Checker>,
    pub root: tempfile::TempDir,
    pub opts: Options,
    pub nodes: BTreeMap<u64, Node>,
    pub sms: BTreeMap<u64, Arc<Mutex<SmState>>>,
    pub rng: StdRng,
    /// Commands acknowledged as applied, with the index they got.
    pub acked: Vec<(u64, Vec<u8>)>,
}

impl Cluster {
    pub fn new(ids: &[u64], opts: Options, seed: u64, faults: Faults) -> Cluster {
        let checker = Arc::new(Checker::default());
        let (net, t) = SimNet::new(seed, faults, checker.clone());
        let mut c = Cluster {
            net,
            net_thread: Some(t),
            checker,
            root: tempfile::tempdir().expect("tempdir"),
            opts,
            nodes: BTreeMap::new(),
            sms: BTreeMap::new(),
            rng: StdRng::seed_from_u64(seed ^ 0x5eed),
            acked: Vec::new(),
        };
        for &id in ids {
            c.start(id, ids, false);
        }
        c
    }

    pub fn dir(&self, id: u64) -> PathBuf {
        self.root.path().join(format!("node-{id}"))
    }

    /// Starts node `id`; `keep_sm` reuses its state machine from before
    /// (a durable one), otherwise it starts empty and rebuilds from the log.
    pub fn start(&mut self, id: u64, peers: &[u64], keep_sm: bool) {
        let state = if keep_sm {
            self.sms.get(&id).cloned().unwrap_or_default()
        } else {
            Arc::new(Mutex::new(SmState::default()))
        };
        self.sms.insert(id, state.clone());
        let sm = TestSm {
            id,
            state,
            checker: self.checker.clone(),
        };
        let node = Node::start(
            id,
            self.dir(id),
            peers,
            self.opts.clone(),
            sm,
            self.net.transport(id),
        )
        .unwrap_or_else(|e| panic!("start node {id}: {e}"));
        self.net.register(node.handle());
        self.nodes.insert(id, node);
    }

    pub fn stop(&mut self, id: u64) {
        self.net.unregister(id);
        if let Some(n) = self.nodes.remove(&id) {
            n.shutdown()
                .unwrap_or_else(|e| panic!("node {id} failed: {e}"));
        }
    }

    pub fn restart(&mut self, id: u64, keep_sm: bool) {
        self.stop(id);
        self.start(id, &[], keep_sm);
    }

    pub fn handle(&self, id: u64) -> Handle {
        self.nodes[&id].handle()
    }

    pub fn handles(&self) -> Vec<Handle> {
        self.nodes.values().map(Node::handle).collect()
    }

    /// Waits for a node that reports itself leader and is reported as
    /// leader by a majority of the running nodes.
    pub fn wait_leader(&self, timeout: Duration) -> Option<u64> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let mut votes: HashMap<u64, usize> = HashMap::new();
            let mut leaders = Vec::new();
            for h in self.handles() {
                if let Ok(Ok(s)) = h.status().wait_timeout(Duration::from_millis(500)) {
                    if s.role == Role::Leader {
                        leaders.push(s.id);
                    }
                    if let Some(l) = s.leader_id {
                        *votes.entry(l).or_default() += 1;
                    }
                }
            }
            for l in leaders {
                if votes.get(&l).copied().unwrap_or(0) * 2 > self.nodes.len() {
                    return Some(l);
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Proposes through whichever node is leader, retrying on definite
    /// failures, until `timeout`. Records the command when acknowledged.
    pub fn propose(&mut self, cmd: &[u8], timeout: Duration) -> Result<u64, Error> {
        let deadline = Instant::now() + timeout;
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        let mut target = ids[self.rng.gen_range(0..ids.len())];
        loop {
            let Some(node) = self.nodes.get(&target) else {
                target = ids[self.rng.gen_range(0..ids.len())];
                continue;
            };
            let left = deadline.saturating_duration_since(Instant::now());
            let r = match node.handle().propose(cmd.to_vec()).wait_timeout(left) {
                Ok(r) => r,
                Err(_) => return Err(Error::Timeout),
            };
            match r {
                Ok(out) => {
                    let index = u64::from_le_bytes(out.try_into().expect("8 bytes"));
                    self.acked.push((index, cmd.to_vec()));
                    return Ok(index);
                }
                Err(e) if e.is_definite() && Instant::now() < deadline => {
                    target = match e {
                        Error::NotLeader {
                            leader: Some(l), ..
                        } if self.nodes.contains_key(&l) => l,
                        _ => {
                            std::thread::sleep(Duration::from_millis(10));
                            ids[self.rng.gen_range(0..ids.len())]
                        }
                    };
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Waits until all running nodes applied the same index, which is the
    /// leader's commit index. Returns that index.
    pub fn wait_converged(&self, timeout: Duration) -> u64 {
        let deadline = Instant::now() + timeout;
        let mut last = Vec::new();
        while Instant::now() < deadline {
            let st: Vec<_> = self
                .handles()
                .iter()
                .filter_map(|h| h.status().wait_timeout(Duration::from_millis(500)).ok())
                .filter_map(Result::ok)
                .collect();
            if st.len() == self.nodes.len()
                && let Some(leader) = st.iter().find(|s| s.role == Role::Leader)
                && st.iter().all(|s| s.applied == leader.commit)
            {
                return leader.commit;
            }
            last = st
                .iter()
                .map(|s| (s.id, s.role, s.term, s.commit, s.applied))
                .collect();
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("cluster did not converge: {last:?}");
    }

    /// The final checks: no violation seen, every running node's state
    /// machine holds the same sequence, every acknowledged command is in it
    /// at its index.
    pub fn check(&self) {
        let v = self.checker.violations();
        assert!(v.is_empty(), "violations: {v:#?}");
        let logs: Vec<(u64, SmState)> = self
            .nodes
            .keys()
            .map(|id| (*id, self.sms[id].lock().unwrap().clone()))
            .collect();
        let (first_id, reference) = &logs[0];
        for (id, s) in &logs[1..] {
            assert_eq!(
                s.applied, reference.applied,
                "applied of {id} vs {first_id}"
            );
            assert!(
                s.log == reference.log,
                "node {id} and node {first_id} applied different sequences"
            );
        }
        for w in reference.log.windows(2) {
            assert_eq!(w[0].0 + 1, w[1].0, "gap in applied sequence");
        }
        let by_index: HashMap<u64, &Vec<u8>> =
            reference.log.iter().map(|(i, _, c)| (*i, c)).collect();
        for (index, cmd) in &self.acked {
            assert_eq!(
                by_index.get(index).copied(),
                Some(cmd),
                "acknowledged command at {index} lost"
            );
        }
    }

    pub fn shutdown(mut self) {
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        for id in ids {
            self.stop(id);
        }
        self.net.stop();
        if let Some(t) = self.net_thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.net.stop();
    }
}

/// Load with faults: lossy network, partitions, isolations and restarts
/// (with durable or empty state machines), then heal and check.
pub fn chaos(ids: &[u64], seed: u64, duration: Duration, max_ops: usize) {
    let mut c = Cluster::new(ids, test_options(), seed, Faults::LOSSY);
    assert!(
        c.wait_leader(Duration::from_secs(10)).is_some(),
        "no leader"
    );
    let start = Instant::now();
    let mut next_fault = start + Duration::from_millis(300);
    let (mut ok, mut unknown, mut definite, mut reads) = (0, 0, 0, 0);
    let mut op = 0;
    while start.elapsed() < duration && op < max_ops {
        op += 1;
        let cmd = format!("cmd-{op}").into_bytes();
        match c.propose(&cmd, Duration::from_secs(2)) {
            Ok(_) => ok += 1,
            Err(e) if e.is_definite() => definite += 1,
            Err(_) => unknown += 1,
        }
        if op % 7 == 0 {
            // A read that starts after an acknowledged write must see it.
            let floor = c.acked.iter().map(|a| a.0).max().unwrap_or(0);
            let id = *c
                .nodes
                .keys()
                .nth(c.rng.gen_range(0..c.nodes.len()))
                .unwrap();
            if let Ok(Ok(ri)) = c
                .handle(id)
                .read_index()
                .wait_timeout(Duration::from_secs(2))
            {
                reads += 1;
                let applied = c.sms[&id].lock().unwrap().applied;
                if ri < floor || applied < ri {
                    c.checker.violation(format!(
                        "read on {id}: index {ri}, applied {applied}, acked floor {floor}"
                    ));
                }
            }
        }
        if Instant::now() >= next_fault {
            next_fault = Instant::now() + Duration::from_millis(c.rng.gen_range(150..500));
            let victim = ids[c.rng.gen_range(0..ids.len())];
            match c.rng.gen_range(0..5) {
                0 => {
                    c.net.heal();
                    c.net.isolate(victim, ids);
                }
                1 => {
                    let keep = c.rng.gen_bool(0.5);
                    c.restart(victim, keep);
                }
                2 => {
                    let mut shuffled = ids.to_vec();
                    for i in (1..shuffled.len()).rev() {
                        let j = c.rng.gen_range(0..=i);
                        shuffled.swap(i, j);
                    }
                    let minority = ids.len() / 2;
                    c.net.heal();
                    c.net
                        .partition(&shuffled[..minority], &shuffled[minority..]);
                }
                _ => c.net.heal(),
            }
        }
    }
    c.net.heal();
    eprintln!(
        "ops {op}: ok {ok}, unknown {unknown}, definite failures {definite}, reads {reads}, \
         terms with a leader {}",
        c.checker.terms_with_leader()
    );
    assert!(ok > 0, "nothing was acknowledged");
    let commit = c.wait_converged(Duration::from_secs(20));
    eprintln!("converged at index {commit}");
    c.check();
    c.shutdown();
}
