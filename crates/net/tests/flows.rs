//! Live policy changes, published ports, UDP, ping and flow records.

mod common;

use alcove_net::policy::{DecidedBy, Policy, Profile, Proto};
use alcove_net::{CloseReason, Direction, NetConfig, NetError, NetEvent, PortMapping};
use common::*;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};

fn profile(p: Profile) -> NetConfig {
    NetConfig { policy: Policy { profile: p, rules: vec![] }, ..NetConfig::default() }
}

#[test]
fn a_live_policy_change_cuts_the_flows_it_revokes() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut h = start(profile(Profile::Host));
    let mut g = h.guest_stack();
    let sock = g.connect(SocketAddr::new(h.plan.host_v4.into(), port), 46000);
    assert!(g.run_until(|g| g.tcp(sock).may_send()), "never established");
    let (mut server_side, _) = listener.accept().unwrap();

    let revoked = h.net.set_policy(Policy { profile: Profile::Public, rules: vec![] }).unwrap();
    assert_eq!(revoked, 1);
    assert!(g.run_until(|g| !g.tcp(sock).is_open()), "the guest's connection was not reset");
    let mut buf = [0u8; 16];
    let err = server_side.read(&mut buf).expect_err("the host side must be reset, not closed");
    assert_eq!(err.kind(), ErrorKind::ConnectionReset);
    let NetEvent::Flow(r) = h.event(|e| matches!(e, NetEvent::Flow(_))) else { unreachable!() };
    assert_eq!(r.close, CloseReason::Revoked);

    // New flows follow the new policy at once.
    let sock = g.connect(SocketAddr::new(h.plan.host_v4.into(), port), 46001);
    assert!(g.run_until(|g| !g.tcp(sock).is_open()), "a new connection was not refused");
    let NetEvent::Denied(r) = h.event(|e| matches!(e, NetEvent::Denied(_))) else { unreachable!() };
    assert_eq!(r.decided_by, DecidedBy::Profile(Profile::Public));
}

#[test]
fn a_published_tcp_port_reaches_the_guest_both_ways() {
    let mut h = start(profile(Profile::None)); // publishing needs no outbound rule
    let mapping = h.net.add_port("127.0.0.1:0:8080".parse().unwrap()).unwrap();
    assert_ne!(mapping.host.port(), 0);
    assert_eq!(h.net.ports().unwrap(), vec![mapping]);
    let taken = h.net.add_port(mapping).unwrap_err();
    assert!(matches!(taken, NetError::Port(_)), "{taken}");

    let mut g = h.guest_stack();
    let server = g.tcp_socket(64 * 1024);
    g.tcp(server).listen(8080).unwrap();
    let mut client = TcpStream::connect(mapping.host).unwrap();
    client.write_all(b"ping from the host").unwrap();
    client.shutdown(std::net::Shutdown::Write).unwrap();
    let mut got = Vec::new();
    assert!(g.run_until(|g| {
        let s = g.tcp(server);
        while s.can_recv() {
            s.recv(|b| {
                got.extend_from_slice(b);
                (b.len(), ())
            })
            .unwrap();
        }
        if !s.may_recv() && s.may_send() {
            s.send_slice(b"pong from the guest").unwrap();
            s.close();
            return true;
        }
        false
    }));
    assert_eq!(got, b"ping from the host");
    // Keep the guest stack moving while the host reads the answer.
    let reader = std::thread::spawn(move || read_all(&mut client).unwrap());
    assert!(g.run_until(|g| !g.tcp(server).is_open()));
    assert_eq!(reader.join().unwrap(), b"pong from the guest");
    let NetEvent::Flow(r) = h.event(|e| matches!(e, NetEvent::Flow(_))) else { unreachable!() };
    assert_eq!(
        (r.direction, r.decided_by.clone(), r.close.clone()),
        (Direction::Inbound, DecidedBy::Published(mapping.host.port()), CloseReason::Closed)
    );
    assert_eq!((r.bytes_to_guest, r.bytes_from_guest), (18, 19));

    assert!(h.net.remove_port(&mapping).unwrap());
    assert!(h.net.ports().unwrap().is_empty());
    assert!(TcpStream::connect(mapping.host).is_err(), "the listener is closed");
}

#[test]
fn a_published_port_the_guest_does_not_serve_resets_the_client() {
    let h = start(profile(Profile::None));
    let mapping = h.net.add_port("127.0.0.1:0:9999".parse().unwrap()).unwrap();
    let mut h = h;
    let mut g = h.guest_stack();
    let mut client = TcpStream::connect(mapping.host).unwrap();
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 1];
        client.read(&mut buf)
    });
    // The guest stack has no listener: it answers the engine's SYN with RST.
    assert!(g.run_until(|_| reader.is_finished()));
    let result = reader.join().unwrap();
    assert!(matches!(&result, Err(e) if e.kind() == ErrorKind::ConnectionReset), "{result:?}");
}

#[test]
fn a_published_udp_port_relays_each_peer() {
    let mut h = start(profile(Profile::None));
    let mapping: PortMapping = h.net.add_port("127.0.0.1:0:5353/udp".parse().unwrap()).unwrap();
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client.send_to(b"question", mapping.host).unwrap();
    let guest = SocketAddr::new(h.plan.guest_v4.into(), 5353);
    let (from, payload) = h.frame(|f| match see(f) {
        Seen::Udp { src, dst, payload } if dst == guest => Some((src, payload)),
        _ => None,
    });
    assert_eq!(payload, b"question");
    assert_eq!(from.ip(), std::net::IpAddr::from(h.plan.host_v4));
    h.send(&udp(&h.plan, guest, from, b"answer"));
    let mut buf = [0u8; 64];
    client.set_read_timeout(Some(DEADLINE)).unwrap();
    let (n, peer) = client.recv_from(&mut buf).unwrap();
    assert_eq!((&buf[..n], peer), (&b"answer"[..], mapping.host));
}

#[test]
fn udp_flows_are_relayed_and_denied_udp_gets_port_unreachable() {
    let server = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = server.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        let (n, peer) = server.recv_from(&mut buf).unwrap();
        server.send_to(&buf[..n].to_ascii_uppercase(), peer).unwrap();
    });
    let mut h = start(profile(Profile::Host));
    let src = SocketAddr::new(h.plan.guest_v4.into(), 47000);
    let dst = SocketAddr::new(h.plan.host_v4.into(), port);
    h.send(&udp(&h.plan, src, dst, b"hello"));
    let reply = h.frame(|f| match see(f) {
        Seen::Udp { src: s, dst: d, payload } if s == dst && d == src => Some(payload),
        _ => None,
    });
    assert_eq!(reply, b"HELLO");

    let denied = SocketAddr::from(([93, 184, 216, 34], 123)); // public: not in the host profile
    h.send(&udp(&h.plan, src, denied, b"ntp?"));
    let icmp = h.frame(|f| Some(see(f)).filter(|s| matches!(s, Seen::IcmpUnreachable { .. })));
    assert_eq!(icmp, Seen::IcmpUnreachable { code: 3 });
    let NetEvent::Denied(r) = h.event(|e| matches!(e, NetEvent::Denied(_))) else { unreachable!() };
    assert_eq!((r.protocol, r.remote), (Proto::Udp, denied));
}

#[test]
fn the_gateway_answers_ping_and_denied_ping_is_prohibited() {
    let mut h = start(profile(Profile::Public));
    let echo = |h: &Harness, dst: [u8; 4], ident: u16| {
        let mut icmp = vec![8, 0, 0, 0];
        icmp.extend_from_slice(&ident.to_be_bytes());
        icmp.extend_from_slice(&1u16.to_be_bytes());
        icmp.extend_from_slice(b"payload!");
        let sum = !icmp.chunks(2).fold(0u32, |acc, c| {
            let acc = acc + u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
            (acc & 0xffff) + (acc >> 16)
        }) as u16;
        icmp[2..4].copy_from_slice(&sum.to_be_bytes());
        guest_ip_frame(&h.plan, h.plan.guest_v4.into(), dst.into(), smoltcp::wire::IpProtocol::Icmp, &icmp)
    };
    let frame = echo(&h, h.plan.gateway_v4.octets(), 77);
    h.send(&frame);
    let reply = h.frame(|f| Some(see(f)).filter(|s| matches!(s, Seen::EchoReply { .. })));
    assert_eq!(reply, Seen::EchoReply { src: h.plan.gateway_v4.into(), ident: 77, seq: 1 });
    let frame = echo(&h, [169, 254, 169, 254], 78);
    h.send(&frame);
    let reply = h.frame(|f| Some(see(f)).filter(|s| matches!(s, Seen::IcmpUnreachable { .. })));
    assert_eq!(reply, Seen::IcmpUnreachable { code: 13 });
}

#[test]
fn counters_count_frames_both_ways() {
    let mut h = start(profile(Profile::Public));
    // The engine counts a frame after its write returns, which may be just
    // after the guest read it: wait for the count of the first ARP reply.
    let settled = |h: &Harness, tx: u64| {
        let end = std::time::Instant::now() + DEADLINE;
        let mut c = h.net.counters();
        while c.tx_frames < tx && std::time::Instant::now() < end {
            std::thread::yield_now();
            c = h.net.counters();
        }
        c
    };
    let before = settled(&h, 1);
    assert_eq!((before.rx_frames, before.tx_frames), (1, 1), "the ARP exchange counts: {before:?}");
    h.arp_gateway();
    let after = settled(&h, 2);
    assert_eq!((after.rx_frames, after.tx_frames), (before.rx_frames + 1, before.tx_frames + 1));
    assert!(after.rx_bytes > before.rx_bytes && after.tx_bytes > before.tx_bytes);
}
