//! Component benchmarks of kv-engine: put, get, scan and fillsync.
//!
//! `cargo bench -p engine-bench` (add `-- --quick` for a short run).
//! Keys are 16 random bytes, values 100 bytes, as in db_bench.

use std::sync::Arc;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use kv_engine::{Db, Options, SyncMode};
use rand::{Rng, SeedableRng, rngs::StdRng};

const PRELOAD: usize = 200_000;

fn keys(n: usize, seed: u64) -> Vec<[u8; 16]> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n).map(|_| rng.r#gen()).collect()
}

fn open(dir: &std::path::Path, sync: SyncMode) -> Db {
    Db::open_with(
        dir,
        Options {
            sync,
            ..Options::default()
        },
    )
    .expect("open")
}

fn preloaded(dir: &std::path::Path) -> (Db, Vec<[u8; 16]>) {
    let db = open(dir, SyncMode::Never);
    let ks = keys(PRELOAD, 1);
    for k in &ks {
        db.put(k, [7u8; 100]).expect("put");
    }
    db.flush().expect("flush");
    (db, ks)
}

fn put(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = open(dir.path(), SyncMode::Never);
    let mut rng = StdRng::seed_from_u64(2);
    let mut g = c.benchmark_group("put");
    g.throughput(Throughput::Elements(1));
    g.bench_function("random_16b_key_100b_value_unsynced", |b| {
        b.iter_batched(
            || rng.r#gen::<[u8; 16]>(),
            |k| db.put(k, [1u8; 100]).expect("put"),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn get(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (db, ks) = preloaded(dir.path());
    let mut rng = StdRng::seed_from_u64(3);
    let mut g = c.benchmark_group("get");
    g.throughput(Throughput::Elements(1));
    g.bench_function("present_from_sstables", |b| {
        b.iter(|| {
            let k = &ks[rng.gen_range(0..ks.len())];
            assert!(db.get(k).expect("get").is_some());
        })
    });
    g.bench_function("missing_bloom", |b| {
        b.iter(|| {
            let k: [u8; 16] = rng.r#gen();
            db.get(k).expect("get")
        })
    });
    g.finish();
}

fn scan(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (db, _) = preloaded(dir.path());
    let mut rng = StdRng::seed_from_u64(4);
    let mut g = c.benchmark_group("scan");
    g.throughput(Throughput::Elements(100));
    g.bench_function("seek_then_100", |b| {
        b.iter(|| {
            let start: [u8; 16] = rng.r#gen();
            let n = db.scan(start.as_slice()..).expect("scan").take(100).count();
            assert!(n > 0 || start > [0xfe; 16]);
        })
    });
    g.finish();
}

fn fillsync(c: &mut Criterion) {
    let mut g = c.benchmark_group("fillsync");
    g.sample_size(10);
    for threads in [1usize, 8] {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Arc::new(open(dir.path(), SyncMode::Always));
        let per_thread = 200;
        g.throughput(Throughput::Elements((threads * per_thread) as u64));
        g.bench_function(format!("{threads}_threads"), |b| {
            b.iter(|| {
                std::thread::scope(|s| {
                    for t in 0..threads {
                        let db = &db;
                        s.spawn(move || {
                            let mut rng = StdRng::seed_from_u64(t as u64);
                            for _ in 0..per_thread {
                                db.put(rng.r#gen::<[u8; 16]>(), [2u8; 100]).expect("put");
                            }
                        });
                    }
                });
            })
        });
    }
    g.finish();
}

criterion_group!(benches, put, get, scan, fillsync);
criterion_main!(benches);
