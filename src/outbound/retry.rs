//! When to try again: exponential backoff with full jitter, capped, honouring `Retry-After`,
//! bounded by a total time.
//!
//! The schedule is pure ([`RetryPolicy::delay`]: attempts made, time since the first, the
//! server's `Retry-After`, a jitter source) so that a journaled delivery can compute its next
//! attempt from what it stored, and tests can pin the jitter ([`Jitter::seeded`]) and run on
//! tokio's paused clock ([`Backoff`] reads `tokio::time::Instant`).

use std::{
    hash::{BuildHasher as _, Hasher as _},
    time::{Duration, SystemTime},
};

use http::HeaderValue;

/// A retry schedule. Before attempt n+1 (n attempts made) it waits a uniformly random time in
/// `[0, min(cap, first × 2^(n-1))]` ("full jitter": retries from many senders spread out
/// instead of arriving in waves), or the server's `Retry-After` if that is longer; it gives up
/// when that attempt would start more than `retry_for` after the first one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RetryPolicy {
    /// The ceiling of the first wait.
    pub(crate) first: Duration,
    /// The largest ceiling, however many attempts were made.
    pub(crate) cap: Duration,
    /// No attempt starts later than this after the first.
    pub(crate) retry_for: Duration,
}

impl RetryPolicy {
    /// How long to wait before the next attempt, or `None` to give up. `attempts` is how many
    /// were made (at least 1), `elapsed` the time since the first started.
    pub(crate) fn delay(
        &self,
        attempts: u32,
        elapsed: Duration,
        retry_after: Option<Duration>,
        jitter: &mut Jitter,
    ) -> Option<Duration> {
        let doublings = attempts.saturating_sub(1).min(32);
        let ceiling = self
            .first
            .checked_mul(1u32 << doublings.min(31))
            .map_or(self.cap, |ceiling| ceiling.min(self.cap));
        let mut wait = jitter.up_to(ceiling);
        if let Some(asked) = retry_after {
            wait = wait.max(asked);
        }
        (elapsed.saturating_add(wait) <= self.retry_for).then_some(wait)
    }
}

/// A [`RetryPolicy`] applied to one request on tokio's clock: counts the attempts and measures
/// the time since the first.
#[derive(Debug)]
pub(crate) struct Backoff {
    policy: RetryPolicy,
    jitter: Jitter,
    first: Option<tokio::time::Instant>,
    attempts: u32,
}

impl Backoff {
    pub(crate) fn new(policy: RetryPolicy, jitter: Jitter) -> Self {
        Backoff {
            policy,
            jitter,
            first: None,
            attempts: 0,
        }
    }

    /// Records that an attempt starts now and returns its number (1 for the first).
    pub(crate) fn attempt(&mut self) -> u32 {
        self.first.get_or_insert_with(tokio::time::Instant::now);
        self.attempts = self.attempts.saturating_add(1);
        self.attempts
    }

    /// Attempts made so far.
    #[cfg(test)]
    pub(crate) fn attempts(&self) -> u32 {
        self.attempts
    }

    /// The wait before the next attempt, or `None` when the policy's `retry_for` is spent.
    pub(crate) fn next_delay(&mut self, retry_after: Option<Duration>) -> Option<Duration> {
        let elapsed = self.first.map_or(Duration::ZERO, |first| first.elapsed());
        self.policy
            .delay(self.attempts.max(1), elapsed, retry_after, &mut self.jitter)
    }
}

/// The jitter's random source: splitmix64, seeded. Not cryptographic; it only spreads
/// retries. [`Jitter::seeded`] makes a schedule reproducible in tests.
#[derive(Debug, Clone)]
pub(crate) struct Jitter {
    state: u64,
}

impl Jitter {
    pub(crate) fn seeded(seed: u64) -> Self {
        Jitter { state: seed }
    }

    /// Seeded from the process's random hash keys (std's `RandomState`), so two sidecars
    /// restarted together do not retry in step.
    pub(crate) fn from_entropy() -> Self {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u64(0x5eed);
        Jitter::seeded(hasher.finish())
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, max]`, to the nanosecond.
    pub(crate) fn up_to(&mut self, max: Duration) -> Duration {
        let span = u64::try_from(max.as_nanos())
            .unwrap_or(u64::MAX)
            .saturating_add(1);
        let nanos = ((u128::from(self.next_u64()) * u128::from(span)) >> 64) as u64;
        Duration::from_nanos(nanos)
    }
}

/// `Retry-After` (RFC 9110 §10.2.3) as a wait from `now`: delay-seconds (`120`) or an HTTP
/// date (`Wed, 21 Oct 2015 07:28:00 GMT`; one in the past is zero). Anything else is `None`.
pub(crate) fn parse_retry_after(value: &HeaderValue, now: SystemTime) -> Option<Duration> {
    let text = value.to_str().ok()?.trim();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        // A huge number saturates rather than being dropped: the server asked for a long wait.
        return Some(Duration::from_secs(text.parse().unwrap_or(u64::MAX)));
    }
    let at = httpdate::parse_http_date(text).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}
