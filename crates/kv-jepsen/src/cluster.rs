//! `kvd` processes on loopback, each peer link through its own proxy.
//!
//! Node *i* reaches node *j* at the address of proxy (*i*, *j*), which
//! forwards to *j*'s listen address; clients talk to the nodes directly. A
//! link can be open, stalled (bytes held, as a network that drops packets
//! holds a TCP connection until it heals) or cut (connections reset, new
//! ones refused). Every process started is stopped by PID: on
//! [`Cluster::shutdown`] or on drop.

use std::net::TcpListener as StdListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kv_client::{Client, NodeStatus, Options};
use rustix::process::{Pid, Signal, kill_process};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::Error;

/// The state of one directed peer link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    /// Bytes flow.
    Open,
    /// Connections stay up but no byte moves until the link opens again.
    Stalled,
    /// Open connections are closed and new ones refused.
    Cut,
}

/// A TCP proxy in front of one node, for one peer's traffic to it.
#[derive(Debug)]
pub struct Proxy {
    /// Where the proxy listens.
    pub addr: String,
    state: watch::Sender<Link>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// A proxy on a free loopback port forwarding to `target`.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] when no port can be bound.
    pub async fn start(target: String) -> Result<Proxy, Error> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|source| io("binding a proxy", source))?;
        let addr = listener
            .local_addr()
            .map_err(|source| io("proxy address", source))?
            .to_string();
        let (state, watcher) = watch::channel(Link::Open);
        let task = tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    return;
                };
                if *watcher.borrow() == Link::Cut {
                    continue;
                }
                let watcher = watcher.clone();
                let target = target.clone();
                tokio::spawn(async move {
                    let Ok(outbound) = TcpStream::connect(&target).await else {
                        return;
                    };
                    let _ = inbound.set_nodelay(true);
                    let _ = outbound.set_nodelay(true);
                    let (ir, iw) = inbound.into_split();
                    let (or, ow) = outbound.into_split();
                    tokio::join!(pump(ir, ow, watcher.clone()), pump(or, iw, watcher));
                });
            }
        });
        Ok(Proxy { addr, state, task })
    }

    /// Sets the link's state; a cut closes open connections at once.
    pub fn set(&self, link: Link) {
        self.state.send_replace(link);
    }

    /// The link's state.
    #[must_use]
    pub fn get(&self) -> Link {
        *self.state.borrow()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        // Connection tasks end when they see the sender gone.
    }
}

/// Copies `from` to `to` while the link is open; holds bytes while it is
/// stalled; ends when it is cut or either side closes.
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut link: watch::Receiver<Link>) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if !wait_open(&mut link).await {
            return;
        }
        let n = tokio::select! {
            r = from.read(&mut buf) => match r {
                Ok(0) | Err(_) => {
                    let _ = to.shutdown().await;
                    return;
                }
                Ok(n) => n,
            },
            () = wait_cut(&mut link) => return,
        };
        if !wait_open(&mut link).await {
            return;
        }
        tokio::select! {
            r = to.write_all(&buf[..n]) => if r.is_err() { return },
            () = wait_cut(&mut link) => return,
        }
    }
}

/// Waits until the link is open (true) or cut or gone (false).
async fn wait_open(link: &mut watch::Receiver<Link>) -> bool {
    loop {
        match *link.borrow_and_update() {
            Link::Open => return true,
            Link::Cut => return false,
            Link::Stalled => {}
        }
        if link.changed().await.is_err() {
            return false;
        }
    }
}

async fn wait_cut(link: &mut watch::Receiver<Link>) {
    loop {
        if *link.borrow_and_update() == Link::Cut || link.changed().await.is_err() {
            return;
        }
    }
}

fn io(what: &str, source: std::io::Error) -> Error {
    Error::Io {
        what: what.to_owned(),
        source,
    }
}

/// One `kvd` process (or none, while it is killed).
#[derive(Debug)]
pub struct Node {
    /// Raft id (1-based).
    pub id: u64,
    /// Client (and peer) listen address.
    pub listen: String,
    /// Data directory, kept across restarts.
    pub data_dir: PathBuf,
    /// The process's stdout and stderr, appended across restarts.
    pub log: PathBuf,
    peers: String,
    args: Vec<String>,
    kvd: PathBuf,
    child: Option<Child>,
    paused: bool,
    starts: usize,
}

impl Node {
    /// Starts the process and waits (bounded) until it logs that it
    /// started.
    ///
    /// # Errors
    ///
    /// [`Error::Cluster`] when it is already running, exits, or does not
    /// start within 15 s.
    pub async fn start(&mut self) -> Result<(), Error> {
        if self.child.is_some() {
            return Err(Error::Cluster(format!("node {} already running", self.id)));
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| io("opening a node log", e))?;
        let err = log.try_clone().map_err(|e| io("opening a node log", e))?;
        let child = Command::new(&self.kvd)
            .args(["--id", &self.id.to_string(), "--listen", &self.listen])
            .args(["--peers", &self.peers, "--log-level", "info"])
            // Every node names the others by the proxies on its own links,
            // so their `--peers` differ: the cluster id comes from a token.
            .args(["--cluster-token", "kv-jepsen"])
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .map_err(|e| io(&format!("starting {}", self.kvd.display()), e))?;
        self.child = Some(child);
        self.paused = false;
        self.starts += 1;
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if self.log_text().matches("node started").count() >= self.starts {
                return Ok(());
            }
            if let Some(status) = self.exited() {
                return Err(Error::Cluster(format!(
                    "node {} exited while starting ({status}); log tail:\n{}",
                    self.id,
                    self.log_tail(20)
                )));
            }
            if Instant::now() > deadline {
                return Err(Error::Cluster(format!(
                    "node {} did not start within 15 s; log tail:\n{}",
                    self.id,
                    self.log_tail(20)
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILL and reap. No-op when not running.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.paused = false;
    }

    /// SIGSTOP.
    pub fn pause(&mut self) {
        if self.signal(Signal::STOP) {
            self.paused = true;
        }
    }

    /// SIGCONT.
    pub fn resume(&mut self) {
        if self.signal(Signal::CONT) {
            self.paused = false;
        }
    }

    /// SIGTERM, then SIGKILL if it has not exited within `grace`.
    pub async fn stop(&mut self, grace: Duration) {
        if self.paused {
            self.resume();
        }
        if !self.signal(Signal::TERM) {
            self.kill();
            return;
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if self.exited().is_some() {
                self.child = None;
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.kill();
    }

    fn signal(&self, sig: Signal) -> bool {
        let Some(child) = &self.child else {
            return false;
        };
        let Some(pid) = i32::try_from(child.id()).ok().and_then(Pid::from_raw) else {
            return false;
        };
        // The child is ours and not yet reaped, so the PID is still its.
        kill_process(pid, sig).is_ok()
    }

    /// Whether a process is there (running or paused).
    #[must_use]
    pub fn is_up(&self) -> bool {
        self.child.is_some()
    }

    /// Whether it is paused.
    #[must_use]
    pub fn is_paused(&self) -> bool {
        self.paused
    }

    /// The exit status if the process ended on its own (it is then reaped
    /// and counted as down).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        let status = self.child.as_mut()?.try_wait().ok()??;
        self.child = None;
        self.paused = false;
        Some(status)
    }

    /// The whole log.
    #[must_use]
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last `n` lines of the log.
    #[must_use]
    pub fn log_tail(&self, n: usize) -> String {
        let text = self.log_text();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// N nodes and the N×(N-1) proxies between them.
#[derive(Debug)]
pub struct Cluster {
    /// The nodes; index i is raft id i + 1.
    pub nodes: Vec<Node>,
    /// `links[i][j]`: node i's traffic to node j (`None` on the diagonal).
    pub links: Vec<Vec<Option<Proxy>>>,
    /// Holds the data dirs and logs.
    pub dir: tempfile::TempDir,
}

/// Ports that were free a moment ago.
fn free_ports(n: usize) -> Result<Vec<u16>, Error> {
    let listeners = (0..n)
        .map(|_| StdListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| io("finding free ports", e))?;
    listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect::<Result<_, _>>()
        .map_err(|e| io("finding free ports", e))
}

impl Cluster {
    /// Lays out `n` nodes of `kvd` (with `args` added to each command line)
    /// in a new temporary directory and starts their proxies. Nothing is
    /// started yet: see [`Cluster::start_all`].
    ///
    /// # Errors
    ///
    /// [`Error::Io`] when ports or the directory cannot be had.
    pub async fn create(kvd: &Path, n: usize, args: &[String]) -> Result<Cluster, Error> {
        let dir = tempfile::Builder::new()
            .prefix("kv-jepsen-")
            .tempdir()
            .map_err(|e| io("creating a temporary directory", e))?;
        let listens: Vec<String> = free_ports(n)?
            .into_iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        let mut links = Vec::with_capacity(n);
        for i in 0..n {
            let mut row = Vec::with_capacity(n);
            for (j, to) in listens.iter().enumerate() {
                row.push(if i == j {
                    None
                } else {
                    Some(Proxy::start(to.clone()).await?)
                });
            }
            links.push(row);
        }
        let nodes = (0..n)
            .map(|i| {
                let peers = (0..n)
                    .map(|j| {
                        let addr = links[i][j].as_ref().map_or(&listens[j], |p| &p.addr);
                        format!("{}={addr}", j + 1)
                    })
                    .collect::<Vec<_>>()
                    .join(",");
                Node {
                    id: i as u64 + 1,
                    listen: listens[i].clone(),
                    data_dir: dir.path().join(format!("node{}", i + 1)),
                    log: dir.path().join(format!("node{}.log", i + 1)),
                    peers,
                    args: args.to_vec(),
                    kvd: kvd.to_path_buf(),
                    child: None,
                    paused: false,
                    starts: 0,
                }
            })
            .collect();
        Ok(Cluster { nodes, links, dir })
    }

    /// Starts every node.
    ///
    /// # Errors
    ///
    /// As [`Node::start`].
    pub async fn start_all(&mut self) -> Result<(), Error> {
        for n in &mut self.nodes {
            n.start().await?;
        }
        Ok(())
    }

    /// Client endpoints of all nodes.
    #[must_use]
    pub fn endpoints(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.listen.clone()).collect()
    }

    /// A client of the whole cluster.
    #[must_use]
    pub fn client(&self, timeout: Duration) -> Client {
        Client::new(
            self.endpoints(),
            Options {
                timeout,
                ..Options::default()
            },
        )
    }

    /// Sets every link between a node of `a` and a node of `b`, both ways.
    pub fn set_links(&self, a: &[usize], b: &[usize], link: Link) {
        for &i in a {
            for &j in b {
                for (x, y) in [(i, j), (j, i)] {
                    if let Some(p) = self
                        .links
                        .get(x)
                        .and_then(|r| r.get(y))
                        .and_then(Option::as_ref)
                    {
                        p.set(link);
                    }
                }
            }
        }
    }

    /// Opens every link.
    pub fn heal_links(&self) {
        for p in self.links.iter().flatten().flatten() {
            p.set(Link::Open);
        }
    }

    /// Each node's status, as far as it answers within `timeout`.
    pub async fn statuses(&self, timeout: Duration) -> Vec<Option<NodeStatus>> {
        let client = self.client(timeout);
        let mut out = Vec::with_capacity(self.nodes.len());
        for n in &self.nodes {
            out.push(if n.is_up() && !n.is_paused() {
                client.status(&n.listen).await.ok()
            } else {
                None
            });
        }
        out
    }

    /// The index of the node that a majority agrees is leader, if any.
    pub async fn leader(&self) -> Option<usize> {
        let statuses = self.statuses(Duration::from_millis(300)).await;
        let answering: Vec<&NodeStatus> = statuses.iter().flatten().collect();
        let leader = answering.iter().find(|s| s.role == "leader")?;
        let agree = answering
            .iter()
            .filter(|s| s.leader_id == leader.id)
            .count();
        (agree * 2 > self.nodes.len())
            .then(|| self.nodes.iter().position(|n| n.id == leader.id))
            .flatten()
    }

    /// Waits (bounded) until every node answers and agrees on one leader;
    /// returns its index.
    ///
    /// # Errors
    ///
    /// [`Error::Cluster`] with the nodes' log tails when that does not
    /// happen within `within`.
    pub async fn wait_healthy(&self, within: Duration) -> Result<usize, Error> {
        let deadline = Instant::now() + within;
        loop {
            let statuses = self.statuses(Duration::from_millis(500)).await;
            if statuses.iter().all(Option::is_some) {
                let all: Vec<&NodeStatus> = statuses.iter().flatten().collect();
                if let Some(l) = all.iter().find(|s| s.role == "leader")
                    && all.iter().all(|s| s.leader_id == l.id)
                    && let Some(i) = self.nodes.iter().position(|n| n.id == l.id)
                {
                    return Ok(i);
                }
            }
            if Instant::now() > deadline {
                return Err(Error::Cluster(format!(
                    "the cluster did not settle on a leader within {within:?}; statuses {statuses:?}\n{}",
                    self.log_tails(30)
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The last `n` lines of every node's log.
    #[must_use]
    pub fn log_tails(&self, n: usize) -> String {
        self.nodes
            .iter()
            .map(|node| format!("--- node {} ---\n{}", node.id, node.log_tail(n)))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Stops every node (SIGTERM, then SIGKILL after a grace period).
    pub async fn shutdown(&mut self) {
        for n in &mut self.nodes {
            n.stop(Duration::from_secs(10)).await;
        }
    }
}
