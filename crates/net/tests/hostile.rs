//! Hostile frames: malformed, truncated, fragmented, oversized, random.
//! The engine must neither crash nor stop answering.

mod common;

use alcove_net::fuzz::{process_frame, process_frames};
use alcove_net::policy::{Policy, Profile};
use alcove_net::NetConfig;
use common::*;
use proptest::prelude::*;
use std::net::SocketAddr;

fn sample_frames() -> Vec<Vec<u8>> {
    let plan = alcove_net::AddressPlan::default();
    let g = |p| SocketAddr::new(plan.guest_v4.into(), p);
    vec![
        syn(&plan, g(1234), "93.184.216.34:443".parse().unwrap(), 1),
        syn(&plan, g(1235), SocketAddr::new(plan.host_v4.into(), 80), 1),
        udp(
            &plan,
            g(5353),
            SocketAddr::new(plan.gateway_v4.into(), 53),
            &dns_query(1, "x.test", hickory_proto::rr::RecordType::A),
        ),
        udp(&plan, g(5354), "1.1.1.1:123".parse().unwrap(), b"ntp"),
        syn(&plan, SocketAddr::new(plan.guest_v6.into(), 1236), "[2606:4700::1]:443".parse().unwrap(), 9),
    ]
}

/// Every truncation and a bit flip at every byte of valid frames.
#[test]
fn truncated_and_bit_flipped_frames_never_crash() {
    for frame in sample_frames() {
        for len in 0..frame.len() {
            process_frame(&frame[..len]);
        }
        for i in 0..frame.len() {
            let mut f = frame.clone();
            f[i] ^= 0x5a;
            process_frame(&f);
        }
    }
}

#[test]
fn fragments_and_oversized_frames_are_dropped() {
    let plan = alcove_net::AddressPlan::default();
    let mut frame = syn(&plan, SocketAddr::new(plan.guest_v4.into(), 1), "1.1.1.1:80".parse().unwrap(), 1);
    frame[14 + 6] |= 0x20; // more fragments
    process_frame(&frame);
    frame[14 + 6] = 0x00;
    frame[14 + 7] = 0x10; // fragment offset
    process_frame(&frame);
    let mut big = udp(&plan, SocketAddr::new(plan.guest_v4.into(), 2), "1.1.1.1:9".parse().unwrap(), &vec![0u8; 65000]);
    process_frame(&big);
    big.resize(200_000, 0xff);
    process_frame(&big);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_crash(data in proptest::collection::vec(any::<u8>(), 0..2048)) {
        process_frames(&data);
    }

    #[test]
    fn valid_headers_with_random_tails_never_crash(which in 0usize..5, cut in 14usize..80, tail in proptest::collection::vec(any::<u8>(), 0..1500)) {
        let mut frame = sample_frames()[which].clone();
        frame.truncate(cut.min(frame.len()));
        frame.extend_from_slice(&tail);
        process_frame(&frame);
    }
}

#[test]
fn a_running_engine_keeps_answering_after_garbage() {
    // Profile host: a mutated frame that is still valid (a flipped MAC byte)
    // may only ever dial the host's loopback, never a public address.
    let mut h = start(NetConfig { policy: Policy { profile: Profile::Host, rules: vec![] }, ..NetConfig::default() });
    for frame in sample_frames() {
        for i in (0..frame.len()).step_by(3) {
            let mut f = frame.clone();
            f[i] = f[i].wrapping_add(1);
            h.send(&f);
        }
    }
    h.send(&[0u8; 1]);
    h.send(&vec![0xffu8; 60000]);
    h.arp_gateway();
    assert!(h.net.counters().dropped_frames > 0);
}
