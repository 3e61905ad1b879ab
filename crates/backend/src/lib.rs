//! The seam between alcove's actors and the thing that runs a guest.
//!
//! A backend ([`GuestBackend`]) turns a [`GuestSpec`] into a running guest and
//! hands back three things ([`Launched`]):
//!
//! - the host end of the **agent channel**, a connected `SOCK_STREAM` Unix
//!   socket carrying protocol frames to and from the guest agent (see
//!   [`console`]); every backend uses the same channel type, so the relay
//!   does not know which backend it talks to;
//! - a [`GuestRunner`], which the sandbox process runs on its main thread:
//!   it drives the guest to its end and then reports the exit through the
//!   [`ExitObserver`]. For the krun backend it never returns;
//! - a [`GuestControl`], shared with the Vm actor, to end the guest at once
//!   and to read its resource usage.
//!
//! Backends know nothing of actors, sockets for clients or the database.
#![warn(missing_docs)]

pub mod console;
pub mod guest_log;
pub mod mock;
pub mod names;
mod spec;

pub use spec::{GuestNetwork, GuestSpec, MountSpec};

use std::os::unix::net::UnixStream;
use std::sync::Arc;

/// Why a backend could not create its guest.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The spec asks for something this backend cannot do.
    #[error("invalid sandbox configuration: {0}")]
    InvalidConfig(String),
    /// The host lacks what the backend needs.
    #[error("this host cannot run the {backend} backend: {reason}")]
    Unsupported {
        /// Backend name.
        backend: &'static str,
        /// What is missing.
        reason: String,
    },
    /// A system call or file operation failed while setting up the guest.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Any other setup failure.
    #[error("{0}")]
    Setup(String),
}

impl BackendError {
    /// Wraps an I/O error with what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> BackendError {
        BackendError::Io { context: context.into(), source }
    }
}

/// A guest backend: krun, jail or mock.
pub trait GuestBackend: Send {
    /// Validates the spec and creates the guest. Every check that can fail
    /// must happen here, before anything irreversible, so bad input becomes a
    /// clear error and an InternalError run rather than a half-built guest.
    fn launch(self: Box<Self>, spec: &GuestSpec) -> Result<Launched, BackendError>;

    /// Removes what a guest of sandbox `sandbox` left on the host when its
    /// sandbox process `pid` died before its own clean-up (a jail's
    /// cgroups); may wait a bounded while for the kernel to release them.
    /// True once nothing is left. Called by whoever finalises a run whose
    /// process is gone (the CLI's reaper), never while that process lives.
    fn remove_leftovers(&self, sandbox: &str, pid: u32) -> bool {
        let _ = (sandbox, pid);
        true
    }
}

/// A guest that has been created.
pub struct Launched {
    /// Host end of the agent channel.
    pub agent_channel: UnixStream,
    /// Drives the guest to its end on the calling thread.
    pub runner: Box<dyn GuestRunner>,
    /// Ends the guest and reads its usage; shared with the Vm actor.
    pub control: Arc<dyn GuestControl>,
    /// The host end of the guest's network link when the spec asked for
    /// one: a TAP device's descriptor (a jail) or the engine's end of a
    /// frame pair (a microVM). `None` otherwise.
    pub network_device: Option<NetworkDevice>,
}

/// The host end of a guest's network link.
#[derive(Debug)]
pub enum NetworkDevice {
    /// A TAP device (`IFF_TAP | IFF_NO_PI`, non-blocking) created inside
    /// the guest's network namespace, and its name there.
    Tap {
        /// The device's descriptor.
        fd: std::os::fd::OwnedFd,
        /// The interface's name inside the guest.
        name: String,
    },
    /// One end of an `AF_UNIX` `SOCK_SEQPACKET` pair (non-blocking, one
    /// message per Ethernet frame, no virtio header) whose other end the
    /// microVM's virtio-net device reads and writes.
    FramePair {
        /// The engine's end.
        fd: std::os::fd::OwnedFd,
    },
}

/// Runs a guest to its end.
pub trait GuestRunner: Send {
    /// Blocks until the guest has ended, then calls `observer` exactly once.
    /// Implementations that cannot return (a libkrun VM: `Vm::enter()` ends
    /// in `_exit`) call `observer` from their exit hook instead.
    fn run(self: Box<Self>, observer: ExitObserver);
}

/// Control over a running guest, usable from any thread.
pub trait GuestControl: Send + Sync {
    /// Ends the guest now. Idempotent; returns without waiting for the end,
    /// which is reported by the runner as usual.
    fn force_stop(&self);

    /// Resource usage of the whole guest, where the backend can see it
    /// (a jail's cgroup). `None` when the backend cannot measure it; the
    /// metrics actor then samples the sandbox process instead.
    fn usage(&self) -> Option<GuestUsage> {
        None
    }

    /// Freezes every process of the guest and returns once they are all
    /// stopped (may block up to a couple of seconds); on failure the guest
    /// is left running. The error is one line for the user.
    fn pause(&self) -> Result<(), String> {
        Err("this sandbox's backend cannot pause it".into())
    }

    /// Lets a paused guest run again. Idempotent.
    fn resume(&self) -> Result<(), String> {
        Err("this sandbox's backend cannot resume it".into())
    }
}

/// Resource usage of a guest.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GuestUsage {
    /// CPU time, microseconds, all processes.
    pub cpu_usec: u64,
    /// Memory in use, bytes.
    pub memory_bytes: u64,
    /// Bytes read from block devices.
    pub io_read_bytes: u64,
    /// Bytes written to block devices.
    pub io_write_bytes: u64,
}

/// How a guest ended: by itself with an exit code, or killed by a signal
/// (a jail's PID 1 killed by SIGKILL is `signal: Some(9)`, not code 137).
/// A guest whose end says neither (a VMM that lost it) has both `None`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestExit {
    /// Exit code of the guest's init (a jail's PID 1; a VM's reported code).
    pub code: Option<i32>,
    /// The signal that killed the guest's init.
    pub signal: Option<i32>,
    /// Set when the guest did not end by itself in an orderly way (VMM
    /// error, a failed wait); recorded as the run's detail.
    pub detail: Option<String>,
}

impl GuestExit {
    /// The guest's init exited with `code`.
    pub fn exited(code: i32) -> GuestExit {
        GuestExit { code: Some(code), signal: None, detail: None }
    }

    /// The guest's init was killed by `signal`.
    pub fn killed(signal: i32) -> GuestExit {
        GuestExit { code: None, signal: Some(signal), detail: None }
    }

    /// The same end, with `detail` saying what was unusual about it.
    pub fn with_detail(mut self, detail: impl Into<String>) -> GuestExit {
        self.detail = Some(detail.into());
        self
    }
}

/// The exit-observer contract: one synchronous call, from any thread, that
/// returns only when the outcome is final (reason decided, run row and
/// sandbox status committed, agent.sock removed) or a bounded budget ran out.
#[derive(Clone)]
pub struct ExitObserver(Arc<dyn Fn(GuestExit) + Send + Sync>);

impl ExitObserver {
    /// Wraps the function that finalises the sandbox.
    pub fn new(f: impl Fn(GuestExit) + Send + Sync + 'static) -> ExitObserver {
        ExitObserver(Arc::new(f))
    }

    /// Reports the exit and blocks until it has been finalised.
    pub fn guest_exited(&self, exit: GuestExit) {
        (self.0)(exit)
    }
}

impl std::fmt::Debug for ExitObserver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ExitObserver")
    }
}
