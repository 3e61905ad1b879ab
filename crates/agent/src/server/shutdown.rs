//! Signals, shutdown and the agent's own exit.
//!
//! A shutdown (the host's `Shutdown`, a SIGTERM/SIGINT, lost framing, a
//! failing loop) sends SIGTERM to every command's process group (and, as
//! PID 1, to every process of the namespace), waits the grace, sends
//! SIGKILL to what is left, then lets final frames drain for at most
//! [`FINAL_DRAIN`] before the loop returns.
//!
//! Invariants:
//! - SIGCHLD is blocked in every thread and read from the signalfd; all
//!   children (sessions and re-parented orphans) are reaped with
//!   `waitpid(-1, WNOHANG)` and matched to sessions by pid.
//! - A shutdown begins once; later requests (another grace) change nothing.
//! - Once shutting down, no new session starts (exec and file requests are
//!   refused with an error).
//! - When the grace ends, file sessions still open end with a terminal
//!   error (an upload cut short is discarded), as commands get SIGKILL.

use super::session::Kind;
use super::Server;
use crate::sys;
use std::time::{Duration, Instant};

/// Grace used when the agent must shut down on its own (lost framing, SIGTERM).
pub const DEFAULT_GRACE_MS: u32 = 2000;
/// How long final frames may take to drain after the last SIGKILL.
pub(super) const FINAL_DRAIN: Duration = Duration::from_secs(2);

/// A shutdown in progress.
#[derive(Debug)]
pub(super) struct ShutdownState {
    /// When the grace ends and SIGKILL follows.
    pub(super) kill_at: Instant,
    /// When SIGKILL was sent (or nothing was left to kill).
    pub(super) killed_at: Option<Instant>,
}

impl Server {
    /// Reads the signalfd: SIGCHLD reaps, SIGTERM and SIGINT begin a shutdown.
    pub(super) fn handle_signals(&mut self) {
        let signals = match sys::read_signals(self.sigfd.raw()) {
            Ok(s) => s,
            Err(e) => {
                log!("reading the signalfd failed: {e}");
                Vec::new()
            }
        };
        let mut chld = false;
        for sig in signals {
            match sig as libc::c_int {
                libc::SIGCHLD => chld = true,
                libc::SIGTERM | libc::SIGINT => {
                    log!("received signal {sig}; shutting down");
                    self.begin_shutdown(DEFAULT_GRACE_MS);
                }
                _ => {}
            }
        }
        if chld {
            self.reap();
        }
    }

    fn exec_pids(&self) -> Vec<libc::pid_t> {
        self.sessions
            .values()
            .filter_map(|s| match &s.kind {
                Kind::Exec(e) if e.exit.is_none() => Some(e.pid),
                _ => None,
            })
            .collect()
    }

    pub(super) fn kill_everything(&mut self, sig: libc::c_int) {
        for pid in self.exec_pids() {
            let _ = sys::kill(-pid, sig);
        }
        if self.cfg.pid1 {
            // Every process of the namespace except this one.
            let _ = sys::kill(-1, sig);
        }
    }

    pub(super) fn begin_shutdown(&mut self, grace_ms: u32) {
        if self.shutdown.is_some() {
            return;
        }
        log!("shutdown requested (grace {grace_ms} ms, {} sessions)", self.sessions.len());
        self.shutdown = Some(ShutdownState {
            kill_at: Instant::now() + Duration::from_millis(u64::from(grace_ms)),
            killed_at: None,
        });
        self.kill_everything(libc::SIGTERM);
    }

    pub(super) fn progress_shutdown(&mut self) {
        let now = Instant::now();
        let nothing_left = self.exec_pids().is_empty() && (!self.cfg.pid1 || !has_children());
        let Some(sd) = &mut self.shutdown else { return };
        if sd.killed_at.is_none() && (now >= sd.kill_at || nothing_left) {
            sd.killed_at = Some(now);
            if !nothing_left {
                log!("grace over; killing what is left");
                self.kill_everything(libc::SIGKILL);
            }
            self.abort_file_sessions();
        }
    }

    /// Ends every file session with a terminal error when the grace is
    /// over, as commands get SIGKILL then: an upload cut short is
    /// discarded, and no session is left for the final drain to wait on.
    fn abort_file_sessions(&mut self) {
        let open: Vec<u32> = self
            .sessions
            .ids()
            .into_iter()
            .filter(|id| {
                self.sessions.get(id).is_some_and(|s| matches!(s.kind, Kind::Read(_) | Kind::Write(_) | Kind::Pending))
            })
            .collect();
        for id in open {
            self.abort_session(id, "the sandbox is shutting down");
        }
    }

    pub(super) fn shutdown_complete(&self) -> bool {
        let Some(ShutdownState { killed_at: Some(t), .. }) = &self.shutdown else { return false };
        self.sessions.is_empty() || Instant::now() >= *t + FINAL_DRAIN
    }

    pub(super) fn wait_children(&mut self, limit: Duration) {
        let end = Instant::now() + limit;
        while has_children() && Instant::now() < end {
            sys::reap_all();
            std::thread::sleep(Duration::from_millis(5));
        }
        sys::reap_all();
    }
}

/// Whether the process has any child left (running or not yet reaped).
fn has_children() -> bool {
    // SAFETY: siginfo_t is plain data; waitid with WNOWAIT does not reap.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: info is valid.
    let rc = unsafe { libc::waitid(libc::P_ALL, 0, &mut info, libc::WEXITED | libc::WNOHANG | libc::WNOWAIT) };
    rc == 0
}
