//! How the networked relay stores retry: bounded tries with jittered
//! exponential backoff, in one loop every backend shares.
//!
//! A backend maps its driver's transient failures (throttling, timeouts, a
//! node down) to [`RelayStoreError::Unavailable`] and runs each call
//! through [`Retrier::run`]; the drivers' own retries are off, so there is
//! one retry loop to reason about. The module needs no backend feature, so
//! its tests run in every build.

// Only the feature-gated backends use the retry loop; without them it is
// compiled for its tests alone.
#![cfg_attr(not(any(feature = "dynamodb", feature = "cql")), allow(dead_code))]

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::{RelayStoreError, StoreResult};

/// How a networked relay store retries a call that failed with
/// [`RelayStoreError::Unavailable`].
///
/// Try `n` (from 1) that fails sleeps a random duration in `[d/2, d]` with
/// `d = base · 2^(n-1)` before the next. The randomness is a splitmix64
/// stream from `seed`, not the OS, so a test that fixes the seed replays
/// the same delays.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Tries in all, the first included; at least 1.
    pub attempts: u32,
    /// The backoff ceiling after the first failed try.
    pub base: Duration,
    /// Seeds the jitter.
    pub seed: u64,
}

impl Default for RetryPolicy {
    /// Five tries, 20 ms doubling: at most about 0.3 s of sleep, within a
    /// device's sync timeout.
    fn default() -> Self {
        Self { attempts: 5, base: Duration::from_millis(20), seed: 0x636f_6e63_6f72_6421 }
    }
}

impl RetryPolicy {
    /// The most times `base` is doubled. It keeps the shift in range; a
    /// policy with that many tries has long stopped being a retry.
    const MAX_DOUBLINGS: u32 = 16;

    /// The ceiling `d` after failed try `tries` (from 1).
    fn ceiling(&self, tries: u32) -> Duration {
        let doublings = tries.saturating_sub(1).min(Self::MAX_DOUBLINGS);
        self.base.saturating_mul(1u32 << doublings)
    }

    /// The sleep after failed try `tries` (from 1) that takes draw `draw`
    /// of the jitter stream: uniform in `[d/2, d]`.
    fn delay(&self, tries: u32, draw: u64) -> Duration {
        let half = self.ceiling(tries) / 2;
        let span = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX).saturating_add(1);
        half + Duration::from_nanos(splitmix64(self.seed ^ draw) % span)
    }
}

/// splitmix64: a tiny, well-mixed stream for jitter; not for secrets.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A store's [`RetryPolicy`] and its jitter stream. Clones share the
/// stream, as clones of a store share its client.
#[derive(Clone, Debug)]
pub(super) struct Retrier {
    policy: RetryPolicy,
    /// Draws of the jitter stream so far.
    draws: Arc<AtomicU64>,
    /// The backend, for logs.
    backend: &'static str,
}

impl Retrier {
    /// The default policy, for the backend named `backend`.
    pub(super) fn new(backend: &'static str) -> Self {
        Self { policy: RetryPolicy::default(), draws: Arc::new(AtomicU64::new(0)), backend }
    }

    /// Replaces the policy, with at least one try; the jitter stream goes
    /// on where it was.
    pub(super) fn set_policy(&mut self, policy: RetryPolicy) {
        self.policy = RetryPolicy { attempts: policy.attempts.max(1), ..policy };
    }

    /// Whether to try again after failed try `tries` (from 1) ended in
    /// `error`, and after how long: `None` once the error is not retryable
    /// or the policy's tries are spent.
    pub(super) fn retry_after(&self, tries: u32, error: &RelayStoreError) -> Option<Duration> {
        (error.is_retryable() && tries < self.policy.attempts).then(|| self.backoff(tries))
    }

    /// The sleep after failed try `tries` (from 1): uniform in `[d/2, d]`,
    /// from the next draw of the jitter stream.
    fn backoff(&self, tries: u32) -> Duration {
        let draw = self.draws.fetch_add(1, Ordering::Relaxed);
        self.policy.delay(tries, draw)
    }

    /// Runs `attempt` until it succeeds, fails for good, or the policy's
    /// tries are spent. `what` names the call in logs.
    pub(super) async fn run<T, F, Fut>(&self, what: &str, mut attempt: F) -> StoreResult<T>
    where
        F: FnMut() -> Fut + Send,
        Fut: Future<Output = StoreResult<T>> + Send,
        T: Send,
    {
        let mut tries = 0;
        loop {
            tries += 1;
            let error = match attempt().await {
                Err(error) => error,
                done => return done,
            };
            let Some(delay) = self.retry_after(tries, &error) else {
                return Err(error);
            };
            tracing::debug!(
                backend = self.backend,
                error = %error,
                what,
                tries,
                ?delay,
                "relay store call retried"
            );
            tokio::time::sleep(delay).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU32;

    use super::*;

    /// A policy whose sleeps are microseconds, so tests that run the loop
    /// stay fast on a real clock.
    fn quick(attempts: u32, seed: u64) -> Retrier {
        let mut retrier = Retrier::new("test");
        retrier.set_policy(RetryPolicy { attempts, base: Duration::from_micros(10), seed });
        retrier
    }

    /// Runs `retrier` over a call that fails with `error` for its first
    /// `failures` tries; returns the outcome and the tries made.
    async fn run_failing(
        retrier: &Retrier,
        failures: u32,
        error: RelayStoreError,
    ) -> (StoreResult<u32>, u32) {
        let tries = AtomicU32::new(0);
        let result = retrier
            .run("test call", || {
                let n = tries.fetch_add(1, Ordering::Relaxed) + 1;
                let error = error.clone();
                async move {
                    if n <= failures {
                        Err(error)
                    } else {
                        Ok(n)
                    }
                }
            })
            .await;
        (result, tries.into_inner())
    }

    fn unavailable() -> RelayStoreError {
        RelayStoreError::Unavailable("throttled".into())
    }

    #[tokio::test]
    async fn test_unavailable_calls_are_tried_at_most_attempts_times() {
        let retrier = quick(4, 1);
        let (result, tries) = run_failing(&retrier, u32::MAX, unavailable()).await;
        assert_eq!(result, Err(unavailable()));
        assert_eq!(tries, 4);
        // Three sleeps, one draw each.
        assert_eq!(retrier.draws.load(Ordering::Relaxed), 3);

        let (result, tries) = run_failing(&quick(4, 1), 3, unavailable()).await;
        assert_eq!((result, tries), (Ok(4), 4), "the last try may succeed");
    }

    #[tokio::test]
    async fn test_zero_attempts_still_tries_once() {
        let retrier = quick(0, 1);
        assert_eq!(retrier.policy.attempts, 1);
        let (result, tries) = run_failing(&retrier, u32::MAX, unavailable()).await;
        assert_eq!((result, tries), (Err(unavailable()), 1));
    }

    #[tokio::test]
    async fn test_errors_that_are_not_retryable_end_the_loop_at_once() {
        let retrier = quick(5, 1);
        let setup = RelayStoreError::Setup("no such table".into());
        let (result, tries) = run_failing(&retrier, u32::MAX, setup.clone()).await;
        assert_eq!((result, tries), (Err(setup), 1));
        assert_eq!(retrier.draws.load(Ordering::Relaxed), 0, "no sleep");
    }

    #[test]
    fn test_backoff_doubles_stays_in_its_jitter_band_and_is_capped() {
        let policy = RetryPolicy { attempts: u32::MAX, base: Duration::from_millis(20), seed: 3 };
        for tries in 1..=RetryPolicy::MAX_DOUBLINGS + 1 {
            let ceiling = Duration::from_millis(20) * (1 << (tries - 1));
            assert_eq!(policy.ceiling(tries), ceiling, "try {tries}");
            for draw in 0..64 {
                let delay = policy.delay(tries, draw);
                assert!(ceiling / 2 <= delay && delay <= ceiling, "try {tries}: {delay:?}");
            }
        }
        let cap = policy.ceiling(RetryPolicy::MAX_DOUBLINGS + 1);
        for tries in [RetryPolicy::MAX_DOUBLINGS + 2, 100, u32::MAX] {
            assert_eq!(policy.ceiling(tries), cap, "try {tries}");
        }
        // A base so large that doubling overflows saturates instead.
        let huge = RetryPolicy { base: Duration::MAX, ..policy };
        assert_eq!(huge.ceiling(5), Duration::MAX);
        assert!(huge.delay(5, 0) >= Duration::MAX / 2);
    }

    #[test]
    fn test_jitter_is_a_function_of_the_seed() {
        let delays = |seed: u64| {
            let retrier = quick(5, seed);
            (1..=4).map(|tries| retrier.backoff(tries)).collect::<Vec<_>>()
        };
        assert_eq!(delays(7), delays(7));
        assert_ne!(delays(7), delays(8));
        // The default policy's first delays, pinned: a change to the stream
        // or to the formula changes every replayed test.
        let retrier = Retrier::new("test");
        let pinned: Vec<u64> = vec![11_976_067, 30_457_085, 48_926_343, 143_070_689];
        let drawn: Vec<u64> = (1..=4)
            .map(|tries| u64::try_from(retrier.backoff(tries).as_nanos()).unwrap_or(u64::MAX))
            .collect();
        assert_eq!(drawn, pinned);
    }

    #[test]
    fn test_clones_share_one_jitter_stream() {
        let first = quick(5, 9);
        let mut second = first.clone();
        second.set_policy(RetryPolicy { attempts: 3, ..first.policy });
        assert_eq!(first.backoff(1), first.policy.delay(1, 0));
        // The clone takes the next draw, not the same one again.
        assert_eq!(second.backoff(1), first.policy.delay(1, 1));
        assert_eq!(first.draws.load(Ordering::Relaxed), 2);
    }
}
