//! Faults on a running [`Cluster`]: SIGKILL and restart on the same data
//! dir, SIGSTOP / SIGCONT, and partitions of the proxy links. One fault at
//! a time, on a random schedule, each kind once per round in random order; half the time aimed at the leader, where
//! faults hurt most.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use crate::Error;
use crate::cluster::{Cluster, Link};
use crate::history::Recorder;

/// A kind of fault the nemesis may inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// SIGKILL a node, restart it later on the same data dir.
    Kill,
    /// SIGSTOP a node, SIGCONT it later.
    Pause,
    /// Cut or stall every link between a minority and the rest.
    Partition,
}

impl Kind {
    /// Every kind.
    pub const ALL: [Kind; 3] = [Kind::Kill, Kind::Pause, Kind::Partition];

    /// The kinds named in a comma-separated list (`kill,pause,partition`).
    ///
    /// # Errors
    ///
    /// The unknown name.
    pub fn parse_list(list: &str) -> Result<Vec<Kind>, String> {
        let mut kinds = Vec::new();
        for name in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let k = name.parse()?;
            if !kinds.contains(&k) {
                kinds.push(k);
            }
        }
        Ok(kinds)
    }
}

impl FromStr for Kind {
    type Err = String;
    fn from_str(s: &str) -> Result<Kind, String> {
        match s {
            "kill" => Ok(Kind::Kill),
            "pause" => Ok(Kind::Pause),
            "partition" => Ok(Kind::Partition),
            other => Err(format!(
                "unknown nemesis {other:?} (kill, pause, partition)"
            )),
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Kill => "kill",
            Kind::Pause => "pause",
            Kind::Partition => "partition",
        })
    }
}

/// One fault, on node indexes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// SIGKILL this node.
    Kill(usize),
    /// SIGSTOP this node.
    Pause(usize),
    /// Set every link between `minority` and the other nodes to `link`.
    Partition {
        /// The cut-off side.
        minority: Vec<usize>,
        /// How the links fail.
        link: Link,
    },
}

impl Fault {
    /// The kind of the fault.
    #[must_use]
    pub fn kind(&self) -> Kind {
        match self {
            Fault::Kill(_) => Kind::Kill,
            Fault::Pause(_) => Kind::Pause,
            Fault::Partition { .. } => Kind::Partition,
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Kill(i) => write!(f, "kill -9 node {}", i + 1),
            Fault::Pause(i) => write!(f, "pause node {}", i + 1),
            Fault::Partition { minority, link } => {
                let ids: Vec<String> = minority.iter().map(|i| (i + 1).to_string()).collect();
                let how = if *link == Link::Stalled {
                    "stall"
                } else {
                    "cut"
                };
                write!(f, "partition ({how}) nodes {} from the rest", ids.join(","))
            }
        }
    }
}

/// Injects `fault`.
pub fn inject(cluster: &mut Cluster, fault: &Fault) {
    match fault {
        Fault::Kill(i) => cluster.nodes[*i].kill(),
        Fault::Pause(i) => cluster.nodes[*i].pause(),
        Fault::Partition { minority, link } => {
            let rest: Vec<usize> = (0..cluster.nodes.len())
                .filter(|i| !minority.contains(i))
                .collect();
            cluster.set_links(minority, &rest, *link);
        }
    }
}

/// Undoes `fault`: restarts, resumes or heals.
///
/// # Errors
///
/// A killed node that does not start again.
pub async fn heal(cluster: &mut Cluster, fault: &Fault) -> Result<(), Error> {
    match fault {
        Fault::Kill(i) => {
            if !cluster.nodes[*i].is_up() {
                cluster.nodes[*i].start().await?;
            }
        }
        Fault::Pause(i) => cluster.nodes[*i].resume(),
        Fault::Partition { .. } => cluster.heal_links(),
    }
    Ok(())
}

/// Undoes every fault: resumes paused nodes, starts stopped ones, opens
/// every link.
///
/// # Errors
///
/// A node that does not start again.
pub async fn heal_all(cluster: &mut Cluster) -> Result<(), Error> {
    cluster.heal_links();
    for n in &mut cluster.nodes {
        if n.is_paused() {
            n.resume();
        }
        if !n.is_up() {
            n.start().await?;
        }
    }
    Ok(())
}

/// When and how long faults happen.
#[derive(Debug, Clone)]
pub struct Schedule {
    /// Time between a heal and the next fault: uniform in this range.
    pub quiet: (Duration, Duration),
    /// How long a fault lasts: uniform in this range.
    pub hold: (Duration, Duration),
}

impl Default for Schedule {
    fn default() -> Self {
        Schedule {
            quiet: (Duration::from_millis(500), Duration::from_millis(2_000)),
            hold: (Duration::from_millis(1_000), Duration::from_millis(4_000)),
        }
    }
}

/// Injects random faults of the given kinds on a [`Schedule`].
#[derive(Debug)]
pub struct Nemesis {
    kinds: Vec<Kind>,
    /// Kinds still to draw in this round: every kind comes once per round,
    /// so a short run still sees each of them.
    bag: Vec<Kind>,
    schedule: Schedule,
    rng: StdRng,
    /// Faults injected, by kind.
    pub injected: BTreeMap<Kind, usize>,
    /// Nodes that exited without the nemesis killing them, with why.
    pub crashes: Vec<String>,
}

impl Nemesis {
    /// A nemesis drawing from `kinds`, seeded.
    #[must_use]
    pub fn new(kinds: Vec<Kind>, schedule: Schedule, seed: u64) -> Nemesis {
        Nemesis {
            kinds,
            bag: Vec::new(),
            schedule,
            rng: StdRng::seed_from_u64(seed),
            injected: BTreeMap::new(),
            crashes: Vec::new(),
        }
    }

    fn between(&mut self, (lo, hi): (Duration, Duration)) -> Duration {
        if hi <= lo {
            lo
        } else {
            self.rng.gen_range(lo..hi)
        }
    }

    /// A random fault of an enabled kind, or `None` when no kind applies.
    async fn pick(&mut self, cluster: &Cluster) -> Option<Fault> {
        let n = cluster.nodes.len();
        if self.bag.is_empty() {
            self.bag = self
                .kinds
                .iter()
                .copied()
                .filter(|k| *k != Kind::Partition || n >= 3)
                .collect();
            self.bag.shuffle(&mut self.rng);
        }
        let kind = self.bag.pop()?;
        let leader = if self.rng.gen_bool(0.5) {
            cluster.leader().await
        } else {
            None
        };
        let target = leader.unwrap_or_else(|| self.rng.gen_range(0..n));
        Some(match kind {
            Kind::Kill => Fault::Kill(target),
            Kind::Pause => Fault::Pause(target),
            Kind::Partition => {
                let size = self.rng.gen_range(1..=(n - 1) / 2);
                let mut others: Vec<usize> = (0..n).filter(|&i| i != target).collect();
                others.shuffle(&mut self.rng);
                let mut minority = vec![target];
                minority.extend(others.into_iter().take(size - 1));
                minority.sort_unstable();
                let link = if self.rng.gen_bool(0.5) {
                    Link::Cut
                } else {
                    Link::Stalled
                };
                Fault::Partition { minority, link }
            }
        })
    }

    /// Restarts nodes that exited on their own, noting each as a crash.
    async fn restart_crashed(
        &mut self,
        cluster: &mut Cluster,
        recorder: &Recorder,
    ) -> Result<(), Error> {
        for node in &mut cluster.nodes {
            if let Some(status) = node.exited() {
                let what = format!(
                    "node {} exited on its own ({status}); log tail:\n{}",
                    node.id,
                    node.log_tail(15)
                );
                recorder.event(format!("crash node {} ({status})", node.id));
                self.crashes.push(what);
                node.start().await?;
                recorder.event(format!("restart node {} after its crash", node.id));
            }
        }
        Ok(())
    }

    /// Sleeps `d`, restarting crashed nodes along the way.
    async fn wait(
        &mut self,
        cluster: &mut Cluster,
        recorder: &Recorder,
        d: Duration,
    ) -> Result<(), Error> {
        let until = Instant::now() + d;
        while Instant::now() < until {
            self.restart_crashed(cluster, recorder).await?;
            let left = until.saturating_duration_since(Instant::now());
            tokio::time::sleep(left.min(Duration::from_millis(100))).await;
        }
        Ok(())
    }

    /// Injects and heals faults until `until`, then heals everything.
    ///
    /// # Errors
    ///
    /// A node that does not start again after a kill or a crash.
    pub async fn run(
        &mut self,
        cluster: &mut Cluster,
        recorder: &Recorder,
        until: Instant,
    ) -> Result<(), Error> {
        loop {
            let quiet = self.between(self.schedule.quiet);
            self.wait(cluster, recorder, quiet).await?;
            if Instant::now() >= until {
                break;
            }
            let Some(fault) = self.pick(cluster).await else {
                self.wait(
                    cluster,
                    recorder,
                    until.saturating_duration_since(Instant::now()),
                )
                .await?;
                break;
            };
            inject(cluster, &fault);
            recorder.event(format!("start {fault}"));
            *self.injected.entry(fault.kind()).or_default() += 1;
            let hold = self.between(self.schedule.hold);
            let hold = hold.min(until.saturating_duration_since(Instant::now()));
            self.wait(cluster, recorder, hold).await?;
            heal(cluster, &fault).await?;
            recorder.event(format!("end {fault}"));
        }
        heal_all(cluster).await?;
        recorder.event("healed everything");
        Ok(())
    }
}
