//! The standalone sandbox process: `alcove sandbox --config FILE|-`.
//!
//! Main thread: a new session → read the config (with `-`, from stdin: the
//! CLI starts this process first and writes the configuration once it has
//! recorded the sandbox, so loading the program overlaps the CLI's own work;
//! end of input without a configuration means the CLI gave up, and the
//! process exits 2 without a word) → check the database → bind
//! agent.sock → print `{"pid":N}` as the first stdout line (a client that
//! reads it can connect at once) → move logs to `logs/runtime.log` → start the actor
//! system → create the guest → drive it to its end on this thread (for krun
//! that never returns) → exit once the run is final: 0 when it is recorded,
//! 1 when alcove itself failed (reason InternalError, or nothing recorded).
//!
//! The process holds the sandbox's lock ([`SandboxLock`]) from before it
//! binds agent.sock until it exits; a sandbox marked `auto_remove` whose
//! attached CLI is gone (or that has none) is removed under it at the end.
//!
//! SIGTERM and SIGINT take the graceful path with reason Signal; SIGUSR1
//! (`alcove kill`) forces the guest off at once, also with reason Signal.
//! When the config names a parent pid (an attached `alcove run`), that
//! process's death stops the sandbox too.

use crate::config::{BackendKind, SandboxConfig};
use crate::liveness::SandboxLock;
use crate::sandbox::{launch_with, SandboxHandle, SandboxOptions, SocketRemoval};
use crate::store::{Store, TerminationReason};
use alcove_backend::guest_log::{BoundedLog, LogLimits, RUNTIME_LOG_LIMITS};
use alcove_backend::GuestSpec;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

/// Runs the sandbox described by `config_path`; returns the process exit
/// code. Errors before the run exists are printed as one line on stderr.
pub fn run(config_path: &Path) -> i32 {
    match run_inner(config_path) {
        Ok(code) => code,
        Err(msg) => {
            eprintln!("alcove sandbox: {msg}");
            1
        }
    }
}

/// Exit code of a process started ahead of a configuration that never came.
const NOT_CONFIGURED: i32 = 2;

fn run_inner(config_path: &Path) -> Result<i32, String> {
    // Its own session, so the terminal's signals (Ctrl-C to the CLI's
    // process group) do not reach it; done here rather than between fork and
    // exec so the CLI can spawn it with posix_spawn.
    // SAFETY: setsid has no preconditions; it fails only for a group leader.
    unsafe { libc::setsid() };
    // Before any thread exists, so that every thread inherits the mask.
    block_signals()?;
    let cfg = if config_path == Path::new("-") {
        // Started ahead of its configuration: it arrives once the CLI has
        // recorded the sandbox. End of input without one means the CLI gave
        // up (it reports why itself).
        // Room for a whole configuration: one read(2), not std's probing.
        let mut text = Vec::with_capacity(64 * 1024);
        std::io::Read::read_to_end(&mut std::io::stdin().lock(), &mut text)
            .map_err(|e| format!("cannot read the configuration from stdin: {e}"))?;
        if text.is_empty() {
            return Ok(NOT_CONFIGURED);
        }
        SandboxConfig::parse(&text, config_path)
    } else {
        SandboxConfig::load(config_path)
    }
    .map_err(|e| e.to_string())?;
    if cfg.backend.kind() == BackendKind::Jail {
        alcove_jail::cgroup::prewarm_attach();
    }
    let backend = crate::backends::make(&cfg.backend);
    let mut network = network_plan(&cfg)?;
    let mut spec = complete_spec(&cfg)?;
    if let Some(plan) = network.as_mut() {
        crate::secrets::prepare(&cfg, plan, &mut spec)?;
    }
    spec.network = network.as_ref().map(|n| n.guest_link());
    // Refuse a database that cannot be opened before claiming to run.
    let store_options = crate::sandbox::store_options_within(&Default::default(), &cfg.policy);
    let store = Store::open_with(&cfg.db_path(), store_options).map_err(|e| e.to_string())?;
    let socket_path = cfg.socket_path().map_err(|e| e.to_string())?;

    let log_dir = cfg.log_dir();
    std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700)
        .create(&log_dir)
        .map_err(|e| format!("cannot create log directory {}: {e}", log_dir.display()))?;
    // Held until this process ends. A previous process of this sandbox may
    // still be ending (its run is final, its exit is not).
    let lock_path = cfg.layout().lock_file(&cfg.name);
    let lock = SandboxLock::acquire_for_life(&lock_path, cfg.policy.exit_budget)
        .map_err(|e| format!("cannot lock {}: {e}", lock_path.display()))?
        .ok_or_else(|| format!("sandbox {} is already run by another sandbox process", cfg.name))?;
    // The attached CLI, watched through a pidfd opened while it waits for us.
    let parent = cfg.parent_pid.map(ParentWatch::open);
    // Bound before the pid line, so the CLI's first connect succeeds.
    let listener = crate::sandbox::bind_agent_socket(&socket_path).map_err(|e| e.to_string())?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{{\"pid\":{}}}", std::process::id()).map_err(|e| format!("cannot write to stdout: {e}"))?;
        out.flush().map_err(|e| format!("cannot write to stdout: {e}"))?;
    }
    let _log_guard = redirect_logs(&log_dir)?;
    if let Some(plan) = network.as_mut() {
        plan.control_socket = Some(crate::net_control::socket_path(&socket_path));
        plan.config_writer = Some(Arc::new(crate::net_persist::ConfigWriter::new(&cfg, store.options().clone())));
    }

    let opts = SandboxOptions {
        name: cfg.name.clone(),
        config_json: serde_json::to_string(&cfg).unwrap_or_else(|_| "{}".into()),
        db_path: cfg.db_path(),
        store: store.options().clone(),
        socket_path,
        spec,
        policy: cfg.policy,
        clock: Arc::new(crate::clock::MonotonicClock::new()),
        pid: std::process::id(),
        // A krun guest's driver never returns: the process ends inside it.
        socket_removal: if cfg.backend.kind() == BackendKind::Krun {
            SocketRemoval::AfterRunEnd
        } else {
            SocketRemoval::ByCaller
        },
        network,
    };
    let socket_path = opts.socket_path.clone();
    let (handle, driver) = launch_with(store, listener, opts, backend).map_err(|e| e.to_string())?;
    let handle = Arc::new(handle);
    watch_signals(handle.clone())?;
    if let Some(parent) = &parent {
        watch_parent(handle.clone(), parent.clone());
    }
    driver.run();
    let outcome = handle.wait_timeout(cfg.policy.exit_budget);
    // The last act: the run's end is recorded and the backend has cleaned
    // up (the driver has returned).
    crate::run_end::remove_socket(&socket_path);
    tracing::info!(?outcome, relay = ?handle.relay_stats(), "sandbox process exiting");
    if cfg.auto_remove && outcome.is_some() && parent.as_ref().is_none_or(|p| p.gone()) {
        // Nobody is left to read the outcome and remove the sandbox.
        remove_self(&cfg, lock);
    }
    // 0: the run ended and is recorded; 1: alcove itself failed (the run is
    // InternalError, or could not be recorded).
    Ok(match outcome {
        Some(o) if o.recorded && o.reason != TerminationReason::InternalError => 0,
        _ => 1,
    })
}

/// The network engine's settings, checked again from the stored config,
/// with the link MTU of the sandbox's backend.
fn network_plan(cfg: &SandboxConfig) -> Result<Option<crate::net_settings::NetworkPlan>, String> {
    cfg.network.check_for(cfg.backend.kind()).map_err(|e| e.to_string())
}

/// Fills in what a real guest needs and the config may leave out: the static
/// agent (embedded in this binary) and the default rootfs.
fn complete_spec(cfg: &SandboxConfig) -> Result<GuestSpec, String> {
    let mut spec = cfg.guest_spec();
    if cfg.backend.kind() == BackendKind::Mock {
        return Ok(spec);
    }
    if spec.agent_binary.is_none() {
        let path = match std::env::var_os(alcove_agent_bin::AGENT_BIN_ENV) {
            Some(_) => alcove_agent_bin::agent_path(),
            None => alcove_agent_bin::install_into(&cfg.layout().bin_dir()),
        };
        spec.agent_binary = Some(path.map_err(|e| e.to_string())?);
    }
    if spec.rootfs.is_none() {
        let store = alcove_rootfs::RootfsStore::new(cfg.home.clone());
        spec.rootfs = Some(store.resolve(alcove_rootfs::DEFAULT_NAME).map_err(|e| e.to_string())?.root);
    }
    Ok(spec)
}

/// Sends tracing output to `runtime.log`, bounded and rotated by size
/// ([`RUNTIME_LOG_LIMITS`]), and stderr (panics, stray prints) to
/// `runtime.stderr` (rotated at start once it is past the same bound); both
/// 0600. stdout goes to /dev/null so a reader of the pid line sees end of
/// file.
fn redirect_logs(dir: &Path) -> Result<tracing_appender::non_blocking::WorkerGuard, String> {
    let log = runtime_log(dir, RUNTIME_LOG_LIMITS)?;
    // The default queue holds 128 000 lines and is allocated up front (4 MiB
    // per sandbox process); 1 024 lines is ample for this process's log rate.
    // Not lossy: should the queue ever fill, the logger waits rather than
    // dropping what happened.
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .buffered_lines_limit(1024)
        .lossy(false)
        .finish(log);
    let filter = tracing_subscriber::EnvFilter::try_from_env("ALCOVE_LOG").unwrap_or_else(|_| "info".into());
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(writer).with_ansi(false).try_init();
    let stderr = runtime_stderr(dir, RUNTIME_LOG_LIMITS)?;
    let null =
        std::fs::OpenOptions::new().write(true).open("/dev/null").map_err(|e| format!("cannot open /dev/null: {e}"))?;
    use std::os::fd::AsRawFd;
    // SAFETY: dup2 onto the standard descriptors with fds we own.
    unsafe {
        libc::dup2(stderr.as_raw_fd(), 2);
        libc::dup2(null.as_raw_fd(), 1);
        libc::dup2(null.as_raw_fd(), 0);
    }
    Ok(guard)
}

/// `dir/runtime.log`, bounded by `limits`.
fn runtime_log(dir: &Path, limits: LogLimits) -> Result<BoundedLog, String> {
    let path = dir.join(alcove_layout::RUNTIME_LOG);
    BoundedLog::open(&path, limits).map_err(|e| format!("cannot open runtime log {}: {e}", path.display()))
}

/// `dir/runtime.stderr` for appending (0600, no symlink followed), moved
/// to `runtime.stderr.1` first when it is past `limits.max_file_bytes`.
/// Descriptor 2 cannot go through a pipe: a panic's message must be on
/// disk before the process dies.
fn runtime_stderr(dir: &Path, limits: LogLimits) -> Result<std::fs::File, String> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(alcove_layout::RUNTIME_STDERR);
    if std::fs::symlink_metadata(&path).is_ok_and(|m| m.len() > limits.max_file_bytes) {
        let _ = std::fs::rename(&path, path.with_extension("stderr.1"));
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))
}

/// The signals the sandbox process handles itself.
const HANDLED: [libc::c_int; 3] = [libc::SIGTERM, libc::SIGINT, libc::SIGUSR1];

fn handled_set() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialise and fill a local set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in HANDLED {
            libc::sigaddset(&mut set, sig);
        }
        set
    }
}

/// Blocks the handled signals in this thread, and so in every thread started
/// after it. They are then only ever taken by `sigwait` in the signal
/// thread: no handler runs, including the ones libkrun installs for SIGTERM
/// and SIGUSR1 when the VM is built (those would end the VMM without asking
/// Lifecycle, which alone decides how the sandbox ends). Children (the jail,
/// the agent's commands) reset their masks before exec.
fn block_signals() -> Result<(), String> {
    let set = handled_set();
    // SAFETY: a valid set; the old mask is not needed.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(format!("cannot block signals: {}", std::io::Error::from_raw_os_error(rc)));
    }
    Ok(())
}

fn watch_signals(handle: Arc<SandboxHandle>) -> Result<(), String> {
    std::thread::Builder::new()
        .name("alcove-signals".into())
        .spawn(move || {
            let set = handled_set();
            loop {
                let mut sig: libc::c_int = 0;
                // SAFETY: a valid set and out-pointer.
                if unsafe { libc::sigwait(&set, &mut sig) } != 0 {
                    continue;
                }
                let detail = format!("the sandbox process received signal {sig}");
                if sig == libc::SIGUSR1 {
                    tracing::info!(signal = sig, "kill requested; forcing the guest off");
                    handle.kill(TerminationReason::Signal, &detail);
                } else {
                    tracing::info!(signal = sig, "signal received; stopping gracefully");
                    handle.terminate(TerminationReason::Signal, &detail);
                }
            }
        })
        .map(|_| ())
        .map_err(|e| format!("cannot start the signal thread: {e}"))
}

/// The attached CLI of this sandbox process, by pidfd (by pid where the
/// kernel has none).
#[derive(Clone)]
struct ParentWatch {
    pid: u32,
    pidfd: Option<Arc<std::os::fd::OwnedFd>>,
}

impl ParentWatch {
    fn open(pid: u32) -> ParentWatch {
        use std::os::fd::FromRawFd;
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) } as i32;
        // SAFETY: on success the fd is new and owned by nobody else.
        let pidfd = (fd >= 0).then(|| Arc::new(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) }));
        ParentWatch { pid, pidfd }
    }

    /// Blocks until the parent has exited (`timeout_ms` -1), or says whether
    /// it has (0).
    fn poll(&self, timeout_ms: i32) -> bool {
        use std::os::fd::AsRawFd;
        match &self.pidfd {
            Some(fd) => {
                let mut pfd = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
                loop {
                    // SAFETY: one valid pollfd for the duration of the call.
                    let n = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
                    if n >= 0 {
                        return n > 0;
                    }
                }
            }
            None => loop {
                // SAFETY: kill with signal 0 only checks existence.
                let gone = unsafe { libc::kill(self.pid as libc::pid_t, 0) } != 0;
                if gone || timeout_ms == 0 {
                    return gone;
                }
                std::thread::sleep(std::time::Duration::from_millis(200));
            },
        }
    }

    fn gone(&self) -> bool {
        self.poll(0)
    }
}

fn watch_parent(handle: Arc<SandboxHandle>, parent: ParentWatch) {
    let spawned = std::thread::Builder::new().name("alcove-parent".into()).spawn(move || {
        parent.poll(-1);
        let pid = parent.pid;
        tracing::info!(parent = pid, "the attached client exited; stopping");
        handle.terminate(TerminationReason::Signal, &format!("the attached client (pid {pid}) exited"));
    });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot watch the parent process");
    }
}

/// Removes this `auto_remove` sandbox (records and directory) under its lock.
fn remove_self(cfg: &SandboxConfig, lock: SandboxLock) {
    let removed = Store::open(&cfg.db_path())
        .map_err(crate::liveness::RemoveError::from)
        .and_then(|store| lock.remove_sandbox(&store, &cfg.name));
    match removed {
        Ok(()) => tracing::info!("removed the sandbox (--rm, no attached client left)"),
        Err(e) => tracing::warn!(error = %e, "cannot remove the sandbox; the next alcove command will"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_runtime_log_is_bounded_and_rotated_by_size() {
        let d = tempfile::tempdir().expect("tempdir");
        let limits = LogLimits { max_file_bytes: 1000, kept_files: 2 };
        let mut log = runtime_log(d.path(), limits).expect("opens");
        for i in 0..500 {
            writeln!(log, "line {i:04} of a chatty peer").expect("write");
        }
        let mut names: Vec<String> = std::fs::read_dir(d.path())
            .expect("dir")
            .map(|e| e.expect("e").file_name().into_string().expect("utf8"))
            .collect();
        names.sort();
        assert_eq!(names, ["runtime.log", "runtime.log.1", "runtime.log.2"]);
        for n in &names {
            let md = std::fs::metadata(d.path().join(n)).expect("md");
            assert!(md.len() <= 1000, "{n}: {}", md.len());
            assert_eq!(md.permissions().mode() & 0o777, 0o600, "{n}");
        }
        let current = std::fs::read_to_string(d.path().join("runtime.log")).expect("read");
        assert!(current.ends_with("line 0499 of a chatty peer\n"), "{current}");
    }

    #[test]
    fn a_large_runtime_stderr_is_set_aside_at_start() {
        let d = tempfile::tempdir().expect("tempdir");
        let limits = LogLimits { max_file_bytes: 100, kept_files: 1 };
        std::fs::write(d.path().join("runtime.stderr"), vec![b'e'; 150]).expect("write");
        let f = runtime_stderr(d.path(), limits).expect("opens");
        assert_eq!(f.metadata().expect("md").len(), 0);
        assert_eq!(std::fs::metadata(d.path().join("runtime.stderr.1")).expect("kept").len(), 150);
        drop(f);
        // A small one is appended to.
        std::fs::write(d.path().join("runtime.stderr"), b"panic\n").expect("write");
        let f = runtime_stderr(d.path(), limits).expect("opens");
        assert_eq!(f.metadata().expect("md").len(), 6);
    }
}
