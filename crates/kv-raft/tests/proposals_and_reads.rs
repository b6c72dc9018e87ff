//! Truthful proposal outcomes and linearizable reads.
mod common;

use std::time::Duration;

use common::{Cluster, Faults};
use kv_raft::Error;

#[test]
fn follower_rejects_definitely_and_reads_see_writes() {
    let seed = common::seed();
    let ids = [1, 2, 3];
    let mut c = Cluster::new(&ids, common::test_options(), seed, Faults::NONE);
    let leader = c.wait_leader(Duration::from_secs(10)).expect("leader");
    let follower = *ids.iter().find(|&&i| i != leader).unwrap();

    let err = c
        .handle(follower)
        .propose(b"x".to_vec())
        .wait()
        .unwrap_err();
    assert!(
        matches!(err, Error::NotLeader { leader: Some(l) } if l == leader),
        "{err}"
    );
    assert!(err.is_definite());

    for i in 0..10 {
        let index = c
            .propose(format!("w{i}").as_bytes(), Duration::from_secs(5))
            .unwrap();
        for id in ids {
            let ri = c.handle(id).read_index().wait().expect("read");
            assert!(ri >= index, "read index {ri} on {id} below write {index}");
            assert!(c.sms[&id].lock().unwrap().applied >= ri);
        }
    }
    // Many concurrent reads share rounds and all succeed.
    let reads: Vec<_> = (0..50).map(|i| c.handle(ids[i % 3]).read_index()).collect();
    for r in reads {
        r.wait().expect("batched read");
    }
    c.check();
    c.shutdown();
}

#[test]
fn isolated_leader_reports_unknown_outcome_and_fails_reads() {
    let seed = common::seed();
    let ids = [1, 2, 3];
    let mut c = Cluster::new(&ids, common::test_options(), seed, Faults::NONE);
    let leader = c.wait_leader(Duration::from_secs(10)).expect("leader");
    c.propose(b"first", Duration::from_secs(5)).unwrap();
    c.net.isolate(leader, &ids);
    let h = c.handle(leader);
    let p = h.propose(b"lost?".to_vec());
    let r = h.read_index();
    // check_quorum makes the old leader step down within ~2 election timeouts.
    let out = p
        .wait_timeout(Duration::from_secs(5))
        .ok()
        .expect("proposal resolves");
    match out {
        Err(e) => assert!(!e.is_definite(), "appended proposal reported definite: {e}"),
        Ok(_) => panic!("isolated leader applied a proposal"),
    }
    let read = r
        .wait_timeout(Duration::from_secs(5))
        .ok()
        .expect("read resolves");
    assert!(read.is_err(), "isolated leader served a read");
    c.net.heal();
    c.propose(b"after", Duration::from_secs(10)).unwrap();
    c.wait_converged(Duration::from_secs(10));
    c.check();
    c.shutdown();
}

#[test]
fn single_node_restarts_from_its_log() {
    let seed = common::seed();
    let mut c = Cluster::new(&[1], common::test_options(), seed, Faults::NONE);
    c.wait_leader(Duration::from_secs(10)).expect("leader");
    for i in 0..250 {
        c.propose(format!("v{i}").as_bytes(), Duration::from_secs(5))
            .unwrap();
    }
    let before = c.sms[&1].lock().unwrap().clone();
    c.restart(1, false);
    c.wait_leader(Duration::from_secs(10))
        .expect("leader after restart");
    let after = c.sms[&1].lock().unwrap().clone();
    assert!(after.applied >= before.applied);
    assert_eq!(&after.log[..before.log.len()], &before.log[..]);
    assert!(after.restores >= 1, "restart should restore the snapshot");
    c.propose(b"more", Duration::from_secs(5)).unwrap();
    c.check();
    c.shutdown();
}
