//! Target `net`: hostile guest frames into the network engine
//! (`alcove_net::fuzz::process_frames`): the input is a sequence of frames,
//! each behind a big-endian 16-bit length, fed to one fresh engine with a
//! turn after each, so state carries across frames (ARP, a SYN, then
//! segments). The engine runs with policy `none` and no DNS upstream:
//! nothing is dialled, no host traffic.
//!
//! Checked: the engine returns for every input (a panic is a crash). Its
//! own tests (`crates/net/tests/hostile.rs`) add truncations and bit flips
//! of valid frames and check that a running engine keeps answering.

/// Runs one input.
pub fn fuzz(data: &[u8]) {
    alcove_net::fuzz::process_frames(data);
}
