//! `cargo xtask certs [--dir target/certs]`: a CA, a node certificate (for
//! 127.0.0.1 and localhost) and a client certificate made with rcgen, plus
//! a peer secret and an auth file with one token per role, for a local
//! secure cluster (`cargo xtask cluster --secure` uses them).

use std::io::Read as _;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use kv_net::certgen::{Ca, Use};

/// The files of a secure local cluster.
pub struct Secure {
    pub ca: PathBuf,
    pub node_cert: PathBuf,
    pub node_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    pub peer_secret: PathBuf,
    pub auth: PathBuf,
    /// The admin token of `auth`.
    pub admin_token: String,
}

fn write(path: &Path, text: &str, private: bool) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if private { 0o600 } else { 0o644 })
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    std::io::Write::write_all(&mut f, text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

fn random_hex(bytes: usize) -> Result<String> {
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .context("reading /dev/urandom")?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

impl Secure {
    fn at(dir: &Path) -> Secure {
        Secure {
            ca: dir.join("ca.pem"),
            node_cert: dir.join("node.pem"),
            node_key: dir.join("node.key"),
            client_cert: dir.join("client.pem"),
            client_key: dir.join("client.key"),
            peer_secret: dir.join("peer-secret"),
            auth: dir.join("auth"),
            admin_token: String::new(),
        }
    }

    /// Makes the files in `dir`, or reads the admin token of those already
    /// there (all of them must be).
    pub fn make_or_load(dir: &Path) -> Result<Secure> {
        let mut s = Secure::at(dir);
        if s.auth.exists() {
            let auth = std::fs::read_to_string(&s.auth)
                .with_context(|| format!("reading {}", s.auth.display()))?;
            s.admin_token = auth
                .lines()
                .find_map(|l| l.strip_suffix(" admin"))
                .ok_or_else(|| anyhow!("{}: no admin token", s.auth.display()))?
                .to_owned();
            for f in [
                &s.ca,
                &s.node_cert,
                &s.node_key,
                &s.client_cert,
                &s.client_key,
                &s.peer_secret,
            ] {
                if !f.exists() {
                    bail!(
                        "{} is missing; remove {} to make everything again",
                        f.display(),
                        dir.display()
                    );
                }
            }
            return Ok(s);
        }
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let ca = Ca::new("FlashKV local CA").map_err(|e| anyhow!("CA: {e}"))?;
        let node = ca
            .issue("flashkv node", &["127.0.0.1", "localhost"], Use::Node)
            .map_err(|e| anyhow!("node certificate: {e}"))?;
        let client = ca
            .issue("flashkv client", &[], Use::Client)
            .map_err(|e| anyhow!("client certificate: {e}"))?;
        write(&s.ca, &ca.cert, false)?;
        write(&s.node_cert, &node.cert, false)?;
        write(&s.node_key, &node.key, true)?;
        write(&s.client_cert, &client.cert, false)?;
        write(&s.client_key, &client.key, true)?;
        write(&s.peer_secret, &format!("{}\n", random_hex(32)?), true)?;
        s.admin_token = random_hex(16)?;
        let auth = format!(
            "# TOKEN ROLE (read, write, admin)\n{} read\n{} write\n{} admin\n",
            random_hex(16)?,
            random_hex(16)?,
            s.admin_token
        );
        write(&s.auth, &auth, true)?;
        Ok(s)
    }

    /// The kvd flags that use these files: client TLS, mutual TLS between
    /// peers (on the `--peer-listen` port the caller adds) with the same
    /// node certificate, tokens.
    pub fn kvd_args(&self) -> Vec<String> {
        let p = |p: &PathBuf| p.display().to_string();
        vec![
            "--cert-file".into(),
            p(&self.node_cert),
            "--key-file".into(),
            p(&self.node_key),
            "--peer-cert-file".into(),
            p(&self.node_cert),
            "--peer-key-file".into(),
            p(&self.node_key),
            "--peer-trusted-ca-file".into(),
            p(&self.ca),
            "--auth-file".into(),
            p(&self.auth),
        ]
    }

    /// The kvctl flags that use these files.
    pub fn kvctl_args(&self) -> Vec<String> {
        vec![
            "--cacert".into(),
            self.ca.display().to_string(),
            "--token".into(),
            self.admin_token.clone(),
        ]
    }
}

/// `cargo xtask certs`.
pub fn run(args: &[String], root: &Path) -> Result<()> {
    let mut dir = root.join("target").join("certs");
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--dir" => dir = PathBuf::from(it.next().context("--dir needs a value")?),
            other => {
                bail!("unknown argument {other}\nusage: cargo xtask certs [--dir target/certs]")
            }
        }
    }
    let s = Secure::make_or_load(&dir)?;
    println!("in {}:", dir.display());
    for (f, what) in [
        (&s.ca, "CA certificate (kvctl --cacert)"),
        (
            &s.node_cert,
            "node certificate for 127.0.0.1 and localhost (kvd --cert-file, --peer-cert-file)",
        ),
        (&s.node_key, "its key (kvd --key-file, --peer-key-file)"),
        (&s.client_cert, "client certificate (kvctl --cert)"),
        (&s.client_key, "its key (kvctl --key)"),
        (
            &s.peer_secret,
            "peer secret, for peers without TLS (kvd --peer-secret-file)",
        ),
        (&s.auth, "tokens: read, write, admin (kvd --auth-file)"),
    ] {
        println!(
            "  {:<12} {what}",
            f.file_name().and_then(|n| n.to_str()).unwrap_or("")
        );
    }
    Ok(())
}
