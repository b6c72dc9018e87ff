//! Membership changes under load and a lossy network: add a learner,
//! promote it, add a voter, transfer leadership, remove the old leader.
mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Cluster, Faults};
use kv_raft::raft::eraftpb::ConfState;
use kv_raft::{Completion, Error, Handle, Role};

type Acked = Arc<Mutex<Vec<(u64, Vec<u8>)>>>;

/// Proposes continuously through whatever node says it leads.
fn load(handles: Arc<Mutex<Vec<Handle>>>, acked: Acked, stop: Arc<AtomicBool>) -> usize {
    let mut n = 0usize;
    let mut target = 0usize;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline && n < 20_000 {
        let hs = handles.lock().unwrap().clone();
        let h = &hs[target % hs.len()];
        n += 1;
        let cmd = format!("load-{n}").into_bytes();
        match h.propose(cmd.clone()).wait_timeout(Duration::from_secs(2)) {
            Ok(Ok(out)) => {
                let index = u64::from_le_bytes(out.try_into().unwrap());
                acked.lock().unwrap().push((index, cmd));
            }
            Ok(Err(Error::NotLeader { leader: Some(l) })) => {
                target = hs.iter().position(|h| h.id() == l).unwrap_or(target + 1);
            }
            _ => {
                target += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
    n
}

/// Runs a membership call on the leader until it succeeds.
fn on_leader(c: &Cluster, what: &str, op: impl Fn(&Handle) -> Completion<ConfState>) -> ConfState {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let Some(l) = c.wait_leader(Duration::from_secs(5)) else {
            continue;
        };
        match op(&c.handle(l)).wait_timeout(Duration::from_secs(5)) {
            Ok(Ok(cs)) => return cs,
            Ok(Err(e)) => eprintln!("{what}: {e}, retrying"),
            Err(_) => eprintln!("{what}: timed out, retrying"),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{what} did not succeed");
}

fn wait_caught_up(c: &Cluster, id: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let l = c.wait_leader(Duration::from_secs(5)).expect("leader");
        let ls = c.handle(l).status().wait().unwrap();
        let s = c.handle(id).status().wait().unwrap();
        if let Some(p) = ls.progress.get(&id)
            && p.matched + 20 >= ls.last_index
            && s.applied + 20 >= ls.commit
            && s.applied > 1
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("node {id} did not catch up");
}

#[test]
fn membership_changes_under_load() {
    let seed = common::seed();
    let opts = common::test_options();
    let mut c = Cluster::new(&[1, 2, 3], opts, seed, Faults::LOSSY);
    c.wait_leader(Duration::from_secs(10)).expect("leader");

    let handles = Arc::new(Mutex::new(c.handles()));
    let acked: Acked = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let loader = {
        let (h, a, s) = (handles.clone(), acked.clone(), stop.clone());
        std::thread::spawn(move || load(h, a, s))
    };
    std::thread::sleep(Duration::from_millis(300));

    // A learner joins, catches up (by log or snapshot), is promoted.
    c.start(4, &[], false);
    handles.lock().unwrap().push(c.handle(4));
    let cs = on_leader(&c, "add learner 4", |h| h.add_learner(4));
    assert!(cs.learners.contains(&4), "{cs:?}");
    wait_caught_up(&c, 4);
    let cs = on_leader(&c, "promote 4", |h| h.promote_learner(4));
    assert!(cs.voters.contains(&4), "{cs:?}");

    // A voter joins directly.
    c.start(5, &[], false);
    handles.lock().unwrap().push(c.handle(5));
    let cs = on_leader(&c, "add voter 5", |h| h.add_voter(5));
    assert!(cs.voters.contains(&5), "{cs:?}");
    wait_caught_up(&c, 5);

    // Move leadership off node 1, then remove it.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let l = c.wait_leader(Duration::from_secs(5)).expect("leader");
        if l != 1 {
            break;
        }
        assert!(Instant::now() < deadline, "leadership never left node 1");
        match c
            .handle(1)
            .transfer_leadership(2)
            .wait_timeout(Duration::from_secs(3))
        {
            Ok(r) => eprintln!("transfer to 2: {r:?}"),
            Err(_) => eprintln!("transfer to 2: no answer yet"),
        }
    }
    let cs = on_leader(&c, "remove 1", |h| h.remove_node(1));
    assert!(
        !cs.voters.contains(&1) && !cs.learners.contains(&1),
        "{cs:?}"
    );
    handles.lock().unwrap().retain(|h| h.id() != 1);
    std::thread::sleep(Duration::from_millis(200));
    c.stop(1);

    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let proposed = loader.join().unwrap();
    c.acked.extend(acked.lock().unwrap().drain(..));
    eprintln!("proposed {proposed}, acknowledged {}", c.acked.len());
    assert!(!c.acked.is_empty());

    c.wait_converged(Duration::from_secs(20));
    let l = c.wait_leader(Duration::from_secs(5)).expect("leader");
    let st = c.handle(l).status().wait().unwrap();
    assert_eq!(st.role, Role::Leader);
    assert_eq!(st.voters, vec![2, 3, 4, 5]);
    assert!(st.learners.is_empty());
    for id in [4, 5] {
        assert!(
            c.sms[&id].lock().unwrap().restores >= 1,
            "node {id} joined without a snapshot"
        );
    }
    c.check();
    c.shutdown();
}
