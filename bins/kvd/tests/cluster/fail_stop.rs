//! Fail-stop (SPEC section 3): when a node's raft thread dies or the
//! storage under it fails, kvd logs why and exits non-zero instead of
//! lingering half-alive; the rest of the cluster keeps serving.

use std::time::{Duration, Instant};

use crate::common::{Cluster, Node, serial};
use crate::peer_wire::{
    MSG_HEARTBEAT, closed_after, cluster_id, frames, hello, peer, raft_message,
};

/// Waits (bounded) for the node to exit; returns its exit code.
fn wait_exit(node: &mut Node, within: Duration) -> Option<i32> {
    let deadline = Instant::now() + within;
    let child = node.child.as_mut().expect("started");
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            node.child = None;
            return status.code();
        }
        assert!(
            Instant::now() < deadline,
            "node {} still running {within:?} after its raft failed; log:\n{}",
            node.id,
            node.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn error_lines(text: &str) -> Vec<&str> {
    let lines: Vec<&str> = text.lines().filter(|l| l.contains("ERROR")).collect();
    for l in &lines {
        eprintln!("{l}");
    }
    lines
}

async fn cluster_still_serves(c: &Cluster, key: &str) {
    let client = c.client(Duration::from_secs(5));
    client
        .put(key, "v")
        .await
        .unwrap_or_else(|e| panic!("the rest of the cluster stopped: {e}; logs:\n{}", c.logs()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raft_panic_from_a_member_stops_the_node_with_a_reason() {
    let _serial = serial();
    let mut c = Cluster::new(3, &[]);
    c.start_all();
    let leader = c.wait_leader(Duration::from_secs(20)).await;
    c.client(Duration::from_secs(5))
        .put("a", "1")
        .await
        .expect("put");
    let victim = (leader + 1) % 3;
    let (l, v) = (c.nodes[leader].id, c.nodes[victim].id);
    // A member (or whoever can speak for one) sends a heartbeat whose commit
    // index is beyond the victim's log: raft-rs panics stepping it.
    let cid = cluster_id(&c.nodes[victim].data_dir);
    let bytes = frames(&[
        hello(cid, l),
        peer(
            l,
            v,
            vec![raft_message(MSG_HEARTBEAT, v, l, 1_000_000, 1 << 40)],
        ),
    ]);
    let _ = closed_after(&c.nodes[victim].listen, &bytes, Duration::from_secs(2)).await;
    let code = wait_exit(&mut c.nodes[victim], Duration::from_secs(15));
    let log = c.nodes[victim].log_text();
    assert!(
        code.is_some_and(|c| c != 0),
        "exit code {code:?}; log:\n{log}"
    );
    let errors = error_lines(&log);
    assert!(
        errors
            .iter()
            .any(|l| l.contains("raft driver panicked") && l.contains("out of range")),
        "no error line naming the cause; log:\n{log}"
    );
    cluster_still_serves(&c, "after-panic").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_raft_log_stops_the_node_with_a_reason() {
    let _serial = serial();
    // Snapshots every few entries, so the log store soon writes a new file.
    let mut c = Cluster::new(3, &["--snapshot-threshold", "5"]);
    c.start_all();
    let leader = c.wait_leader(Duration::from_secs(20)).await;
    let client = c.client(Duration::from_secs(5));
    client.put("a", "1").await.expect("put");
    let victim = (leader + 1) % 3;
    let raft_dir = c.nodes[victim].data_dir.join("raft");
    std::fs::remove_dir_all(&raft_dir).expect("remove the raft log directory");
    for i in 0..40 {
        // Writes may stall briefly while the cluster notices; the victim's
        // exit is what is checked.
        let _ = client.put(format!("k{i}"), "v").await;
        if !c.nodes[victim].is_running() {
            break;
        }
    }
    let code = wait_exit(&mut c.nodes[victim], Duration::from_secs(15));
    let log = c.nodes[victim].log_text();
    assert!(
        code.is_some_and(|c| c != 0),
        "exit code {code:?}; log:\n{log}"
    );
    let dir = raft_dir.display().to_string();
    assert!(
        error_lines(&log).iter().any(|l| l.contains(&dir)),
        "no error line naming the raft log directory {dir}; log:\n{log}"
    );
    cluster_still_serves(&c, "after-disk-failure").await;
}
