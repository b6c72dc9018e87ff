//! Linearizability of a [`History`] against a map of registers.
//!
//! Each key is an independent register (read, write, compare-and-swap), so
//! the history is split by key and each part is checked alone
//! (P-compositionality, as in Porcupine). Each part is searched the Wing &
//! Gong way, with Lowe's memoisation as Porcupine does it: the invocations
//! and completions form a time-ordered linked list; the search linearizes
//! any pending invocation the model accepts and backtracks when it meets
//! the completion of an operation it has not placed. A set of (operations
//! placed, register value) pairs already explored prunes the search, which
//! turns the factorial number of orders of concurrent operations into the
//! number of distinct such pairs. Sets are keyed by a 128-bit Zobrist hash,
//! so a memo entry costs 20 bytes whatever the history's length.
//!
//! Outcomes:
//! - a definite failure ([`Outcome::Fail`]) never took effect, so it is left
//!   out: a later read of its value then has no write to explain it;
//! - an unknown outcome ([`Outcome::Info`]) of a put or cas may take effect
//!   at any time after its invocation, or never: it is given a completion
//!   after everything else, where placing it changes nothing observed;
//! - a get with an unknown outcome tells nothing and is left out, and so is
//!   a put or cas with an unknown outcome whose value no result depends on
//!   (never placing it explains at least as much as placing it anywhere).
//!
//! The search is bounded by a deadline and by the size of its memo; when
//! either runs out the answer is [`Linearizability::Unknown`], never a hang.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::Error;
use crate::history::{History, Op, Outcome, Record, escape, secs};

/// Bounds on the search.
#[derive(Debug, Clone)]
pub struct Options {
    /// Give up (answer unknown) after this long, for all keys together.
    pub timeout: Duration,
    /// Give up when the memo of explored states holds this many entries
    /// (per key).
    pub max_memo: usize,
    /// Prune with the memo. Only turned off to show what it is for.
    pub memo: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            timeout: Duration::from_secs(60),
            max_memo: 5_000_000,
            memo: true,
        }
    }
}

/// The verdict on one key, or on a whole history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Linearizability {
    /// Some order of the operations explains every result.
    Linearizable,
    /// No order does.
    Violation(Box<Violation>),
    /// The search was cut short (deadline or memo bound).
    Unknown(String),
}

/// Where the search for a key got furthest before it failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The key.
    pub key: Bytes,
    /// Operations on the key that the search had to place.
    pub ops: usize,
    /// The most operations any partial linearization placed.
    pub placed: usize,
    /// The operation whose completion the deepest partial linearization
    /// could not get past, with the register value at that point.
    pub blocked: Option<(Record, Option<Bytes>)>,
    /// The last operations of that partial linearization, oldest first.
    pub before: Vec<Record>,
    /// A hint where the cause is plain (e.g. a read of a value no write
    /// that may have taken effect ever wrote).
    pub hint: Option<String>,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "key {}: not linearizable ({} operations; the deepest partial linearization placed {})",
            escape(&self.key),
            self.ops,
            self.placed
        )?;
        if let Some(hint) = &self.hint {
            writeln!(f, "  {hint}")?;
        }
        if !self.before.is_empty() {
            writeln!(f, "  last operations placed:")?;
            for r in &self.before {
                writeln!(f, "    {r}")?;
            }
        }
        if let Some((r, state)) = &self.blocked {
            let state = state
                .as_ref()
                .map_or_else(|| "nil".to_owned(), |v| escape(v));
            writeln!(f, "  then no pending operation could be placed before")?;
            writeln!(f, "    {r}")?;
            writeln!(f, "  completed (register value there: {state})")?;
        }
        Ok(())
    }
}

/// The verdict on a history, key by key.
#[derive(Debug, Clone)]
pub struct Report {
    /// The overall verdict: a violation if any key has one, else unknown if
    /// any key is unknown, else linearizable.
    pub verdict: Linearizability,
    /// Per key: the key, the operations checked, and its verdict.
    pub keys: Vec<(Bytes, usize, Linearizability)>,
    /// How long the check took.
    pub elapsed: Duration,
}

/// Checks `history` for linearizability, each key on its own thread.
///
/// # Errors
///
/// [`Error::InvalidHistory`] when a record's outcome does not fit its
/// operation (e.g. a get that returned `ok`).
pub fn check(history: &History, opts: &Options) -> Result<Report, Error> {
    let started = Instant::now();
    let deadline = started + opts.timeout;
    let mut by_key: HashMap<Bytes, Vec<&Record>> = HashMap::new();
    for r in &history.records {
        validate(r)?;
        by_key.entry(r.op.key().clone()).or_default().push(r);
    }
    let mut parts: Vec<(Bytes, Vec<&Record>)> = by_key.into_iter().collect();
    parts.sort_by(|a, b| a.0.cmp(&b.0));
    let workers = std::thread::available_parallelism()
        .map_or(1, std::num::NonZero::get)
        .min(parts.len())
        .max(1);
    let next = AtomicUsize::new(0);
    let mut keys: Vec<(usize, (Bytes, usize, Linearizability))> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                s.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some((key, records)) = parts.get(i) else {
                            return done;
                        };
                        let part = Part::build(key, records);
                        let n = part.ops.len();
                        done.push((i, (key.clone(), n, part.search(deadline, opts))));
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect()
    });
    if keys.len() != parts.len() {
        return Err(Error::InvalidHistory("a checker thread panicked".into()));
    }
    keys.sort_by_key(|k| k.0);
    let keys: Vec<(Bytes, usize, Linearizability)> = keys.into_iter().map(|k| k.1).collect();
    let verdict = keys
        .iter()
        .find(|k| matches!(k.2, Linearizability::Violation(_)))
        .or_else(|| {
            keys.iter()
                .find(|k| matches!(k.2, Linearizability::Unknown(_)))
        })
        .map_or(Linearizability::Linearizable, |k| k.2.clone());
    Ok(Report {
        verdict,
        keys,
        elapsed: started.elapsed(),
    })
}

fn validate(r: &Record) -> Result<(), Error> {
    let fits = matches!(
        (&r.op, &r.outcome),
        (_, Outcome::Fail { .. } | Outcome::Info { .. })
            | (Op::Get { .. }, Outcome::Read(_))
            | (Op::Put { .. }, Outcome::Ok)
            | (Op::Cas { .. }, Outcome::Ok | Outcome::CasFailed { .. })
    );
    if !fits {
        return Err(Error::InvalidHistory(format!(
            "outcome does not fit the operation: {r}"
        )));
    }
    if r.complete < r.invoke {
        return Err(Error::InvalidHistory(format!(
            "completed before it was invoked: {r}"
        )));
    }
    Ok(())
}

/// A register value: 0 is absent, others index the key's distinct values.
type Value = u32;

#[derive(Debug, Clone, Copy)]
enum Input {
    Read,
    Write(Value),
    Cas(Value, Value),
}

#[derive(Debug, Clone, Copy)]
enum Output {
    Read(Value),
    Done,
    Swapped,
    /// Compare failed; the current value when the server reported it.
    NotSwapped(Value),
    Unknown,
}

/// One operation of a key's part of the history.
struct PartOp<'a> {
    input: Input,
    output: Output,
    record: &'a Record,
}

impl PartOp<'_> {
    /// The register after this operation applied to `state`, if the
    /// operation's result is possible there.
    fn step(&self, state: Value) -> Option<Value> {
        match (self.input, self.output) {
            (Input::Read, Output::Read(v)) => (state == v).then_some(state),
            (Input::Write(v), _) => Some(v),
            (Input::Cas(e, n), Output::Swapped) => (state == e).then_some(n),
            (Input::Cas(e, _), Output::NotSwapped(current)) => {
                (state != e && state == current).then_some(state)
            }
            (Input::Cas(e, n), Output::Unknown) => Some(if state == e { n } else { state }),
            _ => None,
        }
    }
}

/// The key's operations as a time-ordered doubly linked list of call and
/// return entries. Index 0 is the head sentinel.
struct Part<'a> {
    key: Bytes,
    ops: Vec<PartOp<'a>>,
    values: Vec<Bytes>,
    ids: HashMap<Bytes, Value>,
    /// Per list entry: the operation, and whether it is its call.
    entry_op: Vec<(usize, bool)>,
    /// Per operation: the list index of its call and its return.
    call_of: Vec<usize>,
    ret_of: Vec<usize>,
    next: Vec<usize>,
    prev: Vec<usize>,
    /// Values that some write that may have taken effect wrote.
    written: HashSet<Value>,
    /// Values only written by definite failures.
    failed_writes: HashSet<Value>,
}

const NONE: usize = usize::MAX;

impl<'a> Part<'a> {
    fn build(key: &Bytes, records: &[&'a Record]) -> Part<'a> {
        let mut ids: HashMap<Bytes, Value> = HashMap::new();
        let mut values = vec![Bytes::new()];
        let mut id = |v: Option<&Bytes>| -> Value {
            let Some(v) = v else { return 0 };
            if let Some(&i) = ids.get(v) {
                return i;
            }
            let i = Value::try_from(values.len()).unwrap_or(Value::MAX);
            values.push(v.clone());
            ids.insert(v.clone(), i);
            i
        };
        let mut ops = Vec::new();
        let mut written = HashSet::new();
        let mut failed_writes = HashSet::new();
        let mut times: Vec<(u64, bool, usize)> = Vec::new();
        // Values some operation's result depends on. A write of a unique
        // value outside this set is invisible: placing it can only get in
        // the way, so one with an unknown outcome is best never placed, and
        // is left out. Without this every such write would stay pending to
        // the end and double the search space.
        let mut observed: HashSet<Bytes> = HashSet::new();
        for &r in records {
            match (&r.op, &r.outcome) {
                (_, Outcome::Read(Some(v)) | Outcome::CasFailed { current: Some(v) }) => {
                    observed.insert(v.clone());
                }
                (
                    Op::Cas {
                        expected: Some(v), ..
                    },
                    Outcome::Ok | Outcome::Info { .. },
                ) => {
                    observed.insert(v.clone());
                }
                _ => {}
            }
        }
        for &r in records {
            let unknown = matches!(r.outcome, Outcome::Info { .. });
            let invisible = match &r.op {
                Op::Put { value: v, .. } | Op::Cas { new: v, .. } => !observed.contains(v),
                Op::Get { .. } => false,
            };
            if unknown && invisible {
                continue;
            }
            let input = match &r.op {
                Op::Get { .. } => Input::Read,
                Op::Put { value, .. } => Input::Write(id(Some(value))),
                Op::Cas { expected, new, .. } => Input::Cas(id(expected.as_ref()), id(Some(new))),
            };
            let written_value = match input {
                Input::Write(v) | Input::Cas(_, v) => Some(v),
                Input::Read => None,
            };
            match &r.outcome {
                Outcome::Fail { .. } => {
                    failed_writes.extend(written_value);
                    continue;
                }
                Outcome::Info { .. } if matches!(input, Input::Read) => continue,
                _ => written.extend(written_value),
            }
            let output = match &r.outcome {
                Outcome::Read(v) => Output::Read(id(v.as_ref())),
                Outcome::Ok if matches!(input, Input::Write(_)) => Output::Done,
                Outcome::Ok => Output::Swapped,
                Outcome::CasFailed { current } => Output::NotSwapped(id(current.as_ref())),
                Outcome::Fail { .. } | Outcome::Info { .. } => Output::Unknown,
            };
            let i = ops.len();
            times.push((r.invoke, true, i));
            times.push((if unknown { u64::MAX } else { r.complete }, false, i));
            ops.push(PartOp {
                input,
                output,
                record: r,
            });
        }
        // At equal times a call sorts first: the two operations then count
        // as concurrent, which can only make the history easier to explain.
        times.sort_by_key(|&(t, is_call, i)| (t, !is_call, i));
        let n = times.len() + 1;
        let mut entry_op = vec![(NONE, false); n];
        let mut call_of = vec![0; ops.len()];
        let mut ret_of = vec![0; ops.len()];
        for (pos, &(_, is_call, i)) in times.iter().enumerate() {
            let e = pos + 1;
            entry_op[e] = (i, is_call);
            if is_call {
                call_of[i] = e;
            } else {
                ret_of[i] = e;
            }
        }
        let next = (0..n)
            .map(|e| if e + 1 < n { e + 1 } else { NONE })
            .collect();
        let prev = (0..n).map(|e| e.wrapping_sub(1)).collect();
        failed_writes.retain(|v| !written.contains(v));
        Part {
            key: key.clone(),
            ops,
            values,
            ids,
            entry_op,
            call_of,
            ret_of,
            next,
            prev,
            written,
            failed_writes,
        }
    }

    fn unlink(&mut self, e: usize) {
        let (p, n) = (self.prev[e], self.next[e]);
        self.next[p] = n;
        if n != NONE {
            self.prev[n] = p;
        }
    }

    fn relink(&mut self, e: usize) {
        let (p, n) = (self.prev[e], self.next[e]);
        self.next[p] = e;
        if n != NONE {
            self.prev[n] = e;
        }
    }

    fn lift(&mut self, op: usize) {
        self.unlink(self.call_of[op]);
        self.unlink(self.ret_of[op]);
    }

    fn unlift(&mut self, op: usize) {
        self.relink(self.ret_of[op]);
        self.relink(self.call_of[op]);
    }

    fn value(&self, v: Value) -> Option<Bytes> {
        (v != 0).then(|| self.values[v as usize].clone())
    }

    fn search(mut self, deadline: Instant, opts: &Options) -> Linearizability {
        // The set of placed operations is keyed by a Zobrist hash (the XOR
        // of a random 128-bit word per placed operation), updated in O(1)
        // per step; a false match between two sets has a chance of about
        // 2^-128 per pair, far below anything a run can reach.
        let mut seed = 0x9E37_79B9_7F4A_7C15_u64 ^ self.ops.len() as u64;
        let words: Vec<u128> = (0..self.ops.len())
            .map(|_| (u128::from(splitmix(&mut seed)) << 64) | u128::from(splitmix(&mut seed)))
            .collect();
        let mut placed: u128 = 0;
        let mut memo: HashSet<(u128, Value)> = HashSet::new();
        let mut stack: Vec<(usize, Value)> = Vec::new();
        let mut state: Value = 0;
        let mut entry = self.next[0];
        let mut deepest: (usize, Option<usize>, Value, Vec<usize>) = (0, None, 0, Vec::new());
        let mut steps: u64 = 0;
        while self.next[0] != NONE {
            steps += 1;
            if steps.is_multiple_of(1 << 14) && Instant::now() > deadline {
                return Linearizability::Unknown(format!(
                    "key {}: search timed out after {steps} steps",
                    escape(&self.key)
                ));
            }
            if entry == NONE {
                // Only calls were left after the last return: impossible,
                // every call has its return later in the list.
                return Linearizability::Unknown("internal: list ended on a call".into());
            }
            let (op, is_call) = self.entry_op[entry];
            if is_call {
                if let Some(next_state) = self.ops[op].step(state) {
                    placed ^= words[op];
                    let fresh = !opts.memo || memo.insert((placed, next_state));
                    if fresh {
                        if memo.len() > opts.max_memo {
                            return Linearizability::Unknown(format!(
                                "key {}: memo bound of {} states reached",
                                escape(&self.key),
                                opts.max_memo
                            ));
                        }
                        stack.push((op, state));
                        state = next_state;
                        self.lift(op);
                        entry = self.next[0];
                        continue;
                    }
                    placed ^= words[op];
                }
                entry = self.next[entry];
            } else {
                if deepest.1.is_none() || stack.len() > deepest.0 {
                    let tail = stack.len().saturating_sub(8);
                    deepest = (
                        stack.len(),
                        Some(op),
                        state,
                        stack[tail..].iter().map(|&(o, _)| o).collect(),
                    );
                }
                let Some((op, old)) = stack.pop() else {
                    return Linearizability::Violation(Box::new(self.violation(&deepest)));
                };
                placed ^= words[op];
                state = old;
                self.unlift(op);
                entry = self.next[self.call_of[op]];
            }
        }
        Linearizability::Linearizable
    }

    fn violation(&self, deepest: &(usize, Option<usize>, Value, Vec<usize>)) -> Violation {
        let (depth, blocked, state, before) = deepest;
        let blocked = blocked.map(|op| (self.ops[op].record.clone(), self.value(*state)));
        let hint = blocked.as_ref().and_then(|(r, _)| {
            let seen = match &r.outcome {
                Outcome::Read(v) => v.clone(),
                Outcome::CasFailed { current } => current.clone(),
                _ => None,
            }?;
            let &id = self.ids.get(&seen)?;
            if self.failed_writes.contains(&id) {
                Some(format!(
                    "{} was read, but the only write of it failed definitely",
                    escape(&seen)
                ))
            } else if !self.written.contains(&id) {
                Some(format!(
                    "{} was read, but no write of it may have taken effect",
                    escape(&seen)
                ))
            } else {
                None
            }
        });
        Violation {
            key: self.key.clone(),
            ops: self.ops.len(),
            placed: *depth,
            blocked,
            before: before
                .iter()
                .map(|&op| self.ops[op].record.clone())
                .collect(),
            hint,
        }
    }
}

/// SplitMix64: a fixed, well-mixed sequence for the Zobrist words.
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.verdict {
            Linearizability::Linearizable => write!(f, "linearizable")?,
            Linearizability::Violation(_) => write!(f, "NOT linearizable")?,
            Linearizability::Unknown(why) => write!(f, "unknown ({why})")?,
        }
        writeln!(
            f,
            " ({} keys, checked in {:.2} s)",
            self.keys.len(),
            self.elapsed.as_secs_f64()
        )?;
        for (_, _, v) in &self.keys {
            if let Linearizability::Violation(v) = v {
                write!(f, "{v}")?;
            }
        }
        Ok(())
    }
}

/// How long the history spans, for summaries.
#[must_use]
pub fn span_secs(history: &History) -> f64 {
    let end = history
        .records
        .iter()
        .map(|r| r.complete)
        .max()
        .unwrap_or(0);
    secs(end)
}
