//! [`SandboxBuilder`]: the settings of a new sandbox, turned into the CLI's
//! `create` options and started through the CLI's create-and-start path;
//! and where the `alcove` executable that runs sandbox processes is found.

use super::{layout_of, off_the_runtime, EmbedError, Sandbox, EXECUTABLE_ENV};
use crate::cli::args::{BackendArg, SandboxOpts};
use crate::cli::commands::create_and_start;
use crate::cli::error::CliError;
use crate::cli::launch;
use crate::cli::net::NetOpts;
use crate::cli::state::{CliMeta, Ctx};
use std::path::{Path, PathBuf};
use std::time::Duration;

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
    hostname: Option<String>,
    auto_remove: bool,
}

impl SandboxBuilder {
    /// Every setting at the CLI's default.
    pub(super) fn new(name: String) -> SandboxBuilder {
        SandboxBuilder {
            name,
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
            hostname: None,
            auto_remove: false,
        }
    }

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
    /// The guest's hostname (default: the sandbox name; jail backend only).
    pub fn hostname(mut self, hostname: impl Into<String>) -> Self {
        self.hostname = Some(hostname.into());
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
        if let Some(h) = &self.hostname {
            crate::backends::check_hostname(h).map_err(EmbedError::InvalidArgument)?;
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
            hostname: self.hostname.clone(),
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
