//! Adversarial clients (issue: "slowloris connections, 10,000 idle
//! connections"): a node holding thousands of idle connections, or being
//! trickled frames, keeps serving everyone else with bounded memory; those
//! that send nothing or trickle are closed; a node whose client slots are
//! all taken refuses further clients clearly and still lets its peers in.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::common::{Cluster, serial};
use crate::peer_wire::{frames, hello, peak_rss_kib};

/// Connections held idle in the idle-connection test.
const IDLE: usize = 10_000;

/// Resident set size of `pid` in KiB (`VmRSS`).
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS line")
}

/// Opens `n` connections to `addr`, `parallel` at a time, each sending
/// `first` (may be empty); they stay open until dropped.
async fn open_many(addr: &str, n: usize, first: &[u8]) -> Vec<TcpStream> {
    let mut out = Vec::with_capacity(n);
    let mut pending = JoinSet::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    for _ in 0..n {
        // Few connects at a time, so that none waits in the kernel's accept
        // queue (where a silent one is not yet the node's to close).
        while pending.len() >= 32 {
            out.push(pending.join_next().await.expect("task").expect("join"));
        }
        let (addr, first) = (addr.to_owned(), first.to_vec());
        pending.spawn(async move {
            let mut s = tokio::time::timeout_at(deadline, TcpStream::connect(&addr))
                .await
                .expect("connect in time")
                .expect("connect");
            if !first.is_empty() {
                s.write_all(&first).await.expect("send first frame");
            }
            s
        });
    }
    while let Some(s) = pending.join_next().await {
        out.push(s.expect("join"));
    }
    out
}

/// True when the node closed `s` within `within`.
async fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 512];
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

/// Puts and reads back `n` keys; the slowest round trip.
async fn serve_check(c: &Cluster, prefix: &str, n: usize) -> Duration {
    let client = c.client(Duration::from_secs(10));
    let mut slowest = Duration::ZERO;
    for i in 0..n {
        let key = format!("{prefix}/{i:04}");
        let start = Instant::now();
        client
            .put(key.as_bytes(), b"value")
            .await
            .unwrap_or_else(|e| panic!("put {key}: {e}"));
        let got = client
            .get(key.as_bytes())
            .await
            .unwrap_or_else(|e| panic!("get {key}: {e}"));
        slowest = slowest.max(start.elapsed());
        assert_eq!(got.as_deref(), Some(&b"value"[..]), "{key}");
    }
    slowest
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_idle_connections_cost_little_and_block_no_one() {
    let _serial = serial();
    let mut c = Cluster::new(3, &[]);
    c.start_all();
    let leader = c.wait_leader(Duration::from_secs(20)).await;
    serve_check(&c, "warm", 20).await;
    let pid = c.nodes[leader].child.as_ref().expect("running").id();
    let before = rss_kib(pid);

    let client_hello = frames(&[hello(0, 0)]);
    let idle = open_many(&c.nodes[leader].listen.clone(), IDLE, &client_hello).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let held = rss_kib(pid);
    let slowest = serve_check(&c, "busy", 50).await;
    let grown = held.saturating_sub(before);
    eprintln!(
        "{IDLE} idle connections on the leader: VmRSS {before} KiB -> {held} KiB \
         (+{grown} KiB, {:.1} KiB each), VmHWM {:?} KiB; slowest put+get meanwhile {slowest:?}",
        grown as f64 / IDLE as f64,
        peak_rss_kib(pid)
    );
    assert!(
        grown < 160 * 1024,
        "{IDLE} idle connections grew the leader by {grown} KiB"
    );
    assert!(
        slowest < Duration::from_secs(2),
        "a put+get took {slowest:?} next to idle connections"
    );
    // Still open: a client that said hello may stay idle.
    let mut idle = idle;
    let mut probe = idle.pop().expect("one");
    assert!(
        !closed_within(&mut probe, Duration::from_millis(200)).await,
        "an idle client connection was closed"
    );
    drop(idle);
    drop(probe);
    for n in &mut c.nodes {
        assert_eq!(n.stop(), Some(0), "node {} exit code", n.id);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_and_silent_connections_are_closed_and_others_served() {
    let _serial = serial();
    let mut c = Cluster::new(
        3,
        &[
            "--handshake-timeout-ms",
            "1500",
            "--frame-timeout-ms",
            "1500",
        ],
    );
    c.start_all();
    let leader = c.wait_leader(Duration::from_secs(20)).await;
    let addr = c.nodes[leader].listen.clone();
    let pid = c.nodes[leader].child.as_ref().expect("running").id();

    // Silent: connect and send nothing. Slow: a hello, then a header that
    // announces 8 MiB and a trickle of its body.
    let mut silent = open_many(&addr, 500, &[]).await;
    let mut opening = frames(&[hello(0, 0)]);
    opening.extend_from_slice(&(8u32 << 20).to_be_bytes());
    let mut slow = open_many(&addr, 500, &opening).await;
    let start = Instant::now();
    let trickle = async {
        for _ in 0..40 {
            for s in &mut slow {
                let _ = s.write_all(&[0x0a]).await;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let (slowest, ()) = tokio::join!(serve_check(&c, "served", 50), trickle);
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut open = 0;
    for (i, s) in silent.iter_mut().chain(slow.iter_mut()).enumerate() {
        let left = deadline.saturating_duration_since(Instant::now());
        if !closed_within(s, left.max(Duration::from_millis(10))).await {
            eprintln!("connection {i} (of 500 silent, then 500 slow) still open");
            open += 1;
        }
    }
    assert_eq!(
        open,
        0,
        "silent or trickling connections still open after {:?}",
        start.elapsed()
    );
    let peak = peak_rss_kib(pid).expect("VmHWM");
    eprintln!(
        "500 silent + 500 trickling connections closed after {:?}; slowest put+get {slowest:?}; \
         leader VmHWM {peak} KiB",
        start.elapsed()
    );
    assert!(slowest < Duration::from_secs(2), "put+get took {slowest:?}");
    assert!(peak < 256 * 1024, "leader peak RSS {peak} KiB");
    for n in &mut c.nodes {
        assert_eq!(n.stop(), Some(0), "node {} exit code", n.id);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_full_of_clients_refuses_more_and_keeps_its_peers() {
    let _serial = serial();
    let mut c = Cluster::new(3, &["--max-connections", "64"]);
    c.start_all();
    let leader = c.wait_leader(Duration::from_secs(20)).await;
    serve_check(&c, "before", 5).await;
    let (follower, other) = ((leader + 1) % 3, (leader + 2) % 3);
    let probe = c.client(Duration::from_millis(500));
    let term_before = probe
        .status(&c.nodes[other].listen)
        .await
        .expect("status")
        .term;
    let old_leader = c.nodes[leader].id;
    // Stop two nodes, so that no peer holds a slot of the follower, then
    // fill all its slots with idle clients.
    assert_eq!(c.nodes[other].stop(), Some(0));
    assert_eq!(c.nodes[leader].stop(), Some(0));
    let faddr = c.nodes[follower].listen.clone();
    let hogs = open_many(&faddr, 64, &frames(&[hello(0, 0)])).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    // A client over the limit hears so, definitely.
    let over = kv_net::ClientConn::connect(&faddr, &kv_net::Options::default())
        .await
        .expect("connect");
    let mut get = kv_net::proto::Request::new();
    get.mut_get().key = bytes::Bytes::from_static(b"before/0000");
    let resp = tokio::time::timeout(Duration::from_secs(5), over.call(get))
        .await
        .expect("answered in time")
        .expect("an answer");
    let err = resp.error();
    assert_eq!(
        err.code.enum_value(),
        Ok(kv_net::proto::ErrorCode::UNAVAILABLE),
        "{resp:?}"
    );
    assert!(err.message.contains("too many connections"), "{resp:?}");
    assert!(!err.outcome_unknown, "a refusal is definite");

    // A restarted node's links to the full follower come over the limit;
    // the two must elect a leader, which takes a message over such a link
    // whichever of them wins.
    c.nodes[other].start();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(s) = probe.status(&c.nodes[other].listen).await
            && s.term > term_before
            && s.leader_id != 0
            && s.leader_id != old_leader
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no leader elected by the full follower and the restarted node; logs:\n{}",
            c.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(hogs);
    c.client(Duration::from_secs(10))
        .put(b"after", b"quorum")
        .await
        .expect("a write commits on the two nodes");
    for n in &mut c.nodes {
        if n.is_running() {
            assert_eq!(n.stop(), Some(0), "node {} exit code", n.id);
        }
    }
}
