//! [`KvService`]: answers client requests and takes peer traffic.
//!
//! Writes become raft proposals (the driver batches concurrent ones into one
//! `Ready` and one fsync); reads are linearizable through ReadIndex unless
//! the request asks for a serializable local read. Every error says whether
//! the write may have been applied (`outcome_unknown`).
//!
//! Peer traffic: kv-net hands raft messages and snapshot chunks only from
//! connections whose handshake [`KvService`] accepted (this cluster's id, a
//! current member other than this node). Each raft message must then come
//! from that member and be addressed to this node; a batch with one bad
//! message is refused whole, which closes its connection.

// Handlers return `Result<Response, Response>`: both sides are the answer,
// and `?` keeps the early error exits readable.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::time::Instant as TokioInstant;

use bytes::Bytes;
use kv_net::Service;
use kv_net::proto::{
    self, BatchResult, CasResult, DeleteResult, ErrorCode, GetResult, Hello, KeyValue, PeerMessage,
    PutResult, RangeResult, Request, Response, SnapshotChunk, StatusResult, batch_op, request,
};
use kv_net::server::error_response;
use kv_raft::raft::eraftpb::MessageType;
use kv_raft::{Handle, Role};

use crate::command::{BatchOp, Command, Op, Outcome};
use crate::keys;
use crate::proposer::{ProposeError, Proposer};
use crate::snapshot::Receiver;
use crate::state_machine::get_user;
use crate::store::Store;
use crate::transport::{check_peer_message, decode_message};

/// The node's request handler, shared by all connections.
#[derive(Debug)]
pub struct KvService {
    id: u64,
    handle: Handle,
    store: Arc<Store>,
    advertise: String,
    /// Peers have ports of their own (`--peer-listen`): a peer address is
    /// no place to send a client.
    peer_ports: bool,
    peers: BTreeMap<u64, String>,
    cluster_id: u64,
    request_timeout: Duration,
    max_page: u32,
    max_page_bytes: usize,
    snapshots: Arc<Receiver>,
    pub(crate) backups: Arc<crate::backup::Backups>,
    proposer: Proposer,
    tokens: Option<crate::auth::Tokens>,
    metrics: crate::Metrics,
    /// The search index (`kvd --search`).
    pub(crate) search: Option<Arc<crate::search::Indexer>>,
}

/// What a failed raft call means for the client.
fn raft_error(svc: &KvService, e: &kv_raft::Error, write: bool) -> Response {
    match e {
        kv_raft::Error::NotLeader { leader } => svc.not_leader(*leader),
        kv_raft::Error::Timeout => timeout_response(write),
        e if e.is_definite() || !write => {
            error_response(0, ErrorCode::UNAVAILABLE, format!("not applied: {e}"))
        }
        e => {
            let mut r = error_response(0, ErrorCode::INTERNAL, e.to_string());
            r.mut_error().outcome_unknown = true;
            r
        }
    }
}

fn timeout_response(write: bool) -> Response {
    let mut r = error_response(0, ErrorCode::TIMEOUT, "timed out");
    r.mut_error().outcome_unknown = write;
    r
}

fn invalid(message: impl Into<String>) -> Response {
    error_response(0, ErrorCode::INVALID_ARGUMENT, message)
}

fn internal(message: impl Into<String>) -> Response {
    error_response(0, ErrorCode::INTERNAL, message)
}

fn check_key(key: &Bytes) -> Result<(), Response> {
    if key.is_empty() {
        Err(invalid("empty key"))
    } else {
        Ok(())
    }
}

/// The configured write limits, with entries small enough for a peer frame.
fn write_limits(config: &crate::Config) -> crate::proposer::WriteLimits {
    let room = config
        .net
        .max_frame_length
        .saturating_sub(crate::proposer::ENTRY_FRAME_OVERHEAD)
        .max(1);
    crate::proposer::WriteLimits {
        max_entry_bytes: config.writes.max_entry_bytes.clamp(1, room),
        ..config.writes.clone()
    }
}

impl KvService {
    /// A service for node `id` over its raft `handle` and `store`. Must be
    /// called within a tokio runtime.
    #[must_use]
    pub fn new(
        config: &crate::Config,
        handle: Handle,
        store: Arc<Store>,
        peers: BTreeMap<u64, String>,
        cluster_id: u64,
        metrics: crate::Metrics,
    ) -> KvService {
        let snapshots = Arc::new(Receiver::new(
            store.snapshots().clone(),
            config.snapshot_idle_timeout,
        ));
        let backups = Arc::new(crate::backup::Backups::new(store.snapshots().clone()));
        KvService {
            backups,
            id: config.id,
            handle: handle.clone(),
            store,
            advertise: config.advertise_addr().to_owned(),
            peer_ports: config.peer_listen.is_some(),
            peers,
            cluster_id,
            request_timeout: config.request_timeout,
            max_page: config.max_range_page,
            max_page_bytes: config.net.max_frame_length / 2,
            snapshots,
            proposer: Proposer::start(handle.clone(), write_limits(config)),
            tokens: config.tokens.clone(),
            metrics,
            search: None,
        }
    }

    /// Client writes admitted and not yet answered.
    pub(crate) fn writes_pending(&self) -> usize {
        self.proposer.pending()
    }

    /// The advertise address of node `id`: as the node published it in the
    /// replicated state, else (not yet published) its peer address when
    /// peers share the client port, else nothing.
    #[must_use]
    pub fn advertise_of(&self, id: u64) -> String {
        if id == self.id {
            return self.advertise.clone();
        }
        let published = self
            .store
            .current()
            .db()
            .get(keys::advertise_key(id))
            .ok()
            .flatten()
            .and_then(|v| String::from_utf8(v.to_vec()).ok());
        published
            .or_else(|| self.peers.get(&id).filter(|_| !self.peer_ports).cloned())
            .unwrap_or_default()
    }

    /// Drops snapshot transfers that received nothing for the idle timeout.
    pub fn expire_snapshots(&self) {
        self.snapshots.expire(Instant::now());
        self.backups.expire(Instant::now());
    }

    /// Whether `id` belongs to the cluster now: raft's current
    /// configuration, or, while raft has none yet, the initial members.
    async fn is_member(&self, id: u64) -> bool {
        match tokio::time::timeout(self.request_timeout, self.handle.status()).await {
            Ok(Ok(s)) if s.voters.is_empty() && s.learners.is_empty() => {
                self.peers.contains_key(&id)
            }
            Ok(Ok(s)) => s.voters.contains(&id) || s.learners.contains(&id),
            _ => false,
        }
    }

    /// This node's id.
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// The raft handle.
    pub(crate) fn handle(&self) -> &Handle {
        &self.handle
    }

    /// The engine store.
    pub(crate) fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// The initial members and their peer addresses (the `members` file).
    pub(crate) fn peers(&self) -> &BTreeMap<u64, String> {
        &self.peers
    }

    /// The cluster id of the peer handshake.
    pub(crate) fn cluster_id(&self) -> u64 {
        self.cluster_id
    }

    /// What a failed raft call on a write means for the client.
    pub(crate) fn raft_failure(&self, e: &kv_raft::Error) -> Response {
        raft_error(self, e, true)
    }

    pub(crate) fn not_leader(&self, leader: Option<u64>) -> Response {
        let mut r = match leader {
            Some(l) if l != 0 && l != self.id => error_response(
                0,
                ErrorCode::NOT_LEADER,
                format!("not leader; leader is {l}"),
            ),
            _ => error_response(0, ErrorCode::NOT_LEADER, "not leader; no leader known"),
        };
        if let Some(l) = leader.filter(|&l| l != 0 && l != self.id) {
            r.mut_error().leader_id = l;
            r.mut_error().leader_addr = self.advertise_of(l);
        }
        r
    }

    /// When the answer to `request` is due: within the client's time
    /// (`timeout_ms`, at most this node's request timeout), less a margin
    /// for the answer's way back, so that the client hears how the request
    /// ended rather than timing out itself.
    ///
    /// The time the request spent on its way here (in the client's queue,
    /// in socket buffers, waiting to be read) counts too when the client
    /// gave its deadline by the clock (`deadline_unix_ms`).
    fn deadline_of(&self, request: &Request) -> TokioInstant {
        let mut budget = match request.timeout_ms {
            0 => self.request_timeout,
            ms => Duration::from_millis(u64::from(ms)).min(self.request_timeout),
        };
        if request.deadline_unix_ms != 0 {
            let left = request
                .deadline_unix_ms
                .saturating_sub(crate::command::now_ms());
            budget = budget.min(Duration::from_millis(left));
        }
        let margin = (budget / 10).clamp(Duration::from_millis(20), Duration::from_millis(500));
        TokioInstant::now() + budget.saturating_sub(margin)
    }

    async fn write(
        &self,
        client_id: u64,
        seq: u64,
        op: Op,
        deadline: TokioInstant,
    ) -> Result<(), Response> {
        let cmd = Command {
            client_id,
            seq,
            time_ms: crate::command::now_ms(),
            op,
        };
        if deadline <= TokioInstant::now() {
            return Err(error_response(
                0,
                ErrorCode::UNAVAILABLE,
                "not applied: the client's deadline passed before the write could be proposed",
            ));
        }
        let submitted = self.proposer.submit(cmd, deadline);
        let outcome = match tokio::time::timeout_at(deadline, submitted).await {
            Err(_) => return Err(timeout_response(true)),
            Ok(Err(ProposeError::NotLeader(leader))) => return Err(self.not_leader(leader)),
            Ok(Err(ProposeError::Overloaded(m))) => {
                return Err(error_response(
                    0,
                    ErrorCode::UNAVAILABLE,
                    format!("not applied: {m}"),
                ));
            }
            Ok(Err(ProposeError::Invalid(m))) => return Err(invalid(m)),
            Ok(Err(ProposeError::Definite(m))) => {
                return Err(error_response(
                    0,
                    ErrorCode::UNAVAILABLE,
                    format!("not applied: {m}"),
                ));
            }
            Ok(Err(ProposeError::Unknown(m))) => {
                let mut r = internal(format!("outcome unknown: {m}"));
                r.mut_error().outcome_unknown = true;
                return Err(r);
            }
            Ok(Ok(outcome)) => outcome,
        };
        match outcome {
            Outcome::Ok => Ok(()),
            Outcome::CompareFailed { current } => {
                let mut r = error_response(0, ErrorCode::COMPARE_FAILED, "compare failed");
                if let Some(v) = current {
                    r.mut_error().current = v;
                    r.mut_error().current_present = true;
                }
                Err(r)
            }
            Outcome::Stale => {
                let mut r = internal(
                    "retried request is older than the de-duplication window; \
                     an earlier attempt may have been applied",
                );
                r.mut_error().outcome_unknown = true;
                Err(r)
            }
            Outcome::Invalid(m) => Err(invalid(m)),
            Outcome::Multi(_) => {
                let mut r = internal("unexpected group outcome");
                r.mut_error().outcome_unknown = true;
                Err(r)
            }
        }
    }

    /// Waits until a linearizable read may be served locally; returns its
    /// read index (0 for a serializable read).
    pub(crate) async fn read_barrier(
        &self,
        serializable: bool,
        deadline: TokioInstant,
    ) -> Result<u64, Response> {
        if serializable {
            return Ok(0);
        }
        match tokio::time::timeout_at(deadline, self.handle.read_index()).await {
            Err(_) => Err(timeout_response(false)),
            Ok(Err(e)) => Err(raft_error(self, &e, false)),
            Ok(Ok(index)) => Ok(index),
        }
    }

    async fn get(&self, g: proto::Get, deadline: TokioInstant) -> Result<Response, Response> {
        check_key(&g.key)?;
        self.read_barrier(g.serializable, deadline).await?;
        let value =
            get_user(self.store.current().db(), &g.key).map_err(|e| internal(e.to_string()))?;
        let mut r = GetResult::new();
        if let Some(v) = value {
            r.found = true;
            r.value = v;
        }
        let mut resp = Response::new();
        resp.set_get(r);
        Ok(resp)
    }

    async fn range(&self, q: proto::Range, deadline: TokioInstant) -> Result<Response, Response> {
        self.read_barrier(q.serializable, deadline).await?;
        let mut lower = keys::user_key(&q.start);
        let prefixed = keys::user_key(&q.prefix);
        if prefixed > lower {
            lower = prefixed.clone();
        }
        let mut upper = keys::prefix_end(&prefixed).unwrap_or_else(keys::user_end);
        if !q.end.is_empty() {
            upper = upper.min(keys::user_key(&q.end));
        }
        let limit = if q.limit == 0 {
            self.max_page
        } else {
            q.limit.min(self.max_page)
        } as usize;
        let mut result = RangeResult::new();
        if lower < upper {
            let generation = self.store.current();
            let mut bytes = 0usize;
            let iter = generation
                .db()
                .scan(lower.as_slice()..upper.as_slice())
                .map_err(|e| internal(e.to_string()))?;
            for item in iter {
                let (k, rec) = item.map_err(|e| internal(e.to_string()))?;
                if result.pairs.len() == limit || bytes > self.max_page_bytes {
                    result.more = true;
                    break;
                }
                let mut kv = KeyValue::new();
                kv.key = keys::strip_user(&k);
                if !q.keys_only {
                    kv.value = keys::decode_value(&rec).map_err(internal)?;
                }
                bytes += kv.key.len() + kv.value.len() + 8;
                result.pairs.push(kv);
            }
        }
        let mut resp = Response::new();
        resp.set_range(result);
        Ok(resp)
    }

    async fn status(&self) -> Result<Response, Response> {
        let s = self
            .handle
            .status()
            .await
            .map_err(|e| error_response(0, ErrorCode::UNAVAILABLE, e.to_string()))?;
        let mut r = StatusResult::new();
        r.node_id = s.id;
        r.role = match s.role {
            Role::Leader => proto::Role::ROLE_LEADER,
            Role::Candidate => proto::Role::ROLE_CANDIDATE,
            Role::PreCandidate => proto::Role::ROLE_PRE_CANDIDATE,
            Role::Follower if s.learners.contains(&s.id) => proto::Role::ROLE_LEARNER,
            Role::Follower => proto::Role::ROLE_FOLLOWER,
            _ => proto::Role::ROLE_UNKNOWN,
        }
        .into();
        r.term = s.term;
        r.leader_id = s.leader_id.unwrap_or(0);
        r.commit_index = s.commit;
        r.applied_index = s.applied;
        if r.leader_id != 0 {
            r.leader_addr = self.advertise_of(r.leader_id);
        }
        let mut resp = Response::new();
        resp.set_status(r);
        Ok(resp)
    }

    async fn serve(&self, request: Request) -> Result<Response, Response> {
        if let (Some(tokens), Some(cmd)) = (&self.tokens, &request.cmd) {
            tokens.check(&request.token, cmd).map_err(|why| {
                error_response(
                    0,
                    ErrorCode::PERMISSION_DENIED,
                    format!("{why}; nothing was applied"),
                )
            })?;
        }
        let (client_id, seq) = (request.client_id, request.seq);
        let deadline = self.deadline_of(&request);
        let mut resp = Response::new();
        match request.cmd {
            Some(request::Cmd::Put(p)) => {
                check_key(&p.key)?;
                self.write(
                    client_id,
                    seq,
                    Op::Put {
                        key: p.key,
                        value: p.value,
                    },
                    deadline,
                )
                .await?;
                resp.set_put(PutResult::new());
            }
            Some(request::Cmd::Delete(d)) => {
                check_key(&d.key)?;
                self.write(client_id, seq, Op::Delete { key: d.key }, deadline)
                    .await?;
                resp.set_delete(DeleteResult::new());
            }
            Some(request::Cmd::Cas(c)) => {
                check_key(&c.key)?;
                let op = Op::Cas {
                    key: c.key,
                    expected: (!c.expect_absent).then_some(c.expected),
                    new: c.new_value,
                };
                self.write(client_id, seq, op, deadline).await?;
                resp.set_cas(CasResult::new());
            }
            Some(request::Cmd::Batch(b)) => {
                let mut ops = Vec::with_capacity(b.ops.len());
                for op in b.ops {
                    ops.push(match op.op {
                        Some(batch_op::Op::Put(p)) => {
                            check_key(&p.key)?;
                            BatchOp::Put {
                                key: p.key,
                                value: p.value,
                            }
                        }
                        Some(batch_op::Op::Delete(d)) => {
                            check_key(&d.key)?;
                            BatchOp::Delete { key: d.key }
                        }
                        _ => return Err(invalid("batch operation without a kind")),
                    });
                }
                self.write(client_id, seq, Op::Batch(ops), deadline).await?;
                resp.set_batch(BatchResult::new());
            }
            Some(request::Cmd::Get(g)) => return self.get(g, deadline).await,
            Some(request::Cmd::Range(q)) => return self.range(q, deadline).await,
            Some(request::Cmd::Status(_)) => return self.status().await,
            Some(cmd @ (request::Cmd::Search(_) | request::Cmd::Similar(_))) => {
                return self.search_request(cmd, deadline).await;
            }
            Some(
                cmd @ (request::Cmd::MemberList(_)
                | request::Cmd::MemberAdd(_)
                | request::Cmd::MemberPromote(_)
                | request::Cmd::MemberRemove(_)
                | request::Cmd::LeaderTransfer(_)),
            ) => {
                let list = matches!(cmd, request::Cmd::MemberList(_));
                return tokio::time::timeout(self.request_timeout, self.admin(cmd))
                    .await
                    .map_err(|_| timeout_response(!list));
            }
            Some(
                cmd @ (request::Cmd::SnapshotSave(_)
                | request::Cmd::SnapshotRead(_)
                | request::Cmd::SnapshotRelease(_)),
            ) => return self.backup_request(cmd, deadline).await,
            _ => return Err(invalid("unknown command")),
        }
        Ok(resp)
    }
}

impl Service for KvService {
    fn local_node_id(&self) -> u64 {
        self.id
    }

    async fn handle(&self, request: Request) -> Response {
        let started = std::time::Instant::now();
        let op = crate::metrics::op_name(request.cmd.as_ref());
        let response = self.serve(request).await.unwrap_or_else(|e| e);
        let (result, took) = (crate::metrics::result_name(&response), started.elapsed());
        self.metrics.request(op, result, took);
        if took >= SLOW_REQUEST {
            tracing::warn!(op, result, took_ms = took.as_millis(), "slow request");
        }
        response
    }

    async fn peer_hello(&self, hello: Hello) -> Result<(), String> {
        if hello.cluster_id != self.cluster_id {
            return Err(format!(
                "cluster id {:016x}, this node belongs to {:016x}",
                hello.cluster_id, self.cluster_id
            ));
        }
        let peer = hello.node_id;
        if peer == self.id {
            return Err("the node id is this node's own".into());
        }
        if !self.is_member(peer).await {
            return Err("not a member of the cluster".into());
        }
        Ok(())
    }

    async fn peer_message(&self, peer: u64, message: PeerMessage) -> Result<(), String> {
        if message.to != self.id {
            return Err(format!(
                "addressed to node {}, this is {}",
                message.to, self.id
            ));
        }
        // Every message is checked before any is stepped: a refused batch
        // changes nothing.
        let mut msgs = Vec::with_capacity(message.raft_messages.len());
        for raw in &message.raft_messages {
            let m = decode_message(raw)?;
            check_peer_message(&m, peer, self.id)?;
            if m.get_msg_type() == MessageType::MsgSnapshot {
                return Err("a snapshot outside snapshot chunks".into());
            }
            msgs.push(m);
        }
        for m in msgs {
            match self.handle.step(m) {
                // Dropped, as a lossy network would: raft sends again.
                Ok(()) | Err(kv_raft::Error::Overloaded) => {}
                Err(e) => return Err(format!("cannot step: {e}")),
            }
        }
        Ok(())
    }

    fn peer_disconnected(&self, peer: u64) {
        let Some(addr) = crate::membership::peer_addr(self.store.current().db(), &self.peers, peer)
        else {
            return;
        };
        crate::liveness::probe(self.handle.clone(), peer, addr);
    }

    async fn snapshot_chunk(
        &self,
        peer: u64,
        chunk: SnapshotChunk,
    ) -> Result<Option<SnapshotChunk>, String> {
        if chunk.to != self.id {
            return Err(format!(
                "snapshot for node {}, this is {}",
                chunk.to, self.id
            ));
        }
        let (receiver, this) = (self.snapshots.clone(), self.id);
        // Disk writes and fsyncs: off the runtime's worker threads.
        tokio::task::spawn_blocking(move || {
            if chunk.offer {
                let at = receiver.offer(peer, this, &chunk)?;
                return Ok((None, Some(kv_net::snapshot::offer_answer(&chunk, at))));
            }
            let msg = receiver.chunk(peer, &chunk)?;
            Ok((msg, msg_ack(&chunk)))
        })
        .await
        .map_err(|e| format!("snapshot receive task failed: {e}"))?
        .and_then(
            |(msg, reply): (Option<kv_raft::raft::eraftpb::Message>, _)| {
                if let Some(msg) = msg {
                    check_peer_message(&msg, peer, self.id)?;
                    self.handle
                        .step(msg)
                        .map_err(|e| format!("cannot step snapshot: {e}"))?;
                }
                Ok(reply)
            },
        )
    }
}

/// Requests that take longer are logged (with their command and result).
const SLOW_REQUEST: Duration = Duration::from_secs(1);

/// The acknowledgement owed for a data chunk: only the last one gets one.
fn msg_ack(chunk: &SnapshotChunk) -> Option<SnapshotChunk> {
    chunk.last.then(|| kv_net::snapshot::snapshot_ack(chunk))
}
