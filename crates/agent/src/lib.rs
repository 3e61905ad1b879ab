//! alcove's guest agent, as a library so its parts are unit-testable; the
//! `alcove-agent` binary is a thin `main` over [`boot`].
//!
//! The agent is PID 1 of a sandbox (jail or microVM). It sets up the guest's
//! filesystems, then serves the agent channel: `Ready`, heartbeats, exec and
//! file sessions under per-session flow control, and `Shutdown`. See
//! [`server`] for the event loop's invariants.
#![warn(missing_docs)]

pub mod boot;
pub mod cli;
pub mod fsops;
pub mod logging;
pub mod mounts;
pub mod names;
pub mod net;
pub mod oom;
pub mod server;
pub mod spawn;
pub mod sys;
pub mod users;
pub mod vm;
