//! `--auth-file` (SPEC section 10): every request needs a token whose role
//! allows it; `read` may get, range and ask status, `write` also writes,
//! `admin` also changes membership and takes backups. A refusal is a
//! definite `permission denied` (kvctl exit 3) and applies nothing; tokens
//! never reach the logs. A node joins a cluster that checks tokens with the
//! admin token of its own (identical) auth file.

use std::time::Duration;

use kv_client::{Client, Error, Options};

use crate::common::{Cluster, kvctl, serial, stdout};

const READ: &str = "rd-7f3c1b9a2e";
const WRITE: &str = "wr-5d8e0c4f61";
const ADMIN: &str = "ad-2b6a9e7d03";

fn client(c: &Cluster, token: Option<&str>) -> Client {
    Client::new(
        c.endpoints(),
        Options {
            timeout: Duration::from_secs(5),
            token: token.map(str::to_owned),
            ..Options::default()
        },
    )
}

/// Waits (bounded) until node `i` answers status with `applied >= index`
/// and a known leader, asking with `cl`.
async fn wait_node(c: &Cluster, cl: &Client, i: usize, index: u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(s) = cl.status(&c.nodes[i].listen).await
            && s.leader_id != 0
            && s.applied_index >= index
        {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "node {} not ready; logs:\n{}",
            i + 1,
            c.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn denied<T: std::fmt::Debug>(r: kv_client::Result<T>, what: &str) {
    match r {
        Err(e @ Error::PermissionDenied(_)) => assert!(e.is_definite(), "{what}: {e}"),
        other => panic!("{what}: expected permission denied, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_role_does_exactly_what_it_may_and_refusals_apply_nothing() {
    let _serial = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("auth");
    std::fs::write(
        &file,
        format!("# roles\n{READ} read\n{WRITE} write\n{ADMIN} admin\n"),
    )
    .expect("write");
    let file = file.to_str().expect("utf-8").to_owned();
    let mut c = Cluster::new(3, &["--auth-file", &file]);
    c.start_all();
    let (none, wrong) = (client(&c, None), client(&c, Some("rd-7f3c1b9a2f")));
    let (read, write, admin) = (
        client(&c, Some(READ)),
        client(&c, Some(WRITE)),
        client(&c, Some(ADMIN)),
    );
    for i in 0..3 {
        wait_node(&c, &read, i, 0).await;
    }
    denied(
        none.status(&c.nodes[0].listen).await,
        "status without a token",
    );

    // No token, or a wrong one: nothing at all.
    for (who, cl) in [("no token", &none), ("a wrong token", &wrong)] {
        denied(cl.put("k", "from nobody").await, who);
        denied(cl.get("k").await, who);
        denied(cl.member_list().await, who);
    }
    // read: reads and status only.
    denied(read.put("k", "from read").await, "read put");
    denied(read.delete("k").await, "read delete");
    denied(read.member_list().await, "read member list");
    denied(read.snapshot_begin().await, "read backup");
    assert_eq!(
        read.get("k").await.expect("read get"),
        None,
        "the refused puts applied nothing"
    );
    read.status(&c.nodes[0].listen).await.expect("read status");
    // write: also writes.
    write.put("k", "v1").await.expect("write put");
    assert_eq!(
        read.get("k").await.expect("get").as_deref(),
        Some(&b"v1"[..])
    );
    denied(write.member_list().await, "write member list");
    denied(write.member_remove(3).await, "write member remove");
    denied(write.snapshot_begin().await, "write backup");
    // admin: everything.
    admin.put("k", "v2").await.expect("admin put");
    assert_eq!(
        admin
            .member_list()
            .await
            .expect("admin member list")
            .members
            .len(),
        3
    );
    let backup = admin.snapshot_begin().await.expect("admin backup");
    admin.snapshot_release(&backup).await.expect("release");

    // kvctl: --token and $KVCTL_TOKEN; refusals exit 3.
    let eps = c.endpoints();
    let o = kvctl(&eps, &["get", "k"], None);
    assert_eq!(o.status.code(), Some(3), "{o:?}");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("permission denied"),
        "{o:?}"
    );
    let o = kvctl(&eps, &["--token", READ, "put", "k", "v3"], None);
    assert_eq!(o.status.code(), Some(3), "{o:?}");
    let o = kvctl(&eps, &["--token", READ, "get", "k"], None);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    assert_eq!(stdout(&o).trim(), "v2");
    let mut cmd = std::process::Command::new(crate::common::kvctl_bin());
    let o = cmd
        .env("KVCTL_ENDPOINTS", eps.join(","))
        .env("KVCTL_TOKEN", ADMIN)
        .args(["member", "list"])
        .output()
        .expect("kvctl");
    assert_eq!(o.status.code(), Some(0), "{o:?}");

    // A node added by an admin joins with its own auth file's admin token.
    admin.put("before-join", "1").await.expect("put");
    let j = c.add_joining(&["--auth-file", &file]);
    admin
        .member_add(c.nodes[j].id, &c.nodes[j].listen, None, false)
        .await
        .expect("member add");
    c.nodes[j].start();
    let commit = admin
        .status(&c.nodes[0].listen)
        .await
        .expect("status")
        .commit_index;
    wait_node(&c, &read, j, commit).await;

    for n in &c.nodes {
        let log = n.log_text();
        assert!(
            log.contains("client requests need a token"),
            "node {}:\n{log}",
            n.id
        );
        for t in [READ, WRITE, ADMIN, "rd-7f3c1b9a2f"] {
            assert!(!log.contains(t), "node {} logged a token:\n{log}", n.id);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_auth_file_stops_the_start_naming_the_line() {
    let _serial = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("auth");
    std::fs::write(&file, "good-token admin\nother-token superuser\n").expect("write");
    let out = std::process::Command::new(crate::common::kvd_bin())
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--auth-file")
        .arg(&file)
        .output()
        .expect("run kvd");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("line 2: unknown role"), "{err}");
    assert!(!err.contains("good-token"), "{err}");
}
