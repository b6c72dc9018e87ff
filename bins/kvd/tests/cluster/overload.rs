//! Overload: a leader offered far more writes than it can commit refuses
//! the excess at once with a definite UNAVAILABLE, before proposing it,
//! instead of letting requests time out after proposing them (an unknown
//! outcome). Every acknowledged write is readable afterwards and no write
//! refused as definite was applied.

use std::collections::BTreeSet;
use std::time::Duration;

use bytes::Bytes;
use kv_client::RangeQuery;
use kv_net::proto::{self, ErrorCode, Request, response};
use kv_net::{ClientConn, Options};
use tokio::task::JoinSet;

use crate::common::{Cluster, serial};

/// Connections flooding the leader, and writes in flight on each.
const CONNECTIONS: usize = 16;
const IN_FLIGHT: usize = 200;
const WRITES_PER_CONNECTION: usize = 1000;

#[derive(Debug, Default)]
struct Tally {
    acked: Vec<String>,
    overloaded: Vec<String>,
    unknown: Vec<(String, String)>,
    other: Vec<(String, String)>,
}

fn put(key: &str) -> Request {
    let mut p = proto::Put::new();
    p.key = Bytes::copy_from_slice(key.as_bytes());
    p.value = Bytes::from(vec![b'v'; 1024]);
    let mut r = Request::new();
    r.set_put(p);
    r
}

/// A put of 8 KiB that tells the node how long its client waits.
fn put_within(key: &str, budget: Duration) -> Request {
    let mut r = put(key);
    r.mut_put().value = Bytes::from(vec![b'w'; 8 << 10]);
    r.timeout_ms = u32::try_from(budget.as_millis()).expect("small budget");
    r
}

/// One connection's share: `WRITES_PER_CONNECTION` distinct keys, at most
/// `IN_FLIGHT` at a time.
async fn flood(addr: String, conn_no: usize) -> Tally {
    let conn = ClientConn::connect(&addr, &Options::default())
        .await
        .expect("connect to the leader");
    let mut tally = Tally::default();
    let mut calls = JoinSet::new();
    for i in 0..WRITES_PER_CONNECTION {
        while calls.len() >= IN_FLIGHT {
            record(&mut tally, calls.join_next().await);
        }
        let (conn, key) = (conn.clone(), format!("ov/{conn_no:02}/{i:05}"));
        calls.spawn(async move {
            // Far beyond the server's own request timeout: only a hung
            // request ends here.
            let r = tokio::time::timeout(Duration::from_secs(30), conn.call(put(&key))).await;
            (key, r)
        });
    }
    while let Some(done) = calls.join_next().await {
        record(&mut tally, Some(done));
    }
    tally
}

type Done = (
    String,
    Result<kv_net::Result<proto::Response>, tokio::time::error::Elapsed>,
);

fn record(tally: &mut Tally, done: Option<Result<Done, tokio::task::JoinError>>) {
    let Some(Ok((key, result))) = done else {
        panic!("a write task failed");
    };
    match result {
        Err(_) => tally.unknown.push((key, "no answer within 30 s".into())),
        Ok(Err(e)) => tally.unknown.push((key, e.to_string())),
        Ok(Ok(resp)) => match resp.result {
            Some(response::Result::Put(_)) => tally.acked.push(key),
            Some(response::Result::Error(e)) => {
                let code = e.code.enum_value().unwrap_or(ErrorCode::UNKNOWN);
                if e.outcome_unknown || code == ErrorCode::TIMEOUT {
                    tally
                        .unknown
                        .push((key, format!("{code:?}: {}", e.message)));
                } else if code == ErrorCode::UNAVAILABLE && e.message.contains("overloaded") {
                    tally.overloaded.push(key);
                } else {
                    tally.other.push((key, format!("{code:?}: {}", e.message)));
                }
            }
            other => tally
                .other
                .push((key, format!("unexpected answer {other:?}"))),
        },
    }
}

/// Acknowledged writes (keys under `prefix`) are all there; the ones
/// refused as definite never applied.
async fn assert_outcomes_hold(c: &Cluster, prefix: &'static [u8], all: &Tally) {
    let reader = c.client(Duration::from_secs(20));
    let present: BTreeSet<String> = reader
        .range(&RangeQuery {
            prefix: Bytes::from_static(prefix),
            keys_only: true,
            ..RangeQuery::default()
        })
        .await
        .expect("range over the written keys")
        .into_iter()
        .map(|(k, _)| String::from_utf8_lossy(&k).into_owned())
        .collect();
    let lost: Vec<&String> = all.acked.iter().filter(|k| !present.contains(*k)).collect();
    assert!(lost.is_empty(), "acknowledged writes missing: {lost:?}");
    let applied: Vec<&String> = all
        .overloaded
        .iter()
        .filter(|k| present.contains(*k))
        .collect();
    assert!(
        applied.is_empty(),
        "writes refused as definite were applied: {applied:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_is_refused_definitely_before_proposing() {
    let _serial = serial();
    let mut c = Cluster::new(3, &["--max-pending-writes", "256"]);
    c.start_all();
    let leader = c.wait_leader(Duration::from_secs(20)).await;
    let addr = c.nodes[leader].listen.clone();

    let mut floods = JoinSet::new();
    for n in 0..CONNECTIONS {
        floods.spawn(flood(addr.clone(), n));
    }
    let mut all = Tally::default();
    while let Some(t) = floods.join_next().await {
        let t = t.expect("flood task");
        all.acked.extend(t.acked);
        all.overloaded.extend(t.overloaded);
        all.unknown.extend(t.unknown);
        all.other.extend(t.other);
    }
    eprintln!(
        "acked {}, refused as overloaded {}, unknown {}, other {}",
        all.acked.len(),
        all.overloaded.len(),
        all.unknown.len(),
        all.other.len()
    );
    assert!(
        all.unknown.is_empty(),
        "{} writes ended with an unknown outcome, e.g. {:?}",
        all.unknown.len(),
        all.unknown.first()
    );
    assert!(
        all.other.is_empty(),
        "unexpected answers, e.g. {:?}",
        all.other.first()
    );
    assert!(
        !all.overloaded.is_empty(),
        "{} writes in flight against a budget of 256, and not one was refused",
        CONNECTIONS * IN_FLIGHT
    );
    assert!(
        all.acked.len() >= 200,
        "only {} writes acknowledged",
        all.acked.len()
    );

    assert_outcomes_hold(&c, b"ov/", &all).await;
    for n in &mut c.nodes {
        assert_eq!(n.stop(), Some(0), "node {} exit code", n.id);
    }
}

/// Time a flooding client gives each write in the deadline test.
const BUDGET: Duration = Duration::from_millis(400);

/// Floods like [`flood`], each write telling the node it has [`BUDGET`];
/// returns the tally and the writes answered after the budget ran out.
async fn flood_within(addr: String, conn_no: usize) -> (Tally, usize) {
    let conn = ClientConn::connect(&addr, &Options::default())
        .await
        .expect("connect to the leader");
    let mut tally = Tally::default();
    let mut late = 0;
    let mut calls = JoinSet::new();
    for i in 0..WRITES_PER_CONNECTION {
        while calls.len() >= IN_FLIGHT {
            let (done, was_late) = calls.join_next().await.expect("a call").expect("join");
            late += usize::from(was_late);
            record(&mut tally, Some(Ok(done)));
        }
        let (conn, key) = (conn.clone(), format!("dl/{conn_no:02}/{i:05}"));
        calls.spawn(async move {
            let start = tokio::time::Instant::now();
            let r =
                tokio::time::timeout(Duration::from_secs(30), conn.call(put_within(&key, BUDGET)))
                    .await;
            let was_late = start.elapsed() > BUDGET;
            ((key, r), was_late)
        });
    }
    while let Some(done) = calls.join_next().await {
        let (done, was_late) = done.expect("join");
        late += usize::from(was_late);
        record(&mut tally, Some(Ok(done)));
    }
    (tally, late)
}

/// The node answers within the time the client says it waits: a write
/// that waited in the queue for half of that time is refused (definite)
/// instead of being proposed with too little time left to commit, and no
/// answer comes after the client would have given up. The queue-wait
/// limit is lifted here so that only the client's time bounds the wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_are_answered_within_the_time_their_client_waits() {
    let _serial = serial();
    let mut c = Cluster::new(
        3,
        &[
            "--max-write-queue-wait-ms",
            "60000",
            "--max-pending-writes",
            "100000",
            "--max-proposals-in-flight",
            "1",
        ],
    );
    c.start_all();
    let leader = c.wait_leader(Duration::from_secs(20)).await;
    let addr = c.nodes[leader].listen.clone();
    let mut floods = JoinSet::new();
    for n in 0..CONNECTIONS {
        floods.spawn(flood_within(addr.clone(), n));
    }
    let (mut all, mut late) = (Tally::default(), 0);
    while let Some(t) = floods.join_next().await {
        let (t, l) = t.expect("flood task");
        late += l;
        all.acked.extend(t.acked);
        all.overloaded.extend(t.overloaded);
        all.unknown.extend(t.unknown);
        all.other.extend(t.other);
    }
    eprintln!(
        "within {BUDGET:?}: acked {}, refused {}, unknown {}, other {}, answered late {late}",
        all.acked.len(),
        all.overloaded.len(),
        all.unknown.len(),
        all.other.len()
    );
    assert!(
        !all.overloaded.is_empty(),
        "no write was refused for its client's time"
    );
    assert!(
        all.other.is_empty(),
        "unexpected answers, e.g. {:?}",
        all.other.first()
    );
    // Slack for scheduling on a loaded machine: the node keeps a margin of
    // a tenth of the budget; an answer a whole budget late means the node
    // ignored it.
    assert!(
        late * 100 <= CONNECTIONS * WRITES_PER_CONNECTION,
        "{late} writes answered after their client's {BUDGET:?}"
    );
    assert_outcomes_hold(&c, b"dl/", &all).await;
    for n in &mut c.nodes {
        assert_eq!(n.stop(), Some(0), "node {} exit code", n.id);
    }
}
