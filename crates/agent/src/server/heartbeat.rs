//! When the agent sends a heartbeat.
//!
//! A heartbeat tells the host the agent is alive; so does any other frame
//! (the relay counts every frame of a ready agent as one). So a heartbeat is
//! due only after a whole `period` in which the agent sent nothing: a busy
//! agent sends none, an idle one sends one per period and wakes for nothing
//! else. The loop reports how many frames the channel has taken so far
//! ([`Channel::frames_out`](super::channel::Channel::frames_out)); a change
//! since the last look restarts the period.

use std::time::{Duration, Instant};

/// The heartbeat's schedule and its sequence number.
#[derive(Debug)]
pub(super) struct Heartbeat {
    seq: u64,
    period: Duration,
    next_at: Instant,
    frames_seen: u64,
}

impl Heartbeat {
    /// The first heartbeat is due one `period` after `now`.
    pub(super) fn new(period: Duration, now: Instant) -> Heartbeat {
        Heartbeat { seq: 0, period, next_at: now + period, frames_seen: 0 }
    }

    /// When the next heartbeat is due if nothing else is sent before.
    pub(super) fn next_at(&self) -> Instant {
        self.next_at
    }

    /// The sequence number of a heartbeat to send `now`, if one is due,
    /// given the channel's count of frames taken so far.
    pub(super) fn due(&mut self, now: Instant, frames_out: u64) -> Option<u64> {
        if frames_out != self.frames_seen {
            self.frames_seen = frames_out;
            self.next_at = now + self.period;
            return None;
        }
        if now < self.next_at {
            return None;
        }
        self.seq += 1;
        self.next_at = now + self.period;
        Some(self.seq)
    }

    /// The heartbeat was queued: `frames_out` now counts it.
    pub(super) fn sent(&mut self, frames_out: u64) {
        self.frames_seen = frames_out;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PERIOD: Duration = Duration::from_secs(5);

    #[test]
    fn an_idle_agent_beats_once_per_period() {
        let t0 = Instant::now();
        let mut h = Heartbeat::new(PERIOD, t0);
        assert_eq!(h.due(t0 + Duration::from_secs(4), 0), None);
        assert_eq!(h.due(t0 + PERIOD, 0), Some(1));
        h.sent(1);
        assert_eq!(h.next_at(), t0 + PERIOD * 2);
        assert_eq!(h.due(t0 + PERIOD * 2, 1), Some(2));
    }

    #[test]
    fn any_other_frame_postpones_the_next_beat_by_a_whole_period() {
        let t0 = Instant::now();
        let mut h = Heartbeat::new(PERIOD, t0);
        let mut frames = 0;
        // Output every second for a minute: no heartbeat at all.
        for s in 1..=60 {
            frames += 3;
            assert_eq!(h.due(t0 + Duration::from_secs(s), frames), None, "a beat at {s} s");
        }
        assert_eq!(h.next_at(), t0 + Duration::from_secs(60) + PERIOD);
        // Then quiet: the beat comes one period after the last frame.
        assert_eq!(h.due(t0 + Duration::from_secs(64), frames), None);
        assert_eq!(h.due(t0 + Duration::from_secs(65), frames), Some(1));
    }
}
