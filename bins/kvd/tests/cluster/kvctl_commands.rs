//! Every kvctl command and exit code against a 3-node cluster.

use std::time::Duration;

use crate::common::{Cluster, free_ports, kvctl, serial, signal, stdout};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn check(ep: &[String], args: &[&str], input: Option<&str>, code: i32, out: &str) -> String {
    let o = kvctl(ep, args, input);
    let text = stdout(&o);
    assert_eq!(
        (o.status.code(), text.as_str()),
        (Some(code), out),
        "kvctl {args:?}; stderr: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn every_command_and_exit_code() {
    let _serial = serial();
    let rt = rt();
    let mut c = Cluster::new(3, &[]);
    c.start_all();
    let leader = rt.block_on(c.wait_leader(Duration::from_secs(20)));
    let ep = c.endpoints();

    check(&ep, &["put", "user:1", "Jane"], None, 0, "OK\n");
    check(&ep, &["get", "user:1"], None, 0, "Jane\n");
    let err = check(&ep, &["get", "nope"], None, 1, "");
    assert_eq!(err.trim(), "key not found");
    check(
        &ep,
        &["--json", "get", "nope"],
        None,
        1,
        "{\"ok\":true,\"found\":false}\n",
    );
    check(
        &ep,
        &["--json", "get", "user:1"],
        None,
        0,
        "{\"ok\":true,\"found\":true,\"value\":\"Jane\"}\n",
    );
    check(&ep, &["--serializable", "get", "user:1"], None, 0, "Jane\n");
    check(&ep, &["delete", "user:1"], None, 0, "OK\n");
    check(&ep, &["delete", "user:1"], None, 0, "OK\n");
    check(
        &ep,
        &["--json", "delete", "user:1"],
        None,
        0,
        "{\"ok\":true}\n",
    );

    // Compare-and-swap.
    check(&ep, &["cas", "k", "--absent", "v1"], None, 0, "OK\n");
    let err = check(&ep, &["cas", "k", "--absent", "v2"], None, 1, "");
    assert_eq!(err.trim(), "compare failed");
    check(
        &ep,
        &["--json", "cas", "k", "wrong", "v3"],
        None,
        1,
        "{\"ok\":false,\"error\":\"compare failed\",\"current\":\"v1\"}\n",
    );
    check(
        &ep,
        &["--json", "cas", "absent-key", "x", "y"],
        None,
        1,
        "{\"ok\":false,\"error\":\"compare failed\",\"current\":null}\n",
    );
    check(&ep, &["cas", "k", "v1", "v2"], None, 0, "OK\n");
    check(&ep, &["get", "k"], None, 0, "v2\n");

    // Range.
    for (k, v) in [("r/1", "a"), ("r/2", "b"), ("r/3", "c"), ("s/1", "d")] {
        check(&ep, &["put", k, v], None, 0, "OK\n");
    }
    check(&ep, &["range", "r/", "r/3"], None, 0, "r/1\ta\nr/2\tb\n");
    check(
        &ep,
        &["range", "--prefix", "r/", "--limit", "2", "--keys-only"],
        None,
        0,
        "r/1\nr/2\n",
    );
    check(&ep, &["range", "s"], None, 0, "s/1\td\n");
    check(
        &ep,
        &["--json", "range", "--prefix", "r/", "--limit", "1"],
        None,
        0,
        "{\"ok\":true,\"pairs\":[{\"key\":\"r/1\",\"value\":\"a\"}]}\n",
    );
    check(&ep, &["range", "zz"], None, 0, "");

    // Batch, from stdin and from a file.
    check(
        &ep,
        &["batch"],
        Some("put b1 x\ndelete r/1\nput 'b 2' \"y z\"\n"),
        0,
        "OK\n",
    );
    check(&ep, &["get", "b 2"], None, 0, "y z\n");
    check(&ep, &["get", "r/1"], None, 1, "");
    let file = c.dir.path().join("batch.txt");
    std::fs::write(&file, "put f1 1\nput f2 2\n").expect("write batch file");
    check(
        &ep,
        &["batch", file.to_str().expect("utf-8 path")],
        None,
        0,
        "OK\n",
    );
    check(&ep, &["get", "f2"], None, 0, "2\n");
    check(&ep, &["batch"], Some("put only-key\n"), 2, "");
    check(&ep, &["get", "only-key"], None, 1, "");

    // Status of every endpoint.
    let o = kvctl(&ep, &["status"], None);
    assert_eq!(o.status.code(), Some(0));
    let text = stdout(&o);
    assert_eq!(text.lines().count(), 3, "{text}");
    assert_eq!(text.matches("role=leader").count(), 1, "{text}");
    let o = kvctl(&ep, &["--json", "status"], None);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["ok"], true);
    assert_eq!(v["endpoints"].as_array().map(Vec::len), Some(3));
    assert_eq!(v["endpoints"][leader]["role"], "leader");

    // Shell: one flushed line per command, errors included; exit 0 at EOF.
    let script = "put s1 'hello world'\nget s1\n\nget missing\nbogus command\ncas s1 nope x\n\
                  put \"unterminated\nrange s1 s2\ndelete s1\n";
    let o = kvctl(&ep, &["shell"], Some(script));
    assert_eq!(o.status.code(), Some(0));
    let lines: Vec<String> = stdout(&o).lines().map(str::to_owned).collect();
    assert_eq!(lines.len(), 8, "{lines:?}");
    assert_eq!(lines[0], "OK");
    assert_eq!(lines[1], "hello world");
    assert!(lines[2].contains("key not found"), "{lines:?}");
    assert!(lines[3].starts_with("error:"), "{lines:?}");
    assert!(lines[4].contains("compare failed"), "{lines:?}");
    assert!(lines[5].starts_with("error:"), "{lines:?}");
    assert_eq!(lines[6], "s1\thello world");
    assert_eq!(lines[7], "OK");
    let o = kvctl(
        &ep,
        &["--json", "shell"],
        Some("put j 1\nget j\nget nothing\n"),
    );
    assert_eq!(
        stdout(&o),
        "{\"ok\":true}\n{\"ok\":true,\"found\":true,\"value\":\"1\"}\n{\"ok\":true,\"found\":false}\n"
    );

    // Usage errors: exit 2, nothing sent.
    check(&ep, &["get"], None, 2, "");
    check(&ep, &["--timeout", "soon", "get", "a"], None, 2, "");
    check(&ep, &["put", "", "x"], None, 2, "");
    check(&ep, &["cas", "k", "--absent", "a", "b"], None, 2, "");
    let o = kvctl(&ep, &["--json", "frobnicate"], None);
    assert_eq!(o.status.code(), Some(2));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(
        (v["ok"].clone(), v["definite"].clone()),
        (false.into(), true.into())
    );

    // Definite failure: nothing listens there.
    let dead = vec![format!("127.0.0.1:{}", free_ports(1)[0])];
    check(&dead, &["--timeout", "1s", "put", "a", "b"], None, 3, "");
    let o = kvctl(&dead, &["--json", "--timeout", "1s", "put", "a", "b"], None);
    assert_eq!(o.status.code(), Some(3));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["definite"], true);

    // Unknown outcome: the leader accepts the connection (the kernel does)
    // but is frozen, so the write is sent and never answered.
    let frozen = vec![c.nodes[leader].listen.clone()];
    let child = c.nodes[leader].child.as_ref().expect("running");
    signal(child, libc::SIGSTOP);
    let o = kvctl(
        &frozen,
        &["--json", "--timeout", "1s", "put", "u", "1"],
        None,
    );
    let get = kvctl(&frozen, &["--timeout", "500ms", "get", "u"], None);
    signal(
        c.nodes[leader].child.as_ref().expect("running"),
        libc::SIGCONT,
    );
    assert_eq!(o.status.code(), Some(4), "{}", stdout(&o));
    assert_eq!(
        stdout(&o),
        "{\"ok\":false,\"error\":\"timeout\",\"definite\":false}\n"
    );
    // A read that timed out changed nothing: definite.
    assert_eq!(get.status.code(), Some(3));

    // The load generator runs and reports both phases.
    let o = kvctl(
        &ep,
        &[
            "--json",
            "bench",
            "--clients",
            "4",
            "--requests",
            "200",
            "--value-size",
            "16",
        ],
        None,
    );
    assert_eq!(o.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["phases"][0]["op"], "put");
    assert_eq!(v["phases"][0]["ops"], 200);
    assert_eq!(v["phases"][1]["errors"], 0);

    // check perf: etcd's verdict lines, an exit code that agrees with the
    // last one, and no keys left behind.
    let o = kvctl(
        &ep,
        &["check", "perf", "--load", "s", "--seconds", "3"],
        None,
    );
    let text = stdout(&o);
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].starts_with("check perf --load s: 50 clients, 150 puts/s for 3 s"),
        "{text}"
    );
    assert!(
        lines[1].starts_with("PASS: Throughput is ")
            || lines[1].starts_with("FAIL: Throughput too low: "),
        "{text}"
    );
    assert!(
        lines[2].starts_with("PASS: Slowest request took ")
            || lines[2].starts_with("FAIL: Slowest request took too long: "),
        "{text}"
    );
    assert!(lines[3].contains("Stddev"), "{text}");
    let last = *lines.last().expect("a verdict");
    assert!(
        (last == "PASS" && o.status.code() == Some(0))
            || (last == "FAIL" && o.status.code() == Some(1)),
        "last line {last:?}, exit {:?}",
        o.status.code()
    );
    assert!(
        !text.contains("ERROR("),
        "errors under a light load: {text}"
    );
    let left = kvctl(
        &ep,
        &["range", "--prefix", "check-perf/", "--keys-only"],
        None,
    );
    assert_eq!(left.status.code(), Some(0));
    assert_eq!(stdout(&left), "", "check perf left keys behind");

    // An endpoint that does not answer gets an error entry.
    let down = (leader + 1) % 3;
    assert_eq!(c.nodes[down].stop(), Some(0));
    let o = kvctl(&ep, &["--json", "--timeout", "1s", "status"], None);
    assert_eq!(o.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert!(v["endpoints"][down]["error"].is_string(), "{v}");
    assert!(v["endpoints"][down]["role"].is_null(), "{v}");
    let o = kvctl(&ep, &["--timeout", "1s", "status"], None);
    assert_eq!(
        stdout(&o).lines().filter(|l| l.contains("error=")).count(),
        1
    );

    for n in &mut c.nodes {
        if n.is_running() {
            assert_eq!(n.stop(), Some(0), "node {} exit code", n.id);
        }
    }
}
