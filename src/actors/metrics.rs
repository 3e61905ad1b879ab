//! The Metrics actor: samples usage at an adaptive rate and writes the
//! samples through Db in batches.
//!
//! A backend that can measure the whole guest (a jail's cgroup) is asked
//! first; otherwise the sandbox process itself is sampled from /proc/self,
//! which for krun is the VMM and its guest memory.
//!
//! Idle must cost next to nothing ([`Schedule`]): while consecutive samples
//! show the guest busy, one is taken every `metrics_interval`; while they
//! show it quiet, the gap doubles up to [`IDLE_STRETCH`] intervals. Samples
//! are written in one transaction per batch: the first sample of the run at
//! once (so `alcove metrics` shows something); while the guest is busy,
//! whenever the oldest unwritten sample is [`FLUSH_AFTER`] intervals old
//! (so the first busy sample after a quiet stretch is written at once);
//! while it is quiet, every [`IDLE_BATCH`] samples (about 8.5 minutes). A
//! write costs the database thread far more than a sample, so a thousand
//! idle sandboxes must not write one every 64 s each. Samples
//! still unwritten when the run starts to end are dropped with the queue
//! (see the Db actor): a sample is worth less than the run's final write.

use crate::actors::network::AttachNetCounters;
use crate::messages::{AttachControl, DbInsertMetrics};
use crate::store::MetricSample;
use actix::prelude::*;
use alcove_backend::{GuestControl, GuestUsage};
use std::sync::Arc;
use std::time::Duration;

/// The longest gap between two samples of a quiet guest, in intervals.
pub const IDLE_STRETCH: u32 = 64;
/// A busy guest's batch is written once its oldest sample is this many
/// intervals old.
pub const FLUSH_AFTER: u32 = 5;
/// A quiet guest's batch is written once it holds this many samples.
pub const IDLE_BATCH: usize = 8;

/// When to sample and when to write: a pure function of the samples.
#[derive(Debug)]
pub struct Schedule {
    base: Duration,
    gap: Duration,
    last: Option<MetricSample>,
    batch: Vec<MetricSample>,
    written_any: bool,
}

impl Schedule {
    /// A schedule sampling every `base` while busy.
    pub fn new(base: Duration) -> Schedule {
        Schedule { base, gap: base, last: None, batch: Vec::new(), written_any: false }
    }

    /// Takes a sample; returns the batch to write now (if any) and the gap
    /// until the next sample.
    pub fn on_sample(&mut self, sample: MetricSample) -> (Option<Vec<MetricSample>>, Duration) {
        let quiet = self.last.as_ref().is_some_and(|prev| is_quiet(prev, &sample));
        self.gap = if quiet { (self.gap * 2).min(self.base * IDLE_STRETCH) } else { self.base };
        self.last = Some(sample);
        self.batch.push(sample);
        let oldest = self.batch[0].at_ms;
        let age = Duration::from_millis(sample.at_ms.saturating_sub(oldest) as u64);
        let due = !self.written_any || self.batch.len() >= IDLE_BATCH || (!quiet && age >= self.base * FLUSH_AFTER);
        if due {
            self.written_any = true;
            (Some(std::mem::take(&mut self.batch)), self.gap)
        } else {
            (None, self.gap)
        }
    }

    /// The samples not written yet.
    pub fn take_pending(&mut self) -> Vec<MetricSample> {
        std::mem::take(&mut self.batch)
    }
}

/// Whether nothing worth a closer look happened between two samples: under
/// 0.5 % of a CPU, memory within 1 MiB, under 64 KiB of disk and network I/O.
fn is_quiet(prev: &MetricSample, next: &MetricSample) -> bool {
    let elapsed_us = (next.at_ms.saturating_sub(prev.at_ms).max(1) as u64) * 1000;
    let cpu = next.cpu_usec.saturating_sub(prev.cpu_usec);
    let io = next.io_read_bytes.abs_diff(prev.io_read_bytes)
        + next.io_write_bytes.abs_diff(prev.io_write_bytes)
        + next.net_rx_bytes.abs_diff(prev.net_rx_bytes)
        + next.net_tx_bytes.abs_diff(prev.net_tx_bytes);
    cpu * 200 <= elapsed_us && next.memory_bytes.abs_diff(prev.memory_bytes) < 1 << 20 && io < 64 << 10
}

/// Samples usage.
pub struct Metrics {
    sandbox: String,
    interval: Duration,
    /// Db: the samples.
    db: Recipient<DbInsertMetrics>,
    control: Option<Arc<dyn GuestControl>>,
    /// The network engine's counters, when the sandbox has a link.
    network: Option<Arc<alcove_net::Counters>>,
    schedule: Schedule,
}

impl Metrics {
    /// A sampler for `sandbox`.
    pub fn new(sandbox: String, interval: Duration, db: Recipient<DbInsertMetrics>) -> Metrics {
        Metrics { sandbox, interval, db, control: None, network: None, schedule: Schedule::new(interval) }
    }

    fn sample(&self) -> MetricSample {
        let usage = self.control.as_ref().and_then(|c| c.usage()).unwrap_or_else(process_usage);
        // The guest's view: it receives what the engine sends it.
        let net = self.network.as_ref().map(|c| c.snapshot()).unwrap_or_default();
        MetricSample {
            at_ms: now_ms(),
            cpu_usec: usage.cpu_usec,
            memory_bytes: usage.memory_bytes,
            io_read_bytes: usage.io_read_bytes,
            io_write_bytes: usage.io_write_bytes,
            net_rx_bytes: net.tx_bytes,
            net_tx_bytes: net.rx_bytes,
        }
    }

    fn write(&self, samples: Vec<MetricSample>) {
        if !samples.is_empty() {
            self.db.do_send(DbInsertMetrics { sandbox: self.sandbox.clone(), samples });
        }
    }

    fn next_sample_in(&mut self, gap: Duration, ctx: &mut Context<Self>) {
        // An exact sleep: an idle sandbox's long gaps wake it once each.
        ctx.spawn(crate::clock::sleep_exact(gap).into_actor(self).map(|(), this, ctx| {
            let sample = this.sample();
            let (batch, gap) = this.schedule.on_sample(sample);
            if let Some(batch) = batch {
                this.write(batch);
            }
            this.next_sample_in(gap, ctx);
        }));
    }
}

impl Actor for Metrics {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        if self.interval.is_zero() {
            return;
        }
        self.next_sample_in(self.interval, ctx);
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        let pending = self.schedule.take_pending();
        self.write(pending);
    }
}

impl Handler<AttachControl> for Metrics {
    type Result = ();

    fn handle(&mut self, msg: AttachControl, _: &mut Self::Context) {
        self.control = Some(msg.control);
    }
}

impl Handler<AttachNetCounters> for Metrics {
    type Result = ();

    fn handle(&mut self, msg: AttachNetCounters, _: &mut Self::Context) {
        self.network = Some(msg.0);
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Usage of this process from /proc/self; zeros where a file is unreadable.
pub fn process_usage() -> GuestUsage {
    let mut usage = GuestUsage::default();
    if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
        // Fields after the parenthesised command name; utime and stime are
        // the 14th and 15th fields of the whole line.
        if let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) {
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let ticks: u64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
                + fields.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            // SAFETY: sysconf has no preconditions.
            let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
            usage.cpu_usec = ticks * 1_000_000 / hz;
        }
    }
    if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
        usage.memory_bytes = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
            .unwrap_or(0);
    }
    if let Ok(io) = std::fs::read_to_string("/proc/self/io") {
        for line in io.lines() {
            let value = |p: &str| line.strip_prefix(p).and_then(|v| v.trim().parse::<u64>().ok());
            if let Some(v) = value("read_bytes:") {
                usage.io_read_bytes = v;
            }
            if let Some(v) = value("write_bytes:") {
                usage.io_write_bytes = v;
            }
        }
    }
    usage
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_usage_sees_this_process() {
        let u = process_usage();
        assert!(u.memory_bytes > 1024 * 1024, "rss {}", u.memory_bytes);
    }

    fn at(ms: i64, cpu_usec: u64) -> MetricSample {
        MetricSample { at_ms: ms, cpu_usec, memory_bytes: 100 << 20, ..MetricSample::default() }
    }

    #[test]
    fn a_quiet_guest_is_sampled_ever_more_rarely_up_to_the_stretch() {
        let base = Duration::from_secs(1);
        let mut s = Schedule::new(base);
        let mut t = 0;
        let mut gaps = Vec::new();
        for _ in 0..10 {
            let (_, gap) = s.on_sample(at(t, 5));
            gaps.push(gap.as_secs());
            t += gap.as_millis() as i64;
        }
        assert_eq!(gaps, [1, 2, 4, 8, 16, 32, 64, 64, 64, 64]);
        // Work starts: back to the base rate at once.
        let (_, gap) = s.on_sample(at(t, 5 + 500_000));
        assert_eq!(gap, base);
    }

    #[test]
    fn the_first_sample_is_written_at_once_then_in_batches() {
        let base = Duration::from_secs(1);
        let mut s = Schedule::new(base);
        // Busy: one sample a second, 10 % of a CPU.
        let mut written = Vec::new();
        for i in 0..12 {
            let (batch, gap) = s.on_sample(at(i * 1000, i as u64 * 100_000));
            assert_eq!(gap, base);
            if let Some(b) = batch {
                written.push(b.iter().map(|m| m.at_ms / 1000).collect::<Vec<_>>());
            }
        }
        assert_eq!(written, [vec![0], vec![1, 2, 3, 4, 5, 6]]);
        // The rest waits for its batch (or the actor's end).
        assert_eq!(s.take_pending().iter().map(|m| m.at_ms / 1000).collect::<Vec<_>>(), [7, 8, 9, 10, 11]);
    }

    #[test]
    fn an_hour_of_idle_is_a_handful_of_writes() {
        let base = Duration::from_secs(1);
        let mut s = Schedule::new(base);
        let (mut t, mut samples, mut writes) = (0i64, 0, 0);
        while t < 3_600_000 {
            let (batch, gap) = s.on_sample(at(t, 7));
            samples += 1;
            writes += usize::from(batch.is_some());
            t += gap.as_millis() as i64;
        }
        // 3600 samples and writes before; now a sample a minute and a
        // write every eight samples once settled.
        assert!(samples <= 64 && writes <= 9, "{samples} samples, {writes} writes");
        // Work starts: the quiet samples and the busy one are written at once.
        let (batch, _) = s.on_sample(at(t, 7 + 5_000_000));
        assert!(batch.is_some_and(|b| b.len() >= 2), "the first busy sample after a quiet stretch waited");
    }
}
