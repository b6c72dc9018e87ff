//! Client tokens with roles (`kvd --auth-file`, SPEC section 10).
//!
//! The file holds lines `TOKEN ROLE` (`read`, `write` or `admin`); blank
//! lines and lines starting with `#` are skipped. Only SHA-256 digests of
//! the tokens are kept, and a token is looked up by comparing its digest
//! with every entry's in constant time, so neither timing nor a memory dump
//! gives a token away. Tokens are never logged.

use std::path::Path;

use kv_net::proto::request::Cmd;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// What a token may do; each role may do what the ones before it may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// get, range, status.
    Read,
    /// Also put, delete, cas, batch.
    Write,
    /// Also membership, leader transfer and backups.
    Admin,
}

impl Role {
    fn parse(s: &str) -> Option<Role> {
        match s {
            "read" => Some(Role::Read),
            "write" => Some(Role::Write),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }

    /// Its name in the auth file.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Write => "write",
            Role::Admin => "admin",
        }
    }

    /// The role a command needs.
    #[must_use]
    pub fn needed_for(cmd: &Cmd) -> Role {
        match cmd {
            Cmd::Get(_) | Cmd::Range(_) | Cmd::Status(_) | Cmd::Search(_) | Cmd::Similar(_) => {
                Role::Read
            }
            Cmd::Put(_) | Cmd::Delete(_) | Cmd::Cas(_) | Cmd::Batch(_) => Role::Write,
            _ => Role::Admin,
        }
    }
}

/// The tokens of an auth file.
#[derive(Clone)]
pub struct Tokens {
    entries: Vec<([u8; 32], Role)>,
    /// The first admin token, for this node's own requests to the cluster
    /// (`kvd --join`).
    own: Option<String>,
    /// The first token of the file (every role may read), for this node's
    /// own status requests when the file has no admin token.
    reader: Option<String>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tokens({} entries)", self.entries.len())
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl Tokens {
    /// Parses an auth file's text.
    ///
    /// # Errors
    ///
    /// A message naming the line of a malformed entry, an unknown role or a
    /// token given twice, or saying the file holds no token.
    pub fn parse(text: &str) -> Result<Tokens, String> {
        let mut entries: Vec<([u8; 32], Role)> = Vec::new();
        let mut own = None;
        let mut reader = None;
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut words = line.split_whitespace();
            let (Some(token), Some(role), None) = (words.next(), words.next(), words.next()) else {
                return Err(format!("line {}: expected `TOKEN ROLE`", n + 1));
            };
            let role = Role::parse(role).ok_or_else(|| {
                format!(
                    "line {}: unknown role {role:?} (read, write or admin)",
                    n + 1
                )
            })?;
            let d = digest(token);
            if entries.iter().any(|(e, _)| *e == d) {
                return Err(format!("line {}: a token given twice", n + 1));
            }
            if role == Role::Admin && own.is_none() {
                own = Some(token.to_owned());
            }
            if reader.is_none() {
                reader = Some(token.to_owned());
            }
            entries.push((d, role));
        }
        if entries.is_empty() {
            return Err("no token in the file".into());
        }
        Ok(Tokens {
            entries,
            own,
            reader,
        })
    }

    /// Reads an auth file.
    ///
    /// # Errors
    ///
    /// As [`Tokens::parse`], naming the file; I/O errors.
    pub fn from_file(path: &Path) -> Result<Tokens, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Tokens::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// How many tokens there are.
    #[must_use]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Never: a file without tokens is refused.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The role of `token`, if it is one (every entry compared, in constant
    /// time).
    #[must_use]
    pub fn role_of(&self, token: &str) -> Option<Role> {
        let d = digest(token);
        let mut found = None;
        for (e, role) in &self.entries {
            if bool::from(e.ct_eq(&d)) {
                found = Some(*role);
            }
        }
        found
    }

    /// Whether `token` may send `cmd`; the refusal's message otherwise
    /// (which never holds the token).
    ///
    /// # Errors
    ///
    /// The message of a `PERMISSION_DENIED` answer.
    pub fn check(&self, token: &str, cmd: &Cmd) -> Result<(), String> {
        let needed = Role::needed_for(cmd);
        match (token.is_empty(), self.role_of(token)) {
            (true, _) => Err("this node needs a token (kvctl --token, $KVCTL_TOKEN)".into()),
            (false, None) => Err("unknown token".into()),
            (false, Some(role)) if role < needed => Err(format!(
                "the token's role {} may not do this (needs {})",
                role.name(),
                needed.name()
            )),
            _ => Ok(()),
        }
    }

    /// An admin token of the file, for this node's own requests.
    #[must_use]
    pub fn own_admin_token(&self) -> Option<&str> {
        self.own.as_deref()
    }

    /// A token that may at least read (the admin one when there is one),
    /// for this node's own status requests.
    #[must_use]
    pub fn own_read_token(&self) -> Option<&str> {
        self.own.as_deref().or(self.reader.as_deref())
    }
}

#[cfg(test)]
mod tests {
    use kv_net::proto::{Get, MemberList, Put, SnapshotSave, Status};

    use super::*;

    const FILE: &str = "# tokens\n\nr-token read\nw-token   write\n a-token admin \n";

    #[test]
    fn each_role_may_do_exactly_its_commands() {
        let t = Tokens::parse(FILE).expect("parse");
        assert_eq!(t.len(), 3);
        let get = Cmd::Get(Get::new());
        let status = Cmd::Status(Status::new());
        let put = Cmd::Put(Put::new());
        let member = Cmd::MemberList(MemberList::new());
        let backup = Cmd::SnapshotSave(SnapshotSave::new());
        let may = |token: &str, cmd: &Cmd| t.check(token, cmd).is_ok();
        for cmd in [&get, &status] {
            assert!(may("r-token", cmd) && may("w-token", cmd) && may("a-token", cmd));
        }
        assert!(!may("r-token", &put) && may("w-token", &put) && may("a-token", &put));
        for cmd in [&member, &backup] {
            assert!(!may("r-token", cmd) && !may("w-token", cmd) && may("a-token", cmd));
        }
        for bad in ["", "r-toke", "r-token ", "R-TOKEN", "a-tokenx"] {
            let e = t.check(bad, &get).expect_err(bad);
            assert!(!e.contains("token read") && !e.contains("a-token"), "{e}");
        }
        assert_eq!(t.own_admin_token(), Some("a-token"));
        assert_eq!(format!("{t:?}"), "Tokens(3 entries)");
    }

    #[test]
    fn malformed_files_are_refused_with_the_line() {
        for (text, says) in [
            ("tok reader\n", "line 1: unknown role"),
            ("a read\nb\n", "line 2: expected"),
            ("a read extra\n", "line 1: expected"),
            ("a read\na admin\n", "line 2: a token given twice"),
            ("# nothing\n\n", "no token"),
        ] {
            let e = Tokens::parse(text).expect_err(text);
            assert!(e.contains(says), "{text:?}: {e}");
        }
    }
}
