//! `kv-client`: the async FlashKV client.
//!
//! A [`Client`] talks to a cluster through a list of endpoints. It finds the
//! leader by itself (following the servers' not-leader hints, a bounded
//! number of times, then trying the endpoints in turn), keeps one pipelined
//! [`kv_net::ClientConn`] per node, and retries where that is safe:
//!
//! - reads (`get`, `range`) are always retried;
//! - writes carry the client's id and a request number, which the server
//!   uses to apply a write at most once; a write is therefore retried (with
//!   the same number) even after an attempt whose outcome is unknown. Without
//!   de-duplication ([`Options::dedup`] off) only attempts that certainly
//!   did not apply are retried.
//!
//! A node that is over its write budget refuses (`UNAVAILABLE`, nothing
//! applied); such refusals are retried with jittered backoff only while
//! the client's retry budget lasts (`retry` module), so that a cluster
//! under overload is not flooded with retries. Each attempt tells the node
//! how long the client still waits, and the node answers within it.
//!
//! Every failure says whether the operation was certainly not applied
//! ([`Error::is_definite`]) or may have been. [`Options::timeout`] bounds a
//! whole operation: discovery, connects and retries included.
//!
//! ```no_run
//! # async fn demo() -> kv_client::Result<()> {
//! let client = kv_client::Client::new(vec!["127.0.0.1:7001".into()], Default::default());
//! client.put("user:1", "Jane").await?;
//! assert_eq!(client.get("user:1").await?.as_deref(), Some(&b"Jane"[..]));
//! # Ok(()) }
//! ```
#![deny(unsafe_code)]
#![warn(missing_docs)]

mod admin;
mod error;
mod execute;
mod retry;
mod search;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use kv_net::ClientConn;
pub use kv_net::ClientTls;
use kv_net::proto::{self, ErrorCode, Request, Response, batch_op, response};
use parking_mutex::Mutex;
use tokio::sync::Semaphore;
use tokio::time::Instant;

pub use admin::{BackupHandle, MemberInfo, Membership};
pub use error::{Error, Result};
pub use search::SearchOptions;

/// Poison-free mutex over `std::sync::Mutex`.
mod parking_mutex {
    pub struct Mutex<T>(std::sync::Mutex<T>);
    impl<T> Mutex<T> {
        pub fn new(v: T) -> Self {
            Mutex(std::sync::Mutex::new(v))
        }
        pub fn lock(&self) -> std::sync::MutexGuard<'_, T> {
            self.0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        }
    }
    impl<T: std::fmt::Debug> std::fmt::Debug for Mutex<T> {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            self.lock().fmt(f)
        }
    }
}

/// Writes in flight per client; kept below the server's de-duplication
/// window (1024 request numbers per client).
const MAX_WRITES_IN_FLIGHT: usize = 512;

/// Client tunables. Start from [`Options::default`].
#[derive(Debug, Clone)]
pub struct Options {
    /// Bound on a whole operation (discovery and retries included).
    pub timeout: Duration,
    /// Reads may be served, possibly stale, by any node.
    pub serializable: bool,
    /// Let the server de-duplicate writes, so that writes can be retried
    /// after an unknown outcome.
    pub dedup: bool,
    /// Not-leader hints followed per operation before falling back to trying
    /// the endpoints in turn.
    pub max_hints: usize,
    /// First delay between attempts when no node could serve; doubles up to
    /// `max_backoff`.
    pub initial_backoff: Duration,
    /// Longest delay between attempts.
    pub max_backoff: Duration,
    /// Longest wait for a node's answer to one attempt (default 1 s). A
    /// node that has not answered by then (hung, paused, cut off by a
    /// partition that drops packets: its connection stays open) is left:
    /// the operation is tried at the other nodes, which know the new leader
    /// once one is elected. Only operations that may be retried move on:
    /// reads, and writes with [`Options::dedup`]; a write without it
    /// fails with an unknown outcome. Raise it for requests a healthy node
    /// may take longer to answer (very large batches or ranges).
    pub attempt_timeout: Duration,
    /// Sent with every request to a node that checks tokens (`kvd
    /// --auth-file`); its role decides what this client may do.
    pub token: Option<String>,
    /// Connection options.
    pub net: kv_net::Options,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            timeout: Duration::from_secs(5),
            serializable: false,
            dedup: true,
            max_hints: 8,
            initial_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(250),
            attempt_timeout: Duration::from_secs(1),
            token: None,
            net: kv_net::Options {
                connect_timeout: Duration::from_secs(1),
                ..kv_net::Options::default()
            },
        }
    }
}

/// The result of a compare-and-swap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CasOutcome {
    /// The expectation held and the new value is set.
    Swapped,
    /// The expectation did not hold; nothing was written.
    Failed {
        /// The current value (`None`: the key is absent).
        current: Option<Bytes>,
    },
}

/// One operation of an atomic batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchOp {
    /// Set a key.
    Put(Bytes, Bytes),
    /// Remove a key.
    Delete(Bytes),
}

/// What to scan. Keys in `[start, end)` (an empty `end`: unbounded) that
/// begin with `prefix`, ascending, at most `limit` of them (0: all).
#[derive(Debug, Clone, Default)]
pub struct RangeQuery {
    /// Inclusive lower bound.
    pub start: Bytes,
    /// Exclusive upper bound; empty means none.
    pub end: Bytes,
    /// Only keys with this prefix.
    pub prefix: Bytes,
    /// Most pairs returned; 0 means all.
    pub limit: usize,
    /// Return keys with empty values.
    pub keys_only: bool,
}

/// A node's view of the cluster, from [`Client::status`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeStatus {
    /// The node's raft id.
    pub id: u64,
    /// `leader`, `follower`, `candidate`, `pre-candidate`, `learner` or
    /// `unknown`.
    pub role: &'static str,
    /// Current term.
    pub term: u64,
    /// The leader's id, 0 when unknown.
    pub leader_id: u64,
    /// Highest committed index.
    pub commit_index: u64,
    /// Highest applied index.
    pub applied_index: u64,
    /// The leader's advertise address, empty when unknown.
    pub leader_addr: String,
}

/// A FlashKV client. Cheap to clone; clones share connections and the
/// request numbering.
#[derive(Debug, Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    endpoints: Vec<String>,
    opts: Options,
    client_id: u64,
    next_seq: AtomicU64,
    conns: Mutex<HashMap<String, ClientConn>>,
    leader: Mutex<Option<String>>,
    next_endpoint: AtomicU64,
    write_slots: Semaphore,
    retry: retry::RetryThrottle,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Read,
    Write,
}

fn write_request(cmd: proto::request::Cmd) -> Request {
    let mut r = Request::new();
    r.cmd = Some(cmd);
    r
}

impl Client {
    /// A client for the cluster reachable at `endpoints` (`host:port`).
    /// Nothing is dialed before the first operation.
    #[must_use]
    pub fn new(endpoints: Vec<String>, opts: Options) -> Client {
        let client_id = loop {
            let id: u64 = rand::random();
            if id != 0 {
                break id;
            }
        };
        Client {
            inner: Arc::new(Inner {
                endpoints,
                opts,
                client_id,
                next_seq: AtomicU64::new(1),
                conns: Mutex::new(HashMap::new()),
                leader: Mutex::new(None),
                next_endpoint: AtomicU64::new(0),
                write_slots: Semaphore::new(MAX_WRITES_IN_FLIGHT),
                retry: retry::RetryThrottle::default(),
            }),
        }
    }

    /// The endpoints given at construction.
    #[must_use]
    pub fn endpoints(&self) -> &[String] {
        &self.inner.endpoints
    }

    /// This client's id for write de-duplication.
    #[must_use]
    pub fn client_id(&self) -> u64 {
        self.inner.client_id
    }

    /// Sets `key` to `value`.
    ///
    /// # Errors
    ///
    /// [`Error`]; see [`Error::is_definite`].
    pub async fn put(&self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Result<()> {
        let mut p = proto::Put::new();
        p.key = Bytes::copy_from_slice(key.as_ref());
        p.value = Bytes::copy_from_slice(value.as_ref());
        self.write(write_request(proto::request::Cmd::Put(p)))
            .await
            .map(drop)
    }

    /// Removes `key` (an absent key is fine).
    ///
    /// # Errors
    ///
    /// [`Error`]; see [`Error::is_definite`].
    pub async fn delete(&self, key: impl AsRef<[u8]>) -> Result<()> {
        let mut d = proto::Delete::new();
        d.key = Bytes::copy_from_slice(key.as_ref());
        self.write(write_request(proto::request::Cmd::Delete(d)))
            .await
            .map(drop)
    }

    /// Sets `key` to `new` if its value is `expected` (`None`: if absent).
    ///
    /// # Errors
    ///
    /// [`Error`]; a compare failure is [`CasOutcome::Failed`], not an error.
    pub async fn cas(
        &self,
        key: impl AsRef<[u8]>,
        expected: Option<&[u8]>,
        new: impl AsRef<[u8]>,
    ) -> Result<CasOutcome> {
        let mut c = proto::Cas::new();
        c.key = Bytes::copy_from_slice(key.as_ref());
        c.expect_absent = expected.is_none();
        c.expected = Bytes::copy_from_slice(expected.unwrap_or_default());
        c.new_value = Bytes::copy_from_slice(new.as_ref());
        let resp = self
            .write(write_request(proto::request::Cmd::Cas(c)))
            .await?;
        match resp.result {
            Some(response::Result::Error(e))
                if e.code.enum_value() == Ok(ErrorCode::COMPARE_FAILED) =>
            {
                Ok(CasOutcome::Failed {
                    current: e.current_present.then_some(e.current),
                })
            }
            _ => Ok(CasOutcome::Swapped),
        }
    }

    /// Applies `ops` atomically: all of them or none.
    ///
    /// # Errors
    ///
    /// [`Error`]; see [`Error::is_definite`].
    pub async fn batch(&self, ops: Vec<BatchOp>) -> Result<()> {
        let mut b = proto::Batch::new();
        for op in ops {
            let mut o = proto::BatchOp::new();
            o.op = Some(match op {
                BatchOp::Put(key, value) => {
                    let mut p = proto::Put::new();
                    p.key = key;
                    p.value = value;
                    batch_op::Op::Put(p)
                }
                BatchOp::Delete(key) => {
                    let mut d = proto::Delete::new();
                    d.key = key;
                    batch_op::Op::Delete(d)
                }
            });
            b.ops.push(o);
        }
        self.write(write_request(proto::request::Cmd::Batch(b)))
            .await
            .map(drop)
    }

    /// The value of `key`, `None` when absent. Linearizable unless
    /// [`Options::serializable`].
    ///
    /// # Errors
    ///
    /// [`Error`] (reads never change anything, so any failure is definite).
    pub async fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<Bytes>> {
        let mut g = proto::Get::new();
        g.key = Bytes::copy_from_slice(key.as_ref());
        g.serializable = self.inner.opts.serializable;
        let resp = self
            .execute(write_request(proto::request::Cmd::Get(g)), Kind::Read)
            .await?;
        match resp.result {
            Some(response::Result::Get(g)) if g.found => Ok(Some(g.value)),
            Some(response::Result::Get(_)) => Ok(None),
            _ => Err(unexpected()),
        }
    }

    /// The pairs of `query`, ascending, fetched page by page.
    ///
    /// # Errors
    ///
    /// [`Error`]. Pages are separate reads: a range larger than one page is
    /// not one atomic snapshot.
    pub async fn range(&self, query: &RangeQuery) -> Result<Vec<(Bytes, Bytes)>> {
        let mut out = Vec::new();
        let mut start = query.start.clone();
        loop {
            let mut q = proto::Range::new();
            q.start = start.clone();
            q.end = query.end.clone();
            q.prefix = query.prefix.clone();
            q.keys_only = query.keys_only;
            q.serializable = self.inner.opts.serializable;
            if query.limit > 0 {
                q.limit = u32::try_from(query.limit - out.len()).unwrap_or(u32::MAX);
            }
            let resp = self
                .execute(write_request(proto::request::Cmd::Range(q)), Kind::Read)
                .await?;
            let Some(response::Result::Range(r)) = resp.result else {
                return Err(unexpected());
            };
            let more = r.more;
            for kv in r.pairs {
                out.push((kv.key, kv.value));
            }
            if !more || (query.limit > 0 && out.len() >= query.limit) {
                out.truncate(if query.limit > 0 {
                    query.limit
                } else {
                    out.len()
                });
                return Ok(out);
            }
            let Some((last, _)) = out.last() else {
                return Ok(out);
            };
            let mut next = last.to_vec();
            next.push(0);
            start = next.into();
        }
    }

    /// The status of the node at `endpoint` (one attempt, bounded by the
    /// timeout).
    ///
    /// # Errors
    ///
    /// [`Error::Unavailable`] or [`Error::Timeout`] when it does not answer.
    pub async fn status(&self, endpoint: &str) -> Result<NodeStatus> {
        let deadline = Instant::now() + self.inner.opts.timeout;
        let req = self.stamped(write_request(proto::request::Cmd::Status(
            proto::Status::new(),
        )));
        let attempt = async {
            let conn = self.conn(endpoint).await?;
            conn.call(req).await.map_err(|e| {
                self.forget_conn(endpoint);
                Error::Unavailable {
                    message: e.to_string(),
                    definite: true,
                }
            })
        };
        let resp = tokio::time::timeout_at(deadline, attempt)
            .await
            .map_err(|_| Error::Timeout { definite: true })??;
        match resp.result {
            Some(response::Result::Status(s)) => Ok(NodeStatus {
                id: s.node_id,
                role: match s.role.enum_value_or_default() {
                    proto::Role::ROLE_LEADER => "leader",
                    proto::Role::ROLE_FOLLOWER => "follower",
                    proto::Role::ROLE_CANDIDATE => "candidate",
                    proto::Role::ROLE_PRE_CANDIDATE => "pre-candidate",
                    proto::Role::ROLE_LEARNER => "learner",
                    proto::Role::ROLE_UNKNOWN => "unknown",
                },
                term: s.term,
                leader_id: s.leader_id,
                commit_index: s.commit_index,
                applied_index: s.applied_index,
                leader_addr: s.leader_addr,
            }),
            Some(response::Result::Error(e)) => Err(refusal(e)),
            _ => Err(unexpected()),
        }
    }

    /// `req` with this client's token, if it has one.
    fn stamped(&self, mut req: Request) -> Request {
        if let Some(t) = &self.inner.opts.token {
            req.token.clone_from(t);
        }
        req
    }

    /// Sends a write with this client's id and a fresh request number.
    async fn write(&self, mut req: Request) -> Result<Response> {
        // The wait for a slot counts towards the operation's timeout; a
        // write that never got one was never sent.
        let deadline = Instant::now() + self.inner.opts.timeout;
        let _slot = tokio::time::timeout_at(deadline, self.inner.write_slots.acquire())
            .await
            .map_err(|_| Error::Timeout { definite: true })?
            .map_err(|_| unexpected())?;
        if self.inner.opts.dedup {
            req.client_id = self.inner.client_id;
            req.seq = self.inner.next_seq.fetch_add(1, Ordering::Relaxed);
        }
        self.execute_until(req, Kind::Write, deadline).await
    }

    fn leader_guess(&self) -> Option<String> {
        self.inner.leader.lock().clone()
    }

    fn set_leader(&self, addr: Option<String>) {
        *self.inner.leader.lock() = addr;
    }

    fn next_endpoint(&self) -> String {
        let n = self.inner.endpoints.len().max(1) as u64;
        let i = self.inner.next_endpoint.fetch_add(1, Ordering::Relaxed) % n;
        self.inner
            .endpoints
            .get(usize::try_from(i).unwrap_or(0))
            .cloned()
            .unwrap_or_default()
    }

    /// The next endpoint in turn that is not in `avoid` (any, when all
    /// are).
    fn next_endpoint_but(&self, avoid: &[String]) -> String {
        let n = self.inner.endpoints.len().max(1);
        let mut first = None;
        for _ in 0..n {
            let e = self.next_endpoint();
            if !avoid.contains(&e) {
                return e;
            }
            first.get_or_insert(e);
        }
        first.unwrap_or_default()
    }

    fn forget_conn(&self, addr: &str) {
        self.inner.conns.lock().remove(addr);
    }

    async fn conn(&self, addr: &str) -> Result<ClientConn> {
        if let Some(c) = self.inner.conns.lock().get(addr)
            && !c.is_closed()
        {
            return Ok(c.clone());
        }
        let conn = ClientConn::connect(addr, &self.inner.opts.net)
            .await
            .map_err(|e| Error::Unavailable {
                message: e.to_string(),
                definite: true,
            })?;
        self.inner
            .conns
            .lock()
            .insert(addr.to_owned(), conn.clone());
        Ok(conn)
    }
}

/// The error of a definite refusal that is not retried.
fn refusal(e: proto::Error) -> Error {
    if e.code.enum_value() == Ok(ErrorCode::PERMISSION_DENIED) {
        Error::PermissionDenied(e.message)
    } else {
        Error::Unavailable {
            message: e.message,
            definite: true,
        }
    }
}

fn unexpected() -> Error {
    Error::Server {
        message: "unexpected response".into(),
        definite: false,
    }
}
