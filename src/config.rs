//! The sandbox's configuration: what the standalone sandbox process reads
//! from its 0600 config file, and what the embedding API takes.

use crate::store::TerminationReason;
use alcove_backend::mock::MockScript;
use alcove_backend::GuestSpec;
use alcove_layout::Layout;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is not a valid configuration.
    #[error("config file {path} is invalid: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What serde said (names the field).
        message: String,
    },
    /// A value is out of range.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// Which backend runs the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// libkrun microVM.
    Krun,
    /// Linux-namespace jail.
    Jail,
    /// In-process scripted guest.
    Mock,
}

impl BackendKind {
    /// The name used in configs and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Krun => "krun",
            BackendKind::Jail => "jail",
            BackendKind::Mock => "mock",
        }
    }
}

/// Timing policies as written (config file, command line, embedding
/// program), in milliseconds. Not yet checked: a [`Policy`] is made from it
/// once ([`Policy::try_from`]) and is valid from then on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PolicySpec {
    /// End the sandbox after this long without sessions, client frames or touches.
    #[serde(with = "opt_ms")]
    pub idle_timeout: Option<Duration>,
    /// End the sandbox this long after it started.
    #[serde(with = "opt_ms")]
    pub max_duration: Option<Duration>,
    /// The agent must be ready within this long.
    #[serde(with = "ms")]
    pub ready_timeout: Duration,
    /// After ready, this long without a heartbeat or any other frame from
    /// the agent is a lost agent. 30 s by default: the agent beats every
    /// third of it, so an idle sandbox wakes every 10 s for it (see
    /// docs/ARCHITECTURE.md, "Idle means idle").
    #[serde(with = "ms")]
    pub heartbeat_timeout: Duration,
    /// How long a graceful stop may take before the guest is forced off.
    #[serde(with = "ms")]
    pub drain_timeout: Duration,
    /// Inside the guest: SIGTERM to SIGKILL.
    #[serde(with = "ms")]
    pub shutdown_grace: Duration,
    /// How often the watchdog looks at the clock.
    #[serde(with = "ms")]
    pub watchdog_tick: Duration,
    /// How often metrics are sampled; zero disables sampling.
    #[serde(with = "ms")]
    pub metrics_interval: Duration,
    /// The most the run's end may take once the guest has ended: closing
    /// the relay, the final write, publishing the outcome, and the exit
    /// observer's last resort. Shared out by [`ExitBudget`].
    #[serde(with = "ms")]
    pub exit_budget: Duration,
}

impl Default for PolicySpec {
    fn default() -> PolicySpec {
        PolicySpec {
            idle_timeout: None,
            max_duration: None,
            ready_timeout: Duration::from_secs(30),
            heartbeat_timeout: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(5),
            watchdog_tick: Duration::from_millis(100),
            metrics_interval: Duration::from_secs(1),
            exit_budget: Duration::from_secs(15),
        }
    }
}

/// Timing policies that can work: made from a [`PolicySpec`] by
/// [`Policy::try_from`], the one place they are checked, so a `Policy`
/// anywhere (config file, CLI, embedding API) is valid. Reads its values
/// through [`Deref`](std::ops::Deref) to the spec; serialised as the spec.
/// `Policy::default()` is the default spec, which is valid (tested).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "PolicySpec", into = "PolicySpec")]
pub struct Policy(PolicySpec);

impl TryFrom<PolicySpec> for Policy {
    type Error = ConfigError;

    /// Refuses values that cannot work.
    fn try_from(spec: PolicySpec) -> Result<Policy, ConfigError> {
        if spec.watchdog_tick.is_zero() {
            return Err(ConfigError::Invalid("watchdog_tick must be above zero".into()));
        }
        for (name, v) in [("idle_timeout", spec.idle_timeout), ("max_duration", spec.max_duration)] {
            if v.is_some_and(|d| d.is_zero()) {
                return Err(ConfigError::Invalid(format!("{name} must be above zero when set")));
            }
        }
        if spec.shutdown_grace > spec.drain_timeout {
            return Err(ConfigError::Invalid("shutdown_grace must not exceed drain_timeout".into()));
        }
        if spec.exit_budget < ExitBudget::MINIMUM {
            return Err(ConfigError::Invalid(format!(
                "exit_budget must be at least {} ms",
                ExitBudget::MINIMUM.as_millis()
            )));
        }
        Ok(Policy(spec))
    }
}

impl From<Policy> for PolicySpec {
    fn from(policy: Policy) -> PolicySpec {
        policy.0
    }
}

impl std::ops::Deref for Policy {
    type Target = PolicySpec;

    fn deref(&self) -> &PolicySpec {
        &self.0
    }
}

impl Policy {
    /// The values, to change some and check them again
    /// (`Policy::try_from(PolicySpec { idle_timeout, ..policy.spec() })`).
    pub fn spec(&self) -> PolicySpec {
        self.0
    }

    /// How [`PolicySpec::exit_budget`] is shared out.
    pub fn exit_budget(&self) -> ExitBudget {
        ExitBudget { total: self.0.exit_budget }
    }
}

/// The one budget of a run's end, shared out so that its parts never
/// disagree (a store that retries longer than the observer waits would see
/// its correct answer overwritten by the last resort):
///
/// ```text
/// guest ends ──► actors: close relay, [sample ≤ SAMPLE_WAIT], final write ≤ final_write() ──► ack
///                observer waits ack ≤ ack_wait() ──► last resort ≤ LAST_RESORT
///                └──────────────────────────── total ───────────────────────────┘
/// ```
///
/// A metric sample already being written when the run ends delays the
/// final write by at most [`ExitBudget::SAMPLE_WAIT`]; samples still queued
/// are dropped (see `actors::db::SampleGate`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExitBudget {
    /// [`Policy::exit_budget`].
    pub total: Duration,
}

impl ExitBudget {
    /// Kept for the exit observer's own write when the actors did not answer.
    pub const LAST_RESORT: Duration = Duration::from_secs(2);
    /// The most one metric sample may wait for a busy database.
    pub const SAMPLE_WAIT: Duration = Duration::from_millis(100);
    /// Closing the relay and handing the outcome over, around the final write.
    pub const HANDOFF: Duration = Duration::from_millis(500);
    /// The smallest budget that leaves the final write at least a second.
    pub const MINIMUM: Duration = Duration::from_millis(2_000 + 100 + 500 + 1_000);

    /// How long the exit observer waits for the actors' acknowledgement.
    pub fn ack_wait(&self) -> Duration {
        self.total.saturating_sub(Self::LAST_RESORT)
    }

    /// How long the final write may retry a busy database.
    pub fn final_write(&self) -> Duration {
        self.ack_wait().saturating_sub(Self::SAMPLE_WAIT + Self::HANDOFF)
    }
}

/// Which backend runs the guest, with that backend's own settings — the
/// ones it was created with, never replaced by defaults at start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BackendConfig {
    /// libkrun microVM.
    Krun(alcove_krun::KrunConfig),
    /// Linux-namespace jail.
    Jail(alcove_jail::JailOptions),
    /// In-process scripted guest.
    Mock(MockScript),
}

impl BackendConfig {
    /// Which backend this is.
    pub fn kind(&self) -> BackendKind {
        match self {
            BackendConfig::Krun(_) => BackendKind::Krun,
            BackendConfig::Jail(_) => BackendKind::Jail,
            BackendConfig::Mock(_) => BackendKind::Mock,
        }
    }
}

/// Everything the standalone sandbox process needs. Read from and written
/// as a [`SandboxConfigFile`], checked once on the way in.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(try_from = "SandboxConfigFile", into = "SandboxConfigFile")]
pub struct SandboxConfig {
    /// Sandbox name (valid, see [`alcove_layout::validate_name`]).
    pub name: String,
    /// `$ALCOVE_HOME`.
    pub home: PathBuf,
    /// The backend and its settings.
    pub backend: BackendConfig,
    /// The guest to create.
    pub guest: GuestSpec,
    /// Timing policies.
    pub policy: Policy,
    /// agent.sock; derived from home and name when absent.
    pub socket_path: Option<PathBuf>,
    /// The database; `home/alcove.db` when absent.
    pub db_path: Option<PathBuf>,
    /// Exit when this pid dies (an attached `alcove run`).
    pub parent_pid: Option<u32>,
    /// Remove the sandbox (records and directory) once its run has ended
    /// (`--rm`). The attached CLI (`parent_pid`) does it after reading the
    /// outcome; the sandbox process does it itself when there is none or it
    /// is gone.
    pub auto_remove: bool,
    /// The network (`--net`, `--net-rule`, `--dns`, `-p`); see
    /// [`crate::net_settings`].
    pub network: crate::net_settings::NetworkSettings,
}

/// A sandbox configuration as written in its file (0600): the backend is
/// named by `backend`, and its settings are in the field of that name
/// (`"backend": "jail", "jail": { "user_namespace": "never" }`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxConfigFile {
    /// Sandbox name.
    pub name: String,
    /// `$ALCOVE_HOME`.
    pub home: PathBuf,
    /// The backend.
    pub backend: BackendKind,
    /// The guest to create.
    #[serde(default)]
    pub guest: GuestSpec,
    /// Timing policies (checked as they are read).
    #[serde(default)]
    pub policy: Policy,
    /// Settings of the mock backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mock: Option<MockScript>,
    /// Settings of the krun backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub krun: Option<alcove_krun::KrunConfig>,
    /// Settings of the jail backend; absent: the defaults, with the
    /// user-namespace mode from `ALCOVE_JAIL_USERNS`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jail: Option<alcove_jail::JailOptions>,
    /// agent.sock; derived from home and name when absent.
    #[serde(default)]
    pub socket_path: Option<PathBuf>,
    /// The database; `home/alcove.db` when absent.
    #[serde(default)]
    pub db_path: Option<PathBuf>,
    /// Exit when this pid dies (an attached `alcove run`).
    #[serde(default)]
    pub parent_pid: Option<u32>,
    /// See [`SandboxConfig::auto_remove`].
    #[serde(default)]
    pub auto_remove: bool,
    /// The network (`--net`, `--net-rule`, `--dns`, `-p`); see
    /// [`crate::net_settings`].
    #[serde(default)]
    pub network: crate::net_settings::NetworkSettings,
}

impl TryFrom<SandboxConfigFile> for SandboxConfig {
    type Error = ConfigError;

    /// Checks the name and picks the chosen backend's settings; settings
    /// given for another backend are refused unless they are its defaults
    /// (which older alcove versions wrote for every backend).
    fn try_from(file: SandboxConfigFile) -> Result<SandboxConfig, ConfigError> {
        alcove_layout::validate_name(&file.name).map_err(|e| ConfigError::Invalid(e.to_string()))?;
        let kind = file.backend;
        let stray = |given: &str| {
            ConfigError::Invalid(format!("{given} settings are given but the backend is {}", kind.as_str()))
        };
        if kind != BackendKind::Mock && file.mock.as_ref().is_some_and(|m| *m != MockScript::default()) {
            return Err(stray("mock"));
        }
        if kind != BackendKind::Krun && file.krun.as_ref().is_some_and(|k| *k != Default::default()) {
            return Err(stray("krun"));
        }
        if kind != BackendKind::Jail && file.jail.as_ref().is_some_and(|j| *j != Default::default()) {
            return Err(stray("jail"));
        }
        let backend = match kind {
            BackendKind::Mock => BackendConfig::Mock(file.mock.unwrap_or_default()),
            BackendKind::Krun => BackendConfig::Krun(file.krun.unwrap_or_default()),
            BackendKind::Jail => BackendConfig::Jail(match file.jail {
                Some(options) => options,
                None => alcove_jail::JailOptions::from_env().map_err(|e| ConfigError::Invalid(e.to_string()))?,
            }),
        };
        Ok(SandboxConfig {
            name: file.name,
            home: file.home,
            backend,
            guest: file.guest,
            policy: file.policy,
            socket_path: file.socket_path,
            db_path: file.db_path,
            parent_pid: file.parent_pid,
            auto_remove: file.auto_remove,
            network: file.network,
        })
    }
}

impl From<SandboxConfig> for SandboxConfigFile {
    fn from(cfg: SandboxConfig) -> SandboxConfigFile {
        let (mut mock, mut krun, mut jail) = (None, None, None);
        let kind = cfg.backend.kind();
        match cfg.backend {
            BackendConfig::Mock(m) => mock = Some(m),
            BackendConfig::Krun(k) => krun = Some(k),
            BackendConfig::Jail(j) => jail = Some(j),
        }
        SandboxConfigFile {
            name: cfg.name,
            home: cfg.home,
            backend: kind,
            guest: cfg.guest,
            policy: cfg.policy,
            mock,
            krun,
            jail,
            socket_path: cfg.socket_path,
            db_path: cfg.db_path,
            parent_pid: cfg.parent_pid,
            auto_remove: cfg.auto_remove,
            network: cfg.network,
        }
    }
}

impl SandboxConfig {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<SandboxConfig, ConfigError> {
        let text = std::fs::read(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        SandboxConfig::parse(&text, path)
    }

    /// Parses and checks a configuration read from `origin` (a file, or
    /// `-` for stdin).
    pub fn parse(text: &[u8], origin: &Path) -> Result<SandboxConfig, ConfigError> {
        serde_json::from_slice(text)
            .map_err(|e| ConfigError::Parse { path: origin.to_path_buf(), message: e.to_string() })
    }

    /// Where the installation of this sandbox keeps things.
    pub fn layout(&self) -> Layout {
        Layout::new(&self.home)
    }

    /// The database file.
    pub fn db_path(&self) -> PathBuf {
        self.db_path.clone().unwrap_or_else(|| self.layout().db())
    }

    /// `home/sandboxes/<name>`.
    pub fn sandbox_dir(&self) -> PathBuf {
        self.layout().sandbox_dir(&self.name)
    }

    /// The log directory.
    pub fn log_dir(&self) -> PathBuf {
        self.layout().log_dir(&self.name)
    }

    /// agent.sock.
    pub fn socket_path(&self) -> Result<PathBuf, ConfigError> {
        match &self.socket_path {
            Some(p) => Ok(p.clone()),
            None => self.layout().socket(&self.name).map_err(|e| ConfigError::Invalid(e.to_string())),
        }
    }

    /// The guest spec with the per-sandbox paths filled in.
    pub fn guest_spec(&self) -> GuestSpec {
        let mut spec = self.guest.clone();
        spec.name = self.name.clone();
        if spec.sandbox_dir.as_os_str().is_empty() {
            spec.sandbox_dir = self.sandbox_dir();
        }
        if spec.guest_log.as_os_str().is_empty() {
            spec.guest_log = self.layout().log_file(&self.name, alcove_layout::GUEST_LOG);
        }
        spec
    }
}

/// The final outcome of a sandbox run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Outcome {
    /// Why it ended.
    pub reason: TerminationReason,
    /// The guest's exit code, when it exited.
    pub exit_code: Option<i32>,
    /// The signal that killed the guest, when one did.
    pub exit_signal: Option<i32>,
    /// Detail line.
    pub detail: Option<String>,
    /// Whether the run row and sandbox status were committed.
    pub recorded: bool,
}

mod ms {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

mod opt_ms {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&(d.as_millis() as u64)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Ok(Option::<u64>::deserialize(d)?.map(Duration::from_millis))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exit_budget_parts_fit_inside_it() {
        for total in [ExitBudget::MINIMUM, Policy::default().exit_budget, Duration::from_secs(600)] {
            let b = ExitBudget { total };
            assert!(b.final_write() >= Duration::from_secs(1), "{b:?}");
            let sum = b.final_write() + ExitBudget::SAMPLE_WAIT + ExitBudget::HANDOFF + ExitBudget::LAST_RESORT;
            assert_eq!(sum, total);
            assert_eq!(b.ack_wait() + ExitBudget::LAST_RESORT, total);
        }
        // The default leaves the store its whole default retry budget.
        let store = alcove_store::StoreOptions::default();
        assert!(Policy::default().exit_budget().final_write() >= store.retry_budget);
    }

    #[test]
    fn policy_round_trips_in_milliseconds() {
        let p = Policy::try_from(PolicySpec { idle_timeout: Some(Duration::from_millis(1500)), ..Default::default() })
            .expect("valid");
        let json = serde_json::to_value(p).expect("serialises");
        assert_eq!(json["idle_timeout"], 1500);
        assert_eq!(json["max_duration"], serde_json::Value::Null);
        let back: Policy = serde_json::from_value(json).expect("parses");
        assert_eq!(back, p);
    }

    #[test]
    fn bad_policies_are_refused() {
        let check = |spec: PolicySpec| Policy::try_from(spec).map_err(|e| e.to_string());
        let d = PolicySpec::default();
        assert!(check(PolicySpec { watchdog_tick: Duration::ZERO, ..d }).is_err_and(|e| e.contains("watchdog_tick")));
        assert!(
            check(PolicySpec { idle_timeout: Some(Duration::ZERO), ..d }).is_err_and(|e| e.contains("idle_timeout"))
        );
        assert!(check(PolicySpec { shutdown_grace: Duration::from_secs(60), ..d }).is_err());
        assert!(check(PolicySpec { exit_budget: Duration::from_secs(1), ..d }).is_err());
        assert_eq!(check(d).map(|p| p.spec()), Ok(d));
        // A file is checked as it is read: no invalid Policy can be deserialised.
        let bad = serde_json::json!({ "watchdog_tick": 0 });
        let err = serde_json::from_value::<Policy>(bad).expect_err("refused");
        assert!(err.to_string().contains("watchdog_tick must be above zero"), "{err}");
    }

    fn file(extra: serde_json::Value) -> serde_json::Value {
        let mut v = serde_json::json!({ "name": "s", "home": "/h", "backend": "jail" });
        if let (Some(base), serde_json::Value::Object(extra)) = (v.as_object_mut(), extra) {
            base.extend(extra);
        }
        v
    }

    fn parse(v: serde_json::Value) -> Result<SandboxConfig, String> {
        SandboxConfig::parse(v.to_string().as_bytes(), Path::new("-")).map_err(|e| e.to_string())
    }

    #[test]
    fn the_backend_settings_are_kept_and_written_back() {
        let cfg = parse(file(serde_json::json!({ "jail": { "user_namespace": "never", "keep_sys_admin": true } })))
            .expect("valid");
        let BackendConfig::Jail(options) = &cfg.backend else { panic!("not a jail: {:?}", cfg.backend) };
        assert_eq!(options.user_namespace, alcove_jail::UserNamespace::Never);
        assert!(options.keep_sys_admin);
        // Written as it was read: the kind as a string, the settings beside it.
        let json = serde_json::to_value(&cfg).expect("serialises");
        assert_eq!(json["backend"], "jail");
        assert_eq!(json["jail"]["user_namespace"], "never");
        assert!(json.get("mock").is_none() && json.get("krun").is_none(), "{json}");
        let back = parse(json).expect("reads back");
        assert_eq!(back.backend, cfg.backend);
    }

    #[test]
    fn settings_for_another_backend_are_refused_unless_they_are_its_defaults() {
        let err = parse(file(serde_json::json!({ "mock": { "crash_code": 3 } }))).expect_err("refused");
        assert!(err.contains("mock settings are given but the backend is jail"), "{err}");
        // What older versions wrote for every sandbox: the other backends' defaults.
        let old =
            file(serde_json::json!({ "mock": MockScript::default(), "krun": alcove_krun::KrunConfig::default() }));
        assert!(matches!(parse(old).expect("accepted").backend, BackendConfig::Jail(_)));
        let err = parse(file(serde_json::json!({ "name": "../x" }))).expect_err("refused");
        assert!(err.contains("invalid sandbox name"), "{err}");
        let err = parse(file(serde_json::json!({ "policy": { "watchdog_tick": 0 } }))).expect_err("refused");
        assert!(err.contains("watchdog_tick must be above zero"), "{err}");
    }
}
