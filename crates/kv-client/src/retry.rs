//! When to retry a refusal: a client-wide retry budget and jittered
//! backoff.
//!
//! A node that is over its write budget refuses writes (`UNAVAILABLE`,
//! nothing applied). Retrying every refusal every few milliseconds until
//! the deadline would multiply the load on the very node that asked for
//! less. So refusals are retried only while the client's retry budget
//! lasts, as gRPC's retry throttling does: the budget holds
//! [`MAX_TOKENS`] tokens, each refusal takes one, each success gives
//! [`TOKENS_PER_SUCCESS`] back, and a refusal is retried only while more
//! than half the tokens are left. A client whose requests are mostly
//! refused thus stops retrying and reports the refusal (definite) at
//! once; one that meets a brief refusal still rides it out.
//!
//! Backoff delays carry random jitter (half to all of the nominal delay),
//! so that many clients refused at the same moment do not come back at
//! the same moment.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// Budget size, in thousandths of a token.
const MAX_TOKENS: u32 = 10_000;
/// What a success gives back, in thousandths of a token (0.1 token).
const TOKENS_PER_SUCCESS: u32 = 100;
/// What a refusal takes, in thousandths of a token.
const TOKENS_PER_REFUSAL: u32 = 1_000;

/// A client's retry budget for refusals; shared by its operations.
#[derive(Debug)]
pub(crate) struct RetryThrottle {
    tokens: AtomicU32,
}

impl Default for RetryThrottle {
    fn default() -> Self {
        RetryThrottle {
            tokens: AtomicU32::new(MAX_TOKENS),
        }
    }
}

impl RetryThrottle {
    /// Records a refusal; true when it may be retried.
    pub(crate) fn refused(&self) -> bool {
        let before = self
            .tokens
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
                Some(t.saturating_sub(TOKENS_PER_REFUSAL))
            })
            .unwrap_or(0);
        before.saturating_sub(TOKENS_PER_REFUSAL) > MAX_TOKENS / 2
    }

    /// Records a success.
    pub(crate) fn succeeded(&self) {
        let _ = self
            .tokens
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
                (t < MAX_TOKENS).then(|| (t + TOKENS_PER_SUCCESS).min(MAX_TOKENS))
            });
    }
}

/// `delay` with jitter: uniformly between half of it and all of it.
pub(crate) fn jittered(delay: Duration) -> Duration {
    use rand::Rng as _;
    delay.mul_f64(rand::thread_rng().gen_range(0.5..=1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_of_refusals_exhausts_the_budget_and_successes_refill_it() {
        let t = RetryThrottle::default();
        // 10 tokens, retries while more than 5 are left: 4 retried.
        let retried: Vec<bool> = (0..6).map(|_| t.refused()).collect();
        assert_eq!(retried, [true, true, true, true, false, false]);
        // 10 successes give one token back: one more refusal is retried.
        for _ in 0..10 {
            t.succeeded();
        }
        // 4 tokens + 1 = 5: not more than half yet.
        assert!(!t.refused());
        for _ in 0..30 {
            t.succeeded();
        }
        assert!(t.refused(), "the budget refills with successes");
    }

    #[test]
    fn the_budget_never_exceeds_its_size() {
        let t = RetryThrottle::default();
        for _ in 0..1000 {
            t.succeeded();
        }
        let retried = (0..10).filter(|_| t.refused()).count();
        assert_eq!(retried, 4);
    }

    #[test]
    fn jitter_stays_within_half_to_all_of_the_delay() {
        let d = Duration::from_millis(200);
        for _ in 0..1000 {
            let j = jittered(d);
            assert!(j >= d / 2 && j <= d, "{j:?}");
        }
    }
}
