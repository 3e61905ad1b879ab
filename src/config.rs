//! The sandbox's configuration: what the standalone sandbox process reads
//! from its 0600 config file, and what the embedding API takes.

use crate::store::TerminationReason;
use alcove_backend::mock::MockScript;
use alcove_backend::GuestSpec;
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

/// Timing policies. Serialised as milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Policy {
    /// End the sandbox after this long without sessions, client frames or touches.
    #[serde(with = "opt_ms")]
    pub idle_timeout: Option<Duration>,
    /// End the sandbox this long after it started.
    #[serde(with = "opt_ms")]
    pub max_duration: Option<Duration>,
    /// The agent must be ready within this long.
    #[serde(with = "ms")]
    pub ready_timeout: Duration,
    /// After ready, a gap between heartbeats longer than this is a lost agent.
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

impl Default for Policy {
    fn default() -> Policy {
        Policy {
            idle_timeout: None,
            max_duration: None,
            ready_timeout: Duration::from_secs(30),
            heartbeat_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(5),
            watchdog_tick: Duration::from_millis(100),
            metrics_interval: Duration::from_secs(1),
            exit_budget: Duration::from_secs(15),
        }
    }
}

impl Policy {
    /// Refuses values that cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.watchdog_tick.is_zero() {
            return Err(ConfigError::Invalid("watchdog_tick must be above zero".into()));
        }
        for (name, v) in [("idle_timeout", self.idle_timeout), ("max_duration", self.max_duration)] {
            if v.is_some_and(|d| d.is_zero()) {
                return Err(ConfigError::Invalid(format!("{name} must be above zero when set")));
            }
        }
        if self.shutdown_grace > self.drain_timeout {
            return Err(ConfigError::Invalid("shutdown_grace must not exceed drain_timeout".into()));
        }
        if self.exit_budget < ExitBudget::MINIMUM {
            return Err(ConfigError::Invalid(format!(
                "exit_budget must be at least {} ms",
                ExitBudget::MINIMUM.as_millis()
            )));
        }
        Ok(())
    }

    /// How [`Policy::exit_budget`] is shared out.
    pub fn exit_budget(&self) -> ExitBudget {
        ExitBudget { total: self.exit_budget }
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

/// Everything the standalone sandbox process needs.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxConfig {
    /// Sandbox name.
    pub name: String,
    /// `$ALCOVE_HOME`.
    pub home: PathBuf,
    /// The backend.
    pub backend: BackendKind,
    /// The guest to create.
    #[serde(default)]
    pub guest: GuestSpec,
    /// Timing policies.
    #[serde(default)]
    pub policy: Policy,
    /// Script for the mock backend.
    #[serde(default)]
    pub mock: MockScript,
    /// Settings of the krun backend.
    #[serde(default)]
    pub krun: alcove_krun::KrunConfig,
    /// agent.sock; derived from home and name when absent.
    #[serde(default)]
    pub socket_path: Option<PathBuf>,
    /// The database; `home/alcove.db` when absent.
    #[serde(default)]
    pub db_path: Option<PathBuf>,
    /// Exit when this pid dies (an attached `alcove run`).
    #[serde(default)]
    pub parent_pid: Option<u32>,
    /// Remove the sandbox (records and directory) once its run has ended
    /// (`--rm`). The attached CLI (`parent_pid`) does it after reading the
    /// outcome; the sandbox process does it itself when there is none or it
    /// is gone.
    #[serde(default)]
    pub auto_remove: bool,
    /// The network (`--net`, `--net-rule`, `--dns`, `-p`); see
    /// [`crate::net_settings`].
    #[serde(default)]
    pub network: crate::net_settings::NetworkSettings,
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
        let cfg: SandboxConfig = serde_json::from_slice(text)
            .map_err(|e| ConfigError::Parse { path: origin.to_path_buf(), message: e.to_string() })?;
        cfg.policy.validate()?;
        alcove_client::paths::validate_name(&cfg.name).map_err(|e| ConfigError::Invalid(e.to_string()))?;
        Ok(cfg)
    }

    /// The database file.
    pub fn db_path(&self) -> PathBuf {
        self.db_path.clone().unwrap_or_else(|| self.home.join("alcove.db"))
    }

    /// `home/sandboxes/<name>`.
    pub fn sandbox_dir(&self) -> PathBuf {
        self.home.join("sandboxes").join(&self.name)
    }

    /// The log directory.
    pub fn log_dir(&self) -> PathBuf {
        self.sandbox_dir().join("logs")
    }

    /// agent.sock.
    pub fn socket_path(&self) -> Result<PathBuf, ConfigError> {
        match &self.socket_path {
            Some(p) => Ok(p.clone()),
            None => alcove_client::paths::socket_path(&self.home, &self.name)
                .map_err(|e| ConfigError::Invalid(e.to_string())),
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
            spec.guest_log = self.log_dir().join("guest.log");
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
        let p = Policy { idle_timeout: Some(Duration::from_millis(1500)), ..Policy::default() };
        let json = serde_json::to_value(p).expect("serialises");
        assert_eq!(json["idle_timeout"], 1500);
        assert_eq!(json["max_duration"], serde_json::Value::Null);
        let back: Policy = serde_json::from_value(json).expect("parses");
        assert_eq!(back, p);
    }

    #[test]
    fn bad_policies_are_refused() {
        assert!(Policy { watchdog_tick: Duration::ZERO, ..Policy::default() }.validate().is_err());
        assert!(Policy { idle_timeout: Some(Duration::ZERO), ..Policy::default() }.validate().is_err());
        assert!(Policy { shutdown_grace: Duration::from_secs(60), ..Policy::default() }.validate().is_err());
        assert!(Policy { exit_budget: Duration::from_secs(1), ..Policy::default() }.validate().is_err());
        assert!(Policy::default().validate().is_ok());
    }
}
