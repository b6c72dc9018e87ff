//! kvd processes for benchmarks, and what `/proc` says about them.
//!
//! Every process is stopped by PID (SIGTERM, a bounded wait, SIGKILL) when
//! its [`Node`] is dropped, so an early return or a panic leaves nothing
//! running.

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::net::TcpListener;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// How long a node gets after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(30);

/// Ports on 127.0.0.1 that were free a moment ago.
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

/// One running kvd.
pub struct Node {
    pub id: u64,
    pub listen: String,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    child: Option<Child>,
}

impl Node {
    /// Starts `kvd --id ID --listen LISTEN --data-dir DIR ARGS...`, its
    /// output appended to `DIR.log`, and waits (bounded) until it logs that
    /// it started.
    pub fn start(
        kvd: &Path,
        id: u64,
        listen: &str,
        data_dir: &Path,
        args: &[String],
    ) -> Result<Node> {
        let log = data_dir.with_extension("log");
        let out = File::options()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("opening {}", log.display()))?;
        let child = Command::new(kvd)
            .args([
                "--id",
                &id.to_string(),
                "--listen",
                listen,
                "--log-level",
                "info",
            ])
            .arg("--data-dir")
            .arg(data_dir)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {}", kvd.display()))?;
        let mut node = Node {
            id,
            listen: listen.to_owned(),
            data_dir: data_dir.to_path_buf(),
            log,
            child: Some(child),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if node.log_text().contains("node started") {
                return Ok(node);
            }
            if let Some(c) = node.child.as_mut()
                && let Some(status) = c.try_wait()?
            {
                node.child = None;
                bail!("kvd {id} exited at start ({status}):\n{}", node.log_text());
            }
            if Instant::now() > deadline {
                bail!("kvd {id} did not start within 30 s:\n{}", node.log_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().and_then(|c| i32::try_from(c.id()).ok())
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, wait up to [`STOP_GRACE`], then SIGKILL; reaps the process.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(pid) = i32::try_from(child.id()) {
            #[allow(unsafe_code)]
            // SAFETY: kill(2) on the PID of our own child, not yet reaped.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// A fresh 3-node cluster in `dir` (replaced if it exists), each node
/// started with `extra` besides its id, address and `--peers`: the nodes
/// and their client addresses.
pub fn start_three(kvd: &Path, dir: &Path, extra: &[String]) -> Result<(Vec<Node>, Vec<String>)> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let addrs: Vec<String> = free_ports(3)?
        .iter()
        .map(|p| format!("127.0.0.1:{p}"))
        .collect();
    let peers = addrs
        .iter()
        .enumerate()
        .map(|(i, a)| format!("{}={a}", i + 1))
        .collect::<Vec<_>>()
        .join(",");
    let mut nodes = Vec::new();
    for (i, addr) in addrs.iter().enumerate() {
        let mut args = vec!["--peers".to_owned(), peers.clone()];
        args.extend(extra.iter().cloned());
        nodes.push(Node::start(
            kvd,
            i as u64 + 1,
            addr,
            &dir.join(format!("n{}", i + 1)),
            &args,
        )?);
    }
    Ok((nodes, addrs))
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Memory of one process, in bytes, from `/proc/PID/status`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Mem {
    /// Resident set (VmRSS).
    pub rss: u64,
    /// Resident anonymous memory (RssAnon): heap, stacks.
    pub anon: u64,
    /// Resident file-backed pages (RssFile): mapped tables, binary.
    pub file: u64,
    /// Peak resident set (VmHWM), as the kernel keeps it.
    pub hwm: u64,
}

impl Mem {
    pub fn read(pid: i32) -> Option<Mem> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let mut m = Mem::default();
        for line in text.lines() {
            let Some((k, v)) = line.split_once(':') else {
                continue;
            };
            let kib: u64 = v.trim().trim_end_matches("kB").trim().parse().unwrap_or(0);
            match k {
                "VmRSS" => m.rss = kib * 1024,
                "RssAnon" => m.anon = kib * 1024,
                "RssFile" => m.file = kib * 1024,
                "VmHWM" => m.hwm = kib * 1024,
                _ => {}
            }
        }
        Some(m)
    }

    fn max(self, o: Mem) -> Mem {
        Mem {
            rss: self.rss.max(o.rss),
            anon: self.anon.max(o.anon),
            file: self.file.max(o.file),
            hwm: self.hwm.max(o.hwm),
        }
    }
}

/// Per node: its PID, the latest sample and the peaks.
type Samples = Arc<Mutex<BTreeMap<u64, (i32, Mem, Mem)>>>;

/// Samples the memory of registered processes every `period` and keeps
/// each one's peaks.
pub struct Sampler {
    state: Samples,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Sampler {
    pub fn start(period: Duration) -> Sampler {
        let state: Samples = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (state, stop) = (state.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(mut s) = state.lock() {
                        for (pid, now, peak) in s.values_mut() {
                            if let Some(m) = Mem::read(*pid) {
                                *now = m;
                                *peak = peak.max(m);
                            }
                        }
                    }
                    std::thread::sleep(period);
                }
            })
        };
        Sampler {
            state,
            stop,
            thread: Some(thread),
        }
    }

    /// Starts sampling node `id`.
    pub fn watch(&self, id: u64, pid: i32) {
        let m = Mem::read(pid).unwrap_or_default();
        if let Ok(mut s) = self.state.lock() {
            s.insert(id, (pid, m, m));
        }
    }

    /// The latest sample of every watched node.
    pub fn now(&self) -> BTreeMap<u64, Mem> {
        self.state
            .lock()
            .map(|s| s.iter().map(|(id, (_, now, _))| (*id, *now)).collect())
            .unwrap_or_default()
    }

    /// The peaks of every watched node so far.
    pub fn peaks(&self) -> BTreeMap<u64, Mem> {
        self.state
            .lock()
            .map(|s| s.iter().map(|(id, (_, _, peak))| (*id, *peak)).collect())
            .unwrap_or_default()
    }

    /// Starts every node's peaks afresh (for the next phase).
    pub fn reset_peaks(&self) {
        if let Ok(mut s) = self.state.lock() {
            for (_, now, peak) in s.values_mut() {
                *peak = *now;
            }
        }
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Bytes of the files under `dir`, each hard-linked file counted once.
pub fn dir_bytes(dir: &Path) -> u64 {
    fn walk(dir: &Path, seen: &mut HashSet<(u64, u64)>, total: &mut u64) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let Ok(md) = e.metadata() else { continue };
            if md.is_dir() {
                walk(&e.path(), seen, total);
            } else if seen.insert((md.dev(), md.ino())) {
                *total += md.len();
            }
        }
    }
    let mut seen = HashSet::new();
    let mut total = 0;
    walk(dir, &mut seen, &mut total);
    total
}
