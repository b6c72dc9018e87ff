//! A minority partition (cut through TCP proxies on every peer link) cannot
//! commit; the majority keeps serving; after healing all nodes converge.

use std::time::Duration;

use kv_client::{Client, Options, RangeQuery};

use crate::common::{Cluster, Proxy, serial};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minority_cannot_commit_and_all_converge_after_healing() {
    let _serial = serial();
    // The nodes' ports stay bound until the proxies have theirs: a port
    // released at once could be handed to a proxy's listener, and the node
    // meant for it would fail to start ("address already in use").
    let held: Vec<std::net::TcpListener> = (0..3)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind port 0"))
        .collect();
    let listens: Vec<String> = held
        .iter()
        .map(|l| format!("127.0.0.1:{}", l.local_addr().expect("local addr").port()))
        .collect();
    // proxies[i][j]: the link from node i to node j.
    let mut proxies: Vec<Vec<Option<Proxy>>> = Vec::new();
    for _ in 0..3 {
        let mut row = Vec::new();
        for to in &listens {
            row.push(Some(Proxy::start(to.clone()).await));
        }
        proxies.push(row);
    }
    for (i, row) in proxies.iter_mut().enumerate() {
        row[i] = None;
    }
    let peers: Vec<String> = (0..3)
        .map(|i| {
            (0..3)
                .map(|j| match &proxies[i][j] {
                    Some(p) => format!("{}={}", j + 1, p.addr),
                    None => format!("{}={}", j + 1, listens[j]),
                })
                .collect::<Vec<_>>()
                .join(",")
        })
        .collect();
    // Each node names the others by its own proxies: the cluster id comes
    // from a shared token instead of the (differing) address lists.
    drop(held);
    let mut c = Cluster::with_peers(listens, peers, &["--cluster-token", "partition"]);
    c.start_all();
    let old = c.wait_leader(Duration::from_secs(20)).await;
    let client = c.client(Duration::from_secs(5));
    client.put("before", "1").await.expect("put before");

    // Cut the leader off from both others, both directions.
    let cut = |blocked: bool| {
        for (i, row) in proxies.iter().enumerate() {
            for (j, p) in row.iter().enumerate() {
                if let Some(p) = p
                    && (i == old || j == old)
                {
                    p.set_blocked(blocked);
                }
            }
        }
    };
    cut(true);
    // The proxies close their open connections within 20 ms.
    tokio::time::sleep(Duration::from_millis(200)).await;

    // The isolated leader cannot commit.
    let minority = Client::new(
        vec![c.nodes[old].listen.clone()],
        Options {
            timeout: Duration::from_secs(3),
            ..Options::default()
        },
    );
    let err = minority
        .put("minority", "x")
        .await
        .expect_err("the minority committed a write");
    println!("minority write: {err} (definite: {})", err.is_definite());

    // The majority elects a leader and serves.
    let majority: Vec<usize> = (0..3).filter(|&i| i != old).collect();
    let new = c
        .wait_leader_among(&majority, Duration::from_secs(20))
        .await;
    assert_ne!(new, old);
    let majority_client = Client::new(
        majority
            .iter()
            .map(|&i| c.nodes[i].listen.clone())
            .collect(),
        Options {
            timeout: Duration::from_secs(5),
            ..Options::default()
        },
    );
    for i in 0..50 {
        majority_client
            .put(format!("m{i:02}"), "y")
            .await
            .expect("majority put");
    }

    // Heal; everyone converges on the majority's history.
    cut(false);
    let leader = c.wait_leader(Duration::from_secs(20)).await;
    let commit = majority_client
        .status(&c.nodes[leader].listen)
        .await
        .expect("status")
        .commit_index;
    let mut contents = Vec::new();
    for i in 0..3 {
        c.wait_applied(i, commit, Duration::from_secs(20)).await;
        let local = Client::new(
            vec![c.nodes[i].listen.clone()],
            Options {
                serializable: true,
                ..Options::default()
            },
        );
        contents.push(local.range(&RangeQuery::default()).await.expect("range"));
    }
    assert_eq!(contents[0].len(), 51, "{:?}", contents[0]);
    assert!(contents[0].iter().all(|(k, _)| k.as_ref() != b"minority"));
    assert_eq!(contents[0], contents[1]);
    assert_eq!(contents[0], contents[2]);
}
