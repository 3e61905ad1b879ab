//! Sandbox state as the CLI sees it: the store, the on-disk layout and the
//! reaper.
//!
//! Invariants:
//! - Every command that reads sandbox state opens it through [`Ctx::open`]
//!   (`ps`: every sandbox) or [`Ctx::open_for`] (a command that names its
//!   sandboxes: only those, so its cost does not grow with the number of
//!   sandboxes), which run the reaper first: a run still recorded `Running` whose
//!   process is gone (by [`crate::liveness`]: pid and start tick, never the
//!   wall clock) is finalised with reason `Crashed`, which marks its sandbox
//!   `Crashed`, and its stale socket and what its guest left (a jail's
//!   cgroups, removed by its backend) go — all while
//!   holding the sandbox's lock, so no sandbox process of it is starting or
//!   ending meanwhile.
//! - A bystander never removes an `--rm` sandbox that someone may still
//!   read or remove: removal belongs to its owner (the attached CLI, which
//!   reads the outcome first, recorded in `cli.json`), else to its sandbox
//!   process at the run's end. The reaper removes one only when its last
//!   run is over, its owner is not alive and nobody holds its lock.
//! - Records that vanish while the reaper looks (another CLI removed the
//!   sandbox) are skipped, never an error of this CLI; so are writes the
//!   database cannot take now (full disk, read-only, locked): the next CLI
//!   call repairs those records.

use super::error::{CliError, CliResult};
use crate::config::SandboxConfig;
use crate::liveness::{run_process_alive, ProcessIdentity, SandboxLock};
use crate::run_end::{Cleanup, Leftovers, Recorded, RunEnd, Write};
use alcove_layout::Layout;
use alcove_store::{RunRecord, RunStatus, SandboxRecord, Store, StoreError};
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
    /// The attached CLI that removes an `auto_remove` sandbox after reading
    /// its outcome; `None` when its sandbox process removes itself.
    pub owner: Option<ProcessIdentity>,
}

/// The CLI's view of `$ALCOVE_HOME`.
pub struct Ctx {
    /// Where everything is (`$ALCOVE_HOME`, canonical, and the runtime directory).
    pub layout: Layout,
    /// The database.
    pub store: Store,
}

impl Ctx {
    /// Opens the store of [`alcove_layout::alcove_home`] and reaps every
    /// sandbox.
    pub fn open() -> CliResult<Ctx> {
        let ctx = Ctx::open_quiet()?;
        ctx.reap()?;
        Ok(ctx)
    }

    /// Opens the store and reaps only the sandboxes `names` (those that
    /// exist): what a command that names them needs.
    pub fn open_for<S: AsRef<str>>(names: &[S]) -> CliResult<Ctx> {
        let ctx = Ctx::open_quiet()?;
        for name in names {
            ctx.reap_one(name.as_ref())?;
        }
        Ok(ctx)
    }

    /// Opens the store without reaping.
    pub fn open_quiet() -> CliResult<Ctx> {
        Ctx::open_quiet_in(Layout::from_env())
    }

    /// Opens the store of `layout` without reaping (the embedding API's
    /// installations, which may not be the environment's).
    pub fn open_quiet_in(layout: Layout) -> CliResult<Ctx> {
        let layout = layout.ensure_home().map_err(|e| CliError::msg(e.to_string()))?;
        let store = Store::open(&layout.db())?;
        Ok(Ctx { layout, store })
    }

    /// `$ALCOVE_HOME`.
    pub fn home(&self) -> &Path {
        self.layout.home()
    }

    /// `sandboxes/NAME`.
    pub fn sandbox_dir(&self, name: &str) -> PathBuf {
        self.layout.sandbox_dir(name)
    }

    /// `sandboxes/NAME/config.json`.
    pub fn config_path(&self, name: &str) -> PathBuf {
        self.layout.config_file(name)
    }

    /// `sandboxes/NAME/cli.json`.
    pub fn meta_path(&self, name: &str) -> PathBuf {
        self.layout.cli_meta_file(name)
    }

    /// The sandbox's socket.
    pub fn socket_path(&self, name: &str) -> CliResult<PathBuf> {
        self.layout.socket(name).map_err(|e| CliError::from(alcove_client::ClientError::from(e)))
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
            .create(self.layout.log_dir(name))
            .map_err(|e| CliError::msg(format!("cannot create {}: {e}", dir.display())))
    }

    /// Writes a sandbox's secret values (`secrets.json`, 0600; see
    /// [`crate::secrets`]).
    pub fn write_secrets(&self, name: &str, values: &crate::secrets::SecretValues) -> CliResult<()> {
        self.make_dirs(name)?;
        let dir = self.sandbox_dir(name);
        crate::secrets::write_values(&dir, values)
            .map_err(|e| CliError::msg(format!("cannot write {}: {e}", crate::secrets::values_path(&dir).display())))
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

    /// `sandboxes/NAME/lock`, held by the sandbox process for its life.
    pub fn lock_path(&self, name: &str) -> PathBuf {
        self.layout.lock_file(name)
    }

    /// Finalises runs whose process is gone and removes finished `--rm`
    /// sandboxes nobody else will remove (see the module docs).
    pub fn reap(&self) -> CliResult<()> {
        for run in self.store.running_runs()? {
            if !run_alive(&run) {
                self.reap_run(&run, Defer::Yes)?;
            }
        }
        for (sb, last) in self.store.sandboxes_with_latest_run()? {
            self.reap_finished(&sb.name, last.as_ref())?;
        }
        Ok(())
    }

    /// [`Ctx::reap`] for sandbox `name` alone (nothing if it does not exist).
    pub fn reap_one(&self, name: &str) -> CliResult<()> {
        let latest = || match self.store.latest_run(name) {
            Err(StoreError::NoSuchSandbox(_)) => Ok(None),
            other => other,
        };
        let Some(run) = latest()? else {
            return Ok(());
        };
        let last = if run.status == RunStatus::Running && !run_alive(&run) {
            self.reap_run(&run, Defer::Yes)?;
            latest()?
        } else {
            Some(run)
        };
        self.reap_finished(name, last.as_ref())
    }

    /// The reaper's part for a sandbox whose runs are judged: finishes an
    /// interrupted end and removes it if it is an `--rm` sandbox nobody
    /// else will remove.
    fn reap_finished(&self, name: &str, last: Option<&RunRecord>) -> CliResult<()> {
        if let Some(run) = last.filter(|r| r.status == RunStatus::Terminated) {
            self.clean_unfinished_end(run)?;
        }
        // A sandbox with no run yet is being created by its CLI.
        if last.is_none_or(|r| r.status != RunStatus::Terminated) {
            return Ok(());
        }
        let meta = self.meta(name);
        if !meta.auto_remove || meta.owner.is_some_and(|o| o.is_alive()) {
            return Ok(());
        }
        let removed = match SandboxLock::try_acquire(&self.lock_path(name)) {
            Ok(Some(lock)) => lock.remove_sandbox(&self.store, name),
            // Held: its sandbox process is alive (and removes it itself).
            Ok(None) => return Ok(()),
            // No lock file: no sandbox process of it has ever run.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => self.remove_unlocked(name),
            Err(e) => return Err(CliError::msg(format!("cannot lock sandbox {name}: {e}"))),
        };
        match removed {
            Ok(()) => Ok(()),
            Err(crate::liveness::RemoveError::Store(e)) if deferrable(&e) => Ok(()),
            Err(crate::liveness::RemoveError::Store(e)) => Err(e.into()),
            // The records are gone; a directory left over is not this CLI's failure.
            Err(crate::liveness::RemoveError::Directory { .. }) => Ok(()),
        }
    }

    /// Finalises `run`, whose process is gone, as Crashed and cleans up what
    /// the process left: its socket and its jail's cgroups. Done under the
    /// sandbox's lock; skipped when a live process holds it. With
    /// `Defer::Yes`, a write the database cannot take now is left for a
    /// later call.
    fn reap_run(&self, run: &RunRecord, defer: Defer) -> CliResult<()> {
        // The process is provably dead, but its lock can outlive it for a
        // moment: a killed thread-group leader shows as a zombie while its
        // other threads are still exiting and still share the descriptor.
        let _lock = match SandboxLock::acquire(&self.lock_path(&run.sandbox), DEAD_HOLDER_WAIT) {
            Ok(Some(lock)) => Some(lock),
            Ok(None) => return Ok(()),
            // No directory: nothing of the sandbox can be running.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(CliError::msg(format!("cannot lock sandbox {}: {e}", run.sandbox))),
        };
        match self.finish(run, Some(&RunEnd::crashed(run.pid))) {
            // Still Running in the records: a later call repairs it.
            Recorded::Failed(e) if defer == Defer::Yes && deferrable(&e) => Ok(()),
            Recorded::Failed(e) => Err(e.into()),
            // Recorded now, by its process at the last moment, or removed
            // by another CLI (then nothing was cleaned: not ours).
            Recorded::Now | Recorded::Before | Recorded::Gone | Recorded::NoRun => Ok(()),
        }
    }

    /// Makes the end of `run`, whose process is gone, final
    /// ([`crate::run_end::finish`]): writes `end` (when given), then
    /// removes what the process left — its guest's leftovers through its
    /// backend, then its socket, which stays as the mark of an unfinished
    /// end while leftovers do (the next CLI call tries again).
    pub fn finish(&self, run: &RunRecord, end: Option<&RunEnd>) -> Recorded {
        let cleanup = Cleanup {
            leftovers: Some(Leftovers {
                backend: self.load_config(&run.sandbox).ok().map(|c| c.backend),
                sandbox: run.sandbox.clone(),
                pid: run.pid,
            }),
            socket: self.socket_path(&run.sandbox).ok(),
        };
        crate::run_end::finish(end.map(|end| Write { store: &self.store, run: run.id, end }), &cleanup)
    }

    /// After a run whose end is recorded: a socket file left with no sandbox
    /// process behind it (the lock is free) means that process died before
    /// its last steps; they are done here (socket, the jail's cgroups).
    fn clean_unfinished_end(&self, run: &RunRecord) -> CliResult<()> {
        let Ok(sock) = self.socket_path(&run.sandbox) else { return Ok(()) };
        if std::fs::symlink_metadata(&sock).is_err() {
            return Ok(());
        }
        match SandboxLock::try_acquire(&self.lock_path(&run.sandbox)) {
            Ok(Some(_lock)) => {
                self.finish(run, None);
                Ok(())
            }
            // Held: the process is alive and ending (or a new one starting).
            Ok(None) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(CliError::msg(format!("cannot lock sandbox {}: {e}", run.sandbox))),
        }
    }

    /// Removes a sandbox's row (with its runs and metrics) and its directory,
    /// once its sandbox process (if any) has ended: waits up to
    /// [`REMOVE_WAIT`] for the sandbox's lock.
    pub fn remove(&self, name: &str) -> CliResult<()> {
        match SandboxLock::acquire(&self.lock_path(name), REMOVE_WAIT) {
            Ok(Some(lock)) => lock.remove_sandbox(&self.store, name).map_err(|e| CliError::msg(e.to_string())),
            Ok(None) => Err(CliError::msg(format!("sandbox {name} is still in use by its sandbox process"))),
            // No lock file: no sandbox process of it has run (or it removed
            // itself meanwhile).
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.remove_unlocked(name).map_err(|e| CliError::msg(e.to_string()))
            }
            Err(e) => Err(CliError::msg(format!("cannot lock sandbox {name}: {e}"))),
        }
    }

    /// Removes a sandbox that has no lock file: its records and directory.
    fn remove_unlocked(&self, name: &str) -> Result<(), crate::liveness::RemoveError> {
        crate::liveness::remove_unlocked(&self.store, name, &self.sandbox_dir(name))
    }

    /// Waits until the newest run of `name` is no longer running (reaping as
    /// it goes); true if it ended within `timeout`.
    pub fn wait_final(&self, name: &str, timeout: Duration) -> CliResult<bool> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.running_run(name)? {
                None => return Ok(true),
                Some(run) if !run_alive(&run) => {
                    // Gone without its final write (it would have landed
                    // before the process ended): record the crash, or say
                    // why it cannot be recorded.
                    self.reap_run(&run, Defer::No)?;
                    if self.running_run(name)?.is_none() {
                        return Ok(true);
                    }
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

/// Whether a reaper write the database cannot take now may wait for a
/// later call (the reaper run by every command) or must be reported (a
/// command waiting for that very run).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Defer {
    Yes,
    No,
}

/// Whether a failed reaper write can wait for a later CLI call: the
/// database cannot take writes now (full disk, read-only, locked), which is
/// no reason to fail the command the user asked for.
fn deferrable(e: &StoreError) -> bool {
    matches!(e, StoreError::Full { .. } | StoreError::ReadOnly { .. } | StoreError::Busy { .. })
}

/// How long finalising a dead run waits for the lock its dying process
/// (or another CLI finalising it too) still holds; a live holder (a new
/// run of the sandbox) keeps it, and the run is left for a later call.
const DEAD_HOLDER_WAIT: Duration = Duration::from_secs(2);

/// How long removing a sandbox waits for its ending sandbox process to let
/// go of the sandbox's lock.
pub const REMOVE_WAIT: Duration = Duration::from_secs(10);

/// Writes `data` to `path` with mode 0600 (replacing it atomically).
/// `durable`: fsync before the rename, so a host crash leaves the old or the
/// new content. Files of a sandbox removed when its run ends skip it: they
/// die with the run anyway, and two fsyncs are a visible share of every
/// `alcove run` (more while the disk is busy; BENCHMARKS.md).
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

/// Whether the process of `run` is alive (see [`crate::liveness`]).
pub fn run_alive(run: &RunRecord) -> bool {
    run_process_alive(run.pid, run.pid_start_ticks)
}

/// Sends `sig` to `pid`; false if the process does not exist.
pub fn signal(pid: u32, sig: i32) -> bool {
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(pid as libc::pid_t, sig) == 0 }
}
