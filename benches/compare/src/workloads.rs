//! The db_bench-style workloads, run against one engine at a time.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use hdrhistogram::Histogram;

use crate::data::{Data, Key, VALUE_LEN};
use crate::engines::{self, Durability, Engine};

/// Workload names in table order. `space` is directory size / live data
/// after overwrite + flush + manual compaction; `fullscan` times the full
/// ordered scan that follows that compaction (it runs after
/// readwhilewriting, whatever its place in the table).
pub const ALL: &[&str] = &[
    "fillseq",
    "fillrandom",
    "overwrite",
    "readrandom",
    "readmissing",
    "seekrandom",
    "fullscan",
    "readwhilewriting",
    "fdatasync",
    "fillsync1",
    "fillsyncN",
    "space",
];

/// Workloads that need the fillrandom database.
const ON_FILLED: &[&str] = &[
    "fillrandom",
    "overwrite",
    "readrandom",
    "readmissing",
    "seekrandom",
    "fullscan",
    "readwhilewriting",
    "space",
];

/// Sizes and switches shared by all workloads.
pub struct Config {
    pub root: PathBuf,
    pub scan_len: usize,
    pub sync_threads: usize,
    /// Time budget of one timed loop; a loop that runs out reports the rate
    /// of the operations it finished.
    pub max_secs: f64,
    /// Keep the database directories (their paths are printed).
    pub keep: bool,
}

/// How far a timed loop got.
struct Timed {
    done: usize,
    secs: f64,
    hist: Option<Histogram<u64>>,
}

fn cut_note(done: usize, n: usize, max_secs: f64) -> Option<String> {
    (done < n).then(|| format!("stopped by the {max_secs:.0} s budget after {done} of {n} ops"))
}

/// Throughput of one workload, with per-op latencies for point workloads.
pub struct Rate {
    pub ops: u64,
    pub secs: f64,
    pub hist: Option<Histogram<u64>>,
    pub note: Option<String>,
}

impl Rate {
    pub fn per_sec(&self) -> f64 {
        self.ops as f64 / self.secs
    }
}

pub enum Cell {
    Rate(Rate),
    /// Bytes on disk with the engine open after the compaction, whether a
    /// manual compaction ran, and the bytes once the engine is closed.
    Space {
        bytes: u64,
        ratio: f64,
        compacted: bool,
        closed_bytes: u64,
    },
    Failed(String),
}

fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000_000, 3).expect("valid histogram bounds")
}

/// Times up to `n` calls of `op`, each timed on its own (one clock read per
/// op), stopping when `max_secs` have passed.
fn timed(n: usize, max_secs: f64, mut op: impl FnMut(usize) -> Result<()>) -> Result<Timed> {
    let mut hist = new_hist();
    let start = Instant::now();
    let mut last = start;
    let mut done = 0;
    while done < n {
        op(done)?;
        done += 1;
        let now = Instant::now();
        hist.saturating_record((now - last).as_nanos() as u64);
        last = now;
        if (now - start).as_secs_f64() > max_secs {
            break;
        }
    }
    Ok(Timed {
        done,
        secs: (last - start).as_secs_f64(),
        hist: Some(hist),
    })
}

/// Times up to `n` calls of `op` as a whole, stopping when `max_secs` have
/// passed (the clock is read every 64 ops).
fn throughput(n: usize, max_secs: f64, mut op: impl FnMut(usize) -> Result<()>) -> Result<Timed> {
    let start = Instant::now();
    let mut done = 0;
    while done < n {
        op(done)?;
        done += 1;
        if done % 64 == 0 && start.elapsed().as_secs_f64() > max_secs {
            break;
        }
    }
    Ok(Timed {
        done,
        secs: start.elapsed().as_secs_f64(),
        hist: None,
    })
}

/// One phase of `run_engine`, reporting `(workload, cell)` results through
/// the callback it is given.
type Phase<'a> = dyn for<'r> FnMut(&'r mut (dyn FnMut(&str, Cell) + 'r)) -> Result<()> + 'a;

/// Runs the selected workloads on engine `name`, calling `record` with each
/// result as soon as it is known.
pub fn run_engine(
    name: &str,
    data: &Data,
    cfg: &Config,
    selected: &dyn Fn(&str) -> bool,
    record: &mut dyn FnMut(&str, Cell),
) {
    let mut guarded = |label: &str, f: &mut Phase| {
        let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&mut *record)));
        let msg = match res {
            Ok(Ok(())) => return,
            Ok(Err(e)) => format!("error: {e:#}"),
            Err(p) => {
                let s = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                format!("panic: {s}")
            }
        };
        eprintln!("[{name}] {label} FAILED: {msg}");
        record(label, Cell::Failed(msg));
    };

    if selected("fillseq") {
        guarded("fillseq", &mut |rec| {
            let (_dir, db) = fresh(name, cfg, Durability::Unsynced)?;
            let n = data.sorted.len();
            let mut t = throughput(n, cfg.max_secs, |i| {
                db.put(&data.sorted[i], data.value(i, 0))
            })?;
            t.secs += timed_once(|| db.sync())?;
            rec("fillseq", rate(t, n, cfg.max_secs));
            Ok(())
        });
    }
    if ON_FILLED.iter().any(|w| selected(w)) {
        guarded("fillrandom", &mut |rec| {
            filled(name, data, cfg, selected, rec)
        });
    }
    // The disk's rate is measured right before each engine's fillsync, so
    // that the two see the same disk weather. Before either, the dirty pages
    // the earlier workloads left behind (hundreds of MiB) are written out, so
    // that no engine's fsyncs queue behind the kernel's writeback of them.
    if ["fdatasync", "fillsync1", "fillsyncN"]
        .iter()
        .any(|w| selected(w))
    {
        settle_disk();
    }
    if (selected("fdatasync") || selected("fillsync1")) && name != "btreemap" {
        guarded("fdatasync", &mut |rec| {
            let n = data.sync_keys.len();
            rec(
                "fdatasync",
                rate(fdatasync_rate(&cfg.root, n, cfg.max_secs)?, n, cfg.max_secs),
            );
            Ok(())
        });
    }
    if selected("fillsync1") {
        guarded("fillsync1", &mut |rec| {
            rec("fillsync1", fill_sync(name, data, cfg, 1)?);
            Ok(())
        });
    }
    if selected("fillsyncN") {
        guarded("fillsyncN", &mut |rec| {
            rec("fillsyncN", fill_sync(name, data, cfg, cfg.sync_threads)?);
            Ok(())
        });
    }
}

fn rate(t: Timed, n: usize, max_secs: f64) -> Cell {
    Cell::Rate(Rate {
        ops: t.done as u64,
        secs: t.secs,
        hist: t.hist,
        note: cut_note(t.done, n, max_secs),
    })
}

/// Finishes loading keys `order[from..]` (generation `generation`) in
/// batches, untimed, after a timed loop ran out of time.
fn load_rest(
    db: &dyn Engine,
    data: &Data,
    order: &dyn Fn(usize) -> usize,
    from: usize,
    generation: usize,
) -> Result<()> {
    let n = data.keys.len();
    let mut i = from;
    while i < n {
        let end = (i + 10_000).min(n);
        let pairs: Vec<(&[u8], &[u8])> = (i..end)
            .map(|j| {
                let k = order(j);
                (&data.keys[k][..], data.value(k, generation))
            })
            .collect();
        db.put_batch(&pairs)?;
        i = end;
    }
    if from < n {
        db.sync()?;
    }
    Ok(())
}

fn timed_once(f: impl FnOnce() -> Result<()>) -> Result<f64> {
    let start = Instant::now();
    f()?;
    Ok(start.elapsed().as_secs_f64())
}

fn fresh(
    name: &str,
    cfg: &Config,
    durability: Durability,
) -> Result<(tempfile::TempDir, Box<dyn Engine>)> {
    let dir = tempfile::Builder::new()
        .prefix(&format!("compare-{name}-"))
        .tempdir_in(&cfg.root)
        .with_context(|| format!("temp dir in {}", cfg.root.display()))?;
    let db =
        engines::open(name, dir.path(), durability).with_context(|| format!("opening {name}"))?;
    Ok((dir, db))
}

/// fillrandom, then overwrite and the read workloads on the same database.
fn filled(
    name: &str,
    data: &Data,
    cfg: &Config,
    selected: &dyn Fn(&str) -> bool,
    rec: &mut dyn FnMut(&str, Cell),
) -> Result<()> {
    let n = data.keys.len();
    let max = cfg.max_secs;
    let (dir, mut db) = fresh(name, cfg, Durability::Unsynced)?;
    let mut t = timed(n, max, |i| db.put(&data.keys[i], data.value(i, 0)))?;
    t.secs += timed_once(|| db.sync())?;
    load_rest(&*db, data, &|i| i, t.done, 0)?;
    if selected("fillrandom") {
        rec("fillrandom", rate(t, n, max));
    }
    let mut generation = 0;
    if selected("overwrite") || selected("space") {
        let order = &data.overwrite_order;
        let mut t = throughput(n, max, |i| {
            let k = order[i] as usize;
            db.put(&data.overwrite_keys[i], data.value(k, 1))
        })?;
        t.secs += timed_once(|| db.sync())?;
        load_rest(&*db, data, &|i| order[i] as usize, t.done, 1)?;
        generation = 1;
        if selected("overwrite") {
            rec("overwrite", rate(t, n, max));
        }
    }
    eprintln!("[{name}] loaded {n} keys, generation {generation}");
    if let Some(shape) = db.shape() {
        eprintln!("[{name}] shape after load: {shape}");
    }
    if selected("readrandom") {
        let order = &data.read_order;
        let mut out = Vec::with_capacity(VALUE_LEN);
        let t = timed(order.len(), max, |i| {
            let k = order[i] as usize;
            if !db.get(&data.read_keys[i], &mut out)? {
                bail!("readrandom: key #{k} {} not found", hex(&data.keys[k]));
            }
            if out != data.value(k, generation) {
                bail!("readrandom: key #{k} has a wrong value");
            }
            Ok(())
        })?;
        rec("readrandom", rate(t, order.len(), max));
        if let Some(shape) = db.shape() {
            eprintln!("[{name}] shape after readrandom: {shape}");
        }
    }
    if selected("readmissing") {
        let mut out = Vec::new();
        let t = timed(data.missing.len(), max, |i| {
            if db.get(&data.missing[i], &mut out)? {
                bail!("readmissing: absent key {} found", hex(&data.missing[i]));
            }
            Ok(())
        })?;
        rec("readmissing", rate(t, data.missing.len(), max));
    }
    if selected("seekrandom") {
        let order = &data.seek_order;
        let mut got = 0;
        let t = throughput(order.len(), max, |i| {
            got += db.scan_from(&data.seek_keys[i], cfg.scan_len)?;
            Ok(())
        })?;
        let expected: usize = order[..t.done]
            .iter()
            .map(|&k| {
                let pos = data.sorted.partition_point(|s| *s < data.keys[k as usize]);
                cfg.scan_len.min(n - pos)
            })
            .sum();
        ensure!(
            got == expected,
            "seekrandom read {got} pairs, expected {expected}"
        );
        rec("seekrandom", rate(t, order.len(), max));
    }
    if selected("readwhilewriting") {
        rec("readwhilewriting", read_while_writing(&*db, data, max)?);
    }
    let mut space = None;
    if selected("space") || selected("fullscan") {
        // redb cannot compact while non-durable commits are pending.
        db.sync()?;
        let compacted = db.compact()?;
        let start = Instant::now();
        let count = db.scan_from(&[], usize::MAX)?;
        let secs = start.elapsed().as_secs_f64();
        ensure!(
            count == n,
            "after compaction a full scan sees {count} keys, expected {n}"
        );
        if selected("fullscan") {
            rec(
                "fullscan",
                Cell::Rate(Rate {
                    ops: count as u64,
                    secs,
                    hist: None,
                    note: (!compacted).then(|| "no manual compaction before the scan".into()),
                }),
            );
        }
        if selected("space") {
            let bytes = dir_bytes(dir.path())?;
            if let Some(shape) = db.shape() {
                eprintln!("[{name}] shape after compaction: {shape}");
            }
            if cfg.keep {
                list_dir(name, dir.path())?;
            }
            space = Some((bytes, compacted));
        }
    }
    drop(db);
    if let Some((bytes, compacted)) = space {
        rec(
            "space",
            Cell::Space {
                bytes,
                ratio: bytes as f64 / data.live_bytes() as f64,
                compacted,
                closed_bytes: dir_bytes(dir.path())?,
            },
        );
    }
    if cfg.keep {
        eprintln!("[{name}] kept {}", dir.keep().display());
    }
    Ok(())
}

/// One writer overwriting random keys flat out while one reader reads
/// random keys; the rate is the reader's.
fn read_while_writing(db: &dyn Engine, data: &Data, max_secs: f64) -> Result<Cell> {
    let stop = AtomicBool::new(false);
    let writes = AtomicU64::new(0);
    let n = data.keys.len();
    let (reader, writer) = std::thread::scope(|s| {
        let writer = s.spawn(|| -> Result<()> {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let j = n - 1 - i % n;
                let k = data.overwrite_order[j] as usize;
                db.put(&data.overwrite_keys[j], data.value(k, 2))?;
                i += 1;
                writes.store(i as u64, Ordering::Relaxed);
            }
            Ok(())
        });
        let reader = s.spawn(|| -> Result<Timed> {
            let mut out = Vec::with_capacity(VALUE_LEN);
            let res = throughput(data.read_order.len(), max_secs, |i| {
                let k = data.read_order[i] as usize;
                ensure!(
                    db.get(&data.read_keys[i], &mut out)?,
                    "readwhilewriting: key #{k} not found"
                );
                ensure!(
                    out.len() == VALUE_LEN,
                    "readwhilewriting: key #{k} value length {}",
                    out.len()
                );
                Ok(())
            });
            stop.store(true, Ordering::Relaxed);
            res
        });
        (reader.join(), writer.join())
    });
    let t = reader.map_err(|_| anyhow::anyhow!("reader thread panicked"))??;
    writer.map_err(|_| anyhow::anyhow!("writer thread panicked"))??;
    let w = writes.load(Ordering::Relaxed);
    let mut note = format!("writer {:.0} ops/s", w as f64 / t.secs);
    if let Some(cut) = cut_note(t.done, data.read_order.len(), max_secs) {
        note = format!("{note}; reader {cut}");
    }
    Ok(Cell::Rate(Rate {
        ops: t.done as u64,
        secs: t.secs,
        hist: None,
        note: Some(note),
    }))
}

/// Every write durable before it returns, from `threads` threads sharing
/// the keys.
fn fill_sync(name: &str, data: &Data, cfg: &Config, threads: usize) -> Result<Cell> {
    let (_dir, db) = fresh(name, cfg, Durability::SyncEachWrite)?;
    let keys = &data.sync_keys;
    let per = keys.len().div_ceil(threads);
    let db = &*db;
    let start = Instant::now();
    let results: Vec<Result<Timed>> = std::thread::scope(|s| {
        let handles: Vec<_> = keys
            .chunks(per)
            .enumerate()
            .map(|(t, chunk)| {
                s.spawn(move || {
                    timed(chunk.len(), cfg.max_secs, |i| {
                        db.put(&chunk[i], data.value(t * per + i, 0))
                    })
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("writer thread panicked")))
            })
            .collect()
    });
    let secs = start.elapsed().as_secs_f64();
    if let Some(shape) = db.shape() {
        eprintln!("[{name}] shape after fillsync ({threads} threads): {shape}");
    }
    let mut hist = new_hist();
    let mut done = 0;
    let mut out = Vec::new();
    for (t, r) in results.into_iter().enumerate() {
        let r = r?;
        // Spot-check what each thread wrote: its first and last key.
        for i in [t * per, t * per + r.done.saturating_sub(1)] {
            if r.done > 0 {
                ensure!(
                    db.get(&keys[i], &mut out)?,
                    "fillsync: key #{i} not found afterwards"
                );
                ensure!(
                    out == data.value(i, 0),
                    "fillsync: key #{i} has a wrong value"
                );
            }
        }
        done += r.done;
        if let Some(h) = r.hist {
            hist.add(h).context("merging histograms")?;
        }
    }
    Ok(rate(
        Timed {
            done,
            secs,
            hist: Some(hist),
        },
        keys.len(),
        cfg.max_secs,
    ))
}

/// Writes out all dirty pages system-wide (`sync(1)`); best effort.
fn settle_disk() {
    let _ = std::process::Command::new("sync").status();
}

/// The disk's raw rate of small durable writes, the floor under any
/// fillsync: 116-byte records written one after the other, each followed by
/// fdatasync. The file is written out with zeros and synced first, so that a
/// sync flushes only the record's page; appending instead would also commit
/// a new file size (and allocate blocks) at every fdatasync, a rate a
/// write-ahead log that reserves its space ahead beats.
fn fdatasync_rate(root: &Path, n: usize, max_secs: f64) -> Result<Timed> {
    use std::io::Write;
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir_in(root)?;
    let mut f = std::fs::File::create(dir.path().join("raw"))?;
    let rec = [0x5au8; crate::data::KEY_LEN + VALUE_LEN];
    f.write_all(&vec![0u8; n * rec.len()])?;
    f.sync_all()?;
    let mut at = 0u64;
    timed(n, max_secs, |_| {
        f.write_all_at(&rec, at)?;
        at += rec.len() as u64;
        f.sync_data()?;
        Ok(())
    })
}

/// Bytes the files under `dir` occupy on disk (as `du` counts them).
pub fn dir_bytes(dir: &Path) -> Result<u64> {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() {
            dir_bytes(&entry.path())?
        } else {
            meta.blocks() * 512
        };
    }
    Ok(total)
}

/// Prints the files of `dir` with their sizes (for --keep).
fn list_dir(name: &str, dir: &Path) -> Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<std::io::Result<_>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        eprintln!(
            "[{name}]   {:>12} {}",
            e.metadata()?.len(),
            e.file_name().to_string_lossy()
        );
    }
    Ok(())
}

fn hex(k: &Key) -> String {
    k.iter().map(|b| format!("{b:02x}")).collect()
}
