//! `--peer-listen` with `--peer-cert-file/--peer-key-file/--peer-trusted-ca-file`
//! (SPEC sections 3 and 10): peers get a port of their own and must present
//! a certificate of the peer CA. A member restarted with a certificate of
//! another CA can neither send raft traffic nor receive it (both sides log
//! it) and catches up once it has the right one; plaintext peers, peer
//! handshakes on the client port and client requests on the peer port are
//! refused. A new node joins such a cluster (client TLS too) with
//! `--join`.

use std::path::Path;
use std::time::{Duration, Instant};

use kv_net::certgen::{Ca, Use};

use crate::common::{Cluster, Node, kvctl, serial};
use crate::peer_wire::{closed_after, cluster_id, frames, hello};

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write");
    p.to_str().expect("utf-8").to_owned()
}

/// The `--peer-*` flags of a node with a certificate of `ca` named `name`.
fn peer_flags(dir: &Path, ca: &Ca, ca_file: &str, name: &str) -> Vec<String> {
    let pem = ca
        .issue(name, &["127.0.0.1", "localhost"], Use::Node)
        .expect("peer cert");
    vec![
        "--peer-cert-file".into(),
        write(dir, &format!("{name}.pem"), &pem.cert),
        "--peer-key-file".into(),
        write(dir, &format!("{name}.key"), &pem.key),
        "--peer-trusted-ca-file".into(),
        ca_file.to_owned(),
    ]
}

/// Waits (bounded) until `check` holds for the cluster's logs.
async fn wait_logs(c: &Cluster, what: &str, check: impl Fn(&Cluster) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !check(c) {
        assert!(
            Instant::now() < deadline,
            "{what} not logged; logs:\n{}",
            c.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_need_a_certificate_of_the_peer_ca_on_their_own_port() {
    let _serial = serial();
    let certs = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new("FlashKV peer CA").expect("ca");
    let other = Ca::new("Another CA").expect("ca");
    let ca_file = write(certs.path(), "peer-ca.pem", &ca.cert);
    let other_file = write(certs.path(), "other-ca.pem", &other.cert);

    let (mut c, peer_addrs) = Cluster::with_peer_ports(3, &[]);
    for n in &mut c.nodes {
        let flags = peer_flags(certs.path(), &ca, &ca_file, &format!("node{}", n.id));
        n.extra.extend(flags);
    }
    c.start_all();
    let leader = c.wait_leader(Duration::from_secs(20)).await;
    let client = c.client(Duration::from_secs(5));
    client.put("before", "1").await.expect("put");
    for n in &c.nodes {
        let log = n.log_text();
        assert!(log.contains("(mutual TLS)"), "node {}:\n{log}", n.id);
        assert!(!log.contains("unauthenticated"), "node {}:\n{log}", n.id);
    }
    let cid = cluster_id(&c.nodes[0].data_dir);

    // A plaintext peer on the peer port, and a peer handshake on the client
    // port: both closed and logged.
    let f = (leader + 1) % 3;
    let as_member = frames(&[hello(cid, c.nodes[f].id)]);
    assert!(closed_after(&peer_addrs[leader], &as_member, Duration::from_secs(5)).await);
    assert!(closed_after(&c.nodes[leader].listen, &as_member, Duration::from_secs(5)).await);
    wait_logs(&c, "both refusals", |c| {
        let log = c.nodes[leader].log_text();
        log.contains("plaintext peer handshake of node")
            && log.contains("on the client port refused")
    })
    .await;
    // A client pointed at the peer port is told where to go instead.
    let o = kvctl(
        &[peer_addrs[leader].clone()],
        &["--timeout", "2s", "get", "before"],
        None,
    );
    assert_ne!(o.status.code(), Some(0), "{o:?}");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("peer port"),
        "{o:?}"
    );

    // A member restarted with a certificate of another CA.
    assert_eq!(c.nodes[f].stop(), Some(0));
    let kept = c.nodes[f].extra.clone();
    let mut stranger: Vec<String> = kept[..2].to_vec(); // --peer-listen ADDR
    stranger.extend(peer_flags(certs.path(), &other, &other_file, "stranger"));
    c.nodes[f].extra = stranger;
    c.nodes[f].start();
    for i in 0..20 {
        client
            .put(format!("k{i}"), "v")
            .await
            .expect("the two others still commit");
    }
    let commit = client
        .status(&c.nodes[leader].listen)
        .await
        .expect("leader status")
        .commit_index;
    wait_logs(&c, "TLS refusals on both sides", |c| {
        let others: String = (0..3)
            .filter(|&i| i != f)
            .map(|i| c.nodes[i].log_text())
            .collect();
        c.nodes[f].log_text().contains("TLS handshake failed")
            && others.contains("TLS handshake failed")
            && others.contains("peer refused")
    })
    .await;
    let st = client
        .status(&c.nodes[f].listen)
        .await
        .expect("outsider status");
    assert!(
        st.applied_index < commit,
        "node {} applied {} of {commit} with another CA's certificate",
        f + 1,
        st.applied_index
    );
    assert_ne!(st.role, "leader");

    // With its own certificate again it catches up.
    assert_eq!(c.nodes[f].stop(), Some(0));
    c.nodes[f].extra = kept;
    c.nodes[f].start();
    c.wait_applied(f, commit, Duration::from_secs(20)).await;
    for n in &mut c.nodes {
        assert_eq!(n.stop(), Some(0), "node {} exit code", n.id);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_joins_a_cluster_with_client_tls_and_peer_certificates() {
    let _serial = serial();
    let certs = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new("FlashKV CA").expect("ca");
    let ca_file = write(certs.path(), "ca.pem", &ca.cert);
    let node = ca
        .issue("node", &["127.0.0.1"], Use::Node)
        .expect("node cert");
    let client_pem = ca.issue("client", &[], Use::Client).expect("client cert");
    let tls_flags = [
        "--cert-file".to_owned(),
        write(certs.path(), "node.pem", &node.cert),
        "--key-file".to_owned(),
        write(certs.path(), "node.key", &node.key),
    ];
    let (ccert, ckey) = (
        write(certs.path(), "client.pem", &client_pem.cert),
        write(certs.path(), "client.key", &client_pem.key),
    );

    let (mut c, _) = Cluster::with_peer_ports(3, &[]);
    for n in &mut c.nodes {
        n.extra.extend(tls_flags.iter().cloned());
        n.extra.extend(peer_flags(
            certs.path(),
            &ca,
            &ca_file,
            &format!("node{}", n.id),
        ));
    }
    c.start_all();
    let eps = c.endpoints();
    let tls = kv_client::ClientTls::from_files(
        Path::new(&ca_file),
        Some((Path::new(&ccert), Path::new(&ckey))),
    )
    .expect("client tls");
    let mut opts = kv_client::Options {
        timeout: Duration::from_secs(10),
        ..kv_client::Options::default()
    };
    opts.net.client_tls = Some(tls);
    let client = kv_client::Client::new(eps.clone(), opts);
    let deadline = Instant::now() + Duration::from_secs(30);
    while let Err(e) = client.put("k", "v").await {
        assert!(Instant::now() < deadline, "no put: {e}\n{}", c.logs());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Node 4: added with kvctl over TLS, started with --join.
    let ports = crate::common::free_ports(2);
    let (listen, peer) = (
        format!("127.0.0.1:{}", ports[0]),
        format!("127.0.0.1:{}", ports[1]),
    );
    // Refused (exit 3) while a member still catches up after the start.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let o = kvctl(
            &eps,
            &[
                "--timeout",
                "10s",
                "--cacert",
                &ca_file,
                "--cert",
                &ccert,
                "--key",
                &ckey,
                "member",
                "add",
                "4",
                &peer,
                "--advertise",
                &listen,
            ],
            None,
        );
        if o.status.code() == Some(0) {
            break;
        }
        eprintln!("member add: {}", String::from_utf8_lossy(&o.stderr).trim());
        assert!(
            o.status.code() == Some(3) && Instant::now() < deadline,
            "member add: {o:?}\n{}",
            c.logs()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let mut extra = vec!["--peer-listen".to_owned(), peer.clone()];
    extra.extend(tls_flags.iter().cloned());
    extra.extend(peer_flags(certs.path(), &ca, &ca_file, "node4"));
    extra.extend([
        "--join-ca-file".to_owned(),
        ca_file.clone(),
        "--join".to_owned(),
        eps.join(","),
    ]);
    c.nodes.push(Node {
        id: 4,
        listen: listen.clone(),
        data_dir: c.dir.path().join("node4"),
        log: c.dir.path().join("node4.log"),
        extra,
        peers: String::new(),
        child: None,
    });
    c.nodes[3].start();
    assert!(
        c.nodes[3].is_running(),
        "node 4 did not start:\n{}",
        c.nodes[3].log_text()
    );
    client.put("after-join", "yes").await.expect("put");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let o = kvctl(
            std::slice::from_ref(&listen),
            &[
                "--timeout",
                "2s",
                "--serializable",
                "--cacert",
                &ca_file,
                "--cert",
                &ccert,
                "--key",
                &ckey,
                "get",
                "after-join",
            ],
            None,
        );
        if String::from_utf8_lossy(&o.stdout).trim() == "yes" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node 4 never served the write: {o:?}\n{}",
            c.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for n in &mut c.nodes {
        assert_eq!(n.stop(), Some(0), "node {} exit code", n.id);
    }
}
