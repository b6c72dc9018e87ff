//! A quick profile target: load random keys, then time point reads and seeks.
//!
//! `cargo run --release -p kv-engine --example readbench -- [KEYS] [READS] [compact] [DIR]`
//!
//! With `DIR`, the database there is loaded on the first run and only read
//! on later ones (KEYS must stay the same; any word but `compact` in the
//! third place skips the compaction).
//!
//! With `compact`, a manual compaction runs before the reads, so they see
//! one sorted run and no background work.

use std::time::Instant;

use kv_engine::{Db, Options, SyncMode};

fn key(i: u64) -> [u8; 16] {
    // A fixed bijective mix so keys are random-looking but reproducible.
    let mut x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x ^= x >> 29;
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&x.to_be_bytes());
    k[8..].copy_from_slice(&i.to_be_bytes());
    k
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let n: u64 = args.next().map_or(Ok(200_000), |s| s.parse())?;
    let reads: u64 = args.next().map_or(Ok(1_000_000), |s| s.parse())?;
    let compact = args.next().as_deref() == Some("compact");
    // An existing database directory is read as it is, so that A/B runs of
    // two builds can share one load.
    let tmp = tempfile::tempdir()?;
    let dir = args
        .next()
        .map_or_else(|| tmp.path().to_path_buf(), Into::into);
    let loaded = dir.join("CURRENT").exists();
    let db = Db::open_with(
        &dir,
        Options {
            sync: SyncMode::Never,
            ..Options::default()
        },
    )?;
    if !loaded {
        let t = Instant::now();
        for i in 0..n {
            db.put(key(i), [7u8; 100])?;
        }
        println!(
            "fill     {:>10.0} ops/s",
            n as f64 / t.elapsed().as_secs_f64()
        );
        db.flush()?;
        if compact {
            db.compact()?;
        }
    }
    let t = Instant::now();
    let mut found = 0u64;
    for i in 0..reads {
        found += u64::from(db.get(key((i * 7919) % n))?.is_some());
    }
    println!(
        "get      {:>10.0} ops/s ({found} found)",
        reads as f64 / t.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    for i in 0..reads {
        let _ = db.get(key(n + i))?;
    }
    println!(
        "missing  {:>10.0} ops/s",
        reads as f64 / t.elapsed().as_secs_f64()
    );
    let seeks = reads / 20;
    let t = Instant::now();
    let mut items = 0;
    for i in 0..seeks {
        items += db.scan(key((i * 7919) % n).as_slice()..)?.take(100).count();
    }
    println!(
        "seek+100 {:>10.0} ops/s ({items} items)",
        seeks as f64 / t.elapsed().as_secs_f64()
    );
    Ok(())
}
