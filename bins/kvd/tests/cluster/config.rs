//! `kvd --config FILE` and `--log-format json` on real processes: the
//! repository's example file starts a node; the file's settings are used
//! and a flag on the command line wins over them; an unknown key, bad
//! TOML or a missing file is a one-line error and no data is touched; JSON
//! logs are one object per line from start to stop, fatal errors included.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use bytes::Bytes;

use crate::common::{Cluster, free_ports, kvd_until_exit, serial};

fn example_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("kvd.example.toml")
}

/// A one-node cluster whose node is not started; its log and data dir are
/// in the cluster's temporary directory.
fn one_node(listen: &str) -> Cluster {
    Cluster::with_peers(vec![listen.to_owned()], vec![String::new()], &[])
}

fn addr(port: u16) -> String {
    format!("127.0.0.1:{port}")
}

/// Puts and reads back a key through the node at index 0.
async fn put_get(c: &Cluster) {
    c.wait_leader(Duration::from_secs(20)).await;
    let client = c.client(Duration::from_secs(5));
    client.put("config", "works").await.expect("put");
    assert_eq!(
        client.get("config").await.expect("get"),
        Some(Bytes::from_static(b"works"))
    );
}

fn one_line_error(o: &Output, needles: &[&str]) -> String {
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_ne!(o.status.code(), Some(0), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
    for needle in needles {
        assert!(err.contains(needle), "{needle:?} not in {err}");
    }
    err
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_file_starts_a_node() {
    let _serial = serial();
    let listen = addr(free_ports(1)[0]);
    let mut c = one_node(&listen);
    let data = c.nodes[0].data_dir.clone();
    c.nodes[0].start_with_only([
        "--config".as_ref(),
        example_file().as_os_str(),
        "--listen".as_ref(),
        listen.as_ref(),
        "--data-dir".as_ref(),
        data.as_os_str(),
    ]);
    put_get(&c).await;
    assert_eq!(c.nodes[0].stop(), Some(0));
    let log = c.nodes[0].log_text();
    assert!(log.contains("flags read from the config file"), "{log}");
    assert!(log.contains("kvd.example.toml"), "{log}");
    assert!(data.join("members").exists(), "data dir not used: {log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_file_is_used_and_the_command_line_wins() {
    let _serial = serial();
    let ports = free_ports(2);
    let (in_file, on_command_line) = (addr(ports[0]), addr(ports[1]));
    let mut c = one_node(&on_command_line);
    let file_data = c.dir.path().join("from-file");
    let file = c.dir.path().join("kvd.toml");
    std::fs::write(
        &file,
        format!(
            "id = 3\nlisten = \"{in_file}\"\ndata-dir = {:?}\n\
             peers = [\"3={on_command_line}\"]\nlog-level = \"debug\"\n",
            file_data.to_str().expect("utf-8")
        ),
    )
    .expect("write config");
    c.nodes[0].id = 3;
    c.nodes[0].start_with_only([
        "--listen".as_ref(),
        on_command_line.as_ref(),
        "--log-level".as_ref(),
        "info".as_ref(),
        "--config".as_ref(),
        file.as_os_str(),
    ]);
    put_get(&c).await;
    let status = c
        .client(Duration::from_secs(5))
        .status(&on_command_line)
        .await
        .expect("status");
    assert_eq!(status.id, 3, "the file's id");
    assert!(
        std::net::TcpStream::connect(&in_file).is_err(),
        "the file's listen address is served too"
    );
    assert_eq!(c.nodes[0].stop(), Some(0));
    let log = c.nodes[0].log_text();
    assert!(
        file_data.join("members").exists(),
        "the file's data dir: {log}"
    );
    assert!(
        !log.contains("DEBUG"),
        "the command line's log level: {log}"
    );
}

#[test]
fn unknown_keys_bad_toml_and_missing_files_are_one_line_errors() {
    let _serial = serial();
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let listen = addr(free_ports(1)[0]);
    let run = |text: &str| {
        std::fs::write(dir.join("kvd.toml"), text).expect("write config");
        kvd_until_exit(["--config", "kvd.toml", "--listen", &listen], dir)
    };

    let o = run("id = 2\ndata-dir = \"data\"\ncolour = \"blue\"\n");
    one_line_error(&o, &["kvd.toml", "unknown key `colour` (line 3)"]);
    assert!(!dir.join("data").exists(), "data dir touched");

    let o = run("data-dir = \"data\"\nid = 2\nlisten = \"unterminated\n");
    one_line_error(&o, &["kvd.toml:3:", "not valid TOML"]);
    assert!(!dir.join("data").exists(), "data dir touched");

    let o = run("data-dir = \"data\"\nid = \"two\"\n");
    one_line_error(&o, &["'two'", "--id", "set in kvd.toml"]);
    assert!(!dir.join("data").exists(), "data dir touched");

    let o = kvd_until_exit(["--config", "missing.toml", "--data-dir", "data"], dir);
    one_line_error(&o, &["cannot read config file missing.toml"]);
    assert!(!dir.join("data").exists(), "data dir touched");

    // The list after "required arguments were not provided:" stays on the
    // line.
    let o = kvd_until_exit(["--cert-file", "c.pem", "--data-dir", "data"], dir);
    one_line_error(&o, &["not provided: --key-file"]);
}

/// `text` as JSON log lines: every line an object with a timestamp, a
/// level and a target.
fn json_lines(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}\nlog:\n{text}"));
            for key in ["timestamp", "level", "target"] {
                assert!(v[key].is_string(), "no {key}: {line}");
            }
            assert!(
                ["TRACE", "DEBUG", "INFO", "WARN", "ERROR"]
                    .contains(&v["level"].as_str().unwrap_or("")),
                "level: {line}"
            );
            v
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_one_object_per_line() {
    let _serial = serial();
    let mut c = Cluster::new(1, &["--log-format", "json"]);
    c.start_all();
    put_get(&c).await;
    assert_eq!(c.nodes[0].stop(), Some(0));
    let log = c.nodes[0].log_text();
    let lines = json_lines(&log);
    let started = lines
        .iter()
        .find(|v| v["fields"]["message"] == "node started")
        .unwrap_or_else(|| panic!("no node started line:\n{log}"));
    assert_eq!(started["level"], "INFO");
    assert_eq!(started["fields"]["id"], 1);
    assert_eq!(started["fields"]["listen"], c.nodes[0].listen.as_str());
    assert!(
        lines
            .iter()
            .any(|v| v["fields"]["message"] == "SIGTERM: shutting down"),
        "{log}"
    );

    // A fatal error is a JSON line too.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let busy_addr = busy.local_addr().expect("addr").to_string();
    let o = kvd_until_exit(
        [
            "--log-format",
            "json",
            "--listen",
            &busy_addr,
            "--data-dir",
            "busy",
        ],
        c.dir.path(),
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert_ne!(o.status.code(), Some(0), "{err}");
    let lines = json_lines(&err);
    let last = lines.last().expect("a line");
    assert_eq!(last["level"], "ERROR", "{err}");
    let message = last["fields"]["message"].as_str().unwrap_or("");
    assert!(
        message.contains(&format!("cannot listen on {busy_addr}")),
        "{err}"
    );
    assert!(!c.dir.path().join("busy").exists(), "data dir touched");
}
