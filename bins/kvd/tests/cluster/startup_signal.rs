//! SIGTERM during start-up (SPEC section 3): however early it arrives once
//! `kvd` runs, the node shuts down cleanly and exits 0.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{free_ports, kvd_bin, serial, signal};

#[test]
fn sigterm_during_start_up_exits_zero() {
    let _serial = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    // From before the node has opened anything to after it serves.
    let delays_us = [500, 1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 200_000];
    let mut failures = Vec::new();
    for (run, delay) in delays_us.iter().enumerate() {
        let port = free_ports(1)[0];
        let data = dir.path().join(format!("node{run}"));
        let mut child = Command::new(kvd_bin())
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .arg("--data-dir")
            .arg(&data)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn kvd");
        std::thread::sleep(Duration::from_micros(*delay));
        signal(&child, libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(15);
        let status = loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("kvd did not stop within 15 s of SIGTERM sent after {delay} us");
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        if status.code() != Some(0) {
            let stderr = child
                .stderr
                .take()
                .map(|mut s| {
                    let mut text = String::new();
                    let _ = std::io::Read::read_to_string(&mut s, &mut text);
                    text
                })
                .unwrap_or_default();
            failures.push(format!("after {delay} us: {status}; stderr: {stderr}"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}
