//! The commands that travel through the raft log, and their results.
//!
//! A compact, versioned binary encoding of our own (not the wire protobufs):
//! the log outlives any one version of the client protocol, and decoding a
//! log entry must be cheap and exact. Every decoder returns an error on bad
//! input; none panics.
//!
//! ```text
//! command := version:u8(=1) client_id:u64 seq:u64 time_ms:u64 op
//! op      := 1 key value | 2 key | 3 absent:u8 expected key new | 4 n:u32 (1 key value | 2 key)*
//!          | 5 node_id:u64 addr | 6 n:u32 (command as bytes)*   (a group; no nesting)
//! bytes   := len:u32 data          (all integers little-endian)
//! outcome := 0 | 1 present:u8 current | 2 | 3 message | 4 n:u32 (outcome as bytes)*
//! ```

use bytes::Bytes;

pub use crate::membership::MemberRecord;

/// Version byte of [`Command::encode`].
const COMMAND_VERSION: u8 = 1;

/// One write operation of an atomic batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchOp {
    /// Set a key.
    Put {
        /// The key.
        key: Bytes,
        /// The value.
        value: Bytes,
    },
    /// Remove a key (absent keys are fine).
    Delete {
        /// The key.
        key: Bytes,
    },
}

/// What a command does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Set `key` to `value`.
    Put {
        /// The key.
        key: Bytes,
        /// The value.
        value: Bytes,
    },
    /// Remove `key`.
    Delete {
        /// The key.
        key: Bytes,
    },
    /// Set `key` to `new` if its value is `expected` (`None`: if absent).
    Cas {
        /// The key.
        key: Bytes,
        /// The value required, or `None` for "absent".
        expected: Option<Bytes>,
        /// The value to set.
        new: Bytes,
    },
    /// All operations or none.
    Batch(Vec<BatchOp>),
    /// Records the advertise (client) address of a node, so that followers
    /// can point clients at the leader.
    SetAdvertise {
        /// The node.
        node_id: u64,
        /// Its advertise address.
        addr: String,
    },
    /// Records a member's peer and client (advertise) addresses, or, with
    /// `addrs` `None`, that it was removed: the replicated address book
    /// every node dials from (see `membership`).
    SetMember {
        /// The member.
        node_id: u64,
        /// Its record; `None` once removed.
        record: Option<MemberRecord>,
    },
    /// Several client commands proposed as one log entry, applied in order
    /// in one engine batch; its outcome is [`Outcome::Multi`]. Groups do not
    /// nest.
    Multi(Vec<Command>),
}

/// A write, with the client's de-duplication identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// The client; 0 means "do not de-duplicate".
    pub client_id: u64,
    /// The client's request number.
    pub seq: u64,
    /// The proposer's wall clock (ms since the Unix epoch): the log's notion
    /// of time, used to expire de-duplication records deterministically.
    pub time_ms: u64,
    /// The operation.
    pub op: Op,
}

/// The deterministic result of applying a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Applied.
    Ok,
    /// A `Cas` whose expectation did not hold; nothing was written.
    CompareFailed {
        /// The current value (`None`: absent).
        current: Option<Bytes>,
    },
    /// A retried write whose request number is older than the
    /// de-duplication window: it was not applied now, but an earlier attempt
    /// may have been.
    Stale,
    /// The command could not be decoded; nothing was written.
    Invalid(String),
    /// The outcomes of an [`Op::Multi`], in order.
    Multi(Vec<Outcome>),
}

/// A decoding failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed command: {0}")]
pub struct DecodeError(pub String);

struct Writer(Vec<u8>);

impl Writer {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn bytes(&mut self, b: &[u8]) {
        // Keys and values are bounded by the frame size (< 4 GiB).
        self.u32(u32::try_from(b.len()).unwrap_or(u32::MAX));
        self.0.extend_from_slice(b);
    }
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError(format!(
                "truncated: wanted {n} bytes, {} left",
                self.buf.len()
            )));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }
    fn bytes(&mut self) -> Result<Bytes, DecodeError> {
        let n = self.u32()? as usize;
        Ok(Bytes::copy_from_slice(self.take(n)?))
    }
    fn finish(&self) -> Result<(), DecodeError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(DecodeError(format!("{} trailing bytes", self.buf.len())))
        }
    }
}

/// Milliseconds since the Unix epoch by this machine's clock.
#[must_use]
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Command {
    /// The client ids of the command (of each command of a group).
    #[must_use]
    pub fn client_ids(&self) -> Vec<u64> {
        match &self.op {
            Op::Multi(cmds) => cmds.iter().map(|c| c.client_id).collect(),
            _ => vec![self.client_id],
        }
    }

    /// Serializes the command for a raft proposal.
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer(Vec::with_capacity(32 + self.approximate_size()));
        w.u8(COMMAND_VERSION);
        w.u64(self.client_id);
        w.u64(self.seq);
        w.u64(self.time_ms);
        match &self.op {
            Op::Put { key, value } => {
                w.u8(1);
                w.bytes(key);
                w.bytes(value);
            }
            Op::Delete { key } => {
                w.u8(2);
                w.bytes(key);
            }
            Op::Cas { key, expected, new } => {
                w.u8(3);
                w.u8(u8::from(expected.is_none()));
                w.bytes(expected.as_deref().unwrap_or_default());
                w.bytes(key);
                w.bytes(new);
            }
            Op::Batch(ops) => {
                w.u8(4);
                w.u32(u32::try_from(ops.len()).unwrap_or(u32::MAX));
                for op in ops {
                    match op {
                        BatchOp::Put { key, value } => {
                            w.u8(1);
                            w.bytes(key);
                            w.bytes(value);
                        }
                        BatchOp::Delete { key } => {
                            w.u8(2);
                            w.bytes(key);
                        }
                    }
                }
            }
            Op::SetAdvertise { node_id, addr } => {
                w.u8(5);
                w.u64(*node_id);
                w.bytes(addr.as_bytes());
            }
            Op::SetMember { node_id, record } => {
                w.u8(7);
                w.u64(*node_id);
                w.bytes(&crate::membership::encode_record(record.as_ref()));
            }
            Op::Multi(cmds) => {
                w.u8(6);
                w.u32(u32::try_from(cmds.len()).unwrap_or(u32::MAX));
                for c in cmds {
                    w.bytes(&c.encode());
                }
            }
        }
        w.0
    }

    pub(crate) fn approximate_size(&self) -> usize {
        match &self.op {
            Op::Put { key, value } => key.len() + value.len(),
            Op::Delete { key } => key.len(),
            Op::Cas { key, expected, new } => {
                key.len() + new.len() + expected.as_ref().map_or(0, Bytes::len)
            }
            Op::Batch(ops) => ops
                .iter()
                .map(|op| match op {
                    BatchOp::Put { key, value } => 9 + key.len() + value.len(),
                    BatchOp::Delete { key } => 5 + key.len(),
                })
                .sum(),
            Op::SetAdvertise { addr, .. } => addr.len(),
            Op::SetMember { record, .. } => record
                .as_ref()
                .map_or(0, |r| r.peer_addr.len() + r.advertise.len()),
            Op::Multi(cmds) => cmds.iter().map(|c| 40 + c.approximate_size()).sum(),
        }
    }

    /// Parses a command made by [`Command::encode`].
    ///
    /// # Errors
    ///
    /// [`DecodeError`] for anything else.
    pub fn decode(buf: &[u8]) -> Result<Command, DecodeError> {
        Self::decode_nested(buf, true)
    }

    fn decode_nested(buf: &[u8], allow_multi: bool) -> Result<Command, DecodeError> {
        let mut r = Reader { buf };
        let version = r.u8()?;
        if version != COMMAND_VERSION {
            return Err(DecodeError(format!("unknown command version {version}")));
        }
        let client_id = r.u64()?;
        let seq = r.u64()?;
        let time_ms = r.u64()?;
        let op = match r.u8()? {
            1 => Op::Put {
                key: r.bytes()?,
                value: r.bytes()?,
            },
            2 => Op::Delete { key: r.bytes()? },
            3 => {
                let absent = r.u8()? != 0;
                let expected = r.bytes()?;
                Op::Cas {
                    key: r.bytes()?,
                    expected: (!absent).then_some(expected),
                    new: r.bytes()?,
                }
            }
            4 => {
                let n = r.u32()? as usize;
                // Each op takes at least 5 bytes: do not trust `n` for the
                // allocation.
                let mut ops = Vec::with_capacity(n.min(r.buf.len() / 5));
                for _ in 0..n {
                    ops.push(match r.u8()? {
                        1 => BatchOp::Put {
                            key: r.bytes()?,
                            value: r.bytes()?,
                        },
                        2 => BatchOp::Delete { key: r.bytes()? },
                        t => return Err(DecodeError(format!("unknown batch op {t}"))),
                    });
                }
                Op::Batch(ops)
            }
            5 => Op::SetAdvertise {
                node_id: r.u64()?,
                addr: String::from_utf8(r.bytes()?.to_vec())
                    .map_err(|_| DecodeError("advertise address is not UTF-8".into()))?,
            },
            7 => Op::SetMember {
                node_id: r.u64()?,
                record: crate::membership::decode_record(&r.bytes()?).map_err(DecodeError)?,
            },
            6 if allow_multi => {
                let n = r.u32()? as usize;
                let mut cmds = Vec::with_capacity(n.min(r.buf.len() / 4));
                for _ in 0..n {
                    cmds.push(Self::decode_nested(&r.bytes()?, false)?);
                }
                Op::Multi(cmds)
            }
            t => return Err(DecodeError(format!("unknown op {t}"))),
        };
        r.finish()?;
        Ok(Command {
            client_id,
            seq,
            time_ms,
            op,
        })
    }
}

impl Outcome {
    /// Serializes the outcome (the proposer's result bytes).
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer(Vec::new());
        match self {
            Outcome::Ok => w.u8(0),
            Outcome::CompareFailed { current } => {
                w.u8(1);
                w.u8(u8::from(current.is_some()));
                w.bytes(current.as_deref().unwrap_or_default());
            }
            Outcome::Stale => w.u8(2),
            Outcome::Invalid(m) => {
                w.u8(3);
                w.bytes(m.as_bytes());
            }
            Outcome::Multi(outcomes) => {
                w.u8(4);
                w.u32(u32::try_from(outcomes.len()).unwrap_or(u32::MAX));
                for o in outcomes {
                    w.bytes(&o.encode());
                }
            }
        }
        w.0
    }

    /// Parses an outcome made by [`Outcome::encode`].
    ///
    /// # Errors
    ///
    /// [`DecodeError`] for anything else.
    pub fn decode(buf: &[u8]) -> Result<Outcome, DecodeError> {
        let mut r = Reader { buf };
        let outcome = match r.u8()? {
            0 => Outcome::Ok,
            1 => {
                let present = r.u8()? != 0;
                let current = r.bytes()?;
                Outcome::CompareFailed {
                    current: present.then_some(current),
                }
            }
            2 => Outcome::Stale,
            3 => Outcome::Invalid(String::from_utf8_lossy(&r.bytes()?).into_owned()),
            4 => {
                let n = r.u32()? as usize;
                let mut outcomes = Vec::with_capacity(n.min(r.buf.len() / 4));
                for _ in 0..n {
                    outcomes.push(Outcome::decode(&r.bytes()?)?);
                }
                Outcome::Multi(outcomes)
            }
            t => return Err(DecodeError(format!("unknown outcome {t}"))),
        };
        r.finish()?;
        Ok(outcome)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    #[test]
    fn commands_roundtrip() {
        let ops = [
            Op::Put {
                key: b("k"),
                value: b("v"),
            },
            Op::Delete { key: b("k") },
            Op::Cas {
                key: b("k"),
                expected: None,
                new: b("n"),
            },
            Op::Cas {
                key: b("k"),
                expected: Some(b("")),
                new: b("n"),
            },
            Op::Batch(vec![
                BatchOp::Put {
                    key: b("a"),
                    value: b("1"),
                },
                BatchOp::Delete { key: b("b") },
            ]),
            Op::SetAdvertise {
                node_id: 3,
                addr: "127.0.0.1:7003".into(),
            },
            Op::SetMember {
                node_id: 4,
                record: Some(MemberRecord {
                    peer_addr: "127.0.0.1:8004".into(),
                    advertise: "127.0.0.1:7004".into(),
                    promote: true,
                }),
            },
            Op::SetMember {
                node_id: 5,
                record: None,
            },
            Op::Multi(vec![
                Command {
                    client_id: 1,
                    seq: 2,
                    time_ms: 3,
                    op: Op::Delete { key: b("x") },
                },
                Command {
                    client_id: 0,
                    seq: 0,
                    time_ms: 0,
                    op: Op::Put {
                        key: b("y"),
                        value: b(""),
                    },
                },
            ]),
        ];
        for op in ops {
            let c = Command {
                client_id: 7,
                seq: 9,
                time_ms: 11,
                op,
            };
            assert_eq!(Command::decode(&c.encode()).unwrap(), c);
        }
    }

    #[test]
    fn outcomes_roundtrip() {
        for o in [
            Outcome::Ok,
            Outcome::CompareFailed { current: None },
            Outcome::CompareFailed {
                current: Some(b("x")),
            },
            Outcome::Stale,
            Outcome::Invalid("bad".into()),
            Outcome::Multi(vec![Outcome::Ok, Outcome::Stale]),
        ] {
            assert_eq!(Outcome::decode(&o.encode()).unwrap(), o);
        }
    }

    #[test]
    fn every_truncation_and_garbage_is_an_error() {
        let c = Command {
            client_id: 1,
            seq: 2,
            time_ms: 3,
            op: Op::Batch(vec![BatchOp::Put {
                key: b("key"),
                value: b("value"),
            }]),
        };
        let enc = c.encode();
        for n in 0..enc.len() {
            assert!(Command::decode(&enc[..n]).is_err(), "prefix {n}");
        }
        let mut huge = enc.clone();
        huge[26..30].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(Command::decode(&huge).is_err());
        let inner = Command {
            client_id: 0,
            seq: 0,
            time_ms: 0,
            op: Op::Multi(vec![c.clone()]),
        };
        let nested = Command {
            client_id: 0,
            seq: 0,
            time_ms: 0,
            op: Op::Multi(vec![inner]),
        };
        assert!(
            Command::decode(&nested.encode()).is_err(),
            "groups do not nest"
        );
        let mut trailing = enc;
        trailing.push(0);
        assert!(Command::decode(&trailing).is_err());
    }
}
