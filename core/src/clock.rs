//! Time: the injected wall clock and the hybrid logical clock built on it.
//!
//! Core never reads the system time itself; whoever opens a replica passes a
//! [`Clock`]. Tests pass a [`ManualClock`] so every run is reproducible.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::ids::Hlc;

/// A source of wall-clock time in milliseconds since the Unix epoch.
pub trait Clock: Send + Sync {
    /// The current time in milliseconds since the Unix epoch.
    fn now_millis(&self) -> u64;
}

impl<C: Clock + ?Sized> Clock for Arc<C> {
    fn now_millis(&self) -> u64 {
        (**self).now_millis()
    }
}

/// The operating system's clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_millis(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            // A clock set before 1970 is treated as the epoch; the HLC keeps order anyway.
            .unwrap_or(0)
    }
}

/// A clock that only moves when told to: for tests and simulations.
#[derive(Debug, Default)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    /// A clock reading `millis`.
    pub fn new(millis: u64) -> Self {
        Self(AtomicU64::new(millis))
    }
    /// Sets the reading.
    pub fn set(&self, millis: u64) {
        self.0.store(millis, Ordering::SeqCst);
    }
    /// Moves the reading forward.
    pub fn advance(&self, millis: u64) {
        self.0.fetch_add(millis, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_millis(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// How far ahead of our own clock a remote stamp may pull our HLC. A peer with a
/// clock a year fast must not drag every later local message a year ahead; such
/// a stamp is still accepted (validation never reads the local clock), it just
/// does not advance ours.
pub const MAX_HLC_DRIFT_MILLIS: u64 = 5 * 60 * 1000;

/// Hybrid logical clock state (Kulkarni et al.): stamps never go backwards and
/// follow the causality of stamps observed from other replicas.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct HlcState {
    last: Hlc,
}

impl HlcState {
    pub(crate) fn new(last: Hlc) -> Self {
        Self { last }
    }

    pub(crate) fn last(&self) -> Hlc {
        self.last
    }

    /// A new stamp for a local event, greater than every stamp issued or observed.
    pub(crate) fn tick(&mut self, now_millis: u64) -> Hlc {
        let last = self.last;
        let next = if now_millis > last.millis() {
            Hlc::new(now_millis, 0)
        } else if last.counter() == u16::MAX {
            // Counter exhausted within one millisecond: borrow the next millisecond.
            Hlc::new(last.millis() + 1, 0)
        } else {
            Hlc::new(last.millis(), last.counter() + 1)
        };
        self.last = next;
        next
    }

    /// Folds in a stamp seen on a remote envelope.
    pub(crate) fn observe(&mut self, remote: Hlc, now_millis: u64) {
        if remote > self.last && remote.millis() <= now_millis.saturating_add(MAX_HLC_DRIFT_MILLIS)
        {
            self.last = remote;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_hlc_is_monotonic_when_clock_steps_back() {
        let mut hlc = HlcState::default();
        let a = hlc.tick(1_000);
        let b = hlc.tick(900);
        let c = hlc.tick(900);
        assert!(a < b && b < c);
        assert_eq!(b.millis(), 1_000);
    }

    #[test]
    fn test_hlc_follows_remote_but_not_far_future() {
        let mut hlc = HlcState::default();
        hlc.observe(Hlc::new(2_000, 4), 1_000);
        assert!(hlc.tick(1_000) > Hlc::new(2_000, 4));
        let far = Hlc::new(1_000 + MAX_HLC_DRIFT_MILLIS * 10, 0);
        hlc.observe(far, 1_000);
        assert!(hlc.tick(1_000) < far);
    }

    #[test]
    fn test_hlc_counter_overflow_borrows_next_millisecond() {
        let mut hlc = HlcState::new(Hlc::new(10, u16::MAX));
        assert_eq!(hlc.tick(10), Hlc::new(11, 0));
    }
}
