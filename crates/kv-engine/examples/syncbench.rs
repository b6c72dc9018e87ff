//! Group commit at work: synced puts from 1 and from N threads, with the
//! number of writes each fsync covered.
//!
//! `cargo run --release -p kv-engine --example syncbench -- [PUTS_PER_THREAD] [THREADS]`

use std::time::Instant;

use kv_engine::{Db, Options};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let per_thread: u32 = args.next().map_or(Ok(1000), |s| s.parse())?;
    let threads: u32 = args.next().map_or(Ok(8), |s| s.parse())?;
    for n in [1, threads] {
        let tmp = tempfile::tempdir()?;
        let db = Db::open_with(tmp.path(), Options::default())?;
        let puts = if n == 1 { per_thread * 2 } else { per_thread };
        let t = Instant::now();
        std::thread::scope(|s| {
            for th in 0..n {
                let db = &db;
                s.spawn(move || {
                    for i in 0..puts {
                        db.put(format!("{th}-{i}"), [1u8; 100]).expect("put");
                    }
                });
            }
        });
        let secs = t.elapsed().as_secs_f64();
        let st = db.stats();
        println!(
            "{n} thread(s): {:>8.0} puts/s, {:.2} writes per fsync",
            f64::from(n * puts) / secs,
            st.writes as f64 / st.wal_syncs.max(1) as f64
        );
    }
    Ok(())
}
