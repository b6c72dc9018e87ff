//! `kvd`: the FlashKV daemon (SPEC section 3). Parses flags (and the
//! `--config` file, `config_file`), sets up logging (`logging`) and
//! signals, and runs `kv_server::run`.

mod config_file;
mod http;
mod logging;
mod report;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result, bail};
use clap::{CommandFactory, Parser};
use kv_server::{Config, parse_peers};

/// FlashKV node. Without flags: a single-node cluster, id 1, on
/// 127.0.0.1:7001, data in ./kvd-data.
#[derive(Parser, Debug)]
#[command(name = "kvd", version)]
struct Args {
    /// This node's raft id.
    #[arg(long, default_value_t = 1)]
    id: u64,
    /// Address to listen on for clients, and for peers unless
    /// --peer-listen gives them their own.
    #[arg(long, default_value = "127.0.0.1:7001")]
    listen: String,
    /// Address to listen on for peers only (then --peers names peer
    /// addresses, and --listen serves clients only).
    #[arg(long)]
    peer_listen: Option<String>,
    /// Address clients are told to use (default: --listen).
    #[arg(long)]
    advertise: Option<String>,
    /// Initial members of a new cluster, this node included: ID=ADDR,...
    /// (ignored on restart in favour of the persisted membership).
    #[arg(long, value_delimiter = ',')]
    peers: Vec<String>,
    /// Join a running cluster: client endpoints of its members, comma
    /// separated. The data directory must be new and the node added with
    /// `kvctl member add` first. Ignored on restart.
    #[arg(long, value_delimiter = ',')]
    join: Vec<String>,
    /// Start a new data directory from a snapshot file made by `kvctl
    /// snapshot save` (every node of the new cluster restores the same file
    /// with the same --peers). Ignored on restart.
    #[arg(long)]
    restore: Option<PathBuf>,
    /// Data directory.
    #[arg(long, default_value = "./kvd-data")]
    data_dir: PathBuf,
    /// Serve the HTTP/JSON gateway, /metrics, /livez, /readyz and the
    /// status page on this address (TLS with --cert-file).
    #[arg(long)]
    http_listen: Option<String>,
    /// Peers prove knowledge of the secret in this file in the handshake
    /// (challenge-response; the secret is never sent). Every node of the
    /// cluster needs the same file; at least 16 bytes, surrounding
    /// whitespace ignored.
    #[arg(long)]
    peer_secret_file: Option<PathBuf>,
    /// Client tokens: lines `TOKEN ROLE` (read, write or admin). Requests
    /// without a token, or whose token's role may not send them, are
    /// refused (`permission denied`). Every node needs the same file.
    #[arg(long)]
    auth_file: Option<PathBuf>,
    /// Serve clients over TLS with this certificate chain (PEM); needs
    /// --key-file. Without --peer-listen, peers keep using plaintext links
    /// on the same port.
    #[arg(long, requires = "key_file")]
    cert_file: Option<PathBuf>,
    /// The private key of --cert-file (PEM).
    #[arg(long, requires = "cert_file")]
    key_file: Option<PathBuf>,
    /// Require client certificates signed by this CA (PEM; needs
    /// --cert-file).
    #[arg(long, requires = "cert_file")]
    trusted_ca_file: Option<PathBuf>,
    /// Mutual TLS between peers: this node's peer certificate chain (PEM),
    /// presented on the peer port and to the peers it dials. Needs
    /// --peer-listen, --peer-key-file and --peer-trusted-ca-file.
    #[arg(long, requires_all = ["peer_key_file", "peer_trusted_ca_file", "peer_listen"])]
    peer_cert_file: Option<PathBuf>,
    /// The private key of --peer-cert-file (PEM).
    #[arg(long, requires = "peer_cert_file")]
    peer_key_file: Option<PathBuf>,
    /// Peers must present a certificate signed by this CA (PEM).
    #[arg(long, requires = "peer_cert_file")]
    peer_trusted_ca_file: Option<PathBuf>,
    /// With --join to a cluster that serves clients over TLS: the CA that
    /// signed its certificates (default: --trusted-ca-file). This node's
    /// --cert-file is presented to members that require client
    /// certificates.
    #[arg(long)]
    join_ca_file: Option<PathBuf>,
    /// TOML file of flags: `KEY = VALUE` lines whose keys are the long
    /// flag names (`data-dir = "/var/lib/kvd"`); flags on the command line
    /// win over it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Log level: error, warn, info, debug or trace.
    #[arg(long, default_value = "info")]
    log_level: tracing::Level,
    /// Log lines as text, or as one JSON object per line.
    #[arg(long, value_enum, default_value_t)]
    log_format: logging::LogFormat,
    /// Serve linearizable reads on the leader without a heartbeat round
    /// while its lease holds (80% of the minimum election timeout, less a
    /// tick, after a quorum last acknowledged it). Assumes the nodes'
    /// clocks run at rates within 20% of each other; off by default.
    #[arg(long)]
    lease_reads: bool,
    /// Keep a full-text and similarity index of the values in
    /// <data-dir>/search and serve `kvctl search` / `kvctl similar`.
    /// Indexing runs behind the applied log on a thread of its own and
    /// costs far more than a plain write; off by default.
    #[arg(long)]
    search: bool,
    /// What similarity search compares values by: `ngram` (spelling and
    /// shared words; fast) or `minilm` (meaning, by a sentence-embedding
    /// model bundled in the binary; about 150 values/s per core, and only
    /// in a kvd built with `--features minilm`). Changing it rebuilds the
    /// index.
    #[arg(long, value_enum, default_value_t = Embedder::Ngram)]
    search_embedder: Embedder,
    /// Take a raft snapshot (and compact the log) after this many applied
    /// entries.
    #[arg(long, hide = true)]
    snapshot_threshold: Option<u64>,
    /// Largest record the raft log store writes (bytes; default 1 GiB).
    #[arg(long, hide = true)]
    raft_max_record_bytes: Option<usize>,
    /// Derive a new cluster's id from this token and the member ids instead
    /// of the members' addresses, for nodes that reach each other through
    /// different addresses (proxies). Ignored on restart.
    #[arg(long, hide = true)]
    cluster_token: Option<String>,
    /// Writes accepted and not yet answered before more are refused as
    /// overloaded.
    #[arg(long, hide = true)]
    max_pending_writes: Option<usize>,
    /// Raft proposals (groups of writes) outstanding at once.
    #[arg(long, hide = true)]
    max_proposals_in_flight: Option<usize>,
    /// Milliseconds a write may wait for its turn to be proposed before it
    /// is refused as overloaded.
    #[arg(long, hide = true)]
    max_write_queue_wait_ms: Option<u64>,
    /// Connections served at once (default 16384, lowered to fit the
    /// open-file limit); clients over it are told so and closed.
    #[arg(long)]
    max_connections: Option<usize>,
    /// Milliseconds a new connection has to complete its TLS handshake and
    /// send its first frame (default 10000).
    #[arg(long)]
    handshake_timeout_ms: Option<u64>,
    /// Milliseconds a frame may take from its first byte to its last, and
    /// a client to take a response (default 30000).
    #[arg(long)]
    frame_timeout_ms: Option<u64>,
    /// Milliseconds a client connection with no request in flight may stay
    /// silent before it is closed (default: no limit).
    #[arg(long)]
    idle_timeout_ms: Option<u64>,
    /// Requests of one connection handled or waiting to be written at once
    /// (default 4096); more are not read until some are answered.
    #[arg(long)]
    max_requests_in_flight: Option<usize>,
    /// Bytes of one connection's requests and unwritten responses at once
    /// (default 67108864); more are not read until they fit.
    #[arg(long)]
    max_bytes_in_flight: Option<usize>,
}

/// `--search-embedder`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Embedder {
    Ngram,
    Minilm,
}

fn config(args: &Args) -> Result<Config> {
    let mut config = Config::new(args.id, args.listen.clone(), args.data_dir.clone());
    config.peer_listen.clone_from(&args.peer_listen);
    config.advertise.clone_from(&args.advertise);
    if !args.peers.is_empty() {
        config.peers = parse_peers(&args.peers.join(","))?;
    }
    config.join.clone_from(&args.join);
    config.restore.clone_from(&args.restore);
    config.raft.lease_reads = args.lease_reads;
    config.search = args.search;
    config.search_embedder = match args.search_embedder {
        Embedder::Ngram => kv_server::SearchEmbedder::Ngram,
        Embedder::Minilm => kv_server::SearchEmbedder::MiniLm,
    };
    if let Some(n) = args.snapshot_threshold {
        config.raft.snapshot_threshold = n;
    }
    if let Some(n) = args.raft_max_record_bytes {
        config.raft.max_record_bytes = n;
    }
    config.cluster_token.clone_from(&args.cluster_token);
    if let Some(n) = args.max_pending_writes {
        config.writes.max_pending = n;
    }
    if let Some(n) = args.max_proposals_in_flight {
        config.writes.max_in_flight = n;
    }
    if let Some(ms) = args.max_write_queue_wait_ms {
        config.writes.max_queue_wait = std::time::Duration::from_millis(ms);
    }
    if let Some(n) = args.max_connections {
        config.net.max_connections = Some(n);
    }
    if let Some(ms) = args.handshake_timeout_ms {
        config.net.handshake_timeout = std::time::Duration::from_millis(ms);
    }
    if let Some(ms) = args.frame_timeout_ms {
        config.net.frame_timeout = std::time::Duration::from_millis(ms);
    }
    if let Some(ms) = args.idle_timeout_ms {
        config.net.idle_timeout = Some(std::time::Duration::from_millis(ms));
    }
    if let Some(n) = args.max_requests_in_flight {
        config.net.max_in_flight_per_connection = n;
    }
    if let Some(n) = args.max_bytes_in_flight {
        config.net.max_bytes_in_flight_per_connection = n;
    }
    if let Some(path) = &args.peer_secret_file {
        config.net.peer_secret =
            Some(kv_server::PeerSecret::from_file(path).map_err(anyhow::Error::msg)?);
    }
    if let (Some(cert), Some(key)) = (&args.cert_file, &args.key_file) {
        config.net.server_tls = Some(
            kv_server::ServerTls::from_files(cert, key, args.trusted_ca_file.as_deref())
                .map_err(anyhow::Error::msg)?,
        );
    }
    if let (Some(cert), Some(key), Some(ca)) = (
        &args.peer_cert_file,
        &args.peer_key_file,
        &args.peer_trusted_ca_file,
    ) {
        config.peer_tls =
            Some(kv_server::PeerTls::from_files(cert, key, ca).map_err(anyhow::Error::msg)?);
    }
    config.join_tls = join_tls(args)?;
    if let Some(path) = &args.auth_file {
        config.tokens = Some(kv_server::auth::Tokens::from_file(path).map_err(anyhow::Error::msg)?);
    }
    fit_connection_limit(&mut config);
    config.validate()?;
    Ok(config)
}

/// TLS for `--join`'s connections to a cluster whose client ports use TLS:
/// trusting `--join-ca-file` (or `--trusted-ca-file`), presenting this
/// node's `--cert-file` where there is one.
fn join_tls(args: &Args) -> Result<Option<kv_server::ClientTls>> {
    if args.join.is_empty() {
        return Ok(None);
    }
    node_client_tls(args, "--join")
}

/// A client's TLS towards nodes of this cluster, for `what` (`--join`,
/// `--http-listen`): trusting `--join-ca-file` (or `--trusted-ca-file`),
/// presenting this node's `--cert-file` where there is one; none when
/// neither CA is given and the node has no certificate.
fn node_client_tls(args: &Args, what: &str) -> Result<Option<kv_server::ClientTls>> {
    let Some(ca) = args.join_ca_file.as_ref().or(args.trusted_ca_file.as_ref()) else {
        if args.cert_file.is_some() {
            bail!(
                "{what} with --cert-file needs --join-ca-file (or --trusted-ca-file): the CA \
                 of the cluster's certificates"
            );
        }
        return Ok(None);
    };
    let identity = args.cert_file.as_deref().zip(args.key_file.as_deref());
    Ok(Some(
        kv_server::ClientTls::from_files(ca, identity).map_err(anyhow::Error::msg)?,
    ))
}

/// TLS for the gateway's client when the client port takes TLS: as for
/// `--join` (the gateway dials its own node).
fn gateway_tls(args: &Args) -> Result<Option<kv_server::ClientTls>> {
    if args.cert_file.is_none() {
        return Ok(None);
    }
    node_client_tls(args, "--http-listen")
}

/// File descriptors kept for everything but client connections: the
/// engine's tables and logs, the raft log, peer links.
const RESERVED_FDS: u64 = 1024;

/// Raises the soft limit on open files to the hard limit, and lowers the
/// connection limit to what the file limit leaves room for (a node out of
/// descriptors could not open its own files).
fn fit_connection_limit(config: &mut Config) {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        let raised = rustix::process::Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        match setrlimit(Resource::Nofile, raised) {
            Ok(()) => limit = getrlimit(Resource::Nofile),
            Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit"),
        }
    }
    let Some(files) = limit.current else { return };
    let room = usize::try_from(files.saturating_sub(RESERVED_FDS).max(64)).unwrap_or(usize::MAX);
    if let Some(wanted) = config.net.max_connections
        && wanted > room
    {
        tracing::warn!(
            wanted,
            allowed = room,
            open_file_limit = files,
            "connection limit lowered to fit the open-file limit"
        );
        config.net.max_connections = Some(room);
    }
}

/// Set by a SIGTERM or SIGINT that arrives before the runtime's handlers
/// are in place.
static EARLY_SIGNAL: std::sync::LazyLock<Arc<AtomicBool>> =
    std::sync::LazyLock::new(|| Arc::new(AtomicBool::new(false)));

/// Catches SIGTERM and SIGINT from the first moment, so that one arriving
/// during start-up ends in a clean shutdown rather than the default action.
fn catch_early_signals() {
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        if let Err(e) = signal_hook::flag::register(sig, EARLY_SIGNAL.clone()) {
            eprintln!("kvd: cannot install the handler of signal {sig}: {e}");
        }
    }
}

fn main() -> ExitCode {
    catch_early_signals();
    let argv = match config_file::expand(&Args::command(), std::env::args_os().collect()) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("kvd: {}", report::one_line(&e));
            return ExitCode::from(2);
        }
    };
    let args = match Args::try_parse_from(&argv.args) {
        Ok(a) => a,
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("kvd: {}", argv.explain(&e));
            return ExitCode::from(2);
        }
    };
    if let Err(e) = argv.ensure_read(args.config.as_deref()) {
        eprintln!("kvd: {}", report::one_line(&e));
        return ExitCode::from(2);
    }
    logging::init(args.log_level, args.log_format);
    if let Some(path) = &args.config {
        tracing::info!(config = %path.display(), "flags read from the config file");
    }
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let line = report::one_line(&e);
            match args.log_format {
                // Collectors of JSON logs read every line as an object.
                logging::LogFormat::Json => tracing::error!("kvd: {line}"),
                logging::LogFormat::Text => eprintln!("kvd: {line}"),
            }
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<()> {
    let config = config(args)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
        let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
        let shutdown = async move {
            // Checked after the handlers above are in place: a signal comes
            // before (this flag) or after (their streams), never in between.
            if EARLY_SIGNAL.load(Ordering::SeqCst) {
                tracing::info!("signal during start-up: shutting down");
                return;
            }
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
                _ = int.recv() => tracing::info!("SIGINT: shutting down"),
            }
        };
        let Some(listen) = &args.http_listen else {
            kv_server::run(config, shutdown).await?;
            return Ok(());
        };
        let (listener, client_tls) = (http::bind(listen).await?, gateway_tls(args)?);
        let server = kv_server::Server::start(config.clone()).await?;
        // The stop signal reaches the gateway and the node together.
        let (signalled, signal) = tokio::sync::watch::channel(false);
        let gateway = http::start(listener, &config, &server, client_tls, signal)?;
        let shutdown = async move {
            shutdown.await;
            let _ = signalled.send(true);
        };
        let result = server.run(shutdown).await;
        gateway.stop().await;
        Ok(result?)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../kvd.example.toml");

    #[test]
    fn the_flags_are_well_formed() {
        Args::command().debug_assert();
    }

    /// The example file with each commented `# key = value` line turned on
    /// (the first of each key), so that a renamed flag cannot leave it
    /// stale.
    fn example_with_every_key() -> String {
        let mut seen = std::collections::HashSet::new();
        EXAMPLE
            .lines()
            .filter_map(|l| {
                let setting = l.strip_prefix("# ").unwrap_or(l);
                let key = setting.split_once(" = ")?.0;
                let is_key =
                    !key.is_empty() && key.chars().all(|c| c.is_ascii_lowercase() || c == '-');
                (is_key && seen.insert(key.to_owned())).then(|| setting.to_owned())
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn parse_file(text: &str, cli: &[&str]) -> Args {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("kvd.toml");
        std::fs::write(&file, text).expect("write");
        let mut argv = vec!["kvd".into(), "--config".into(), file.into_os_string()];
        argv.extend(cli.iter().map(Into::into));
        let x = config_file::expand(&Args::command(), argv).expect("expand");
        Args::try_parse_from(&x.args).unwrap_or_else(|e| panic!("{}", x.explain(&e)))
    }

    #[test]
    fn the_example_file_runs_the_default_node() {
        let a = parse_file(EXAMPLE, &[]);
        assert_eq!((a.id, a.listen.as_str()), (1, "127.0.0.1:7001"));
        assert_eq!(a.data_dir, PathBuf::from("./kvd-data"));
        assert_eq!(a.log_format, logging::LogFormat::Text);
        assert!(a.peers.is_empty() && a.join.is_empty());
    }

    #[test]
    fn every_key_of_the_example_file_is_a_flag() {
        let text = example_with_every_key();
        assert!(text.lines().count() > 25, "{text}");
        let a = parse_file(&text, &["--listen", "127.0.0.1:9"]);
        assert_eq!(a.listen, "127.0.0.1:9");
        assert_eq!(
            a.peers.join(","),
            "1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003"
        );
        assert_eq!(a.join, ["127.0.0.1:7001", "127.0.0.1:7002"]);
        assert_eq!(a.max_bytes_in_flight, Some(67_108_864));
        assert_eq!(a.http_listen.as_deref(), Some("127.0.0.1:8080"));
    }
}
