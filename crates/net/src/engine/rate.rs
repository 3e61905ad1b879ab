//! The `--net-rate` limit: a token bucket per direction, in bytes.
//!
//! Invariants:
//! - Tokens accrue at `rate` bytes per second up to a burst of one
//!   second's worth (at least 64 KiB, so a full TCP window can move).
//! - Flows starved by the bucket are woken when it refills, not polled: the
//!   engine's poll timeout includes [`TokenBucket::ready_at`] only while a
//!   flow waits.

use std::time::{Duration, Instant};

#[derive(Debug)]
pub(crate) struct TokenBucket {
    rate: u64,
    burst: u64,
    tokens: u64,
    last: Instant,
}

impl TokenBucket {
    pub fn new(rate: u64, now: Instant) -> TokenBucket {
        let burst = rate.max(64 * 1024);
        TokenBucket { rate: rate.max(1), burst, tokens: burst, last: now }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last);
        let add = (elapsed.as_nanos() * u128::from(self.rate) / 1_000_000_000) as u64;
        if add > 0 {
            self.tokens = (self.tokens + add).min(self.burst);
            // Keep the remainder: advance `last` only by the time paid for.
            self.last += Duration::from_nanos((u128::from(add) * 1_000_000_000 / u128::from(self.rate)) as u64);
            if self.tokens == self.burst {
                self.last = now;
            }
        }
    }

    /// Grants up to `want` bytes now.
    pub fn take(&mut self, want: usize, now: Instant) -> usize {
        self.refill(now);
        let granted = (want as u64).min(self.tokens);
        self.tokens -= granted;
        granted as usize
    }

    /// Gives back bytes granted but not moved.
    pub fn refund(&mut self, unused: usize) {
        self.tokens = (self.tokens + unused as u64).min(self.burst);
    }

    /// When at least one full segment's worth (or the burst) is available.
    pub fn ready_at(&self) -> Instant {
        let want = self.burst.min(1500);
        let missing = want.saturating_sub(self.tokens);
        self.last + Duration::from_nanos((u128::from(missing) * 1_000_000_000 / u128::from(self.rate)) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_the_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(100_000, t0);
        assert_eq!(b.take(1_000_000, t0), 100_000);
        assert_eq!(b.take(10, t0), 0);
        assert_eq!(b.ready_at(), t0 + Duration::from_millis(15));
        assert_eq!(b.take(1_000_000, t0 + Duration::from_millis(500)), 50_000);
        b.refund(1_000);
        assert_eq!(b.take(1_000_000, t0 + Duration::from_millis(500)), 1_000);
        assert_eq!(b.take(1_000_000, t0 + Duration::from_secs(100)), 100_000, "never more than the burst");
    }

    #[test]
    fn small_rates_still_move_a_window() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1_000, t0);
        assert_eq!(b.take(1 << 20, t0), 64 * 1024);
    }
}
