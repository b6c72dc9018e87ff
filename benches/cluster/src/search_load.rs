//! `cluster-bench search-load`: the write throughput of a 3-node cluster
//! with and without `kvd --search`, on short texts, and how long the
//! indexes take to catch up with the writes.
//!
//! Each phase starts a fresh cluster and writes `--texts` generated texts
//! (4–12 words of a 20,000-word Zipf vocabulary, as `benches/search`) from
//! `--clients` concurrent writers, each put acknowledged by a majority. With
//! `--search`, a linearizable search issued right after the last write
//! waits until the leader's index has applied it: its latency is the
//! index's lag behind the acknowledged writes.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use kv_search::corpus::Corpus;

use crate::procs::{Node, start_three};
use crate::scale::{client, wait_leader};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The kvd binary.
    #[arg(long, default_value = "target/release/kvd")]
    kvd: PathBuf,
    /// Working directory (its phase subdirectories are replaced).
    #[arg(long, default_value = "target/search-load")]
    dir: PathBuf,
    /// Texts written per phase.
    #[arg(long, default_value_t = 50_000)]
    texts: usize,
    /// Concurrent writers.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// `kvd --search-embedder` of the `--search` phase (`minilm` needs a
    /// kvd built with `--features minilm`).
    #[arg(long, default_value = "ngram")]
    search_embedder: String,
}

struct Phase {
    writes_per_s: f64,
    p50: Duration,
    p99: Duration,
    catch_up: Option<Duration>,
}

async fn phase(a: &Args, texts: &Arc<Vec<String>>, search: bool) -> Result<Phase> {
    let dir = std::path::absolute(a.dir.join(if search { "search" } else { "plain" }))?;
    let extra = if search {
        vec![
            "--search".to_owned(),
            "--search-embedder".to_owned(),
            a.search_embedder.clone(),
        ]
    } else {
        Vec::new()
    };
    let (nodes, addrs) = start_three(&a.kvd, &dir, &extra)?;
    let refs: Vec<&Node> = nodes.iter().collect();
    wait_leader(&refs, Duration::from_secs(30)).await?;
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..a.clients {
        let (next, texts) = (next.clone(), texts.clone());
        let c = client(addrs.clone(), Duration::from_secs(30), false);
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(text) = texts.get(i) else {
                    return Ok::<_, anyhow::Error>(lat);
                };
                let t = Instant::now();
                c.put(format!("doc:{i:08}"), text.clone())
                    .await
                    .with_context(|| format!("put {i}"))?;
                lat.push(t.elapsed());
            }
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await??);
    }
    let took = started.elapsed();
    let catch_up = if search {
        let c = client(addrs.clone(), Duration::from_secs(600), false);
        let t = Instant::now();
        let hits = c.search(&texts[texts.len() - 1], "", 10).await?;
        let waited = t.elapsed();
        ensure!(!hits.is_empty(), "the last text written was not found");
        Some(waited)
    } else {
        None
    };
    drop(nodes);
    std::fs::remove_dir_all(&dir)?;
    lat.sort();
    Ok(Phase {
        writes_per_s: lat.len() as f64 / took.as_secs_f64(),
        p50: lat[lat.len() / 2],
        p99: lat[lat.len() * 99 / 100],
        catch_up,
    })
}

pub async fn run(a: Args) -> Result<()> {
    ensure!(
        a.texts > 0 && a.clients > 0,
        "--texts and --clients must be positive"
    );
    ensure!(
        a.kvd.exists(),
        "{} not found (cargo build --release -p kvd)",
        a.kvd.display()
    );
    let mut corpus = Corpus::new(20_000, 1);
    let texts: Arc<Vec<String>> = Arc::new((0..a.texts).map(|_| corpus.sentence(4, 12)).collect());
    let plain = phase(&a, &texts, false).await?;
    let search = phase(&a, &texts, true).await?;
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "{} texts, {} writers, 3 nodes, --search-embedder {}\n\n| kvd | writes/s | p50 | p99 | index caught up |\n|---|---:|---:|---:|---:|",
        a.texts, a.clients, a.search_embedder
    );
    for (name, p) in [("plain", &plain), ("--search", &search)] {
        println!(
            "| {name} | {:.0} | {:.2} ms | {:.2} ms | {} |",
            p.writes_per_s,
            ms(p.p50),
            ms(p.p99),
            p.catch_up.map_or_else(
                || "-".to_owned(),
                |d| format!("{:.0} ms after the last write", ms(d))
            )
        );
    }
    println!(
        "\nwith --search: {:.2}x the plain write throughput",
        search.writes_per_s / plain.writes_per_s
    );
    Ok(())
}
