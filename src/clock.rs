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
        sleep_exact((self.origin + at).saturating_duration_since(Instant::now()))
    }
}

/// A sleep of `duration` on a timerfd of its own, so the thread wakes once,
/// at the deadline. A tokio timer would also do, but its wheel wakes the
/// runtime at each level's slot boundary on the way down to a long
/// deadline (three wakeups for a 30 s sleep), and for an idle sandbox those
/// wakeups were most of what it cost. Falls back to a tokio sleep if a
/// timerfd cannot be had. Needs a tokio runtime with I/O enabled.
pub fn sleep_exact(duration: Duration) -> Sleep {
    Box::pin(async move {
        if duration.is_zero() {
            return;
        }
        let registered = timerfd::Timer::armed(duration).and_then(|timer| {
            // SAFETY: the AsyncFd owns the timer, whose descriptor stays open
            // and the same for the AsyncFd's whole life.
            unsafe { tokio::io::unix::AsyncFd::register_with_interest(timer, tokio::io::Interest::READABLE) }
                .map_err(std::io::Error::from)
        });
        match registered {
            Ok(timer) => {
                while let Ok(mut ready) = timer.readable().await {
                    if timer.get_ref().expired() {
                        return;
                    }
                    ready.clear_ready();
                }
                // The reactor is gone: nothing will ever wake this sleep.
                std::future::pending::<()>().await;
            }
            Err(_) => tokio::time::sleep(duration).await,
        }
    })
}

mod timerfd {
    use std::io;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
    use std::time::Duration;

    /// A one-shot CLOCK_MONOTONIC timerfd.
    pub(super) struct Timer(OwnedFd);

    impl Timer {
        /// A timer that expires `after` from now (`after` > 0).
        pub(super) fn armed(after: Duration) -> io::Result<Timer> {
            // SAFETY: plain syscall; the descriptor is checked below.
            let fd = unsafe { libc::timerfd_create(libc::CLOCK_MONOTONIC, libc::TFD_NONBLOCK | libc::TFD_CLOEXEC) };
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: a fresh descriptor we own.
            let timer = Timer(unsafe { OwnedFd::from_raw_fd(fd) });
            let value = libc::itimerspec {
                it_interval: libc::timespec { tv_sec: 0, tv_nsec: 0 },
                it_value: libc::timespec {
                    tv_sec: after.as_secs().min(i64::MAX as u64) as libc::time_t,
                    tv_nsec: libc::c_long::from(after.subsec_nanos() as i32),
                },
            };
            // SAFETY: a valid timerfd and a valid itimerspec.
            if unsafe { libc::timerfd_settime(fd, 0, &value, std::ptr::null_mut()) } != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(timer)
        }

        /// Whether the timer has expired (consumes the expiry count).
        pub(super) fn expired(&self) -> bool {
            let mut count = 0u64;
            // SAFETY: reads 8 bytes into a u64.
            let n = unsafe { libc::read(self.0.as_raw_fd(), (&mut count as *mut u64).cast(), 8) };
            n == 8 && count > 0
        }
    }

    impl AsRawFd for Timer {
        fn as_raw_fd(&self) -> RawFd {
            self.0.as_raw_fd()
        }
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
    use std::os::fd::AsRawFd;

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
        // A deadline already passed completes at once.
        clock.sleep_until(Duration::ZERO).await;
    }

    #[tokio::test]
    async fn an_exact_sleep_is_one_kernel_deadline_for_its_whole_length() {
        let timer = timerfd::Timer::armed(Duration::from_secs(3600)).expect("timerfd");
        let fdinfo = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", timer.as_raw_fd())).expect("fdinfo");
        // "it_value: (SECONDS, NANOS)": the kernel holds the whole deadline,
        // no wheel wakes the thread on the way to it.
        let seconds: u64 = fdinfo
            .lines()
            .find_map(|l| l.strip_prefix("it_value:"))
            .and_then(|v| v.trim().trim_start_matches('(').split(',').next()?.trim().parse().ok())
            .expect("it_value in fdinfo");
        assert!((3590..=3600).contains(&seconds), "{fdinfo}");
        let mut short = sleep_exact(Duration::from_millis(1));
        short.as_mut().await;
    }
}
