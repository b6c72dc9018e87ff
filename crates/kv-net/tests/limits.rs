//! Per-connection limits that hold under abuse: bytes in flight (requests a
//! client pipelines, responses it does not read) and the idle timeout, each
//! counted in the listener's [`kv_net::Counters`] when it triggers.

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use common::{MemKv, bounded, get, get_value, put};
use kv_net::proto::{Frame, Response, frame};
use kv_net::{ClientConn, Counters, FrameCodec, Listener, Options};
use protobuf::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;
use tokio::task::JoinSet;

/// A listener serving `service`, its counters, and a stop switch.
async fn serve(
    service: Arc<MemKv>,
    options: Options,
) -> (String, Arc<Counters>, oneshot::Sender<()>) {
    let listener = Listener::bind("127.0.0.1:0", options).await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let counters = listener.counters();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(listener.run(service, async move {
        let _ = stopped.await;
    }));
    (addr, counters, stop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_large_requests_are_held_to_the_bytes_in_flight_limit() {
    bounded(async {
        let service = Arc::new(MemKv {
            fixed_delay: Some(Duration::from_millis(100)),
            ..MemKv::default()
        });
        let options = Options {
            max_bytes_in_flight_per_connection: 1 << 20,
            ..Options::default()
        };
        let (addr, counters, stop) = serve(service.clone(), options).await;
        let conn = ClientConn::connect(&addr, &Options::default())
            .await
            .expect("connect");
        let value = "x".repeat(100 << 10);
        let mut calls = JoinSet::new();
        for i in 0..40 {
            let (conn, value) = (conn.clone(), value.clone());
            calls.spawn(async move { conn.call(put(&format!("k{i}"), &value)).await });
        }
        while let Some(done) = calls.join_next().await {
            assert!(done.expect("join").expect("put").has_put());
        }
        assert_eq!(service.map.lock().unwrap().len(), 40, "a put was lost");
        // 1 MiB holds ten of these requests; one more may have been read
        // while waiting for room.
        let max = service.max_in_flight.load(Ordering::SeqCst);
        assert!(
            (2..=11).contains(&max),
            "{max} requests of 100 KiB in flight"
        );
        assert!(counters.in_flight_waits.load(Ordering::Relaxed) > 0);
        let _ = stop.send(());
    })
    .await;
}

/// The frame of a `Get` of `key` with request id `id`.
fn get_frame(id: u64, key: &str) -> Vec<u8> {
    let mut request = get(key);
    request.id = id;
    let mut f = Frame::new();
    f.set_request(request);
    let body = f.write_to_bytes().expect("encode");
    let mut out = u32::try_from(body.len())
        .expect("fits")
        .to_be_bytes()
        .to_vec();
    out.extend_from_slice(&body);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_a_client_does_not_read_stop_its_connection_being_read() {
    bounded(async {
        let service = Arc::new(MemKv::default());
        let big: Bytes = vec![7u8; 1 << 20].into();
        service
            .map
            .lock()
            .unwrap()
            .insert("big".into(), big.clone());
        let options = Options {
            max_bytes_in_flight_per_connection: 2 << 20,
            ..Options::default()
        };
        let (addr, counters, stop) = serve(service.clone(), options).await;
        // A client with a small receive window that sends 64 gets of a
        // 1 MiB value and reads nothing.
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_recv_buffer_size(64 << 10).expect("rcvbuf");
        let mut stream = socket
            .connect(addr.parse().expect("addr"))
            .await
            .expect("connect");
        const N: u64 = 64;
        // In bursts: once the first burst's responses fill the limit, the
        // later ones are not read.
        for burst in 0..4 {
            let requests: Vec<u8> = (1..=N / 4)
                .flat_map(|i| get_frame(burst * (N / 4) + i, "big"))
                .collect();
            stream.write_all(&requests).await.expect("send");
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let handled = service.completed.lock().unwrap().len();
        assert!(
            handled <= 17,
            "{handled} of {N} responses of 1 MiB produced for a client that reads none"
        );
        assert!(counters.in_flight_waits.load(Ordering::Relaxed) > 0);

        // Reading them now: every one arrives, whole.
        let mut codec = FrameCodec::new(kv_net::DEFAULT_MAX_FRAME_LENGTH);
        let mut buf = bytes::BytesMut::new();
        let mut seen = std::collections::BTreeSet::new();
        while seen.len() < N as usize {
            if let Some(f) =
                tokio_util::codec::Decoder::decode(&mut codec, &mut buf).expect("decode")
            {
                let Some(frame::Body::Response(r)) = f.body else {
                    panic!("not a response");
                };
                let r: Response = r;
                assert_eq!(get_value(&r).as_ref(), Some(&big), "response {}", r.id);
                assert!(seen.insert(r.id), "response {} twice", r.id);
                continue;
            }
            let mut chunk = vec![0u8; 256 << 10];
            let n = stream.read(&mut chunk).await.expect("read");
            assert!(n > 0, "closed after {} responses", seen.len());
            buf.extend_from_slice(&chunk[..n]);
        }
        let _ = stop.send(());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_client_is_closed_but_not_one_waiting_for_an_answer() {
    bounded(async {
        let service = Arc::new(MemKv {
            fixed_delay: Some(Duration::from_millis(800)),
            ..MemKv::default()
        });
        let options = Options {
            idle_timeout: Some(Duration::from_millis(300)),
            ..Options::default()
        };
        let (addr, counters, stop) = serve(service.clone(), options).await;
        let conn = ClientConn::connect(&addr, &Options::default())
            .await
            .expect("connect");
        // In flight longer than the idle timeout: answered.
        let resp = conn.call(put("k", "v")).await.expect("put");
        assert!(resp.has_put());
        assert_eq!(counters.idle_closed.load(Ordering::Relaxed), 0);
        // Then idle: closed.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !conn.is_closed() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "idle connection still open"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(counters.idle_closed.load(Ordering::Relaxed), 1);
        let _ = stop.send(());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_takes_no_responses_is_cut_off_after_the_frame_timeout() {
    bounded(async {
        let service = Arc::new(MemKv::default());
        service
            .map
            .lock()
            .unwrap()
            .insert("big".into(), vec![1u8; 1 << 20].into());
        let options = Options {
            frame_timeout: Duration::from_millis(500),
            ..Options::default()
        };
        let (addr, counters, stop) = serve(service, options).await;
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_recv_buffer_size(64 << 10).expect("rcvbuf");
        let mut stream = socket
            .connect(addr.parse().expect("addr"))
            .await
            .expect("connect");
        let requests: Vec<u8> = (1..=32).flat_map(|id| get_frame(id, "big")).collect();
        stream.write_all(&requests).await.expect("send");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while counters.frame_timeouts.load(Ordering::Relaxed) == 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "a client reading nothing was never cut off"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Its socket ends (after what was already sent).
        let mut sink = vec![0u8; 1 << 20];
        let ended = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match stream.read(&mut sink).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(ended.is_ok(), "the connection stayed open");
        let _ = stop.send(());
    })
    .await;
}
