//! `ClientConn` failure reporting: not sent vs. lost after send; no leaks.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{MemKv, Server, bounded, put};
use kv_net::{ClientConn, Error, Options};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_failure_is_definite() {
    bounded(async {
        let addr = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let err = ClientConn::connect(&addr.to_string(), &Options::default())
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Connect { .. }), "{err:?}");
        assert!(!err.outcome_unknown());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_lost_after_send_is_unknown_for_every_pending_call() {
    bounded(async {
        let service = Arc::new(MemKv {
            fixed_delay: Some(Duration::from_secs(5)),
            ..MemKv::default()
        });
        let server = Server::start(service.clone(), Options::default()).await;
        let conn = ClientConn::connect(&server.addr.to_string(), &Options::default())
            .await
            .unwrap();
        let calls: Vec<_> = (0..10)
            .map(|i| {
                let conn = conn.clone();
                tokio::spawn(async move { conn.call(put(&format!("k{i}"), "v")).await })
            })
            .collect();
        while conn.pending() < 10
            || service.in_flight.load(std::sync::atomic::Ordering::SeqCst) < 10
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Kill the server without grace: connections drop.
        drop(server);
        for call in calls {
            let err = call.await.unwrap().unwrap_err();
            assert!(matches!(err, Error::ConnectionLost(_)), "{err:?}");
            assert!(err.outcome_unknown());
        }
        assert_eq!(conn.pending(), 0);
        assert!(conn.is_closed());
        let err = conn.call(put("x", "y")).await.unwrap_err();
        assert!(matches!(err, Error::NotSent(_)), "{err:?}");
        assert!(!err.outcome_unknown());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_gives_up_leaves_nothing_behind() {
    bounded(async {
        let service = Arc::new(MemKv {
            fixed_delay: Some(Duration::from_millis(200)),
            ..MemKv::default()
        });
        let server = Server::start(service, Options::default()).await;
        let conn = ClientConn::connect(&server.addr.to_string(), &Options::default())
            .await
            .unwrap();
        for i in 0..50 {
            let r = tokio::time::timeout(
                Duration::from_millis(10),
                conn.call(put(&format!("k{i}"), "v")),
            )
            .await;
            assert!(r.is_err());
        }
        assert_eq!(conn.pending(), 0);
        // Late responses to forgotten calls are ignored; the connection works.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(conn.call(put("ok", "v")).await.unwrap().has_put());
        assert!(!conn.is_closed());
        server.stop().await;
    })
    .await;
}
