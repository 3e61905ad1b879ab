//! The embedding API: start, find and end sandboxes from a host program the
//! way the CLI does, without knowing alcove's insides.
//!
//! ```no_run
//! # async fn demo() -> Result<(), alcove::EmbedError> {
//! let sandbox = alcove::Sandbox::builder("demo").memory_mib(256).start().await?;
//! let out = sandbox.client().exec_output(alcove_client::ExecOptions::new(["echo", "hi"])).await?;
//! assert_eq!(out.stdout, b"hi\n");
//! sandbox.remove().await?;
//! # Ok(()) }
//! ```
//!
//! A sandbox started here is the CLI's sandbox in every respect: the
//! builder fills the CLI's `create` options ([`SandboxOpts`]) and goes
//! through the CLI's own create-and-start path
//! ([`crate::cli::commands::create_and_start`]): the backend choice
//! (`auto`), the default rootfs (built on first use), the jail options of
//! this environment, the pre-flight check, the sandbox row and
//! `config.json` under the installation's home, and a detached sandbox
//! process (`alcove sandbox --config -`, in its own session) that fills in
//! the agent binary itself. So `alcove ps`, `exec`, `stop` and `rm` see and
//! manage embedded sandboxes, and an embedded sandbox outlives the host
//! program unless the host stops it.
//!
//! Invariants:
//! - The sandbox runs in its own process, never in the host's: the jail's
//!   first process is tied to the thread that launched it and a krun guest
//!   ends its process, neither of which a host program (a Python
//!   interpreter) can allow; and the CLI signals a sandbox's recorded pid
//!   to stop it.
//! - That process is the `alcove` executable ([`alcove_executable`]); it is
//!   this crate's own binary, so the builder and the process agree on the
//!   configuration's format.
//! - A failed start leaves what the CLI's failed `create` leaves: no
//!   process, and the sandbox recorded with its failed run.
//! - The sandbox process is the host's child; a thread reaps it when it
//!   exits, so none is left a zombie.
//! - No [`Sandbox`] holds a database connection (one is opened per
//!   operation), so a handle can be shared between threads; the operations
//!   that use one run on a blocking thread of the caller's tokio runtime, so
//!   every future here is `Send`.

use crate::cli::args::{BackendArg, SandboxOpts};
use crate::cli::commands::create_and_start;
use crate::cli::error::CliError;
use crate::cli::launch;
use crate::cli::net::NetOpts;
use crate::cli::state::{CliMeta, Ctx};
use alcove_client::{Client, ClientError};
use alcove_layout::Layout;
use alcove_store::{MetricSample, RunRecord, RunStatus, SandboxStatus};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The environment variable naming the `alcove` executable that runs
/// sandbox processes (also read by the benchmarks).
pub const EXECUTABLE_ENV: &str = "ALCOVE_BIN";

/// How long [`Sandbox::stop`] gives the guest's commands by default.
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Why an embedding call failed. Every message is one line, as the CLI
/// prints it.
#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    /// No sandbox of that name is recorded.
    #[error("no sandbox named {0:?}")]
    NotFound(String),
    /// A sandbox of that name exists already.
    #[error("a sandbox named {0:?} already exists")]
    AlreadyExists(String),
    /// The sandbox exists but is not running.
    #[error("sandbox {0} is not running")]
    NotRunning(String),
    /// A setting given to the builder is invalid.
    #[error("{0}")]
    InvalidArgument(String),
    /// The `alcove` executable cannot be found.
    #[error("cannot find the alcove executable: set {EXECUTABLE_ENV} or SandboxBuilder::executable ({0})")]
    NoExecutable(String),
    /// Talking to the sandbox failed.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// Anything else alcove refused or failed at (starting, stopping,
    /// records), with the CLI's message.
    #[error("{0}")]
    Failed(String),
}

impl From<CliError> for EmbedError {
    fn from(e: CliError) -> EmbedError {
        EmbedError::Failed(e.to_string())
    }
}

/// The guest backend of a new sandbox.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Backend {
    /// krun where microVMs can boot, else jail (the CLI's default).
    #[default]
    Auto,
    /// Linux-namespace jail.
    Jail,
    /// libkrun microVM.
    Krun,
}

impl std::str::FromStr for Backend {
    type Err = EmbedError;
    fn from_str(s: &str) -> Result<Backend, EmbedError> {
        match s {
            "auto" => Ok(Backend::Auto),
            "jail" => Ok(Backend::Jail),
            "krun" => Ok(Backend::Krun),
            other => {
                Err(EmbedError::InvalidArgument(format!("unknown backend {other:?} (expected auto, jail or krun)")))
            }
        }
    }
}

/// Settings of a new sandbox; see [`Sandbox::builder`]. Every setting left
/// alone has the CLI's default.
#[derive(Clone, Debug)]
pub struct SandboxBuilder {
    name: String,
    home: Option<PathBuf>,
    executable: Option<PathBuf>,
    backend: Backend,
    rootfs: String,
    cpus: Option<u32>,
    memory_mib: Option<u64>,
    pids: Option<u64>,
    disk_mib: Option<u64>,
    idle_timeout: Option<Duration>,
    max_duration: Option<Duration>,
    network: Option<String>,
    net_rules: Vec<String>,
    env: Vec<(String, String)>,
    volumes: Vec<String>,
    workdir: Option<String>,
    user: Option<String>,
    auto_remove: bool,
}

impl SandboxBuilder {
    /// The installation to use: `home` instead of `$ALCOVE_HOME` (sockets
    /// stay in the environment's runtime directory).
    pub fn home(mut self, home: impl Into<PathBuf>) -> Self {
        self.home = Some(home.into());
        self
    }
    /// The `alcove` executable that runs the sandbox process (default:
    /// [`alcove_executable`]).
    pub fn executable(mut self, path: impl Into<PathBuf>) -> Self {
        self.executable = Some(path.into());
        self
    }
    /// The guest backend (default [`Backend::Auto`]).
    pub fn backend(mut self, backend: Backend) -> Self {
        self.backend = backend;
        self
    }
    /// Root filesystem: an imported rootfs's name, a directory, or an image
    /// reference (default `default`, built on first use).
    pub fn rootfs(mut self, rootfs: impl Into<String>) -> Self {
        self.rootfs = rootfs.into();
        self
    }
    /// CPU limit.
    pub fn cpus(mut self, cpus: u32) -> Self {
        self.cpus = Some(cpus);
        self
    }
    /// Memory limit in MiB.
    pub fn memory_mib(mut self, mib: u64) -> Self {
        self.memory_mib = Some(mib);
        self
    }
    /// Process limit.
    pub fn pids(mut self, pids: u64) -> Self {
        self.pids = Some(pids);
        self
    }
    /// Limit of the writable layer in MiB.
    pub fn disk_mib(mut self, mib: u64) -> Self {
        self.disk_mib = Some(mib);
        self
    }
    /// Stop after this long without activity.
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = Some(timeout);
        self
    }
    /// Stop this long after the start.
    pub fn max_duration(mut self, duration: Duration) -> Self {
        self.max_duration = Some(duration);
        self
    }
    /// Network profile: `none` (default), `public`, `private`, `host`, `all`.
    pub fn network(mut self, profile: impl Into<String>) -> Self {
        self.network = Some(profile.into());
        self
    }
    /// An ordered network rule, as `--net-rule`.
    pub fn net_rule(mut self, rule: impl Into<String>) -> Self {
        self.net_rules.push(rule.into());
        self
    }
    /// An environment variable of every command.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }
    /// A bind mount `HOST:GUEST[:ro]`.
    pub fn volume(mut self, spec: impl Into<String>) -> Self {
        self.volumes.push(spec.into());
        self
    }
    /// Working directory of commands (absolute).
    pub fn workdir(mut self, dir: impl Into<String>) -> Self {
        self.workdir = Some(dir.into());
        self
    }
    /// User of commands.
    pub fn user(mut self, user: impl Into<String>) -> Self {
        self.user = Some(user.into());
        self
    }
    /// Remove the sandbox once it stops (as `--rm`).
    pub fn auto_remove(mut self, remove: bool) -> Self {
        self.auto_remove = remove;
        self
    }

    /// The CLI's options for these settings, checked as the CLI checks them.
    fn options(&self) -> Result<SandboxOpts, EmbedError> {
        let bad = |m: String| Err(EmbedError::InvalidArgument(m));
        if let Some(c) = self.cpus {
            if !(1..=1024).contains(&c) {
                return bad(format!("cpus must be between 1 and 1024, not {c}"));
            }
        }
        if let Some(m) = self.memory_mib {
            if !(16..=16_777_216).contains(&m) {
                return bad(format!("memory must be between 16 and 16777216 MiB, not {m}"));
            }
        }
        if let Some(p) = self.pids {
            if !(8..=4_194_304).contains(&p) {
                return bad(format!("pids must be between 8 and 4194304, not {p}"));
            }
        }
        if let Some(d) = self.disk_mib {
            if !(16..=16_777_216).contains(&d) {
                return bad(format!("disk must be between 16 and 16777216 MiB, not {d}"));
            }
        }
        for (what, t) in [("idle_timeout", self.idle_timeout), ("max_duration", self.max_duration)] {
            if t.is_some_and(|t| t.is_zero()) {
                return bad(format!("{what} must be more than zero"));
            }
        }
        if let Some((k, _)) = self.env.iter().find(|(k, _)| k.is_empty() || k.contains('=') || k.contains('\0')) {
            return bad(format!("invalid environment variable name {k:?}"));
        }
        Ok(SandboxOpts {
            rm: self.auto_remove,
            rootfs: self.rootfs.clone(),
            registry: Default::default(),
            backend: match self.backend {
                Backend::Auto => BackendArg::Auto,
                Backend::Jail => BackendArg::Jail,
                Backend::Krun => BackendArg::Krun,
            },
            cpus: self.cpus,
            memory: self.memory_mib,
            pids: self.pids,
            shm_size: None,
            tmp_size: None,
            disk: self.disk_mib,
            idle_timeout: self.idle_timeout,
            max_duration: self.max_duration,
            env: self.env.clone(),
            volume: self.volumes.clone(),
            workdir: self.workdir.clone(),
            user: self.user.clone(),
            net: NetOpts { net: self.network.clone(), net_rule: self.net_rules.clone(), ..NetOpts::default() },
        })
    }

    /// Creates the sandbox and starts it; returns once it accepts
    /// commands, with a connected client.
    pub async fn start(self) -> Result<Sandbox, EmbedError> {
        off_the_runtime(move || self.start_here()).await
    }

    async fn start_here(self) -> Result<Sandbox, EmbedError> {
        alcove_client::paths::validate_name(&self.name)?;
        let opts = self.options()?;
        let exe = alcove_executable(self.executable.as_deref())?;
        let layout = layout_of(self.home.as_deref());
        let ctx = Ctx::open_quiet_in(layout.clone())?;
        ctx.reap_one(&self.name)?;
        if ctx.store.sandbox(&self.name).map_err(CliError::from)?.is_some() {
            return Err(EmbedError::AlreadyExists(self.name));
        }
        let process = launch::spawn_pending_with(&exe)?;
        let meta = CliMeta {
            auto_remove: self.auto_remove,
            rootfs: self.rootfs.clone(),
            backend_requested: format!("{:?}", self.backend).to_lowercase(),
            detached_command: None,
            interactive: false,
            owner: None,
        };
        let (client, started) = create_and_start(&ctx, process, &self.name, &opts, None, meta).await?;
        let pid = started.pid;
        reap_in_background(started.child);
        Ok(Sandbox { name: self.name, layout, client, pid, auto_remove: self.auto_remove })
    }
}

/// Waits for the sandbox process (this process's child) on a small thread
/// of its own, so its exit leaves no zombie.
fn reap_in_background(mut child: std::process::Child) {
    let spawned = std::thread::Builder::new().name("alcove-reap".into()).stack_size(64 * 1024).spawn(move || {
        let _ = child.wait();
    });
    // Without a thread the child is reaped by nobody until this process
    // ends; the reaper of the CLI treats a zombie as gone.
    drop(spawned);
}

fn layout_of(home: Option<&Path>) -> Layout {
    match home {
        Some(h) => Layout::new(h),
        None => Layout::from_env(),
    }
}

/// The `alcove` executable that runs sandbox processes: `explicit`, else
/// `$ALCOVE_BIN`, else this program when it is `alcove`, else an `alcove`
/// beside this program or in its parent directory (cargo's `examples/`
/// and `deps/`), else the first `alcove` on `PATH`.
pub fn alcove_executable(explicit: Option<&Path>) -> Result<PathBuf, EmbedError> {
    let usable = |p: &Path| std::fs::metadata(p).is_ok_and(|m| m.is_file());
    if let Some(p) = explicit {
        return if usable(p) {
            Ok(p.to_path_buf())
        } else {
            Err(EmbedError::NoExecutable(format!("{} is not a file", p.display())))
        };
    }
    if let Some(p) = std::env::var_os(EXECUTABLE_ENV).filter(|v| !v.is_empty()).map(PathBuf::from) {
        return if usable(&p) {
            Ok(p)
        } else {
            Err(EmbedError::NoExecutable(format!("${EXECUTABLE_ENV}={} is not a file", p.display())))
        };
    }
    let mut candidates = Vec::new();
    if let Ok(me) = std::env::current_exe() {
        if me.file_name().is_some_and(|n| n == "alcove") {
            candidates.push(me.clone());
        }
        if let Some(dir) = me.parent() {
            candidates.push(dir.join("alcove"));
            if let Some(up) = dir.parent() {
                candidates.push(up.join("alcove"));
            }
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path).map(|d| d.join("alcove")));
    }
    candidates.into_iter().find(|p| usable(p)).ok_or_else(|| EmbedError::NoExecutable("none found".into()))
}

/// What the records say about one sandbox.
#[derive(Clone, Debug)]
pub struct SandboxInfo {
    /// Its name.
    pub name: String,
    /// Its recorded state.
    pub status: SandboxStatus,
    /// The backend it was created with (`jail`, `krun`).
    pub backend: String,
    /// The sandbox process's pid while running.
    pub pid: Option<u32>,
    /// Creation time, ms since the Unix epoch.
    pub created_at_ms: i64,
    /// Its newest run.
    pub last_run: Option<RunRecord>,
}

impl SandboxInfo {
    fn from_records(sb: &alcove_store::SandboxRecord, last: Option<RunRecord>) -> SandboxInfo {
        let cfg: serde_json::Value = serde_json::from_str(&sb.config_json).unwrap_or_default();
        SandboxInfo {
            name: sb.name.clone(),
            status: sb.status,
            backend: cfg.get("backend").and_then(|b| b.as_str()).unwrap_or("?").to_string(),
            pid: last.as_ref().filter(|r| r.status == RunStatus::Running).map(|r| r.pid),
            created_at_ms: sb.created_at_ms,
            last_run: last,
        }
    }
}

/// Every sandbox of the installation at `home` (`None`: `$ALCOVE_HOME`),
/// after the reaper has looked at them, as `alcove ps --all` lists them.
pub fn list(home: Option<&Path>) -> Result<Vec<SandboxInfo>, EmbedError> {
    let ctx = Ctx::open_quiet_in(layout_of(home))?;
    ctx.reap()?;
    let rows = ctx.store.sandboxes_with_latest_run().map_err(CliError::from)?;
    Ok(rows.into_iter().map(|(sb, last)| SandboxInfo::from_records(&sb, last)).collect())
}

/// A running sandbox and a connection to it.
#[derive(Clone)]
pub struct Sandbox {
    name: String,
    layout: Layout,
    client: Client,
    pid: u32,
    auto_remove: bool,
}

impl Sandbox {
    /// Settings for a new sandbox named `name`.
    pub fn builder(name: impl Into<String>) -> SandboxBuilder {
        SandboxBuilder {
            name: name.into(),
            home: None,
            executable: None,
            backend: Backend::Auto,
            rootfs: alcove_rootfs::DEFAULT_NAME.to_string(),
            cpus: None,
            memory_mib: None,
            pids: None,
            disk_mib: None,
            idle_timeout: None,
            max_duration: None,
            network: None,
            net_rules: Vec::new(),
            env: Vec::new(),
            volumes: Vec::new(),
            workdir: None,
            user: None,
            auto_remove: false,
        }
    }

    /// A name for a new sandbox, as `alcove run` makes one.
    pub fn generated_name() -> String {
        launch::generated_name()
    }

    /// Connects to the running sandbox `name` of the installation at `home`
    /// (`None`: `$ALCOVE_HOME`), with the CLI's reaper run on it first.
    pub async fn connect(home: Option<&Path>, name: &str) -> Result<Sandbox, EmbedError> {
        let (home, name) = (home.map(Path::to_path_buf), name.to_string());
        off_the_runtime(move || async move { Sandbox::connect_here(home.as_deref(), &name).await }).await
    }

    async fn connect_here(home: Option<&Path>, name: &str) -> Result<Sandbox, EmbedError> {
        alcove_client::paths::validate_name(name)?;
        let layout = layout_of(home);
        let ctx = Ctx::open_quiet_in(layout.clone())?;
        ctx.reap_one(name)?;
        if ctx.store.sandbox(name).map_err(CliError::from)?.is_none() {
            return Err(EmbedError::NotFound(name.to_string()));
        }
        let Some(run) = ctx.running_run(name)? else { return Err(EmbedError::NotRunning(name.to_string())) };
        let client =
            Client::connect_path(&layout.socket(name).map_err(ClientError::from)?).await.map_err(|e| match e {
                ClientError::NoListener { .. } | ClientError::HandshakeClosed => {
                    EmbedError::NotRunning(name.to_string())
                }
                e => EmbedError::Client(e),
            })?;
        let auto_remove = ctx.meta(name).auto_remove;
        Ok(Sandbox { name: name.to_string(), layout, client, pid: run.pid, auto_remove })
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The pid of its sandbox process.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Its installation's home.
    pub fn home(&self) -> &Path {
        self.layout.home()
    }

    /// The connection to it: commands, files.
    pub fn client(&self) -> &Client {
        &self.client
    }

    fn ctx(&self) -> Result<Ctx, EmbedError> {
        let ctx = Ctx::open_quiet_in(self.layout.clone())?;
        ctx.reap_one(&self.name)?;
        Ok(ctx)
    }

    /// Stops it as `alcove stop` does: the guest's commands get `timeout`
    /// after SIGTERM, then a forced stop. Returns whether it was running.
    /// An auto-remove sandbox is removed afterwards.
    pub async fn stop(&self, timeout: Duration) -> Result<bool, EmbedError> {
        let this = self.clone();
        off_the_runtime(move || async move { this.stop_here(timeout).await }).await
    }

    async fn stop_here(&self, timeout: Duration) -> Result<bool, EmbedError> {
        let ctx = self.ctx()?;
        let stopped = launch::stop(&ctx, &self.name, timeout).await?;
        if self.auto_remove {
            remove_if_present(&ctx, &self.name)?;
        }
        Ok(stopped)
    }

    /// Forces it off as `alcove kill` does. Returns whether it was running.
    pub async fn kill(&self) -> Result<bool, EmbedError> {
        let this = self.clone();
        off_the_runtime(move || async move { this.kill_here().await }).await
    }

    async fn kill_here(&self) -> Result<bool, EmbedError> {
        let ctx = self.ctx()?;
        let killed = launch::kill(&ctx, &self.name).await?;
        if self.auto_remove {
            remove_if_present(&ctx, &self.name)?;
        }
        Ok(killed)
    }

    /// Forces it off if running and removes it with its records and files,
    /// as `alcove rm -f` does.
    pub async fn remove(&self) -> Result<(), EmbedError> {
        let this = self.clone();
        off_the_runtime(move || async move { this.remove_here().await }).await
    }

    async fn remove_here(&self) -> Result<(), EmbedError> {
        let ctx = self.ctx()?;
        launch::kill(&ctx, &self.name).await?;
        remove_if_present(&ctx, &self.name)
    }

    /// What the records say about it now.
    pub fn info(&self) -> Result<SandboxInfo, EmbedError> {
        let ctx = self.ctx()?;
        let sb = ctx.store.sandbox(&self.name).map_err(CliError::from)?;
        let sb = sb.ok_or_else(|| EmbedError::NotFound(self.name.clone()))?;
        let last = ctx.store.latest_run(&self.name).map_err(CliError::from)?;
        Ok(SandboxInfo::from_records(&sb, last))
    }

    /// Its newest metric sample, if one was recorded.
    pub fn metrics(&self) -> Result<Option<MetricSample>, EmbedError> {
        let ctx = self.ctx()?;
        if ctx.store.sandbox(&self.name).map_err(CliError::from)?.is_none() {
            return Err(EmbedError::NotFound(self.name.clone()));
        }
        Ok(ctx.store.metrics(&self.name, 1).map_err(CliError::from)?.into_iter().next())
    }
}

/// Runs the future `make` returns on a blocking thread of the caller's
/// tokio runtime and awaits it there. The CLI's start and stop keep a
/// database connection (not `Sync`) across their waits, so their futures
/// are not `Send`; run this way, the embedding API's are, and a host can
/// `tokio::spawn` them.
async fn off_the_runtime<T, F, Fut>(make: F) -> Result<T, EmbedError>
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<T, EmbedError>>,
{
    let handle = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || handle.block_on(make()))
        .await
        .map_err(|e| EmbedError::Failed(format!("the operation failed: {e}")))?
}

fn remove_if_present(ctx: &Ctx, name: &str) -> Result<(), EmbedError> {
    if ctx.store.sandbox(name).map_err(CliError::from)?.is_none() {
        return Ok(());
    }
    ctx.remove(name).map_err(EmbedError::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_settings_are_refused_before_anything_starts() {
        let e = Sandbox::builder("x").memory_mib(1).options().expect_err("refused");
        assert_eq!(e.to_string(), "memory must be between 16 and 16777216 MiB, not 1");
        let e = Sandbox::builder("x").idle_timeout(Duration::ZERO).options().expect_err("refused");
        assert!(matches!(e, EmbedError::InvalidArgument(_)), "{e:?}");
        let e = Sandbox::builder("x").env("A=B", "c").options().expect_err("refused");
        assert!(e.to_string().contains("\"A=B\""), "{e}");
    }

    #[test]
    fn settings_become_the_clis_options() {
        let opts = Sandbox::builder("x")
            .backend(Backend::Jail)
            .memory_mib(256)
            .network("public")
            .idle_timeout(Duration::from_secs(30))
            .env("K", "V")
            .options()
            .expect("valid");
        assert_eq!(opts.backend, BackendArg::Jail);
        assert_eq!(opts.memory, Some(256));
        assert_eq!(opts.net.net.as_deref(), Some("public"));
        assert_eq!(opts.idle_timeout, Some(Duration::from_secs(30)));
        assert_eq!(opts.env, vec![("K".to_string(), "V".to_string())]);
        assert_eq!(opts.rootfs, "default");
    }

    #[test]
    fn backends_parse_by_name() {
        assert_eq!("jail".parse::<Backend>().expect("jail"), Backend::Jail);
        assert!("docker".parse::<Backend>().is_err());
    }

    #[test]
    fn an_explicit_executable_must_exist() {
        let e = alcove_executable(Some(Path::new("/nonexistent/alcove"))).expect_err("refused");
        assert!(matches!(e, EmbedError::NoExecutable(_)), "{e:?}");
    }
}
