//! A counter incremented with compare-and-swap by concurrent clients while
//! the leader is SIGKILLed: the final value equals the acknowledged
//! increments (plus at most the increments whose outcome was reported
//! unknown). A retried CAS applied twice, or a compare failure reported for
//! an attempt that took effect, would break the equation.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use kv_client::CasOutcome;

use crate::common::{Cluster, serial};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cas_increments_are_exact_across_a_leader_kill() {
    let _serial = serial();
    let mut c = Cluster::new(3, &[]);
    c.start_all();
    let old = c.wait_leader(Duration::from_secs(20)).await;
    let setup = c.client(Duration::from_secs(5));
    setup.put("counter", "0").await.expect("init");

    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let unknown = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let client = c.client(Duration::from_secs(10));
        let (stop, acked, unknown) = (stop.clone(), acked.clone(), unknown.clone());
        tasks.spawn(async move {
            for _ in 0..1_000_000 {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(Some(current)) = client.get("counter").await else {
                    continue;
                };
                let n: u64 = std::str::from_utf8(&current)
                    .expect("utf-8")
                    .parse()
                    .expect("number");
                match client
                    .cas("counter", Some(current.as_ref()), (n + 1).to_string())
                    .await
                {
                    Ok(CasOutcome::Swapped) => {
                        acked.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(CasOutcome::Failed { .. }) => {}
                    Err(e) if e.is_definite() => {}
                    Err(_) => {
                        unknown.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }
        });
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    c.nodes[old].kill();
    let survivors: Vec<usize> = (0..3).filter(|&i| i != old).collect();
    c.wait_leader_among(&survivors, Duration::from_secs(20))
        .await;
    let at_kill = acked.load(Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(20);
    while acked.load(Ordering::SeqCst) < at_kill + 100 {
        assert!(Instant::now() < deadline, "increments did not resume");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::SeqCst);
    while let Some(r) = tasks.join_next().await {
        r.expect("task");
    }
    let value: u64 = std::str::from_utf8(&setup.get("counter").await.expect("get").expect("set"))
        .expect("utf-8")
        .parse()
        .expect("number");
    let (acked, unknown) = (acked.load(Ordering::SeqCst), unknown.load(Ordering::SeqCst));
    println!("cas counter: value {value}, acknowledged {acked}, unknown {unknown}");
    assert!(
        value >= acked && value <= acked + unknown,
        "counter {value} vs {acked} acknowledged and {unknown} unknown increments"
    );
}
