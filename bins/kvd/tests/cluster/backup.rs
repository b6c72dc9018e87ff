//! `kvctl snapshot save` under write load, `snapshot info`, and `kvd
//! --restore` into a fresh 3-node cluster: every write acknowledged before
//! the save began is there with its value (SPEC section 7).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use kv_client::{Client, Options};

use crate::common::{Cluster, kvctl, serial, stdout};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn save_under_load_restore_into_a_new_cluster() {
    let _serial = serial();
    let mut c = Cluster::new(3, &["--snapshot-threshold", "300"]);
    c.start_all();
    c.wait_leader(Duration::from_secs(20)).await;
    let client = c.client(Duration::from_secs(10));
    let mut before = BTreeMap::new();
    for i in 0..300 {
        let (k, v) = (format!("k{i:04}"), format!("v{i}-{}", "x".repeat(i % 50)));
        client.put(&k, &v).await.expect("put");
        before.insert(k, v);
    }
    // Writes keep going while the backup is made and read.
    let stop = Arc::new(AtomicBool::new(false));
    let (flag, writer_client) = (stop.clone(), client.clone());
    let writer = tokio::spawn(async move {
        let mut n = 0u64;
        while !flag.load(Ordering::Relaxed) && n < 100_000 {
            n += 1;
            let _ = writer_client.put(format!("during{n}"), "x").await;
        }
        n
    });
    let file = c.dir.path().join("backup.snap");
    let path = file.to_str().expect("utf-8 path").to_owned();
    let endpoints = c.endpoints();
    let p = path.clone();
    let out =
        tokio::task::spawn_blocking(move || kvctl(&endpoints, &["snapshot", "save", &p], None))
            .await
            .expect("kvctl");
    stop.store(true, Ordering::Relaxed);
    let during = writer.await.expect("writer");
    assert!(
        out.status.success(),
        "save: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let saved = stdout(&out);
    assert!(saved.starts_with(&format!("saved {path}: ")), "{saved}");
    assert!(!std::path::Path::new(&format!("{path}.part")).exists());

    let info = kvctl(&c.endpoints(), &["--json", "snapshot", "info", &path], None);
    assert!(info.status.success());
    let v: serde_json::Value = serde_json::from_str(stdout(&info).trim()).expect("json");
    assert!(v["keys"].as_u64().expect("keys") >= 300, "{v}");
    assert!(saved.contains(&format!(
        "checksum {}",
        v["checksum"].as_str().expect("checksum")
    )));
    for n in &mut c.nodes {
        n.stop();
    }

    // A damaged copy is refused, naming the file.
    let damaged = c.dir.path().join("damaged.snap");
    let mut bytes = std::fs::read(&file).expect("read backup");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    std::fs::write(&damaged, bytes).expect("write");
    let bad = kvctl(
        &c.endpoints(),
        &["snapshot", "info", damaged.to_str().expect("path")],
        None,
    );
    assert_eq!(bad.status.code(), Some(2));
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("damaged.snap"), "{err}");

    // A new cluster, elsewhere, from the file.
    let mut r = Cluster::new(3, &["--restore", &path]);
    r.start_all();
    r.wait_leader(Duration::from_secs(20)).await;
    for i in 0..3 {
        assert!(
            r.nodes[i]
                .log_text()
                .contains("restored from a snapshot file"),
            "node {} did not restore",
            i + 1
        );
    }
    let rc = r.client(Duration::from_secs(10));
    rc.put("after-restore", "1")
        .await
        .expect("write to the restored cluster");
    let commit = rc
        .status(&r.nodes[0].listen)
        .await
        .expect("status")
        .commit_index;
    for i in 0..3 {
        r.wait_applied(i, commit, Duration::from_secs(20)).await;
        let local = Client::new(
            vec![r.nodes[i].listen.clone()],
            Options {
                serializable: true,
                ..Options::default()
            },
        );
        for (k, v) in &before {
            assert_eq!(
                local.get(k).await.expect("get"),
                Some(Bytes::from(v.clone())),
                "{k} on restored node {}",
                i + 1
            );
        }
    }
    // Its membership is the new cluster's, not the old one's.
    let m = rc.member_list().await.expect("member list");
    let addrs: Vec<String> = m.members.iter().map(|x| x.peer_addr.clone()).collect();
    assert_eq!(addrs, r.endpoints());
    eprintln!("backup: {during} writes ran during the save; {saved}");
}
