//! Whether a sandbox's process is alive, judged only by facts that cannot
//! drift with the wall clock (an NTP step or a VM resume moves it, and
//! nothing here may then call a live run dead):
//!
//! - [`ProcessIdentity`]: a pid together with its start time in clock ticks
//!   since boot (`/proc/PID/stat` field 22), recorded when the run starts
//!   and compared exactly; a reused pid has another start time;
//! - [`SandboxLock`]: an exclusive `flock` on `sandboxes/NAME/lock`, held by
//!   the sandbox process for its whole life (taken before agent.sock is
//!   bound, released by the kernel when the process ends, however it
//!   ends). Whoever cleans up after a dead run, or removes a sandbox, holds
//!   it meanwhile, so no sandbox process of that sandbox can be starting or
//!   ending at the same time;
//! - pidfds, where one process waits for another (the CLI for its sandbox
//!   process, the sandbox process for its attached CLI).
//!
//! Removing a sandbox (its row, runs, metrics and directory) needs the lock:
//! [`SandboxLock::remove_sandbox`] takes it by value. Who removes an `--rm`
//! sandbox is decided by its owner: the attached CLI that reads the outcome
//! (recorded as a [`ProcessIdentity`]), else the sandbox process at its end;
//! a bystander only once both are provably gone.

use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A process, identified so that a later process with the same pid is never
/// mistaken for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessIdentity {
    /// The pid.
    pub pid: u32,
    /// Its start time in clock ticks since boot (`/proc/PID/stat` field 22).
    pub start_ticks: u64,
}

/// What /proc says about a pid now.
struct ProcStat {
    zombie: bool,
    start_ticks: u64,
}

fn proc_stat(pid: u32) -> Option<ProcStat> {
    if pid == 0 || pid > i32::MAX as u32 {
        return None;
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&stat)
}

/// Parses a `/proc/PID/stat` line: the fields after the parenthesised
/// command name (which may hold spaces and parentheses itself).
fn parse_stat(stat: &str) -> Option<ProcStat> {
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    // Field 22 (starttime) is the 20th after the name.
    let start_ticks = fields.get(19)?.parse().ok()?;
    Some(ProcStat { zombie: matches!(state, 'Z' | 'X' | 'x'), start_ticks })
}

impl ProcessIdentity {
    /// The identity of `pid` now, zombie or not; `None` if there is no such
    /// process.
    pub fn of(pid: u32) -> Option<ProcessIdentity> {
        proc_stat(pid).map(|s| ProcessIdentity { pid, start_ticks: s.start_ticks })
    }

    /// This process.
    pub fn current() -> Option<ProcessIdentity> {
        ProcessIdentity::of(std::process::id())
    }

    /// Whether this very process still runs: the pid exists, is not a
    /// zombie, and started at the same tick.
    pub fn is_alive(&self) -> bool {
        proc_stat(self.pid).is_some_and(|s| !s.zombie && s.start_ticks == self.start_ticks)
    }
}

/// Whether the process of a run recorded with `pid` and `start_ticks` is
/// alive. A run recorded before start ticks were (an older alcove) has only
/// its pid: it counts as alive while that pid exists and is not a zombie,
/// so such a run is never called dead while its process may still run.
pub fn run_process_alive(pid: u32, start_ticks: Option<u64>) -> bool {
    match start_ticks {
        Some(start_ticks) => ProcessIdentity { pid, start_ticks }.is_alive(),
        None => proc_stat(pid).is_some_and(|s| !s.zombie),
    }
}

/// The exclusive lock a sandbox process holds for its whole life.
#[derive(Debug)]
pub struct SandboxLock {
    // The lock lives as long as this open file description.
    _file: File,
    path: PathBuf,
}

/// Why a sandbox could not be removed.
#[derive(Debug, thiserror::Error)]
pub enum RemoveError {
    /// Its records could not be deleted.
    #[error(transparent)]
    Store(#[from] alcove_store::StoreError),
    /// Its directory could not be deleted.
    #[error("removed sandbox {name} but not its directory {path}: {source}")]
    Directory {
        /// The sandbox.
        name: String,
        /// The directory.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
}

impl SandboxLock {
    /// Takes the lock if nobody holds it: `Ok(None)` when a live process
    /// does. Never creates the file (`NotFound`: no sandbox process of this
    /// sandbox has run since it was created, or the sandbox is gone), so a
    /// reaper cannot put a file back into a directory being removed.
    pub fn try_acquire(path: &Path) -> io::Result<Option<SandboxLock>> {
        let file = std::fs::OpenOptions::new().read(true).write(true).open(path)?;
        SandboxLock::lock(file, path)
    }

    /// Takes the lock, waiting up to `wait` for its holder to end; `Ok(None)`
    /// if it still holds it then. Never creates the file, as
    /// [`SandboxLock::try_acquire`].
    pub fn acquire(path: &Path, wait: Duration) -> io::Result<Option<SandboxLock>> {
        SandboxLock::acquire_with(path, wait, false)
    }

    /// [`SandboxLock::acquire`] for the sandbox process itself, which
    /// creates the file (0600) if missing, not its directory.
    pub fn acquire_for_life(path: &Path, wait: Duration) -> io::Result<Option<SandboxLock>> {
        SandboxLock::acquire_with(path, wait, true)
    }

    fn acquire_with(path: &Path, wait: Duration, create: bool) -> io::Result<Option<SandboxLock>> {
        let file = std::fs::OpenOptions::new().read(true).write(true).create(create).mode(0o600).open(path)?;
        let deadline = Instant::now() + wait;
        // A holder that is ending releases within milliseconds; one that
        // runs on keeps it, and the caller gets `None` at the deadline.
        let mut delay = Duration::from_millis(1);
        let mut file = file;
        loop {
            match SandboxLock::lock(file, path)? {
                Some(lock) => return Ok(Some(lock)),
                None => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Ok(None);
                    }
                    std::thread::sleep(delay.min(left));
                    delay = (delay * 2).min(Duration::from_millis(20));
                    file = std::fs::OpenOptions::new().read(true).write(true).open(path)?;
                }
            }
        }
    }

    fn lock(file: File, path: &Path) -> io::Result<Option<SandboxLock>> {
        // SAFETY: flock on a descriptor this function owns.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(Some(SandboxLock { _file: file, path: path.to_path_buf() }));
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            Ok(None)
        } else {
            Err(e)
        }
    }

    /// Deletes sandbox `name`: its row (runs and metrics go with it), then
    /// its directory, this lock file included. Holding the lock proves no
    /// sandbox process of it is alive; a new one for the same name, started
    /// once the row is gone, locks a new file.
    pub fn remove_sandbox(self, store: &alcove_store::Store, name: &str) -> Result<(), RemoveError> {
        let dir = self.path.parent().map(Path::to_path_buf).unwrap_or_default();
        remove_unlocked(store, name, &dir)
    }

    /// Whether a live process holds the lock at `path` (false when the
    /// file does not exist).
    pub fn is_held(path: &Path) -> bool {
        match std::fs::OpenOptions::new().read(true).open(path) {
            // SAFETY: flock on a descriptor owned by `f`; a lock taken here
            // is released when `f` closes at the end of the arm.
            Ok(f) => unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) != 0 },
            Err(_) => false,
        }
    }
}

/// Deletes sandbox `name`'s records, then its directory `dir`, without its
/// lock: only for a sandbox whose lock file does not exist (no sandbox
/// process of it has ever run), or through [`SandboxLock::remove_sandbox`].
pub fn remove_unlocked(store: &alcove_store::Store, name: &str, dir: &Path) -> Result<(), RemoveError> {
    store.delete_sandbox(name)?;
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(RemoveError::Directory { name: name.to_string(), path: dir.to_path_buf(), source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_a_changed_start_is_not() {
        let me = ProcessIdentity::current().expect("own stat");
        assert!(me.is_alive());
        // The same pid with another start tick is another process.
        assert!(!ProcessIdentity { start_ticks: me.start_ticks + 1, ..me }.is_alive());
        assert!(!ProcessIdentity { pid: 0, start_ticks: 0 }.is_alive());
        assert!(run_process_alive(me.pid, Some(me.start_ticks)));
        assert!(run_process_alive(me.pid, None));
        assert!(!run_process_alive(me.pid, Some(me.start_ticks.wrapping_sub(1))));
    }

    #[test]
    fn zombies_are_dead() {
        let mut child = std::process::Command::new("/bin/sh").args(["-c", "exit 0"]).spawn().expect("spawn sh");
        let id = ProcessIdentity::of(child.id()).expect("child exists");
        // Unreaped, the child turns into a zombie with the same identity.
        let deadline = Instant::now() + Duration::from_secs(10);
        while proc_stat(id.pid).is_some_and(|s| !s.zombie) {
            assert!(Instant::now() < deadline, "the child never exited");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(!id.is_alive());
        assert!(!run_process_alive(id.pid, None));
        child.wait().expect("reap");
    }

    #[test]
    fn stat_lines_with_odd_command_names_parse() {
        let line = "42 (a) b (c)) S 1 42 42 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        let s = parse_stat(line).expect("parses");
        assert_eq!(s.start_ticks, 987654);
        assert!(!s.zombie);
        assert!(parse_stat("garbage").is_none());
    }

    #[test]
    fn the_lock_excludes_other_holders_until_dropped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("lock");
        assert!(!SandboxLock::is_held(&path));
        // Only the sandbox process creates the file.
        assert_eq!(SandboxLock::try_acquire(&path).err().map(|e| e.kind()), Some(io::ErrorKind::NotFound));
        let held = SandboxLock::acquire_for_life(&path, Duration::ZERO).expect("lock file").expect("free");
        assert!(SandboxLock::is_held(&path));
        // Another open file description (as another process would have) is refused.
        assert!(SandboxLock::try_acquire(&path).expect("lock file").is_none());
        assert!(SandboxLock::acquire(&path, Duration::from_millis(5)).expect("lock file").is_none());
        drop(held);
        assert!(!SandboxLock::is_held(&path));
        assert!(SandboxLock::acquire(&path, Duration::from_secs(1)).expect("lock file").is_some());
        let gone = dir.path().join("no-such-sandbox").join("lock");
        assert_eq!(SandboxLock::try_acquire(&gone).err().map(|e| e.kind()), Some(io::ErrorKind::NotFound));
    }
}
