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
mod tests {
    use super::*;
    use kv_engine::{Options, SyncMode};

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    fn open(dir: &std::path::Path) -> KvStateMachine {
        let opts = Options {
            sync: SyncMode::Never,
            ..Options::default()
        };
        KvStateMachine::open(Arc::new(Store::open(dir, opts).unwrap())).unwrap()
    }

    fn cmd(client_id: u64, seq: u64, op: Op) -> Vec<u8> {
        cmd_at(client_id, seq, 0, op)
    }

    fn cmd_at(client_id: u64, seq: u64, time_ms: u64, op: Op) -> Vec<u8> {
        Command {
            client_id,
            seq,
            time_ms,
            op,
        }
        .encode()
    }

    fn put(k: &str, v: &str) -> Op {
        Op::Put {
            key: b(k),
            value: b(v),
        }
    }

    fn get(sm: &KvStateMachine, k: &str) -> Option<Bytes> {
        get_user(sm.store().current().db(), k.as_bytes()).unwrap()
    }

    fn outcome(r: Vec<u8>) -> Outcome {
        Outcome::decode(&r).unwrap()
    }

    #[test]
    fn applies_put_delete_cas_batch() {
        let tmp = tempfile::tempdir().unwrap();
        let mut sm = open(tmp.path());
        assert_eq!(sm.apply(1, 1, &[]).unwrap(), Vec::<u8>::new());
        assert_eq!(
            outcome(sm.apply(2, 1, &cmd(0, 0, put("a", "1"))).unwrap()),
            Outcome::Ok
        );
        assert_eq!(get(&sm, "a"), Some(b("1")));
        let cas = |expected: Option<&str>, new: &str| Op::Cas {
            key: b("a"),
            expected: expected.map(b),
            new: b(new),
        };
        assert_eq!(
            outcome(sm.apply(3, 1, &cmd(0, 0, cas(Some("x"), "2"))).unwrap()),
            Outcome::CompareFailed {
                current: Some(b("1"))
            }
        );
        assert_eq!(
            outcome(sm.apply(4, 1, &cmd(0, 0, cas(None, "2"))).unwrap()),
            Outcome::CompareFailed {
                current: Some(b("1"))
            }
        );
        assert_eq!(
            outcome(sm.apply(5, 1, &cmd(0, 0, cas(Some("1"), "2"))).unwrap()),
            Outcome::Ok
        );
        assert_eq!(get(&sm, "a"), Some(b("2")));
        sm.apply(6, 1, &cmd(0, 0, Op::Delete { key: b("a") }))
            .unwrap();
        assert_eq!(get(&sm, "a"), None);
        assert_eq!(
            outcome(sm.apply(7, 1, &cmd(0, 0, cas(None, "3"))).unwrap()),
            Outcome::Ok
        );
        let batch = Op::Batch(vec![
            BatchOp::Put {
                key: b("x"),
                value: b("1"),
            },
            BatchOp::Delete { key: b("a") },
        ]);
        sm.apply(8, 1, &cmd(0, 0, batch)).unwrap();
        assert_eq!((get(&sm, "x"), get(&sm, "a")), (Some(b("1")), None));
        // Garbage is a deterministic rejection, not a fatal error.
        assert!(matches!(
            outcome(sm.apply(9, 1, b"garbage").unwrap()),
            Outcome::Invalid(_)
        ));
        assert_eq!(sm.applied_index(), 9);
    }

    #[test]
    fn user_keys_cannot_touch_metadata() {
        let tmp = tempfile::tempdir().unwrap();
        let mut sm = open(tmp.path());
        sm.apply(1, 1, &cmd(0, 0, put("mapplied", "x"))).unwrap();
        sm.apply(2, 1, &cmd(0, 0, put("", "empty"))).unwrap();
        let g = sm.store().current();
        assert_eq!(read_applied(g.db()).unwrap(), (2, 1));
        assert_eq!(get(&sm, "mapplied"), Some(b("x")));
    }

    #[test]
    fn duplicates_return_the_first_outcome() {
        let tmp = tempfile::tempdir().unwrap();
        let mut sm = open(tmp.path());
        let cas = cmd(
            7,
            1,
            Op::Cas {
                key: b("k"),
                expected: None,
                new: b("v1"),
            },
        );
        assert_eq!(outcome(sm.apply(1, 1, &cas).unwrap()), Outcome::Ok);
        // The retry would fail its compare if applied again.
        assert_eq!(outcome(sm.apply(2, 1, &cas).unwrap()), Outcome::Ok);
        sm.apply(3, 1, &cmd(7, 2, put("k", "v2"))).unwrap();
        // A duplicate of seq 2 after other writes does not overwrite them.
        sm.apply(4, 1, &cmd(8, 1, put("k", "other"))).unwrap();
        sm.apply(5, 1, &cmd(7, 2, put("k", "v2"))).unwrap();
        assert_eq!(get(&sm, "k"), Some(b("other")));
    }

    #[test]
    fn dedup_window_forgets_old_requests_and_reports_them_stale() {
        let tmp = tempfile::tempdir().unwrap();
        let mut sm = open(tmp.path());
        let mut index = 0;
        for seq in 1..=DEDUP_WINDOW + 10 {
            index += 1;
            sm.apply(index, 1, &cmd(5, seq, put("k", &seq.to_string())))
                .unwrap();
        }
        // Pipelined requests may arrive out of order within the window.
        index += 1;
        assert_eq!(
            outcome(sm.apply(index, 1, &cmd(5, 11, put("z", "1"))).unwrap()),
            Outcome::Ok
        );
        index += 1;
        assert_eq!(
            outcome(sm.apply(index, 1, &cmd(5, 5, put("z", "1"))).unwrap()),
            Outcome::Stale
        );
        // Plain writes leave no outcome records behind, only the session.
        let db = sm.store().current();
        assert_eq!(db.db().prefix(b"mc").unwrap().count(), 0);
        assert_eq!(db.db().prefix(keys::CLIENT_PREFIX).unwrap().count(), 1);
    }

    #[test]
    fn failed_compares_keep_their_outcome_until_the_window_passes() {
        let tmp = tempfile::tempdir().unwrap();
        let mut sm = open(tmp.path());
        sm.apply(1, 1, &cmd(9, 1, put("k", "now"))).unwrap();
        let cas = cmd(
            9,
            2,
            Op::Cas {
                key: b("k"),
                expected: Some(b("before")),
                new: b("x"),
            },
        );
        let failed = Outcome::CompareFailed {
            current: Some(b("now")),
        };
        assert_eq!(outcome(sm.apply(2, 1, &cas).unwrap()), failed);
        sm.apply(3, 1, &cmd(9, 3, put("k", "before"))).unwrap();
        // The retry gets the first outcome even now that the compare would
        // succeed, after a restart too (the cache starts empty).
        drop(sm);
        let mut sm = open(tmp.path());
        assert_eq!(outcome(sm.apply(4, 1, &cas).unwrap()), failed);
        assert_eq!(get(&sm, "k"), Some(b("before")));
        let mut index = 4;
        for seq in 4..=DEDUP_WINDOW + 2 {
            index += 1;
            sm.apply(index, 1, &cmd(9, seq, put("k", "v"))).unwrap();
        }
        let db = sm.store().current();
        assert_eq!(db.db().prefix(b"mc").unwrap().count(), 0);
        drop(db);
        index += 1;
        assert_eq!(outcome(sm.apply(index, 1, &cas).unwrap()), Outcome::Stale);
    }

    #[test]
    fn sessions_of_older_builds_are_read() {
        let tmp = tempfile::tempdir().unwrap();
        {
            let sm = open(tmp.path());
            // What an older build left: a 16-byte client record and an
            // outcome record per write.
            let mut batch = WriteBatch::new();
            let mut record = 3u64.to_be_bytes().to_vec();
            record.extend_from_slice(&0u64.to_be_bytes());
            batch.put(keys::client_max_key(4), &record);
            for seq in [1, 3] {
                batch.put(keys::dedup_key(4, seq), Outcome::Ok.encode());
            }
            sm.store().current().db().write(batch).unwrap();
        }
        let mut sm = open(tmp.path());
        // Seq 3 was applied (its record says so), seq 2 was not.
        assert_eq!(
            outcome(sm.apply(1, 1, &cmd(4, 3, put("a", "3"))).unwrap()),
            Outcome::Ok
        );
        assert_eq!(get(&sm, "a"), None);
        sm.apply(2, 1, &cmd(4, 2, put("a", "2"))).unwrap();
        assert_eq!(get(&sm, "a"), Some(b("2")));
        let mut index = 2;
        for seq in 4..=DEDUP_WINDOW + 3 {
            index += 1;
            sm.apply(index, 1, &cmd(4, seq, put("b", "1"))).unwrap();
        }
        let db = sm.store().current();
        assert_eq!(db.db().prefix(b"mc").unwrap().count(), 0);
    }

    #[test]
    fn a_damaged_session_record_is_corruption() {
        let tmp = tempfile::tempdir().unwrap();
        let mut sm = open(tmp.path());
        let mut batch = WriteBatch::new();
        batch.put(keys::client_max_key(6), [0u8; 20]);
        sm.store().current().db().write(batch).unwrap();
        let err = sm.apply(1, 1, &cmd(6, 1, put("a", "1"))).unwrap_err();
        assert!(err.to_string().contains("client 6"), "{err}");
        assert_eq!(get(&sm, "a"), None);
    }

    #[test]
    fn a_group_applies_in_order_and_sees_its_own_writes() {
        let tmp = tempfile::tempdir().unwrap();
        let mut sm = open(tmp.path());
        let c = |client_id, seq, op| Command {
            client_id,
            seq,
            time_ms: 0,
            op,
        };
        let cas = Op::Cas {
            key: b("a"),
            expected: Some(b("1")),
            new: b("2"),
        };
        let group = Command {
            client_id: 0,
            seq: 0,
            time_ms: 0,
            op: Op::Multi(vec![
                c(1, 1, put("a", "1")),
                c(2, 1, cas.clone()),
                // A retry of the cas in the same entry: same outcome, and
                // not applied twice.
                c(2, 1, cas),
                c(
                    3,
                    1,
                    Op::Cas {
                        key: b("a"),
                        expected: Some(b("1")),
                        new: b("3"),
                    },
                ),
            ]),
        };
        let out = outcome(sm.apply(1, 1, &group.encode()).unwrap());
        assert_eq!(
            out,
            Outcome::Multi(vec![
                Outcome::Ok,
                Outcome::Ok,
                Outcome::Ok,
                Outcome::CompareFailed {
                    current: Some(b("2"))
                },
            ])
        );
        assert_eq!(get(&sm, "a"), Some(b("2")));
        // A later retry of a grouped command is de-duplicated too.
        let retry = cmd(1, 1, put("a", "again"));
        assert_eq!(outcome(sm.apply(2, 1, &retry).unwrap()), Outcome::Ok);
        assert_eq!(get(&sm, "a"), Some(b("2")));
    }

    #[test]
    fn idle_clients_expire_by_log_time() {
        let tmp = tempfile::tempdir().unwrap();
        let mut sm = open(tmp.path());
        let hour = CLIENT_EXPIRY_MS;
        sm.apply(1, 1, &cmd_at(1, 1, 1000, put("a", "1"))).unwrap();
        sm.apply(2, 1, &cmd_at(2, 1, 1000 + hour, put("b", "1")))
            .unwrap();
        for index in 3..EXPIRY_EVERY {
            sm.apply(index, 1, &[]).unwrap();
        }
        // The pass at EXPIRY_EVERY runs with this command's time.
        let now = 2000 + hour;
        sm.apply(EXPIRY_EVERY, 1, &cmd_at(3, 1, now, put("c", "1")))
            .unwrap();
        let g = sm.store().current();
        let clients: Vec<u64> = g
            .db()
            .prefix(keys::CLIENT_PREFIX)
            .unwrap()
            .map(|kv| keys::be_u64(&kv.unwrap().0[2..]).unwrap())
            .collect();
        assert_eq!(clients, vec![2, 3]);
        assert_eq!(g.db().prefix(keys::dedup_prefix(1)).unwrap().count(), 0);
        assert_eq!(get(&sm, "a"), Some(b("1")));
    }

    #[test]
    fn applied_index_survives_reopen() {
        let tmp = tempfile::tempdir().unwrap();
        {
            let mut sm = open(tmp.path());
            for i in 1..=50 {
                sm.apply(i, 2, &cmd(0, 0, put(&format!("k{i}"), "v")))
                    .unwrap();
            }
            sm.apply(51, 2, &[]).unwrap();
        }
        let sm = open(tmp.path());
        assert_eq!(sm.applied_index(), 51);
        assert_eq!(get(&sm, "k50"), Some(b("v")));
    }

    #[test]
    fn snapshot_restore_roundtrip() {
        let tmp = tempfile::tempdir().unwrap();
        let mut a = open(&tmp.path().join("a"));
        for i in 1..=20 {
            a.apply(i, 1, &cmd(9, i, put(&format!("k{i:02}"), &i.to_string())))
                .unwrap();
        }
        let snap = a.snapshot().unwrap();
        // The snapshot names a checkpoint, which a transfer copies over.
        let name = Descriptor::decode(&snap).unwrap().name();
        let copy_checkpoint = |to: &KvStateMachine| {
            let dst = to.store().snapshots().path(&name);
            let src = a.store().snapshots().path(&name);
            std::fs::create_dir(&dst).unwrap();
            for entry in std::fs::read_dir(src).unwrap() {
                let entry = entry.unwrap();
                std::fs::copy(entry.path(), dst.join(entry.file_name())).unwrap();
            }
        };

        let mut bsm = open(&tmp.path().join("b"));
        bsm.apply(1, 1, &cmd(0, 0, put("stale", "x"))).unwrap();
        // Without its checkpoint the snapshot cannot be installed.
        assert!(bsm.restore(20, 1, &snap).is_err());
        assert_eq!(get(&bsm, "stale"), Some(b("x")));
        copy_checkpoint(&bsm);
        bsm.restore(20, 1, &snap).unwrap();
        assert_eq!(bsm.applied_index(), 20);
        assert_eq!(get(&bsm, "stale"), None);
        assert_eq!(get(&bsm, "k07"), Some(b("7")));
        // The dedup table travelled with it.
        let dup = bsm.apply(21, 1, &cmd(9, 3, put("k03", "again"))).unwrap();
        assert_eq!(outcome(dup), Outcome::Ok);
        assert_eq!(get(&bsm, "k03"), Some(b("3")));
        drop(bsm);
        // After reopening, the restored generation is the one in use and the
        // old one is gone.
        let bsm = open(&tmp.path().join("b"));
        assert_eq!(bsm.applied_index(), 21);
        assert_eq!(get(&bsm, "k07"), Some(b("7")));
        let gens: Vec<_> = std::fs::read_dir(tmp.path().join("b"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with("gen-"))
            .collect();
        assert_eq!(gens, vec!["gen-2".to_string()]);

        // A damaged snapshot is refused and the old state stays.
        let mut c = open(&tmp.path().join("c"));
        c.apply(1, 1, &cmd(0, 0, put("keep", "1"))).unwrap();
        copy_checkpoint(&c);
        let mut bad = snap.clone();
        let mid = bad.len() / 2;
        bad[mid] ^= 1;
        assert!(c.restore(20, 1, &bad).is_err());
        assert_eq!(get(&c, "keep"), Some(b("1")));
        // So is a checkpoint with a damaged table.
        let dir = c.store().snapshots().path(&name);
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "sst") {
                let mut bytes = std::fs::read(&path).unwrap();
                let n = bytes.len();
                bytes[n - 10] ^= 0xff;
                std::fs::write(&path, bytes).unwrap();
            }
        }
        assert!(c.restore(20, 1, &snap).is_err());
        assert_eq!(get(&c, "keep"), Some(b("1")));
    }

    #[test]
    fn corrupt_current_pointer_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        drop(open(tmp.path()));
        std::fs::write(tmp.path().join("CURRENT"), "nonsense").unwrap();
        let err = Store::open(tmp.path(), Options::default()).unwrap_err();
        assert!(err.to_string().contains("CURRENT"), "{err}");
    }
}
