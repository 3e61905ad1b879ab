//! The Metrics actor: one sample per `metrics_interval`, written through Db.
//!
//! A backend that can measure the whole guest (a jail's cgroup) is asked
//! first; otherwise the sandbox process itself is sampled from /proc/self,
//! which for krun is the VMM and its guest memory.

use crate::actors::db::DbActor;
use crate::actors::network::AttachNetCounters;
use crate::messages::{AttachControl, DbInsertMetric};
use crate::store::MetricSample;
use actix::prelude::*;
use alcove_backend::{GuestControl, GuestUsage};
use std::sync::Arc;
use std::time::Duration;

/// Samples usage.
pub struct Metrics {
    sandbox: String,
    interval: Duration,
    db: Addr<DbActor>,
    control: Option<Arc<dyn GuestControl>>,
    /// The network engine's counters, when the sandbox has a link.
    network: Option<Arc<alcove_net::Counters>>,
}

impl Metrics {
    /// A sampler for `sandbox`.
    pub fn new(sandbox: String, interval: Duration, db: Addr<DbActor>) -> Metrics {
        Metrics { sandbox, interval, db, control: None, network: None }
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
}

impl Actor for Metrics {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        if self.interval.is_zero() {
            return;
        }
        ctx.run_interval(self.interval, |this, _| {
            let sample = this.sample();
            this.db.do_send(DbInsertMetric { sandbox: this.sandbox.clone(), sample });
        });
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
}
