//! The records the store reads and writes, and the enums stored as text.
//!
//! Every enum is stored as its [`as_str`](SandboxStatus::as_str) text, which is
//! also its serde and `Display` form; `FromStr` accepts exactly that text. The
//! schema's CHECK constraints list the same strings, so adding a variant needs
//! a schema migration.

use std::fmt;
use std::str::FromStr;

use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};
use serde::{Deserialize, Serialize};

/// A text value that names no variant of a stored enum.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {kind} \"{value}\" (expected one of: {expected})")]
pub struct ParseEnumError {
    /// The enum's name, e.g. "sandbox status".
    pub kind: &'static str,
    /// The rejected text.
    pub value: String,
    /// The accepted texts, comma separated.
    pub expected: String,
}

macro_rules! stored_enum {
    (
        $(#[$meta:meta])*
        $name:ident, $kind:literal {
            $( $(#[$vmeta:meta])* $variant:ident ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum $name {
            $( $(#[$vmeta])* $variant, )+
        }

        impl $name {
            /// Every variant, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The text stored in the database (and printed).
            pub const fn as_str(self) -> &'static str {
                match self {
                    $( $name::$variant => stringify!($variant), )+
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = ParseEnumError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $( stringify!($variant) => Ok($name::$variant), )+
                    _ => Err(ParseEnumError {
                        kind: $kind,
                        value: s.to_owned(),
                        expected: [$(stringify!($variant)),+].join(", "),
                    }),
                }
            }
        }

        impl ToSql for $name {
            fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
                Ok(ToSqlOutput::from(self.as_str()))
            }
        }

        impl FromSql for $name {
            fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
                let text = value.as_str()?;
                text.parse().map_err(|e| FromSqlError::Other(Box::new(e)))
            }
        }
    };
}

stored_enum! {
    /// The state of a sandbox as last recorded.
    SandboxStatus, "sandbox status" {
        /// A run was started and has not reported ready yet.
        Starting,
        /// The sandbox is up.
        Running,
        /// The sandbox is up, its guest's processes frozen (`alcove pause`).
        Paused,
        /// The sandbox is shutting down.
        Draining,
        /// No run is active (also the state of a newly created sandbox).
        Stopped,
        /// The last run ended with reason `Crashed`.
        Crashed,
    }
}

stored_enum! {
    /// The state of one run.
    RunStatus, "run status" {
        /// The run's process is (believed to be) alive.
        Running,
        /// The run ended; its outcome is recorded.
        Terminated,
    }
}

stored_enum! {
    /// Why a run ended.
    TerminationReason, "termination reason" {
        /// The workload exited with status 0.
        Completed,
        /// The workload exited with a non-zero status.
        Failed,
        /// No activity for the configured idle timeout.
        IdleTimeout,
        /// The configured maximum duration elapsed.
        MaxDurationExceeded,
        /// A shutdown was requested (CLI, client, host signal).
        ShutdownRequested,
        /// The sandbox process was killed by a signal.
        Signal,
        /// The guest agent stopped sending heartbeats.
        AgentUnresponsive,
        /// The network policy required the sandbox to stop.
        NetworkPolicy,
        /// alcove itself failed.
        InternalError,
        /// The sandbox process vanished without recording an outcome.
        Crashed,
    }
}

/// The id of a run row. Ids are never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RunId(pub i64);

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// One sandbox row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SandboxRecord {
    /// Row id.
    pub id: i64,
    /// Unique name.
    pub name: String,
    /// The sandbox config as JSON text (always valid JSON).
    pub config_json: String,
    /// Last recorded state.
    pub status: SandboxStatus,
    /// Creation time, ms since the Unix epoch.
    pub created_at_ms: i64,
    /// Last change of config or status, ms since the Unix epoch.
    pub updated_at_ms: i64,
}

/// One run row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RunRecord {
    /// Run id.
    pub id: RunId,
    /// Name of the sandbox the run belongs to.
    pub sandbox: String,
    /// Host pid of the sandbox process.
    pub pid: u32,
    /// Start time of that process in clock ticks since boot, which tells it
    /// from a later process with the same pid (None for runs recorded by
    /// an older alcove).
    pub pid_start_ticks: Option<u64>,
    /// Running or Terminated.
    pub status: RunStatus,
    /// Exit code, if the run ended with one.
    pub exit_code: Option<i32>,
    /// Terminating signal, if any.
    pub exit_signal: Option<i32>,
    /// Why the run ended (None while running).
    pub reason: Option<TerminationReason>,
    /// Free-form detail about the end.
    pub detail: Option<String>,
    /// Start time, ms since the Unix epoch.
    pub started_at_ms: i64,
    /// End time, ms since the Unix epoch (None while running).
    pub terminated_at_ms: Option<i64>,
}

/// How a run ended, as given to [`Store::finish_run`](crate::Store::finish_run).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunOutcome {
    /// Why the run ended.
    pub reason: TerminationReason,
    /// Exit code, if any.
    pub exit_code: Option<i32>,
    /// Terminating signal, if any.
    pub exit_signal: Option<i32>,
    /// Free-form detail.
    pub detail: Option<String>,
}

/// One metrics sample of a sandbox. Counters are cumulative as read from the
/// host; values above `i64::MAX` are stored as `i64::MAX`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetricSample {
    /// Sample time, ms since the Unix epoch.
    pub at_ms: i64,
    /// CPU time used, microseconds.
    pub cpu_usec: u64,
    /// Resident memory, bytes.
    pub memory_bytes: u64,
    /// Bytes read from block devices.
    pub io_read_bytes: u64,
    /// Bytes written to block devices.
    pub io_write_bytes: u64,
    /// Bytes received on the sandbox network.
    pub net_rx_bytes: u64,
    /// Bytes sent on the sandbox network.
    pub net_tx_bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip<T>(all: &[T])
    where
        T: Copy + fmt::Debug + PartialEq + FromStr<Err = ParseEnumError> + fmt::Display + Serialize,
        for<'de> T: Deserialize<'de>,
    {
        for &v in all {
            let text = v.to_string();
            assert_eq!(text.parse::<T>(), Ok(v));
            let json = serde_json::to_string(&v).expect("serialize");
            assert_eq!(json, format!("\"{text}\""));
            let back: T = serde_json::from_str(&json).expect("deserialize");
            assert_eq!(back, v);
        }
    }

    #[test]
    fn enums_round_trip_through_text_and_serde() {
        round_trip(SandboxStatus::ALL);
        round_trip(RunStatus::ALL);
        round_trip(TerminationReason::ALL);
        assert_eq!(SandboxStatus::ALL.len(), 6);
        assert_eq!(RunStatus::ALL.len(), 2);
        assert_eq!(TerminationReason::ALL.len(), 10);
        assert_eq!(TerminationReason::MaxDurationExceeded.as_str(), "MaxDurationExceeded");
        assert_eq!(RunStatus::Running.as_str(), "Running");
    }

    #[test]
    fn parse_error_names_the_kind_and_the_choices() {
        let err = "running".parse::<RunStatus>().expect_err("case matters");
        assert_eq!(err.kind, "run status");
        assert_eq!(err.to_string(), "unknown run status \"running\" (expected one of: Running, Terminated)");
        assert!("".parse::<TerminationReason>().is_err());
        assert!("Stopped ".parse::<SandboxStatus>().is_err());
    }

    #[test]
    fn records_serialize_with_the_documented_field_names() {
        let rec = RunRecord {
            id: RunId(7),
            sandbox: "web".into(),
            pid: 42,
            pid_start_ticks: Some(1234),
            status: RunStatus::Terminated,
            exit_code: Some(1),
            exit_signal: None,
            reason: Some(TerminationReason::Failed),
            detail: Some("exit 1".into()),
            started_at_ms: 10,
            terminated_at_ms: Some(20),
        };
        let v = serde_json::to_value(&rec).expect("serialize");
        assert_eq!(v["id"], 7);
        assert_eq!(v["sandbox"], "web");
        assert_eq!(v["status"], "Terminated");
        assert_eq!(v["reason"], "Failed");
        assert_eq!(v["exit_signal"], serde_json::Value::Null);
        assert_eq!(v["terminated_at_ms"], 20);
    }
}
