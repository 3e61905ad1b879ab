//! Configuring the guest's side of a TAP link (address, prefix, default
//! route): the interface ioctls of [`alcove_link`], shared with the guest
//! agent, which configures a microVM's `eth0` the same way.
//!
//! Invariants:
//! - Runs on the thread that created the TAP inside the guest's namespace
//!   ([`super::TapDevice::create_configured_in_netns`]); nothing here
//!   changes namespace.
//! - IPv4 only: the engine answers IPv6 only where the host has IPv6
//!   egress, and a guest without an IPv6 address falls back to IPv4 at
//!   once (no DAD delay, no half-configured link).

pub use alcove_link::{configure_here, LinkConfig};
