//! [`Server`]: opens a node's data directory, starts raft and serves until
//! told to stop. The `kvd` binary and the tests both go through
//! [`Server::start`] + [`Server::run`] (or [`run`]).
//!
//! Data directory:
//!
//! ```text
//! <data-dir>/LOCK      held (flock) while a node runs on the directory
//! <data-dir>/members   the cluster's initial members and their peer addresses
//! <data-dir>/cluster-id  the cluster id of the peer handshake, fixed at
//!                      bootstrap (derived from the initial members)
//! <data-dir>/raft/     kv-raft's log store (the write-ahead log)
//! <data-dir>/kv/       the engine (see `store`)
//! <data-dir>/search/   the search index, with `--search` (see `search`)
//! ```

use std::collections::BTreeMap;
use std::fs::File;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use kv_engine::SyncMode;
use kv_net::{Listener, PeerIdentity};
use kv_raft::{Node, Role};

use crate::command::{Command, Op};
use crate::config::{Config, load_or_init, load_or_init_cluster_id, persist_cluster_id};
use crate::error::{Error, IoContext, Result};
use crate::join;
use crate::keys;
use crate::service::KvService;
use crate::state_machine::KvStateMachine;
use crate::store::Store;
use crate::transport::{HandleCell, PeerTransport};

/// How often the leader looks for learners to promote, and every node
/// for its own removal.
const MEMBERSHIP_CHECK_EVERY: Duration = Duration::from_millis(500);

/// How long a stopping node lets the search indexer apply what is queued
/// (a slower one is rebuilt at the next start).
const SEARCH_STOP_WITHIN: Duration = Duration::from_secs(5);

/// A started node, ready to serve.
#[derive(Debug)]
pub struct Server {
    config: Config,
    listener: Listener,
    local_addr: SocketAddr,
    /// The peer port's listener (`kvd --peer-listen`).
    peer_listener: Option<Listener>,
    node: Node,
    service: Arc<KvService>,
    store: Arc<Store>,
    members: BTreeMap<u64, String>,
    cluster_id: u64,
    metrics: crate::Metrics,
    search: Option<Arc<crate::search::Indexer>>,
    _lock: File,
}

/// Starts a node with `config` and serves until `shutdown` completes, then
/// stops gracefully.
///
/// # Errors
///
/// See [`Server::start`].
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<()> {
    Server::start(config).await?.run(shutdown).await
}

fn lock_data_dir(dir: &Path) -> Result<File> {
    let path = dir.join("LOCK");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .ctx(&path)?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(Error::Locked(dir.to_path_buf())),
        Err(std::fs::TryLockError::Error(e)) => Err(Error::io(path, e)),
    }
}

fn join_error(e: tokio::task::JoinError) -> Error {
    Error::io("<blocking task>", std::io::Error::other(e))
}

impl Server {
    /// Binds the listen address, locks and opens the data directory and
    /// starts the raft node. Nothing in the data directory is touched when
    /// the address cannot be bound or the directory is locked.
    ///
    /// # Errors
    ///
    /// [`Error::Config`], [`Error::Net`] (address unusable),
    /// [`Error::Locked`], corruption and I/O errors of the data directory.
    pub async fn start(config: Config) -> Result<Server> {
        config.validate()?;
        let (listener, peer_listener) = bind(&config).await?;
        let local_addr = listener.local_addr()?;
        let dir = config.data_dir.clone();
        std::fs::create_dir_all(&dir).ctx(&dir)?;
        let lock = lock_data_dir(&dir)?;
        let set_up = dir.join("members").exists();
        let engine_opts = kv_engine::Options {
            sync: SyncMode::Never,
            ..kv_engine::Options::default()
        };
        if let Some(file) = config.restore.clone().filter(|_| !set_up) {
            // Before the members file, whose presence marks the directory
            // as set up: an interrupted restore is redone on the next start.
            let (root, opts, scratch) =
                (dir.join("kv"), engine_opts.clone(), dir.join("restore-tmp"));
            let header = tokio::task::spawn_blocking(move || {
                let store = Store::open(root, opts)?;
                crate::backup::restore(&store, &file, &scratch)
            })
            .await
            .map_err(join_error)??;
            tracing::info!(
                index = header.index,
                keys = header.keys,
                "data directory restored from a snapshot file"
            );
        } else if set_up && config.restore.is_some() {
            tracing::info!("--restore ignored: the data directory already holds data");
        }
        let recorded = if !set_up && !config.join.is_empty() {
            let mut net = config.net.clone();
            net.client_tls.clone_from(&config.join_tls);
            let joined = join::fetch_membership(
                &config.join,
                config.id,
                &net,
                config.tokens.as_ref().and_then(|t| t.own_admin_token()),
                config.request_timeout * 6,
            )
            .await?;
            tracing::info!(members = ?joined.members, "joining a running cluster");
            persist_cluster_id(&dir, joined.cluster_id)?;
            load_or_init(&dir, &joined.members, true)?
        } else {
            if set_up && !config.join.is_empty() {
                tracing::info!("--join ignored: the data directory holds the cluster's membership");
            }
            load_or_init(&dir, &config.initial_members(), false)?
        };
        let members = recorded.peers.clone();
        if !recorded.fresh && !config.peers.is_empty() && config.peers != members {
            tracing::info!("--peers ignored: the data directory holds the cluster's membership");
        }
        if !members.contains_key(&config.id) {
            return Err(Error::Config(format!(
                "the data directory {} belongs to a cluster without node {}",
                dir.display(),
                config.id
            )));
        }
        let cluster_id = load_or_init_cluster_id(&dir, &members, config.cluster_token.as_deref())?;
        let store = {
            let root = dir.join("kv");
            let opts = engine_opts.clone();
            Arc::new(
                tokio::task::spawn_blocking(move || Store::open(root, opts))
                    .await
                    .map_err(join_error)??,
            )
        };
        let mut sm = KvStateMachine::open(store.clone())?;
        let search = if config.search {
            use kv_raft::StateMachine as _;
            let opts = crate::search::index_options(config.search_embedder)
                .map_err(|e| Error::Config(format!("search embedder: {e}")))?;
            let (indexer, feed) = crate::search::Indexer::start(
                dir.join("search"),
                store.clone(),
                sm.applied_index(),
                opts,
            )
            .map_err(|e| Error::io("<search indexer thread>", e))?;
            sm.set_search_feed(feed);
            tracing::info!(
                dir = %indexer.dir().display(),
                embedder = config.search_embedder.name(),
                "search over values is enabled"
            );
            Some(indexer)
        } else {
            None
        };
        let metrics = crate::Metrics::new();
        metrics.watch_store(store.clone());
        metrics.watch_listener(listener.counters());
        if let Some(l) = &peer_listener {
            metrics.watch_listener(l.counters());
        }
        let cell = HandleCell::default();
        let identity = PeerIdentity {
            cluster_id,
            node_id: config.id,
        };
        let mut peer_net = config.net.clone();
        peer_net.client_tls = config.peer_tls.as_ref().map(|t| t.client.clone());
        let transport = PeerTransport::start(
            identity,
            &members,
            &peer_net,
            cell.clone(),
            store.clone(),
            metrics.clone(),
        )?;
        // A node that joined starts with an empty log and waits for the
        // leader; only the members of a new cluster bootstrap it.
        let voters: Vec<u64> = if recorded.joined {
            Vec::new()
        } else {
            members.keys().copied().collect()
        };
        let node = {
            let mut opts = config.raft.clone();
            opts.observer = Some(metrics.raft_observer());
            let (id, raft_dir, voters) = (config.id, dir.join("raft"), voters.clone());
            tokio::task::spawn_blocking(move || {
                Node::start(id, raft_dir, &voters, opts, sm, transport)
            })
            .await
            .map_err(join_error)??
        };
        let handle = node.handle();
        let _ = cell.set(handle.clone());
        if voters == [config.id] {
            // A single node need not wait for an election timeout.
            drop(handle.campaign());
        }
        let mut service = KvService::new(
            &config,
            handle,
            store.clone(),
            members.clone(),
            cluster_id,
            metrics.clone(),
        );
        service.search.clone_from(&search);
        let service = Arc::new(service);
        let weak = Arc::downgrade(&service);
        metrics.watch_pending(move || weak.upgrade().map_or(0, |s| s.writes_pending()));
        match &config.net.server_tls {
            Some(t) => tracing::info!(tls = ?t, "clients are served over TLS"),
            None => tracing::warn!("clients are served in plaintext (no --cert-file)"),
        }
        match &config.tokens {
            Some(t) => tracing::info!(tokens = t.len(), "client requests need a token"),
            None => tracing::warn!(
                "client requests are not authenticated (no --auth-file): anyone who can reach \
                 this node can read and write"
            ),
        }
        if let Some(l) = &peer_listener {
            tracing::info!(peer_listen = %l.local_addr()?, "peers are served on a port of their own");
        }
        if config.peer_tls.is_some() {
            tracing::info!("peers must present a certificate of the peer CA (mutual TLS)");
        }
        if config.net.peer_secret.is_some() {
            tracing::info!("peers must prove the peer secret (challenge-response)");
        } else if config.peer_tls.is_none() {
            tracing::warn!(
                "peer traffic is unauthenticated (no --peer-* flags): a process that can reach \
                 this node and knows the cluster id can speak for a member"
            );
        }
        tracing::info!(
            id = config.id,
            listen = %local_addr,
            cluster_id = %format!("{cluster_id:016x}"),
            ?members,
            "node started"
        );
        Ok(Server {
            config,
            listener,
            local_addr,
            peer_listener,
            node,
            service,
            store,
            members,
            cluster_id,
            metrics,
            search,
            _lock: lock,
        })
    }

    /// The node's metrics (`/metrics` of the HTTP gateway).
    #[must_use]
    pub fn metrics(&self) -> crate::Metrics {
        self.metrics.clone()
    }

    /// The bound listen address.
    #[must_use]
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The bound peer address, when peers have a port of their own.
    #[must_use]
    pub fn peer_local_addr(&self) -> Option<SocketAddr> {
        self.peer_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    /// The cluster id of the peer handshake.
    #[must_use]
    pub fn cluster_id(&self) -> u64 {
        self.cluster_id
    }

    /// The cluster members and their peer addresses.
    #[must_use]
    pub fn members(&self) -> &BTreeMap<u64, String> {
        &self.members
    }

    /// Serves until `shutdown` completes; then hands leadership to the most
    /// up-to-date follower if this node leads (so that the cluster need not
    /// wait for an election timeout), stops accepting, lets in-flight
    /// requests finish (bounded by the network grace period), stops the raft
    /// node (its log is fsynced) and closes the engine.
    ///
    /// If the raft node stops by itself (its thread failed: a storage error,
    /// a panic in raft), the node cannot make progress safely: it logs why,
    /// stops serving the same way and returns the failure (SPEC section 3).
    ///
    /// # Errors
    ///
    /// The error that stopped the raft node, if it failed.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<()> {
        let publisher = tokio::spawn(publish_advertise(
            self.config.id,
            self.config.advertise_addr().to_owned(),
            self.node.handle(),
            self.store.clone(),
        ));
        let sweeper = tokio::spawn(expire_snapshots(
            Arc::downgrade(&self.service),
            self.config.snapshot_idle_timeout,
        ));
        let promoter = tokio::spawn(crate::membership::promote_caught_up(
            Arc::downgrade(&self.service),
            MEMBERSHIP_CHECK_EVERY,
        ));
        let handle = self.node.handle();
        let node = Arc::new(parking_lot::Mutex::new(Some(self.node)));
        let failed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let watched = node.clone();
        let flag = failed.clone();
        let removed =
            crate::membership::removed(Arc::downgrade(&self.service), MEMBERSHIP_CHECK_EVERY);
        let shutdown = async move {
            tokio::select! {
                () = shutdown => hand_over_leadership(&handle).await,
                () = raft_stopped(&watched) => {
                    flag.store(true, std::sync::atomic::Ordering::SeqCst);
                }
                () = removed => {}
            }
        };
        let peers = self.peer_listener.map(|l| {
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let task = tokio::spawn(l.run(self.service.clone(), async move {
                let _ = stopped.await;
            }));
            (stop, task)
        });
        self.listener.run(self.service.clone(), shutdown).await;
        if let Some((stop, task)) = peers {
            drop(stop);
            if let Err(e) = task.await {
                tracing::warn!(error = %e, "the peer listener failed");
            }
        }
        publisher.abort();
        sweeper.abort();
        promoter.abort();
        drop(self.service);
        let node = node.lock().take();
        let stopped = tokio::task::spawn_blocking(move || node.map_or(Ok(()), Node::shutdown))
            .await
            .map_err(join_error)?;
        let stopped = match stopped {
            Err(e) => {
                tracing::error!(error = %e, "raft node failed; the node stops");
                Err(e)
            }
            Ok(()) if failed.load(std::sync::atomic::Ordering::SeqCst) => {
                tracing::error!("raft node stopped by itself; the node stops");
                Err(kv_raft::Error::Stopped)
            }
            Ok(()) => Ok(()),
        };
        let (store, search) = (self.store, self.search);
        tokio::task::spawn_blocking(move || {
            // The raft thread has stopped: nothing more is fed.
            if let Some(indexer) = search {
                indexer.stop(SEARCH_STOP_WITHIN);
            }
            if let Err(e) = store.current().db().flush() {
                tracing::warn!(error = %e, "flush on shutdown failed");
            }
        })
        .await
        .map_err(join_error)?;
        tracing::info!(id = self.config.id, "node stopped");
        Ok(stopped?)
    }
}

/// Binds the client port and, with `peer_listen`, the peer port, each with
/// the options of what it serves. Both or neither.
async fn bind(config: &Config) -> Result<(Listener, Option<Listener>)> {
    let Some(peer_addr) = &config.peer_listen else {
        return Ok((
            Listener::bind(config.listen.as_str(), config.net.clone()).await?,
            None,
        ));
    };
    let mut clients = config.net.clone();
    clients.serves = kv_net::Serves::Clients;
    let mut peers = config.net.clone();
    peers.serves = kv_net::Serves::Peers;
    peers.server_tls = config.peer_tls.as_ref().map(|t| t.server.clone());
    let client_listener = Listener::bind(config.listen.as_str(), clients).await?;
    let peer_listener = Listener::bind(peer_addr.as_str(), peers).await?;
    Ok((client_listener, Some(peer_listener)))
}

/// Completes once the raft node's thread has ended.
async fn raft_stopped(node: &parking_lot::Mutex<Option<Node>>) {
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if !node.lock().as_ref().is_some_and(Node::is_running) {
            tracing::error!("the raft thread has stopped; shutting down");
            return;
        }
    }
}

/// Drops partial snapshot transfers that went quiet, also when no further
/// chunk arrives to sweep them.
async fn expire_snapshots(service: std::sync::Weak<KvService>, idle_timeout: Duration) {
    let every = (idle_timeout / 4).max(Duration::from_millis(100));
    loop {
        tokio::time::sleep(every).await;
        match service.upgrade() {
            Some(service) => service.expire_snapshots(),
            None => return,
        }
    }
}

/// If this node leads, transfers leadership to the follower with the
/// longest log and waits (bounded) for the transfer.
async fn hand_over_leadership(handle: &kv_raft::Handle) {
    let Ok(status) = handle.status().await else {
        return;
    };
    if status.role != Role::Leader {
        return;
    }
    let Some((&to, _)) = status
        .progress
        .iter()
        .filter(|(id, p)| **id != status.id && !p.learner)
        .max_by_key(|(_, p)| p.matched)
    else {
        return;
    };
    let started = std::time::Instant::now();
    match tokio::time::timeout(Duration::from_secs(1), handle.transfer_leadership(to)).await {
        Ok(Ok(())) => {
            tracing::info!(to, elapsed = ?started.elapsed(), "leadership handed over");
        }
        Ok(Err(e)) => tracing::warn!(to, error = %e, "leadership hand-over failed"),
        Err(_) => tracing::warn!(to, "leadership hand-over timed out"),
    }
}

/// While this node leads, makes sure the replicated state holds its
/// advertise address, so that followers can send clients here.
async fn publish_advertise(id: u64, addr: String, handle: kv_raft::Handle, store: Arc<Store>) {
    let mut published_term = 0;
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let Ok(status) = handle.status().await else {
            return;
        };
        if status.role != Role::Leader || status.term == published_term {
            continue;
        }
        let current = store
            .current()
            .db()
            .get(keys::advertise_key(id))
            .ok()
            .flatten();
        if current.as_deref() == Some(addr.as_bytes()) {
            published_term = status.term;
            continue;
        }
        let cmd = Command {
            client_id: 0,
            seq: 0,
            time_ms: crate::command::now_ms(),
            op: Op::SetAdvertise {
                node_id: id,
                addr: addr.clone(),
            },
        };
        if let Ok(Ok(_)) =
            tokio::time::timeout(Duration::from_secs(5), handle.propose(cmd.encode())).await
        {
            published_term = status.term;
        }
    }
}
