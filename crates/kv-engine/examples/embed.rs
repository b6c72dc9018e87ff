//! Embedding kv-engine: open, write, read, scan, snapshot, checkpoint.
//!
//! `cargo run --release -p kv-engine --example embed [DIR]`
//! (DIR defaults to a fresh temporary directory).

use std::time::Instant;

use kv_engine::{Db, Options, SyncMode, WriteBatch};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let tmp = tempfile::tempdir()?;
    let dir = std::env::args()
        .nth(1)
        .map_or_else(|| tmp.path().join("db"), Into::into);
    println!("database in {}", dir.display());

    let db = Db::open_with(
        &dir,
        Options {
            sync: SyncMode::Never,
            ..Options::default()
        },
    )?;
    db.put(b"user:1", b"Jane")?;
    println!("get user:1 -> {:?}", db.get(b"user:1")?);

    let mut batch = WriteBatch::new();
    batch
        .put(b"user:2", b"John")
        .put(b"user:3", b"Ada")
        .delete(b"user:1");
    db.write(batch)?;

    let snap = db.snapshot();
    db.put(b"user:2", b"Johnny")?;
    println!(
        "user:2 now {:?}, in the snapshot {:?}",
        db.get(b"user:2")?,
        snap.get(b"user:2")?
    );

    let n = 200_000u32;
    let t = Instant::now();
    for i in 0..n {
        db.put(format!("item:{i:08}"), format!("value-{i}"))?;
    }
    let secs = t.elapsed().as_secs_f64();
    println!(
        "{n} puts in {secs:.2}s ({:.0} ops/s, unsynced)",
        f64::from(n) / secs
    );

    let t = Instant::now();
    for i in (0..n).step_by(7) {
        assert!(db.get(format!("item:{i:08}"))?.is_some());
    }
    println!("{} gets in {:.2}s", n / 7 + 1, t.elapsed().as_secs_f64());

    println!("users:");
    for item in db.prefix(b"user:")? {
        let (k, v) = item?;
        println!(
            "  {} = {}",
            String::from_utf8_lossy(&k),
            String::from_utf8_lossy(&v)
        );
    }
    let count = db
        .scan(b"item:00001000".as_slice()..b"item:00002000".as_slice())?
        .count();
    println!("scan [item:00001000, item:00002000) -> {count} pairs");

    db.compact()?;
    let backup = dir.with_extension("checkpoint");
    let _ = std::fs::remove_dir_all(&backup);
    db.checkpoint(&backup)?;
    let copy = Db::open(&backup)?;
    println!(
        "checkpoint at {} holds user:3 = {:?}",
        backup.display(),
        copy.get(b"user:3")?
    );
    println!("\n{}", db.stats());
    Ok(())
}
