//! `kvd --http-listen` (SPEC section 9) against a 3-node cluster of real
//! processes, with a real HTTP client: every route, through a follower,
//! bad input, `/metrics` parsed as Prometheus text and checked against what
//! the test did, health while the cluster loses its quorum, and tokens.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::{Cluster, free_ports, serial};

/// An HTTP answer: status and body.
struct Answer {
    status: u16,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }
}

fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(15))
        .build()
}

fn call(method: &str, url: &str, body: Option<&str>, token: Option<&str>) -> Answer {
    let mut req = agent().request(method, url);
    if let Some(t) = token {
        req = req.set("Authorization", &format!("Bearer {t}"));
    }
    let res = match body {
        Some(b) => req.set("Content-Type", "application/json").send_string(b),
        None => req.call(),
    };
    let resp = match res {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{method} {url}: {e}"),
    };
    Answer {
        status: resp.status(),
        body: resp.into_string().expect("body"),
    }
}

fn get(url: &str) -> Answer {
    call("GET", url, None, None)
}

fn post(url: &str, body: &Value) -> Answer {
    call("POST", url, Some(&body.to_string()), None)
}

/// `name{labels}` → value, from a Prometheus text scrape.
fn scrape(base: &str) -> HashMap<String, f64> {
    let a = get(&format!("{base}/metrics"));
    assert_eq!(a.status, 200, "{}", a.body);
    let lines = a.body.lines().map(|l| Ok(l.to_owned()));
    let parsed = prometheus_parse::Scrape::parse(lines).expect("Prometheus text format");
    let mut out = HashMap::new();
    for s in parsed.samples {
        let mut labels: Vec<String> = s
            .labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{v}\""))
            .collect();
        labels.sort();
        let value = match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            prometheus_parse::Value::Histogram(h) => {
                let count = h.iter().map(|b| b.count).fold(0.0, f64::max);
                *out.entry(format!("{}_count", s.metric)).or_insert(0.0) += count;
                continue;
            }
            prometheus_parse::Value::Summary(_) => continue,
        };
        out.insert(format!("{}{{{}}}", s.metric, labels.join(",")), value);
    }
    out
}

fn metric(m: &HashMap<String, f64>, key: &str) -> f64 {
    m.get(key).copied().unwrap_or(0.0)
}

/// A cluster whose nodes also serve HTTP; returns it and each node's base URL.
pub fn http_cluster(n: usize, extra: &[&str]) -> (Cluster, Vec<String>) {
    // Client and HTTP ports from one call, so that they cannot collide.
    let ports = free_ports(2 * n);
    let listens: Vec<String> = ports[..n]
        .iter()
        .map(|p| format!("127.0.0.1:{p}"))
        .collect();
    let peers = listens
        .iter()
        .enumerate()
        .map(|(i, a)| format!("{}={a}", i + 1))
        .collect::<Vec<_>>()
        .join(",");
    let mut c = Cluster::with_peers(listens, vec![peers; n], extra);
    let mut bases = Vec::new();
    for (node, port) in c.nodes.iter_mut().zip(&ports[n..]) {
        let addr = format!("127.0.0.1:{port}");
        node.extra
            .extend(["--http-listen".to_owned(), addr.clone()]);
        bases.push(format!("http://{addr}"));
    }
    c.start_all();
    (c, bases)
}

/// Waits until `base` answers `path` with `status`.
fn wait_status(base: &str, path: &str, status: u16, within: Duration) -> Answer {
    let deadline = Instant::now() + within;
    loop {
        let a = get(&format!("{base}{path}"));
        if a.status == status {
            return a;
        }
        assert!(
            Instant::now() < deadline,
            "{base}{path}: {} {}, want {status}",
            a.status,
            a.body
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_through_a_follower_with_metrics_that_count() {
    let _serial = serial();
    let (mut c, bases) = http_cluster(3, &[]);
    let leader = c.wait_leader(Duration::from_secs(20)).await;
    let follower = (leader + 1) % 3;
    let (lb, fb) = (bases[leader].clone(), bases[follower].clone());
    for b in &bases {
        wait_status(b, "/readyz", 200, Duration::from_secs(10));
    }
    let before = scrape(&lb);
    let put_ok = "flashkv_requests_total{op=\"put\",result=\"ok\"}";

    // Writes through a follower reach the leader.
    const PUTS: usize = 20;
    for i in 0..PUTS {
        let a = post(
            &format!("{fb}/put"),
            &json!({"key": format!("k{i:02}"), "value": format!("v{i}")}),
        );
        assert_eq!((a.status, a.json()), (200, json!({"ok": true})), "put {i}");
    }
    let a = get(&format!("{fb}/get?key=k03"));
    assert_eq!(
        (a.status, a.json()),
        (200, json!({"ok": true, "found": true, "value": "v3"}))
    );
    let a = get(&format!("{fb}/get?key=nope"));
    assert_eq!(
        (a.status, a.json()),
        (404, json!({"ok": true, "found": false}))
    );
    // A serializable read on the follower sees the write once applied there.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let a = get(&format!("{fb}/get?key=k19&serializable=true"));
        if a.status == 200 {
            assert_eq!(a.json()["value"], "v19");
            break;
        }
        assert!(Instant::now() < deadline, "{}", a.body);
        std::thread::sleep(Duration::from_millis(50));
    }

    // Batch, binary values, range, cas, delete.
    let a = post(
        &format!("{fb}/batchput"),
        &json!({"items": [{"key": "b1", "value": "x"}, {"key": "b2", "value": "y"},
                          {"key": "b3", "value_base64": "AP8="}]}),
    );
    assert_eq!((a.status, a.json()), (200, json!({"ok": true, "count": 3})));
    let a = get(&format!("{fb}/get?key=b3"));
    assert_eq!(a.json()["value_base64"], "AP8=", "{}", a.body);
    let a = get(&format!("{fb}/range?start=b&end=c"));
    let pairs = a.json()["pairs"].clone();
    assert_eq!(pairs.as_array().map(Vec::len), Some(3), "{}", a.body);
    assert_eq!(pairs[0], json!({"key": "b1", "value": "x"}));
    assert_eq!(a.json()["more"], false);
    let a = get(&format!("{fb}/range?prefix=k&limit=5"));
    let v = a.json();
    assert_eq!(v["pairs"].as_array().map(Vec::len), Some(5));
    assert_eq!(
        (v["pairs"][0]["key"].clone(), v["more"].clone()),
        (json!("k00"), json!(true))
    );
    let a = get(&format!(
        "{fb}/range?prefix=k&limit=2&reverse=true&keys_only=true"
    ));
    assert_eq!(
        a.json(),
        json!({"ok": true, "pairs": [{"key": "k19"}, {"key": "k18"}], "more": true})
    );
    let a = post(
        &format!("{fb}/cas"),
        &json!({"key": "b1", "expected": null, "value": "z"}),
    );
    assert_eq!(
        (a.status, a.json()),
        (
            409,
            json!({"ok": false, "error": "compare failed", "definite": true, "current": "x"})
        )
    );
    let a = post(
        &format!("{fb}/cas"),
        &json!({"key": "b1", "expected": "x", "value": "z"}),
    );
    assert_eq!((a.status, a.json()), (200, json!({"ok": true})));
    let a = post(
        &format!("{fb}/cas"),
        &json!({"key": "new", "expected": null, "value": "1"}),
    );
    assert_eq!(a.status, 200, "{}", a.body);
    let a = call("DELETE", &format!("{fb}/delete?key=k03"), None, None);
    assert_eq!((a.status, a.json()), (200, json!({"ok": true})));
    assert_eq!(get(&format!("{fb}/get?key=k03")).status, 404);

    // Bad input: 400 with a message, nothing applied, the node serves on.
    let bad: &[(&str, &str, Option<&str>)] = &[
        ("POST", "/put", Some("{not json")),
        (
            "POST",
            "/put",
            Some(r#"{"key":"a","value":"b","colour":1}"#),
        ),
        ("POST", "/put", Some(r#"{"value":"b"}"#)),
        ("POST", "/put", Some(r#"{"key":"","value":"b"}"#)),
        ("POST", "/put", Some(r#"{"key":"a"}"#)),
        (
            "POST",
            "/put",
            Some(r#"{"key":"a","value":"b","ttl_ms":5}"#),
        ),
        ("POST", "/put", Some(r#"{"key":"a","value_base64":"!!"}"#)),
        (
            "POST",
            "/put",
            Some(r#"{"key":"a","value":"b","value_base64":"YQ=="}"#),
        ),
        ("POST", "/batchput", Some(r#"{"items":[]}"#)),
        ("POST", "/batchput", Some(r#"{"items":[{"key":"a"}]}"#)),
        ("POST", "/cas", Some(r#"{"key":"a"}"#)),
        ("GET", "/get", None),
        ("GET", "/get?key=a&serializable=maybe", None),
        ("GET", "/range?limit=-1", None),
        ("GET", "/range?colour=red", None),
    ];
    for (method, path, body) in bad {
        let a = call(method, &format!("{fb}{path}"), *body, None);
        assert_eq!(a.status, 400, "{method} {path} {body:?}: {}", a.body);
        let v = a.json();
        assert_eq!(
            (v["ok"].clone(), v["definite"].clone()),
            (json!(false), json!(true))
        );
        assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{v}");
    }
    assert_eq!(
        get(&format!("{fb}/get?key=a")).status,
        404,
        "a bad put applied"
    );
    assert_eq!(get(&format!("{fb}/no/such/route")).status, 404);
    let a = call("PUT", &format!("{fb}/put"), Some("{}"), None);
    assert_eq!(
        (a.status, a.json()["ok"].clone()),
        (405, json!(false)),
        "{}",
        a.body
    );
    let huge = format!(r#"{{"key":"h","value":"{}"}}"#, "x".repeat(17 << 20));
    let a = call("POST", &format!("{fb}/put"), Some(&huge), None);
    assert_eq!((a.status, a.json()["definite"].clone()), (413, json!(true)));
    assert_eq!(get(&format!("{fb}/get?key=k04")).status, 200);

    // Raft status, health.
    let mut leaders = 0;
    for (i, b) in bases.iter().enumerate() {
        let v = get(&format!("{b}/raft/status")).json();
        assert_eq!(v["node_id"], json!(c.nodes[i].id), "{v}");
        assert_eq!(v["leader_id"], json!(c.nodes[leader].id), "{v}");
        assert!(v["commit_index"].as_u64().is_some_and(|n| n > 20), "{v}");
        assert!(v["last_applied"].as_u64().is_some(), "{v}");
        leaders += usize::from(v["state"] == "leader");
        assert_eq!(get(&format!("{b}/livez")).body, "ok\n");
    }
    assert_eq!(leaders, 1);

    // Metrics: the leader applied exactly the puts the test made.
    let after = scrape(&lb);
    assert_eq!(
        metric(&after, put_ok) - metric(&before, put_ok),
        PUTS as f64,
        "put ok on the leader"
    );
    let batch_ok = "flashkv_requests_total{op=\"batch\",result=\"ok\"}";
    assert_eq!(
        metric(&after, batch_ok) - metric(&before, batch_ok),
        1.0,
        "{:?}",
        after
            .iter()
            .filter(|(k, _)| k.contains("requests_total"))
            .collect::<Vec<_>>()
    );
    assert_eq!(
        after["flashkv_raft_is_leader{}"],
        1.0,
        "term {} leader changes {}; {}",
        after["flashkv_raft_term{}"],
        after["flashkv_raft_leader_changes_total{}"],
        get(&format!("{lb}/raft/status")).body
    );
    assert!(after["flashkv_raft_term{}"] >= 1.0);
    assert!(after["flashkv_raft_commit_index{}"] >= 20.0);
    assert!(after["flashkv_raft_leader_changes_total{}"] >= 1.0);
    assert!(after["flashkv_raft_log_fsync_duration_seconds_count"] > 0.0);
    assert!(after["flashkv_request_duration_seconds_count"] >= PUTS as f64);
    for name in [
        "flashkv_raft_applied_index{}",
        "flashkv_raft_proposals_pending{}",
        "flashkv_engine_bytes{level=\"memtable\"}",
        "flashkv_engine_bytes{level=\"0\"}",
        "flashkv_engine_compactions_total{}",
        "flashkv_snapshot_sent_bytes_total{}",
        "flashkv_net_limit_hits_total{limit=\"connections\"}",
    ] {
        assert!(after.contains_key(name), "{name} missing");
    }
    let fm = scrape(&fb);
    assert_eq!(fm["flashkv_raft_is_leader{}"], 0.0);
    // The follower's gateway counted its HTTP answers by route and code.
    let http = |route: &str, code: u16| {
        metric(
            &fm,
            &format!("flashkv_http_requests_total{{code=\"{code}\",route=\"{route}\"}}"),
        )
    };
    assert_eq!(http("/put", 200), PUTS as f64);
    assert_eq!(http("/put", 400), 8.0);
    assert_eq!(http("/put", 413), 1.0);
    assert_eq!(http("/batchput", 200), 1.0);
    assert_eq!(http("/cas", 409), 1.0);
    assert!(
        metric(
            &fm,
            "flashkv_requests_total{op=\"put\",result=\"not_leader\"}"
        ) >= 1.0,
        "the follower sent the gateway's first put to the leader"
    );

    // The status page and its data, through the follower.
    let page = get(&format!("{fb}/"));
    assert_eq!(page.status, 200);
    for n in &c.nodes {
        assert!(page.body.contains(&n.listen), "member {} missing", n.listen);
    }
    assert!(page.body.contains("class=\"role leader\""), "{}", page.body);
    let v = get(&format!("{fb}/api/cluster")).json();
    assert_eq!(v["leader_id"], json!(c.nodes[leader].id), "{v}");
    assert_eq!(v["members"].as_array().map(Vec::len), Some(3), "{v}");

    // Search on nodes started without --search: a definite 503 that says so.
    let a = get(&format!("{fb}/search?q=anything"));
    assert_eq!(a.status, 503, "{}", a.body);
    assert!(
        a.json()["error"]
            .as_str()
            .is_some_and(|e| e.contains("kvd --search")),
        "{}",
        a.body
    );
    assert_eq!(a.json()["definite"], true, "{}", a.body);

    // Without a quorum: not ready, writes fail definitely or unknown, never OK.
    for i in 0..3 {
        if i != follower {
            c.nodes[i].stop();
        }
    }
    let a = wait_status(&fb, "/readyz", 503, Duration::from_secs(15));
    assert!(a.body.starts_with("not ready"), "{}", a.body);
    let a = post(&format!("{fb}/put"), &json!({"key": "q", "value": "1"}));
    assert!([503, 504].contains(&a.status), "{} {}", a.status, a.body);
    assert_eq!(a.json()["definite"], json!(a.status == 503), "{}", a.body);
}

/// The keys of a `/search` or `/similar` answer, in order, and their scores.
fn hits(a: &Answer) -> Vec<(String, f64)> {
    assert_eq!(a.status, 200, "{}", a.body);
    let v = a.json();
    assert_eq!(v["ok"], true, "{v}");
    v["hits"]
        .as_array()
        .unwrap_or_else(|| panic!("no hits: {v}"))
        .iter()
        .map(|h| {
            let key = h["key"].as_str().unwrap_or_else(|| panic!("{h}"));
            let score = h["score"].as_f64().unwrap_or_else(|| panic!("{h}"));
            (key.to_owned(), score)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_routes_through_a_follower() {
    let _serial = serial();
    let (mut c, bases) = http_cluster(3, &["--search"]);
    let leader = c.wait_leader(Duration::from_secs(20)).await;
    let fb = bases[(leader + 1) % 3].clone();
    wait_status(&fb, "/readyz", 200, Duration::from_secs(10));
    let texts = [
        ("doc:1", "the quick brown fox jumps over the lazy dog"),
        ("doc:2", "a lazy afternoon in the sun"),
        ("doc:3", "replicated logs elect a leader by majority vote"),
        ("note:1", "lazy dogs and quick foxes"),
        ("doc:4", "Straße und Brücke"),
    ];
    for (k, v) in texts {
        let a = post(&format!("{fb}/put"), &json!({"key": k, "value": v}));
        assert_eq!(a.status, 200, "{}", a.body);
    }
    // Linearizable by default: every write acknowledged above is found,
    // best match first, through a follower.
    let got = hits(&get(&format!("{fb}/search?q=lazy")));
    let mut keys: Vec<&str> = got.iter().map(|(k, _)| k.as_str()).collect();
    assert!(got.windows(2).all(|w| w[0].1 >= w[1].1), "{got:?}");
    keys.sort_unstable();
    assert_eq!(keys, ["doc:1", "doc:2", "note:1"]);
    let got = hits(&get(&format!("{fb}/search?q=LAZY%20quick&prefix=doc:")));
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].0, "doc:1");
    assert_eq!(hits(&get(&format!("{fb}/search?q=lazy&limit=2"))).len(), 2);
    let got = hits(&get(&format!("{fb}/search?q=STRASSE")));
    assert_eq!(
        got.iter().map(|h| h.0.as_str()).collect::<Vec<_>>(),
        ["doc:4"]
    );
    assert!(hits(&get(&format!("{fb}/search?q=nothinghere"))).is_empty());
    let a = get(&format!("{fb}/search?q=lazy&serializable=true"));
    assert!(!hits(&a).is_empty(), "{}", a.body);

    // Similar: the near duplicate first, cosine scores in [-1, 1].
    let got = hits(&get(&format!(
        "{fb}/similar?q=a%20quick%20brown%20fox%20jumped%20over%20lazy%20dogs&k=3"
    )));
    assert_eq!(got.len(), 3, "{got:?}");
    assert_eq!(got[0].0, "doc:1", "{got:?}");
    assert!(got.iter().all(|h| (-1.0..=1.0).contains(&h.1)), "{got:?}");
    assert!(got.windows(2).all(|w| w[0].1 >= w[1].1), "{got:?}");
    let got = hits(&get(&format!(
        "{fb}/similar?q=lazy%20dogs&k=1&prefix=note:"
    )));
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].0, "note:1");

    // Bad input: 400 with the gateway's error shape, nothing else happens.
    for bad in [
        "/search",
        "/search?q=",
        "/search?q=...",
        "/search?q=lazy&k=3",
        "/similar?q=lazy&limit=3",
        "/search?q=lazy&limit=x",
        "/search?q=lazy&bogus=1",
        "/similar?q=%20",
    ] {
        let a = get(&format!("{fb}{bad}"));
        assert_eq!(a.status, 400, "{bad}: {}", a.body);
        assert_eq!(a.json()["ok"], false, "{bad}: {}", a.body);
        assert!(a.json()["error"].is_string(), "{bad}: {}", a.body);
    }
    for n in &mut c.nodes {
        assert_eq!(n.stop(), Some(0), "node {}", n.id);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_pass_through_the_gateway() {
    let _serial = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("auth");
    std::fs::write(&file, "admin-tok admin\nread-tok read\nwrite-tok write\n").expect("auth");
    let file = file.to_string_lossy().into_owned();
    let (c, bases) = http_cluster(1, &["--auth-file", &file]);
    let b = &bases[0];
    wait_status(b, "/readyz", 200, Duration::from_secs(20));
    let body = r#"{"key":"a","value":"1"}"#;
    let a = call("POST", &format!("{b}/put"), Some(body), None);
    assert_eq!(a.status, 401, "{}", a.body);
    let a = call("POST", &format!("{b}/put"), Some(body), Some("read-tok"));
    assert_eq!(a.status, 403, "{}", a.body);
    assert_eq!(a.json()["definite"], true);
    let a = call("POST", &format!("{b}/put"), Some(body), Some("wrong"));
    assert_eq!(a.status, 403, "{}", a.body);
    let a = call("POST", &format!("{b}/put"), Some(body), Some("write-tok"));
    assert_eq!(a.status, 200, "{}", a.body);
    let a = call("GET", &format!("{b}/get?key=a"), None, Some("read-tok"));
    assert_eq!(a.json()["value"], "1");
    assert_eq!(
        call("GET", &format!("{b}/get?key=a"), None, None).status,
        401
    );
    // The operator's routes need no token; the page lists the members with
    // the node's own admin token.
    assert_eq!(get(&format!("{b}/livez")).status, 200);
    assert_eq!(get(&format!("{b}/raft/status")).json()["state"], "leader");
    let v = get(&format!("{b}/api/cluster")).json();
    assert_eq!(v["members"].as_array().map(Vec::len), Some(1), "{v}");
    assert!(!c.logs().contains("write-tok"), "a token reached the log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_limit_hit_shows_in_metrics() {
    let _serial = serial();
    let (c, bases) = http_cluster(
        1,
        &["--max-connections", "4", "--handshake-timeout-ms", "300"],
    );
    let b = &bases[0];
    wait_status(b, "/readyz", 200, Duration::from_secs(20));
    let before = scrape(b);
    let limit = |m: &HashMap<String, f64>, l: &str| {
        metric(m, &format!("flashkv_net_limit_hits_total{{limit=\"{l}\"}}"))
    };
    // Beyond the cap, a connection's first request is refused.
    let status = {
        use protobuf::Message as _;
        let mut r = kv_net::proto::Request::new();
        r.id = 1;
        r.set_status(kv_net::proto::Status::new());
        let mut f = kv_net::proto::Frame::new();
        f.set_request(r);
        let body = f.write_to_bytes().expect("encode");
        let mut framed = u32::try_from(body.len())
            .expect("len")
            .to_be_bytes()
            .to_vec();
        framed.extend(body);
        framed
    };
    let mut held = Vec::new();
    for _ in 0..8 {
        let mut s = std::net::TcpStream::connect(&c.nodes[0].listen).expect("connect");
        std::io::Write::write_all(&mut s, &status).expect("write");
        held.push(s);
    }
    let wait_for = |l: &str| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let hits = limit(&scrape(b), l) - limit(&before, l);
            if hits >= 1.0 {
                return;
            }
            assert!(Instant::now() < deadline, "no {l} hit counted");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    wait_for("connections");
    drop(held);
    // A connection that sends nothing is closed after the handshake timeout.
    let silent = std::net::TcpStream::connect(&c.nodes[0].listen).expect("connect");
    wait_for("handshake_timeout");
    drop(silent);
    // And the node serves on.
    let a = post(&format!("{b}/put"), &json!({"key": "after", "value": "1"}));
    assert_eq!(a.status, 200, "{}", a.body);
}
