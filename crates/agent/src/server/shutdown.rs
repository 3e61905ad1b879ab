//! Shutdown.

use super::*;

impl Server {
    pub(super) fn exec_pids(&self) -> Vec<libc::pid_t> {
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
pub(super) fn has_children() -> bool {
    // SAFETY: siginfo_t is plain data; waitid with WNOWAIT does not reap.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: info is valid.
    let rc = unsafe { libc::waitid(libc::P_ALL, 0, &mut info, libc::WEXITED | libc::WNOHANG | libc::WNOWAIT) };
    rc == 0
}
