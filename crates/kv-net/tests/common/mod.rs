//! Shared test fixtures: an in-memory service and server start-up.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use kv_net::proto::{
    self, BatchResult, CasResult, DeleteResult, ErrorCode, GetResult, Hello, KeyValue, PeerMessage,
    PutResult, RangeResult, Request, Response, Role, SnapshotChunk, StatusResult, batch_op,
    request,
};
use kv_net::server::error_response;
use kv_net::{Listener, Options, PeerIdentity, Service};
use tokio::sync::{mpsc, oneshot};

/// Every test body is bounded by this.
pub const TEST_TIMEOUT: Duration = Duration::from_secs(20);

/// Runs `f` and fails the test if it takes longer than [`TEST_TIMEOUT`].
pub async fn bounded<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(TEST_TIMEOUT, f)
        .await
        .expect("test exceeded its time bound")
}

/// The cluster id [`MemKv`] accepts in a peer handshake, from nodes 1 to 3.
pub const TEST_CLUSTER: u64 = 7;

/// Node `id` of [`TEST_CLUSTER`].
pub fn identity(node_id: u64) -> PeerIdentity {
    PeerIdentity {
        cluster_id: TEST_CLUSTER,
        node_id,
    }
}

/// An in-memory key-value service.
#[derive(Default)]
pub struct MemKv {
    pub map: Mutex<BTreeMap<Bytes, Bytes>>,
    /// Each request sleeps a random time up to this.
    pub max_delay: Option<Duration>,
    /// Each request sleeps this long (key `slow` sleeps 10 s).
    pub fixed_delay: Option<Duration>,
    /// (client_id, seq) of each write.
    pub writes_seen: Mutex<Vec<(u64, u64)>>,
    pub in_flight: AtomicUsize,
    pub max_in_flight: AtomicUsize,
    /// Request ids in completion order.
    pub completed: Mutex<Vec<u64>>,
    pub peer_tx: Option<mpsc::UnboundedSender<PeerMessage>>,
    pub chunk_tx: Option<mpsc::UnboundedSender<SnapshotChunk>>,
    pub refuse_snapshots: bool,
    /// What the service answers to a snapshot offer: resume at this offset.
    pub snapshot_resume_at: u64,
}

fn ok_put() -> Response {
    let mut r = Response::new();
    r.set_put(PutResult::new());
    r
}

impl MemKv {
    async fn delay(&self, req: &Request) {
        if let Some(max) = self.max_delay {
            let ms = rand::random::<u64>() % (max.as_millis() as u64 + 1);
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        if let Some(d) = self.fixed_delay {
            let slow = matches!(&req.cmd, Some(request::Cmd::Put(p)) if p.key.as_ref() == b"slow");
            let d = if slow { Duration::from_secs(10) } else { d };
            tokio::time::sleep(d).await;
        }
    }

    fn apply(&self, req: Request) -> Response {
        let mut map = self.map.lock().unwrap();
        let mut resp = Response::new();
        match req.cmd {
            Some(request::Cmd::Put(p)) => {
                if p.key.as_ref() == b"not-leader" {
                    let mut r = error_response(0, ErrorCode::NOT_LEADER, "not the leader");
                    r.mut_error().leader_id = 2;
                    r.mut_error().leader_addr = "127.0.0.1:7002".into();
                    return r;
                }
                self.writes_seen
                    .lock()
                    .unwrap()
                    .push((req.client_id, req.seq));
                map.insert(p.key, p.value);
                return ok_put();
            }
            Some(request::Cmd::Get(g)) => {
                let mut r = GetResult::new();
                if let Some(v) = map.get(&g.key) {
                    r.found = true;
                    r.value = v.clone();
                }
                resp.set_get(r);
            }
            Some(request::Cmd::Delete(d)) => {
                map.remove(&d.key);
                resp.set_delete(DeleteResult::new());
            }
            Some(request::Cmd::Cas(c)) => {
                let current = map.get(&c.key).cloned();
                let matches = match &current {
                    None => c.expect_absent,
                    Some(v) => !c.expect_absent && *v == c.expected,
                };
                if !matches {
                    let mut r = error_response(0, ErrorCode::COMPARE_FAILED, "compare failed");
                    if let Some(v) = current {
                        r.mut_error().current = v;
                        r.mut_error().current_present = true;
                    }
                    return r;
                }
                map.insert(c.key, c.new_value);
                resp.set_cas(CasResult::new());
            }
            Some(request::Cmd::Range(q)) => {
                let limit = if q.limit == 0 {
                    usize::MAX
                } else {
                    q.limit as usize
                };
                let mut r = RangeResult::new();
                for (k, v) in map.range(q.start.clone()..) {
                    if !q.end.is_empty() && *k >= q.end {
                        break;
                    }
                    if !k.starts_with(&q.prefix) {
                        continue;
                    }
                    if r.pairs.len() == limit {
                        r.more = true;
                        break;
                    }
                    let mut kv = KeyValue::new();
                    kv.key = k.clone();
                    if !q.keys_only {
                        kv.value = v.clone();
                    }
                    r.pairs.push(kv);
                }
                resp.set_range(r);
            }
            Some(request::Cmd::Batch(b)) => {
                for op in b.ops {
                    match op.op {
                        Some(batch_op::Op::Put(p)) => {
                            map.insert(p.key, p.value);
                        }
                        Some(batch_op::Op::Delete(d)) => {
                            map.remove(&d.key);
                        }
                        _ => {
                            return error_response(0, ErrorCode::INVALID_ARGUMENT, "empty op");
                        }
                    }
                }
                resp.set_batch(BatchResult::new());
            }
            Some(request::Cmd::Status(_)) => {
                let mut s = StatusResult::new();
                s.node_id = 1;
                s.role = Role::ROLE_LEADER.into();
                s.term = 3;
                s.leader_id = 1;
                s.commit_index = 42;
                s.applied_index = 41;
                s.leader_addr = "127.0.0.1:7001".into();
                resp.set_status(s);
            }
            _ => return error_response(0, ErrorCode::INVALID_ARGUMENT, "unknown command"),
        }
        resp
    }
}

impl Service for MemKv {
    async fn handle(&self, request: Request) -> Response {
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(now, Ordering::SeqCst);
        let id = request.id;
        self.delay(&request).await;
        let resp = self.apply(request);
        self.completed.lock().unwrap().push(id);
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        resp
    }

    fn local_node_id(&self) -> u64 {
        2
    }

    async fn peer_hello(&self, hello: Hello) -> Result<(), String> {
        if hello.cluster_id != TEST_CLUSTER {
            return Err("another cluster".into());
        }
        if !(1..=3).contains(&hello.node_id) {
            return Err("not a member".into());
        }
        Ok(())
    }

    async fn peer_message(&self, peer: u64, message: PeerMessage) -> Result<(), String> {
        assert_eq!(peer, message.from, "kv-net checks the sender");
        if message
            .raft_messages
            .iter()
            .any(|m| m.as_ref() == b"refuse")
        {
            return Err("refused".into());
        }
        if let Some(tx) = &self.peer_tx {
            let _ = tx.send(message);
        }
        Ok(())
    }

    async fn snapshot_chunk(
        &self,
        peer: u64,
        chunk: SnapshotChunk,
    ) -> Result<Option<SnapshotChunk>, String> {
        assert_eq!(peer, chunk.from, "kv-net checks the sender");
        if self.refuse_snapshots {
            return Err("no thanks".into());
        }
        let reply = if chunk.offer {
            Some(kv_net::snapshot::offer_answer(
                &chunk,
                self.snapshot_resume_at,
            ))
        } else {
            chunk.last.then(|| kv_net::snapshot::snapshot_ack(&chunk))
        };
        if let Some(tx) = &self.chunk_tx {
            let _ = tx.send(chunk);
        }
        Ok(reply)
    }
}

/// A running server; stopped (gracefully) by [`Server::stop`], aborted on drop.
pub struct Server {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    pub async fn start<S: Service>(service: Arc<S>, options: Options) -> Server {
        Self::start_at("127.0.0.1:0", service, options).await
    }

    pub async fn start_at<S: Service>(addr: &str, service: Arc<S>, options: Options) -> Server {
        let listener = Listener::bind(addr, options).await.expect("bind");
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(listener.run(service, async move {
            let _ = stopped.await;
        }));
        Server {
            addr,
            stop: Some(stop),
            task,
        }
    }

    /// Signals shutdown and waits for `run` to return.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.task).await.expect("server task");
    }

    pub fn signal_stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    pub async fn join(mut self) {
        (&mut self.task).await.expect("server task");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Builders for requests.
pub fn put(key: &str, value: &str) -> Request {
    let mut p = proto::Put::new();
    p.key = Bytes::copy_from_slice(key.as_bytes());
    p.value = Bytes::copy_from_slice(value.as_bytes());
    let mut r = Request::new();
    r.set_put(p);
    r
}

pub fn get(key: &str) -> Request {
    let mut g = proto::Get::new();
    g.key = Bytes::copy_from_slice(key.as_bytes());
    let mut r = Request::new();
    r.set_get(g);
    r
}

pub fn get_value(resp: &Response) -> Option<Bytes> {
    assert!(resp.has_get(), "not a get result: {resp:?}");
    resp.get().found.then(|| resp.get().value.clone())
}
