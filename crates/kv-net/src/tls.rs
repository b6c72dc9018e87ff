//! TLS for client connections (rustls, the `ring` provider; no OpenSSL).
//!
//! [`ServerTls`] is a node's certificate and key, and optionally a CA whose
//! client certificates it requires (mutual TLS). [`ClientTls`] is what a
//! client trusts (a CA file) and optionally its own certificate. Both are
//! built from PEM files.
//!
//! A node whose one port serves clients and peers
//! ([`crate::Serves::ClientsAndPeers`]) with [`crate::Options::server_tls`]
//! still takes plaintext connections there, but only as peer links (the
//! listener tells them apart by the first byte: a TLS handshake starts with
//! `0x16`, a frame with its length prefix, whose first byte is `0x00` for
//! any frame under 16 MiB). A plaintext client request there is refused
//! with a message saying TLS is required; such peer links are
//! authenticated by the peer secret ([`crate::auth`]). With a port for
//! peers of its own, peers can use mutual TLS instead ([`PeerTls`]), and
//! neither port takes plaintext once it has TLS.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::client::ResolvesClientCert;
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore, ServerConfig};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// The first byte of a TLS record carrying a handshake message.
pub const HANDSHAKE_BYTE: u8 = 0x16;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate in the file", path.display()));
    }
    Ok(certs)
}

fn key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|e| format!("{}: no usable private key: {e}", path.display()))
}

fn roots(path: &Path) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for c in certs(path)? {
        roots
            .add(c)
            .map_err(|e| format!("{}: not a usable CA certificate: {e}", path.display()))?;
    }
    Ok(roots)
}

/// How often, at most, the certificate files are checked for a change.
const RELOAD_CHECK: Duration = Duration::from_secs(1);

fn certified(cert: &Path, key_file: &Path) -> Result<Arc<CertifiedKey>, String> {
    let key = provider()
        .key_provider
        .load_private_key(key(key_file)?)
        .map_err(|e| format!("{}: {e}", key_file.display()))?;
    let ck = CertifiedKey::new(certs(cert)?, key);
    ck.keys_match().map_err(|e| {
        format!(
            "{} does not go with {}: {e}",
            key_file.display(),
            cert.display()
        )
    })?;
    Ok(Arc::new(ck))
}

fn modified(paths: [&Path; 2]) -> Option<[SystemTime; 2]> {
    let m = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    Some([m(paths[0])?, m(paths[1])?])
}

/// The node's certificate, read again from its files when they change
/// (checked at most every [`RELOAD_CHECK`], on a new handshake): new
/// connections get the new certificate, established ones keep theirs. A
/// pair that cannot be used (a half-written file, a key that does not
/// match) is logged and the previous one kept.
#[derive(Debug)]
struct Reloading {
    cert: PathBuf,
    key: PathBuf,
    state: Mutex<(Instant, Option<[SystemTime; 2]>, Arc<CertifiedKey>)>,
}

impl Reloading {
    fn new(cert: &Path, key: &Path) -> Result<Reloading, String> {
        let current = certified(cert, key)?;
        Ok(Reloading {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            state: Mutex::new((Instant::now(), modified([cert, key]), current)),
        })
    }
}

impl Reloading {
    /// The current pair, read again first if the files changed since the
    /// last check (at most every [`RELOAD_CHECK`]).
    fn current(&self) -> Arc<CertifiedKey> {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if state.0.elapsed() >= RELOAD_CHECK {
            state.0 = Instant::now();
            let now = modified([&self.cert, &self.key]);
            if now.is_some() && now != state.1 {
                match certified(&self.cert, &self.key) {
                    Ok(fresh) => {
                        tracing::info!(cert = %self.cert.display(), "TLS certificate reloaded");
                        state.1 = now;
                        state.2 = fresh;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "TLS certificate changed but cannot be used; keeping the previous one")
                    }
                }
            }
        }
        state.2.clone()
    }
}

impl ResolvesServerCert for Reloading {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// The same reloading pair presented as a client certificate (a node's
/// peer links under mutual TLS).
impl ResolvesClientCert for Reloading {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// A node's side of TLS. Cheap to clone.
#[derive(Clone)]
pub struct ServerTls {
    acceptor: TlsAcceptor,
    mutual: bool,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("mutual", &self.mutual)
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// From a certificate chain and key (PEM), and, for mutual TLS, the CA
    /// whose client certificates are required. The certificate and key are
    /// read again when their files change (new connections only).
    ///
    /// # Errors
    ///
    /// A message naming the file that cannot be read or used.
    pub fn from_files(
        cert: &Path,
        key_file: &Path,
        client_ca: Option<&Path>,
    ) -> Result<ServerTls, String> {
        let builder = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?;
        let builder = match client_ca {
            Some(ca) => {
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca)?), provider())
                        .build()
                        .map_err(|e| format!("{}: {e}", ca.display()))?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let resolver = Reloading::new(cert, key_file)
            .map_err(|e| format!("{e} (with {} and {})", cert.display(), key_file.display()))?;
        let config = builder.with_cert_resolver(Arc::new(resolver));
        Ok(ServerTls {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            mutual: client_ca.is_some(),
        })
    }

    /// The acceptor, for other servers of the node that take the same
    /// certificate (the HTTP gateway).
    #[must_use]
    pub fn acceptor(&self) -> &TlsAcceptor {
        &self.acceptor
    }
}

/// A client's side of TLS. Cheap to clone.
#[derive(Clone)]
pub struct ClientTls {
    connector: TlsConnector,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientTls(..)")
    }
}

impl ClientTls {
    /// Trusting the CA certificates in `ca` (PEM); with `identity`, a
    /// client certificate chain and key for nodes that require one, read
    /// again when their files change (for new connections).
    ///
    /// # Errors
    ///
    /// A message naming the file that cannot be read or used.
    pub fn from_files(ca: &Path, identity: Option<(&Path, &Path)>) -> Result<ClientTls, String> {
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots(ca)?);
        let config = match identity {
            Some((cert, key_file)) => {
                let resolver = Reloading::new(cert, key_file).map_err(|e| {
                    format!("{e} (with {} and {})", cert.display(), key_file.display())
                })?;
                builder.with_client_cert_resolver(Arc::new(resolver))
            }
            None => builder.with_no_client_auth(),
        };
        Ok(ClientTls {
            connector: TlsConnector::from(Arc::new(config)),
        })
    }

    /// The connector, for other clients of the node's protocols (HTTPS).
    #[must_use]
    pub fn connector(&self) -> &TlsConnector {
        &self.connector
    }
}

/// Mutual TLS between peers (`kvd --peer-cert-file --peer-key-file
/// --peer-trusted-ca-file`): the peer port serves with the node's peer
/// certificate and requires one of the peer CA from every connection; the
/// node's links to other peers present the same certificate and trust only
/// that CA.
#[derive(Debug, Clone)]
pub struct PeerTls {
    /// For the peer listener.
    pub server: ServerTls,
    /// For the links this node dials.
    pub client: ClientTls,
}

impl PeerTls {
    /// From the node's peer certificate and key and the peer CA (PEM). The
    /// certificate must be usable both to serve and as a client (the
    /// extended key usages `serverAuth` and `clientAuth`, as `cargo xtask
    /// certs` makes them).
    ///
    /// # Errors
    ///
    /// A message naming the file that cannot be read or used.
    pub fn from_files(cert: &Path, key_file: &Path, ca: &Path) -> Result<PeerTls, String> {
        Ok(PeerTls {
            server: ServerTls::from_files(cert, key_file, Some(ca))?,
            client: ClientTls::from_files(ca, Some((cert, key_file)))?,
        })
    }
}

/// True when `e` is TLS refusing the other side or being refused by it (a
/// certificate not trusted, none presented, an alert received): an
/// authentication failure, not a network one.
#[must_use]
pub fn is_refusal(e: &crate::Error) -> bool {
    let io = match e {
        crate::Error::Connect { source, .. } | crate::Error::Io(source) => source,
        _ => return false,
    };
    io.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .is_some()
}

/// The name a certificate must carry for `addr` (`host:port`): the host,
/// an IP address or a DNS name.
pub(crate) fn server_name(addr: &str) -> Result<ServerName<'static>, String> {
    let host = addr
        .rsplit_once(':')
        .map_or(addr, |(h, _)| h)
        .trim_start_matches('[')
        .trim_end_matches(']');
    ServerName::try_from(host.to_owned())
        .map_err(|e| format!("{addr}: not a name TLS can check: {e}"))
}
