//! Starting and stopping sandbox processes.
//!
//! Start: `alcove sandbox --config -` is spawned first ([`spawn_pending`]),
//! in its own session with stdin, stdout and stderr on pipes, so loading
//! the program overlaps the CLI's recording of the sandbox; then the
//! [`SandboxConfig`] goes to `sandboxes/NAME/config.json` (0600; secrets and
//! env values only there and in the pipe, never in argv) and to the
//! process's stdin ([`Pending::configure`]). Its first stdout line is
//! `{"pid":N}`, printed once agent.sock is bound; it then moves stdout and
//! stderr to `logs/`. The sandbox is ready once a client handshake on its
//! socket succeeds (the relay answers only after the agent's `Ready`). If
//! the process exits first, the run row's detail or the last line it wrote
//! to the stderr pipe is reported as one line.
//!
//! Stop: `Shutdown` through the socket (SIGTERM when that fails), a wait of
//! up to the timeout for the run to be final, then SIGUSR1 (forced stop),
//! then SIGKILL and a recorded `Signal` outcome as the last resort.

use super::args::{BackendArg, SandboxOpts};
use super::error::{one_line, CliError, CliResult};
use super::output::Progress;
use super::state::{run_alive, signal, Ctx};
use crate::config::{BackendConfig, BackendKind, Policy, PolicySpec, SandboxConfig};
use crate::run_end::{Recorded, RunEnd, Write};
use alcove_backend::{GuestSpec, MountSpec};
use alcove_client::Client;
use alcove_store::RunStatus;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Extra time, beyond the sandbox's own ready timeout, the CLI waits for
/// readiness before giving up.
const READY_SLACK: Duration = Duration::from_secs(15);

fn kvm_possible() -> bool {
    Path::new("/dev/kvm").exists()
        && std::fs::read_to_string("/proc/cpuinfo")
            .map(|c| {
                c.lines()
                    .filter(|l| l.starts_with("flags"))
                    .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"))
            })
            .unwrap_or(true)
}

/// Picks the backend for `--backend`.
pub fn resolve_backend(arg: BackendArg) -> BackendKind {
    match arg {
        BackendArg::Jail => BackendKind::Jail,
        BackendArg::Krun => BackendKind::Krun,
        BackendArg::Mock => BackendKind::Mock,
        // Without /dev/kvm or vmx/svm, krun is out whatever else the probe
        // would find (it runs `ldconfig -p` to look for libkrunfw).
        BackendArg::Auto if !kvm_possible() => BackendKind::Jail,
        BackendArg::Auto => match alcove_hostprobe::probe().auto_backend().0 {
            alcove_hostprobe::Backend::Krun => BackendKind::Krun,
            alcove_hostprobe::Backend::Jail => BackendKind::Jail,
        },
    }
}

/// Builds the config of a new sandbox from the command-line options:
/// resolves the rootfs (building the default one if needed, with a progress
/// display) and checks volumes. Returns the secrets' values apart: they are
/// never part of the config.
pub fn build_config(
    ctx: &Ctx,
    name: &str,
    opts: &SandboxOpts,
    parent_pid: Option<u32>,
) -> CliResult<(SandboxConfig, crate::secrets::SecretValues)> {
    let backend = resolve_backend(opts.backend);
    // Before anything is fetched for another backend (libkrunfw).
    crate::backends::hostname_allowed(backend, opts.hostname.as_deref()).map_err(CliError::msg)?;
    let mut mounts = Vec::new();
    for v in &opts.volume {
        let mut m = MountSpec::parse(v).map_err(CliError::msg)?;
        m.host = std::fs::canonicalize(&m.host)
            .map_err(|e| CliError::msg(format!("volume {v:?}: host path {}: {e}", m.host.display())))?;
        mounts.push(m);
    }
    if let Some(w) = &opts.workdir {
        if !w.starts_with('/') {
            return Err(CliError::msg(format!("--workdir {w:?} must be an absolute path")));
        }
    }
    // Before the rootfs is resolved (or built): bad input costs nothing.
    let (network, secret_values) = super::net::settings(&opts.net, backend)?;
    let mut env = Vec::new();
    let mut rootfs = None;
    // The image's defaults, under the command line's options.
    let mut image_defaults = alcove_rootfs::ImageConfig::default();
    if backend != BackendKind::Mock {
        let store = alcove_rootfs::RootfsStore::new(ctx.home().to_path_buf());
        let progress = Progress::start(format!("resolving rootfs {}", opts.rootfs));
        let resolved = if opts.rootfs == alcove_rootfs::DEFAULT_NAME {
            store.ensure_default(&mut |p| {
                if let alcove_rootfs::Progress::Step(s) = p {
                    progress.set(s);
                }
            })?
        } else {
            super::pull::resolve_rootfs(&store, opts, &progress)?
        };
        progress.finish();
        alcove_rootfs::require_shell(&resolved.root).or_else(|e| {
            // A rootfs without a shell can still run programs given by path.
            if matches!(e, alcove_rootfs::RootfsError::NoShell(_)) {
                Ok(())
            } else {
                Err(e)
            }
        })?;
        env.extend(resolved.image.env.clone());
        image_defaults = resolved.image;
        rootfs = Some(resolved.root);
    }
    env.extend(opts.env.iter().cloned());
    let backend = match backend {
        BackendKind::Krun => crate::backends::krun_with(ensure_libkrunfw(ctx)?),
        // The options of this environment, kept with the sandbox for every start.
        BackendKind::Jail => crate::backends::jail_from_env().map_err(CliError::msg)?,
        BackendKind::Mock => BackendConfig::Mock(Default::default()),
    };
    let backend = crate::backends::with_hostname(backend, opts.hostname.as_deref());
    let policy =
        PolicySpec { idle_timeout: opts.idle_timeout, max_duration: opts.max_duration, ..PolicySpec::default() };
    let policy = Policy::try_from(policy).map_err(|e| CliError::msg(e.to_string()))?;
    let mut guest = GuestSpec {
        name: name.to_string(),
        rootfs,
        cpus: opts.cpus,
        memory_mib: opts.memory,
        pids_limit: opts.pids,
        shm_mib: opts.shm_size,
        tmp_mib: opts.tmp_size,
        disk_mib: opts.disk,
        mounts,
        env,
        workdir: opts.workdir.clone().or(image_defaults.workdir),
        user: opts.user.clone().or(image_defaults.user),
        ..GuestSpec::default()
    };
    // Pre-flight before anything is recorded: a limit asked for that this
    // host cannot apply refuses the sandbox.
    crate::backends::preflight(&backend, &mut guest).map_err(CliError::msg)?;
    let cfg = SandboxConfig {
        name: name.to_string(),
        home: ctx.home().to_path_buf(),
        backend,
        guest,
        policy,
        socket_path: None,
        db_path: None,
        parent_pid,
        auto_remove: false,
        network,
    };
    Ok((cfg, secret_values))
}

/// The guest kernel library for krun: found where `alcove_hostprobe`
/// looks, or installed on first use (like the default rootfs) from the
/// pinned PyPI wheel into `$ALCOVE_HOME/lib`, with a progress line.
fn ensure_libkrunfw(ctx: &Ctx) -> CliResult<std::path::PathBuf> {
    let path = match alcove_hostprobe::locate_libkrunfw(None) {
        Ok(p) => p,
        Err(alcove_hostprobe::KrunfwError::NotFound(_)) => {
            let progress = Progress::start("installing libkrunfw (the krun guest kernel)".to_string());
            let installed = alcove_hostprobe::install_libkrunfw(ctx.home(), &mut |m| progress.set(m));
            progress.finish();
            installed.map_err(|e| CliError::msg(e.to_string()))?
        }
        Err(e) => return Err(CliError::msg(e.to_string())),
    };
    alcove_hostprobe::validate_libkrunfw(&path).map_err(|e| CliError::msg(e.to_string()))?;
    Ok(path)
}

/// A sandbox process just started.
pub struct Started {
    /// Its pid.
    pub pid: u32,
    /// The child handle (for an attached `run`, to reap it).
    pub child: Child,
    /// Its timing policy (how long its end may take).
    pub policy: Policy,
}

impl Started {
    /// Waits up to `timeout` for the sandbox process (our child) to exit;
    /// true if it did (it is then reaped, and `child.wait()` returns its
    /// status). Woken by a pidfd when the kernel
    /// has one, so the exit is seen at once rather than at the next poll.
    pub async fn wait_exit(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        if let Some(fd) = pidfd_open(self.pid) {
            // SAFETY: the AsyncFd owns the OwnedFd, which stays open and the
            // same descriptor for the AsyncFd's whole life.
            let registered =
                unsafe { tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) };
            if let Ok(afd) = registered {
                // A pidfd turns readable when the process exits.
                let _ = tokio::time::timeout(timeout, afd.readable()).await;
                return !matches!(self.child.try_wait(), Ok(None));
            }
        }
        let mut delay = Duration::from_millis(1);
        while Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return true;
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_millis(10));
        }
        !matches!(self.child.try_wait(), Ok(None))
    }
}

/// A pidfd for `pid` (Linux 5.3+); `None` where the kernel has none.
fn pidfd_open(pid: u32) -> Option<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, libc::O_NONBLOCK as libc::c_uint) };
    // SAFETY: on success the fd is new and owned by nobody else.
    (fd >= 0).then(|| unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) })
}

/// A sandbox process started ahead of its configuration: it loads the
/// program while the CLI records the
/// sandbox, then waits for [`Pending::configure`]. Dropping it unconfigured
/// closes its stdin, and it exits without a word.
pub struct Pending {
    child: Child,
    stdin: std::process::ChildStdin,
}

/// Starts `alcove sandbox --config -` in its own session (it calls `setsid`
/// itself, so std spawns it with `posix_spawn`, without copying this
/// process's page tables): stdin and stdout are pipes to the CLI, stderr a
/// pipe read only if it fails before it is ready.
pub fn spawn_pending() -> CliResult<Pending> {
    let exe = std::env::current_exe().map_err(|e| CliError::msg(format!("cannot find the alcove executable: {e}")))?;
    spawn_pending_with(&exe)
}

/// [`spawn_pending`] with the `alcove` executable at `exe` (a host program
/// embedding alcove is not that executable itself; see [`crate::embed`]).
pub fn spawn_pending_with(exe: &Path) -> CliResult<Pending> {
    let mut cmd = Command::new(exe);
    cmd.arg("sandbox").arg("--config").arg("-");
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child =
        cmd.spawn().map_err(|e| CliError::msg(format!("cannot start the sandbox process {}: {e}", exe.display())))?;
    match child.stdin.take() {
        Some(stdin) => Ok(Pending { child, stdin }),
        None => Err(CliError::msg("the sandbox process has no stdin")),
    }
}

impl Pending {
    /// Writes the config to `config.json` (for a later `alcove start`) and
    /// to the waiting process; returns once the process has printed its pid
    /// (it has bound agent.sock by then).
    pub fn configure(self, ctx: &Ctx, cfg: &SandboxConfig) -> CliResult<Started> {
        ctx.write_config(cfg)?;
        let json = serde_json::to_vec(cfg).map_err(|e| CliError::msg(e.to_string()))?;
        let Pending { mut child, mut stdin } = self;
        // A failed write means the process is gone: its stderr says why.
        let _ = std::io::Write::write_all(&mut stdin, &json);
        drop(stdin);
        let stdout = child.stdout.take().ok_or_else(|| CliError::msg("the sandbox process has no stdout"))?;
        let mut line = String::new();
        let read = BufReader::new(stdout).read_line(&mut line);
        let pid = match read {
            Ok(n) if n > 0 => parse_pid_line(&line),
            _ => None,
        };
        let mut started = Started { pid: pid.unwrap_or(child.id()), child, policy: cfg.policy };
        if pid.is_some() {
            return Ok(started);
        }
        let status = started.child.wait().ok();
        Err(CliError::msg(format!(
            "the sandbox process failed to start: {}",
            started.startup_error().unwrap_or_else(|| match status {
                Some(s) => format!("it exited ({s}) without a message"),
                None => "it exited without a message".into(),
            })
        )))
    }
}

/// Writes the config and starts the sandbox process; returns once it has
/// printed its pid.
pub fn spawn(ctx: &Ctx, cfg: &SandboxConfig) -> CliResult<Started> {
    spawn_pending()?.configure(ctx, cfg)
}

fn parse_pid_line(line: &str) -> Option<u32> {
    let v: serde_json::Value = serde_json::from_str(line.trim()).ok()?;
    v.get("pid")?.as_u64().and_then(|p| u32::try_from(p).ok())
}

impl Started {
    /// The last non-empty line the process wrote to its stderr pipe before
    /// it moved its output to `logs/` (only read once it has exited, so the
    /// read cannot block), without the `alcove sandbox:` prefix.
    fn startup_error(&mut self) -> Option<String> {
        let mut pipe = self.child.stderr.take()?;
        let mut text = String::new();
        std::io::Read::read_to_string(&mut pipe, &mut text).ok()?;
        let line = text.lines().rev().map(str::trim).find(|l| !l.is_empty())?;
        Some(one_line(line.strip_prefix("alcove sandbox: ").unwrap_or(line)))
    }
}

/// Waits until the sandbox `name` (process `started`) accepts clients and
/// returns a connected client. Fails with one line if the process ends first.
pub async fn wait_ready(ctx: &Ctx, name: &str, started: &mut Started, ready_timeout: Duration) -> CliResult<Client> {
    let socket = ctx.socket_path(name)?;
    let deadline = Instant::now() + ready_timeout + READY_SLACK;
    let mut delay = Duration::from_millis(5);
    loop {
        if let Ok(Some(status)) = started.child.try_wait() {
            return Err(start_failure(ctx, name, started, status));
        }
        match Client::connect_path(&socket).await {
            // The relay hands out the handshake only once the sandbox is
            // recorded Running, so `ps` right after agrees with `create`.
            Ok(client) => return Ok(client),
            // Not listening yet, or closed during the handshake (the
            // sandbox is ending): look at the process again.
            Err(
                alcove_client::ClientError::NoListener { .. }
                | alcove_client::ClientError::HandshakeClosed
                | alcove_client::ClientError::Disconnected,
            ) => {}
            Err(alcove_client::ClientError::Connect { source, .. })
                if source.kind() == std::io::ErrorKind::PermissionDenied =>
            {
                return Err(CliError::msg(format!("cannot connect to {}: {source}", socket.display())));
            }
            Err(alcove_client::ClientError::Connect { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        if Instant::now() >= deadline {
            return Err(CliError::msg(format!(
                "sandbox {name} did not become ready within {}s",
                (ready_timeout + READY_SLACK).as_secs()
            )));
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(50));
    }
}

/// Describes why a sandbox process ended before it was ready.
fn start_failure(ctx: &Ctx, name: &str, started: &mut Started, status: std::process::ExitStatus) -> CliError {
    // No reaping here: it could remove a `--rm` sandbox before its run is read.
    let run = ctx.store.latest_run(name).ok().flatten();
    let from_run = run.as_ref().and_then(|r| {
        let reason = r.reason.map(|x| x.to_string()).unwrap_or_default();
        r.detail.as_ref().map(|d| format!("{reason}: {d}"))
    });
    let msg = from_run
        .or_else(|| started.startup_error())
        .or_else(|| runtime_stderr_tail(ctx, name))
        .unwrap_or_else(|| format!("the sandbox process exited ({status}) without a message"));
    CliError::msg(format!("sandbox {name} failed to start: {}", one_line(&msg)))
}

/// The last line of `logs/runtime.stderr` (panics, stray prints).
fn runtime_stderr_tail(ctx: &Ctx, name: &str) -> Option<String> {
    let text = std::fs::read_to_string(ctx.layout.log_file(name, alcove_layout::RUNTIME_STDERR)).ok()?;
    text.lines().rev().map(str::trim).find(|l| !l.is_empty()).map(one_line)
}

/// Connects to a running sandbox, with a clear error when it is not running.
pub async fn connect(ctx: &Ctx, name: &str) -> CliResult<Client> {
    ctx.sandbox(name)?;
    if ctx.running_run(name)?.is_none() {
        return Err(CliError::msg(format!("sandbox {name} is not running (start it with `alcove start {name}`)")));
    }
    let socket = ctx.socket_path(name)?;
    // A sandbox still starting accepts the connection once its agent is ready.
    match Client::connect_path(&socket).await {
        Ok(c) => Ok(c),
        Err(alcove_client::ClientError::NoListener { .. } | alcove_client::ClientError::HandshakeClosed) => {
            Err(CliError::msg(format!("sandbox {name} is not accepting connections (it may be stopping)")))
        }
        Err(e) => Err(e.into()),
    }
}

/// Stops the sandbox `name` if it is running: graceful `Shutdown` (or
/// SIGTERM), up to `timeout` for the run to end, then forced (SIGUSR1), then
/// SIGKILL as the last resort. Returns whether a run was stopped.
pub async fn stop(ctx: &Ctx, name: &str, timeout: Duration) -> CliResult<bool> {
    let Some(run) = ctx.running_run(name)? else { return Ok(false) };
    let grace_ms = u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX);
    let socket = ctx.socket_path(name)?;
    let asked = match tokio::time::timeout(Duration::from_secs(2), Client::connect_path(&socket)).await {
        Ok(Ok(client)) => {
            // Shutdown waits for the connection to close; the store tells when it is over.
            tokio::spawn(async move {
                let _ = client.shutdown(grace_ms).await;
            });
            true
        }
        _ => false,
    };
    if !asked {
        signal(run.pid, libc::SIGTERM);
    }
    // The guest gets `timeout` to end its commands; the host needs a little more to sync and record.
    let budget = timeout + Duration::from_secs(3);
    if wait_final_async(ctx, name, budget).await? {
        wait_gone(ctx, name, &run).await;
        return Ok(true);
    }
    force(ctx, name, &run).await?;
    Ok(true)
}

/// Once `run` is final: waits (up to the exit budget) for its sandbox
/// process to be gone — a stopped sandbox has no process — and finishes
/// the clean-up that process may not have done.
async fn wait_gone(ctx: &Ctx, name: &str, run: &alcove_store::RunRecord) {
    let path = ctx.lock_path(name);
    let wait = exit_budget(ctx, name);
    // The lock is released when the process ends; a blocking wait on a
    // thread of its own, so the runtime's other work goes on.
    let held = tokio::task::spawn_blocking(move || crate::liveness::SandboxLock::acquire(&path, wait)).await;
    if let Ok(Ok(Some(_lock))) = held {
        if ctx.socket_path(name).is_ok_and(|s| s.exists()) {
            ctx.finish(run, None);
        }
    }
}

/// Forces a running sandbox off: SIGUSR1, a short wait, then SIGKILL with a
/// recorded outcome.
pub async fn kill(ctx: &Ctx, name: &str) -> CliResult<bool> {
    let Some(run) = ctx.running_run(name)? else { return Ok(false) };
    force(ctx, name, &run).await?;
    Ok(true)
}

/// Beyond the exit budget, what a forced stop may take before SIGKILL.
const FORCE_SLACK: Duration = Duration::from_secs(2);

/// The exit budget of sandbox `name` (see [`crate::config::ExitBudget`]).
pub fn exit_budget(ctx: &Ctx, name: &str) -> Duration {
    ctx.load_config(name).map(|c| c.policy.exit_budget).unwrap_or_else(|_| Policy::default().exit_budget)
}

async fn force(ctx: &Ctx, name: &str, run: &alcove_store::RunRecord) -> CliResult<()> {
    if run_alive(run) {
        signal(run.pid, libc::SIGUSR1);
    }
    // A forced stop ends the guest at once; recording it may take the
    // sandbox's whole exit budget (a busy database), and only a process that
    // overruns it is killed.
    if wait_final_async(ctx, name, exit_budget(ctx, name) + FORCE_SLACK).await? {
        wait_gone(ctx, name, run).await;
        return Ok(());
    }
    if run_alive(run) {
        signal(run.pid, libc::SIGKILL);
    }
    // Its end is recorded and its socket removed once the process is gone
    // (its lock free), so they cannot race a new start of the sandbox.
    let lock = crate::liveness::SandboxLock::acquire(&ctx.lock_path(name), super::state::REMOVE_WAIT);
    let _lock = match lock {
        Ok(Some(lock)) => Some(lock),
        Ok(None) => return Err(CliError::msg(format!("sandbox {name} (pid {}) did not end when killed", run.pid))),
        Err(_) => None,
    };
    match ctx.finish(run, Some(&RunEnd::killed_by_cli())) {
        Recorded::Failed(e) => Err(e.into()),
        Recorded::Now | Recorded::Before | Recorded::Gone | Recorded::NoRun => Ok(()),
    }
}

/// [`Ctx::wait_final`] without blocking the async runtime.
pub async fn wait_final_async(ctx: &Ctx, name: &str, timeout: Duration) -> CliResult<bool> {
    let deadline = Instant::now() + timeout;
    // The run usually becomes final within a few milliseconds of the
    // connection closing: look again soon, then back off.
    let mut delay = Duration::from_millis(1);
    loop {
        if ctx.wait_final(name, Duration::ZERO)? {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(25));
    }
}

/// After a failed start of `name` (its process is gone): makes sure a run
/// records the failure. A sandbox process that failed after writing its run
/// finalised it with its own reason; one that failed before (no run, or
/// one left Running) gets a run ended `InternalError` with `why`.
pub fn record_failed_start(ctx: &Ctx, name: &str, why: &str) -> CliResult<()> {
    let run = match ctx.store.latest_run(name)? {
        Some(run) if run.status == RunStatus::Terminated => return Ok(()),
        Some(run) => run.id,
        None => {
            // The CLI records the attempt itself: the pid is its own, which
            // is gone by the time anyone reads the run.
            let me = crate::liveness::ProcessIdentity::current();
            ctx.store.start_run_of(name, std::process::id(), me.map(|p| p.start_ticks))?
        }
    };
    // Nothing to clean: the process failed before it claimed anything the
    // next start would not replace.
    let end = RunEnd::internal_error(None, why);
    match crate::run_end::finish(Some(Write { store: &ctx.store, run, end: &end }), &Default::default()) {
        Recorded::Failed(e) => Err(e.into()),
        Recorded::Gone => Err(alcove_store::StoreError::NoSuchRun(run).into()),
        Recorded::Now | Recorded::Before | Recorded::NoRun => Ok(()),
    }
}

/// Whether the newest run of `name` is running.
pub fn is_running(ctx: &Ctx, name: &str) -> CliResult<bool> {
    Ok(ctx.store.latest_run(name)?.is_some_and(|r| r.status == RunStatus::Running))
}

/// A generated sandbox name: `run-` and 8 hex digits.
pub fn generated_name() -> String {
    let mut buf = [0u8; 4];
    let ok = std::fs::File::open("/dev/urandom").and_then(|mut f| std::io::Read::read_exact(&mut f, &mut buf)).is_ok();
    let n = if ok {
        u32::from_le_bytes(buf)
    } else {
        let t =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
        t ^ std::process::id().rotate_left(16)
    };
    format!("run-{n:08x}")
}

/// The config file of `name` exists.
pub fn has_config(ctx: &Ctx, name: &str) -> bool {
    Path::new(&ctx.config_path(name)).is_file()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn started(argv: &[&str]) -> Started {
        let child = Command::new(argv[0]).args(&argv[1..]).spawn().expect("spawns");
        Started { pid: child.id(), child, policy: Policy::default() }
    }

    #[test]
    fn wait_exit_wakes_when_the_child_exits() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let mut s = started(&["sh", "-c", "sleep 0.05; exit 3"]);
        let t = Instant::now();
        assert!(rt.block_on(s.wait_exit(Duration::from_secs(10))));
        assert!(t.elapsed() < Duration::from_secs(5), "took {:?}", t.elapsed());
        // The status stays available to the caller.
        assert_eq!(s.child.wait().expect("reaped").code(), Some(3));
    }

    #[test]
    fn wait_exit_gives_up_at_the_timeout() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let mut s = started(&["sleep", "30"]);
        let t = Instant::now();
        assert!(!rt.block_on(s.wait_exit(Duration::from_millis(100))));
        assert!(t.elapsed() >= Duration::from_millis(100));
        s.child.kill().expect("kills");
        s.child.wait().expect("reaped");
    }

    #[test]
    fn the_pid_line_is_parsed_strictly() {
        assert_eq!(parse_pid_line("{\"pid\":42}\n"), Some(42));
        assert_eq!(parse_pid_line("pid 42"), None);
        assert_eq!(parse_pid_line("{\"pid\":-1}"), None);
    }

    #[test]
    fn generated_names_are_valid() {
        let n = generated_name();
        alcove_client::paths::validate_name(&n).expect("valid");
        assert_eq!(n.len(), 12);
    }
}
