//! A recorded history: every client operation with its invocation and
//! completion times and its outcome, plus the nemesis's faults.
//!
//! Times are nanoseconds since the start of the run, from one monotonic
//! clock shared by every client, so that "A completed before B was invoked"
//! is a fact about real time.
//!
//! The text form (one record per line, see [`History::to_text`]) is what a
//! failed run leaves behind; [`History::parse`] reads it back, so a history
//! can be checked again without the cluster.

use std::fmt::{self, Write as _};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use bytes::Bytes;

use crate::Error;

/// An operation on one key of the register map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Read the key.
    Get {
        /// The key.
        key: Bytes,
    },
    /// Set the key.
    Put {
        /// The key.
        key: Bytes,
        /// The value written.
        value: Bytes,
    },
    /// Set the key to `new` if its value is `expected` (`None`: absent).
    Cas {
        /// The key.
        key: Bytes,
        /// The value expected.
        expected: Option<Bytes>,
        /// The value written when the expectation holds.
        new: Bytes,
    },
}

impl Op {
    /// The key the operation is on.
    #[must_use]
    pub fn key(&self) -> &Bytes {
        match self {
            Op::Get { key } | Op::Put { key, .. } | Op::Cas { key, .. } => key,
        }
    }

    /// `get`, `put` or `cas`.
    #[must_use]
    pub fn kind(&self) -> &'static str {
        match self {
            Op::Get { .. } => "get",
            Op::Put { .. } => "put",
            Op::Cas { .. } => "cas",
        }
    }
}

/// How an operation ended, as the client saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A put that was acknowledged, or a cas whose expectation held.
    Ok,
    /// A get that returned this value (`None`: absent).
    Read(Option<Bytes>),
    /// A cas whose expectation did not hold; the server reported this
    /// current value (`None`: absent). Nothing was written.
    CasFailed {
        /// The key's value when the cas was evaluated.
        current: Option<Bytes>,
    },
    /// A definite failure: the operation certainly did not take effect.
    Fail {
        /// What the client reported.
        error: String,
    },
    /// An unknown outcome: the operation may or may not have taken effect,
    /// now or at any later time.
    Info {
        /// What the client reported.
        error: String,
    },
}

impl Outcome {
    /// `ok`, `fail` or `info`: the three classes a summary counts.
    #[must_use]
    pub fn class(&self) -> &'static str {
        match self {
            Outcome::Ok | Outcome::Read(_) | Outcome::CasFailed { .. } => "ok",
            Outcome::Fail { .. } => "fail",
            Outcome::Info { .. } => "info",
        }
    }
}

/// One operation of one client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The client (process) that ran it.
    pub process: u32,
    /// When the client invoked it (ns since the run started).
    pub invoke: u64,
    /// When the client saw it end (ns). For an unknown outcome this is when
    /// the client gave up, not a bound on when it may take effect.
    pub complete: u64,
    /// What was asked.
    pub op: Op,
    /// What came back.
    pub outcome: Outcome,
}

/// A fault the nemesis injected or healed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// When (ns since the run started).
    pub time: u64,
    /// What happened, e.g. `kill node 2`.
    pub what: String,
}

/// The history of one run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct History {
    /// Client operations, in the order they completed.
    pub records: Vec<Record>,
    /// Nemesis events, in time order.
    pub events: Vec<Event>,
}

/// First line of the text form.
const HEADER: &str = "# flashkv history v1";

impl History {
    /// The text form: a header line, then one line per record
    /// (`op PROCESS INVOKE COMPLETE KIND KEY [ARGS] => OUTCOME`) and per
    /// event (`event TIME WHAT`); lines starting with `#` are comments.
    /// Keys and values are percent-escaped;
    /// `nil` is an absent value and `v:` prefixes a present one.
    #[must_use]
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        out.push_str(HEADER);
        out.push('\n');
        for e in &self.events {
            let _ = writeln!(out, "event {} {}", e.time, escape_text(&e.what));
        }
        for r in &self.records {
            let _ = write!(out, "op {} {} {} ", r.process, r.invoke, r.complete);
            match &r.op {
                Op::Get { key } => {
                    let _ = write!(out, "get {}", escape(key));
                }
                Op::Put { key, value } => {
                    let _ = write!(out, "put {} {}", escape(key), value_token(Some(value)));
                }
                Op::Cas { key, expected, new } => {
                    let _ = write!(
                        out,
                        "cas {} {} {}",
                        escape(key),
                        value_token(expected.as_ref()),
                        value_token(Some(new))
                    );
                }
            }
            out.push_str(" => ");
            match &r.outcome {
                Outcome::Ok => out.push_str("ok"),
                Outcome::Read(v) => {
                    let _ = write!(out, "read {}", value_token(v.as_ref()));
                }
                Outcome::CasFailed { current } => {
                    let _ = write!(out, "casfailed {}", value_token(current.as_ref()));
                }
                Outcome::Fail { error } => {
                    let _ = write!(out, "fail {}", escape_text(error));
                }
                Outcome::Info { error } => {
                    let _ = write!(out, "info {}", escape_text(error));
                }
            }
            out.push('\n');
        }
        out
    }

    /// Reads the text form of [`History::to_text`].
    ///
    /// # Errors
    ///
    /// [`Error::Parse`] naming the first line that is not well formed.
    pub fn parse(text: &str) -> Result<History, Error> {
        let mut lines = text.lines().enumerate();
        match lines.next() {
            Some((_, HEADER)) => {}
            _ => return Err(parse_error(1, "missing header")),
        }
        let mut h = History::default();
        for (n, line) in lines {
            let n = n + 1;
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut words = line.split(' ');
            match words.next() {
                Some("event") => {
                    let time = number(words.next(), n)?;
                    let what = unescape_text(&words.collect::<Vec<_>>().join(" "))
                        .ok_or_else(|| parse_error(n, "bad escape"))?;
                    h.events.push(Event { time, what });
                }
                Some("op") => h.records.push(parse_record(&mut words, n)?),
                _ => return Err(parse_error(n, "unknown line")),
            }
        }
        Ok(h)
    }
}

fn parse_record<'a>(words: &mut impl Iterator<Item = &'a str>, n: usize) -> Result<Record, Error> {
    let process = u32::try_from(number(words.next(), n)?)
        .map_err(|_| parse_error(n, "process out of range"))?;
    let invoke = number(words.next(), n)?;
    let complete = number(words.next(), n)?;
    let kind = words.next().ok_or_else(|| parse_error(n, "no kind"))?;
    let key = words
        .next()
        .and_then(unescape)
        .ok_or_else(|| parse_error(n, "bad key"))?;
    let mut value = || -> Result<Option<Bytes>, Error> {
        parse_value(words.next()).ok_or_else(|| parse_error(n, "bad value"))
    };
    let op = match kind {
        "get" => Op::Get { key },
        "put" => Op::Put {
            key,
            value: value()?.ok_or_else(|| parse_error(n, "put of nil"))?,
        },
        "cas" => {
            let expected = value()?;
            let new = value()?.ok_or_else(|| parse_error(n, "cas to nil"))?;
            Op::Cas { key, expected, new }
        }
        _ => return Err(parse_error(n, "unknown kind")),
    };
    if words.next() != Some("=>") {
        return Err(parse_error(n, "missing =>"));
    }
    let class = words.next().ok_or_else(|| parse_error(n, "no outcome"))?;
    let rest: Vec<&str> = words.collect();
    let single = || -> Result<Option<Bytes>, Error> {
        match rest.as_slice() {
            [v] => parse_value(Some(v)).ok_or_else(|| parse_error(n, "bad value")),
            _ => Err(parse_error(n, "expected one value")),
        }
    };
    let text = || unescape_text(&rest.join(" ")).ok_or_else(|| parse_error(n, "bad escape"));
    let outcome = match class {
        "ok" => Outcome::Ok,
        "read" => Outcome::Read(single()?),
        "casfailed" => Outcome::CasFailed { current: single()? },
        "fail" => Outcome::Fail { error: text()? },
        "info" => Outcome::Info { error: text()? },
        _ => return Err(parse_error(n, "unknown outcome")),
    };
    Ok(Record {
        process,
        invoke,
        complete,
        op,
        outcome,
    })
}

fn parse_error(line: usize, reason: &str) -> Error {
    Error::Parse {
        line,
        reason: reason.to_owned(),
    }
}

fn number(word: Option<&str>, n: usize) -> Result<u64, Error> {
    word.and_then(|w| w.parse().ok())
        .ok_or_else(|| parse_error(n, "bad number"))
}

fn value_token(v: Option<&Bytes>) -> String {
    match v {
        None => "nil".to_owned(),
        Some(v) => format!("v:{}", escape(v)),
    }
}

fn parse_value(word: Option<&str>) -> Option<Option<Bytes>> {
    match word? {
        "nil" => Some(None),
        w => Some(Some(unescape(w.strip_prefix("v:")?)?)),
    }
}

fn plain(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'/' | b'+' | b'=')
}

/// Bytes as a token without spaces: plain bytes as they are, others `%XX`.
#[must_use]
pub fn escape(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len());
    for &b in bytes {
        if plain(b) {
            s.push(char::from(b));
        } else {
            let _ = write!(s, "%{b:02X}");
        }
    }
    s
}

fn unescape(token: &str) -> Option<Bytes> {
    let b = token.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Some(Bytes::from(out))
}

/// Free text kept on one line: only `%` and line breaks are escaped.
fn escape_text(s: &str) -> String {
    s.replace('%', "%25")
        .replace('\n', "%0A")
        .replace('\r', "%0D")
}

fn unescape_text(s: &str) -> Option<String> {
    String::from_utf8(unescape(s)?.to_vec()).ok()
}

impl fmt::Display for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show = |v: Option<&Bytes>| v.map_or_else(|| "nil".to_owned(), |v| escape(v));
        write!(f, "p{} ", self.process)?;
        match &self.op {
            Op::Get { key } => write!(f, "get {}", escape(key))?,
            Op::Put { key, value } => write!(f, "put {} {}", escape(key), escape(value))?,
            Op::Cas { key, expected, new } => write!(
                f,
                "cas {} {} -> {}",
                escape(key),
                show(expected.as_ref()),
                escape(new)
            )?,
        }
        match &self.outcome {
            Outcome::Ok => write!(f, " => ok")?,
            Outcome::Read(v) => write!(f, " => {}", show(v.as_ref()))?,
            Outcome::CasFailed { current } => {
                write!(f, " => compare failed (current {})", show(current.as_ref()))?;
            }
            Outcome::Fail { error } => write!(f, " => fail ({error})")?,
            Outcome::Info { error } => write!(f, " => unknown ({error})")?,
        }
        write!(
            f,
            " [{:.3} s .. {:.3} s]",
            secs(self.invoke),
            secs(self.complete)
        )
    }
}

/// Nanoseconds as seconds, for display.
#[allow(clippy::cast_precision_loss)]
pub(crate) fn secs(ns: u64) -> f64 {
    ns as f64 / 1e9
}

/// A history being recorded by many tasks at once. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Recorder {
    start: Instant,
    history: Arc<Mutex<History>>,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder::new()
    }
}

impl Recorder {
    /// A recorder whose clock starts now.
    #[must_use]
    pub fn new() -> Recorder {
        Recorder {
            start: Instant::now(),
            history: Arc::default(),
        }
    }

    /// Nanoseconds since the recorder was made.
    #[must_use]
    pub fn now(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Adds a completed operation.
    pub fn record(&self, record: Record) {
        self.lock().records.push(record);
    }

    /// Adds a nemesis event, stamped now.
    pub fn event(&self, what: impl Into<String>) {
        let time = self.now();
        self.lock().events.push(Event {
            time,
            what: what.into(),
        });
    }

    /// A copy of what was recorded so far.
    #[must_use]
    pub fn snapshot(&self) -> History {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, History> {
        self.history.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_form_round_trips_every_shape() {
        let k = Bytes::from_static(b"k 1%");
        let h = History {
            records: vec![
                Record {
                    process: 0,
                    invoke: 1,
                    complete: 2,
                    op: Op::Get { key: k.clone() },
                    outcome: Outcome::Read(None),
                },
                Record {
                    process: 1,
                    invoke: 3,
                    complete: 4,
                    op: Op::Put {
                        key: k.clone(),
                        value: Bytes::new(),
                    },
                    outcome: Outcome::Info {
                        error: "timeout\n50%".into(),
                    },
                },
                Record {
                    process: 2,
                    invoke: 5,
                    complete: 6,
                    op: Op::Cas {
                        key: k.clone(),
                        expected: None,
                        new: Bytes::from_static(b"\x00\xff"),
                    },
                    outcome: Outcome::CasFailed {
                        current: Some(Bytes::from_static(b"x")),
                    },
                },
                Record {
                    process: 3,
                    invoke: 7,
                    complete: 8,
                    op: Op::Cas {
                        key: k,
                        expected: Some(Bytes::from_static(b"x")),
                        new: Bytes::from_static(b"y"),
                    },
                    outcome: Outcome::Fail {
                        error: "unavailable: no leader".into(),
                    },
                },
            ],
            events: vec![Event {
                time: 9,
                what: "kill node 2".into(),
            }],
        };
        let text = h.to_text();
        assert_eq!(History::parse(&text).expect("parses"), h, "{text}");
    }

    #[test]
    fn malformed_lines_are_errors_naming_the_line() {
        let bad = format!("{HEADER}\nop 1 2 3 get k => ok\nop 1 2 x get k => ok\n");
        match History::parse(&bad) {
            Err(Error::Parse { line, .. }) => assert_eq!(line, 3),
            other => panic!("expected a parse error, got {other:?}"),
        }
        assert!(History::parse("op 1 2 3 get k => ok\n").is_err());
        assert!(History::parse(&format!("{HEADER}\nop 1 2 3 get %G => ok\n")).is_err());
    }
}
