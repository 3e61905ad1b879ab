pub mod policy;
pub mod config;
mod wire;
pub mod device;
