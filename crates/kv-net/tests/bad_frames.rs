//! Oversized, truncated and garbage frames close only their own connection.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{MemKv, Server, bounded, get, get_value, put};
use kv_net::{ClientConn, Options};
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

const MAX: usize = 64 << 10;

fn options() -> Options {
    Options {
        max_frame_length: MAX,
        snapshot_chunk_size: 1024,
        ..Options::default()
    }
}

/// Reads until the server closes the connection; true when it did within
/// the bound (EOF or reset).
async fn closed_by_server(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => {} // a response to a garbage frame that parsed
        }
    }
}

async fn healthy(addr: &str, conn: &ClientConn, i: usize) {
    let key = format!("h{i}");
    conn.call(put(&key, "v"))
        .await
        .expect("existing client affected");
    assert_eq!(
        get_value(&conn.call(get(&key)).await.unwrap()),
        Some("v".into())
    );
    let fresh = ClientConn::connect(addr, &Options::default())
        .await
        .unwrap();
    assert_eq!(
        get_value(&fresh.call(get(&key)).await.unwrap()),
        Some("v".into())
    );
}

static PANICS: AtomicUsize = AtomicUsize::new(0);

fn count_panics() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.fetch_add(1, Ordering::SeqCst);
        default(info);
    }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_frames_close_the_connection_only() {
    count_panics();
    bounded(async {
        let server = Server::start(Arc::new(MemKv::default()), options()).await;
        let addr = server.addr.to_string();
        let client = ClientConn::connect(&addr, &Options::default())
            .await
            .unwrap();
        healthy(&addr, &client, 0).await;

        for len in [u32::MAX, MAX as u32 + 1] {
            let mut s = TcpStream::connect(&addr).await.unwrap();
            s.write_all(&len.to_be_bytes()).await.unwrap();
            // Some bytes of the body; the server must not wait for the rest.
            let _ = s.write_all(&[0u8; 100]).await;
            assert!(closed_by_server(&mut s).await, "len {len}: not closed");
            healthy(&addr, &client, len as usize).await;
        }

        // A frame of exactly the maximum is accepted (it does not parse as
        // a request here, so it is answered by closing, after it was read).
        let mut s = TcpStream::connect(&addr).await.unwrap();
        s.write_all(&(MAX as u32).to_be_bytes()).await.unwrap();
        s.write_all(&vec![0xFFu8; MAX]).await.unwrap();
        assert!(closed_by_server(&mut s).await);

        // The client refuses to send an oversized request: definite failure.
        let small = ClientConn::connect(&addr, &options()).await.unwrap();
        let mut req = put("big", "");
        req.mut_put().value = vec![1u8; MAX].into();
        let err = small.call(req).await.unwrap_err();
        assert!(
            matches!(err, kv_net::Error::FrameTooLarge { .. }),
            "{err:?}"
        );
        assert!(!err.outcome_unknown());
        assert!(small.call(put("after", "1")).await.unwrap().has_put());
        healthy(&addr, &client, 1).await;
        server.stop().await;
    })
    .await;
    assert_eq!(PANICS.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_and_garbage_frames_do_not_disturb_others() {
    count_panics();
    bounded(async {
        let server = Server::start(Arc::new(MemKv::default()), options()).await;
        let addr = server.addr.to_string();
        let client = ClientConn::connect(&addr, &Options::default())
            .await
            .unwrap();

        // Truncated: the connection ends in the middle of a frame.
        for cut in [1usize, 3, 4, 10, 50] {
            let mut s = TcpStream::connect(&addr).await.unwrap();
            let mut bytes = 100u32.to_be_bytes().to_vec();
            bytes.extend_from_slice(&[7u8; 100]);
            s.write_all(&bytes[..cut]).await.unwrap();
            s.shutdown().await.unwrap();
            assert!(closed_by_server(&mut s).await);
        }
        healthy(&addr, &client, 0).await;

        // 1000 garbage frames, 8 connections at a time, while a well-behaved
        // client keeps working.
        let background = {
            let client = client.clone();
            let addr = addr.clone();
            tokio::spawn(async move {
                for i in 0..100 {
                    healthy(&addr, &client, 1000 + i).await;
                }
            })
        };
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x5EED);
        let mut tasks = JoinSet::new();
        for _ in 0..1000 {
            let len = rng.gen_range(0..300usize);
            let mut body = vec![0u8; len];
            rng.fill(&mut body[..]);
            // Mostly honest lengths; sometimes a lie in either direction.
            let claimed = match rng.gen_range(0..10) {
                0 => rng.gen_range(0..=MAX as u32),
                1 => len.saturating_sub(1) as u32,
                _ => len as u32,
            };
            let mut bytes = claimed.to_be_bytes().to_vec();
            bytes.extend_from_slice(&body);
            if tasks.len() >= 8 {
                tasks.join_next().await.unwrap().unwrap();
            }
            let addr = addr.clone();
            tasks.spawn(async move {
                let mut s = TcpStream::connect(&addr).await.unwrap();
                let _ = s.write_all(&bytes).await;
                let _ = s.shutdown().await;
                assert!(
                    closed_by_server(&mut s).await,
                    "garbage connection left open"
                );
            });
        }
        while let Some(done) = tasks.join_next().await {
            done.unwrap();
        }
        background.await.unwrap();
        healthy(&addr, &client, 1).await;
        server.stop().await;
    })
    .await;
    assert_eq!(PANICS.load(Ordering::SeqCst), 0);
}
