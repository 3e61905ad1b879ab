//! Secrets in the engine: a placeholder in a DNS question or a TLS server
//! name is refused and recorded as a secret violation, never forwarded.

mod common;

use alcove_net::intercept::Interceptor;
use alcove_net::policy::{Policy, Profile};
use alcove_net::secrets::{ca::SandboxCa, Secret, Secrets, SecretsConfig, SecretsInterceptor, UpstreamTrust};
use alcove_net::{CloseReason, NetConfig, NetEvent, Network};
use common::*;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use std::io::Read;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::SystemTime;

const PH: &str = "alcoveph0123456789abcdef0123456789abcdef";

fn harness(dns: &TestDns, profile: Profile) -> Harness {
    let cfg = SecretsConfig {
        secrets: Secrets::new(vec![Secret {
            name: "API_KEY".into(),
            placeholder: PH.into(),
            hosts: vec!["api.test".parse().unwrap()],
            value: Arc::new(b"sk-value".to_vec()),
        }]),
        ca: Arc::new(SandboxCa::generate(SystemTime::now()).unwrap()),
        upstream: Arc::new(UpstreamTrust::only(Vec::new())),
        ports: vec![443],
    };
    let interceptor: Box<dyn Interceptor> = Box::new(SecretsInterceptor::new(cfg));
    let (engine_end, guest) = alcove_net::device::frame_pair().unwrap();
    let config =
        NetConfig { dns_upstreams: vec![dns.addr], policy: Policy { profile, rules: vec![] }, ..NetConfig::default() };
    let plan = config.plan.clone();
    let (net, events) =
        Network::start_with_interceptor(config, Box::new(engine_end), Vec::new(), Some(interceptor)).unwrap();
    let mut h = Harness { net, guest, events, plan };
    h.arp_gateway();
    h
}

fn ask(h: &mut Harness, id: u16, name: &str) -> ResponseCode {
    let src = SocketAddr::new(h.plan.guest_v4.into(), 30000 + id);
    let server = SocketAddr::new(h.plan.gateway_v4.into(), 53);
    h.send(&udp(&h.plan, src, server, &dns_query(id, name, RecordType::A)));
    let payload = h.frame(|f| match see(f) {
        Seen::Udp { src: from, dst, payload } if from == server && dst == src => Some(payload),
        _ => None,
    });
    dns_answer(&payload).1
}

fn violation(h: &Harness) -> CloseReason {
    let NetEvent::Denied(r) =
        h.event(|e| matches!(e, NetEvent::Denied(r) if matches!(r.close, CloseReason::SecretViolation { .. })))
    else {
        unreachable!()
    };
    r.close
}

#[test]
fn a_placeholder_in_a_dns_question_is_refused_and_never_forwarded() {
    let dns = TestDns::start(&[("ok.test", "93.184.216.34")]);
    let mut h = harness(&dns, Profile::Public);
    assert_eq!(ask(&mut h, 1, "ok.test"), ResponseCode::NoError);
    assert_eq!(ask(&mut h, 2, &format!("{PH}.exfil.test")), ResponseCode::Refused);
    // Split across labels, too.
    assert_eq!(ask(&mut h, 3, &format!("{}.{}.exfil.test", &PH[..20], &PH[20..])), ResponseCode::Refused);
    let close = violation(&h);
    assert_eq!(
        close,
        CloseReason::SecretViolation { secret: "API_KEY".into(), host: "dns".into(), how: "in a DNS question".into() }
    );
    assert_eq!(*dns.asked.lock().unwrap(), ["ok.test"], "a question with a placeholder reached the resolver");
}

#[test]
fn a_placeholder_as_the_tls_server_name_is_refused() {
    let dns = TestDns::start(&[]);
    let mut h = harness(&dns, Profile::Host);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got);
        got
    });
    let mut g = h.guest_stack();
    let hello = client_hello(&format!("{PH}.test"), 0);
    let sock = g.connect(SocketAddr::new(h.plan.host_v4.into(), port), 50100);
    let mut sent = 0;
    assert!(g.run_until(|g| {
        let s = g.tcp(sock);
        if s.can_send() && sent < hello.len() {
            sent += s.send_slice(&hello[sent..]).unwrap();
        }
        sent > 0 && !s.is_open()
    }));
    let close = violation(&h);
    assert!(
        matches!(&close, CloseReason::SecretViolation { secret, how, .. } if secret == "API_KEY" && how == "in a TLS server name"),
        "{close:?}"
    );
    assert!(server.join().unwrap().is_empty(), "the hello reached the host");
}
