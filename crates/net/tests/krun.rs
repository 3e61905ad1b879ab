//! The msb_krun `NetBackend` adapter, driven with frames directly (no VM
//! boots here): the virtio-net worker's view of the engine.
#![cfg(feature = "krun")]

use alcove_net::device::krun::{krun_backend, VNET_HDR_LEN};
use alcove_net::device::FrameDevice;
use msb_krun::backends::net::{NetBackend, ReadError};
use std::time::Duration;

#[test]
fn frames_cross_with_a_zeroed_virtio_header() {
    let (mut backend, mut engine_end) = krun_backend().unwrap();
    let mut buf = vec![0xaau8; 65562];
    assert!(matches!(backend.read_frame(&mut buf), Err(ReadError::NothingRead)));

    engine_end.send_frame(b"frame for the guest").unwrap();
    let n = backend.read_frame(&mut buf).unwrap();
    assert_eq!(n, VNET_HDR_LEN + 19);
    assert!(buf[..VNET_HDR_LEN].iter().all(|b| *b == 0), "offload-free virtio header");
    assert_eq!(&buf[VNET_HDR_LEN..n], b"frame for the guest");

    let mut out = vec![0u8; VNET_HDR_LEN];
    out.extend_from_slice(b"frame from the guest");
    backend.write_frame(VNET_HDR_LEN, &mut out).unwrap();
    assert!(!backend.has_unfinished_write());
    let mut got = [0u8; 64];
    let n = engine_end.recv_frame_timeout(&mut got, Duration::from_secs(20)).unwrap().unwrap();
    assert_eq!(&got[..n], b"frame from the guest");
    assert_eq!(backend.raw_socket_fd(), backend.raw_socket_fd());
}

#[test]
fn the_engine_answers_arp_through_the_backend() {
    use alcove_net::{NetConfig, Network};
    let (mut backend, engine_end) = krun_backend().unwrap();
    let plan = alcove_net::AddressPlan::default();
    let (_net, _events) = Network::start(NetConfig::default(), Box::new(engine_end), Vec::new()).unwrap();
    // An ARP request for the gateway, as the guest's kernel sends it.
    let mut frame = vec![0u8; VNET_HDR_LEN];
    frame.extend_from_slice(&[0xff; 6]);
    frame.extend_from_slice(&plan.guest_mac);
    frame.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
    frame.extend_from_slice(&plan.guest_mac);
    frame.extend_from_slice(&plan.guest_v4.octets());
    frame.extend_from_slice(&[0; 6]);
    frame.extend_from_slice(&plan.gateway_v4.octets());
    backend.write_frame(VNET_HDR_LEN, &mut frame).unwrap();
    let mut buf = vec![0u8; 65562];
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let n = loop {
        match backend.read_frame(&mut buf) {
            Ok(n) => break n,
            Err(_) if std::time::Instant::now() < deadline => {
                let mut pfd = libc::pollfd { fd: backend.raw_socket_fd(), events: libc::POLLIN, revents: 0 };
                // SAFETY: one valid pollfd.
                unsafe { libc::poll(&mut pfd, 1, 100) };
            }
            Err(e) => panic!("no ARP reply: {e:?}"),
        }
    };
    let eth = &buf[VNET_HDR_LEN..n];
    assert_eq!(&eth[12..14], &[0x08, 0x06]);
    assert_eq!(&eth[20..22], &[0, 2], "an ARP reply");
    assert_eq!(&eth[22..28], &plan.gateway_mac);
}
