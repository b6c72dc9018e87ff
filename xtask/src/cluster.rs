//! `cargo xtask cluster`: a local cluster of release `kvd` processes
//! (SPEC section 5).
//!
//! Each node runs in its own process group, so a terminal Ctrl-C reaches
//! only this launcher, which then stops the nodes in order: SIGTERM to each
//! by PID, a bounded wait, SIGKILL for any node still running, and a reap of
//! every child.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// How long nodes get to stop after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);

struct Args {
    nodes: u16,
    base_port: u16,
    data_dir: PathBuf,
    fresh: bool,
    secure: bool,
    search: bool,
    /// `--search-embedder`: `None` for kvd's default.
    embedder: Option<String>,
}

fn parse(args: &[String], root: &Path) -> Result<Args> {
    let mut a = Args {
        nodes: 3,
        base_port: 7001,
        data_dir: PathBuf::from("target/cluster"),
        fresh: false,
        secure: false,
        search: false,
        embedder: None,
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) => (f, Some(v.to_owned())),
            None => (arg.as_str(), None),
        };
        let mut value = || -> Result<String> {
            inline
                .clone()
                .or_else(|| it.next().cloned())
                .with_context(|| format!("{flag} needs a value"))
        };
        match flag {
            "--nodes" => a.nodes = value()?.parse().context("--nodes")?,
            "--base-port" => a.base_port = value()?.parse().context("--base-port")?,
            "--data-dir" => a.data_dir = PathBuf::from(value()?),
            "--fresh" => a.fresh = true,
            "--secure" => a.secure = true,
            "--search" => a.search = true,
            "--search-embedder" => {
                let e = value()?;
                if e != "ngram" && e != "minilm" {
                    bail!("--search-embedder is ngram or minilm, not {e}");
                }
                a.search = true;
                a.embedder = Some(e);
            }
            other => bail!("unknown argument {other}\n{USAGE}"),
        }
    }
    if a.nodes == 0 || a.nodes > 1000 || (a.secure && a.nodes > 100) {
        bail!("--nodes must be in 1..=1000 (at most 100 with --secure)");
    }
    // HTTP ports are 1000 above the client ports.
    if u32::from(a.base_port) + u32::from(a.nodes) + 1000 > 65536 {
        bail!("ports beyond 65535");
    }
    if a.data_dir.is_relative() {
        a.data_dir = root.join(&a.data_dir);
    }
    Ok(a)
}

pub fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from)
}

const USAGE: &str = "usage: cargo xtask cluster [--nodes 3] [--base-port 7001] [--data-dir target/cluster] [--fresh] [--secure] [--search] [--search-embedder ngram|minilm]";

/// Runs the cluster until Ctrl-C / SIGTERM.
pub fn run(args: &[String], root: &Path) -> Result<()> {
    if args.iter().any(|a| a == "-h" || a == "--help") {
        println!(
            "{USAGE}\n\nBuilds kvd and kvctl (release) and runs a local cluster on 127.0.0.1 until Ctrl-C:\n  --nodes N       members (default 3)\n  --base-port P   client port of node 1; node i listens on P+i-1, its HTTP gateway on P+i-1+1000\n  --data-dir D    where the nodes keep their data (default target/cluster)\n  --fresh         remove the data directory first\n  --secure        TLS, peer certificates and client tokens (made with cargo xtask certs)\n  --search        full-text and similarity search over values (kvd --search; kvctl search / similar)\n  --search-embedder E  search, with similarity by `minilm` (a sentence-embedding model; kvd is built with --features minilm) or `ngram` (the default)"
        );
        return Ok(());
    }
    let a = parse(args, root)?;
    let mut build = vec!["build", "--release", "-p", "kvd", "-p", "kvctl"];
    if a.embedder.as_deref() == Some("minilm") {
        build.extend(["--features", "kvd/minilm"]);
    }
    crate::run(&build)?;
    let bin = target_dir(root).join("release");
    let kvd = bin.join("kvd");
    if a.fresh && a.data_dir.exists() {
        std::fs::remove_dir_all(&a.data_dir)
            .with_context(|| format!("removing {}", a.data_dir.display()))?;
    }
    std::fs::create_dir_all(&a.data_dir)
        .with_context(|| format!("creating {}", a.data_dir.display()))?;
    let secure = if a.secure {
        Some(crate::certs::Secure::make_or_load(
            &a.data_dir.join("secure"),
        )?)
    } else {
        None
    };
    let node_args = secure
        .as_ref()
        .map(crate::certs::Secure::kvd_args)
        .unwrap_or_default();
    let kvctl_args = secure
        .as_ref()
        .map(crate::certs::Secure::kvctl_args)
        .unwrap_or_default();
    // SAFETY: `on_signal` only stores to an atomic, which is
    // async-signal-safe.
    #[allow(unsafe_code)]
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    let addrs: Vec<String> = (0..a.nodes)
        .map(|i| format!("127.0.0.1:{}", a.base_port + i))
        .collect();
    // Secure: peers on ports of their own, 100 above the client ports,
    // with mutual TLS.
    let peer_addrs: Vec<String> = if a.secure {
        (0..a.nodes)
            .map(|i| format!("127.0.0.1:{}", a.base_port + 100 + i))
            .collect()
    } else {
        addrs.clone()
    };
    // The HTTP gateway and status page of each node, 1000 above its client
    // port.
    let http_addrs: Vec<String> = (0..a.nodes)
        .map(|i| format!("127.0.0.1:{}", a.base_port + 1000 + i))
        .collect();
    let peers = peer_addrs
        .iter()
        .enumerate()
        .map(|(i, addr)| format!("{}={addr}", i + 1))
        .collect::<Vec<_>>()
        .join(",");
    let mut children: Vec<(u16, Child)> = Vec::new();
    for (i, addr) in addrs.iter().enumerate() {
        let id = u16::try_from(i + 1).unwrap_or(u16::MAX);
        let dir = a.data_dir.join(format!("node{id}"));
        let spawned = Command::new(&kvd)
            .args(["--id", &id.to_string(), "--listen", addr, "--peers", &peers])
            .args(["--http-listen", &http_addrs[i]])
            .arg("--data-dir")
            .arg(&dir)
            .args(&node_args)
            .args(if a.search { &["--search"][..] } else { &[] })
            .args(
                a.embedder
                    .iter()
                    .flat_map(|e| ["--search-embedder", e.as_str()]),
            )
            .args(if a.secure {
                vec!["--peer-listen", &peer_addrs[i]]
            } else {
                vec![]
            })
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn();
        let mut child = match spawned {
            Ok(c) => c,
            Err(e) => {
                stop_all(&mut children);
                return Err(e).with_context(|| format!("starting {}", kvd.display()));
            }
        };
        for stream in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    println!("[node {id}] {line}");
                }
            });
        }
        children.push((id, child));
    }
    let endpoints = addrs.join(",");
    println!(
        "cluster of {} nodes, data in {}",
        a.nodes,
        a.data_dir.display()
    );
    println!("endpoints: {endpoints}");
    let scheme = if a.secure { "https" } else { "http" };
    println!(
        "HTTP:     {}  (status page: {scheme}://{}/)",
        http_addrs.join(","),
        http_addrs[0]
    );
    println!(
        "try:      {} --endpoints {endpoints} {}status",
        bin.join("kvctl").display(),
        kvctl_args
            .iter()
            .map(|a| format!("{a} "))
            .collect::<String>()
    );
    println!("Ctrl-C stops the cluster.");
    let kvctl = bin.join("kvctl");
    let ready_by = Instant::now() + Duration::from_secs(30);
    let mut announced = false;
    let mut exited = vec![false; children.len()];
    while !STOP.load(Ordering::SeqCst) {
        if !announced {
            if let Some(leader) = leader_of(&kvctl, &endpoints, &kvctl_args) {
                println!("[xtask] cluster ready: node {leader} is the leader");
                announced = true;
            } else if Instant::now() > ready_by {
                println!("[xtask] no leader after 30 s; see the node logs above");
                announced = true;
            }
        }
        for (n, (id, child)) in children.iter_mut().enumerate() {
            if !exited[n]
                && let Ok(Some(status)) = child.try_wait()
            {
                exited[n] = true;
                println!("[xtask] node {id} exited: {status}");
            }
        }
        if exited.iter().all(|&e| e) {
            println!("[xtask] every node has exited");
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    println!("[xtask] stopping the cluster");
    stop_all(&mut children);
    Ok(())
}

/// The leader id all answering nodes agree on, asked through `kvctl status`.
fn leader_of(kvctl: &Path, endpoints: &str, extra: &[String]) -> Option<u64> {
    let out = Command::new(kvctl)
        .args(["--endpoints", endpoints, "--timeout", "500ms"])
        .args(extra)
        .arg("status")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut leader = None;
    for line in text.lines() {
        let id = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("leader_id="))?
            .parse::<u64>()
            .ok()?;
        if id == 0 || leader.is_some_and(|l| l != id) {
            return None;
        }
        leader = Some(id);
    }
    leader
}

/// SIGTERM each running child by PID, wait up to [`STOP_GRACE`], then
/// SIGKILL the rest; reap all.
fn stop_all(children: &mut [(u16, Child)]) {
    for (_, child) in children.iter_mut() {
        if matches!(child.try_wait(), Ok(None)) {
            let pid = libc::pid_t::try_from(child.id()).unwrap_or(0);
            if pid > 0 {
                // SAFETY: plain syscall on the PID of our own, unreaped child.
                #[allow(unsafe_code)]
                unsafe {
                    libc::kill(pid, libc::SIGTERM);
                }
            }
        }
    }
    let deadline = Instant::now() + STOP_GRACE;
    for (id, child) in children.iter_mut() {
        loop {
            match child.try_wait() {
                Ok(Some(status)) => {
                    println!("[xtask] node {id} stopped: {status}");
                    break;
                }
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                _ => {
                    println!("[xtask] node {id} did not stop in time: SIGKILL");
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
            }
        }
    }
}
