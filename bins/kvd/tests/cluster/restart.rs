//! A whole-cluster restart keeps every acknowledged write; `--peers` on
//! restart is ignored in favour of the persisted membership; SIGTERM and
//! SIGINT exit 0.

use std::time::Duration;

use bytes::Bytes;
use kv_client::RangeQuery;

use crate::common::{Cluster, serial};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_cluster_restart_keeps_data() {
    let _serial = serial();
    let mut c = Cluster::new(3, &[]);
    c.start_all();
    c.wait_leader(Duration::from_secs(20)).await;
    let client = c.client(Duration::from_secs(5));
    for i in 0..200 {
        client
            .put(format!("k{i:03}"), format!("v{i}"))
            .await
            .expect("put");
    }
    client.delete("k007").await.expect("delete");

    // A leader stopped with SIGTERM hands leadership over first: the others
    // need not wait for an election timeout.
    let leader = c.wait_leader(Duration::from_secs(20)).await;
    let stopped = std::time::Instant::now();
    assert_eq!(c.nodes[leader].stop(), Some(0));
    let survivors: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    c.wait_leader_among(&survivors, Duration::from_secs(20))
        .await;
    println!(
        "graceful leader stop: new leader serving {:?} after SIGTERM",
        stopped.elapsed()
    );
    assert!(
        c.nodes[leader]
            .log_text()
            .contains("leadership handed over"),
        "{}",
        c.logs()
    );
    client.put("during", "rolling restart").await.expect("put");
    c.nodes[leader].start();
    c.wait_leader(Duration::from_secs(20)).await;
    drop(client);
    assert_eq!(
        c.nodes[0].stop_with(libc::SIGINT),
        Some(0),
        "exit code after SIGINT"
    );
    for n in &mut c.nodes[1..] {
        assert_eq!(n.stop(), Some(0), "node {} exit code after SIGTERM", n.id);
    }

    // Restart with nonsense --peers: the persisted membership wins.
    for n in &mut c.nodes {
        n.peers = format!("{}=127.0.0.1:1", n.id);
        n.start();
    }
    c.wait_leader(Duration::from_secs(20)).await;
    let client = c.client(Duration::from_secs(5));
    let all = client
        .range(&RangeQuery {
            prefix: "k".into(),
            ..RangeQuery::default()
        })
        .await
        .expect("range");
    assert_eq!(all.len(), 199);
    assert!(client.get("during").await.expect("get").is_some());
    assert_eq!(client.get("k007").await.expect("get"), None);
    assert_eq!(
        client.get("k199").await.expect("get"),
        Some(Bytes::from_static(b"v199"))
    );
    client
        .put("after", "restart")
        .await
        .expect("put after restart");
    for n in &mut c.nodes {
        assert_eq!(n.stop(), Some(0));
    }
}
