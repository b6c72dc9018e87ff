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

    // Acknowledged writes are all there; the refused ones never applied.
    let reader = c.client(Duration::from_secs(20));
    let present: BTreeSet<String> = reader
        .range(&RangeQuery {
            prefix: Bytes::from_static(b"ov/"),
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

    for n in &mut c.nodes {
        assert_eq!(n.stop(), Some(0), "node {} exit code", n.id);
    }
}
