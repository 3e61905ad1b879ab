//! Hostile clients and guests at scale, on the standalone sandbox process
//! (`alcove sandbox`, the bench build, with the mock guest inside it):
//!
//! - *crowd*: 124 good clients each read 2 000 numbered lines (`lines 2000`,
//!   one frame per line) at once and check every line, in order; with and
//!   without the four hostile clients of tests/hostile.rs beside them (one
//!   sends garbage, one never reads a 64 MiB stream, one floods 32 MiB of
//!   stdin into a `cat` it never reads, one disconnects mid-session). The
//!   time is from the first connect to the last line of the last client.
//! - *memory*: the sandbox process's resident set (`VmRSS`, and its peak
//!   `VmHWM`) idle, with clients that never read a stream, with a guest that
//!   ignores flow control, and after the crowd rounds.
//!
//! `cargo bench --bench hostile [-- ROUNDS]` (default 10 rounds per crowd
//! case). Prints Markdown tables for BENCHMARKS.md. Timed with the wall
//! clock, sleeps where a stall must settle: figures, not assertions (the
//! assertions are in tests/hostile.rs).

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/common/crowd.rs"]
mod crowd;
#[path = "../tests/common/process.rs"]
mod process;

use common::RawClient;
use std::path::PathBuf;
use std::process::Child;
use std::time::Duration;

const GOOD_CLIENTS: usize = 124;
const LINES: usize = 2000;

struct Sandbox {
    dir: tempfile::TempDir,
    child: Child,
}

impl Sandbox {
    fn start() -> Sandbox {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = serde_json::json!({
            "name": "bench",
            "home": dir.path().join("home"),
            "backend": "mock",
            "socket_path": dir.path().join("run/b.sock"),
            "mock": { "heartbeat_interval_ms": 1000 },
            "policy": { "drain_timeout": 2000, "shutdown_grace": 100, "metrics_interval": 0 }
        });
        let child = process::spawn_sandbox(dir.path(), &cfg);
        let s = Sandbox { dir, child };
        // Ready once a client gets its handshake.
        drop(RawClient::connect(&s.socket()));
        s
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("run/b.sock")
    }

    /// (VmRSS, VmHWM) in MiB.
    fn memory(&self) -> (f64, f64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).expect("status");
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
                .expect("a field of /proc/PID/status")
                / 1024.0
        };
        (field("VmRSS:"), field("VmHWM:"))
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        // SAFETY: signals our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        process::wait_exit(&mut self.child, Duration::from_secs(30));
    }
}

fn summary(xs: &mut [Duration]) -> String {
    xs.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    format!("{:.0} | {:.0} | {:.0}", ms(xs[0]), ms(xs[xs.len() / 2]), ms(xs[xs.len() - 1]))
}

fn settle() {
    std::thread::sleep(Duration::from_secs(2));
}

fn main() {
    let rounds: usize = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(10);

    let s = Sandbox::start();
    let (idle, _) = s.memory();
    let mut alone = Vec::new();
    let mut beside = Vec::new();
    for _ in 0..rounds {
        alone.push(crowd::good_clients(&s.socket(), GOOD_CLIENTS, LINES));
        let hostiles = crowd::start_hostiles(&s.socket());
        beside.push(crowd::good_clients(&s.socket(), GOOD_CLIENTS, LINES));
        drop(hostiles);
    }
    let (_, crowd_peak) = s.memory();
    drop(s);
    println!("| crowd ({GOOD_CLIENTS} clients × {LINES} lines, {rounds} rounds) | min ms | median ms | max ms |");
    println!("|---|---|---|---|");
    println!("| alone | {} |", summary(&mut alone));
    println!("| beside the 4 hostile clients | {} |", summary(&mut beside));
    println!();

    let mut rows = vec![("idle, ready".to_string(), idle, idle)];
    rows.push(("after the crowd rounds (peak)".into(), crowd_peak, crowd_peak));

    // One client, a 1 GiB stream it does not read (for 2 s), then reads.
    let s = Sandbox::start();
    let mut c = RawClient::connect(&s.socket());
    let id = c.range.id_start;
    c.exec(id, &["stream", &(1u64 << 30).to_string()], false);
    settle();
    let (rss, _) = s.memory();
    let (out, _) = c.collect(id);
    assert_eq!(out.len(), 1 << 30);
    let (_, hwm) = s.memory();
    rows.push(("1 client, 1 GiB stream unread for 2 s, then read".into(), rss, hwm));
    drop(c);
    drop(s);

    // 127 clients, each a 64 MiB stream it does not read.
    let s = Sandbox::start();
    let clients: Vec<RawClient> = (0..127)
        .map(|_| {
            let mut c = RawClient::connect(&s.socket());
            let id = c.range.id_start;
            c.exec(id, &["stream", &(64u64 << 20).to_string()], false);
            c
        })
        .collect();
    settle();
    let (rss, hwm) = s.memory();
    rows.push(("127 clients, each a 64 MiB stream unread".into(), rss, hwm));
    drop(clients);
    drop(s);

    // A guest that ignores flow control: 1 GiB to a client that does not
    // read (the relay drops the client; the rest is discarded).
    let s = Sandbox::start();
    let mut c = RawClient::connect(&s.socket());
    let id = c.range.id_start;
    c.exec(id, &["flood", &(1u64 << 30).to_string()], false);
    settle();
    let (rss, _) = s.memory();
    assert!(c.closed(), "the relay did not drop the flooded client");
    let (_, hwm) = s.memory();
    rows.push(("guest ignoring flow control, 1 GiB to an unread client".into(), rss, hwm));
    drop(s);

    println!("| sandbox process memory | VmRSS MiB | VmHWM MiB |");
    println!("|---|---|---|");
    for (what, rss, hwm) in rows {
        println!("| {what} | {rss:.1} | {hwm:.1} |");
    }
}
