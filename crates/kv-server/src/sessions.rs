//! Client sessions: which of a client's recent writes were applied, so that
//! a retry is answered with its first outcome instead of applying twice.
//!
//! One record per client id, under `m C <client id>` (see [`crate::keys`]):
//!
//! ```text
//! max_seq:u64be  last_ms:u64be  version:u8 (=2)  legacy_floor:u64be
//! holes:u32be  (first:u64be last:u64be)*    request numbers in the window not applied
//! recorded:u32be  seq:u64be*                 request numbers with an outcome record
//! legacy_applied:u32be  seq:u64be*           legacy request numbers applied since
//! ```
//!
//! The window is the last [`WINDOW`] request numbers up to `max_seq`. A
//! request number in it was applied unless it lies in a hole; its outcome
//! is `Ok` unless it is listed as recorded, in which case the outcome is
//! stored under `m c <client id> <seq>` (compare failures, which carry the
//! current value). So a plain write costs one small record per client per
//! entry, not an outcome record plus a deletion of the one that fell out of
//! the window.
//!
//! Older builds wrote a 16-byte record (`max_seq`, `last_ms`) and an outcome
//! record for every write: such a record reads as a session whose every
//! request number up to `max_seq` is *legacy* (look for its outcome record;
//! none means not applied, unless this build applied it since, which
//! `legacy_applied` lists), and the legacy range shrinks away as the window
//! moves past it.

use crate::command::Outcome;

/// Request numbers per client whose outcomes are remembered.
pub const WINDOW: u64 = 1024;

/// The version byte of the current record format.
const VERSION: u8 = 2;

/// What a client's session says about one of its request numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// Not applied: apply it.
    New,
    /// Older than the window: an earlier attempt may have been applied.
    Stale,
    /// Applied, with outcome `Ok`.
    Applied,
    /// Applied, with the outcome stored in its own record.
    Recorded,
    /// Written by an older build: applied if and only if its outcome record
    /// exists.
    Legacy,
}

/// One client's session.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Session {
    /// The highest request number applied.
    pub max_seq: u64,
    /// The proposer's clock at the client's last write (ms since the epoch).
    pub last_ms: u64,
    /// Request numbers up to this one were written by an older build.
    legacy_floor: u64,
    /// Inclusive ranges of request numbers in the window not applied,
    /// sorted and disjoint.
    holes: Vec<(u64, u64)>,
    /// Request numbers in the window whose outcome has its own record,
    /// sorted.
    recorded: Vec<u64>,
    /// Legacy request numbers (at most `legacy_floor`) applied with outcome
    /// `Ok` by this build, which wrote no outcome record for them; sorted.
    legacy_applied: Vec<u64>,
}

impl Session {
    /// Request numbers at or below this are outside the window.
    fn floor(&self) -> u64 {
        self.max_seq.saturating_sub(WINDOW)
    }

    /// What the session knows of request number `seq`.
    #[must_use]
    pub fn check(&self, seq: u64) -> Seen {
        if seq > self.max_seq {
            return Seen::New;
        }
        if self.max_seq >= WINDOW && seq <= self.floor() {
            return Seen::Stale;
        }
        if self.recorded.binary_search(&seq).is_ok() {
            return Seen::Recorded;
        }
        if seq <= self.legacy_floor {
            return if self.legacy_applied.binary_search(&seq).is_ok() {
                Seen::Applied
            } else {
                Seen::Legacy
            };
        }
        if self.holes.iter().any(|&(a, b)| a <= seq && seq <= b) {
            Seen::New
        } else {
            Seen::Applied
        }
    }

    /// Notes that `seq` was applied at `time_ms` with `outcome` (the caller
    /// stores the outcome record when [`needs_record`] says so). Returns the
    /// request numbers whose outcome records fell out of the window, for the
    /// caller to delete.
    pub fn applied(&mut self, seq: u64, time_ms: u64, outcome: &Outcome) -> Vec<u64> {
        self.last_ms = time_ms;
        if needs_record(outcome)
            && let Err(at) = self.recorded.binary_search(&seq)
        {
            self.recorded.insert(at, seq);
        }
        if seq <= self.max_seq {
            if seq <= self.legacy_floor
                && !needs_record(outcome)
                && let Err(at) = self.legacy_applied.binary_search(&seq)
            {
                self.legacy_applied.insert(at, seq);
            }
            self.fill_hole(seq);
            return Vec::new();
        }
        let old_floor = self.floor();
        if seq > self.max_seq + 1 {
            let first = (self.max_seq + 1).max(seq.saturating_sub(WINDOW) + 1);
            self.holes.push((first, seq - 1));
        }
        self.max_seq = seq;
        let floor = self.floor();
        self.holes.retain_mut(|(a, b)| {
            *a = (*a).max(floor + 1);
            *a <= *b
        });
        let keep_from = self.recorded.partition_point(|&s| s <= floor);
        let mut forgotten: Vec<u64> = self.recorded.drain(..keep_from).collect();
        if self.legacy_floor > 0 {
            // Legacy outcome records leaving the window, at most a window's
            // worth per write (as older builds deleted them).
            let from = old_floor.max(floor.saturating_sub(WINDOW)) + 1;
            forgotten.extend(from..=floor.min(self.legacy_floor));
            if floor >= self.legacy_floor {
                self.legacy_floor = 0;
            }
            self.legacy_applied
                .retain(|&s| s > floor && s <= self.legacy_floor);
        }
        forgotten
    }

    fn fill_hole(&mut self, seq: u64) {
        let Some(i) = self.holes.iter().position(|&(a, b)| a <= seq && seq <= b) else {
            return;
        };
        let (a, b) = self.holes[i];
        match (a == seq, b == seq) {
            (true, true) => {
                self.holes.remove(i);
            }
            (true, false) => self.holes[i].0 = seq + 1,
            (false, true) => self.holes[i].1 = seq - 1,
            (false, false) => {
                self.holes[i].1 = seq - 1;
                self.holes.insert(i + 1, (seq + 1, b));
            }
        }
    }

    /// The stored record.
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        let mut r = Vec::with_capacity(
            37 + 16 * self.holes.len() + 8 * (self.recorded.len() + self.legacy_applied.len()),
        );
        r.extend_from_slice(&self.max_seq.to_be_bytes());
        r.extend_from_slice(&self.last_ms.to_be_bytes());
        r.push(VERSION);
        r.extend_from_slice(&self.legacy_floor.to_be_bytes());
        put_len(&mut r, self.holes.len());
        for (a, b) in &self.holes {
            r.extend_from_slice(&a.to_be_bytes());
            r.extend_from_slice(&b.to_be_bytes());
        }
        for list in [&self.recorded, &self.legacy_applied] {
            put_len(&mut r, list.len());
            for s in list {
                r.extend_from_slice(&s.to_be_bytes());
            }
        }
        r
    }

    /// Reads a stored record (this format or the 16 bytes of older builds).
    ///
    /// # Errors
    ///
    /// A description of what is wrong with a malformed record.
    pub fn decode(record: &[u8]) -> Result<Session, String> {
        let mut r = Reader(record);
        let max_seq = r.u64()?;
        let last_ms = r.u64()?;
        if r.0.is_empty() {
            return Ok(Session {
                max_seq,
                last_ms,
                legacy_floor: max_seq,
                ..Session::default()
            });
        }
        let version = r.u8()?;
        if version != VERSION {
            return Err(format!(
                "client session record of unknown version {version}"
            ));
        }
        let legacy_floor = r.u64()?;
        let n = r.len()?;
        let mut holes = Vec::with_capacity(n);
        for _ in 0..n {
            holes.push((r.u64()?, r.u64()?));
        }
        let mut lists = [Vec::new(), Vec::new()];
        for list in &mut lists {
            let n = r.len()?;
            list.reserve(n);
            for _ in 0..n {
                list.push(r.u64()?);
            }
        }
        let [recorded, legacy_applied] = lists;
        if !r.0.is_empty() {
            return Err("client session record with trailing bytes".into());
        }
        let sorted = holes.windows(2).all(|w| w[0].1 < w[1].0)
            && holes.iter().all(|(a, b)| a <= b && *b <= max_seq)
            && recorded.windows(2).all(|w| w[0] < w[1])
            && legacy_applied.windows(2).all(|w| w[0] < w[1])
            && legacy_applied.iter().all(|&s| s <= legacy_floor);
        if !sorted || legacy_floor > max_seq {
            return Err("client session record out of order".into());
        }
        Ok(Session {
            max_seq,
            last_ms,
            legacy_floor,
            holes,
            recorded,
            legacy_applied,
        })
    }
}

/// Whether an outcome must be kept in its own record (anything but `Ok`,
/// which the session itself implies).
#[must_use]
pub fn needs_record(outcome: &Outcome) -> bool {
    !matches!(outcome, Outcome::Ok)
}

fn put_len(r: &mut Vec<u8>, n: usize) {
    // At most a window's worth of entries, far below u32::MAX.
    r.extend_from_slice(&u32::try_from(n).unwrap_or(u32::MAX).to_be_bytes());
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let Some((head, rest)) = self.0.split_first_chunk::<N>() else {
            return Err("client session record cut short".into());
        };
        self.0 = rest;
        Ok(*head)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take::<1>()?[0])
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_be_bytes(self.take()?))
    }
    fn len(&mut self) -> Result<usize, String> {
        let n = u32::from_be_bytes(self.take()?) as usize;
        // Each entry takes at least 8 bytes: a count beyond what is left is
        // damage, not a reason to allocate.
        if n > self.0.len() / 8 {
            return Err("client session record with an impossible count".into());
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn in_order_writes_leave_no_holes_and_no_records() {
        let mut s = Session::default();
        for seq in 1..=3000 {
            assert_eq!(s.check(seq), Seen::New);
            assert!(s.applied(seq, 7, &Outcome::Ok).is_empty());
        }
        assert_eq!(s.encode().len(), 37);
        assert_eq!(s.check(3000), Seen::Applied);
        assert_eq!(s.check(3000 - WINDOW + 1), Seen::Applied);
        assert_eq!(s.check(3000 - WINDOW), Seen::Stale);
    }

    #[test]
    fn a_skipped_request_is_a_hole_until_it_is_applied() {
        let mut s = Session::default();
        s.applied(1, 0, &Outcome::Ok);
        s.applied(5, 0, &Outcome::Ok);
        assert_eq!(
            [2, 3, 4, 5].map(|q| s.check(q)),
            [Seen::New, Seen::New, Seen::New, Seen::Applied]
        );
        s.applied(3, 0, &Outcome::Ok);
        assert_eq!(s.holes, vec![(2, 2), (4, 4)]);
        assert_eq!(s.check(3), Seen::Applied);
        s.applied(2, 0, &Outcome::Ok);
        s.applied(4, 0, &Outcome::Ok);
        assert!(s.holes.is_empty());
    }

    #[test]
    fn failed_compares_are_recorded_and_forgotten_with_the_window() {
        let mut s = Session::default();
        let failed = Outcome::CompareFailed { current: None };
        s.applied(1, 0, &failed);
        assert_eq!(s.check(1), Seen::Recorded);
        let mut forgotten = Vec::new();
        for seq in 2..=WINDOW + 1 {
            forgotten.extend(s.applied(seq, 0, &Outcome::Ok));
        }
        assert_eq!(forgotten, vec![1]);
        assert_eq!(s.check(1), Seen::Stale);
    }

    #[test]
    fn an_old_record_is_legacy_until_the_window_passes_it() {
        let old: Vec<u8> = [10u64.to_be_bytes(), 99u64.to_be_bytes()].concat();
        let mut s = Session::decode(&old).unwrap();
        assert_eq!((s.max_seq, s.last_ms), (10, 99));
        assert_eq!(s.check(4), Seen::Legacy);
        assert_eq!(s.check(11), Seen::New);
        // A legacy request without an outcome record was not applied; once
        // this build applies it, a retry is a duplicate.
        s.applied(4, 0, &Outcome::Ok);
        assert_eq!(s.check(4), Seen::Applied);
        let s2 = Session::decode(&s.encode()).unwrap();
        assert_eq!(s2.check(4), Seen::Applied);
        let mut forgotten = Vec::new();
        for seq in 11..=WINDOW + 20 {
            forgotten.extend(s.applied(seq, 0, &Outcome::Ok));
        }
        // Every legacy outcome record leaves with the window.
        assert_eq!(forgotten, (1..=10).collect::<Vec<_>>());
        assert_eq!(s.legacy_floor, 0);
    }

    #[test]
    fn damaged_records_are_errors() {
        let mut s = Session::default();
        s.applied(3, 1, &Outcome::CompareFailed { current: None });
        let good = s.encode();
        assert_eq!(Session::decode(&good).unwrap(), s);
        for cut in 0..good.len() {
            if cut != 16 {
                assert!(Session::decode(&good[..cut]).is_err(), "cut at {cut}");
            }
        }
        let mut bad_version = good.clone();
        bad_version[16] = 9;
        assert!(Session::decode(&bad_version).is_err());
        let mut huge_count = good.clone();
        huge_count[25..29].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(Session::decode(&huge_count).is_err());
    }

    proptest! {
        /// Against a model that remembers every applied request number and
        /// outcome: within the window the session answers exactly, below it
        /// `Stale`, and records survive encoding.
        #[test]
        fn the_session_agrees_with_a_full_history(
            ops in prop::collection::vec((1u64..3000, any::<bool>()), 1..400)
        ) {
            let mut s = Session::default();
            let mut applied = std::collections::BTreeMap::new();
            let mut records = std::collections::BTreeSet::new();
            for (seq, ok) in ops {
                let max = applied.keys().next_back().copied().unwrap_or(0);
                let expect = if seq > max {
                    Seen::New
                } else if max >= WINDOW && seq <= max - WINDOW {
                    Seen::Stale
                } else {
                    match applied.get(&seq) {
                        None => Seen::New,
                        Some(true) => Seen::Applied,
                        Some(false) => Seen::Recorded,
                    }
                };
                prop_assert_eq!(s.check(seq), expect);
                if expect == Seen::New {
                    let outcome = if ok { Outcome::Ok } else { Outcome::Stale };
                    if !ok {
                        records.insert(seq);
                    }
                    for gone in s.applied(seq, 0, &outcome) {
                        prop_assert!(records.remove(&gone));
                    }
                    applied.insert(seq, ok);
                }
                s = Session::decode(&s.encode()).unwrap();
            }
            let max = applied.keys().next_back().copied().unwrap_or(0);
            let live: Vec<u64> = records.into_iter().filter(|&q| q + WINDOW > max).collect();
            prop_assert_eq!(&s.recorded, &live);
        }
    }
}
