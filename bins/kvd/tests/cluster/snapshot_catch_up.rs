//! A follower restarted after the log was compacted catches up through a
//! snapshot streamed in chunks.

use std::time::Duration;

use bytes::Bytes;
use kv_client::{Client, Options};

use crate::common::{Cluster, serial};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_catches_up_via_snapshot() {
    let _serial = serial();
    let mut c = Cluster::new(3, &["--snapshot-threshold", "50"]);
    c.start_all();
    let leader = c.wait_leader(Duration::from_secs(20)).await;
    let client = c.client(Duration::from_secs(5));
    for i in 0..20 {
        client.put(format!("a{i:03}"), "1").await.expect("put");
    }
    let follower = (leader + 1) % 3;
    assert_eq!(c.nodes[follower].stop(), Some(0));
    // Enough writes for several snapshots and log compactions.
    let value = "v".repeat(1000);
    for i in 0..400 {
        client.put(format!("b{i:03}"), &value).await.expect("put");
    }
    c.nodes[follower].start();
    let commit = client
        .status(&c.nodes[leader].listen)
        .await
        .expect("status")
        .commit_index;
    c.wait_applied(follower, commit, Duration::from_secs(30))
        .await;
    let local = Client::new(
        vec![c.nodes[follower].listen.clone()],
        Options {
            serializable: true,
            ..Options::default()
        },
    );
    assert_eq!(
        local.get("b399").await.expect("get"),
        Some(Bytes::from(value.clone()))
    );
    assert_eq!(
        local.get("a000").await.expect("get"),
        Some(Bytes::from_static(b"1"))
    );
    assert!(
        c.nodes[follower].log_text().contains("snapshot received"),
        "the follower caught up without a snapshot; logs:\n{}",
        c.logs()
    );
    // It keeps following afterwards.
    client.put("after", "snap").await.expect("put");
    let commit = client
        .status(&c.nodes[leader].listen)
        .await
        .expect("status")
        .commit_index;
    c.wait_applied(follower, commit, Duration::from_secs(10))
        .await;
    assert_eq!(
        local.get("after").await.expect("get"),
        Some(Bytes::from_static(b"snap"))
    );
}

/// The store outgrows one raft log record (here a 256 KiB limit standing in
/// for the real 1 GiB one): snapshots name checkpoints on disk instead of
/// holding the data, so the nodes keep serving and a follower that missed
/// the writes catches up from a snapshot several times that limit. Before,
/// writing the snapshot record failed and stopped the raft thread of every
/// node once the store passed the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_larger_than_a_log_record_keeps_serving_and_streams_to_a_follower() {
    let _serial = serial();
    let mut c = Cluster::new(
        3,
        &[
            "--snapshot-threshold",
            "40",
            "--raft-max-record-bytes",
            "262144",
        ],
    );
    c.start_all();
    let leader = c.wait_leader(Duration::from_secs(20)).await;
    let client = c.client(Duration::from_secs(10));
    let follower = (leader + 1) % 3;
    assert_eq!(c.nodes[follower].stop(), Some(0));
    // About 4 MiB of live data from 8 writers: sixteen record limits.
    let value = |i: usize| format!("{i:05}").repeat(4000);
    let mut writers = tokio::task::JoinSet::new();
    for w in 0..8 {
        let client = client.clone();
        writers.spawn(async move {
            for i in (w..200).step_by(8) {
                client
                    .put(format!("big{i:03}"), value(i))
                    .await
                    .expect("put");
            }
        });
    }
    while let Some(r) = writers.join_next().await {
        r.expect("writer");
    }
    c.nodes[follower].start();
    let commit = client
        .status(&c.nodes[leader].listen)
        .await
        .expect("status")
        .commit_index;
    c.wait_applied(follower, commit, Duration::from_secs(30))
        .await;
    let local = Client::new(
        vec![c.nodes[follower].listen.clone()],
        Options {
            serializable: true,
            ..Options::default()
        },
    );
    for i in 0..200 {
        assert_eq!(
            local.get(format!("big{i:03}")).await.expect("get"),
            Some(Bytes::from(value(i))),
            "key big{i:03} on the follower"
        );
    }
    assert!(
        c.nodes[follower].log_text().contains("snapshot received"),
        "the follower caught up without a snapshot; logs:\n{}",
        c.logs()
    );
    client.put("after", "ok").await.expect("put after the load");
    let running: Vec<bool> = c.nodes.iter_mut().map(|n| n.is_running()).collect();
    assert_eq!(running, [true; 3], "a node stopped; logs:\n{}", c.logs());
}
