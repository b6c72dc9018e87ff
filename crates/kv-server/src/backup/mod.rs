//! Backup and restore (SPEC section 7): `kvctl snapshot save` on the
//! serving side, and `kvd --restore`.
//!
//! A save checkpoints the engine, after a ReadIndex barrier, into
//! `snapshots/backup-<n>/` (hard links: nothing is copied or held in
//! memory); the client reads the files in chunks and releases the backup;
//! one not read for [`IDLE`] is removed. [`file`] is the backup file
//! format; [`restore`] makes a new data directory's engine hold a backup.

pub mod file;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kv_engine::Db;
use kv_net::proto::{self, ErrorCode, Response, request, response};
use kv_net::server::error_response;
use parking_lot::Mutex;

use crate::error::{Error, IoContext, Result};
use crate::keys;
use crate::snapshot::SnapshotDirs;
use crate::snapshot::dirs::BACKUP_PREFIX;
use crate::state_machine::read_applied;
use crate::store::Store;

impl crate::service::KvService {
    /// Answers a backup request (the caller sets the response id):
    /// `SnapshotSave` checkpoints a state holding every write acknowledged
    /// before the request (ReadIndex first); `SnapshotRead` and
    /// `SnapshotRelease` serve and drop it.
    pub(crate) async fn backup_request(
        &self,
        cmd: request::Cmd,
        deadline: tokio::time::Instant,
    ) -> std::result::Result<Response, Response> {
        let internal = |m: String| error_response(0, ErrorCode::INTERNAL, m);
        let mut resp = Response::new();
        match cmd {
            request::Cmd::SnapshotSave(_) => {
                self.read_barrier(false, deadline).await?;
                let (backups, store) = (self.backups.clone(), self.store().clone());
                let (name, header) = tokio::task::spawn_blocking(move || backups.save(&store))
                    .await
                    .map_err(|e| internal(e.to_string()))?
                    .map_err(|e| internal(format!("cannot make the backup: {e}")))?;
                tracing::info!(backup = %name, index = header.index, keys = header.keys, "backup made");
                let mut r = proto::SnapshotSaveResult::new();
                r.backup = name;
                r.index = header.index;
                r.term = header.term;
                r.keys = header.keys;
                r.node_addr = self.advertise_of(self.id());
                r.files = header
                    .files
                    .into_iter()
                    .map(|(name, size)| {
                        let mut f = proto::SnapshotFile::new();
                        f.name = name;
                        f.size = size;
                        f
                    })
                    .collect();
                resp.result = Some(response::Result::SnapshotSave(r));
            }
            request::Cmd::SnapshotRead(r) => {
                let backups = self.backups.clone();
                let data = tokio::task::spawn_blocking(move || {
                    backups.read(&r.backup, r.offset, r.length)
                })
                .await
                .map_err(|e| internal(e.to_string()))?
                .map_err(|e| error_response(0, ErrorCode::INVALID_ARGUMENT, e.to_string()))?;
                let mut d = proto::SnapshotData::new();
                d.data = bytes::Bytes::from(data);
                resp.result = Some(response::Result::SnapshotData(d));
            }
            request::Cmd::SnapshotRelease(r) => {
                self.backups.release(&r.backup);
                resp.result = Some(response::Result::Admin(proto::AdminResult::new()));
            }
            _ => return Err(internal("not a backup request".into())),
        }
        Ok(resp)
    }
}

/// A backup not read for this long is removed.
pub const IDLE: Duration = Duration::from_secs(300);

/// Most bytes one read returns.
pub const MAX_READ: u32 = 4 << 20;

/// Backups being read by clients.
#[derive(Debug)]
pub struct Backups {
    dirs: Arc<SnapshotDirs>,
    live: Mutex<HashMap<String, (Files, Instant)>>,
}

/// A checkpoint's files and their lengths, in stream order.
type Files = Vec<(String, u64)>;

impl Backups {
    /// No backups yet.
    #[must_use]
    pub fn new(dirs: Arc<SnapshotDirs>) -> Backups {
        Backups {
            dirs,
            live: Mutex::new(HashMap::new()),
        }
    }

    /// Checkpoints `store` (its state must already include what the backup
    /// promises) and describes it. Blocking.
    ///
    /// # Errors
    ///
    /// Engine and I/O errors.
    pub fn save(&self, store: &Store) -> Result<(String, file::Header)> {
        let name = format!("{BACKUP_PREFIX}{:016x}", rand_u64());
        self.dirs.create_named(store.current().db(), &name)?;
        let dir = self.dirs.path(&name);
        let described = describe(&dir);
        match described {
            Ok(header) => {
                self.live
                    .lock()
                    .insert(name.clone(), (header.files.clone(), Instant::now()));
                Ok((name, header))
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                Err(e)
            }
        }
    }

    /// Up to `len` bytes of backup `name`'s stream at `offset`. Blocking.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for an unknown backup or an offset past its end;
    /// I/O errors.
    pub fn read(&self, name: &str, offset: u64, len: u32) -> Result<Vec<u8>> {
        let files = {
            let mut live = self.live.lock();
            let entry = live
                .get_mut(name)
                .ok_or_else(|| Error::Config(format!("no backup {name:?} (expired?)")))?;
            entry.1 = Instant::now();
            entry.0.clone()
        };
        let total: u64 = files.iter().map(|(_, s)| s).sum();
        if offset > total {
            return Err(Error::Config(format!("offset {offset} past {total} bytes")));
        }
        let mut want = u64::from(len.min(MAX_READ)).min(total - offset);
        let mut out = Vec::with_capacity(usize::try_from(want).unwrap_or(0));
        let dir = self.dirs.path(name);
        let mut start = 0u64;
        for (file, size) in &files {
            let end = start + size;
            if want > 0 && offset + (out.len() as u64) < end {
                let at = offset + out.len() as u64 - start;
                let n = (end - start - at).min(want);
                let path = dir.join(file);
                let f = std::fs::File::open(&path).ctx(&path)?;
                let mut buf = vec![0u8; usize::try_from(n).unwrap_or(0)];
                std::os::unix::fs::FileExt::read_exact_at(&f, &mut buf, at).ctx(&path)?;
                out.extend_from_slice(&buf);
                want -= n;
            }
            start = end;
        }
        Ok(out)
    }

    /// Removes backup `name`.
    pub fn release(&self, name: &str) {
        if self.live.lock().remove(name).is_some() {
            let _ = std::fs::remove_dir_all(self.dirs.path(name));
        }
    }

    /// Removes backups idle for [`IDLE`].
    pub fn expire(&self, now: Instant) {
        let stale: Vec<String> = self
            .live
            .lock()
            .iter()
            .filter(|(_, (_, at))| now.saturating_duration_since(*at) >= IDLE)
            .map(|(n, _)| n.clone())
            .collect();
        for name in stale {
            tracing::info!(backup = %name, "unreleased backup removed");
            self.release(&name);
        }
    }
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

/// Opens the checkpoint in `dir` to read its applied index and count its
/// user keys, then lists its files.
fn describe(dir: &Path) -> Result<file::Header> {
    let (index, term, keys) = {
        let db = Db::open(dir)?;
        let (index, term) = read_applied(&db)?;
        let mut keys = 0u64;
        for item in db.prefix([keys::USER])? {
            item?;
            keys += 1;
        }
        (index, term, keys)
    };
    let files = SnapshotDirs::files(dir)?
        .into_iter()
        .filter(|(n, _)| n != "LOCK")
        .collect();
    Ok(file::Header {
        index,
        term,
        keys,
        files,
    })
}

/// Makes `store` (of a new data directory) hold the backup at `path`: the
/// file is verified and unpacked beside the store, installed as a new
/// generation, and its cluster-specific records (applied index, address
/// book) are reset so that the new cluster starts from it at its own first
/// index. Returns the backup's header.
///
/// # Errors
///
/// [`Error::Corruption`] for a damaged file; engine and I/O errors.
pub fn restore(store: &Store, path: &Path, scratch: &Path) -> Result<file::Header> {
    if scratch.exists() {
        std::fs::remove_dir_all(scratch).ctx(scratch)?;
    }
    let verified = file::read(path, Some(scratch))?;
    store.install(scratch)?;
    std::fs::remove_dir_all(scratch).ctx(scratch)?;
    let generation = store.current();
    let db = generation.db();
    let mut batch = kv_engine::WriteBatch::new();
    batch.delete(keys::APPLIED);
    for prefix in [keys::MEMBER_PREFIX, b"ma".as_slice()] {
        for item in db.prefix(prefix)? {
            batch.delete(&item?.0);
        }
    }
    db.write(batch)?;
    db.flush()?;
    Ok(verified.header)
}
