//! Graceful shutdown: in-flight requests finish, new connections are refused.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{MemKv, Server, bounded, put};
use kv_net::{ClientConn, Options};
use tokio::task::JoinSet;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_requests_finish_and_new_connections_are_refused() {
    bounded(async {
        let service = Arc::new(MemKv {
            fixed_delay: Some(Duration::from_millis(300)),
            ..MemKv::default()
        });
        let mut server = Server::start(service.clone(), Options::default()).await;
        let addr = server.addr.to_string();
        let conn = ClientConn::connect(&addr, &Options::default())
            .await
            .unwrap();
        let mut calls = JoinSet::new();
        for i in 0..20 {
            let conn = conn.clone();
            calls.spawn(async move { conn.call(put(&format!("k{i}"), "v")).await });
        }
        // Let the requests reach the service, then shut down.
        let deadline = Instant::now() + Duration::from_secs(5);
        while service.in_flight.load(std::sync::atomic::Ordering::SeqCst) < 20 {
            assert!(Instant::now() < deadline, "requests never arrived");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        server.signal_stop();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            ClientConn::connect(&addr, &Options::default())
                .await
                .is_err(),
            "a connection was accepted during shutdown"
        );
        while let Some(done) = calls.join_next().await {
            assert!(done.unwrap().expect("in-flight request failed").has_put());
        }
        assert_eq!(service.map.lock().unwrap().len(), 20);
        server.join().await;

        // After shutdown the connection is closed: a new call is not sent.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !conn.is_closed() {
            assert!(Instant::now() < deadline, "connection left open");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let err = conn.call(put("late", "v")).await.unwrap_err();
        assert!(matches!(err, kv_net::Error::NotSent(_)), "{err:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_is_bounded_by_the_grace_period() {
    bounded(async {
        let service = Arc::new(MemKv {
            fixed_delay: Some(Duration::from_millis(1)),
            ..MemKv::default()
        });
        let options = Options {
            shutdown_grace: Duration::from_millis(300),
            ..Options::default()
        };
        let server = Server::start(service.clone(), options).await;
        let conn = ClientConn::connect(&server.addr.to_string(), &Options::default())
            .await
            .unwrap();
        // This one takes 10 s: the server gives up on it after the grace.
        let slow = tokio::spawn({
            let conn = conn.clone();
            async move { conn.call(put("slow", "v")).await }
        });
        while service.in_flight.load(std::sync::atomic::Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let started = Instant::now();
        server.stop().await;
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
        let err = slow.await.unwrap().unwrap_err();
        assert!(err.outcome_unknown(), "{err:?}");
    })
    .await;
}
