//! alcove: a sandbox runtime. One host process per sandbox boots a guest
//! (a libkrun microVM, or a Linux-namespace jail where microVMs cannot run),
//! relays a typed protocol between clients on a Unix socket and the guest
//! agent, enforces lifecycle policies, samples metrics and records sandboxes,
//! runs and metrics in SQLite.
//!
//! The process is an actor system ([`actors`]) whose messages are in
//! [`messages`]. It can run standalone (`alcove sandbox --config FILE`, see
//! [`standalone`]) or embedded in a host program ([`sandbox::start`]).
//! A host program that wants sandboxes the CLI also sees and manages starts
//! them with [`Sandbox::builder`] ([`embed`]).
#![warn(missing_docs)]

pub mod actors;
pub mod backends;
pub mod cli;
pub mod clock;
pub mod config;
pub mod embed;
pub mod failpoint;
pub mod liveness;
pub mod messages;
pub mod net_control;
pub mod net_persist;
pub mod net_settings;
pub mod run_end;
pub mod sandbox;
pub mod secrets;
pub mod standalone;

pub use alcove_store as store;
pub use config::{BackendConfig, BackendKind, Outcome, Policy, PolicySpec, SandboxConfig};
pub use embed::{Backend, EmbedError, Sandbox, SandboxBuilder, SandboxInfo};
pub use sandbox::{launch, start, GuestDriver, SandboxHandle, SandboxOptions, StartError};
