//! Helpers shared by the integration tests (each test binary compiles this
//! module on its own, so not every binary uses every helper).
#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Once;
use std::sync::atomic::{AtomicUsize, Ordering};

use kv_engine::{Options, SyncMode};
use rand::SeedableRng;
use rand::rngs::StdRng;

/// Options that make a few kilobytes of writes flush and compact, so that a
/// short test exercises every layer of the tree.
pub fn tiny_options() -> Options {
    Options {
        sync: SyncMode::Never,
        memtable_size: 4 << 10,
        block_size: 256,
        target_file_size: 8 << 10,
        l0_compaction_trigger: 2,
        l0_slowdown_trigger: 8,
        l0_stop_trigger: 12,
        level_base_bytes: 16 << 10,
        level_multiplier: 4,
        ..Options::default()
    }
}

/// Options with a 64 KiB memtable and small files, as the engine's own
/// guidance suggests for tests that need background flushes and compactions.
pub fn small_options() -> Options {
    Options {
        sync: SyncMode::Never,
        memtable_size: 64 << 10,
        target_file_size: 64 << 10,
        level_base_bytes: 256 << 10,
        ..Options::default()
    }
}

/// A seeded RNG. The seed comes from `KV_TEST_SEED` when set, else from the
/// clock; it is printed so that a failure can be replayed with
/// `KV_TEST_SEED=<seed> cargo test -p kv-engine --test <name>`.
pub fn seeded_rng(test: &str) -> (StdRng, u64) {
    let seed = std::env::var("KV_TEST_SEED")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0x5eed)
        });
    eprintln!("{test}: seed {seed} (replay with KV_TEST_SEED={seed})");
    (StdRng::seed_from_u64(seed), seed)
}

/// Copies the regular files of `src` (not recursively) into a new directory `dst`.
pub fn copy_dir(src: &Path, dst: &Path) {
    fs::create_dir_all(dst).unwrap_or_else(|e| panic!("create {}: {e}", dst.display()));
    for entry in fs::read_dir(src).unwrap_or_else(|e| panic!("read_dir {}: {e}", src.display())) {
        let entry = entry.expect("directory entry");
        let ty = entry.file_type().expect("file type");
        if ty.is_file() {
            fs::copy(entry.path(), dst.join(entry.file_name()))
                .unwrap_or_else(|e| panic!("copy {}: {e}", entry.path().display()));
        }
    }
}

/// The files of `dir` whose name ends with `suffix`, sorted by name (file
/// numbers are zero-padded, so this is creation order).
pub fn files_with_suffix(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.ends_with(suffix))
        })
        .collect();
    v.sort();
    v
}

/// The files of `dir` whose name starts with `prefix`, sorted by name.
pub fn files_with_prefix(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(prefix))
        })
        .collect();
    v.sort();
    v
}

/// Total size in bytes of the files of `dir` whose name ends with `suffix`.
pub fn bytes_with_suffix(dir: &Path, suffix: &str) -> u64 {
    files_with_suffix(dir, suffix)
        .iter()
        .map(|p| fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .sum()
}

/// One framed record of a WAL segment or manifest: where it starts, where its
/// payload starts, and where it ends.
#[derive(Debug, Clone, Copy)]
pub struct Frame {
    pub start: usize,
    pub payload_start: usize,
    pub end: usize,
}

/// Splits a WAL segment or manifest into its framed records.
///
/// Two framings are accepted, whichever parses the whole file exactly:
/// `[len u32 LE][crc32(len) u32 LE][crc32(payload) u32 LE][payload]` (a header
/// with its own checksum, which the engine uses) and the plainer
/// `[len u32 LE][crc32(payload) u32 LE][payload]`. Returns `None` when neither
/// does, so the caller can say the file format is not the documented one.
pub fn parse_frames(data: &[u8]) -> Option<Vec<Frame>> {
    parse_frames_with(data, true).or_else(|| parse_frames_with(data, false))
}

fn parse_frames_with(data: &[u8], header_crc: bool) -> Option<Vec<Frame>> {
    let header = if header_crc { 12 } else { 8 };
    let mut frames = Vec::new();
    let mut pos = 0usize;
    // A segment's reserved but unwritten tail reads as zeros.
    while pos < data.len() && data[pos..].iter().any(|&b| b != 0) {
        let h = data.get(pos..pos + header)?;
        let len_bytes: [u8; 4] = h[0..4].try_into().ok()?;
        let len = u32::from_le_bytes(len_bytes) as usize;
        let word = |i: usize| u32::from_le_bytes(h[i..i + 4].try_into().expect("4 bytes"));
        let payload_crc = if header_crc {
            if crc32fast::hash(&len_bytes) != word(4) {
                return None;
            }
            word(8)
        } else {
            word(4)
        };
        let payload = data.get(pos + header..pos + header + len)?;
        if crc32fast::hash(payload) != payload_crc {
            return None;
        }
        frames.push(Frame {
            start: pos,
            payload_start: pos + header,
            end: pos + header + len,
        });
        pos += header + len;
    }
    Some(frames)
}

/// The commit groups of a WAL segment: the documented layout (see the
/// engine's `wal` module) of a header record `"FKVWAL02" | seed`, then
/// groups `[body_len u64][crc32(seed, body)][crc32(seed ^ 0x9e3779b9,
/// header)][body of records]`. Each frame is one group, its payload the
/// body. `None` when `data` is not such a segment.
pub fn parse_wal_groups(data: &[u8]) -> Option<Vec<Frame>> {
    let len = u32::from_le_bytes(data.get(0..4)?.try_into().ok()?) as usize;
    let header = parse_frames_with(data.get(..12 + len)?, true)?;
    let header = header.first()?;
    let payload = data.get(header.payload_start..header.end)?;
    let seed = u32::from_le_bytes(payload.strip_prefix(b"FKVWAL02")?.try_into().ok()?);
    let crc = |seed: u32, bytes: &[u8]| {
        let mut h = crc32fast::Hasher::new_with_initial(seed);
        h.update(bytes);
        h.finalize()
    };
    let mut frames = Vec::new();
    let mut pos = header.end;
    while pos < data.len() && data[pos..].iter().any(|&b| b != 0) {
        let h = data.get(pos..pos + 16)?;
        let word = |i: usize| u32::from_le_bytes(h[i..i + 4].try_into().expect("4 bytes"));
        if crc(seed ^ 0x9e37_79b9, &h[0..12]) != word(12) {
            return None;
        }
        let len = usize::try_from(u64::from_le_bytes(h[0..8].try_into().ok()?)).ok()?;
        let body = data.get(pos + 16..pos + 16 + len)?;
        if crc(seed, body) != word(8) || parse_frames_with(body, true)?.is_empty() {
            return None;
        }
        frames.push(Frame {
            start: pos,
            payload_start: pos + 16,
            end: pos + 16 + len,
        });
        pos += 16 + len;
    }
    Some(frames)
}

static PANICS: AtomicUsize = AtomicUsize::new(0);
static HOOK: Once = Once::new();

/// Installs (once per process) a panic hook that counts every panic on any
/// thread, so that a panic on an engine background thread is noticed too, then
/// chains to the default hook so the message is still printed.
pub fn count_panics() {
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.fetch_add(1, Ordering::SeqCst);
            default(info);
        }));
    });
}

/// Number of panics seen since [`count_panics`] was called.
pub fn panics_so_far() -> usize {
    PANICS.load(Ordering::SeqCst)
}

/// Runs `f` and fails the test if it panicked, naming `what`.
pub fn no_panic<T>(what: &str, f: impl FnOnce() -> T) -> T {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(v) => v,
        Err(payload) => {
            let msg = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "<non-string panic>".into());
            panic!("panic during {what}: {msg}");
        }
    }
}

/// Printable form of a byte string for assertion messages.
pub fn show(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Runs `f(worker, item)` for every item on `workers` threads (item `i` goes
/// to worker `i % workers`). Corruption trials are bound by fsync latency,
/// not CPU, so a few threads cut their wall time even on two cores.
pub fn for_each_parallel<T: Sync>(items: &[T], workers: usize, f: impl Fn(usize, &T) + Sync) {
    std::thread::scope(|s| {
        for worker in 0..workers {
            let f = &f;
            s.spawn(move || {
                for item in items.iter().skip(worker).step_by(workers) {
                    f(worker, item);
                }
            });
        }
    });
}

/// Kills (SIGKILL, by PID) and reaps a child process however the test
/// leaves scope.
pub struct ChildGuard(pub Option<std::process::Child>);

impl ChildGuard {
    /// Kills and reaps the child, once; its exit status.
    pub fn kill_and_reap(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.0.take()?;
        let _ = child.kill();
        child.wait().ok()
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill_and_reap();
    }
}
