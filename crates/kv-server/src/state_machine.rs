//! [`KvStateMachine`]: kv-raft's [`StateMachine`] on the engine.
//!
//! The raft log is the write-ahead log: the engine runs without fsync
//! (`SyncMode::Never`), and every applied entry — raft's empty entries
//! included — writes its effects, its de-duplication record and the applied
//! index in **one** `WriteBatch`. After a crash the engine holds a prefix of
//! the applied entries with a matching applied index, and the driver replays
//! the log after it. Snapshots are engine checkpoints on disk (see
//! [`crate::snapshot`]), which flush the memtable to fsynced tables first:
//! the log is only compacted behind data that is durable in the engine, and
//! the raft snapshot itself is a small descriptor naming the checkpoint.
//!
//! De-duplication: a write with a non-zero `client_id` is noted in that
//! client's session ([`crate::sessions`]); a retry of it returns the first
//! outcome instead of applying again. Per client, only the last
//! [`DEDUP_WINDOW`] request numbers are kept: a retry older than that is
//! answered [`Outcome::Stale`] (its first attempt may have been applied), so
//! a client must keep fewer writes than that in flight. A client that has
//! not written for [`CLIENT_EXPIRY_MS`] (by the proposers' clocks, carried in
//! the log, so every replica expires the same records) loses its records: a
//! retry must come sooner than that (clients bound operations to seconds).
//! Sessions are cached in memory (the engine holds them too, written in the
//! entry's batch), so a write reads nothing from the engine.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use kv_engine::{Db, WriteBatch};
use kv_raft::{BoxError, StateMachine};

use crate::command::{BatchOp, Command, Op, Outcome};
use crate::error::{Error, Result};
use crate::keys;
use crate::sessions::{self, Seen, Session};
use crate::snapshot::Descriptor;
use crate::store::Store;

/// Request numbers per client whose outcomes are remembered.
pub const DEDUP_WINDOW: u64 = crate::sessions::WINDOW;

/// A client's de-duplication records are dropped after it has not written
/// for this long.
pub const CLIENT_EXPIRY_MS: u64 = 60 * 60 * 1000;

/// Expired clients are looked for at every log index divisible by this.
const EXPIRY_EVERY: u64 = 1024;

/// Most records deleted by one expiry pass (bounds the apply latency).
const EXPIRY_MAX_DELETES: usize = 10_000;

/// Sessions cached before the cache starts over (each is read back from the
/// engine on its client's next write).
const MAX_CACHED_SESSIONS: usize = 100_000;

/// The sessions of the engine generation they were read from.
#[derive(Debug, Default)]
struct SessionCache {
    /// The generation's number; a snapshot install replaces the
    /// generation and so empties the cache.
    generation: u64,
    sessions: HashMap<u64, Session>,
}

/// The engine as the entry being applied sees it: its own writes so far
/// (a group's later commands see the earlier ones' effects) over the
/// database, collected into one batch.
struct View<'a> {
    db: &'a Db,
    batch: WriteBatch,
    pending: HashMap<Vec<u8>, Option<Vec<u8>>>,
    /// Sessions as of the last applied entry.
    cached: &'a HashMap<u64, Session>,
    /// Sessions this entry changed (`None`: expired).
    sessions: HashMap<u64, Option<Session>>,
}

impl<'a> View<'a> {
    fn new(db: &'a Db, cached: &'a HashMap<u64, Session>) -> Self {
        View {
            db,
            batch: WriteBatch::new(),
            pending: HashMap::new(),
            cached,
            sessions: HashMap::new(),
        }
    }

    fn session(&self, client_id: u64) -> Result<Session> {
        if let Some(s) = self.sessions.get(&client_id) {
            return Ok(s.clone().unwrap_or_default());
        }
        if let Some(s) = self.cached.get(&client_id) {
            return Ok(s.clone());
        }
        match self.db.get(keys::client_max_key(client_id))? {
            None => Ok(Session::default()),
            Some(record) => Session::decode(&record).map_err(|reason| {
                Error::corruption(self.db.path(), format!("client {client_id}: {reason}"))
            }),
        }
    }

    fn get(&self, key: &[u8]) -> Result<Option<Bytes>> {
        match self.pending.get(key) {
            Some(v) => Ok(v.clone().map(Bytes::from)),
            None => Ok(self.db.get(key)?),
        }
    }

    fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.batch.put(&key, &value);
        self.pending.insert(key, Some(value));
    }

    fn delete(&mut self, key: Vec<u8>) {
        self.batch.delete(&key);
        self.pending.insert(key, None);
    }

    /// The entry's batch, and the sessions it changed.
    fn finish(mut self) -> (WriteBatch, HashMap<u64, Option<Session>>) {
        for (id, session) in &self.sessions {
            if let Some(s) = session {
                self.batch.put(keys::client_max_key(*id), s.encode());
            }
        }
        (self.batch, self.sessions)
    }
}

/// A client record: highest applied seq and last write time.
fn parse_client(v: &[u8]) -> (u64, u64) {
    (
        keys::be_u64(v).unwrap_or(0),
        v.get(8..).and_then(keys::be_u64).unwrap_or(0),
    )
}

/// The replicated key-value state machine.
#[derive(Debug)]
pub struct KvStateMachine {
    store: Arc<Store>,
    applied: u64,
    applied_term: u64,
    sessions: SessionCache,
    /// Where the user changes of applied entries go (`kvd --search`).
    search: Option<crate::search::IndexFeed>,
}

/// The applied index and term recorded in `db` (zeros when none).
///
/// # Errors
///
/// Engine errors; [`Error::Corruption`] for a malformed record.
pub fn read_applied(db: &Db) -> Result<(u64, u64)> {
    match db.get(keys::APPLIED)? {
        None => Ok((0, 0)),
        Some(v) => match (keys::be_u64(&v), v.get(8..).and_then(keys::be_u64)) {
            (Some(index), Some(term)) if v.len() == 16 => Ok((index, term)),
            _ => Err(Error::corruption(
                db.path(),
                "malformed applied-index record",
            )),
        },
    }
}

fn applied_record(index: u64, term: u64) -> [u8; 16] {
    let mut r = [0u8; 16];
    r[..8].copy_from_slice(&index.to_be_bytes());
    r[8..].copy_from_slice(&term.to_be_bytes());
    r
}

/// Reads a user key.
///
/// # Errors
///
/// Engine errors; [`Error::Corruption`] for a value record of an unknown
/// format.
pub fn get_user(db: &Db, key: &[u8]) -> Result<Option<Bytes>> {
    match db.get(keys::user_key(key))? {
        None => Ok(None),
        Some(rec) => keys::decode_value(&rec)
            .map(Some)
            .map_err(|reason| Error::corruption(db.path(), reason)),
    }
}

impl KvStateMachine {
    /// Opens the state machine on `store`; the applied index comes from the
    /// data.
    ///
    /// # Errors
    ///
    /// See [`read_applied`].
    pub fn open(store: Arc<Store>) -> Result<KvStateMachine> {
        let (applied, applied_term) = read_applied(store.current().db())?;
        Ok(KvStateMachine {
            store,
            applied,
            applied_term,
            sessions: SessionCache::default(),
            search: None,
        })
    }

    /// Hands the user changes of every entry applied from now on (and a
    /// rebuild after each snapshot install) to `feed`.
    pub fn set_search_feed(&mut self, feed: crate::search::IndexFeed) {
        self.search = Some(feed);
    }

    /// The store the state machine writes to.
    #[must_use]
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    fn execute(view: &mut View<'_>, cmd: Command) -> Result<Outcome> {
        let mut session = None;
        if cmd.client_id != 0 {
            let s = view.session(cmd.client_id)?;
            let recorded = || -> Result<Option<Outcome>> {
                match view.get(&keys::dedup_key(cmd.client_id, cmd.seq))? {
                    None => Ok(None),
                    Some(prev) => Outcome::decode(&prev).map(Some).map_err(|e| {
                        Error::corruption(view.db.path(), format!("dedup record: {e}"))
                    }),
                }
            };
            match s.check(cmd.seq) {
                Seen::New => {}
                Seen::Stale => return Ok(Outcome::Stale),
                Seen::Applied => return Ok(Outcome::Ok),
                Seen::Recorded => {
                    return recorded()?.ok_or_else(|| {
                        Error::corruption(
                            view.db.path(),
                            format!(
                                "client {}: the outcome record of request {} is missing",
                                cmd.client_id, cmd.seq
                            ),
                        )
                    });
                }
                Seen::Legacy => {
                    if let Some(prev) = recorded()? {
                        return Ok(prev);
                    }
                }
            }
            session = Some(s);
        }
        let outcome = match cmd.op {
            Op::Put { key, value } => {
                view.put(keys::user_key(&key), keys::encode_value(&value));
                Outcome::Ok
            }
            Op::Delete { key } => {
                view.delete(keys::user_key(&key));
                Outcome::Ok
            }
            Op::Cas { key, expected, new } => {
                let current = match view.get(&keys::user_key(&key))? {
                    None => None,
                    Some(rec) => Some(
                        keys::decode_value(&rec)
                            .map_err(|reason| Error::corruption(view.db.path(), reason))?,
                    ),
                };
                if current == expected {
                    view.put(keys::user_key(&key), keys::encode_value(&new));
                    Outcome::Ok
                } else {
                    Outcome::CompareFailed { current }
                }
            }
            Op::Batch(ops) => {
                for op in ops {
                    match op {
                        BatchOp::Put { key, value } => {
                            view.put(keys::user_key(&key), keys::encode_value(&value));
                        }
                        BatchOp::Delete { key } => {
                            view.delete(keys::user_key(&key));
                        }
                    }
                }
                Outcome::Ok
            }
            Op::SetAdvertise { node_id, addr } => {
                view.put(keys::advertise_key(node_id), addr.into_bytes());
                Outcome::Ok
            }
            Op::SetMember { node_id, record } => {
                view.put(
                    keys::member_key(node_id),
                    crate::membership::encode_record(record.as_ref()),
                );
                match record {
                    Some(r) => view.put(keys::advertise_key(node_id), r.advertise.into_bytes()),
                    None => view.delete(keys::advertise_key(node_id)),
                }
                Outcome::Ok
            }
            Op::Multi(cmds) => {
                let mut outcomes = Vec::with_capacity(cmds.len());
                for c in cmds {
                    outcomes.push(Self::execute(view, c)?);
                }
                Outcome::Multi(outcomes)
            }
        };
        if let Some(mut s) = session {
            if sessions::needs_record(&outcome) {
                view.put(keys::dedup_key(cmd.client_id, cmd.seq), outcome.encode());
            }
            // Forget the outcomes that fell out of the window.
            for seq in s.applied(cmd.seq, cmd.time_ms, &outcome) {
                view.delete(keys::dedup_key(cmd.client_id, seq));
            }
            view.sessions.insert(cmd.client_id, Some(s));
        }
        Ok(outcome)
    }

    /// Deletes the records of clients that have not written for
    /// [`CLIENT_EXPIRY_MS`] before `now_ms` (except `keep`).
    fn expire_clients(view: &mut View<'_>, now_ms: u64, keep: &[u64]) -> Result<()> {
        let db = view.db;
        let mut deletes = 0;
        for item in db.prefix(keys::CLIENT_PREFIX)? {
            let (key, value) = item?;
            let (_, last_ms) = parse_client(&value);
            let Some(id) = key.get(2..).and_then(keys::be_u64) else {
                continue;
            };
            if keep.contains(&id) || last_ms.saturating_add(CLIENT_EXPIRY_MS) >= now_ms {
                continue;
            }
            for record in db.prefix(keys::dedup_prefix(id))? {
                view.delete(record?.0.to_vec());
                deletes += 1;
            }
            view.delete(key.to_vec());
            view.sessions.insert(id, None);
            deletes += 1;
            if deletes >= EXPIRY_MAX_DELETES {
                break;
            }
        }
        Ok(())
    }
}

impl StateMachine for KvStateMachine {
    fn apply(&mut self, index: u64, term: u64, command: &[u8]) -> Result<Vec<u8>, BoxError> {
        let generation = self.store.current();
        let identity = generation.number();
        if self.sessions.generation != identity
            || self.sessions.sessions.len() > MAX_CACHED_SESSIONS
        {
            self.sessions = SessionCache {
                generation: identity,
                sessions: HashMap::new(),
            };
        }
        let mut view = View::new(generation.db(), &self.sessions.sessions);
        let result = if command.is_empty() {
            Vec::new()
        } else {
            match Command::decode(command) {
                Err(e) => Outcome::Invalid(e.0).encode(),
                Ok(cmd) => {
                    let (now_ms, clients) = (cmd.time_ms, cmd.client_ids());
                    let outcome = Self::execute(&mut view, cmd)?;
                    if index.is_multiple_of(EXPIRY_EVERY) {
                        Self::expire_clients(&mut view, now_ms, &clients)?;
                    }
                    outcome.encode()
                }
            }
        };
        let user = self
            .search
            .as_ref()
            .map(|_| crate::search::user_changes(&view.pending));
        let (mut batch, changed) = view.finish();
        batch.put(keys::APPLIED, applied_record(index, term));
        generation.db().write(batch)?;
        if let (Some(feed), Some(user)) = (&self.search, user) {
            feed.entry(index, user);
        }
        // Only once the batch is in: a failed write leaves the cache as
        // the engine is.
        for (id, session) in changed {
            match session {
                Some(s) => self.sessions.sessions.insert(id, s),
                None => self.sessions.sessions.remove(&id),
            };
        }
        self.applied = index;
        self.applied_term = term;
        Ok(result)
    }

    fn applied_index(&self) -> u64 {
        self.applied
    }

    fn snapshot(&mut self) -> Result<Vec<u8>, BoxError> {
        let job = self.begin_snapshot()?;
        job()
    }

    fn begin_snapshot(&mut self) -> Result<kv_raft::SnapshotJob, BoxError> {
        // A flush and hard links, here where the state is exactly that of
        // the applied index; removing old checkpoints may take longer.
        let descriptor = Descriptor {
            group_id: crate::snapshot::GROUP_ID,
            index: self.applied,
            term: self.applied_term,
        };
        self.store.checkpoint(&descriptor)?;
        let dirs = self.store.snapshots().clone();
        Ok(Box::new(move || {
            dirs.prune()?;
            Ok(descriptor.encode())
        }))
    }

    fn restore(&mut self, index: u64, term: u64, data: &[u8]) -> Result<(), BoxError> {
        if Descriptor::is_descriptor(data) {
            let descriptor =
                Descriptor::decode(data).map_err(|e| Error::corruption("<raft snapshot>", e))?;
            let name = descriptor.name();
            let Some(pin) = self.store.snapshots().pin(&name) else {
                return Err(Box::new(Error::corruption(
                    self.store.snapshots().path(&name),
                    format!("the checkpoint of the snapshot at index {index} is missing"),
                )));
            };
            self.store.install(pin.path())?;
        } else {
            // A packed archive, as older builds made.
            self.store.restore(data)?;
        }
        self.sessions = SessionCache::default();
        let generation = self.store.current();
        let db = generation.db();
        let (restored, _) = read_applied(db)?;
        if restored > index {
            return Err(Box::new(Error::corruption(
                db.path(),
                format!("snapshot for index {index} holds applied index {restored}"),
            )));
        }
        // The bootstrap snapshot is empty data at the bootstrap index.
        let mut batch = WriteBatch::new();
        batch.put(keys::APPLIED, applied_record(index, term));
        db.write(batch)?;
        self.applied = index;
        self.applied_term = term;
        if let Some(feed) = &self.search {
            feed.rebuild();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
