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

mod builder;

pub use builder::{alcove_executable, Backend, SandboxBuilder};

use crate::cli::error::CliError;
use crate::cli::launch;
use crate::cli::state::Ctx;
use alcove_client::{Client, ClientError};
use alcove_layout::Layout;
use alcove_store::{MetricSample, RunRecord, RunStatus, SandboxStatus};
use std::path::Path;
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

pub(crate) fn layout_of(home: Option<&Path>) -> Layout {
    match home {
        Some(h) => Layout::new(h),
        None => Layout::from_env(),
    }
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
        SandboxBuilder::new(name.into())
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

    /// Pauses it as `alcove pause` does: every process in it is frozen once
    /// this returns. Refusals (not running, already paused, no freezer)
    /// are [`ClientError::Refused`] with alcove's line.
    pub async fn pause(&self) -> Result<(), EmbedError> {
        Ok(self.client.pause().await?)
    }

    /// Resumes it as `alcove resume` does.
    pub async fn resume(&self) -> Result<(), EmbedError> {
        Ok(self.client.resume().await?)
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
