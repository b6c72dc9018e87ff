//! Proof of a shared peer secret in the peer handshake (SPEC section 10):
//! challenge-response with HMAC-SHA256, the secret never on the wire.
//!
//! With a secret configured ([`crate::Options::peer_secret`]) on both ends:
//!
//! 1. the dialer opens with its `Hello` (cluster id, its node id) and a
//!    fresh 32-byte nonce `Nd`;
//! 2. the acceptor, once the `Hello` names this cluster and a member, answers
//!    with a `Hello` of its own: its node id, a fresh nonce `Na` and
//!    `proof = HMAC(secret, "acceptor" | cluster | dialer | acceptor | Nd | Na)`;
//! 3. the dialer checks that proof (the node it dialed knows the secret) and
//!    sends a second `Hello` whose proof is the same MAC with "dialer";
//! 4. the acceptor checks it and only then takes raft traffic.
//!
//! Both nonces are fresh per connection, so a recorded handshake replayed
//! against a new challenge fails, and the role labels keep one side's proof
//! from passing as the other's. Comparisons are constant-time. Without TLS
//! this authenticates who opened the connection, not each later frame: an
//! attacker who can rewrite traffic in flight can still tamper with it
//! (peer TLS closes that).

use std::path::Path;
use std::sync::Arc;

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Bytes of a handshake nonce.
pub const NONCE_LEN: usize = 32;

/// Shortest secret accepted, in bytes.
pub const MIN_SECRET_LEN: usize = 16;

/// A shared peer secret. Its `Debug` form does not show it.
#[derive(Clone)]
pub struct PeerSecret(Arc<[u8]>);

impl std::fmt::Debug for PeerSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PeerSecret(..)")
    }
}

/// Which side of the handshake a proof is made by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The node that opened the connection.
    Dialer,
    /// The node that accepted it.
    Acceptor,
}

/// What a handshake proof is bound to.
#[derive(Debug, Clone, Copy)]
pub struct Binding<'a> {
    /// The cluster id.
    pub cluster_id: u64,
    /// The dialing node.
    pub dialer: u64,
    /// The accepting node.
    pub acceptor: u64,
    /// The dialer's nonce.
    pub dialer_nonce: &'a [u8],
    /// The acceptor's nonce.
    pub acceptor_nonce: &'a [u8],
}

impl PeerSecret {
    /// A secret of these bytes.
    ///
    /// # Errors
    ///
    /// A message when it is shorter than [`MIN_SECRET_LEN`] bytes.
    pub fn new(bytes: &[u8]) -> Result<PeerSecret, String> {
        if bytes.len() < MIN_SECRET_LEN {
            return Err(format!(
                "a peer secret of {} bytes is too short (at least {MIN_SECRET_LEN})",
                bytes.len()
            ));
        }
        Ok(PeerSecret(bytes.into()))
    }

    /// Reads a secret file: its bytes, without surrounding whitespace (so an
    /// editor's final newline does not change the secret).
    ///
    /// # Errors
    ///
    /// A message naming the file when it cannot be read or is too short.
    pub fn from_file(path: &Path) -> Result<PeerSecret, String> {
        let raw = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        PeerSecret::new(raw.trim_ascii()).map_err(|e| format!("{}: {e}", path.display()))
    }

    fn mac(&self, side: Side, b: &Binding<'_>) -> Hmac<Sha256> {
        // Any key length is accepted by HMAC.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.0)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        mac.update(b"flashkv peer handshake v1\0");
        mac.update(match side {
            Side::Dialer => b"dialer\0\0",
            Side::Acceptor => b"acceptor",
        });
        mac.update(&b.cluster_id.to_le_bytes());
        mac.update(&b.dialer.to_le_bytes());
        mac.update(&b.acceptor.to_le_bytes());
        for nonce in [b.dialer_nonce, b.acceptor_nonce] {
            mac.update(&(nonce.len() as u64).to_le_bytes());
            mac.update(nonce);
        }
        mac
    }

    /// The proof `side` sends for `binding`.
    #[must_use]
    pub fn prove(&self, side: Side, binding: &Binding<'_>) -> Vec<u8> {
        self.mac(side, binding).finalize().into_bytes().to_vec()
    }

    /// Whether `proof` is `side`'s proof for `binding` (constant-time).
    #[must_use]
    pub fn verify(&self, side: Side, binding: &Binding<'_>, proof: &[u8]) -> bool {
        self.mac(side, binding).verify_slice(proof).is_ok()
    }
}

/// A fresh nonce from the operating system's generator.
#[must_use]
pub fn nonce() -> [u8; NONCE_LEN] {
    rand::random()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding<'a>(nd: &'a [u8], na: &'a [u8]) -> Binding<'a> {
        Binding {
            cluster_id: 7,
            dialer: 1,
            acceptor: 2,
            dialer_nonce: nd,
            acceptor_nonce: na,
        }
    }

    #[test]
    fn proofs_check_out_only_for_the_same_secret_side_and_binding() {
        let s = PeerSecret::new(b"0123456789abcdef").expect("secret");
        let other = PeerSecret::new(b"0123456789abcdeX").expect("secret");
        let (nd, na) = (nonce(), nonce());
        let b = binding(&nd, &na);
        let p = s.prove(Side::Dialer, &b);
        assert!(s.verify(Side::Dialer, &b, &p));
        assert!(!other.verify(Side::Dialer, &b, &p), "another secret");
        assert!(!s.verify(Side::Acceptor, &b, &p), "the other side's proof");
        let fresh = nonce();
        assert!(
            !s.verify(Side::Dialer, &binding(&nd, &fresh), &p),
            "replayed against a new challenge"
        );
        let mut wrong_ids = b;
        wrong_ids.acceptor = 3;
        assert!(!s.verify(Side::Dialer, &wrong_ids, &p), "another node");
        assert!(!s.verify(Side::Dialer, &b, &p[..16]), "a truncated proof");
        assert!(!s.verify(Side::Dialer, &b, b""), "no proof");
    }

    #[test]
    fn short_secrets_are_refused_and_files_are_trimmed() {
        assert!(PeerSecret::new(b"short").is_err());
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("secret");
        std::fs::write(&path, b"  0123456789abcdef\n").expect("write");
        let from_file = PeerSecret::from_file(&path).expect("read");
        let direct = PeerSecret::new(b"0123456789abcdef").expect("secret");
        let (nd, na) = (nonce(), nonce());
        let b = binding(&nd, &na);
        assert!(direct.verify(Side::Acceptor, &b, &from_file.prove(Side::Acceptor, &b)));
        assert_eq!(format!("{from_file:?}"), "PeerSecret(..)");
        assert!(PeerSecret::from_file(&dir.path().join("missing")).is_err());
    }
}
