//! The actors of the sandbox process. See docs/ARCHITECTURE.md for who owns
//! what and which messages flow where.

pub mod db;
pub mod guest;
pub mod lifecycle;
pub mod metrics;
pub mod network;
pub mod peer_log;
pub mod relay;
pub mod watchdog;
