//! The interception seam: an interceptor chooses flows by SNI; its filter
//! sees and rewrites the bytes; a filter error blocks the flow.

mod common;

use alcove_net::intercept::{FilterError, FilterOutput, FlowInfo, Interceptor, StreamFilter};
use alcove_net::policy::{Policy, Profile};
use alcove_net::{CloseReason, NetConfig, NetEvent, Network};
use common::*;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};

struct Upper;

impl StreamFilter for Upper {
    fn guest_bytes(&mut self, data: &[u8], out: &mut FilterOutput) -> Result<(), FilterError> {
        if data.windows(6).any(|w| w == b"SECRET") {
            return Err(FilterError::Blocked("placeholder sent to a host it is not bound to".into()));
        }
        out.to_host.extend_from_slice(data);
        Ok(())
    }
    fn host_bytes(&mut self, data: &[u8], out: &mut FilterOutput) -> Result<(), FilterError> {
        out.to_guest.extend_from_slice(&data.to_ascii_uppercase());
        Ok(())
    }
}

/// What the interceptor was shown: (SNI, dialled address) per flow.
type Shown = Arc<Mutex<Vec<(Option<String>, SocketAddr)>>>;

/// Intercepts flows whose SNI is `filter.test`; remembers what it was shown.
struct BySni(Shown);

impl Interceptor for BySni {
    fn intercept(&mut self, flow: &FlowInfo<'_>) -> Option<Box<dyn StreamFilter>> {
        self.0.lock().unwrap().push((flow.sni.map(str::to_string), flow.dialled));
        (flow.sni == Some("filter.test")).then(|| Box::new(Upper) as Box<dyn StreamFilter>)
    }
}

fn harness() -> (Harness, Shown) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (engine_end, guest) = alcove_net::device::frame_pair().unwrap();
    let config = NetConfig { policy: Policy { profile: Profile::Host, rules: vec![] }, ..NetConfig::default() };
    let plan = config.plan.clone();
    let interceptor = Box::new(BySni(seen.clone()));
    let (net, events) =
        Network::start_with_interceptor(config, Box::new(engine_end), Vec::new(), Some(interceptor)).unwrap();
    let mut h = Harness { net, guest, events, plan };
    h.arp_gateway();
    (h, seen)
}

/// A server that reads the ClientHello plus `extra` bytes, then answers `pong`.
fn server(hello_len: usize, extra: usize) -> (u16, std::thread::JoinHandle<std::io::Result<Vec<u8>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let t = std::thread::spawn(move || {
        let (mut s, _) = listener.accept()?;
        let mut got = vec![0u8; hello_len + extra];
        s.read_exact(&mut got)?;
        s.write_all(b"pong")?;
        Ok(got)
    });
    (port, t)
}

fn exchange(h: &mut Harness, port: u16, local: u16, sni: &str, extra: &[u8]) -> (Vec<u8>, bool) {
    let mut g = h.guest_stack();
    let mut bytes = client_hello(sni, 0);
    bytes.extend_from_slice(extra);
    let sock = g.connect(SocketAddr::new(h.plan.host_v4.into(), port), local);
    let (mut sent, mut got) = (0, Vec::new());
    let mut reset = false;
    g.run_until(|g| {
        let s = g.tcp(sock);
        if s.can_send() && sent < bytes.len() {
            sent += s.send_slice(&bytes[sent..]).unwrap();
        }
        while s.can_recv() {
            s.recv(|b| {
                got.extend_from_slice(b);
                (b.len(), ())
            })
            .unwrap();
        }
        reset = sent > 0 && !s.is_open();
        got.len() == 4 || reset
    });
    (got, reset)
}

#[test]
fn chosen_flows_pass_through_the_filter_and_others_do_not() {
    let (mut h, seen) = harness();
    let hello_len = client_hello("filter.test", 0).len();
    let (port, srv) = server(hello_len, 5);
    let (got, _) = exchange(&mut h, port, 50000, "filter.test", b"hello");
    assert_eq!(got, b"PONG");
    assert_eq!(&srv.join().unwrap().unwrap()[hello_len..], b"hello");

    let mut h2 = harness().0;
    let hello_len = client_hello("plain.test", 0).len();
    let (port, srv) = server(hello_len, 0);
    let (got, _) = exchange(&mut h2, port, 50001, "plain.test", b"");
    assert_eq!(got, b"pong", "not chosen: untouched");
    srv.join().unwrap().unwrap();
    let shown = seen.lock().unwrap().clone();
    assert_eq!(shown[0].0.as_deref(), Some("filter.test"));
    assert!(shown[0].1.ip().is_loopback(), "the interceptor sees the dialled address");
}

#[test]
fn a_filter_error_blocks_the_flow_on_both_sides() {
    let (mut h, _) = harness();
    let hello_len = client_hello("filter.test", 0).len();
    let (port, srv) = server(hello_len, 10);
    let (got, reset) = exchange(&mut h, port, 50002, "filter.test", b"SECRET-xyz");
    assert!(reset && got.is_empty(), "the guest must be reset: {got:?}");
    let host = srv.join().unwrap();
    assert!(matches!(&host, Err(e) if e.kind() == ErrorKind::ConnectionReset), "{host:?}");
    let NetEvent::Denied(r) = h.event(|e| matches!(e, NetEvent::Denied(_))) else { unreachable!() };
    assert_eq!(r.close, CloseReason::Blocked("placeholder sent to a host it is not bound to".into()));
    assert_eq!(r.name.as_deref(), Some("filter.test"));
}
