//! Writes near the frame limit (16 MiB): big puts issued together with
//! others are grouped only as far as a raft entry still fits in a peer
//! frame, and all replicate; a write too large to replicate is refused with
//! a definite error before anything is proposed, and the cluster keeps
//! accepting writes afterwards.

use std::time::Duration;

use kv_client::{Client, Error, Options};
use tokio::task::JoinSet;

use crate::common::{Cluster, serial};

const MIB: usize = 1 << 20;

fn value(len: usize, fill: u8) -> Vec<u8> {
    vec![fill; len]
}

/// The length of `key` as node `i` sees it locally (serializable read).
async fn local_len(c: &Cluster, i: usize, key: &str) -> Option<usize> {
    let client = Client::new(
        vec![c.nodes[i].listen.clone()],
        Options {
            timeout: Duration::from_secs(10),
            serializable: true,
            ..Options::default()
        },
    );
    client.get(key).await.expect("local get").map(|v| v.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_writes_replicate_and_oversized_ones_are_refused() {
    let _serial = serial();
    let mut c = Cluster::new(3, &[]);
    c.start_all();
    let leader = c.wait_leader(Duration::from_secs(20)).await;
    let client = c.client(Duration::from_secs(60));

    // Several 6 MiB puts, a 15.5 MiB one and many mid-sized ones at once:
    // together far over one frame, and the big one with a few mid-sized
    // ones over one frame too.
    let mut writes: Vec<(String, usize)> = (0..4).map(|i| (format!("big/{i}"), 6 * MIB)).collect();
    writes.push(("big/15".into(), 15 * MIB + MIB / 2));
    writes.extend((0..24).map(|i| (format!("mid/{i:02}"), 300 << 10)));
    let mut tasks = JoinSet::new();
    for (n, (key, len)) in writes.iter().cloned().enumerate() {
        let client = client.clone();
        tasks.spawn(async move {
            // Forty megabytes at once through one shared disk can wait in
            // the leader's write queue longer than it lets a write wait; the
            // refusal is definite (nothing applied), so an application
            // retries it, as here, once the client's own retry budget for
            // refusals is spent.
            let v = value(len, b'a' + (n % 26) as u8);
            let mut refusals = 0;
            let r = loop {
                match client.put(&key, &v).await {
                    Err(Error::Unavailable { definite: true, .. }) if refusals < 20 => {
                        refusals += 1;
                        tokio::time::sleep(Duration::from_millis(250)).await;
                    }
                    r => break r,
                }
            };
            (key, r)
        });
    }
    while let Some(done) = tasks.join_next().await {
        let (key, r) = done.expect("put task");
        r.unwrap_or_else(|e| panic!("put {key}: {e}; logs:\n{}", c.logs()));
    }
    let marker = "after-big";
    client.put(marker, "1").await.expect("put marker");
    let status = client
        .status(&c.nodes[leader].listen)
        .await
        .expect("leader status");
    for i in 0..3 {
        c.wait_applied(i, status.commit_index, Duration::from_secs(30))
            .await;
        for (key, len) in &writes {
            assert_eq!(
                local_len(&c, i, key).await,
                Some(*len),
                "node {} holds {key}",
                i + 1
            );
        }
    }

    // Fits in a client frame, but its raft entry would not fit in a peer
    // frame: refused as invalid, nothing proposed.
    let e = client
        .put("too-big", value(16 * MIB - 100, b'z'))
        .await
        .expect_err("a write that cannot be replicated is refused");
    assert!(
        matches!(e, Error::InvalidArgument(_)) && e.is_definite(),
        "{e:?}"
    );
    // Over the frame limit itself: refused before sending.
    let e = client
        .put("way-too-big", value(17 * MIB, b'z'))
        .await
        .expect_err("a 17 MiB write is refused");
    assert!(e.is_definite(), "{e:?}");

    // The cluster still takes writes and replicates them.
    client
        .put("still", "alive")
        .await
        .expect("put after refusals");
    let status = client
        .status(&c.nodes[leader].listen)
        .await
        .expect("leader status");
    for i in 0..3 {
        c.wait_applied(i, status.commit_index, Duration::from_secs(30))
            .await;
        assert_eq!(local_len(&c, i, "still").await, Some(5));
        assert_eq!(local_len(&c, i, "too-big").await, None);
    }

    for n in &mut c.nodes {
        assert_eq!(n.stop(), Some(0), "node {} exit code", n.id);
    }
}
