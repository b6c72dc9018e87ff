//! Hostile peers: forged and malformed raft messages, handshakes that must
//! fail, snapshot chunks out of order or in another node's name, frames at
//! and over the size limit. After each attack the attacking connection has
//! been closed and the cluster still takes a write and serves a read; at
//! the end every node runs and none panicked. Prints each node's peak RSS.

use std::time::Duration;

use bytes::Bytes;

use crate::common::{Cluster, serial};
use crate::peer_wire::{
    MSG_APPEND, MSG_HEARTBEAT, chunk, closed_after, cluster_id, frames, hello, offer, peak_rss_kib,
    peer, peer_of_length, raft_message, snapshot_message,
};

const LIMIT: usize = 16 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_peers_are_cut_off_and_the_cluster_keeps_serving() {
    let _serial = serial();
    let mut c = Cluster::new(3, &[]);
    c.start_all();
    let leader = c.wait_leader(Duration::from_secs(20)).await;
    let client = c.client(Duration::from_secs(5));
    client.put("k", "0").await.expect("first put");
    let cid = cluster_id(&c.nodes[0].data_dir);
    for n in &c.nodes {
        assert_eq!(
            cluster_id(&n.data_dir),
            cid,
            "nodes agree on the cluster id"
        );
    }
    let follower = (leader + 1) % 3;
    let (l, f) = (c.nodes[leader].id, c.nodes[follower].id);
    let status = client
        .status(&c.nodes[follower].listen)
        .await
        .expect("status");
    let term = status.term;
    // Would kill raft if stepped: a commit far beyond any log.
    let deadly = |to, from| raft_message(MSG_HEARTBEAT, to, from, term + 1_000_000, 1 << 40);

    let attacks: Vec<(&str, usize, Vec<u8>)> = vec![
        (
            "no handshake",
            follower,
            frames(&[peer(l, f, vec![deadly(f, l)])]),
        ),
        (
            "no handshake, snapshot chunk",
            follower,
            frames(&[chunk(l, f, 0, vec![1; 100], false)]),
        ),
        (
            "wrong cluster id",
            follower,
            frames(&[hello(cid ^ 1, l), peer(l, f, vec![deadly(f, l)])]),
        ),
        (
            "non-member",
            follower,
            frames(&[hello(cid, 9), peer(9, f, vec![deadly(f, 9)])]),
        ),
        (
            "the node's own id",
            follower,
            frames(&[hello(cid, f), peer(f, f, vec![deadly(f, f)])]),
        ),
        (
            "envelope from another member",
            follower,
            frames(&[
                hello(cid, l),
                peer(6 - l - f, f, vec![deadly(f, 6 - l - f)]),
            ]),
        ),
        (
            "envelope to another node",
            follower,
            frames(&[hello(cid, l), peer(l, l, vec![deadly(l, l)])]),
        ),
        (
            "raft message to another node",
            follower,
            frames(&[hello(cid, l), peer(l, f, vec![deadly(6 - l - f, l)])]),
        ),
        (
            "raft message from another member",
            follower,
            frames(&[hello(cid, l), peer(l, f, vec![deadly(f, 6 - l - f)])]),
        ),
        (
            "garbage raft message after a good one",
            follower,
            frames(&[
                hello(cid, l),
                peer(
                    l,
                    f,
                    vec![
                        raft_message(MSG_APPEND, f, l, term, 0),
                        Bytes::from_static(b"\xff\xff\xff\xff\x0f"),
                    ],
                ),
            ]),
        ),
        (
            "local message type",
            follower,
            frames(&[
                hello(cid, l),
                peer(l, f, vec![raft_message(1, f, l, term, 0)]),
            ]),
        ),
        (
            "snapshot chunk without an offer",
            follower,
            frames(&[hello(cid, l), chunk(l, f, 0, vec![1; 100], false)]),
        ),
        (
            "snapshot offer carrying no snapshot",
            follower,
            frames(&[
                hello(cid, l),
                offer(l, f, raft_message(MSG_HEARTBEAT, f, l, term, 0), &[]),
            ]),
        ),
        (
            "snapshot offer of a file outside its directory",
            follower,
            frames(&[
                hello(cid, l),
                offer(l, f, snapshot_message(f, l, term, 5), &[("../../LOCK", 10)]),
            ]),
        ),
        (
            "snapshot chunks with a gap",
            follower,
            frames(&[
                hello(cid, l),
                offer(l, f, snapshot_message(f, l, term, 5), &[("a.sst", 400)]),
                chunk(l, f, 0, vec![1; 100], false),
                chunk(l, f, 200, vec![1; 100], false),
            ]),
        ),
        (
            "snapshot chunk from a non-member on a member's connection",
            follower,
            frames(&[hello(cid, l), chunk(9, f, 0, vec![1; 100], false)]),
        ),
        (
            "frame at the limit, no handshake",
            leader,
            peer_of_length(f, l, LIMIT),
        ),
        (
            "frame at the limit, garbage raft message",
            follower,
            [frames(&[hello(cid, l)]), peer_of_length(l, f, LIMIT)].concat(),
        ),
        (
            "frame just over the limit",
            follower,
            [frames(&[hello(cid, l)]), peer_of_length(l, f, LIMIT + 1)].concat(),
        ),
    ];
    for (i, (name, target, bytes)) in attacks.iter().enumerate() {
        let addr = &c.nodes[*target].listen;
        assert!(
            closed_after(addr, bytes, Duration::from_secs(5)).await,
            "{name}: the connection was left open"
        );
        let value = i.to_string();
        client
            .put("k", &value)
            .await
            .unwrap_or_else(|e| panic!("{name}: write failed: {e}; logs:\n{}", c.logs()));
        assert_eq!(
            client.get("k").await.expect("get"),
            Some(Bytes::from(value)),
            "{name}"
        );
    }
    for i in 0..3 {
        let s = client
            .status(&c.nodes[i].listen)
            .await
            .unwrap_or_else(|e| panic!("node {} stopped serving: {e}", i + 1));
        assert!(s.term < 1_000_000, "node {} took a forged term", i + 1);
    }
    let logs = c.logs();
    assert!(!logs.contains("panicked"), "a node panicked; logs:\n{logs}");
    for n in &mut c.nodes {
        assert!(n.is_running(), "node {} exited; logs:\n{logs}", n.id);
        let pid = n.child.as_ref().expect("running").id();
        match peak_rss_kib(pid) {
            Some(kib) => eprintln!("node {} peak RSS (VmHWM): {kib} KiB", n.id),
            None => eprintln!("node {} peak RSS: /proc/{pid}/status unreadable", n.id),
        }
    }
}
