//! `kvd --search`: `kvctl search` / `kvctl similar` against a 3-node
//! cluster, compared with a brute-force scan of what was written; writes
//! acknowledged before a search are in it; followers answer from their own
//! index; the index survives a restart and is rebuilt when deleted.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::common::{Cluster, kvctl, serial, stdout};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn words(text: &str) -> BTreeSet<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

/// The keys of `model` (starting with `prefix`) whose value holds every
/// word of `query`.
fn brute_force(model: &BTreeMap<String, String>, query: &str, prefix: &str) -> BTreeSet<String> {
    let want = words(query);
    model
        .iter()
        .filter(|(k, v)| k.starts_with(prefix) && want.is_subset(&words(v)))
        .map(|(k, _)| k.clone())
        .collect()
}

/// `kvctl search` against `ep`: the keys it printed, in order.
fn search(ep: &[String], extra: &[&str], query: &str) -> Vec<String> {
    let mut args = extra.to_vec();
    args.push("search");
    args.extend(query.split(' '));
    args.extend(["--limit", "1000"]);
    let o = kvctl(ep, &args, None);
    assert_eq!(
        o.status.code(),
        Some(0),
        "kvctl {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    stdout(&o).lines().map(str::to_owned).collect()
}

/// Checks every query against the brute force, through `ep`.
fn check_all(ep: &[String], extra: &[&str], model: &BTreeMap<String, String>, what: &str) {
    let queries = [
        "apple",
        "banana cherry",
        "APPLE Date",
        "elder fig grape",
        "kiwi",
        "nothinghere",
        "lemon apple",
    ];
    for q in queries {
        let got = search(ep, extra, q);
        let set: BTreeSet<String> = got.iter().cloned().collect();
        assert_eq!(set.len(), got.len(), "{what}: duplicate keys for {q:?}");
        assert_eq!(set, brute_force(model, q, ""), "{what}: search {q:?}");
    }
    let mut args = extra.to_vec();
    args.extend(["search", "apple", "--prefix", "doc:1", "--limit", "1000"]);
    let o = kvctl(ep, &args, None);
    let set: BTreeSet<String> = stdout(&o).lines().map(str::to_owned).collect();
    assert_eq!(set, brute_force(model, "apple", "doc:1"), "{what}: prefix");
}

const VOCAB: [&str; 12] = [
    "apple", "Banana", "cherry", "date", "elder", "fig", "grape", "kiwi", "lemon", "mango", "nut",
    "olive",
];

#[test]
fn search_and_similar_follow_writes_on_every_node() {
    let _serial = serial();
    let rt = rt();
    let mut c = Cluster::new(3, &["--search"]);
    c.start_all();
    let leader = rt.block_on(c.wait_leader(Duration::from_secs(20)));
    let ep = c.endpoints();
    let client = c.client(Duration::from_secs(5));

    // Deterministic texts of 3-7 words over a small vocabulary.
    let mut model = BTreeMap::new();
    let mut x: u64 = 7;
    for i in 0..60 {
        let n = 3 + (i % 5);
        let text: Vec<&str> = (0..n)
            .map(|_| {
                x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                VOCAB[((x >> 33) % VOCAB.len() as u64) as usize]
            })
            .collect();
        model.insert(format!("doc:{i:02}"), text.join(" "));
    }
    rt.block_on(async {
        for (k, v) in &model {
            client.put(k, v).await.expect("put");
        }
    });
    check_all(&ep, &[], &model, "leader");

    // Acknowledged writes are in a search issued after them: overwrite,
    // delete, a batch.
    rt.block_on(client.put("doc:03", "zebra unicorn apple"))
        .expect("put");
    model.insert("doc:03".into(), "zebra unicorn apple".into());
    assert_eq!(search(&ep, &[], "zebra"), ["doc:03"]);
    assert_eq!(search(&ep, &[], "unicorn APPLE"), ["doc:03"]);
    rt.block_on(client.put("doc:03", "plain words"))
        .expect("put");
    model.insert("doc:03".into(), "plain words".into());
    assert!(search(&ep, &[], "zebra").is_empty());
    rt.block_on(client.delete("doc:04")).expect("delete");
    model.remove("doc:04");
    rt.block_on(client.batch(vec![
        kv_client::BatchOp::Put("doc:90".into(), "zebra lemon".into()),
        kv_client::BatchOp::Put("doc:91".into(), "zebra kiwi".into()),
        kv_client::BatchOp::Delete("doc:05".into()),
    ]))
    .expect("batch");
    model.insert("doc:90".into(), "zebra lemon".into());
    model.insert("doc:91".into(), "zebra kiwi".into());
    model.remove("doc:05");
    assert_eq!(search(&ep, &[], "zebra"), ["doc:90", "doc:91"]);
    check_all(&ep, &[], &model, "after overwrites");

    // A query without any word is invalid input.
    let o = kvctl(&ep, &["search", "..."], None);
    assert_eq!(o.status.code(), Some(2), "{}", stdout(&o));

    // similar: the near-duplicate first, scores in [-1, 1], best first.
    rt.block_on(async {
        client
            .put("near:1", "the quick brown fox jumps over the lazy dog")
            .await
            .expect("put");
        client
            .put(
                "near:2",
                "replicated databases elect a leader by majority vote",
            )
            .await
            .expect("put");
    });
    let o = kvctl(
        &ep,
        &[
            "similar",
            "a quick brown fox jumped over lazy dogs",
            "--top-k",
            "5",
        ],
        None,
    );
    assert_eq!(o.status.code(), Some(0));
    let lines: Vec<(String, f64)> = stdout(&o)
        .lines()
        .map(|l| {
            let (k, s) = l.split_once('\t').expect("KEY<TAB>SCORE");
            (k.to_owned(), s.parse().expect("score"))
        })
        .collect();
    assert_eq!(lines.len(), 5, "{lines:?}");
    assert_eq!(lines[0].0, "near:1", "{lines:?}");
    assert!(lines[0].1 > 0.5 && lines[0].1 <= 1.0, "{lines:?}");
    assert!(lines.windows(2).all(|w| w[0].1 >= w[1].1), "{lines:?}");
    let o = kvctl(
        &ep,
        &[
            "--json",
            "similar",
            "quick brown fox",
            "--prefix",
            "near:",
            "--top-k",
            "1",
        ],
        None,
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["hits"][0]["key"], "near:1", "{v}");
    model.insert(
        "near:1".into(),
        "the quick brown fox jumps over the lazy dog".into(),
    );
    model.insert(
        "near:2".into(),
        "replicated databases elect a leader by majority vote".into(),
    );

    // Through a follower alone: linearizable (a write just acknowledged
    // by the leader is found) and serializable.
    let f = (0..3).find(|&i| i != leader).expect("a follower");
    let fep = vec![c.nodes[f].listen.clone()];
    rt.block_on(client.put("doc:92", "zebra olive"))
        .expect("put");
    model.insert("doc:92".into(), "zebra olive".into());
    assert_eq!(search(&fep, &[], "zebra"), ["doc:90", "doc:91", "doc:92"]);
    check_all(&fep, &[], &model, "follower");
    let o = kvctl(&fep, &["--serializable", "search", "olive", "zebra"], None);
    assert_eq!(o.status.code(), Some(0));

    // A restarted node's index is still right, also for what was written
    // while it was down.
    assert_eq!(c.nodes[f].stop(), Some(0));
    rt.block_on(client.put("doc:93", "zebra mango"))
        .expect("put");
    model.insert("doc:93".into(), "zebra mango".into());
    c.nodes[f].start();
    check_all(&fep, &[], &model, "restarted follower");
    assert_eq!(search(&fep, &[], "zebra mango"), ["doc:93"]);
    let log = c.nodes[f].log_text();
    let ready = log.lines().rfind(|l| l.contains("search index ready"));
    assert!(
        ready.is_some_and(|l| l.contains("opened")),
        "a clean restart opens the index as it was:\n{log}"
    );

    // Its index deleted while it was stopped: rebuilt from the engine.
    assert_eq!(c.nodes[f].stop(), Some(0));
    let dir = c.nodes[f].data_dir.join("search");
    assert!(dir.is_dir(), "{}", dir.display());
    std::fs::remove_dir_all(&dir).expect("remove the index");
    rt.block_on(client.delete("doc:93")).expect("delete");
    model.remove("doc:93");
    c.nodes[f].start();
    check_all(&fep, &[], &model, "rebuilt follower");
    assert!(search(&fep, &[], "mango zebra").is_empty());
    let log = c.nodes[f].log_text();
    let ready = log.lines().rfind(|l| l.contains("search index ready"));
    assert!(ready.is_some_and(|l| l.contains("rebuilt")), "{log}");
    drop(client);
    for n in &mut c.nodes {
        assert_eq!(n.stop(), Some(0), "node {}", n.id);
    }
}

#[test]
fn a_node_without_search_says_so() {
    let _serial = serial();
    let rt = rt();
    let mut c = Cluster::new(1, &[]);
    c.start_all();
    rt.block_on(c.wait_leader(Duration::from_secs(20)));
    let o = kvctl(&c.endpoints(), &["search", "anything"], None);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(3), "{err}");
    assert!(
        err.contains("search is not enabled on this node (kvd --search)"),
        "{err}"
    );
}

/// `kvd --search --search-embedder minilm` (a kvd built with `--features
/// minilm`): `kvctl similar` finds a value from a paraphrase that shares
/// almost no word with it, on the leader and on each follower, and after a
/// restart (the saved index, built with the model, is opened again).
#[cfg(feature = "minilm")]
#[test]
fn similar_by_meaning_with_the_bundled_model() {
    const PAIRS: [(&str, &str); 6] = [
        (
            "The car would not start this morning",
            "my automobile failed to turn on today",
        ),
        (
            "She adopted a small puppy from the shelter",
            "a young dog was taken home from the rescue",
        ),
        (
            "The doctor prescribed antibiotics for the infection",
            "the physician gave medicine against bacteria",
        ),
        (
            "Traffic was terrible on the highway",
            "the motorway was jammed with vehicles",
        ),
        (
            "He quit his job to start a company",
            "he resigned to found his own business",
        ),
        (
            "The river froze during the cold winter",
            "ice covered the stream in the freezing season",
        ),
    ];
    let _serial = serial();
    let rt = rt();
    let mut c = Cluster::new(3, &["--search", "--search-embedder", "minilm"]);
    c.start_all();
    rt.block_on(c.wait_leader(Duration::from_secs(20)));
    let ep = c.endpoints();
    let client = c.client(Duration::from_secs(10));
    rt.block_on(async {
        for (i, (doc, _)) in PAIRS.iter().enumerate() {
            client.put(&format!("doc:{i}"), doc).await.expect("put");
        }
    });
    let top1 = |ep: &[String], query: &str| -> String {
        let o = kvctl(ep, &["similar", query, "--top-k", "1"], None);
        assert_eq!(
            o.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&o.stderr)
        );
        let out = stdout(&o);
        out.split('\t').next().expect("KEY<TAB>SCORE").to_owned()
    };
    let check = |what: &str| {
        for (node, e) in ep.iter().enumerate() {
            for (i, (_, query)) in PAIRS.iter().enumerate() {
                assert_eq!(
                    top1(std::slice::from_ref(e), query),
                    format!("doc:{i}"),
                    "{what}, node {}: {query:?}",
                    node + 1
                );
            }
        }
    };
    check("written");
    c.nodes[1].stop();
    c.nodes[1].start();
    rt.block_on(c.wait_leader(Duration::from_secs(20)));
    check("after a restart");
    let log = c.nodes[1].log_text();
    assert!(log.contains("minilm"), "the log names the embedder:\n{log}");
    let ready = log.lines().rfind(|l| l.contains("search index ready"));
    assert!(
        ready.is_some_and(|l| l.contains("opened")),
        "the index built with the model is opened again, not rebuilt:\n{log}"
    );
    drop(client);
    for n in &mut c.nodes {
        assert_eq!(n.stop(), Some(0));
    }
}
