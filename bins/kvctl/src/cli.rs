//! Command-line definitions.

use std::time::Duration;

use clap::{Parser, Subcommand};

/// FlashKV command-line client.
#[derive(Parser, Debug)]
#[command(name = "kvctl", version)]
pub struct Cli {
    /// Cluster endpoints, comma-separated.
    #[arg(
        long,
        global = true,
        env = "KVCTL_ENDPOINTS",
        default_value = "127.0.0.1:7001",
        value_delimiter = ','
    )]
    pub endpoints: Vec<String>,
    /// Bound on the whole command (discovery and retries included), e.g.
    /// `500ms`, `2s`, `1m`.
    #[arg(long, global = true, default_value = "5s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// One JSON object per result on stdout.
    #[arg(long, global = true)]
    pub json: bool,
    /// Allow possibly stale reads from any node.
    #[arg(long, global = true)]
    pub serializable: bool,
    /// Token for a cluster that checks them (`kvd --auth-file`).
    #[arg(long, global = true, env = "KVCTL_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Connect over TLS, trusting the CA certificates in this file (PEM).
    #[arg(long, global = true, env = "KVCTL_CACERT")]
    pub cacert: Option<std::path::PathBuf>,
    /// Client certificate (PEM), for nodes that require one; needs --key.
    #[arg(
        long = "cert",
        id = "client_cert",
        global = true,
        requires = "client_key",
        requires = "cacert"
    )]
    pub cert: Option<std::path::PathBuf>,
    /// The private key of --cert (PEM).
    #[arg(
        long = "key",
        id = "client_key",
        global = true,
        requires = "client_cert"
    )]
    pub key: Option<std::path::PathBuf>,
    #[command(subcommand)]
    pub command: Cmd,
}

/// A command (also what one `shell` line holds).
#[derive(Subcommand, Debug, Clone)]
pub enum Cmd {
    /// Set KEY to VALUE.
    Put { key: String, value: String },
    /// Print the value of KEY.
    Get { key: String },
    /// Remove KEY (absent keys are fine).
    Delete { key: String },
    /// Compare-and-swap: `cas KEY EXPECTED NEW` or `cas KEY --absent NEW`.
    Cas {
        key: String,
        /// EXPECTED NEW, or NEW with --absent.
        #[arg(num_args = 1..=2, required = true)]
        values: Vec<String>,
        /// Swap only if KEY does not exist.
        #[arg(long)]
        absent: bool,
    },
    /// Print pairs with START <= key < END, ascending.
    Range {
        start: Option<String>,
        end: Option<String>,
        /// Only keys with this prefix.
        #[arg(long)]
        prefix: Option<String>,
        /// At most this many pairs.
        #[arg(long)]
        limit: Option<usize>,
        /// Print keys only.
        #[arg(long)]
        keys_only: bool,
    },
    /// Apply `put KEY VALUE` / `delete KEY` lines from FILE (or stdin)
    /// atomically.
    Batch { file: Option<String> },
    /// Keys whose value contains every word (case-insensitive, Unicode
    /// words), one per line, best match first (nodes run `kvd --search`).
    Search {
        #[arg(required = true, num_args = 1..)]
        words: Vec<String>,
        /// At most this many keys (default 100, at most 1000).
        #[arg(long)]
        limit: Option<usize>,
        /// Only keys with this prefix.
        #[arg(long)]
        prefix: Option<String>,
    },
    /// Keys whose values are nearest in meaning to TEXT, `KEY<TAB>SCORE`
    /// per line (cosine in [-1, 1]), best first.
    Similar {
        #[arg(required = true, num_args = 1..)]
        text: Vec<String>,
        /// At most this many keys (default 10, at most 1000).
        #[arg(long)]
        top_k: Option<usize>,
        /// Only keys with this prefix.
        #[arg(long)]
        prefix: Option<String>,
    },
    /// Print the status of every endpoint.
    Status,
    /// Read commands from stdin, one result line each.
    Shell,
    /// Load generator: concurrent clients doing puts and gets.
    Bench {
        /// Concurrent clients.
        #[arg(long, default_value_t = 16)]
        clients: usize,
        /// Operations per phase, over all clients.
        #[arg(long, default_value_t = 20_000)]
        requests: usize,
        /// Value size in bytes.
        #[arg(long, default_value_t = 100)]
        value_size: usize,
        /// Key size in bytes (keys are `bench/` and a zero-padded number).
        #[arg(long, default_value_t = 14)]
        key_size: usize,
        /// Distinct keys.
        #[arg(long, default_value_t = 10_000)]
        keys: usize,
        /// Open loop: issue this many operations per second over all
        /// clients, on schedule whether or not earlier ones completed;
        /// latency counts from each operation's due time.
        #[arg(long, value_parser = parse_rate)]
        rate: Option<f64>,
        /// Only run the put phase.
        #[arg(long, hide = true)]
        puts_only: bool,
    },
    /// Cluster membership: list, add, promote, remove.
    Member {
        #[command(subcommand)]
        what: MemberCmd,
    },
    /// Backups: `snapshot save FILE`, `snapshot info FILE`.
    Snapshot {
        #[command(subcommand)]
        what: SnapshotCmd,
    },
    /// Leadership: `leader transfer ID`.
    Leader {
        #[command(subcommand)]
        what: LeaderCmd,
    },
    /// Checks of the cluster (`check perf`, as `etcdctl check perf`).
    Check {
        #[command(subcommand)]
        what: CheckCmd,
    },
}

/// `member` subcommands.
#[derive(Subcommand, Debug, Clone)]
pub enum MemberCmd {
    /// One line per member: id, peer address, advertise address,
    /// voter/learner, and `leader` for the leader.
    List,
    /// Add node ID, reached by peers at PEER_ADDR; then start it with
    /// `kvd --id ID --join ENDPOINTS`. A voter is added as a learner first
    /// and promoted once it has caught up.
    Add {
        id: u64,
        peer_addr: String,
        /// The address clients are told to use (default: PEER_ADDR).
        #[arg(long)]
        advertise: Option<String>,
        /// Keep it a learner (no vote) until `member promote`.
        #[arg(long)]
        learner: bool,
    },
    /// Learner to voter; refused while it lags.
    Promote { id: u64 },
    /// Remove node ID; removing the leader hands leadership over first.
    Remove { id: u64 },
}

/// `snapshot` subcommands.
#[derive(Subcommand, Debug, Clone)]
pub enum SnapshotCmd {
    /// Stream a consistent copy of the whole store (every write
    /// acknowledged before the command began) from the leader to FILE.
    Save { file: String },
    /// Verify FILE and print its index, term, size, checksum and key count.
    Info { file: String },
}

/// `leader` subcommands.
#[derive(Subcommand, Debug, Clone)]
pub enum LeaderCmd {
    /// Hand leadership to voter ID.
    Transfer { id: u64 },
}

/// What `check` checks.
#[derive(Subcommand, Debug, Clone)]
pub enum CheckCmd {
    /// Write load for 60 s at the load's rate (256-byte keys, 1 KiB
    /// values, open loop) and judge throughput, slowest request, stddev and
    /// errors as `etcdctl check perf` does; exit 0 only if all pass.
    Perf {
        /// s: 50 clients at 150 puts/s, m: 200 at 1,000/s, l: 500 at
        /// 8,000/s, xl: 1,000 at 15,000/s.
        #[arg(long, default_value = "s", value_parser = ["s", "m", "l", "xl"])]
        load: String,
        /// Seconds of load (60 unless testing).
        #[arg(long, default_value_t = 60, hide = true)]
        seconds: u64,
    },
}

/// One `shell` line.
#[derive(Parser, Debug)]
#[command(name = "", no_binary_name = true, disable_help_subcommand = true)]
pub struct ShellLine {
    #[command(subcommand)]
    pub command: Cmd,
}

fn parse_rate(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(r) if r.is_finite() && r > 0.0 && r <= 1e9 => Ok(r),
        _ => Err(format!(
            "rate {s:?} must be a positive number of operations per second"
        )),
    }
}

/// The longest duration accepted.
const MAX_DURATION: Duration = Duration::from_secs(10 * 366 * 24 * 3600);

/// Parses durations like `500ms`, `2s`, `1m30s`, `1h`.
///
/// # Errors
///
/// A message naming the problem.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("empty duration".into());
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (num, tail) = rest.split_at(digits);
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let n: f64 = num.parse().map_err(|_| format!("invalid duration {s:?}"))?;
        let secs = match unit.trim() {
            "ns" => n / 1e9,
            "us" | "µs" => n / 1e6,
            "ms" => n / 1e3,
            "s" | "sec" => n,
            "m" | "min" => n * 60.0,
            "h" => n * 3600.0,
            "" => return Err(format!("duration {s:?} needs a unit (ms, s, m, h)")),
            u => return Err(format!("unknown unit {u:?} in duration {s:?}")),
        };
        // Bounded so that deadlines computed from it cannot overflow.
        total = Duration::try_from_secs_f64(secs)
            .ok()
            .and_then(|d| total.checked_add(d))
            .filter(|t| *t <= MAX_DURATION)
            .ok_or_else(|| format!("duration {s:?} is too long (at most 10 years)"))?;
        rest = tail;
    }
    if total.is_zero() {
        return Err("duration must be positive".into());
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("x").is_err());
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("99999999999999999999h").is_err());
        assert!(parse_duration("1e400s").is_err());
        assert!(parse_duration("87600h87600h").is_err());
        assert!(parse_duration("87600h").is_ok());
    }
}
