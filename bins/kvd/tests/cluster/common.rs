//! Shared harness: real `kvd` processes on free loopback ports, the `kvctl`
//! binary, a TCP proxy that can cut links. Every wait is bounded; every
//! process started is stopped by PID and reaped (also on panic, via Drop).
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use kv_client::{Client, Options};

/// The cluster tests share two CPU cores with each other; one at a time
/// keeps their timing meaningful.
static SERIAL: Mutex<()> = Mutex::new(());

/// Held for the duration of a test. Each test has its own runtime, so
/// holding it across `.await` blocks nothing but the other tests.
pub struct Serial(#[allow(dead_code)] MutexGuard<'static, ()>);

pub fn serial() -> Serial {
    Serial(
        SERIAL
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    )
}

/// The `kvd` under test: `$KVD_BIN` if set (to run these tests against
/// another build), else the one cargo built.
pub fn kvd_bin() -> PathBuf {
    std::env::var_os("KVD_BIN")
        .map_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_kvd")), PathBuf::from)
}

/// `kvctl` next to `kvd` in the target directory, built (or brought up to
/// date: an old binary would test old code) once per run.
pub fn kvctl_bin() -> PathBuf {
    let kvd = kvd_bin();
    let dir = kvd.parent().expect("kvd has a directory");
    let kvctl = dir.join("kvctl");
    static BUILT: std::sync::Once = std::sync::Once::new();
    BUILT.call_once(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "-q", "-p", "kvctl"]);
        if dir.ends_with("release") {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("running cargo build -p kvctl");
        assert!(status.success(), "cargo build -p kvctl failed");
    });
    assert!(
        kvctl.exists(),
        "{} missing: cargo build -p kvctl",
        kvctl.display()
    );
    kvctl
}

/// Ports that were free a moment ago.
pub fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind port 0"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("addr").port())
        .collect()
}

pub fn signal(child: &Child, sig: libc::c_int) {
    let pid = libc::pid_t::try_from(child.id()).expect("pid fits");
    // SAFETY: a plain kill(2) on the PID of our own child, not yet reaped.
    unsafe {
        libc::kill(pid, sig);
    }
}

/// One kvd process.
pub struct Node {
    pub id: u64,
    pub listen: String,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    pub extra: Vec<String>,
    pub peers: String,
    pub child: Option<Child>,
}

impl Node {
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "node {} already running", self.id);
        let started_before = self.log_text().matches("node started").count();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open log");
        let child = Command::new(kvd_bin())
            .args(["--id", &self.id.to_string(), "--listen", &self.listen])
            .args(if self.peers.is_empty() {
                vec![]
            } else {
                vec!["--peers", &self.peers]
            })
            .args(["--log-level", "info"])
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log"))
            .stderr(log)
            .spawn()
            .expect("spawn kvd");
        self.child = Some(child);
        self.wait_started(started_before);
    }

    /// Waits (bounded) until this run of the node logs that it started, so
    /// that its signal handlers are in place before a test signals it; a
    /// node that exits instead is left for the test to examine.
    fn wait_started(&mut self, started_before: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline && self.is_running() {
            if self.log_text().matches("node started").count() > started_before {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGTERM and wait (bounded); returns the exit code.
    pub fn stop(&mut self) -> Option<i32> {
        self.stop_with(libc::SIGTERM)
    }

    /// Sends `sig` and waits (bounded); returns the exit code.
    pub fn stop_with(&mut self, sig: libc::c_int) -> Option<i32> {
        let mut child = self.child.take()?;
        signal(&child, sig);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("node {} did not stop within 15 s of signal {sig}", self.id);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A set of kvd processes in a temporary directory.
pub struct Cluster {
    pub nodes: Vec<Node>,
    pub dir: tempfile::TempDir,
}

impl Cluster {
    /// `n` nodes; node i is reached by peers at `peer_addr(i, listen)`
    /// (its listen address unless a test puts proxies in between).
    pub fn new(n: usize, extra: &[&str]) -> Cluster {
        let ports = free_ports(n);
        let listens: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let peers = listens
            .iter()
            .enumerate()
            .map(|(i, a)| format!("{}={a}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        Cluster::with_peers(listens, vec![peers; n], extra)
    }

    /// `n` nodes that serve peers on a port of their own (`--peer-listen`),
    /// which `--peers` names; the peer address of node i is in
    /// `peer_addrs[i]`.
    pub fn with_peer_ports(n: usize, extra: &[&str]) -> (Cluster, Vec<String>) {
        let ports = free_ports(2 * n);
        let addr = |p: &u16| format!("127.0.0.1:{p}");
        let listens: Vec<String> = ports[..n].iter().map(addr).collect();
        let peer_addrs: Vec<String> = ports[n..].iter().map(addr).collect();
        let peers = peer_addrs
            .iter()
            .enumerate()
            .map(|(i, a)| format!("{}={a}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        let mut c = Cluster::with_peers(listens, vec![peers; n], extra);
        for (node, peer) in c.nodes.iter_mut().zip(&peer_addrs) {
            node.extra
                .extend(["--peer-listen".to_owned(), peer.clone()]);
        }
        (c, peer_addrs)
    }

    /// Nodes listening on `listens`, node i started with `peers[i]`.
    pub fn with_peers(listens: Vec<String>, peers: Vec<String>, extra: &[&str]) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let nodes = listens
            .into_iter()
            .zip(peers)
            .enumerate()
            .map(|(i, (listen, peers))| Node {
                id: i as u64 + 1,
                listen,
                data_dir: dir.path().join(format!("node{}", i + 1)),
                log: dir.path().join(format!("node{}.log", i + 1)),
                extra: extra.iter().map(|s| (*s).to_owned()).collect(),
                peers,
                child: None,
            })
            .collect();
        Cluster { nodes, dir }
    }

    /// A new node (not started) that joins the cluster through the
    /// current nodes' endpoints (`kvd --join`); returns its index. Its id is
    /// one more than the largest so far.
    pub fn add_joining(&mut self, extra: &[&str]) -> usize {
        let id = self.nodes.iter().map(|n| n.id).max().unwrap_or(0) + 1;
        let listen = format!("127.0.0.1:{}", free_ports(1)[0]);
        let mut args: Vec<String> = extra.iter().map(|s| (*s).to_owned()).collect();
        args.push("--join".into());
        args.push(self.endpoints().join(","));
        self.nodes.push(Node {
            id,
            listen,
            data_dir: self.dir.path().join(format!("node{id}")),
            log: self.dir.path().join(format!("node{id}.log")),
            extra: args,
            peers: String::new(),
            child: None,
        });
        self.nodes.len() - 1
    }

    pub fn start_all(&mut self) {
        for n in &mut self.nodes {
            n.start();
        }
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.listen.clone()).collect()
    }

    pub fn client(&self, timeout: Duration) -> Client {
        Client::new(
            self.endpoints(),
            Options {
                timeout,
                ..Options::default()
            },
        )
    }

    /// Waits until, among the nodes at `among` (indexes into `nodes`), one
    /// is leader and every answering one agrees; returns its index.
    pub async fn wait_leader_among(&self, among: &[usize], within: Duration) -> usize {
        let client = self.client(Duration::from_millis(500));
        let deadline = Instant::now() + within;
        loop {
            let mut statuses = Vec::new();
            for &i in among {
                if let Ok(s) = client.status(&self.nodes[i].listen).await {
                    statuses.push(s);
                }
            }
            if let Some(l) = statuses.iter().find(|s| s.role == "leader")
                && statuses.iter().all(|s| s.leader_id == l.id)
                && statuses.len() * 2 > self.nodes.len()
                && let Some(i) = self.nodes.iter().position(|n| n.id == l.id)
            {
                return i;
            }
            assert!(
                Instant::now() < deadline,
                "no leader within {within:?}; logs:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// [`Cluster::wait_leader_among`] all nodes.
    pub async fn wait_leader(&self, within: Duration) -> usize {
        let all: Vec<usize> = (0..self.nodes.len()).collect();
        self.wait_leader_among(&all, within).await
    }

    /// Waits until the node at index `i` has applied at least `index`.
    pub async fn wait_applied(&self, i: usize, index: u64, within: Duration) {
        let client = self.client(Duration::from_millis(500));
        let deadline = Instant::now() + within;
        loop {
            if let Ok(s) = client.status(&self.nodes[i].listen).await
                && s.applied_index >= index
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "node {} did not apply {index} within {within:?}; logs:\n{}",
                i + 1,
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(|n| {
                let text = n.log_text();
                let tail: Vec<&str> = text.lines().rev().take(30).collect();
                format!(
                    "--- node {} ---\n{}",
                    n.id,
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Runs `kvctl` with `args` against `endpoints`, stdin from `input`.
pub fn kvctl(endpoints: &[String], args: &[&str], input: Option<&str>) -> Output {
    let mut cmd = Command::new(kvctl_bin());
    cmd.env("KVCTL_ENDPOINTS", endpoints.join(","))
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn kvctl");
    if let Some(text) = input {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(text.as_bytes()).expect("write stdin");
    }
    // kvctl bounds itself with --timeout (5 s by default).
    child.wait_with_output().expect("kvctl output")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A TCP proxy in front of `target` whose traffic can be cut and restored.
pub struct Proxy {
    pub addr: String,
    blocked: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub async fn start(target: String) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind proxy");
        let addr = listener.local_addr().expect("addr").to_string();
        let blocked = Arc::new(AtomicBool::new(false));
        let flag = blocked.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                if flag.load(Ordering::SeqCst) {
                    continue; // dropped: the connection closes
                }
                let flag = flag.clone();
                let target = target.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await else {
                        return;
                    };
                    let cut = async {
                        while !flag.load(Ordering::SeqCst) {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        () = cut => {}
                    }
                });
            }
        });
        Proxy {
            addr,
            blocked,
            task,
        }
    }

    pub fn set_blocked(&self, blocked: bool) {
        self.blocked.store(blocked, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Node {
    /// Starts kvd with `args` alone, without the flags [`Node::start`]
    /// adds (for settings that come from elsewhere, such as `--config`),
    /// and waits as `start` does. `self.listen` should be where it serves.
    pub fn start_with_only<I, S>(&mut self, args: I)
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        assert!(self.child.is_none(), "node {} already running", self.id);
        let started_before = self.log_text().matches("node started").count();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open log");
        let child = Command::new(kvd_bin())
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log"))
            .stderr(log)
            .spawn()
            .expect("spawn kvd");
        self.child = Some(child);
        self.wait_started(started_before);
    }
}

/// Runs kvd with `args` in `cwd` until it exits; one still running after
/// 10 s is killed and fails the test.
pub fn kvd_until_exit<I, S>(args: I, cwd: &std::path::Path) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let mut child = Command::new(kvd_bin())
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn kvd");
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().expect("try_wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("kvd kept running");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("output")
}
