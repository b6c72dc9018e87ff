//! `max_connections` caps the connections served at once.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{MemKv, Server, bounded, put};
use kv_net::{ClientConn, Options};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_cap_wait_for_a_free_slot() {
    bounded(async {
        let options = Options {
            max_connections: Some(2),
            ..Options::default()
        };
        let server = Server::start(Arc::new(MemKv::default()), options).await;
        let addr = server.addr.to_string();
        let a = ClientConn::connect(&addr, &Options::default())
            .await
            .unwrap();
        let b = ClientConn::connect(&addr, &Options::default())
            .await
            .unwrap();
        assert!(a.call(put("a", "1")).await.unwrap().has_put());
        assert!(b.call(put("b", "1")).await.unwrap().has_put());

        // The third connection is only in the kernel's backlog: not served.
        let c = ClientConn::connect(&addr, &Options::default())
            .await
            .unwrap();
        let waiting = tokio::time::timeout(Duration::from_millis(200), c.call(put("c", "1"))).await;
        assert!(waiting.is_err(), "served over the cap");

        // Closing one frees a slot for it.
        drop(a);
        let served = tokio::time::timeout(Duration::from_secs(5), c.call(put("c", "2"))).await;
        assert!(
            served
                .expect("not served after a slot freed")
                .unwrap()
                .has_put()
        );
        server.stop().await;
    })
    .await;
}
