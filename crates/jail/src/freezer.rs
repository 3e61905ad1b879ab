//! Pausing a jail: the cgroup freezer, v1 (`freezer.state`) or v2
//! (`cgroup.freeze`).
//!
//! v1: writing `FROZEN` to `freezer.state` starts freezing; the file reads
//! `FREEZING` until every task is stopped, then `FROZEN`. A task the kernel
//! cannot stop yet (in an uninterruptible wait) keeps it `FREEZING`; writing
//! `FROZEN` again retries it. `THAWED` thaws at once.
//!
//! v2: writing `1` to `cgroup.freeze` starts freezing; the cgroup is frozen
//! once `cgroup.events` says `frozen 1`. `0` thaws.
//!
//! Invariants:
//! - [`freeze`] returns `Ok` only once the kernel reports every task of the
//!   cgroup frozen; when it cannot within its budget it thaws the cgroup
//!   again and fails, so a failed pause never leaves a half-frozen jail.
//! - [`thaw`] is idempotent and cheap; whoever kills a jail's processes
//!   thaws afterwards (on v1 a frozen task dies only once thawed).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long [`freeze`] waits for every task to stop.
pub const FREEZE_BUDGET: Duration = Duration::from_secs(2);

/// Why a pause or a resume failed.
#[derive(Debug, thiserror::Error)]
pub enum FreezeError {
    /// The jail has no freezer cgroup (a rootless jail without delegated
    /// cgroups, or a host without a freezer).
    #[error("this sandbox has no freezer cgroup, so it cannot be paused")]
    NoFreezer,
    /// Reading or writing a freezer file failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// The operation.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Some task did not stop within the budget; the cgroup was thawed again.
    #[error("the sandbox's processes did not all stop within {0:?}; it was left running")]
    Timeout(Duration),
}

/// Which freezer interface a cgroup directory has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Interface {
    /// cgroup v1 `freezer.state`.
    V1,
    /// cgroup v2 `cgroup.freeze` / `cgroup.events`.
    V2,
}

impl Interface {
    /// The file written to freeze or thaw.
    pub fn control_file(self) -> &'static str {
        match self {
            Interface::V1 => "freezer.state",
            Interface::V2 => "cgroup.freeze",
        }
    }

    /// The file read to learn whether the cgroup is frozen.
    pub fn state_file(self) -> &'static str {
        match self {
            Interface::V1 => "freezer.state",
            Interface::V2 => "cgroup.events",
        }
    }

    /// What is written to freeze (`true`) or thaw (`false`).
    pub fn request(self, frozen: bool) -> &'static str {
        match (self, frozen) {
            (Interface::V1, true) => "FROZEN",
            (Interface::V1, false) => "THAWED",
            (Interface::V2, true) => "1",
            (Interface::V2, false) => "0",
        }
    }

    /// Whether the state file's text says every task is frozen.
    pub fn is_frozen(self, state: &str) -> bool {
        match self {
            Interface::V1 => state.trim() == "FROZEN",
            Interface::V2 => state.lines().any(|l| {
                let mut words = l.split_whitespace();
                words.next() == Some("frozen") && words.next() == Some("1")
            }),
        }
    }

    /// The interface of an existing cgroup directory, by the files it has.
    pub fn of(dir: &Path) -> Option<Interface> {
        [Interface::V1, Interface::V2].into_iter().find(|i| dir.join(i.control_file()).exists())
    }
}

fn write(path: &Path, value: &str) -> Result<(), FreezeError> {
    fs::write(path, value).map_err(|source| FreezeError::Io { what: "writing", path: path.to_path_buf(), source })
}

fn read(path: &Path) -> Result<String, FreezeError> {
    fs::read_to_string(path).map_err(|source| FreezeError::Io { what: "reading", path: path.to_path_buf(), source })
}

/// Whether the cgroup at `dir` is frozen now.
pub fn is_frozen(dir: &Path, interface: Interface) -> Result<bool, FreezeError> {
    Ok(interface.is_frozen(&read(&dir.join(interface.state_file()))?))
}

/// Freezes every task of the cgroup at `dir` and waits until the kernel says
/// so, for up to `budget`; past it, thaws and fails.
pub fn freeze(dir: &Path, interface: Interface, budget: Duration) -> Result<(), FreezeError> {
    let control = dir.join(interface.control_file());
    let deadline = Instant::now() + budget;
    let mut pause = Duration::from_micros(200);
    write(&control, interface.request(true))?;
    loop {
        match is_frozen(dir, interface) {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => {
                let _ = thaw(dir, interface);
                return Err(e);
            }
        }
        if Instant::now() >= deadline {
            let _ = thaw(dir, interface);
            return Err(FreezeError::Timeout(budget));
        }
        // The kernel offers no wake-up for v1; back off up to 20 ms.
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(20));
        if interface == Interface::V1 {
            // Retries the tasks that could not be stopped at the first write.
            let _ = fs::write(&control, interface.request(true));
        }
    }
}

/// Thaws the cgroup at `dir`. Idempotent.
pub fn thaw(dir: &Path, interface: Interface) -> Result<(), FreezeError> {
    write(&dir.join(interface.control_file()), interface.request(false))
}

/// Thaws `dir` if it has a freezer interface; errors ignored (clean-up
/// paths call it on a cgroup that may be going away).
pub fn thaw_if_any(dir: &Path) {
    if let Some(interface) = Interface::of(dir) {
        let _ = thaw(dir, interface);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_is_frozen_only_when_the_state_says_frozen() {
        assert!(Interface::V1.is_frozen("FROZEN\n"));
        assert!(!Interface::V1.is_frozen("FREEZING\n"));
        assert!(!Interface::V1.is_frozen("THAWED\n"));
    }

    #[test]
    fn v2_is_frozen_only_when_events_say_frozen_1() {
        assert!(Interface::V2.is_frozen("populated 1\nfrozen 1\n"));
        assert!(!Interface::V2.is_frozen("populated 1\nfrozen 0\n"));
        assert!(!Interface::V2.is_frozen("populated 1\n"));
        // Another key ending in "frozen" is not it.
        assert!(!Interface::V2.is_frozen("notfrozen 1\n"));
    }

    #[test]
    fn requests_are_the_kernels_words() {
        assert_eq!(Interface::V1.request(true), "FROZEN");
        assert_eq!(Interface::V1.request(false), "THAWED");
        assert_eq!(Interface::V2.request(true), "1");
        assert_eq!(Interface::V2.request(false), "0");
    }

    /// A directory standing in for a v2 cgroup whose kernel answers at once.
    #[test]
    fn v2_freeze_and_thaw_write_the_control_file_and_read_events() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join("cgroup.freeze"), "0").expect("control");
        fs::write(dir.path().join("cgroup.events"), "populated 1\nfrozen 1\n").expect("events");
        assert_eq!(Interface::of(dir.path()), Some(Interface::V2));
        freeze(dir.path(), Interface::V2, Duration::from_secs(1)).expect("frozen");
        assert_eq!(fs::read_to_string(dir.path().join("cgroup.freeze")).expect("read"), "1");
        thaw(dir.path(), Interface::V2).expect("thaw");
        assert_eq!(fs::read_to_string(dir.path().join("cgroup.freeze")).expect("read"), "0");
    }

    /// A cgroup that never reports frozen is thawed again and the pause fails.
    #[test]
    fn a_freeze_that_never_completes_is_undone() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join("cgroup.freeze"), "0").expect("control");
        fs::write(dir.path().join("cgroup.events"), "populated 1\nfrozen 0\n").expect("events");
        let err = freeze(dir.path(), Interface::V2, Duration::from_millis(30)).expect_err("never frozen");
        assert!(matches!(err, FreezeError::Timeout(_)), "{err}");
        assert_eq!(fs::read_to_string(dir.path().join("cgroup.freeze")).expect("read"), "0", "thawed again");
    }

    #[test]
    fn a_directory_without_freezer_files_has_no_interface() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(Interface::of(dir.path()), None);
        thaw_if_any(dir.path());
        assert!(!dir.path().join("cgroup.freeze").exists(), "nothing created");
    }
}
