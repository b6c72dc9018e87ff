//! The node's configuration and the membership file in its data directory.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{Error, IoContext, Result};

/// Everything a node needs to run. Start from [`Config::new`].
#[derive(Debug, Clone)]
pub struct Config {
    /// This node's raft id (non-zero).
    pub id: u64,
    /// Address to listen on for clients, and for peers unless
    /// `peer_listen` gives them their own.
    pub listen: String,
    /// Address to listen on for peers only (`kvd --peer-listen`); `listen`
    /// then serves clients only.
    pub peer_listen: Option<String>,
    /// Mutual TLS between peers (needs `peer_listen`): the peer port
    /// requires a certificate of the peer CA, and links to other nodes
    /// present this node's.
    pub peer_tls: Option<kv_net::PeerTls>,
    /// TLS for the connections of `kvd --join` to the running cluster's
    /// client ports, when those use TLS.
    pub join_tls: Option<kv_net::ClientTls>,
    /// Address clients are told to use for this node (default: `listen`).
    pub advertise: Option<String>,
    /// The initial members of a new cluster with their raft (peer) addresses,
    /// this node included. Empty: a single-node cluster reached at `listen`.
    /// Ignored when the data directory already holds a cluster.
    pub peers: BTreeMap<u64, String>,
    /// Members of a running cluster to ask for its membership when this
    /// node, with an empty data directory, joins it (`kvd --join`; it must
    /// have been added with `kvctl member add`). Ignored on restart.
    pub join: Vec<String>,
    /// A snapshot file (`kvctl snapshot save`) a new data directory starts
    /// from (`kvd --restore`). Ignored on restart.
    pub restore: Option<PathBuf>,
    /// Where the node keeps its data.
    pub data_dir: PathBuf,
    /// Raft tunables.
    pub raft: kv_raft::Options,
    /// Network tunables.
    pub net: kv_net::Options,
    /// How long a request may wait for its proposal or read barrier before
    /// the server answers `TIMEOUT`.
    pub request_timeout: Duration,
    /// Most pairs in one page of a range answer.
    pub max_range_page: u32,
    /// Mixed into the cluster id of a new cluster instead of the members'
    /// addresses (see [`derive_cluster_id`]), for clusters whose nodes name
    /// each other by different addresses (proxies). Ignored on restart.
    pub cluster_token: Option<String>,
    /// A snapshot transfer that received no chunk for this long is dropped
    /// with what it wrote (until then a new connection resumes it).
    pub snapshot_idle_timeout: Duration,
    /// Bounds of the write path (admission control, entry size). Its
    /// `max_entry_bytes` is lowered, if need be, to leave room in a
    /// `net.max_frame_length` frame.
    pub writes: crate::proposer::WriteLimits,
    /// Client tokens with roles (`kvd --auth-file`); `None`: requests are
    /// not authenticated.
    pub tokens: Option<crate::auth::Tokens>,
    /// Keep a search index of the values in `<data-dir>/search` and serve
    /// `Search` / `Similar` (`kvd --search`); off by default: indexing costs
    /// far more than a plain write.
    pub search: bool,
    /// What the similarity index embeds values with
    /// (`kvd --search-embedder`).
    pub search_embedder: SearchEmbedder,
}

/// The embedder of `kvd --search`'s similarity index.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SearchEmbedder {
    /// Hashed character 3-grams and words (`kv_search::NgramEmbedder`):
    /// spelling and shared words, about 400,000 values/s.
    #[default]
    Ngram,
    /// The bundled sentence-embedding model (`kv_search::MiniLmEmbedder`,
    /// feature `minilm`): meaning, about 150 values/s per core.
    MiniLm,
}

impl SearchEmbedder {
    /// Why [`SearchEmbedder::MiniLm`] is refused by a build without it.
    pub const NOT_BUILT: &'static str = "this kvd was built without the sentence-embedding model: \
         build it with `cargo build --release -p kvd --features minilm`";

    /// Its name on the command line.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            SearchEmbedder::Ngram => "ngram",
            SearchEmbedder::MiniLm => "minilm",
        }
    }
}

impl Config {
    /// The defaults of a single node `id` listening on `listen` with its data
    /// in `data_dir`.
    #[must_use]
    pub fn new(id: u64, listen: impl Into<String>, data_dir: impl Into<PathBuf>) -> Config {
        Config {
            id,
            listen: listen.into(),
            peer_listen: None,
            peer_tls: None,
            join_tls: None,
            advertise: None,
            peers: BTreeMap::new(),
            join: Vec::new(),
            restore: None,
            data_dir: data_dir.into(),
            raft: kv_raft::Options::default(),
            net: kv_net::Options::default(),
            request_timeout: Duration::from_secs(5),
            max_range_page: 1000,
            cluster_token: None,
            snapshot_idle_timeout: Duration::from_secs(60),
            writes: crate::proposer::WriteLimits::for_frame_length(
                kv_net::DEFAULT_MAX_FRAME_LENGTH,
            ),
            tokens: None,
            search: false,
            search_embedder: SearchEmbedder::Ngram,
        }
    }

    /// The address clients are told to use.
    #[must_use]
    pub fn advertise_addr(&self) -> &str {
        self.advertise.as_deref().unwrap_or(&self.listen)
    }

    /// The address peers reach this node at when no `peers` say otherwise.
    #[must_use]
    pub fn peer_addr(&self) -> &str {
        self.peer_listen.as_deref().unwrap_or(&self.listen)
    }

    /// The initial members: `peers`, or this node alone.
    #[must_use]
    pub fn initial_members(&self) -> BTreeMap<u64, String> {
        if self.peers.is_empty() {
            BTreeMap::from([(self.id, self.peer_addr().to_owned())])
        } else {
            self.peers.clone()
        }
    }

    /// Checks the configuration.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming the problem.
    pub fn validate(&self) -> Result<()> {
        if self.id == 0 {
            return Err(Error::Config("node id must be positive".into()));
        }
        if self.search_embedder != SearchEmbedder::Ngram {
            if !self.search {
                return Err(Error::Config(
                    "--search-embedder needs --search: without it there is no index".into(),
                ));
            }
            if cfg!(not(feature = "minilm")) {
                return Err(Error::Config(format!(
                    "--search-embedder {}: {}",
                    self.search_embedder.name(),
                    SearchEmbedder::NOT_BUILT
                )));
            }
        }
        if !self.join.is_empty() && self.restore.is_some() {
            return Err(Error::Config(
                "--join and --restore exclude each other: a joining node gets its data from the cluster"
                    .into(),
            ));
        }
        if !self.join.is_empty() && !self.peers.is_empty() {
            return Err(Error::Config(
                "--join and --peers exclude each other: a joining node learns the members".into(),
            ));
        }
        if !self.peers.is_empty() && !self.peers.contains_key(&self.id) {
            return Err(Error::Config(format!(
                "--peers does not list this node (id {})",
                self.id
            )));
        }
        if self.peer_tls.is_some() && self.peer_listen.is_none() {
            return Err(Error::Config(
                "peer TLS (--peer-cert-file) needs --peer-listen: peers and clients each get \
                 their own port and certificate"
                    .into(),
            ));
        }
        if self.peer_listen.as_deref() == Some(self.listen.as_str()) {
            return Err(Error::Config(
                "--peer-listen must differ from --listen".into(),
            ));
        }
        if self.peers.contains_key(&0) {
            return Err(Error::Config("peer id 0 is reserved".into()));
        }
        if self.max_range_page == 0 {
            return Err(Error::Config("max_range_page must be positive".into()));
        }
        if self.snapshot_idle_timeout.is_zero() {
            return Err(Error::Config(
                "snapshot_idle_timeout must be positive".into(),
            ));
        }
        self.raft.validate()?;
        self.net.validate()?;
        Ok(())
    }
}

/// Parses `ID=ADDR,ID=ADDR,...`.
///
/// # Errors
///
/// [`Error::Config`] for a malformed list or a repeated id.
pub fn parse_peers(s: &str) -> Result<BTreeMap<u64, String>> {
    let mut peers = BTreeMap::new();
    for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (id, addr) = item
            .split_once('=')
            .ok_or_else(|| Error::Config(format!("peer {item:?} is not ID=ADDR")))?;
        let id: u64 = id
            .trim()
            .parse()
            .map_err(|_| Error::Config(format!("peer id {id:?} is not a number")))?;
        let addr = addr.trim();
        if id == 0 || addr.is_empty() {
            return Err(Error::Config(format!("bad peer {item:?}")));
        }
        if peers.insert(id, addr.to_owned()).is_some() {
            return Err(Error::Config(format!("peer id {id} listed twice")));
        }
    }
    Ok(peers)
}

const MEMBERS_FILE: &str = "members";
const MEMBERS_HEADER: &str = "flashkv-members v1";
/// The line after the header of a node that joined a running cluster: it
/// must never bootstrap a cluster of its own.
const JOINED: &str = "joined";

/// The members of the cluster as a node's data directory records them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Members {
    /// Initial members (or, for a node that joined, those it learned) and
    /// their peer addresses.
    pub peers: BTreeMap<u64, String>,
    /// The node joined a running cluster (its raft log starts empty).
    pub joined: bool,
    /// Just written: the data directory was new.
    pub fresh: bool,
}

/// Loads the persisted members of the cluster in `data_dir`, or, for a new
/// data directory, persists `initial` and returns it.
///
/// # Errors
///
/// [`Error::Corruption`] for a damaged file, I/O errors.
pub fn load_or_init_members(
    data_dir: &Path,
    initial: &BTreeMap<u64, String>,
) -> Result<(BTreeMap<u64, String>, bool)> {
    let m = load_or_init(data_dir, initial, false)?;
    Ok((m.peers, m.fresh))
}

/// Loads the persisted members, or persists `initial` (marked as joined when
/// `joined`) for a new data directory.
///
/// # Errors
///
/// [`Error::Corruption`] for a damaged file, I/O errors.
pub fn load_or_init(
    data_dir: &Path,
    initial: &BTreeMap<u64, String>,
    joined: bool,
) -> Result<Members> {
    let path = data_dir.join(MEMBERS_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let mut lines = text.lines().peekable();
            if lines.next() != Some(MEMBERS_HEADER) {
                return Err(Error::corruption(&path, "missing header"));
            }
            let joined = lines.next_if_eq(&JOINED).is_some();
            let body: Vec<&str> = lines.collect();
            let members = parse_peers(&body.join(","))
                .map_err(|e| Error::corruption(&path, e.to_string()))?;
            if members.is_empty() {
                return Err(Error::corruption(&path, "no members"));
            }
            Ok(Members {
                peers: members,
                joined,
                fresh: false,
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if data_dir.join("raft").exists() {
                return Err(Error::corruption(
                    &path,
                    "missing, but the data directory holds a raft log",
                ));
            }
            let mut text = format!("{MEMBERS_HEADER}\n");
            if joined {
                let _ = writeln!(text, "{JOINED}");
            }
            for (id, addr) in initial {
                let _ = writeln!(text, "{id}={addr}");
            }
            write_durably(data_dir, MEMBERS_FILE, &text)?;
            Ok(Members {
                peers: initial.clone(),
                joined,
                fresh: true,
            })
        }
        Err(e) => Err(Error::io(&path, e)),
    }
}

/// Writes `name` in `dir` atomically and durably (temp file, fsync, rename,
/// directory fsync).
fn write_durably(dir: &Path, name: &str, text: &str) -> Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    std::fs::write(&tmp, text).ctx(&tmp)?;
    std::fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .ctx(&tmp)?;
    let path = dir.join(name);
    std::fs::rename(&tmp, &path).ctx(&path)?;
    crate::archive::sync_dir(dir)
}

/// Persists the cluster id a joining node learned (before its members
/// file, whose presence marks the directory as set up).
///
/// # Errors
///
/// I/O errors.
pub fn persist_cluster_id(data_dir: &Path, id: u64) -> Result<()> {
    write_durably(
        data_dir,
        CLUSTER_ID_FILE,
        &format!("{CLUSTER_ID_HEADER}\n{id:016x}\n"),
    )
}

const CLUSTER_ID_FILE: &str = "cluster-id";
const CLUSTER_ID_HEADER: &str = "flashkv-cluster-id v1";

/// The id of a cluster bootstrapped with `members`: a hash of the sorted
/// `id=addr` list (nodes started with the same `--peers` agree on it), or,
/// with a `token`, of the token and the member ids alone. Never 0.
#[must_use]
pub fn derive_cluster_id(members: &BTreeMap<u64, String>, token: Option<&str>) -> u64 {
    let mut text = String::from("flashkv cluster\n");
    match token {
        Some(token) => {
            let _ = writeln!(text, "token {token}");
            for id in members.keys() {
                let _ = writeln!(text, "{id}");
            }
        }
        None => {
            for (id, addr) in members {
                let _ = writeln!(text, "{id}={addr}");
            }
        }
    }
    xxhash_rust::xxh3::xxh3_64(text.as_bytes()).max(1)
}

/// Loads the cluster id persisted in `data_dir`, or derives it from the
/// cluster's initial `members` (as persisted) and persists it. A data
/// directory from before cluster ids gets the id its `--peers` would have
/// given it.
///
/// # Errors
///
/// [`Error::Corruption`] for a damaged file, I/O errors.
pub fn load_or_init_cluster_id(
    data_dir: &Path,
    members: &BTreeMap<u64, String>,
    token: Option<&str>,
) -> Result<u64> {
    let path = data_dir.join(CLUSTER_ID_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let mut lines = text.lines();
            if lines.next() != Some(CLUSTER_ID_HEADER) {
                return Err(Error::corruption(&path, "missing header"));
            }
            let id = lines
                .next()
                .and_then(|l| u64::from_str_radix(l.trim(), 16).ok())
                .filter(|&id| id != 0)
                .ok_or_else(|| Error::corruption(&path, "no cluster id"))?;
            Ok(id)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let id = derive_cluster_id(members, token);
            persist_cluster_id(data_dir, id)?;
            Ok(id)
        }
        Err(e) => Err(Error::io(&path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_parse() {
        let p = parse_peers("1=127.0.0.1:7001, 2=127.0.0.1:7002").unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!(p[&2], "127.0.0.1:7002");
        assert!(parse_peers("1=a,1=b").is_err());
        assert!(parse_peers("x=a").is_err());
        assert!(parse_peers("1").is_err());
        assert!(parse_peers("0=a").is_err());
    }

    #[test]
    fn members_persist_and_win_over_later_flags() {
        let tmp = tempfile::tempdir().unwrap();
        let first = parse_peers("1=a:1,2=b:2").unwrap();
        assert_eq!(
            load_or_init_members(tmp.path(), &first).unwrap(),
            (first.clone(), true)
        );
        let other = parse_peers("1=z:9").unwrap();
        assert_eq!(
            load_or_init_members(tmp.path(), &other).unwrap(),
            (first, false)
        );
        std::fs::write(tmp.path().join(MEMBERS_FILE), "junk").unwrap();
        assert!(load_or_init_members(tmp.path(), &other).is_err());
    }

    #[test]
    fn cluster_id_is_derived_from_the_membership_and_persisted() {
        let a = parse_peers("1=a:1,2=b:2,3=c:3").unwrap();
        let same = parse_peers("3=c:3, 2=b:2, 1=a:1").unwrap();
        let moved = parse_peers("1=a:1,2=b:2,3=c:4").unwrap();
        let fewer = parse_peers("1=a:1,2=b:2").unwrap();
        let id = derive_cluster_id(&a, None);
        assert_eq!(id, derive_cluster_id(&same, None));
        assert_ne!(id, derive_cluster_id(&moved, None));
        assert_ne!(id, derive_cluster_id(&fewer, None));
        // With a token, addresses do not matter, ids and the token do.
        assert_eq!(
            derive_cluster_id(&a, Some("t")),
            derive_cluster_id(&moved, Some("t"))
        );
        assert_ne!(
            derive_cluster_id(&a, Some("t")),
            derive_cluster_id(&a, Some("u"))
        );
        assert_ne!(
            derive_cluster_id(&a, Some("t")),
            derive_cluster_id(&fewer, Some("t"))
        );

        let tmp = tempfile::tempdir().unwrap();
        assert_eq!(load_or_init_cluster_id(tmp.path(), &a, None).unwrap(), id);
        // Persisted: later members or tokens do not change it.
        assert_eq!(
            load_or_init_cluster_id(tmp.path(), &moved, Some("x")).unwrap(),
            id
        );
        std::fs::write(tmp.path().join(CLUSTER_ID_FILE), "junk").unwrap();
        assert!(load_or_init_cluster_id(tmp.path(), &a, None).is_err());
        std::fs::write(
            tmp.path().join(CLUSTER_ID_FILE),
            format!("{CLUSTER_ID_HEADER}\nzz\n"),
        )
        .unwrap();
        assert!(load_or_init_cluster_id(tmp.path(), &a, None).is_err());
    }
}
