//! Entry points for fuzzers: hostile frames into a real engine, no threads,
//! no host traffic (the policy is `none`, so nothing is dialled, and no DNS
//! upstream is configured).
//!
//! Invariant: for any input these return; a panic is a bug.

use crate::config::NetConfig;
use crate::device::frame_pair;
use crate::engine::Engine;
use crate::flows::{Counters, EventSink};
use crate::policy::{Policy, Profile};
use std::sync::Arc;

fn engine() -> Option<(Engine, crate::device::PairDevice)> {
    let (engine_end, guest_end) = frame_pair().ok()?;
    let config = NetConfig { policy: Policy { profile: Profile::None, rules: Vec::new() }, ..NetConfig::default() };
    let (tx, _rx) = crossbeam_channel::bounded(16);
    let counters = Arc::new(Counters::default());
    let (engine, _waker) =
        Engine::new(config, Box::new(engine_end), EventSink::new(tx, counters.clone()), counters, None).ok()?;
    Some((engine, guest_end))
}

/// Feeds `data` to a fresh engine as one guest frame and runs one turn.
pub fn process_frame(data: &[u8]) {
    if let Some((mut engine, _guest)) = engine() {
        engine.ingest(data);
        engine.turn();
    }
}

/// Feeds `data` as a sequence of frames, each preceded by a big-endian
/// 16-bit length (a short tail is one last frame), running a turn after
/// each: explores state across frames (ARP, then a SYN, then segments...).
pub fn process_frames(data: &[u8]) {
    let Some((mut engine, _guest)) = engine() else { return };
    let mut rest = data;
    while !rest.is_empty() {
        let (frame, tail) = if rest.len() >= 2 {
            let len = usize::from(u16::from_be_bytes([rest[0], rest[1]])).min(rest.len() - 2);
            (&rest[2..2 + len], &rest[2 + len..])
        } else {
            (rest, &rest[rest.len()..])
        };
        engine.ingest(frame);
        engine.turn();
        rest = tail;
    }
}
