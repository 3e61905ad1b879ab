//! TCP through the engine, at the frame level and with a guest stack.

mod common;

use alcove_net::policy::{DecidedBy, Policy, Profile};
use alcove_net::{CloseReason, Limits, NetConfig, NetEvent};
use common::*;
use socket2::{Domain, Socket, Type};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};

fn host_profile() -> NetConfig {
    NetConfig { policy: Policy { profile: Profile::Host, rules: vec![] }, ..NetConfig::default() }
}

fn guest_addr(h: &Harness, port: u16) -> SocketAddr {
    SocketAddr::new(h.plan.guest_v4.into(), port)
}

fn host_addr(h: &Harness, port: u16) -> SocketAddr {
    SocketAddr::new(h.plan.host_v4.into(), port)
}

#[test]
fn syn_ack_only_after_the_host_connection_is_up() {
    // A listener whose accept queue is full: the engine's dial cannot
    // complete until the test accepts the connection that fills it.
    let listener = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    listener.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into()).unwrap();
    listener.listen(0).unwrap();
    let port = listener.local_addr().unwrap().as_socket().unwrap().port();
    let filler = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut h = start(host_profile());
    let (src, dst) = (guest_addr(&h, 40000), host_addr(&h, port));
    h.send(&syn(&h.plan, src, dst, 1000));
    wait_for_syn_sent(port);
    // Free the queue; the host's kernel completes the dial on its SYN retry.
    let (queued, _) = listener.accept().unwrap();
    let seen = h.frame(|f| match see(f) {
        s @ Seen::Tcp { .. } => Some(s),
        _ => None,
    });
    assert!(matches!(seen, Seen::Tcp { syn: true, ack: true, rst: false, ack_number: Some(1001), .. }), "{seen:?}");
    listener.set_nonblocking(true).unwrap();
    let proxied = listener.accept();
    assert!(proxied.is_ok(), "SYN-ACK came before the host connection existed: {proxied:?}");
    drop((filler, queued));
}

/// Polls /proc/net/tcp until a socket dialling 127.0.0.1:`port` is in SYN-SENT.
fn wait_for_syn_sent(port: u16) {
    let want = format!("0100007F:{port:04X} 02");
    let end = std::time::Instant::now() + DEADLINE;
    while std::time::Instant::now() < end {
        let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
        if table.lines().any(|l| l.split_whitespace().skip(2).take(2).collect::<Vec<_>>().join(" ") == want) {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    panic!("the engine never dialled port {port}");
}

#[test]
fn refused_port_is_reset_at_once() {
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port(); // closed again
    let mut h = start(host_profile());
    let (src, dst) = (guest_addr(&h, 40001), host_addr(&h, port));
    h.send(&syn(&h.plan, src, dst, 7));
    let seen = h.frame(|f| Some(see(f)).filter(|s| matches!(s, Seen::Tcp { .. })));
    assert_eq!(seen, Seen::Tcp { src: dst, dst: src, syn: false, ack: true, rst: true, ack_number: Some(8) });
    let NetEvent::Flow(record) = h.event(|e| matches!(e, NetEvent::Flow(_))) else { unreachable!() };
    assert!(matches!(record.close, CloseReason::ConnectFailed(_)), "{record:?}");
    assert_eq!(record.remote, dst);
}

#[test]
fn denied_destinations_are_reset_and_reported() {
    let mut h = start(NetConfig::default()); // profile public
    let cases = [
        (host_addr(&h, 9), DecidedBy::Profile(Profile::Public)), // the host's loopback is not public
        ("169.254.169.254:80".parse().unwrap(), DecidedBy::Metadata),
        ("10.0.2.1:22".parse().unwrap(), DecidedBy::Martian), // the gateway itself
        ("127.0.0.1:22".parse().unwrap(), DecidedBy::Martian),
    ];
    for (i, (dst, by)) in cases.into_iter().enumerate() {
        let src = guest_addr(&h, 41000 + i as u16);
        h.send(&syn(&h.plan, src, dst, 99));
        let seen = h.frame(|f| Some(see(f)).filter(|s| matches!(s, Seen::Tcp { .. })));
        assert_eq!(
            seen,
            Seen::Tcp { src: dst, dst: src, syn: false, ack: true, rst: true, ack_number: Some(100) },
            "{dst}"
        );
        let NetEvent::Denied(record) = h.event(|e| matches!(e, NetEvent::Denied(_))) else { unreachable!() };
        assert_eq!((record.remote, record.decided_by, record.allowed), (dst, by, false));
    }
    assert_eq!(h.net.counters().flows_denied, 4);
}

/// An echo server on 127.0.0.1 that upper-cases, then closes its side
/// when the client half-closes.
fn upper_server() -> (u16, std::thread::JoinHandle<usize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let t = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        s.write_all(&got.to_ascii_uppercase()).unwrap();
        got.len()
    });
    (port, t)
}

#[test]
fn guest_reaches_a_host_server_through_the_host_address_with_half_close() {
    let (port, server) = upper_server();
    let mut h = start(host_profile());
    let mut g = h.guest_stack();
    let sock = g.connect(SocketAddr::new(h.plan.host_v4.into(), port), 42000);
    let payload: Vec<u8> = (0..200_000).map(|i| b"abcdefghij"[i % 10]).collect();
    let mut sent = 0;
    let mut received = Vec::new();
    let done = g.run_until(|g| {
        let s = g.tcp(sock);
        if s.can_send() && sent < payload.len() {
            sent += s.send_slice(&payload[sent..]).unwrap();
            if sent == payload.len() {
                s.close(); // half-close: the server reads to EOF, then answers
            }
        }
        while s.can_recv() {
            s.recv(|b| {
                received.extend_from_slice(b);
                (b.len(), ())
            })
            .unwrap();
        }
        !s.may_recv() && received.len() == payload.len()
    });
    assert!(done, "transfer incomplete: sent {sent}, received {}", received.len());
    assert_eq!(received, payload.to_ascii_uppercase());
    assert_eq!(server.join().unwrap(), payload.len());
    let NetEvent::Flow(r) = h.event(|e| matches!(e, NetEvent::Flow(_))) else { unreachable!() };
    assert_eq!((r.bytes_from_guest, r.bytes_to_guest), (payload.len() as u64, payload.len() as u64));
    assert_eq!(r.name.as_deref(), Some("host.alcove.internal"));
}

#[test]
fn connection_limit_refuses_only_new_flows() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let config = NetConfig { limits: Limits { max_tcp_flows: 2, ..Limits::default() }, ..host_profile() };
    let mut h = start(config);
    let dst = host_addr(&h, port);
    for i in 0..2u16 {
        h.send(&syn(&h.plan, guest_addr(&h, 43000 + i), dst, 1));
        let s = h.frame(|f| Some(see(f)).filter(|s| matches!(s, Seen::Tcp { .. })));
        assert!(matches!(s, Seen::Tcp { syn: true, ack: true, .. }), "{s:?}");
    }
    h.send(&syn(&h.plan, guest_addr(&h, 43002), dst, 1));
    let s = h.frame(|f| Some(see(f)).filter(|s| matches!(s, Seen::Tcp { .. })));
    assert!(matches!(s, Seen::Tcp { rst: true, .. }), "{s:?}");
    let NetEvent::Denied(r) = h.event(|e| matches!(e, NetEvent::Denied(_))) else { unreachable!() };
    assert_eq!(r.decided_by, DecidedBy::Limit("tcp connections"));
}

#[test]
fn the_rate_limit_bounds_throughput() {
    // 100 KB/s with a burst of one second's worth (100 KB): 300 KB cannot
    // arrive in under two seconds.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let total = 300_000usize;
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.write_all(&vec![7u8; total]).unwrap();
    });
    let config = NetConfig { limits: Limits { rate_limit: Some(100_000), ..Limits::default() }, ..host_profile() };
    let mut h = start(config);
    let mut g = h.guest_stack();
    let started = std::time::Instant::now();
    let sock = g.connect(SocketAddr::new(h.plan.host_v4.into(), port), 48000);
    let mut got = 0;
    assert!(g.run_until(|g| {
        let s = g.tcp(sock);
        while s.can_recv() {
            got += s.recv(|b| (b.len(), b.len())).unwrap();
        }
        got == total
    }));
    let took = started.elapsed();
    assert!(took >= std::time::Duration::from_millis(1900), "300 KB at 100 KB/s took only {took:?}");
    server.join().unwrap();
}

#[test]
fn ipv6_reaches_the_hosts_loopback_through_the_host_address() {
    let Ok(listener) = TcpListener::bind("[::1]:0") else {
        eprintln!("no IPv6 loopback on this host; skipped");
        return;
    };
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (mut s, peer) = listener.accept().unwrap();
        s.write_all(b"six").unwrap();
        peer
    });
    let mut h = start(host_profile());
    let mut g = h.guest_stack(); // resolves the gateway with NDP first
    let sock = g.connect(SocketAddr::new(h.plan.host_v6.into(), port), 49000);
    let mut got = Vec::new();
    assert!(g.run_until(|g| {
        let s = g.tcp(sock);
        while s.can_recv() {
            s.recv(|b| {
                got.extend_from_slice(b);
                (b.len(), ())
            })
            .unwrap();
        }
        got == b"six"
    }));
    assert!(server.join().unwrap().ip().is_loopback());
}

#[test]
fn a_syn_flood_degrades_only_new_flows() {
    let listener = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    listener.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into()).unwrap();
    listener.listen(1024).unwrap();
    let port = listener.local_addr().unwrap().as_socket().unwrap().port();
    let config =
        NetConfig { limits: Limits { max_tcp_flows: 64, event_queue: 256, ..Limits::default() }, ..host_profile() };
    let mut h = start(config);
    let dst = host_addr(&h, port);
    let flood = 5000u16;
    // Every SYN is answered: SYN-ACK for the first 64, RST for the rest.
    // Sent in bursts so neither side's socket buffer is the bound tested.
    let (mut accepted, mut reset) = (0, 0);
    for burst in 0..flood / 500 {
        for i in 0..500 {
            h.send(&syn(&h.plan, guest_addr(&h, 10000 + burst * 500 + i), dst, 1));
        }
        while accepted + reset < (burst + 1) * 500 {
            match h.frame(|f| Some(see(f)).filter(|s| matches!(s, Seen::Tcp { .. }))) {
                Seen::Tcp { syn: true, .. } => accepted += 1,
                Seen::Tcp { rst: true, .. } => reset += 1,
                other => panic!("{other:?}"),
            }
        }
    }
    assert_eq!((accepted, reset), (64, flood - 64));
    h.arp_gateway(); // still answering
    let c = h.net.counters();
    assert_eq!(c.flows_denied, u64::from(flood - 64));
    assert!(c.events_dropped > 0, "the bounded event queue counts what it could not hold");
}

#[test]
fn a_tls_server_name_spanning_segments_names_the_flow() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let hello = client_hello("Secure.Example.test", 4000);
    let expected = hello.clone();
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        got
    });
    let mut h = start(host_profile());
    let mut g = h.guest_stack();
    let sock = g.connect(SocketAddr::new(h.plan.host_v4.into(), port), 49500);
    let mut sent = 0;
    assert!(g.run_until(|g| {
        let s = g.tcp(sock);
        if s.can_send() && sent < hello.len() {
            sent += s.send_slice(&hello[sent..]).unwrap();
            if sent == hello.len() {
                s.close();
            }
        }
        sent == hello.len() && !s.is_open()
    }));
    assert_eq!(server.join().unwrap(), expected, "the held bytes reach the host intact");
    let NetEvent::Flow(r) = h.event(|e| matches!(e, NetEvent::Flow(_))) else { unreachable!() };
    assert_eq!(r.name.as_deref(), Some("secure.example.test"));
}
