//! kvctl without a cluster: usage errors (exit 2) and unreachable endpoints
//! (definite failure, exit 3). The cluster tests in `bins/kvd/tests` cover
//! every command against real nodes.

use std::process::{Command, Output, Stdio};

fn kvctl(args: &[&str]) -> Output {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port");
    Command::new(env!("CARGO_BIN_EXE_kvctl"))
        .env("KVCTL_ENDPOINTS", format!("127.0.0.1:{port}"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run kvctl")
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        &["frobnicate"][..],
        &["get"],
        &["put", "k"],
        &["--timeout", "5", "get", "k"],
        &["put", "", "v"],
        &["cas", "k", "only-new"],
        &["range", "--limit", "0"],
    ] {
        let o = kvctl(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        assert!(o.stdout.is_empty(), "{args:?}");
    }
    let o = kvctl(&["--json", "get"]);
    assert_eq!(o.status.code(), Some(2));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("one JSON line");
    assert_eq!(v["ok"], false);
    assert_eq!(v["definite"], true);
}

#[test]
fn unreachable_cluster_is_a_definite_failure() {
    let o = kvctl(&["--timeout", "300ms", "put", "k", "v"]);
    assert_eq!(o.status.code(), Some(3));
    let o = kvctl(&["--json", "--timeout", "300ms", "put", "k", "v"]);
    assert_eq!(o.status.code(), Some(3));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("one JSON line");
    assert_eq!(
        (v["ok"].clone(), v["definite"].clone()),
        (false.into(), true.into())
    );
    let o = kvctl(&["--json", "--timeout", "300ms", "status"]);
    assert_eq!(o.status.code(), Some(3));
}

#[test]
fn shell_survives_bad_lines_and_ends_at_eof() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kvctl"))
        .env("KVCTL_ENDPOINTS", "127.0.0.1:1")
        .args(["--timeout", "200ms", "shell"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin
            .write_all(b"bogus\n\n'unterminated\nget k\n")
            .expect("write");
    }
    let o = child.wait_with_output().expect("wait");
    assert_eq!(o.status.code(), Some(0));
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(out.lines().count(), 3, "{out}");
    assert!(out.lines().all(|l| l.starts_with("error:")), "{out}");
}
