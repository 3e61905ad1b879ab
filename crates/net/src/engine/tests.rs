//! Engine-internal checks that need its clock and deadlines: idle means no
//! timeout at all.

use super::Engine;
use crate::config::NetConfig;
use crate::device::{frame_pair, FrameDevice, PairDevice};
use crate::flows::{Counters, EventSink, NetEvent};
use crate::policy::{Policy, Profile};
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::*;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn engine(config: NetConfig) -> (Engine, PairDevice, crossbeam_channel::Receiver<NetEvent>) {
    let (engine_end, guest) = frame_pair().unwrap();
    let (tx, rx) = crossbeam_channel::bounded(64);
    let counters = Arc::new(Counters::default());
    let (engine, _waker) =
        Engine::new(config, Box::new(engine_end), EventSink::new(tx, counters.clone()), counters, None).unwrap();
    (engine, guest, rx)
}

fn guest_udp(plan: &crate::AddressPlan, src: SocketAddr, dst: SocketAddr, payload: &[u8]) -> Vec<u8> {
    let caps = ChecksumCapabilities::default();
    let (IpAddress::Ipv4(s), IpAddress::Ipv4(d)) = (src.ip().into(), dst.ip().into()) else { panic!() };
    let ip = Ipv4Repr {
        src_addr: s,
        dst_addr: d,
        next_header: IpProtocol::Udp,
        payload_len: 8 + payload.len(),
        hop_limit: 64,
    };
    let mut buf = vec![0u8; 14 + 20 + 8 + payload.len()];
    let mut f = EthernetFrame::new_unchecked(&mut buf[..]);
    EthernetRepr {
        src_addr: EthernetAddress(plan.guest_mac),
        dst_addr: EthernetAddress(plan.gateway_mac),
        ethertype: EthernetProtocol::Ipv4,
    }
    .emit(&mut f);
    let mut p = Ipv4Packet::new_unchecked(f.payload_mut());
    ip.emit(&mut p, &caps);
    UdpRepr { src_port: src.port(), dst_port: dst.port() }.emit(
        &mut UdpPacket::new_unchecked(p.payload_mut()),
        &src.ip().into(),
        &dst.ip().into(),
        payload.len(),
        |b| b.copy_from_slice(payload),
        &caps,
    );
    buf
}

#[test]
fn an_idle_engine_has_no_timeout() {
    let (mut engine, _guest, _events) = engine(NetConfig::default());
    engine.turn();
    assert_eq!(engine.next_timeout(), None);
}

#[test]
fn a_udp_session_is_the_only_deadline_and_expiry_clears_it() {
    let server = UdpSocket::bind("127.0.0.1:0").unwrap();
    let config = NetConfig { policy: Policy { profile: Profile::Host, rules: vec![] }, ..NetConfig::default() };
    let idle = config.limits.udp_idle;
    let (mut engine, mut guest, events) = engine(config);
    let plan = engine.cfg.plan.clone();
    let src = SocketAddr::new(plan.guest_v4.into(), 5000);
    let dst = SocketAddr::new(plan.host_v4.into(), server.local_addr().unwrap().port());
    engine.ingest(&guest_udp(&plan, src, dst, b"x"));
    engine.turn();
    let mut buf = [0u8; 8];
    assert_eq!(server.recv(&mut buf).unwrap(), 1);
    let timeout = engine.next_timeout().expect("the session's expiry is a deadline");
    assert!(timeout <= idle && timeout > idle - Duration::from_secs(5), "{timeout:?}");
    engine.expire(Instant::now() + idle);
    assert_eq!(engine.next_timeout(), None, "nothing left to wake for");
    let NetEvent::Flow(r) = events.try_recv().unwrap() else { panic!() };
    assert_eq!((r.close, r.bytes_from_guest), (crate::CloseReason::Idle, 1));
    let mut frame = [0u8; 64];
    assert!(guest.recv_frame(&mut frame).is_err(), "no frame for the guest");
}
