//! Leader discovery, retries and the definite/unknown distinction, against
//! scripted kv-net servers.

use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use kv_client::{Client, Error, Options};
use kv_net::proto::{ErrorCode, GetResult, PutResult, Request, Response, request};
use kv_net::server::error_response;
use kv_net::{Listener, Service};

/// Answers each request with the next scripted reply (the last one repeats).
struct Scripted {
    replies: Vec<Reply>,
    seen: Mutex<Vec<(u64, u64)>>,
    /// `timeout_ms` of each request.
    budgets: Mutex<Vec<u32>>,
}

#[derive(Clone)]
enum Reply {
    Ok,
    NotLeader(String),
    Unavailable,
    UnknownTimeout,
    /// Never answers.
    Hang,
}

impl Service for Scripted {
    async fn handle(&self, request: Request) -> Response {
        let n = {
            let mut seen = self.seen.lock().unwrap();
            seen.push((request.client_id, request.seq));
            seen.len() - 1
        };
        self.budgets.lock().unwrap().push(request.timeout_ms);
        let reply = self.replies[n.min(self.replies.len() - 1)].clone();
        match reply {
            Reply::Ok => {
                let mut r = Response::new();
                match request.cmd {
                    Some(request::Cmd::Get(_)) => r.set_get(GetResult::new()),
                    _ => r.set_put(PutResult::new()),
                }
                r
            }
            Reply::NotLeader(addr) => {
                let mut r = error_response(0, ErrorCode::NOT_LEADER, "not leader");
                r.mut_error().leader_id = 2;
                r.mut_error().leader_addr = addr;
                r
            }
            Reply::Unavailable => error_response(0, ErrorCode::UNAVAILABLE, "no leader"),
            Reply::Hang => std::future::pending().await,
            Reply::UnknownTimeout => {
                let mut r = error_response(0, ErrorCode::TIMEOUT, "timed out");
                r.mut_error().outcome_unknown = true;
                r
            }
        }
    }
}

async fn serve(replies: Vec<Reply>) -> (String, Arc<Scripted>) {
    let service = Arc::new(Scripted {
        replies,
        seen: Mutex::new(Vec::new()),
        budgets: Mutex::new(Vec::new()),
    });
    let listener = Listener::bind("127.0.0.1:0", kv_net::Options::default())
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let s = service.clone();
    tokio::spawn(async move { listener.run(s, std::future::pending()).await });
    (addr, service)
}

fn client(endpoints: Vec<String>, dedup: bool, timeout_ms: u64) -> Client {
    Client::new(
        endpoints,
        Options {
            timeout: Duration::from_millis(timeout_ms),
            dedup,
            ..Options::default()
        },
    )
}

#[tokio::test]
async fn follows_the_not_leader_hint() {
    let (leader, leader_svc) = serve(vec![Reply::Ok]).await;
    let (follower, _) = serve(vec![Reply::NotLeader(leader.clone())]).await;
    let c = client(vec![follower], true, 2000);
    c.put("k", "v").await.unwrap();
    assert_eq!(leader_svc.seen.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn unknown_outcome_is_retried_with_the_same_request_number() {
    let (addr, svc) = serve(vec![Reply::UnknownTimeout, Reply::Ok]).await;
    let c = client(vec![addr], true, 2000);
    c.put("k", "v").await.unwrap();
    let seen = svc.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0], seen[1]);
    assert_ne!(seen[0].0, 0);
}

#[tokio::test]
async fn without_dedup_an_unknown_outcome_is_reported_not_retried() {
    let (addr, svc) = serve(vec![Reply::UnknownTimeout, Reply::Ok]).await;
    let c = client(vec![addr], false, 2000);
    let e = c.put("k", "v").await.unwrap_err();
    assert!(!e.is_definite(), "{e:?}");
    assert_eq!(svc.seen.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn definite_rejections_until_the_deadline_are_definite() {
    let (addr, svc) = serve(vec![Reply::Unavailable]).await;
    let c = client(vec![addr], true, 300);
    let e = c.put("k", "v").await.unwrap_err();
    // The deadline ends the retries; the error is the node's last answer.
    assert!(
        matches!(&e, Error::Unavailable { definite: true, .. }),
        "{e:?}"
    );
    assert!(svc.seen.lock().unwrap().len() > 1, "retried");
}

#[tokio::test]
async fn an_unknown_attempt_taints_the_final_error() {
    let (addr, _) = serve(vec![Reply::UnknownTimeout, Reply::Unavailable]).await;
    let c = client(vec![addr], true, 300);
    let e = c.put("k", "v").await.unwrap_err();
    assert!(
        matches!(
            &e,
            Error::Unavailable {
                definite: false,
                ..
            }
        ),
        "{e:?}"
    );
}

#[tokio::test]
async fn nobody_listening_is_definite() {
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let c = client(vec![addr], true, 300);
    assert!(c.put("k", "v").await.unwrap_err().is_definite());
}

#[tokio::test]
async fn reads_are_retried_after_unknown_outcomes() {
    let (addr, svc) = serve(vec![Reply::UnknownTimeout, Reply::Ok]).await;
    let c = client(vec![addr], false, 2000);
    assert_eq!(c.get("k").await.unwrap(), None);
    assert_eq!(svc.seen.lock().unwrap()[0], (0, 0));
}

#[tokio::test]
async fn an_oversized_request_is_invalid_and_not_retried() {
    let (addr, svc) = serve(vec![Reply::Ok]).await;
    let c = client(vec![addr], true, 2000);
    let e = c.put("k", vec![0u8; 17 << 20]).await.unwrap_err();
    assert!(matches!(e, Error::InvalidArgument(_)), "{e:?}");
    assert!(svc.seen.lock().unwrap().is_empty());
}

#[tokio::test]
async fn refusals_stop_being_retried_once_the_retry_budget_is_spent() {
    let (addr, svc) = serve(vec![Reply::Unavailable]).await;
    let c = client(vec![addr], true, 2000);
    let mut took = Vec::new();
    for i in 0..10 {
        let start = std::time::Instant::now();
        let e = c.put(format!("k{i}"), "v").await.unwrap_err();
        took.push(start.elapsed());
        assert!(
            matches!(&e, Error::Unavailable { definite: true, .. }),
            "{e:?}"
        );
    }
    let attempts = svc.seen.lock().unwrap().len();
    // One attempt per put, and at most 4 retries in all (a budget of 10
    // tokens, retrying while more than 5 are left).
    assert!(
        (10..=14).contains(&attempts),
        "{attempts} attempts for 10 refused puts"
    );
    for t in &took[5..] {
        assert!(
            *t < Duration::from_millis(500),
            "a refused put took {t:?} once the budget was spent: {took:?}"
        );
    }
}

#[tokio::test]
async fn each_attempt_tells_the_node_the_time_left() {
    let (addr, svc) = serve(vec![Reply::UnknownTimeout, Reply::Ok]).await;
    let c = client(vec![addr], true, 2000);
    c.put("k", "v").await.unwrap();
    let budgets = svc.budgets.lock().unwrap().clone();
    assert_eq!(budgets.len(), 2);
    assert!(
        budgets[0] > 1000 && budgets[0] <= 2000,
        "first attempt: {budgets:?}"
    );
    assert!(
        budgets[1] > 0 && budgets[1] < budgets[0],
        "a retry has less time left: {budgets:?}"
    );
}

#[tokio::test]
async fn waiting_for_a_write_slot_counts_towards_the_timeout() {
    // 512 writes in flight per client: a 513th waits for a slot. Its
    // timeout covers that wait: it ends within its own timeout, not a
    // slot wait plus a whole timeout more.
    let (addr, svc) = serve(vec![Reply::Ok, Reply::Hang]).await;
    let c = client(vec![addr], true, 1000);
    c.put("warm", "v").await.unwrap();
    let mut hung = tokio::task::JoinSet::new();
    for i in 0..512 {
        let c = c.clone();
        hung.spawn(async move { c.put(format!("k{i}"), "v").await });
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while svc.seen.lock().unwrap().len() < 513 {
        assert!(
            std::time::Instant::now() < deadline,
            "the 512 writes were not sent: {} seen",
            svc.seen.lock().unwrap().len()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let start = std::time::Instant::now();
    let e = c.put("late", "v").await.unwrap_err();
    let took = start.elapsed();
    assert!(
        took < Duration::from_millis(1500),
        "a write with a 1 s timeout took {took:?} ({e:?})"
    );
    assert!(matches!(e, Error::Timeout { .. }), "{e:?}");
    hung.abort_all();
}

fn client_with_attempts(endpoints: Vec<String>, dedup: bool, attempt_ms: u64) -> Client {
    Client::new(
        endpoints,
        Options {
            timeout: Duration::from_secs(5),
            dedup,
            attempt_timeout: Duration::from_millis(attempt_ms),
            ..Options::default()
        },
    )
}

#[tokio::test]
async fn a_node_that_does_not_answer_is_left_for_the_next() {
    let (hung, hung_svc) = serve(vec![Reply::Hang]).await;
    let (ok, ok_svc) = serve(vec![Reply::Ok]).await;
    let c = client_with_attempts(vec![hung, ok], true, 200);
    let started = std::time::Instant::now();
    c.put("k", "v").await.unwrap();
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(200), "{took:?}");
    assert!(took < Duration::from_secs(2), "{took:?}");
    // The same request, so the cluster applies it once.
    let (h, o) = (
        hung_svc.seen.lock().unwrap().clone(),
        ok_svc.seen.lock().unwrap().clone(),
    );
    assert_eq!((h.len(), o.len()), (1, 1));
    assert_eq!(h[0], o[0]);
    // Reads move on too.
    let (hung2, _) = serve(vec![Reply::Hang]).await;
    let (ok2, ok2_svc) = serve(vec![Reply::Ok]).await;
    let c = client_with_attempts(vec![hung2, ok2], false, 200);
    c.get("k").await.unwrap();
    assert_eq!(ok2_svc.seen.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn without_dedup_a_write_left_unanswered_is_unknown_and_not_retried() {
    let (hung, _) = serve(vec![Reply::Hang]).await;
    let (ok, ok_svc) = serve(vec![Reply::Ok]).await;
    let c = client_with_attempts(vec![hung, ok], false, 200);
    let e = c.put("k", "v").await.unwrap_err();
    assert!(!e.is_definite(), "{e:?}");
    assert!(ok_svc.seen.lock().unwrap().is_empty());
}

#[tokio::test]
async fn hints_to_a_node_that_did_not_answer_wait_for_a_new_leader() {
    let (hung, hung_svc) = serve(vec![Reply::Hang]).await;
    let (new, new_svc) = serve(vec![Reply::Ok]).await;
    // Before the election the follower still names the hung leader.
    let (follower, follower_svc) = serve(vec![
        Reply::NotLeader(hung.clone()),
        Reply::NotLeader(hung.clone()),
        Reply::NotLeader(new.clone()),
    ])
    .await;
    let c = client_with_attempts(vec![hung, follower], true, 300);
    c.put("k", "v").await.unwrap();
    assert_eq!(
        hung_svc.seen.lock().unwrap().len(),
        1,
        "the hung node was asked once"
    );
    assert_eq!(follower_svc.seen.lock().unwrap().len(), 3);
    assert_eq!(new_svc.seen.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn a_slow_leader_the_others_still_name_is_tried_again() {
    let (leader, leader_svc) = serve(vec![Reply::Hang, Reply::Ok]).await;
    let (follower, _) = serve(vec![Reply::NotLeader(leader.clone())]).await;
    let c = client_with_attempts(vec![leader, follower], true, 200);
    c.put("k", "v").await.unwrap();
    let seen = leader_svc.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[0], seen[1], "retried as the same request");
}
