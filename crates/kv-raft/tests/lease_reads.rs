//! `Options::lease_reads`: the leader answers reads alone while its lease
//! holds, and stops before the other side of a partition can elect a
//! leader and write.
mod common;

use std::time::{Duration, Instant};

use common::{Cluster, Faults};

fn lease_options() -> kv_raft::Options {
    kv_raft::Options {
        // Election timeout 400-800 ms; the lease 220 ms.
        tick_interval: Duration::from_millis(20),
        election_ticks: 20,
        heartbeat_ticks: 2,
        lease_reads: true,
        read_timeout: Duration::from_millis(300),
        ..common::test_options()
    }
}

#[test]
fn an_isolated_leader_reads_alone_only_until_another_could_be_elected() {
    let seed = common::seed();
    let ids = [1, 2, 3];
    let opts = lease_options();
    let lease = opts.lease();
    let mut c = Cluster::new(&ids, opts, seed, Faults::NONE);
    let leader = c.wait_leader(Duration::from_secs(10)).expect("leader");
    c.propose(b"first", Duration::from_secs(5)).expect("write");
    let h = c.handle(leader);
    // A read round gives the leader its lease.
    h.read_index().wait().expect("read");
    h.read_index().wait().expect("read");

    let cut_at = Instant::now();
    c.net.isolate(leader, &ids);
    // Without a quorum, a read can only be answered from the lease.
    h.read_index()
        .wait_timeout(Duration::from_millis(100))
        .ok()
        .expect("answered at once")
        .expect("a read from the lease");
    // Keep reading until the lease ends; note the last success.
    let mut last_ok = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        match h.read_index().wait_timeout(Duration::from_secs(2)) {
            Ok(Ok(_)) => last_ok = Instant::now(),
            Ok(Err(_)) => break,
            Err(_) => panic!("a read did not resolve"),
        }
        assert!(Instant::now() < deadline, "the lease never ended");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(
        last_ok.duration_since(cut_at) <= lease + Duration::from_millis(50),
        "lease reads went on for {:?} after the cut (lease {lease:?})",
        last_ok.duration_since(cut_at)
    );
    // The other side elects a leader of its own, never earlier than the old
    // lease ended.
    let others: Vec<u64> = ids.iter().copied().filter(|&i| i != leader).collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    let new = loop {
        let s = c.handle(others[0]).status().wait().expect("status");
        if let Some(l) = s.leader_id.filter(|&l| l != leader) {
            break l;
        }
        assert!(Instant::now() < deadline, "no new leader");
        std::thread::sleep(Duration::from_millis(5));
    };
    let elected_after = cut_at.elapsed();
    assert!(others.contains(&new));
    assert!(
        elected_after > last_ok.duration_since(cut_at),
        "a leader was elected while the old one still read from its lease"
    );
    c.net.heal();
    // The old leader may still count itself leader until it hears the new
    // term; a proposal it takes before then is lost with an unknown
    // outcome (correctly), so write once it follows the new leader.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = h.status().wait().expect("status");
        if s.leader_id == Some(new) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the old leader never followed the new one: {s:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    c.propose(b"after", Duration::from_secs(10))
        .expect("write after heal");
    c.wait_converged(Duration::from_secs(10));
    c.check();
    c.shutdown();
}

#[test]
fn without_the_flag_an_isolated_leader_reads_nothing() {
    let seed = common::seed();
    let ids = [1, 2, 3];
    let opts = kv_raft::Options {
        lease_reads: false,
        ..lease_options()
    };
    let mut c = Cluster::new(&ids, opts, seed, Faults::NONE);
    let leader = c.wait_leader(Duration::from_secs(10)).expect("leader");
    c.propose(b"first", Duration::from_secs(5)).expect("write");
    let h = c.handle(leader);
    h.read_index().wait().expect("read");
    c.net.isolate(leader, &ids);
    let read = h
        .read_index()
        .wait_timeout(Duration::from_secs(2))
        .ok()
        .expect("resolves");
    assert!(
        read.is_err(),
        "an isolated leader served a read without a lease"
    );
    c.net.heal();
    c.wait_converged(Duration::from_secs(10));
    c.check();
    c.shutdown();
}
