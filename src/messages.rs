//! The typed messages the actors exchange.
//!
//! Who sends what:
//!
//! | message | from → to |
//! |---|---|
//! | [`GuestLaunched`] | sandbox start-up → Lifecycle (which hands the parts on) |
//! | [`AttachGuest`] | Lifecycle → Relay |
//! | [`AttachControl`] | Lifecycle → Guest, Metrics |
//! | [`LaunchFailed`] | sandbox start-up → Lifecycle |
//! | [`AgentReady`] | Relay → Lifecycle |
//! | [`OpenToClients`] | Lifecycle → Relay (once Running is recorded) |
//! | [`Terminate`] | Watchdog, Relay, signal handler, Db failures, embedding handle → Lifecycle |
//! | [`GuestExited`] | exit observer (any thread) → Lifecycle |
//! | [`StopGuest`] | Lifecycle → Guest (only after the reason is fixed) |
//! | [`SendShutdown`] | Guest → Relay |
//! | [`GetActivity`] | Watchdog → Relay |
//! | [`Touch`] | embedding handle → Relay |
//! | [`SetPaused`] | Relay (a client's `SandboxRequest`) → Lifecycle |
//! | [`CloseRelay`] | Lifecycle → Relay |
//! | [`DbStartRun`], [`DbSetStatus`], [`DbFinishRun`], [`DbInsertMetrics`] | Lifecycle, Metrics → Db |

use crate::run_end::{Cleanup, RunEnd};
use crate::store::{RunId, SandboxStatus, TerminationReason};
use actix::prelude::*;
use alcove_backend::{GuestControl, GuestExit};
use alcove_protocol::Ready;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::Duration;

/// The backend created the guest; its parts go to the actors that use them.
#[derive(Message)]
#[rtype(result = "()")]
pub struct GuestLaunched {
    /// Host end of the agent channel, for the Relay.
    pub agent_channel: UnixStream,
    /// Stop and usage handle, for Guest and Metrics.
    pub control: Arc<dyn GuestControl>,
}

/// The backend could not create the guest; there will be no [`GuestExited`], so
/// Lifecycle finalises the run itself. `ack` is answered when it has.
#[derive(Message)]
#[rtype(result = "()")]
pub struct LaunchFailed {
    /// The backend's error, one line.
    pub error: String,
    /// Answered once the run is final.
    pub ack: crossbeam_channel::Sender<()>,
}

/// The agent sent `Ready`.
#[derive(Message, Clone, Debug)]
#[rtype(result = "()")]
pub struct AgentReady {
    /// The agent's greeting (boot timings, versions).
    pub ready: Ready,
}

/// A cause to end the sandbox. Lifecycle keeps the first one it receives.
#[derive(Message, Clone, Debug, PartialEq, Eq)]
#[rtype(result = "()")]
pub struct Terminate {
    /// The reason recorded if this cause is the first.
    pub reason: TerminationReason,
    /// Detail for the run row.
    pub detail: Option<String>,
    /// Skip the graceful shutdown and force the guest off at once.
    pub force: bool,
}

impl Terminate {
    /// A cause with a detail line, stopped gracefully where possible.
    pub fn new(reason: TerminationReason, detail: impl Into<String>) -> Terminate {
        Terminate { reason, detail: Some(detail.into()), force: false }
    }

    /// The same cause, but forcing the guest off at once.
    pub fn forced(mut self) -> Terminate {
        self.force = true;
        self
    }
}

/// The guest has ended. Sent by the exit observer, which blocks on `ack`
/// until Lifecycle has committed the outcome and removed the socket.
#[derive(Message)]
#[rtype(result = "()")]
pub struct GuestExited {
    /// How the guest ended.
    pub exit: GuestExit,
    /// Answered once the run is final.
    pub ack: crossbeam_channel::Sender<()>,
}

/// Lifecycle → Guest: end the guest. `graceful` asks the agent first and waits
/// `drain_timeout` before forcing.
#[derive(Message, Clone, Copy, Debug)]
#[rtype(result = "()")]
pub struct StopGuest {
    /// Ask the agent to shut down first.
    pub graceful: bool,
}

/// Guest → Relay: send `Shutdown` to the agent.
#[derive(Message, Clone, Copy, Debug)]
#[rtype(result = "bool")]
pub struct SendShutdown {
    /// Grace between SIGTERM and SIGKILL inside the guest.
    pub grace: Duration,
}

/// Watchdog → Relay: what has happened lately.
#[derive(Message, Clone, Copy, Debug)]
#[rtype(result = "Activity")]
pub struct GetActivity;

/// The Relay's view of liveness and use, in [`crate::clock::Clock`] time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Activity {
    /// When `Ready` arrived.
    pub ready_at: Option<Duration>,
    /// When the last heartbeat arrived.
    pub last_heartbeat: Option<Duration>,
    /// Last client frame, touch, or session end.
    pub last_activity: Duration,
    /// Sessions open now.
    pub open_sessions: usize,
    /// The guest is paused (Lifecycle's state, mirrored by the relay).
    pub paused: bool,
}

/// Relay → Lifecycle: pause (`true`) or resume (`false`) the guest, for a
/// client's `SandboxRequest`. Answers `Err` with one line for the user when
/// the sandbox is not in a state that allows it or the backend fails.
#[derive(Message, Clone, Copy, Debug, PartialEq, Eq)]
#[rtype(result = "Result<(), String>")]
pub struct SetPaused {
    /// Pause, or resume.
    pub paused: bool,
}

/// Counts as activity for the idle timeout.
#[derive(Message, Clone, Copy, Debug)]
#[rtype(result = "()")]
pub struct Touch;

/// Lifecycle → Relay: stop accepting (connections are refused from then
/// on), route the guest's last frames (until its channel ends, briefly),
/// then abort open sessions and close clients. agent.sock itself stays until
/// the run's end is committed ([`crate::run_end::finish`] removes it).
#[derive(Message, Clone, Copy, Debug)]
#[rtype(result = "()")]
pub struct CloseRelay;

/// Creates the sandbox row if needed and inserts a Running run.
#[derive(Message, Clone, Debug)]
#[rtype(result = "Result<RunId, String>")]
pub struct DbStartRun {
    /// Sandbox name.
    pub sandbox: String,
    /// Its configuration, as JSON.
    pub config_json: String,
    /// The sandbox process's pid.
    pub pid: u32,
    /// Its start time in clock ticks since boot (see
    /// [`crate::liveness::ProcessIdentity`]).
    pub pid_start_ticks: Option<u64>,
}

/// Sets the sandbox status.
#[derive(Message, Clone, Debug)]
#[rtype(result = "Result<(), String>")]
pub struct DbSetStatus {
    /// Sandbox name.
    pub sandbox: String,
    /// New status.
    pub status: SandboxStatus,
}

/// Makes the run's end final through [`crate::run_end::finish`] (writes the
/// run and the sandbox's final status, then removes agent.sock). Answers
/// whether the run is recorded as ended.
#[derive(Message, Clone, Debug)]
#[rtype(result = "bool")]
pub struct DbFinishRun {
    /// The run (`None`: its row was never written; only the clean-up runs).
    pub run: Option<RunId>,
    /// How it ended.
    pub end: RunEnd,
    /// What to remove once it is written.
    pub cleanup: Cleanup,
}

/// Stores a batch of metric samples in one write.
#[derive(Message, Clone, Debug)]
#[rtype(result = "Result<(), String>")]
pub struct DbInsertMetrics {
    /// Sandbox name.
    pub sandbox: String,
    /// The samples, oldest first.
    pub samples: Vec<crate::store::MetricSample>,
}

/// Lifecycle → Relay: the guest's end of the agent channel is ready to use.
#[derive(Message)]
#[rtype(result = "()")]
pub struct AttachGuest {
    /// Host end of the agent channel.
    pub channel: UnixStream,
}

/// Lifecycle → Relay: the sandbox is recorded Running; clients waiting for
/// the agent may now get their handshake. Holding them until then means a
/// client that has connected never sees the sandbox as still Starting.
#[derive(Message, Clone, Copy, Debug)]
#[rtype(result = "()")]
pub struct OpenToClients;

/// Lifecycle → Guest and Metrics: the guest control handle.
#[derive(Message, Clone)]
#[rtype(result = "()")]
pub struct AttachControl {
    /// The handle.
    pub control: Arc<dyn GuestControl>,
}
