//! Membership changes with real processes (SPEC section 7): growing 3 -> 5
//! under write load, removing the leader, shrinking back to 3, replacing a
//! SIGKILLed node with a new one, and the changes that must be refused.
//! Every acknowledged write is checked on every member at the end.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use kv_client::{Client, Error, Options, RangeQuery};

use crate::common::{Cluster, serial};

const SNAPSHOTS: &[&str] = &["--snapshot-threshold", "200"];

/// A writer putting `w/<n>` keys until stopped; returns the acknowledged
/// ones.
struct Writer {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<BTreeMap<String, String>>,
}

impl Writer {
    fn start(client: Client) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let mut acked = BTreeMap::new();
            let mut n = 0u64;
            while !flag.load(Ordering::Relaxed) && n < 1_000_000 {
                n += 1;
                let (k, v) = (format!("w/{n:07}"), format!("value {n}"));
                if client.put(&k, &v).await.is_ok() {
                    acked.insert(k, v);
                }
            }
            acked
        });
        Writer { stop, task }
    }

    async fn finish(self) -> BTreeMap<String, String> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("writer")
    }
}

/// Waits until the membership (from the leader) satisfies `done`.
async fn wait_members(
    client: &Client,
    what: &str,
    within: Duration,
    done: impl Fn(&kv_client::Membership) -> bool,
) -> kv_client::Membership {
    let deadline = Instant::now() + within;
    loop {
        if let Ok(m) = client.member_list().await
            && done(&m)
        {
            return m;
        }
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn voters(m: &kv_client::Membership) -> Vec<u64> {
    m.members.iter().filter(|x| x.voter).map(|x| x.id).collect()
}

/// Every acknowledged write, read locally (serializable) on the node at
/// index `i` once it has applied the leader's commit index.
async fn check_node(c: &Cluster, client: &Client, i: usize, acked: &BTreeMap<String, String>) {
    let m = client.member_list().await.expect("member list");
    c.wait_applied(i, m.commit_index, Duration::from_secs(30))
        .await;
    let local = Client::new(
        vec![c.nodes[i].listen.clone()],
        Options {
            serializable: true,
            timeout: Duration::from_secs(10),
            ..Options::default()
        },
    );
    let pairs = local
        .range(&RangeQuery {
            prefix: Bytes::from_static(b"w/"),
            ..RangeQuery::default()
        })
        .await
        .expect("range");
    let got: BTreeMap<Bytes, Bytes> = pairs.into_iter().collect();
    for (k, v) in acked {
        assert_eq!(
            got.get(k.as_bytes()).map(|b| &b[..]),
            Some(v.as_bytes()),
            "acknowledged {k} on node {}",
            c.nodes[i].id
        );
    }
}

/// Waits (bounded) until the node at `i` has exited by itself.
async fn wait_exit(c: &mut Cluster, i: usize, within: Duration) {
    let deadline = Instant::now() + within;
    while c.nodes[i].is_running() {
        assert!(
            Instant::now() < deadline,
            "node {} still runs after its removal; logs:\n{}",
            c.nodes[i].id,
            c.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grow_to_five_remove_the_leader_and_shrink_to_three_under_writes() {
    let _serial = serial();
    let mut c = Cluster::new(3, SNAPSHOTS);
    c.start_all();
    c.wait_leader(Duration::from_secs(20)).await;
    let client = c.client(Duration::from_secs(10));
    let writer = Writer::start(client.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;

    // 3 -> 5: each new node is added, joins from an empty directory,
    // catches up (from a snapshot: the log was compacted) and is promoted.
    for _ in 0..2 {
        let i = c.add_joining(SNAPSHOTS);
        let (id, addr) = (c.nodes[i].id, c.nodes[i].listen.clone());
        client
            .member_add(id, &addr, None, false)
            .await
            .expect("member add");
        c.nodes[i].start();
        wait_members(
            &client,
            "new member promoted",
            Duration::from_secs(30),
            |m| voters(m).contains(&id),
        )
        .await;
    }
    let m = client.member_list().await.expect("member list");
    assert_eq!(voters(&m), vec![1, 2, 3, 4, 5]);

    // Remove the leader: leadership moves first, then it goes, and the
    // removed node stops by itself.
    let leader = m.members.iter().find(|x| x.leader).expect("a leader").id;
    client
        .member_remove(leader)
        .await
        .expect("remove the leader");
    let m = wait_members(&client, "leader removed", Duration::from_secs(20), |m| {
        !voters(m).contains(&leader)
    })
    .await;
    assert_eq!(voters(&m).len(), 4);
    let li = c.nodes.iter().position(|n| n.id == leader).expect("node");
    wait_exit(&mut c, li, Duration::from_secs(20)).await;
    assert!(
        c.nodes[li].log_text().contains("removed from the cluster"),
        "the removed node did not say why it stopped"
    );

    // 4 -> 3: remove a follower.
    let follower = m.members.iter().find(|x| !x.leader).expect("a follower").id;
    client
        .member_remove(follower)
        .await
        .expect("remove a follower");
    let m = wait_members(&client, "follower removed", Duration::from_secs(20), |m| {
        voters(m).len() == 3
    })
    .await;
    let fi = c.nodes.iter().position(|n| n.id == follower).expect("node");
    wait_exit(&mut c, fi, Duration::from_secs(20)).await;

    let acked = writer.finish().await;
    assert!(acked.len() > 50, "only {} writes went through", acked.len());
    client
        .put("after", "shrink")
        .await
        .expect("put after shrinking");
    for id in voters(&m) {
        let i = c.nodes.iter().position(|n| n.id == id).expect("node");
        check_node(&c, &client, i, &acked).await;
    }
    eprintln!(
        "membership: {} acknowledged writes during 3 -> 5 -> 3",
        acked.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_is_replaced_by_a_new_one() {
    let _serial = serial();
    let mut c = Cluster::new(3, SNAPSHOTS);
    c.start_all();
    let leader = c.wait_leader(Duration::from_secs(20)).await;
    let client = c.client(Duration::from_secs(10));
    let writer = Writer::start(client.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;

    let dead = (leader + 2) % 3;
    c.nodes[dead].kill();
    let started = Instant::now();
    let dead_id = c.nodes[dead].id;
    client
        .member_remove(dead_id)
        .await
        .expect("remove the dead node");
    let i = c.add_joining(SNAPSHOTS);
    let (id, addr) = (c.nodes[i].id, c.nodes[i].listen.clone());
    client
        .member_add(id, &addr, None, false)
        .await
        .expect("member add");
    c.nodes[i].start();
    let m = wait_members(
        &client,
        "replacement promoted",
        Duration::from_secs(30),
        |m| voters(m).contains(&id),
    )
    .await;
    let took = started.elapsed();
    assert!(!voters(&m).contains(&dead_id));
    assert_eq!(voters(&m).len(), 3);
    let acked = writer.finish().await;
    for id in voters(&m) {
        let j = c.nodes.iter().position(|n| n.id == id).expect("node");
        check_node(&c, &client, j, &acked).await;
    }
    assert!(
        c.nodes[i].log_text().contains("snapshot received"),
        "the new node caught up without a snapshot"
    );
    eprintln!(
        "replace: {} acknowledged writes; remove + add + join + promote took {took:?}",
        acked.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsafe_changes_are_refused_and_change_nothing() {
    let _serial = serial();
    let mut c = Cluster::new(3, &[]);
    c.start_all();
    let leader = c.wait_leader(Duration::from_secs(20)).await;
    let client = c.client(Duration::from_secs(10));
    let dead = (leader + 1) % 3;
    let live_follower = c.nodes[(leader + 2) % 3].id;
    c.nodes[dead].kill();
    // Once the leader has noticed the dead node is gone (check-quorum
    // marks it inactive within an election timeout, 1-2 s), the voters
    // left by removing the other follower (the leader and the dead one)
    // would hold no quorum of live, caught-up nodes.
    client
        .put("k", "v")
        .await
        .expect("put with two of three up");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let short = Client::new(
        c.endpoints(),
        Options {
            timeout: Duration::from_secs(2),
            ..Options::default()
        },
    );
    let refused = short
        .member_remove(live_follower)
        .await
        .expect_err("removing the last live follower was allowed");
    assert!(matches!(refused, Error::Unavailable { .. }), "{refused:?}");
    assert!(refused.is_definite(), "{refused:?}");
    assert!(refused.to_string().contains("quorum"), "{refused}");
    let m = client.member_list().await.expect("member list");
    assert_eq!(
        voters(&m).len(),
        3,
        "the refused removal changed the membership"
    );

    // A learner that never started lags: its promotion is refused.
    client
        .member_add(9, "127.0.0.1:1", None, true)
        .await
        .expect("add a learner");
    let err = short
        .member_promote(9)
        .await
        .expect_err("promoted a lagging learner");
    assert!(err.is_definite(), "{err:?}");
    let m = client.member_list().await.expect("member list");
    let nine = m
        .members
        .iter()
        .find(|x| x.id == 9)
        .expect("learner 9 listed");
    assert!(!nine.voter);
    // Adding the same id at another address is a mistake, not a repeat.
    let err = client
        .member_add(9, "127.0.0.1:2", None, true)
        .await
        .expect_err("re-added under another address");
    assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
    // Removing a learner, and removing a non-member, are fine.
    client.member_remove(9).await.expect("remove the learner");
    client.member_remove(42).await.expect("remove a non-member");
    let m = client.member_list().await.expect("member list");
    assert!(m.members.iter().all(|x| x.id != 9));
}
