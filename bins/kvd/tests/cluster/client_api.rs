//! kv-client against a 3-node cluster: every operation, paging, leader
//! discovery from a follower, serializable reads on each node.

use std::time::Duration;

use bytes::Bytes;
use kv_client::{BatchOp, CasOutcome, Client, Options, RangeQuery};

use crate::common::{Cluster, serial};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_operations_paging_and_discovery() {
    let _serial = serial();
    let mut c = Cluster::new(3, &[]);
    // Clients are told `localhost:PORT`, peers use `127.0.0.1:PORT`.
    for n in &mut c.nodes {
        let advertise = n.listen.replace("127.0.0.1", "localhost");
        n.extra.extend(["--advertise".to_owned(), advertise]);
    }
    c.start_all();
    let leader = c.wait_leader(Duration::from_secs(20)).await;
    let follower = (leader + 1) % 3;

    // Followers learn the leader's advertise address through the log.
    let probe = c.client(Duration::from_secs(1));
    let expected = c.nodes[leader].listen.replace("127.0.0.1", "localhost");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let s = probe
            .status(&c.nodes[follower].listen)
            .await
            .expect("status");
        if s.leader_addr == expected {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "follower hint {:?}, want {expected:?}",
            s.leader_addr
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A client that only knows a follower finds the leader from its hint.
    let via_follower = Client::new(
        vec![c.nodes[follower].listen.clone()],
        Options {
            timeout: Duration::from_secs(5),
            ..Options::default()
        },
    );
    via_follower
        .put("hello", "world")
        .await
        .expect("put via follower");
    assert_eq!(
        via_follower.get("hello").await.expect("get"),
        Some(Bytes::from_static(b"world"))
    );

    let client = c.client(Duration::from_secs(5));
    assert_eq!(
        client.cas("c", None, "1").await.expect("cas"),
        CasOutcome::Swapped
    );
    assert_eq!(
        client.cas("c", Some(b"2"), "3").await.expect("cas"),
        CasOutcome::Failed {
            current: Some(Bytes::from_static(b"1"))
        }
    );
    client
        .batch(vec![
            BatchOp::Put("b1".into(), "x".into()),
            BatchOp::Delete("c".into()),
        ])
        .await
        .expect("batch");
    assert_eq!(client.get("c").await.expect("get"), None);
    let err = client.put("", "x").await.expect_err("empty key");
    assert!(err.is_definite());

    // 2,500 keys span three server pages.
    let mut set = tokio::task::JoinSet::new();
    for i in 0..2500 {
        let client = client.clone();
        set.spawn(async move { client.put(format!("p/{i:05}"), format!("v{i}")).await });
        if set.len() >= 200
            && let Some(r) = set.join_next().await
        {
            r.expect("task").expect("put");
        }
    }
    while let Some(r) = set.join_next().await {
        r.expect("task").expect("put");
    }
    let all = client
        .range(&RangeQuery {
            prefix: "p/".into(),
            ..RangeQuery::default()
        })
        .await
        .expect("range");
    assert_eq!(all.len(), 2500);
    assert!(all.windows(2).all(|w| w[0].0 < w[1].0));
    assert_eq!(all[1234].1, Bytes::from_static(b"v1234"));
    let some = client
        .range(&RangeQuery {
            start: "p/01000".into(),
            end: "p/02000".into(),
            limit: 1500,
            keys_only: true,
            ..RangeQuery::default()
        })
        .await
        .expect("range");
    assert_eq!(some.len(), 1000);
    assert!(some.iter().all(|(_, v)| v.is_empty()));

    // Serializable reads on each node see the data once applied there.
    let status = client
        .status(&c.nodes[leader].listen)
        .await
        .expect("status");
    for i in 0..3 {
        c.wait_applied(i, status.commit_index, Duration::from_secs(10))
            .await;
        let local = Client::new(
            vec![c.nodes[i].listen.clone()],
            Options {
                serializable: true,
                ..Options::default()
            },
        );
        assert_eq!(
            local.get("p/02499").await.expect("get"),
            Some(Bytes::from_static(b"v2499"))
        );
    }
}
