//! `--peer-secret-file` (SPEC section 10): nodes sharing the secret form a
//! cluster; a member restarted with another secret can neither send raft
//! traffic nor receive it, both sides log the refusal, and it catches up
//! once it has the right secret again.

use std::time::{Duration, Instant};

use crate::common::{Cluster, serial};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_prove_the_secret_and_a_node_with_another_one_is_shut_out() {
    let _serial = serial();
    let keys = tempfile::tempdir().expect("tempdir");
    let good = keys.path().join("peer-secret");
    let bad = keys.path().join("other-secret");
    std::fs::write(&good, "the cluster's peer secret, 32 b\n").expect("write");
    std::fs::write(&bad, "some other secret of this length\n").expect("write");
    let good = good.to_str().expect("utf-8").to_owned();
    let bad = bad.to_str().expect("utf-8").to_owned();

    let mut c = Cluster::new(3, &["--peer-secret-file", &good]);
    c.start_all();
    let leader = c.wait_leader(Duration::from_secs(20)).await;
    let client = c.client(Duration::from_secs(5));
    client.put("before", "1").await.expect("put");
    for n in &c.nodes {
        let log = n.log_text();
        assert!(
            log.contains("peers must prove the peer secret"),
            "node {}:\n{log}",
            n.id
        );
        assert!(!log.contains("unauthenticated"), "node {}:\n{log}", n.id);
    }

    // A member restarted with another secret.
    let f = (leader + 1) % 3;
    assert_eq!(c.nodes[f].stop(), Some(0));
    c.nodes[f].extra = vec!["--peer-secret-file".into(), bad.clone()];
    c.nodes[f].start();
    for i in 0..20 {
        client
            .put(format!("k{i}"), "v")
            .await
            .expect("the two others still commit");
    }
    let commit = client
        .status(&c.nodes[leader].listen)
        .await
        .expect("leader status")
        .commit_index;
    // Refusals on both sides, logged; no entry reaches it meanwhile.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let outsider = c.nodes[f].log_text();
        let others: String = (0..3)
            .filter(|&i| i != f)
            .map(|i| c.nodes[i].log_text())
            .collect();
        if outsider.contains("could not prove the peer secret")
            && others.contains("did not prove the peer secret")
            && others.contains("could not prove the peer secret")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "refusals not logged; logs:\n{}",
            c.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let st = client
        .status(&c.nodes[f].listen)
        .await
        .expect("outsider status");
    assert!(
        st.applied_index < commit,
        "node {} applied {} of {commit} with the wrong secret",
        f + 1,
        st.applied_index
    );
    assert_ne!(st.role, "leader");

    // With the right secret again it catches up.
    assert_eq!(c.nodes[f].stop(), Some(0));
    c.nodes[f].extra = vec!["--peer-secret-file".into(), good.clone()];
    c.nodes[f].start();
    c.wait_applied(f, commit, Duration::from_secs(20)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_or_missing_secret_file_stops_the_start() {
    let _serial = serial();
    let keys = tempfile::tempdir().expect("tempdir");
    let short = keys.path().join("short");
    std::fs::write(&short, "tiny\n").expect("write");
    for (file, says) in [
        (short.clone(), "too short"),
        (keys.path().join("missing"), "No such file"),
    ] {
        let out = std::process::Command::new(crate::common::kvd_bin())
            .args(["--data-dir"])
            .arg(keys.path().join("data"))
            .arg("--peer-secret-file")
            .arg(&file)
            .output()
            .expect("run kvd");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{err}");
        assert!(err.contains(says), "{err}");
    }
}
