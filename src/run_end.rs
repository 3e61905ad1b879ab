//! How a run ends: one value ([`RunEnd`]) and one way to make it final
//! ([`finish`]), used by everything that ends a run:
//!
//! | who | when | end |
//! |---|---|---|
//! | Lifecycle (`actors/lifecycle.rs`, through the Db actor) | the guest ended or never started | [`RunEnd::decide`] |
//! | the exit observer's last resort (`sandbox.rs`) | the actors did not finalise within the exit budget | [`RunEnd::internal_error`] |
//! | the CLI after a failed start (`cli/launch.rs`) | the sandbox process died before recording its end | [`RunEnd::internal_error`] |
//! | the CLI's forced stop (`cli/launch.rs`) | the sandbox process overran its exit budget and was killed | [`RunEnd::killed_by_cli`] |
//! | the reaper (`cli/state.rs`) | a run is still Running but its process is gone | [`RunEnd::crashed`] |
//!
//! Invariants of [`finish`]:
//! - The run's end is written before anything is removed, so a process
//!   killed in between leaves a socket file behind its committed end, which
//!   the CLI's reaper reads as "an end that did not finish" and completes.
//! - What a dead sandbox process left on the host (a jail's cgroups) goes
//!   before agent.sock: the socket stays as that mark while any leftover does.
//! - The clean-up runs whether or not the write succeeded (a run still
//!   Running with a dead process is found by the reaper without its
//!   socket), but not when the run no longer exists: its sandbox was
//!   removed by someone else, whose clean-up it is.

use crate::messages::Terminate;
use crate::store::{RunId, RunOutcome, Store, StoreError, TerminationReason};
use alcove_backend::GuestExit;
use std::path::{Path, PathBuf};

/// How a run ended: the reason, the guest's exit code or the signal that
/// killed it, and a detail line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunEnd {
    /// Why the run ended.
    pub reason: TerminationReason,
    /// The guest's exit code, when it exited by itself.
    pub exit_code: Option<i32>,
    /// The signal that killed the guest (or, for the CLI's forced stop, the
    /// sandbox process).
    pub exit_signal: Option<i32>,
    /// Free-form detail.
    pub detail: Option<String>,
}

impl RunEnd {
    /// The end Lifecycle decides: the first termination cause if there was
    /// one, else the guest's own exit (code 0 Completed, any other code or
    /// a signal Failed, neither InternalError). The cause's and the exit's
    /// details are joined.
    pub fn decide(cause: Option<Terminate>, exit: Option<&GuestExit>) -> RunEnd {
        let (exit_code, exit_signal) = exit.map_or((None, None), |e| (e.code, e.signal));
        let cause = cause.unwrap_or_else(|| match (exit_code, exit_signal) {
            (Some(0), _) => Terminate { reason: TerminationReason::Completed, detail: None, force: false },
            (Some(code), _) => Terminate::new(TerminationReason::Failed, format!("the guest exited with code {code}")),
            (None, Some(signal)) => {
                Terminate::new(TerminationReason::Failed, format!("the guest was killed by signal {signal}"))
            }
            (None, None) => Terminate::new(TerminationReason::InternalError, "the guest ended without an exit code"),
        });
        let detail = match (cause.detail, exit.and_then(|e| e.detail.clone())) {
            (Some(a), Some(b)) => Some(format!("{a}; {b}")),
            (a, b) => a.or(b),
        };
        RunEnd { reason: cause.reason, exit_code, exit_signal, detail }
    }

    /// alcove itself failed to end the run in order (`detail` says how);
    /// the guest's exit, if it had one, is kept.
    pub fn internal_error(exit: Option<&GuestExit>, detail: impl Into<String>) -> RunEnd {
        RunEnd {
            reason: TerminationReason::InternalError,
            exit_code: exit.and_then(|e| e.code),
            exit_signal: exit.and_then(|e| e.signal),
            detail: Some(detail.into()),
        }
    }

    /// The run's sandbox process (`pid`) is gone without recording its end.
    pub fn crashed(pid: u32) -> RunEnd {
        RunEnd {
            reason: TerminationReason::Crashed,
            exit_code: None,
            exit_signal: None,
            detail: Some(format!("the sandbox process (pid {pid}) is gone without recording how the run ended")),
        }
    }

    /// The CLI killed a sandbox process that did not stop when asked.
    pub fn killed_by_cli() -> RunEnd {
        RunEnd {
            reason: TerminationReason::Signal,
            exit_code: None,
            exit_signal: Some(libc::SIGKILL),
            detail: Some("the sandbox process did not stop when asked and was killed".into()),
        }
    }

    /// The record's columns.
    fn record(&self) -> RunOutcome {
        RunOutcome {
            reason: self.reason,
            exit_code: self.exit_code,
            exit_signal: self.exit_signal,
            detail: self.detail.clone(),
        }
    }
}

/// What [`finish`] writes: `end` into run `run` of `store`.
#[derive(Clone, Copy, Debug)]
pub struct Write<'a> {
    /// The database.
    pub store: &'a Store,
    /// The run row.
    pub run: RunId,
    /// How it ended.
    pub end: &'a RunEnd,
}

/// What [`finish`] removes once the run's end is written.
#[derive(Clone, Debug, Default)]
pub struct Cleanup {
    /// What a dead sandbox process may have left on the host (e.g. a jail's
    /// cgroups); removed first.
    pub leftovers: Option<Leftovers>,
    /// agent.sock; `None` when the caller removes it later (the standalone
    /// process, as its last act) or it is not ours.
    pub socket: Option<PathBuf>,
}

/// The leftovers of sandbox `sandbox`'s process `pid`, and the backend that
/// knows how to remove them (see [`crate::backends::remove_leftovers`]).
#[derive(Clone, Debug)]
pub struct Leftovers {
    /// The backend that ran the guest, with its settings; `None` when its
    /// configuration is gone (every backend then looks).
    pub backend: Option<crate::config::BackendConfig>,
    /// The sandbox's name.
    pub sandbox: String,
    /// The dead sandbox process.
    pub pid: u32,
}

/// What became of the write of [`finish`].
#[derive(Debug)]
pub enum Recorded {
    /// This call wrote the run's end.
    Now,
    /// The run was already ended (by its own process at the last moment,
    /// or by another CLI).
    Before,
    /// The run or its sandbox no longer exists: nothing was removed.
    Gone,
    /// There was no run row, or no database, to write: only the clean-up ran.
    NoRun,
    /// The write failed; the clean-up still ran.
    Failed(StoreError),
}

impl Recorded {
    /// Whether the run is recorded as ended (by this call or before it).
    pub fn is_final(&self) -> bool {
        matches!(self, Recorded::Now | Recorded::Before)
    }
}

/// Makes the run's end final: performs `write` (when there is a run row
/// to write), then removes what `cleanup` names — leftovers first,
/// agent.sock once none is left. See the module docs for the invariants.
pub fn finish(write: Option<Write<'_>>, cleanup: &Cleanup) -> Recorded {
    let recorded = match write {
        Some(w) => match w.store.finish_run(w.run, &w.end.record()) {
            Ok(()) => Recorded::Now,
            Err(StoreError::AlreadyFinished(_)) => Recorded::Before,
            Err(StoreError::NoSuchRun(_) | StoreError::NoSuchSandbox(_)) => return Recorded::Gone,
            Err(e) => Recorded::Failed(e),
        },
        None => Recorded::NoRun,
    };
    if matches!(recorded, Recorded::Now) {
        crate::kill_point!("sandbox-after-run-end");
    }
    let leftovers_gone = cleanup
        .leftovers
        .as_ref()
        .is_none_or(|l| crate::backends::remove_leftovers(l.backend.as_ref(), &l.sandbox, l.pid));
    if let (true, Some(socket)) = (leftovers_gone, &cleanup.socket) {
        remove_socket(socket);
    }
    recorded
}

impl crate::config::Outcome {
    /// The outcome published for `end`; `recorded` when its write is final.
    pub fn of(end: RunEnd, recorded: bool) -> crate::config::Outcome {
        crate::config::Outcome {
            reason: end.reason,
            exit_code: end.exit_code,
            exit_signal: end.exit_signal,
            detail: end.detail,
            recorded,
        }
    }
}

/// Removes agent.sock (a missing file is fine).
pub fn remove_socket(path: &Path) {
    if let Err(e) = std::fs::remove_file(path) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove agent.sock");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guest_exit_decides_when_no_cause_came_first() {
        let end = RunEnd::decide(None, Some(&GuestExit::exited(0)));
        assert_eq!(
            (end.reason, end.exit_code, end.exit_signal, end.detail),
            (TerminationReason::Completed, Some(0), None, None)
        );
        let end = RunEnd::decide(None, Some(&GuestExit::exited(3)));
        assert_eq!((end.reason, end.exit_code), (TerminationReason::Failed, Some(3)));
        let end = RunEnd::decide(None, Some(&GuestExit::killed(9)));
        assert_eq!((end.reason, end.exit_code, end.exit_signal), (TerminationReason::Failed, None, Some(9)));
        assert_eq!(end.detail.as_deref(), Some("the guest was killed by signal 9"));
        let end = RunEnd::decide(None, None);
        assert_eq!(end.reason, TerminationReason::InternalError);
    }

    #[test]
    fn a_cause_wins_and_the_details_are_joined() {
        let cause = Terminate::new(TerminationReason::IdleTimeout, "idle");
        let end = RunEnd::decide(Some(cause), Some(&GuestExit::exited(255).with_detail("odd")));
        assert_eq!((end.reason, end.exit_code), (TerminationReason::IdleTimeout, Some(255)));
        assert_eq!(end.detail.as_deref(), Some("idle; odd"));
    }

    fn store_with_run(dir: &Path) -> (Store, RunId) {
        let store = Store::open(&dir.join("alcove.db")).expect("store");
        store.upsert_sandbox("s", "{}").expect("sandbox");
        let run = store.start_run_of("s", 1, None).expect("run");
        (store, run)
    }

    #[test]
    fn finish_writes_before_it_removes_the_socket_and_tells_what_happened() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, run) = store_with_run(dir.path());
        let socket = dir.path().join("agent.sock");
        std::fs::write(&socket, b"").expect("socket stand-in");
        let cleanup = Cleanup { leftovers: None, socket: Some(socket.clone()) };
        let end = RunEnd::decide(None, Some(&GuestExit::killed(9)));
        assert!(matches!(finish(Some(Write { store: &store, run, end: &end }), &cleanup), Recorded::Now));
        assert!(!socket.exists());
        let row = store.latest_run("s").expect("query").expect("run");
        assert_eq!((row.reason, row.exit_code, row.exit_signal), (Some(TerminationReason::Failed), None, Some(9)));
        // A second end does not replace the first, and still cleans up.
        std::fs::write(&socket, b"").expect("socket stand-in");
        assert!(matches!(
            finish(Some(Write { store: &store, run, end: &RunEnd::crashed(1) }), &cleanup),
            Recorded::Before
        ));
        assert!(!socket.exists());
        assert_eq!(store.latest_run("s").expect("query").expect("run").reason, Some(TerminationReason::Failed));
    }

    #[test]
    fn a_run_that_is_gone_is_not_cleaned_up_after() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, run) = store_with_run(dir.path());
        store.delete_sandbox("s").expect("removed");
        let socket = dir.path().join("agent.sock");
        std::fs::write(&socket, b"").expect("socket stand-in");
        let cleanup = Cleanup { leftovers: None, socket: Some(socket.clone()) };
        assert!(matches!(
            finish(Some(Write { store: &store, run, end: &RunEnd::crashed(1) }), &cleanup),
            Recorded::Gone
        ));
        assert!(socket.exists());
        // Without a run, only the clean-up runs.
        assert!(matches!(finish(None, &cleanup), Recorded::NoRun));
        assert!(!socket.exists());
    }
}
