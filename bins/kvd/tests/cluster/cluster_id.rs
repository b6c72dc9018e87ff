//! The cluster id of the peer handshake is fixed at bootstrap: a restarted
//! node keeps it, and a data directory from before cluster ids derives the
//! same one from its persisted membership, so the node rejoins. Each start
//! says once that peer traffic is unauthenticated.

use std::time::Duration;

use crate::common::{Cluster, serial};
use crate::peer_wire::cluster_id;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_nodes_keep_their_cluster_id_and_rejoin() {
    let _serial = serial();
    let mut c = Cluster::new(3, &[]);
    c.start_all();
    let leader = c.wait_leader(Duration::from_secs(20)).await;
    let client = c.client(Duration::from_secs(5));
    client.put("a", "1").await.expect("put");
    let id = cluster_id(&c.nodes[0].data_dir);

    let f = (leader + 1) % 3;
    assert_eq!(c.nodes[f].stop(), Some(0));
    let file = c.nodes[f].data_dir.join("cluster-id");
    std::fs::remove_file(&file).expect("remove cluster-id");
    client
        .put("b", "2")
        .await
        .expect("put while one node is down");
    c.nodes[f].start();
    assert_eq!(
        cluster_id(&c.nodes[f].data_dir),
        id,
        "derived again, the same"
    );

    // It catches up through the handshake, and takes part in new writes.
    let status = client
        .status(&c.nodes[leader].listen)
        .await
        .expect("leader status");
    c.wait_applied(f, status.commit_index, Duration::from_secs(20))
        .await;
    client.put("c", "3").await.expect("put after the restart");
    for n in &c.nodes {
        let log = n.log_text();
        assert_eq!(
            log.matches("peer traffic is unauthenticated").count(),
            log.matches("node started").count(),
            "node {}: once per start; log:\n{log}",
            n.id
        );
    }
}
