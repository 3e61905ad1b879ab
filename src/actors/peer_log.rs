//! Warnings a peer can cause (a guest sending bad frames or descriptors, a
//! client that does not read, a flood of connections), rate-limited so that
//! a hostile agent or client cannot fill the disk through the runtime log.
//!
//! Each kind of warning may be logged [`PER_WINDOW`] times per [`WINDOW`]
//! (of the relay's [`Clock`]); the rest are counted, and the count is logged
//! once with the first warning of that kind let through afterwards. The
//! number of kinds is fixed by the code (`&'static str` keys), so the table
//! itself stays small whatever a peer does.

use crate::clock::Clock;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// Length of a rate-limiting window.
pub const WINDOW: Duration = Duration::from_secs(60);
/// Warnings of one kind logged per window.
pub const PER_WINDOW: u32 = 10;

#[derive(Default)]
struct Bucket {
    window_start: Duration,
    logged: u32,
    suppressed: u64,
}

/// The rate limiter of peer-caused warnings.
pub struct PeerWarnings {
    clock: Arc<dyn Clock>,
    buckets: HashMap<&'static str, Bucket>,
}

impl PeerWarnings {
    /// A limiter reading time from `clock`.
    pub fn new(clock: Arc<dyn Clock>) -> PeerWarnings {
        PeerWarnings { clock, buckets: HashMap::new() }
    }

    /// Calls `log` for a warning of `kind` unless this kind's budget for the
    /// current window is spent; returns whether it did. The first warning
    /// let through after some were suppressed is preceded by one line that
    /// says how many.
    pub fn warn(&mut self, kind: &'static str, log: impl FnOnce()) -> bool {
        let now = self.clock.now();
        let b = self.buckets.entry(kind).or_insert_with(|| Bucket { window_start: now, ..Bucket::default() });
        if now.saturating_sub(b.window_start) >= WINDOW {
            b.window_start = now;
            b.logged = 0;
        }
        if b.logged >= PER_WINDOW {
            b.suppressed += 1;
            return false;
        }
        b.logged += 1;
        if b.suppressed > 0 {
            tracing::warn!(kind, suppressed = b.suppressed, "similar warnings caused by a peer were not logged");
            b.suppressed = 0;
        }
        log();
        true
    }

    /// Logs how many warnings of each kind were suppressed and not yet
    /// reported (when the relay closes).
    pub fn flush(&mut self) {
        for (kind, b) in self.buckets.iter_mut() {
            if b.suppressed > 0 {
                tracing::warn!(kind, suppressed = b.suppressed, "similar warnings caused by a peer were not logged");
                b.suppressed = 0;
            }
        }
    }

    /// Warnings of `kind` suppressed and not yet reported.
    pub fn suppressed(&self, kind: &str) -> u64 {
        self.buckets.get(kind).map(|b| b.suppressed).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    #[test]
    fn each_kind_gets_its_budget_per_window() {
        let clock = ManualClock::new();
        let mut w = PeerWarnings::new(Arc::new(clock.clone()));
        let logged = (0..1000).filter(|_| w.warn("bad frame", || {})).count();
        assert_eq!(logged, PER_WINDOW as usize);
        // Another kind has its own budget.
        assert!(w.warn("bad descriptor", || {}));
        assert_eq!(w.suppressed("bad frame"), 1000 - u64::from(PER_WINDOW));
        w.flush();
        assert_eq!(w.suppressed("bad frame"), 0);
        // Still the same window: nothing more.
        clock.advance(WINDOW - Duration::from_millis(1));
        assert!(!w.warn("bad frame", || {}));
        // A new window: the budget is back.
        clock.advance(Duration::from_millis(1));
        let logged = (0..1000).filter(|_| w.warn("bad frame", || {})).count();
        assert_eq!(logged, PER_WINDOW as usize);
    }

    #[test]
    fn the_log_closure_runs_only_when_admitted() {
        let clock = ManualClock::new();
        let mut w = PeerWarnings::new(Arc::new(clock));
        let mut calls = 0;
        for _ in 0..50 {
            w.warn("k", || calls += 1);
        }
        assert_eq!(calls, PER_WINDOW);
    }
}
