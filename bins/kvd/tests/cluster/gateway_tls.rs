//! The HTTP gateway over TLS (SPEC section 10: `--cert-file` covers the
//! gateway too): with `--trusted-ca-file`, HTTPS clients need a certificate
//! of the CA, plaintext HTTP and certificate-less clients get nothing, and
//! the gateway reaches the node with the node's own certificate.

use std::path::Path;
use std::time::{Duration, Instant};

use kv_net::certgen::{Ca, Use};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls::pki_types::ServerName;

use crate::common::{Cluster, free_ports, serial};

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write");
    p.to_str().expect("utf-8").to_owned()
}

/// One HTTP/1.1 request over TLS; the status code and body, or why the
/// exchange failed.
async fn https(
    tls: &kv_net::ClientTls,
    addr: &str,
    method: &str,
    path: &str,
    body: &str,
) -> Result<(u16, String), String> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let name = ServerName::try_from("localhost").expect("name");
    let exchange = async {
        let mut s = tls
            .connector()
            .connect(name, tcp)
            .await
            .map_err(|e| e.to_string())?;
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&out).into_owned();
        let status = text
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| format!("no status line: {text:?}"))?;
        let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
        Ok::<_, String>((status, body))
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .map_err(|_| "timed out".to_owned())?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_serves_https_to_clients_with_a_certificate_only() {
    let _serial = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new("FlashKV test CA").expect("ca");
    let node = ca
        .issue("node", &["127.0.0.1", "localhost"], Use::Node)
        .expect("node cert");
    let client = ca.issue("client", &[], Use::Client).expect("client cert");
    let ca_file = write(dir.path(), "ca.pem", &ca.cert);
    let (cert, key) = (
        write(dir.path(), "node.pem", &node.cert),
        write(dir.path(), "node.key", &node.key),
    );
    let (ccert, ckey) = (
        write(dir.path(), "client.pem", &client.cert),
        write(dir.path(), "client.key", &client.key),
    );
    let ports = free_ports(2);
    let (listen, http) = (
        format!("127.0.0.1:{}", ports[0]),
        format!("127.0.0.1:{}", ports[1]),
    );
    let mut c = Cluster::with_peers(
        vec![listen.clone()],
        vec![format!("1={listen}")],
        &[
            "--cert-file",
            &cert,
            "--key-file",
            &key,
            "--trusted-ca-file",
            &ca_file,
            "--http-listen",
            &http,
        ],
    );
    // The gateway dials its node by the name in the certificate.
    let advertise = c.nodes[0].listen.replace("127.0.0.1", "localhost");
    c.nodes[0]
        .extra
        .extend(["--advertise".to_owned(), advertise]);
    c.start_all();

    let with_cert = kv_net::ClientTls::from_files(
        Path::new(&ca_file),
        Some((Path::new(&ccert), Path::new(&ckey))),
    )
    .expect("client tls");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match https(&with_cert, &http, "GET", "/readyz", "").await {
            Ok((200, _)) => break,
            other => assert!(Instant::now() < deadline, "not ready over HTTPS: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let put = https(
        &with_cert,
        &http,
        "POST",
        "/put",
        r#"{"key":"k","value":"tls"}"#,
    )
    .await;
    assert_eq!(put, Ok((200, r#"{"ok":true}"#.to_owned())));
    let (status, body) = https(&with_cert, &http, "GET", "/get?key=k", "")
        .await
        .expect("get");
    assert_eq!(status, 200);
    assert!(body.contains(r#""value":"tls""#), "{body}");

    // No client certificate: the handshake is refused, nothing is served.
    let without = kv_net::ClientTls::from_files(Path::new(&ca_file), None).expect("tls");
    let refused = https(
        &without,
        &http,
        "POST",
        "/put",
        r#"{"key":"k","value":"x"}"#,
    )
    .await;
    assert!(
        refused.is_err(),
        "served without a certificate: {refused:?}"
    );
    // Plaintext HTTP gets no answer.
    let mut tcp = tokio::net::TcpStream::connect(&http)
        .await
        .expect("connect");
    tcp.write_all(b"GET /get?key=k HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut out)).await;
    assert!(
        !String::from_utf8_lossy(&out).contains("HTTP/1.1 200"),
        "plaintext HTTP was served"
    );
    let (_, body) = https(&with_cert, &http, "GET", "/get?key=k", "")
        .await
        .expect("get");
    assert!(
        body.contains(r#""value":"tls""#),
        "a refused put applied: {body}"
    );
}
