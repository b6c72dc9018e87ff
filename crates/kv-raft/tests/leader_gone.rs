//! `Handle::leader_gone`: a follower told that its leader's process is gone
//! elects a new leader at once instead of after an election timeout, and
//! the same news about a leader that is alive disrupts nothing.
mod common;

use std::time::{Duration, Instant};

use common::{Cluster, Faults};
use kv_raft::Role;

/// An election timeout of 3–6 s: any failover faster than that came from
/// the news, not from a timer.
fn slow_election_options() -> kv_raft::Options {
    kv_raft::Options {
        election_ticks: 300,
        heartbeat_ticks: 2,
        ..common::test_options()
    }
}

fn term_of(c: &Cluster, id: u64) -> u64 {
    c.handle(id).status().wait().expect("status").term
}

#[test]
fn followers_told_the_leader_is_gone_elect_a_new_one_at_once() {
    let seed = common::seed();
    let ids = [1, 2, 3];
    let mut c = Cluster::new(&ids, slow_election_options(), seed, Faults::NONE);
    // The first election need not wait for the slow timer.
    let _ = c.handle(1).campaign().wait();
    let leader = c
        .wait_leader(Duration::from_secs(20))
        .expect("first leader");
    c.propose(b"before", Duration::from_secs(5)).expect("write");
    let before = term_of(&c, leader);

    c.stop(leader);
    let started = Instant::now();
    for id in ids.iter().filter(|&&i| i != leader) {
        c.handle(*id).leader_gone(leader);
    }
    let new = c.wait_leader(Duration::from_secs(2)).expect("a new leader");
    let took = started.elapsed();
    assert_ne!(new, leader);
    assert!(term_of(&c, new) > before);
    // Far below the 3 s minimum election timeout (with room for a slow
    // machine).
    assert!(took < Duration::from_millis(1500), "failover took {took:?}");
    c.propose(b"after", Duration::from_secs(5))
        .expect("write after failover");
    c.wait_converged(Duration::from_secs(10));
    c.check();
    c.shutdown();
}

#[test]
fn news_of_a_live_leader_changes_nothing() {
    let seed = common::seed();
    let ids = [1, 2, 3];
    let mut c = Cluster::new(&ids, slow_election_options(), seed, Faults::NONE);
    // The first election need not wait for the slow timer.
    let _ = c.handle(1).campaign().wait();
    let leader = c.wait_leader(Duration::from_secs(20)).expect("leader");
    let before = term_of(&c, leader);
    // Only the first of the followers hears the (wrong) news: the other
    // still hears the leader and ignores the campaign.
    let first = *ids.iter().filter(|&&i| i != leader).min().unwrap();
    c.handle(first).leader_gone(leader);
    // Not a leader at all: ignored.
    c.handle(leader).leader_gone(leader);
    std::thread::sleep(Duration::from_millis(500));
    for id in ids {
        let s = c.handle(id).status().wait().expect("status");
        assert_eq!(s.term, before, "node {id} moved to another term");
        assert_eq!(s.role == Role::Leader, id == leader, "node {id}");
    }
    c.propose(b"still", Duration::from_secs(5)).expect("write");
    c.wait_converged(Duration::from_secs(10));
    c.check();
    c.shutdown();
}
