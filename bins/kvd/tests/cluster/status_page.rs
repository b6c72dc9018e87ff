//! The status page (`GET /`) in a real headless browser: Debian's
//! chromium, installed by the test when it is missing and the test may
//! (root with apt-get); skipped with a message only where it cannot be.
//!
//! The browser runs the page's script: the test reads the DOM after it
//! ran (every member row, the leader, the rate line of the chart drawn
//! from the last minute's samples) and takes a screenshot
//! (`FLASHKV_SCREENSHOT=path` keeps it, e.g. for the docs).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::serial;

fn find_browser() -> Option<PathBuf> {
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .find_map(|name| {
            std::env::var_os("PATH")?
                .to_str()?
                .split(':')
                .map(|d| Path::new(d).join(name))
                .find(|p| p.is_file())
        })
}

/// The browser, installed with apt-get when missing and possible.
fn browser() -> Result<PathBuf, String> {
    if let Some(b) = find_browser() {
        return Ok(b);
    }
    if !rustix::process::geteuid().is_root() {
        return Err("chromium is not installed and the test is not root".into());
    }
    eprintln!("status_page: installing chromium with apt-get (once)");
    let apt = |args: &[&str]| {
        Command::new("timeout")
            .arg("900")
            .arg("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null())
            .status()
            .map_err(|e| format!("apt-get: {e}"))
    };
    let installed = apt(&["install", "-y", "--no-install-recommends", "chromium"])?;
    if !installed.success() {
        // The package lists may be missing on a fresh machine.
        let _ = apt(&["update"])?;
        let again = apt(&["install", "-y", "--no-install-recommends", "chromium"])?;
        if !again.success() {
            return Err(format!("apt-get install chromium failed ({again})"));
        }
    }
    find_browser().ok_or_else(|| "chromium installed but not found on PATH".into())
}

/// Runs the browser on `url` with `extra` arguments; returns stdout.
fn headless(browser: &Path, profile: &Path, url: &str, extra: &[String]) -> String {
    let mut child = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--window-size=1200,760",
            // Lets the page's script run and its first refresh land.
            "--virtual-time-budget=5000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(url)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the browser");
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if child.try_wait().expect("wait").is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the browser did not finish within 90 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut out = String::new();
    if let Some(mut s) = child.stdout.take() {
        let _ = std::io::Read::read_to_string(&mut s, &mut out);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_renders_members_and_a_rate_chart_in_a_browser() {
    let browser = match browser() {
        Ok(b) => b,
        Err(why) => {
            eprintln!("SKIPPED status page browser test: {why}");
            return;
        }
    };
    let _serial = serial();
    let (c, bases) = crate::gateway::http_cluster(3, &[]);
    let leader = c.wait_leader(Duration::from_secs(20)).await;
    // The page as a follower serves it.
    let f = (leader + 1) % 3;
    let base = bases[f].clone();
    // Requests for the chart: a few seconds of load through the client.
    let client = c.client(Duration::from_secs(5));
    let ep = c.nodes[f].listen.clone();
    let started = Instant::now();
    let mut i = 0u32;
    while started.elapsed() < Duration::from_secs(4) {
        let _ = client.status(&ep).await;
        client.put(format!("k{i}"), "v").await.expect("put");
        // And through the follower's gateway, for the HTTP figures.
        let url = format!("{base}/get?key=k{i}");
        tokio::task::spawn_blocking(move || {
            ureq::get(&url).call().expect("GET through the gateway");
        })
        .await
        .expect("join");
        i += 1;
    }

    let dir = tempfile::tempdir().expect("tempdir");
    let dom = headless(
        &browser,
        &dir.path().join("p1"),
        &format!("{base}/"),
        &["--dump-dom".into()],
    );
    assert!(
        dom.contains("data-renders"),
        "the page's script did not run:\n{dom}"
    );
    for n in &c.nodes {
        assert!(
            dom.contains(&n.listen),
            "member {} missing from the page",
            n.listen
        );
    }
    assert!(dom.contains("(this node)"), "{dom}");
    assert!(dom.contains("class=\"role leader\""), "{dom}");
    // The HTTP gets above show as a rate (the page's own polling does not).
    let h_ops = dom
        .split("id=\"h_ops\">")
        .nth(1)
        .and_then(|t| t.split('<').next())
        .unwrap_or("");
    assert!(
        h_ops.parse::<f64>().is_ok_and(|r| r > 0.0),
        "HTTP rate {h_ops:?}"
    );
    for line in ["rate-line", "http-rate-line"] {
        assert!(
            dom.contains(&format!("id=\"{line}\"")),
            "no {line} was drawn:\n{dom}"
        );
    }

    let shot = std::env::var_os("FLASHKV_SCREENSHOT")
        .map_or_else(|| dir.path().join("status.png"), PathBuf::from);
    let _ = std::fs::remove_file(&shot);
    headless(
        &browser,
        &dir.path().join("p2"),
        &format!("{base}/"),
        &[format!("--screenshot={}", shot.display())],
    );
    let png = std::fs::read(&shot).expect("the browser wrote no screenshot");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    assert!(
        png.len() > 10_000,
        "a blank screenshot ({} bytes)",
        png.len()
    );
}
