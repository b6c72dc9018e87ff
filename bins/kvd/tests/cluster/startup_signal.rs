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
    // Delays counted from the moment the node's first handler is in place
    // (before it, the process is still being loaded and no code of its own
    // runs, a window no program can guard; on a busy machine it lasts well
    // over 5 ms): from while the node parses its flags and opens its data
    // directory to after it serves.
    let plan = [0u64, 1_000, 5_000, 10_000, 20_000, 50_000, 100_000, 200_000];
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
        wait_for_sigterm_handler(&child);
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

/// Waits (at most 10 s) until the process catches SIGTERM, as the `SigCgt`
/// mask of /proc/PID/status shows.
fn wait_for_sigterm_handler(child: &std::process::Child) {
    let path = format!("/proc/{}/status", child.id());
    let bit = 1u64 << (libc::SIGTERM - 1);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let caught = std::fs::read_to_string(&path)
            .ok()
            .and_then(|status| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix("SigCgt:"))
                    .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
            })
            .is_some_and(|mask| mask & bit != 0);
        if caught {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "kvd did not install its SIGTERM handler within 10 s"
        );
        std::thread::sleep(Duration::from_micros(100));
    }
}
