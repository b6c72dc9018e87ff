//! The request path through an in-process single-node raft.

use super::*;

#[test]
fn counts_default_and_clamp_to_max_results() {
    assert_eq!(count(0, DEFAULT_LIMIT), DEFAULT_LIMIT);
    assert_eq!(count(0, DEFAULT_TOP_K), DEFAULT_TOP_K);
    assert_eq!(count(7, DEFAULT_LIMIT), 7);
    assert_eq!(count(1000, DEFAULT_LIMIT), 1000);
    assert_eq!(count(1001, DEFAULT_LIMIT), MAX_RESULTS);
    assert_eq!(count(u32::MAX, DEFAULT_TOP_K), MAX_RESULTS);
}

#[test]
fn an_empty_query_is_an_invalid_argument() {
    assert_eq!(
        code(&search_error(&kv_search::Error::EmptyQuery)),
        ErrorCode::INVALID_ARGUMENT
    );
    let (_tmp, ix, feed) = fresh_indexer();
    feed.entry(1, changes(&[("a", Some("some words"))]));
    assert_eq!(wait_for(&ix, 1), 1);
    for q in ["", "   ", "!?, ..."] {
        let e = ix
            .with_index(Instant::now() + WAIT, |s| s.search(q, None, 10))
            .unwrap()
            .unwrap_err();
        assert!(matches!(e, kv_search::Error::EmptyQuery), "{q:?}: {e}");
        assert_eq!(code(&search_error(&e)), ErrorCode::INVALID_ARGUMENT);
        let e = ix
            .with_index(Instant::now() + WAIT, |s| s.similar(q, 10, None))
            .unwrap()
            .unwrap_err();
        assert_eq!(code(&search_error(&e)), ErrorCode::INVALID_ARGUMENT);
    }
    shut(ix);
}

struct Nowhere;

impl kv_raft::Transport for Nowhere {
    fn send(&mut self, _msgs: Vec<Message>) {}
}

fn search_cmd(query: &str, limit: u32, serializable: bool) -> proto::request::Cmd {
    let mut s = proto::Search::new();
    query.clone_into(&mut s.query);
    s.limit = limit;
    s.serializable = serializable;
    proto::request::Cmd::Search(s)
}

fn similar_cmd(text: &str, top_k: u32) -> proto::request::Cmd {
    let mut s = proto::Similar::new();
    text.clone_into(&mut s.text);
    s.top_k = top_k;
    proto::request::Cmd::Similar(s)
}

/// The hits of a successful answer.
fn answer(r: Result<Response, Response>) -> SearchResult {
    match r {
        Ok(resp) => match resp.result {
            Some(proto::response::Result::Search(s)) => s,
            other => panic!("not a search result: {other:?}"),
        },
        Err(e) => panic!("refused: {e:?}"),
    }
}

#[test]
fn requests_through_a_single_node() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open_store(&tmp.path().join("kv"));
    let mut sm = KvStateMachine::open(store.clone()).unwrap();
    let (ix, feed) = start_indexer(tmp.path().join("search"), store.clone(), 0);
    sm.set_search_feed(feed);
    let opts = kv_raft::Options {
        tick_interval: Duration::from_millis(10),
        sync: false,
        ..kv_raft::Options::default()
    };
    let node = kv_raft::Node::start(1, tmp.path().join("raft"), &[1], opts, sm, Nowhere).unwrap();
    let handle = node.handle();
    let deadline = Instant::now() + WAIT;
    while !matches!(handle.status().wait(), Ok(s) if s.role == kv_raft::Role::Leader) {
        assert!(Instant::now() < deadline, "no leader");
        let _ = handle.campaign().wait();
        std::thread::sleep(Duration::from_millis(20));
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let config = crate::Config::new(1, "127.0.0.1:0", tmp.path());
    let peers = BTreeMap::from([(1, "127.0.0.1:0".to_owned())]);
    let propose = |cmd: Vec<u8>| {
        handle
            .propose(cmd)
            .wait_timeout(WAIT)
            .ok()
            .unwrap()
            .unwrap()
    };
    rt.block_on(async {
        let mut service = KvService::new(
            &config,
            handle.clone(),
            store.clone(),
            peers,
            1,
            crate::Metrics::new(),
        );
        let deadline = || TokioInstant::now() + WAIT;

        // Without --search.
        for cmd in [search_cmd("apple", 0, false), similar_cmd("apple", 0)] {
            let e = service.search_request(cmd, deadline()).await.unwrap_err();
            assert_eq!(code(&e), ErrorCode::UNAVAILABLE);
            assert_eq!(message(&e), NOT_ENABLED);
        }
        service.search = Some(ix.clone());

        // 1,200 matching documents in one entry.
        let ops: Vec<BatchOp> = (0..1200)
            .map(|i| BatchOp::Put {
                key: Bytes::from(format!("doc{i:04}")),
                value: Bytes::from(format!("common word{i}")),
            })
            .collect();
        propose(
            Command {
                client_id: 0,
                seq: 0,
                time_ms: 0,
                op: Op::Batch(ops),
            }
            .encode(),
        );
        // Linearizable: the write acknowledged above is in the answer.
        let all = answer(
            service
                .search_request(search_cmd("common", 5000, false), deadline())
                .await,
        );
        assert_eq!(all.hits.len(), MAX_RESULTS);
        assert!(all.index >= 1, "{}", all.index);
        let default = answer(
            service
                .search_request(search_cmd("common", 0, false), deadline())
                .await,
        );
        assert_eq!(default.hits.len(), DEFAULT_LIMIT);
        let seven = answer(
            service
                .search_request(search_cmd("common", 7, true), deadline())
                .await,
        );
        assert_eq!(seven.hits.len(), 7);
        let one = answer(
            service
                .search_request(search_cmd("word17", 0, false), deadline())
                .await,
        );
        assert_eq!(one.hits.len(), 1);
        assert_eq!(one.hits[0].key, b("doc0017"));
        let near = answer(
            service
                .search_request(similar_cmd("common word17", 0), deadline())
                .await,
        );
        assert_eq!(near.hits.len(), DEFAULT_TOP_K);
        assert_eq!(near.hits[0].key, b("doc0017"), "{:?}", near.hits);
        let many = answer(
            service
                .search_request(similar_cmd("common", 5000), deadline())
                .await,
        );
        assert_eq!(many.hits.len(), MAX_RESULTS);

        // A delete, then at once a linearizable search.
        propose(
            Command {
                client_id: 0,
                seq: 0,
                time_ms: 0,
                op: Op::Delete { key: b("doc0017") },
            }
            .encode(),
        );
        let gone = answer(
            service
                .search_request(search_cmd("word17", 0, false), deadline())
                .await,
        );
        assert!(gone.hits.is_empty(), "{:?}", gone.hits);
        assert!(gone.index > one.index);

        // Queries without a word.
        for cmd in [search_cmd(" ,. ", 0, false), similar_cmd("", 0)] {
            let e = service.search_request(cmd, deadline()).await.unwrap_err();
            assert_eq!(code(&e), ErrorCode::INVALID_ARGUMENT);
        }
        drop(service);
    });
    node.shutdown().unwrap();
    drop(rt);
    shut(ix);
}
