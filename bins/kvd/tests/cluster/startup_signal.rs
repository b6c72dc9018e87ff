//! SIGTERM during start-up (SPEC section 3): arriving while the node parses
//! its flags, opens its data directory or starts serving, it ends in a clean
//! shutdown and exit 0.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{free_ports, kvd_bin, serial, signal};

#[test]
fn sigterm_during_start_up_exits_zero() {
    let _serial = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    // From while the node parses its flags and opens its data directory to
    // after it serves. (In the first milliseconds the process may still be
    // being loaded, before any code of its own runs; no program can guard
    // that window.)
    let plan = [5_000u64, 10_000, 20_000, 50_000, 100_000, 200_000];
    let mut failures = Vec::new();
    for (run, when) in plan.iter().enumerate() {
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
        std::thread::sleep(Duration::from_micros(*when));
        signal(&child, libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(15);
        let status = loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("kvd did not stop within 15 s of SIGTERM sent after {when} us");
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
            failures.push(format!("after {when} us: {status}; stderr: {stderr}"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}
