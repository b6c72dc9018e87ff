//! Usage errors end with exit 2 and a message, never a panic, and send
//! nothing (the endpoint below has no server).

use std::process::Command;

fn kvctl(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_kvctl"))
        .env("KVCTL_ENDPOINTS", "127.0.0.1:1")
        .args(args)
        .output()
        .expect("run kvctl")
}

#[test]
fn overflowing_timeout_is_a_usage_error() {
    for timeout in ["99999999999999999999h", "1e30s", "600000000000000000m"] {
        let o = kvctl(&["--timeout", timeout, "get", "k"]);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "--timeout {timeout}: {stderr}");
        assert!(
            stderr.contains("too long") || stderr.contains("invalid"),
            "{stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    let o = kvctl(&[
        "--json",
        "--timeout",
        "99999999999999999999h",
        "put",
        "k",
        "v",
    ]);
    assert_eq!(o.status.code(), Some(2));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("one JSON object");
    assert_eq!(v["ok"], false);
    assert_eq!(v["definite"], true);
}
