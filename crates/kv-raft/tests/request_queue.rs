//! The driver's request queue is bounded: while the driver thread is busy,
//! requests beyond `max_queued_requests` are refused at once with a
//! definite `Overloaded` instead of queueing without bound, and the queued
//! ones are served once it is free again.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kv_raft::raft::eraftpb::Message;
use kv_raft::{BoxError, Error, Node, Options, Role, StateMachine, Transport};

/// Applies commands; `block` waits until the test lets it go.
struct Gate {
    applied: u64,
    release: Arc<Mutex<mpsc::Receiver<()>>>,
    entered: mpsc::Sender<()>,
}

impl StateMachine for Gate {
    fn apply(&mut self, index: u64, _term: u64, command: &[u8]) -> Result<Vec<u8>, BoxError> {
        if command == b"block" {
            let _ = self.entered.send(());
            let _ = self
                .release
                .lock()
                .unwrap()
                .recv_timeout(Duration::from_secs(20));
        }
        self.applied = index;
        Ok(Vec::new())
    }

    fn applied_index(&self) -> u64 {
        self.applied
    }

    fn snapshot(&mut self) -> Result<Vec<u8>, BoxError> {
        Ok(Vec::new())
    }

    fn restore(&mut self, index: u64, _term: u64, _data: &[u8]) -> Result<(), BoxError> {
        self.applied = index;
        Ok(())
    }
}

struct Nowhere;

impl Transport for Nowhere {
    fn send(&mut self, _msgs: Vec<Message>) {}
}

#[test]
fn a_full_queue_refuses_definitely_and_drains_when_the_driver_is_free() {
    const CAPACITY: usize = 8;
    let dir = tempfile::tempdir().unwrap();
    let (release_tx, release_rx) = mpsc::channel();
    let (entered_tx, entered_rx) = mpsc::channel();
    let sm = Gate {
        applied: 0,
        release: Arc::new(Mutex::new(release_rx)),
        entered: entered_tx,
    };
    let opts = Options {
        tick_interval: Duration::from_millis(10),
        max_queued_requests: CAPACITY,
        ..Options::default()
    };
    let node = Node::start(1, dir.path(), &[1], opts, sm, Nowhere).unwrap();
    let h = node.handle();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !matches!(h.status().wait(), Ok(s) if s.role == Role::Leader) {
        assert!(Instant::now() < deadline, "no leader");
        let _ = h.campaign().wait();
        std::thread::sleep(Duration::from_millis(20));
    }

    // Park the driver thread inside apply.
    let blocked = h.propose(b"block".to_vec());
    entered_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the driver applies the blocking command");
    let calls: Vec<_> = (0..CAPACITY + 12).map(|_| h.status()).collect();
    let mut refused = 0;
    let mut pending = Vec::new();
    for c in calls {
        match c.wait_timeout(Duration::from_millis(50)) {
            Ok(Err(e)) => {
                assert!(matches!(e, Error::Overloaded), "{e}");
                assert!(e.is_definite());
                refused += 1;
            }
            Ok(Ok(_)) => panic!("served while the driver was parked"),
            Err(c) => pending.push(c),
        }
    }
    assert_eq!(refused, 12, "beyond the queue's {CAPACITY}");
    assert_eq!(pending.len(), CAPACITY);
    // A raft message finds the queue full too, and is dropped.
    assert!(matches!(h.step(Message::default()), Err(Error::Overloaded)));

    release_tx.send(()).unwrap();
    blocked.wait().expect("the blocking command completes");
    for c in pending {
        c.wait()
            .expect("a queued call is served once the driver is free");
    }
    node.shutdown().unwrap();
}
