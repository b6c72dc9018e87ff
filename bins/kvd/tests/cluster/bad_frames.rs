//! Oversized, truncated and random frames sent to a node neither crash it
//! nor disturb other clients.

use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::{Cluster, serial};

/// Sends `bytes`, then waits (bounded) for the node to close the
/// connection or for `linger` to pass.
async fn send_raw(addr: &str, bytes: &[u8], linger: Duration) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let _ = s.write_all(bytes).await;
    let mut buf = [0u8; 1024];
    let deadline = Instant::now() + linger;
    while Instant::now() < deadline {
        match tokio::time::timeout_at(deadline.into(), s.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) | Err(_) => break,
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_frames_do_not_hurt_the_node_or_other_clients() {
    let _serial = serial();
    let mut c = Cluster::new(3, &[]);
    c.start_all();
    let leader = c.wait_leader(Duration::from_secs(20)).await;
    let client = c.client(Duration::from_secs(5));
    client.put("steady", "0").await.expect("put");

    // A well-behaved client keeps working throughout.
    let steady = {
        let client = client.clone();
        tokio::spawn(async move {
            for i in 0..200 {
                client
                    .put("steady", i.to_string())
                    .await
                    .expect("steady put");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let mut rng_state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut random = |n: usize| -> Vec<u8> {
        (0..n)
            .map(|_| {
                rng_state ^= rng_state << 13;
                rng_state ^= rng_state >> 7;
                rng_state ^= rng_state << 17;
                rng_state as u8
            })
            .collect()
    };
    for target in [leader, (leader + 1) % 3] {
        let addr = c.nodes[target].listen.clone();
        let linger = Duration::from_millis(500);
        // Oversized: a length prefix far above the 16 MiB limit.
        send_raw(&addr, &[0xff, 0xff, 0xff, 0xf0, 1, 2, 3], linger).await;
        send_raw(&addr, &(17u32 << 20).to_be_bytes(), linger).await;
        // Truncated: a frame that promises more than it sends.
        let mut t = 100u32.to_be_bytes().to_vec();
        t.extend_from_slice(&[8, 1, 18, 3]);
        send_raw(&addr, &t, Duration::from_millis(100)).await;
        // Random frames with valid lengths, and raw noise.
        for n in [1usize, 7, 64, 1000, 4096] {
            let mut f = u32::try_from(n).expect("small").to_be_bytes().to_vec();
            f.extend(random(n));
            send_raw(&addr, &f, Duration::from_millis(100)).await;
            send_raw(&addr, &random(n), Duration::from_millis(100)).await;
        }
        // An empty frame and a frame that is a bare response.
        send_raw(&addr, &[0, 0, 0, 0], Duration::from_millis(100)).await;
        send_raw(&addr, &[0, 0, 0, 2, 0x12, 0x00], Duration::from_millis(100)).await;
    }
    tokio::time::timeout(Duration::from_secs(30), steady)
        .await
        .expect("steady client finished in time")
        .expect("steady client succeeded");
    let logs = c.logs();
    for n in &mut c.nodes {
        assert!(n.is_running(), "node {} died; logs:\n{logs}", n.id);
    }
    assert_eq!(
        client.get("steady").await.expect("get"),
        Some(Bytes::from_static(b"199"))
    );
    for i in 0..3 {
        client.status(&c.nodes[i].listen).await.expect("status");
    }
}
