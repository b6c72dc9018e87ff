//! The server processes: a 3-node FlashKV cluster and a 3-member etcd
//! cluster on 127.0.0.1, each on fresh data directories.
//!
//! Every process is started in its own process group (so a terminal's
//! Ctrl-C reaches only the benchmark, which then stops them in order) and is
//! stopped by PID when its [`Proc`] is dropped: SIGTERM, a bounded wait,
//! SIGKILL, and a reap. An early return, an error or a panic therefore
//! leaves nothing running.

use std::fs::File;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// How long a process gets after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(15);

/// How long a cluster gets to elect a leader and take a first write.
const READY_WITHIN: Duration = Duration::from_secs(30);

/// Ports on 127.0.0.1 that were free a moment ago (all bound at once, so
/// they are distinct).
pub fn free_ports(n: usize) -> Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()
        .context("finding free ports")?;
    listeners
        .iter()
        .map(|l| Ok(l.local_addr()?.port()))
        .collect()
}

/// One server process, stopped by PID on drop.
pub struct Proc {
    name: String,
    log: PathBuf,
    child: Option<Child>,
}

impl Proc {
    /// Spawns `cmd` with stdout and stderr appended to `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> Result<Proc> {
        let out = File::options()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {name} ({:?})", cmd.get_program()))?;
        Ok(Proc {
            name: name.to_owned(),
            log: log.to_path_buf(),
            child: Some(child),
        })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Fails if the process has exited.
    pub fn check_running(&mut self) -> Result<()> {
        if let Some(c) = self.child.as_mut()
            && let Some(status) = c.try_wait()?
        {
            self.child = None;
            let log = self.log_text();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            bail!(
                "{} exited ({status}); its log ends:\n{}",
                self.name,
                tail.join("\n")
            );
        }
        Ok(())
    }

    /// SIGTERM, wait up to [`STOP_GRACE`], then SIGKILL; reaps the process.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        if let Ok(pid) = i32::try_from(child.id()) {
            // Our own child, not yet reaped: the PID is still ours.
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("{} did not stop within {STOP_GRACE:?}: SIGKILL", self.name);
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Removes `dir` if it exists and creates it empty.
pub fn fresh_dir(dir: &Path) -> Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("emptying {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))
}

/// A running cluster of three processes.
pub struct Cluster {
    /// Client endpoints, one per member (`host:port`).
    pub endpoints: Vec<String>,
    /// The endpoint of the member that was leader once the cluster was
    /// ready.
    pub leader: String,
    procs: Vec<Proc>,
}

impl Cluster {
    /// Fails if any member has exited.
    pub fn check_running(&mut self) -> Result<()> {
        self.procs.iter_mut().try_for_each(Proc::check_running)
    }

    pub fn pids(&self) -> Vec<u32> {
        self.procs.iter().filter_map(Proc::pid).collect()
    }

    /// Stops every member (also done on drop).
    pub fn stop(&mut self) {
        // SIGTERM to all first, so that they stop in parallel.
        for p in &self.procs {
            if let Some(pid) = p.pid().and_then(|p| i32::try_from(p).ok()) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
            }
        }
        self.procs.iter_mut().for_each(Proc::stop);
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Starts a 3-node FlashKV cluster of `kvd` processes in `dir` (emptied
/// first), as `cargo xtask cluster` does, and waits until it has a leader
/// and takes a write.
pub async fn start_flashkv(kvd: &Path, dir: &Path) -> Result<Cluster> {
    ensure!(
        kvd.is_file(),
        "no kvd binary at {} (build it with `cargo build --release -p kvd`, or pass --kvd)",
        kvd.display()
    );
    fresh_dir(dir)?;
    let ports = free_ports(3)?;
    let endpoints: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let peers = endpoints
        .iter()
        .enumerate()
        .map(|(i, a)| format!("{}={a}", i + 1))
        .collect::<Vec<_>>()
        .join(",");
    let mut procs = Vec::new();
    for (i, addr) in endpoints.iter().enumerate() {
        let id = i + 1;
        let mut cmd = Command::new(kvd);
        cmd.args(["--id", &id.to_string(), "--listen", addr, "--peers", &peers])
            .args(["--log-level", "info"])
            .arg("--data-dir")
            .arg(dir.join(format!("node{id}")));
        procs.push(Proc::spawn(
            &format!("kvd {id}"),
            cmd,
            &dir.join(format!("node{id}.log")),
        )?);
    }
    let mut cluster = Cluster {
        endpoints,
        leader: String::new(),
        procs,
    };
    cluster.leader = flashkv_ready(&mut cluster).await?;
    Ok(cluster)
}

async fn flashkv_ready(cluster: &mut Cluster) -> Result<String> {
    let c = kv_client::Client::new(
        cluster.endpoints.clone(),
        kv_client::Options {
            timeout: Duration::from_secs(2),
            ..kv_client::Options::default()
        },
    );
    let deadline = Instant::now() + READY_WITHIN;
    loop {
        cluster.check_running()?;
        let mut st = Vec::new();
        for e in &cluster.endpoints {
            if let Ok(s) = c.status(e).await {
                st.push((e.clone(), s));
            }
        }
        if let Some((addr, l)) = st.iter().find(|(_, s)| s.role == "leader")
            && st.len() == cluster.endpoints.len()
            && st.iter().all(|(_, s)| s.leader_id == l.id)
            && c.put("bench/ready", "1").await.is_ok()
        {
            return Ok(addr.clone());
        }
        ensure!(
            Instant::now() < deadline,
            "the FlashKV cluster had no leader taking writes within {READY_WITHIN:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Starts a 3-member etcd cluster (static bootstrap, default durability
/// settings: etcd fsyncs its WAL before acknowledging) in `dir` (emptied
/// first), and waits until it has a leader and takes a write.
pub async fn start_etcd(etcd: &Path, dir: &Path) -> Result<Cluster> {
    fresh_dir(dir)?;
    let ports = free_ports(6)?;
    let client_urls: Vec<String> = ports[..3]
        .iter()
        .map(|p| format!("http://127.0.0.1:{p}"))
        .collect();
    let peer_urls: Vec<String> = ports[3..]
        .iter()
        .map(|p| format!("http://127.0.0.1:{p}"))
        .collect();
    let initial = peer_urls
        .iter()
        .enumerate()
        .map(|(i, u)| format!("e{}={u}", i + 1))
        .collect::<Vec<_>>()
        .join(",");
    let mut procs = Vec::new();
    for i in 0..3 {
        let name = format!("e{}", i + 1);
        let mut cmd = Command::new(etcd);
        cmd.args(["--name", &name])
            .arg("--data-dir")
            .arg(dir.join(&name))
            .args(["--listen-client-urls", &client_urls[i]])
            .args(["--advertise-client-urls", &client_urls[i]])
            .args(["--listen-peer-urls", &peer_urls[i]])
            .args(["--initial-advertise-peer-urls", &peer_urls[i]])
            .args(["--initial-cluster", &initial])
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", "cluster-vs-etcd"])
            .args(["--logger", "zap", "--log-outputs", "stderr"]);
        procs.push(Proc::spawn(
            &format!("etcd {name}"),
            cmd,
            &dir.join(format!("{name}.log")),
        )?);
    }
    let endpoints: Vec<String> = client_urls
        .iter()
        .map(|u| u.trim_start_matches("http://").to_owned())
        .collect();
    let mut cluster = Cluster {
        endpoints,
        leader: String::new(),
        procs,
    };
    cluster.leader = etcd_ready(&mut cluster).await?;
    Ok(cluster)
}

async fn etcd_ready(cluster: &mut Cluster) -> Result<String> {
    let opts = etcd_client::ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(1))
        .with_timeout(Duration::from_secs(2));
    let deadline = Instant::now() + READY_WITHIN;
    loop {
        cluster.check_running()?;
        // Each member's own id and the leader it knows of.
        let mut seen = Vec::new();
        for e in &cluster.endpoints {
            let Ok(Ok(mut c)) = tokio::time::timeout(
                Duration::from_secs(3),
                etcd_client::Client::connect([e.as_str()], Some(opts.clone())),
            )
            .await
            else {
                continue;
            };
            if let Ok(Ok(s)) = tokio::time::timeout(Duration::from_secs(3), c.status()).await {
                let me = s.header().map_or(0, |h| h.member_id());
                seen.push((e.clone(), me, s.leader()));
            }
        }
        if seen.len() == cluster.endpoints.len()
            && let Some(&(_, _, leader)) = seen.first()
            && leader != 0
            && seen.iter().all(|&(_, _, l)| l == leader)
            && let Some((addr, _, _)) = seen.iter().find(|&&(_, me, _)| me == leader)
            && let Ok(mut c) =
                etcd_client::Client::connect([addr.as_str()], Some(opts.clone())).await
            && let Ok(Ok(_)) =
                tokio::time::timeout(Duration::from_secs(3), c.put("bench/ready", "1", None)).await
        {
            return Ok(addr.clone());
        }
        ensure!(
            Instant::now() < deadline,
            "the etcd cluster had no leader taking writes within {READY_WITHIN:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
