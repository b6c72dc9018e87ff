//! `--cert-file/--key-file` and `--trusted-ca-file` (SPEC section 10): a
//! TLS cluster serves kvctl with the CA and refuses it without (plaintext,
//! or a certificate of another CA); with a client CA it takes only clients
//! presenting a certificate of that CA. Peers keep replicating over
//! plaintext links on the same port. Refusals are logged.

use std::path::Path;
use std::time::Duration;

use kv_net::certgen::{Ca, Use};

use crate::common::{Cluster, kvctl, serial, stdout};

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write");
    p.to_str().expect("utf-8").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_cluster_serves_clients_with_the_ca_and_refuses_others() {
    let _serial = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new("FlashKV test CA").expect("ca");
    let other = Ca::new("Another CA").expect("ca");
    let node = ca
        .issue("node", &["127.0.0.1", "localhost"], Use::Node)
        .expect("node cert");
    let client = ca.issue("client", &[], Use::Client).expect("client cert");
    let stranger = other
        .issue("stranger", &[], Use::Client)
        .expect("client cert");
    let ca_file = write(dir.path(), "ca.pem", &ca.cert);
    let other_ca = write(dir.path(), "other-ca.pem", &other.cert);
    let (cert, key) = (
        write(dir.path(), "node.pem", &node.cert),
        write(dir.path(), "node.key", &node.key),
    );
    let (ccert, ckey) = (
        write(dir.path(), "client.pem", &client.cert),
        write(dir.path(), "client.key", &client.key),
    );
    let (scert, skey) = (
        write(dir.path(), "stranger.pem", &stranger.cert),
        write(dir.path(), "stranger.key", &stranger.key),
    );

    // Server TLS, mutual: clients need a certificate of the CA.
    let mut c = Cluster::new(
        3,
        &[
            "--cert-file",
            &cert,
            "--key-file",
            &key,
            "--trusted-ca-file",
            &ca_file,
        ],
    );
    c.start_all();
    let eps = c.endpoints();
    let with = |args: &[&str]| {
        let mut all = vec![
            "--timeout",
            "10s",
            "--cacert",
            &ca_file,
            "--cert",
            &ccert,
            "--key",
            &ckey,
        ];
        all.extend_from_slice(args);
        kvctl(&eps, &all, None)
    };
    // Bounded wait for a leader, through TLS.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let o = with(&["put", "k", "over-tls"]);
        if o.status.code() == Some(0) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no TLS put: {o:?}\n{}",
            c.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let o = with(&["get", "k"]);
    assert_eq!(stdout(&o).trim(), "over-tls", "{o:?}");

    // Plaintext: refused, saying so.
    let o = kvctl(&eps, &["get", "k"], None);
    assert_eq!(o.status.code(), Some(3), "{o:?}");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("TLS only"),
        "{o:?}"
    );
    // Trusting another CA: the node's certificate is refused.
    let o = kvctl(
        &eps,
        &["--timeout", "2s", "--cacert", &other_ca, "get", "k"],
        None,
    );
    assert_ne!(o.status.code(), Some(0), "{o:?}");
    // No client certificate, or one of another CA: the node refuses.
    let o = kvctl(
        &eps,
        &["--timeout", "2s", "--cacert", &ca_file, "get", "k"],
        None,
    );
    assert_ne!(o.status.code(), Some(0), "{o:?}");
    let o = kvctl(
        &eps,
        &[
            "--timeout",
            "2s",
            "--cacert",
            &ca_file,
            "--cert",
            &scert,
            "--key",
            &skey,
            "get",
            "k",
        ],
        None,
    );
    assert_ne!(o.status.code(), Some(0), "{o:?}");
    assert!(
        c.logs().contains("TLS handshake failed"),
        "refusals not logged:\n{}",
        c.logs()
    );

    // Every node holds the value (peers replicate over plaintext links).
    for (i, ep) in eps.iter().enumerate() {
        let o = kvctl(
            std::slice::from_ref(ep),
            &[
                "--serializable",
                "--cacert",
                &ca_file,
                "--cert",
                &ccert,
                "--key",
                &ckey,
                "get",
                "k",
            ],
            None,
        );
        assert_eq!(stdout(&o).trim(), "over-tls", "node {}: {o:?}", i + 1);
    }
    for n in &c.nodes {
        assert!(
            n.log_text().contains("clients are served over TLS"),
            "node {}",
            n.id
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_swapped_on_disk_is_picked_up_by_new_connections() {
    let _serial = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let (old_ca, new_ca) = (
        Ca::new("Old CA").expect("ca"),
        Ca::new("New CA").expect("ca"),
    );
    let old = old_ca
        .issue("node", &["127.0.0.1"], Use::Node)
        .expect("cert");
    let new = new_ca
        .issue("node", &["127.0.0.1"], Use::Node)
        .expect("cert");
    let old_ca_file = write(dir.path(), "old-ca.pem", &old_ca.cert);
    let new_ca_file = write(dir.path(), "new-ca.pem", &new_ca.cert);
    let cert = write(dir.path(), "node.pem", &old.cert);
    let key = write(dir.path(), "node.key", &old.key);
    let mut c = Cluster::new(1, &["--cert-file", &cert, "--key-file", &key]);
    c.start_all();
    let eps = c.endpoints();
    let put_with = |ca: &str, value: &str| {
        kvctl(
            &eps,
            &["--timeout", "3s", "--cacert", ca, "put", "k", value],
            None,
        )
        .status
        .code()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while put_with(&old_ca_file, "old") != Some(0) {
        assert!(
            std::time::Instant::now() < deadline,
            "no put:\n{}",
            c.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_ne!(
        put_with(&new_ca_file, "new"),
        Some(0),
        "the new CA works before the swap"
    );

    // A broken pair (the new key with the old certificate) is refused and
    // the old one kept.
    std::fs::write(dir.path().join("node.key"), &new.key).expect("write");
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while !c
        .logs()
        .contains("cannot be used; keeping the previous one")
    {
        assert_eq!(put_with(&old_ca_file, "old"), Some(0), "{}", c.logs());
        assert!(
            std::time::Instant::now() < deadline,
            "broken pair not noticed:\n{}",
            c.logs()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(put_with(&old_ca_file, "old"), Some(0), "{}", c.logs());
    // The whole new pair: new connections get it.
    std::fs::write(dir.path().join("node.pem"), &new.cert).expect("write");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while put_with(&new_ca_file, "new") != Some(0) {
        assert!(
            std::time::Instant::now() < deadline,
            "new certificate not picked up:\n{}",
            c.logs()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_ne!(
        put_with(&old_ca_file, "old"),
        Some(0),
        "the old CA still works after the swap"
    );
    assert!(
        c.logs().contains("TLS certificate reloaded"),
        "{}",
        c.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_tls_handshakes_are_closed_and_others_served() {
    let _serial = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new("FlashKV test CA").expect("ca");
    let node = ca.issue("node", &["127.0.0.1"], Use::Node).expect("cert");
    let ca_file = write(dir.path(), "ca.pem", &ca.cert);
    let cert = write(dir.path(), "node.pem", &node.cert);
    let key = write(dir.path(), "node.key", &node.key);
    let mut c = Cluster::new(
        1,
        &[
            "--cert-file",
            &cert,
            "--key-file",
            &key,
            "--handshake-timeout-ms",
            "1000",
        ],
    );
    c.start_all();
    let eps = c.endpoints();
    // 200 connections that begin a TLS record and stop.
    let mut stalled = Vec::new();
    for _ in 0..200 {
        let mut s = tokio::net::TcpStream::connect(&eps[0])
            .await
            .expect("connect");
        tokio::io::AsyncWriteExt::write_all(&mut s, &[0x16, 0x03, 0x01, 0x00])
            .await
            .expect("send");
        stalled.push(s);
    }
    let o = kvctl(
        &eps,
        &["--timeout", "10s", "--cacert", &ca_file, "put", "k", "v"],
        None,
    );
    assert_eq!(o.status.code(), Some(0), "{o:?}\n{}", c.logs());
    // Every stalled one is closed by the node, soon after the timeout.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    for s in &mut stalled {
        let mut buf = [0u8; 64];
        loop {
            match tokio::time::timeout_at(deadline, tokio::io::AsyncReadExt::read(s, &mut buf))
                .await
            {
                Err(_) => panic!("a stalled TLS handshake was still open after 10 s"),
                Ok(Ok(0) | Err(_)) => break,
                Ok(Ok(_)) => {}
            }
        }
    }
    let o = kvctl(&eps, &["--cacert", &ca_file, "get", "k"], None);
    assert_eq!(stdout(&o).trim(), "v", "{o:?}");
    assert_eq!(c.nodes[0].stop(), Some(0));
}
