//! Many requests in flight on one connection, answered out of order.

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{MemKv, Server, bounded, get, get_value, put};
use kv_net::{ClientConn, Options};
use tokio::task::JoinSet;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_requests_in_flight_answered_in_random_order() {
    bounded(async {
        let service = Arc::new(MemKv {
            max_delay: Some(Duration::from_millis(50)),
            ..MemKv::default()
        });
        let server = Server::start(service.clone(), Options::default()).await;
        let conn = ClientConn::connect(&server.addr.to_string(), &Options::default())
            .await
            .unwrap();
        const N: usize = 1000;
        for i in 0..N {
            service
                .map
                .lock()
                .unwrap()
                .insert(format!("k{i}").into(), format!("v{i}").into());
        }

        let mut calls = JoinSet::new();
        for i in 0..N {
            let conn = conn.clone();
            calls.spawn(async move {
                let resp = conn.call(get(&format!("k{i}"))).await.unwrap();
                (i, resp)
            });
        }
        let mut seen = vec![false; N];
        while let Some(joined) = calls.join_next().await {
            let (i, resp) = joined.unwrap();
            // The id was assigned by the connection; the value proves the
            // response was routed to the caller of this request.
            assert_eq!(get_value(&resp), Some(format!("v{i}").into()));
            assert!(!seen[i]);
            seen[i] = true;
        }
        assert!(seen.iter().all(|s| *s));
        assert_eq!(conn.pending(), 0);

        // The requests really overlapped and completed out of order.
        let max = service.max_in_flight.load(Ordering::SeqCst);
        assert!(max >= N / 2, "only {max} requests were in flight at once");
        let completed = service.completed.lock().unwrap().clone();
        assert_eq!(completed.len(), N);
        assert!(
            completed.windows(2).any(|w| w[0] > w[1]),
            "completed in order"
        );

        // Writes interleaved with reads on the same connection still work.
        conn.call(put("x", "y")).await.unwrap();
        assert_eq!(
            get_value(&conn.call(get("x")).await.unwrap()),
            Some("y".into())
        );
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_limit_applies_backpressure_without_losing_requests() {
    bounded(async {
        let service = Arc::new(MemKv {
            max_delay: Some(Duration::from_millis(5)),
            ..MemKv::default()
        });
        let options = Options {
            max_in_flight_per_connection: 8,
            ..Options::default()
        };
        let server = Server::start(service.clone(), options).await;
        let conn = ClientConn::connect(&server.addr.to_string(), &Options::default())
            .await
            .unwrap();
        let mut calls = JoinSet::new();
        for i in 0..200 {
            let conn = conn.clone();
            calls.spawn(async move { conn.call(put(&format!("k{i}"), "v")).await.unwrap() });
        }
        while let Some(resp) = calls.join_next().await {
            assert!(resp.unwrap().has_put());
        }
        assert!(service.max_in_flight.load(Ordering::SeqCst) <= 8);
        assert_eq!(service.map.lock().unwrap().len(), 200);
        server.stop().await;
    })
    .await;
}
