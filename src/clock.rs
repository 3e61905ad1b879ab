//! Monotonic time for the policies, injectable so tests are deterministic.
//!
//! The watchdog and relay read time only through a [`Clock`], and the
//! watchdog also sleeps on it ([`Clock::sleep_until`]), so a sandbox that
//! does nothing wakes only at its deadlines. Production uses
//! [`MonotonicClock`]; actor tests use [`ManualClock`] and move time forward
//! themselves, so an idle timeout of ten minutes is tested in milliseconds and
//! never depends on scheduling luck: every sleeper whose deadline an
//! [`ManualClock::advance`] reaches wakes at once.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A sleep on a [`Clock`], as a boxed future (the trait stays object-safe).
pub type Sleep = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// A monotonic clock: time elapsed since the clock was created.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Time since the clock's origin.
    fn now(&self) -> Duration;

    /// A future that completes once [`Clock::now`] has reached `at` (at once
    /// if it already has). Needs a tokio runtime with time enabled.
    fn sleep_until(&self, at: Duration) -> Sleep;
}

/// The host's monotonic clock.
#[derive(Debug)]
pub struct MonotonicClock {
    origin: Instant,
}

impl MonotonicClock {
    /// A clock whose origin is now.
    pub fn new() -> MonotonicClock {
        MonotonicClock { origin: Instant::now() }
    }
}

impl Default for MonotonicClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for MonotonicClock {
    fn now(&self) -> Duration {
        self.origin.elapsed()
    }

    fn sleep_until(&self, at: Duration) -> Sleep {
        let deadline = tokio::time::Instant::from_std(self.origin + at);
        Box::pin(tokio::time::sleep_until(deadline))
    }
}

/// A clock that moves only when told to.
#[derive(Clone, Debug)]
pub struct ManualClock {
    /// Nanoseconds since the origin; sleepers watch it change.
    nanos: Arc<tokio::sync::watch::Sender<u64>>,
}

impl Default for ManualClock {
    fn default() -> Self {
        ManualClock { nanos: Arc::new(tokio::sync::watch::Sender::new(0)) }
    }
}

impl ManualClock {
    /// A clock at zero.
    pub fn new() -> ManualClock {
        ManualClock::default()
    }

    /// Moves time forward, waking every sleeper whose deadline it reaches.
    pub fn advance(&self, by: Duration) {
        let by = by.as_nanos() as u64;
        self.nanos.send_modify(|n| *n = n.saturating_add(by));
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Duration {
        Duration::from_nanos(*self.nanos.borrow())
    }

    fn sleep_until(&self, at: Duration) -> Sleep {
        let mut rx = self.nanos.subscribe();
        let at = at.as_nanos() as u64;
        Box::pin(async move {
            // The sender lives as long as any clone of the clock; if it is
            // gone, time can never reach `at`.
            let _ = rx.wait_for(|n| *n >= at).await;
            if *rx.borrow() < at {
                std::future::pending::<()>().await;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_manual_sleeper_wakes_when_time_reaches_its_deadline() {
        let clock = ManualClock::new();
        let mut sleep = clock.sleep_until(Duration::from_secs(10));
        let poll_once = |s: &mut Sleep| {
            let waker = std::task::Waker::noop();
            s.as_mut().poll(&mut std::task::Context::from_waker(waker)).is_ready()
        };
        assert!(!poll_once(&mut sleep));
        clock.advance(Duration::from_secs(9));
        assert!(!poll_once(&mut sleep));
        clock.advance(Duration::from_secs(1));
        assert!(poll_once(&mut sleep));
        // A deadline already passed completes at once.
        assert!(poll_once(&mut clock.sleep_until(Duration::from_secs(3))));
    }

    #[tokio::test]
    async fn a_monotonic_sleep_ends_at_its_deadline() {
        let clock = MonotonicClock::new();
        let at = clock.now() + Duration::from_millis(2);
        clock.sleep_until(at).await;
        assert!(clock.now() >= at);
    }
}
