//! kvd refuses to start, with one line on stderr naming the cause and a
//! non-zero exit, for a busy port, a locked or corrupt data directory and
//! bad flags; with no flags it runs a single node on 127.0.0.1:7001.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::common::{Cluster, free_ports, kvctl, kvd_bin, kvd_until_exit, serial, signal};

fn kvd(args: &[&str], cwd: &std::path::Path) -> Output {
    kvd_until_exit(args, cwd)
}

fn one_line_error(o: &Output, needle: &str) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert_ne!(o.status.code(), Some(0), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
    assert!(err.contains(needle), "{needle:?} not in {err}");
}

#[test]
fn refuses_to_start_with_a_clear_error() {
    let _serial = serial();
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();

    let busy = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let busy_addr = busy.local_addr().expect("addr").to_string();
    let o = kvd(&["--listen", &busy_addr, "--data-dir", "busy"], dir);
    one_line_error(&o, &format!("cannot listen on {busy_addr}"));
    assert!(!dir.join("busy").exists(), "data dir touched");
    drop(busy);

    one_line_error(&kvd(&["--bogus"], dir), "--bogus");
    one_line_error(&kvd(&["--id", "x"], dir), "--id");
    let busy = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let busy_addr = busy.local_addr().expect("addr").to_string();
    let o = kvd(
        &["--http-listen", &busy_addr, "--data-dir", "busy-http"],
        dir,
    );
    one_line_error(&o, &format!("cannot listen on --http-listen {busy_addr}"));
    assert!(!dir.join("busy-http").exists(), "data dir touched");
    drop(busy);
    one_line_error(
        &kvd(&["--config", "kvd.toml"], dir),
        "cannot read config file kvd.toml",
    );
    one_line_error(
        &kvd(&["--id", "4", "--peers", "1=a:1,2=b:2"], dir),
        "--peers",
    );
    one_line_error(
        &kvd(
            &["--search-embedder", "minilm", "--data-dir", "no-search"],
            dir,
        ),
        "--search-embedder needs --search",
    );
    one_line_error(
        &kvd(&["--search", "--search-embedder", "bert"], dir),
        "--search-embedder",
    );
    #[cfg(not(feature = "minilm"))]
    one_line_error(
        &kvd(
            &[
                "--search",
                "--search-embedder",
                "minilm",
                "--data-dir",
                "no-model",
            ],
            dir,
        ),
        "built without the sentence-embedding model",
    );
    assert!(
        !dir.join("no-search").exists() && !dir.join("no-model").exists(),
        "data dir touched"
    );

    // A running node holds its data directory.
    let mut c = Cluster::new(1, &[]);
    c.start_all();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(c.wait_leader(Duration::from_secs(20)));
    let data = c.nodes[0].data_dir.to_str().expect("utf-8").to_owned();
    let other = format!("127.0.0.1:{}", free_ports(1)[0]);
    one_line_error(
        &kvd(&["--listen", &other, "--data-dir", &data], dir),
        "locked",
    );
    assert_eq!(c.nodes[0].stop(), Some(0));

    // Corrupt data directory: the file is named, nothing is repaired.
    let current = c.nodes[0].data_dir.join("kv").join("CURRENT");
    let saved = std::fs::read(&current).expect("CURRENT");
    std::fs::write(&current, b"garbage\n").expect("write");
    one_line_error(
        &kvd(&["--listen", &other, "--data-dir", &data], dir),
        "CURRENT",
    );
    std::fs::write(&current, saved).expect("restore");
    let raft = c.nodes[0].data_dir.join("raft");
    let segment = std::fs::read_dir(&raft)
        .expect("raft dir")
        .map(|e| e.expect("entry").path())
        .find(|p| p.extension().is_some_and(|e| e == "seg"))
        .expect("a segment");
    let mut bytes = std::fs::read(&segment).expect("segment");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&segment, &bytes).expect("write");
    one_line_error(
        &kvd(&["--listen", &other, "--data-dir", &data], dir),
        segment.file_name().and_then(|n| n.to_str()).expect("name"),
    );
    let after = std::fs::read(&segment).expect("segment");
    assert_eq!(after, bytes, "a corrupt segment was modified");
}

#[test]
fn no_flags_runs_a_single_node_on_the_default_address() {
    let _serial = serial();
    let Ok(probe) = std::net::TcpListener::bind("127.0.0.1:7001") else {
        eprintln!("127.0.0.1:7001 is in use; skipping the no-flag default test");
        return;
    };
    drop(probe);
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut child = Command::new(kvd_bin())
        .current_dir(tmp.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn kvd");
    let endpoints = vec!["127.0.0.1:7001".to_owned()];
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut ok = false;
    while Instant::now() < deadline {
        let o = kvctl(&endpoints, &["--timeout", "1s", "put", "a", "1"], None);
        if o.status.code() == Some(0) {
            ok = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let get = kvctl(&endpoints, &["get", "a"], None);
    signal(&child, libc::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("kvd did not stop on SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(ok, "the default node never accepted a write");
    assert_eq!(String::from_utf8_lossy(&get.stdout), "1\n");
    assert_eq!(status.code(), Some(0));
    assert!(tmp.path().join("kvd-data").join("members").exists());
}
