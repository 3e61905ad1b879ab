//! DNS interception: policy on names, rebind protection, pins, AAAA.

mod common;

use alcove_net::policy::{Policy, Profile, Rule};
use alcove_net::{NetConfig, NetEvent};
use common::*;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::sync::atomic::Ordering;

fn config(dns: &TestDns, profile: Profile, rules: &[&str]) -> NetConfig {
    let rules = rules.iter().map(|r| r.parse::<Rule>().unwrap()).collect();
    NetConfig { dns_upstreams: vec![dns.addr], policy: Policy { profile, rules }, ..NetConfig::default() }
}

/// Asks `name` over UDP from the guest and returns the answer.
fn ask(h: &mut Harness, id: u16, name: &str, qtype: RecordType) -> (ResponseCode, Vec<IpAddr>) {
    let src = SocketAddr::new(h.plan.guest_v4.into(), 30000 + id);
    let server = SocketAddr::new(h.plan.gateway_v4.into(), 53);
    h.send(&udp(&h.plan, src, server, &dns_query(id, name, qtype)));
    let payload = h.frame(|f| match see(f) {
        Seen::Udp { src: from, dst, payload } if from == server && dst == src => Some(payload),
        _ => None,
    });
    let (got_id, code, addrs) = dns_answer(&payload);
    assert_eq!(got_id, id, "the answer carries the guest's query id");
    (code, addrs)
}

#[test]
fn allowed_names_are_forwarded_and_denied_names_answer_nxdomain_without_asking() {
    let dns = TestDns::start(&[("ok.test", "93.184.216.34"), ("bad.test", "93.184.216.35")]);
    let mut h = start(config(&dns, Profile::Public, &["deny:bad.test"]));
    assert_eq!(
        ask(&mut h, 1, "ok.test", RecordType::A),
        (ResponseCode::NoError, vec!["93.184.216.34".parse().unwrap()])
    );
    assert_eq!(ask(&mut h, 2, "BAD.test", RecordType::A), (ResponseCode::NXDomain, vec![]));
    assert_eq!(*dns.asked.lock().unwrap(), ["ok.test"], "a denied name never reaches the upstream");
    let NetEvent::Denied(r) = h.event(|e| matches!(e, NetEvent::Denied(_))) else { unreachable!() };
    assert_eq!(r.name.as_deref(), Some("bad.test"));
    assert_eq!(r.remote.port(), 53);
}

#[test]
fn profile_none_leaks_no_query() {
    let dns = TestDns::start(&[("ok.test", "93.184.216.34")]);
    let mut h = start(config(&dns, Profile::None, &[]));
    assert_eq!(ask(&mut h, 3, "ok.test", RecordType::A).0, ResponseCode::NXDomain);
    assert_eq!(dns.count.load(Ordering::SeqCst), 0);
}

#[test]
fn rebind_protection_refuses_private_answers_for_public_names() {
    let dns = TestDns::start(&[
        ("rebind.test", "10.1.2.3"),
        ("loop.test", "127.0.0.1"),
        ("meta.test", "169.254.169.254"),
        ("mixed.test", "10.1.2.3"),
        ("mixed.test", "93.184.216.34"),
        ("intranet.test", "10.1.2.4"),
    ]);
    let mut h = start(config(&dns, Profile::Public, &["allow:intranet.test"]));
    for (i, name) in ["rebind.test", "loop.test", "meta.test"].iter().enumerate() {
        assert_eq!(ask(&mut h, 10 + i as u16, name, RecordType::A), (ResponseCode::NXDomain, vec![]), "{name}");
    }
    assert_eq!(
        ask(&mut h, 20, "mixed.test", RecordType::A),
        (ResponseCode::NoError, vec!["93.184.216.34".parse().unwrap()])
    );
    assert_eq!(
        ask(&mut h, 21, "intranet.test", RecordType::A),
        (ResponseCode::NoError, vec!["10.1.2.4".parse().unwrap()])
    );
}

#[test]
fn aaaa_is_withheld_without_ipv6_egress() {
    let dns = TestDns::start(&[("six.test", "2606:4700::1")]);
    let mut h = start(config(&dns, Profile::Public, &[]));
    assert_eq!(ask(&mut h, 30, "six.test", RecordType::AAAA), (ResponseCode::NoError, vec![]));
    assert_eq!(dns.count.load(Ordering::SeqCst), 0, "answered at once, without the upstream");
}

#[test]
fn host_name_is_answered_locally_when_the_policy_allows_the_host() {
    let dns = TestDns::start(&[]);
    let mut h = start(config(&dns, Profile::Host, &[]));
    let host: IpAddr = h.plan.host_v4.into();
    assert_eq!(ask(&mut h, 40, "host.alcove.internal", RecordType::A), (ResponseCode::NoError, vec![host]));
    assert_eq!(ask(&mut h, 41, "other.alcove.internal", RecordType::A), (ResponseCode::NXDomain, vec![]));
    let mut h = start(config(&dns, Profile::Public, &[]));
    assert_eq!(ask(&mut h, 42, "host.alcove.internal", RecordType::A), (ResponseCode::NXDomain, vec![]));
    assert_eq!(dns.count.load(Ordering::SeqCst), 0);
}

#[test]
fn pins_let_domain_rules_decide_the_following_flows() {
    // svc.test resolves to the host address; only a rule naming svc.test
    // may open it (profile none).
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let dns = TestDns::start(&[("svc.test", "10.0.2.2")]);
    let mut h = start(config(&dns, Profile::None, &["allow:svc.test:tcp"]));
    let dst = SocketAddr::new(h.plan.host_v4.into(), port);
    // Before the name is resolved the address is unknown: refused.
    h.send(&syn(&h.plan, SocketAddr::new(h.plan.guest_v4.into(), 44000), dst, 5));
    let s = h.frame(|f| Some(see(f)).filter(|s| matches!(s, Seen::Tcp { .. })));
    assert!(matches!(s, Seen::Tcp { rst: true, .. }), "{s:?}");
    assert_eq!(ask(&mut h, 50, "svc.test", RecordType::A), (ResponseCode::NoError, vec![dst.ip()]));
    h.send(&syn(&h.plan, SocketAddr::new(h.plan.guest_v4.into(), 44001), dst, 5));
    let s = h.frame(|f| Some(see(f)).filter(|s| matches!(s, Seen::Tcp { .. })));
    assert!(matches!(s, Seen::Tcp { syn: true, ack: true, .. }), "{s:?}");
    listener.accept().unwrap();
}

#[test]
fn dns_over_tcp_is_intercepted() {
    let dns = TestDns::start(&[("tcp.test", "93.184.216.36")]);
    let mut h = start(config(&dns, Profile::Public, &[]));
    let mut g = h.guest_stack();
    // Any address on port 53 reaches the engine's resolver, not that address.
    let sock = g.connect("192.0.2.53:53".parse().unwrap(), 45000);
    let query = dns_query(77, "tcp.test", RecordType::A);
    let mut framed = (query.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(&query);
    let mut sent = false;
    let mut got = Vec::new();
    let done = g.run_until(|g| {
        let s = g.tcp(sock);
        if s.can_send() && !sent {
            s.send_slice(&framed).unwrap();
            sent = true;
        }
        while s.can_recv() {
            s.recv(|b| {
                got.extend_from_slice(b);
                (b.len(), ())
            })
            .unwrap();
        }
        got.len() >= 2 && got.len() >= 2 + u16::from_be_bytes([got[0], got[1]]) as usize
    });
    assert!(done, "no answer over TCP");
    let (id, code, addrs) = dns_answer(&got[2..]);
    assert_eq!((id, code, addrs), (77, ResponseCode::NoError, vec!["93.184.216.36".parse::<IpAddr>().unwrap()]));
}
