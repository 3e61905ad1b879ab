//! Sandbox state as the CLI sees it: the store, the on-disk layout, process
//! liveness and the reaper.
//!
//! Invariants:
//! - Every command that reads sandbox state opens it through [`Ctx::open`],
//!   which runs the reaper first: a run still recorded `Running` whose
//!   process is gone (no such pid, a zombie, or a pid reused by a process
//!   that is not an alcove sandbox process) is finalised with reason
//!   `Crashed`, which marks its sandbox `Crashed`, and its stale socket is
//!   removed.
//! - Sandboxes created with `--rm` are removed once their last run is over
//!   (checked by the same pass); a sandbox with no run yet is never touched,
//!   since another CLI may be starting it.

use super::error::{CliError, CliResult};
use crate::config::SandboxConfig;
use alcove_store::{RunOutcome, RunRecord, RunStatus, SandboxRecord, Store, TerminationReason};
use serde::{Deserialize, Serialize};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// What the CLI keeps next to a sandbox's config (`cli.json`): facts that
/// matter to the CLI only.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct CliMeta {
    /// Remove the sandbox once it has stopped.
    pub auto_remove: bool,
    /// The `--rootfs` argument as given.
    pub rootfs: String,
    /// The `--backend` argument as given.
    pub backend_requested: String,
    /// The command of a `run -d`, run by the supervisor.
    pub detached_command: Option<Vec<String>>,
    /// Whether the detached command has stdin (never: kept for clarity).
    pub interactive: bool,
}

/// The CLI's view of `$ALCOVE_HOME`.
pub struct Ctx {
    /// `$ALCOVE_HOME`.
    pub home: PathBuf,
    /// The database.
    pub store: Store,
}

impl Ctx {
    /// Opens the store of [`alcove_client::paths::alcove_home`] and reaps.
    pub fn open() -> CliResult<Ctx> {
        let ctx = Ctx::open_quiet()?;
        ctx.reap()?;
        Ok(ctx)
    }

    /// Opens the store without reaping.
    pub fn open_quiet() -> CliResult<Ctx> {
        let home = alcove_client::paths::alcove_home();
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&home)
            .map_err(|e| CliError::msg(format!("cannot create {}: {e}", home.display())))?;
        let home = std::fs::canonicalize(&home).unwrap_or(home);
        let store = Store::open(&home.join("alcove.db"))?;
        Ok(Ctx { home, store })
    }

    /// `sandboxes/NAME`.
    pub fn sandbox_dir(&self, name: &str) -> PathBuf {
        self.home.join("sandboxes").join(name)
    }

    /// `sandboxes/NAME/config.json`.
    pub fn config_path(&self, name: &str) -> PathBuf {
        self.sandbox_dir(name).join("config.json")
    }

    /// `sandboxes/NAME/cli.json`.
    pub fn meta_path(&self, name: &str) -> PathBuf {
        self.sandbox_dir(name).join("cli.json")
    }

    /// The sandbox's socket.
    pub fn socket_path(&self, name: &str) -> CliResult<PathBuf> {
        alcove_client::paths::socket_path(&self.home, name).map_err(CliError::from)
    }

    /// The sandbox record, or a "no such sandbox" error.
    pub fn sandbox(&self, name: &str) -> CliResult<SandboxRecord> {
        alcove_client::paths::validate_name(name)?;
        self.store.sandbox(name)?.ok_or_else(|| CliError::msg(format!("no sandbox named {name:?}")))
    }

    /// The newest run, if it is still running.
    pub fn running_run(&self, name: &str) -> CliResult<Option<RunRecord>> {
        match self.store.latest_run(name) {
            Ok(run) => Ok(run.filter(|r| r.status == RunStatus::Running)),
            // Removed meanwhile (the reaper removes finished `--rm` sandboxes):
            // nothing of it is running.
            Err(alcove_store::StoreError::NoSuchSandbox(_)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The CLI metadata of a sandbox (defaults when absent).
    pub fn meta(&self, name: &str) -> CliMeta {
        std::fs::read(self.meta_path(name)).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default()
    }

    /// Writes the CLI metadata.
    pub fn write_meta(&self, name: &str, meta: &CliMeta) -> CliResult<()> {
        let text = serde_json::to_vec_pretty(meta).map_err(|e| CliError::msg(e.to_string()))?;
        self.make_dirs(name)?;
        write_private(&self.meta_path(name), &text, !meta.auto_remove)
    }

    /// Creates `sandboxes/NAME/logs` (0700).
    fn make_dirs(&self, name: &str) -> CliResult<()> {
        let dir = self.sandbox_dir(name);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir.join("logs"))
            .map_err(|e| CliError::msg(format!("cannot create {}: {e}", dir.display())))
    }

    /// Reads the stored sandbox config file.
    pub fn load_config(&self, name: &str) -> CliResult<SandboxConfig> {
        SandboxConfig::load(&self.config_path(name)).map_err(|e| CliError::msg(e.to_string()))
    }

    /// Writes the sandbox config file (0600, in a 0700 directory), fsynced
    /// unless the sandbox is ephemeral (see [`write_private`]).
    pub fn write_config(&self, cfg: &SandboxConfig) -> CliResult<PathBuf> {
        self.make_dirs(&cfg.name)?;
        let text = serde_json::to_vec_pretty(cfg).map_err(|e| CliError::msg(e.to_string()))?;
        let path = self.config_path(&cfg.name);
        write_private(&path, &text, !cfg.guest.ephemeral)?;
        Ok(path)
    }

    /// Finalises runs whose process is gone and removes finished `--rm`
    /// sandboxes.
    pub fn reap(&self) -> CliResult<()> {
        for run in self.store.running_runs()? {
            if run_alive(run.pid, run.started_at_ms) {
                continue;
            }
            let outcome = RunOutcome {
                reason: TerminationReason::Crashed,
                exit_code: None,
                exit_signal: None,
                detail: Some(format!(
                    "the sandbox process (pid {}) is gone without recording how the run ended",
                    run.pid
                )),
            };
            match self.store.finish_run(run.id, &outcome) {
                Ok(()) | Err(alcove_store::StoreError::AlreadyFinished(_)) => {}
                Err(e) => return Err(e.into()),
            }
            if let Ok(sock) = self.socket_path(&run.sandbox) {
                let _ = std::fs::remove_file(sock);
            }
            // A killed sandbox process could not remove its jail's cgroups.
            alcove_jail::cgroup::remove_leftovers(&run.sandbox, run.pid);
        }
        for sb in self.store.sandboxes()? {
            if !self.meta(&sb.name).auto_remove {
                continue;
            }
            if let Some(last) = self.store.latest_run(&sb.name)? {
                if last.status == RunStatus::Terminated {
                    let _ = self.remove(&sb.name);
                }
            }
        }
        Ok(())
    }

    /// Removes a sandbox's row (with its runs and metrics) and its directory.
    pub fn remove(&self, name: &str) -> CliResult<()> {
        self.store.delete_sandbox(name)?;
        let dir = self.sandbox_dir(name);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => {
                Err(CliError::msg(format!("removed sandbox {name} but not its directory {}: {e}", dir.display())))
            }
        }
    }

    /// Waits until the newest run of `name` is no longer running (reaping as
    /// it goes); true if it ended within `timeout`.
    pub fn wait_final(&self, name: &str, timeout: Duration) -> CliResult<bool> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.running_run(name)? {
                None => return Ok(true),
                Some(run) if !run_alive(run.pid, run.started_at_ms) => {
                    // Give the process's own final write a moment to land,
                    // and reap only if it really did not.
                    std::thread::sleep(Duration::from_millis(100));
                    if self.running_run(name)?.is_none() {
                        return Ok(true);
                    }
                    self.reap()?;
                }
                Some(_) => {}
            }
            if Instant::now() >= deadline {
                return Ok(self.running_run(name)?.is_none());
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }
}

/// Writes `data` to `path` with mode 0600 (replacing it atomically).
/// `durable`: fsync before the rename, so a host crash leaves the old or the
/// new content. Files of a sandbox removed when its run ends skip it: they
/// die with the run anyway, and two fsyncs cost 1–3 ms of every
/// `alcove run` (far more while the disk is busy).
pub fn write_private(path: &Path, data: &[u8], durable: bool) -> CliResult<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let err = |e: std::io::Error| CliError::msg(format!("cannot write {}: {e}", path.display()));
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp).map_err(err)?;
    f.write_all(data).map_err(err)?;
    if durable {
        f.sync_all().map_err(err)?;
    }
    std::fs::rename(&tmp, path).map_err(err)
}

/// Whether the process `pid` that started a run at `started_at_ms` is still
/// alive: it exists, is not a zombie, and did not start after the run did
/// (which would make it another process that reused the pid).
pub fn run_alive(pid: u32, started_at_ms: i64) -> bool {
    match proc_info(pid) {
        Some((state, start_ms)) => {
            !matches!(state, 'Z' | 'X' | 'x') && start_ms.is_none_or(|s| s <= started_at_ms + PID_REUSE_SLACK_MS)
        }
        None => false,
    }
}

/// Whether `pid` exists and is not a zombie.
pub fn process_alive(pid: u32) -> bool {
    proc_info(pid).is_some_and(|(state, _)| !matches!(state, 'Z' | 'X' | 'x'))
}

/// Tolerance of the start-time comparison (boot time has a 1 s granularity).
const PID_REUSE_SLACK_MS: i64 = 2000;

/// The state letter and start time (ms since the epoch, when computable) of
/// `pid`, from /proc.
fn proc_info(pid: u32) -> Option<(char, Option<i64>)> {
    if pid == 0 || pid > i32::MAX as u32 {
        return None;
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields follow the parenthesised command name, which may contain spaces.
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    // Field 22 (starttime) is the 20th after the name.
    let start_ticks: Option<i64> = fields.get(19).and_then(|s| s.parse().ok());
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let start_ms = match (start_ticks, boot_time_ms()) {
        (Some(t), Some(boot)) if ticks > 0 => Some(boot + t * 1000 / ticks as i64),
        _ => None,
    };
    Some((state, start_ms))
}

fn boot_time_ms() -> Option<i64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("btime "))?;
    Some(line[6..].trim().parse::<i64>().ok()? * 1000)
}

/// Sends `sig` to `pid`; false if the process does not exist.
pub fn signal(pid: u32, sig: i32) -> bool {
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(pid as libc::pid_t, sig) == 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pids_are_checked_against_the_run_start() {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_millis() as i64;
        assert!(run_alive(std::process::id(), now));
        // A run that started an hour ago cannot belong to this younger process.
        assert!(!run_alive(std::process::id(), now - 3_600_000));
        assert!(!process_alive(0));
        assert!(!process_alive(u32::MAX));
    }

    #[test]
    fn zombies_count_as_dead() {
        let mut child = std::process::Command::new("/bin/sh").args(["-c", "exit 0"]).spawn().expect("spawn sh");
        let pid = child.id();
        // Wait until it has exited but leave it unreaped.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat of an unreaped child");
            if stat.rsplit_once(')').map(|(_, r)| r.trim_start().starts_with('Z')).unwrap_or(false) {
                break;
            }
            assert!(Instant::now() < deadline, "child never became a zombie");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(!process_alive(pid));
        child.wait().expect("reap");
    }
}
