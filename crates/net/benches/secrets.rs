//! HTTPS through the engine, intercepted for a secret against passed
//! through: a rustls client over a smoltcp guest stack on the in-memory
//! frame pair, a rustls server on 127.0.0.1 reached as
//! host.alcove.internal. Request rate on one keep-alive connection, and
//! an 8 MiB download. See BENCHMARKS.md ("Secrets").

#[path = "../tests/common/mod.rs"]
mod common;

use alcove_net::device::frame_pair;
use alcove_net::intercept::Interceptor;
use alcove_net::policy::{Policy, Profile};
use alcove_net::secrets::{ca::SandboxCa, Secret, Secrets, SecretsConfig, SecretsInterceptor, UpstreamTrust};
use alcove_net::{NetConfig, Network};
use common::*;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use smoltcp::iface::SocketHandle;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::SystemTime;

const BULK: usize = 8 << 20;
const PH: &str = "alcoveph0123456789abcdef0123456789abcdef";

#[allow(deprecated)]
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A keep-alive HTTPS server: `GET /bulk` answers BULK bytes, anything else `ok`.
fn server() -> (u16, CertificateDer<'static>) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::default();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec![alcove_net::HOST_NAME.to_string()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], PrivateKeyDer::Pkcs8(key.serialize_der().into()))
        .unwrap();
    let config = Arc::new(config);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let config = config.clone();
            std::thread::spawn(move || {
                let _ = stream.set_nodelay(true);
                let mut tls = rustls::StreamOwned::new(rustls::ServerConnection::new(config).unwrap(), stream);
                let body = vec![0x5au8; BULK];
                let mut head = Vec::new();
                let mut buf = [0u8; 16384];
                loop {
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match tls.read(&mut buf) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let bulk = head.starts_with(b"GET /bulk");
                    head.clear();
                    let payload: &[u8] = if bulk { &body } else { b"ok" };
                    let reply = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", payload.len());
                    if tls.write_all(reply.as_bytes()).and_then(|_| tls.write_all(payload)).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (port, ca.der().clone())
}

/// A guest with an HTTPS connection to the server, intercepted or not.
struct Client {
    g: GuestStack,
    sock: SocketHandle,
    tls: rustls::ClientConnection,
    pending: Vec<u8>,
    _net: Network,
}

fn client(port: u16, server_ca: &CertificateDer<'static>, intercept: bool) -> Client {
    let ca = Arc::new(SandboxCa::generate(SystemTime::now()).unwrap());
    let bound = if intercept { alcove_net::HOST_NAME } else { "elsewhere.test" };
    let secrets = Secrets::new(vec![Secret {
        name: "API_KEY".into(),
        placeholder: PH.into(),
        hosts: vec![bound.parse().unwrap()],
        value: Arc::new(b"sk-bench".to_vec()),
    }]);
    let cfg = SecretsConfig {
        secrets,
        ca: ca.clone(),
        upstream: Arc::new(UpstreamTrust::only(vec![server_ca.clone()])),
        ports: vec![port],
    };
    let interceptor: Box<dyn Interceptor> = Box::new(SecretsInterceptor::new(cfg));
    let (engine_end, guest) = frame_pair().unwrap();
    let config = NetConfig { policy: Policy { profile: Profile::Host, rules: vec![] }, ..NetConfig::default() };
    let plan = config.plan.clone();
    let (net, events) =
        Network::start_with_interceptor(config, Box::new(engine_end), Vec::new(), Some(interceptor)).unwrap();
    let mut h = Harness { net, guest, events, plan };
    h.arp_gateway();
    let mut g = h.guest_stack();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(if intercept { ca.cert_der() } else { server_ca.clone() }).unwrap();
    let tls_config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = ServerName::try_from(alcove_net::HOST_NAME).unwrap();
    let tls = rustls::ClientConnection::new(Arc::new(tls_config), name).unwrap();
    let sock = g.connect(SocketAddr::new(h.plan.host_v4.into(), port), 30000);
    Client { g, sock, tls, pending: Vec::new(), _net: h.net }
}

impl Client {
    /// Sends `request` and reads until `want` plaintext bytes have come back.
    fn exchange(&mut self, request: &[u8], want: usize) {
        self.tls.writer().write_all(request).unwrap();
        let mut got = 0usize;
        let Client { g, sock, tls, pending, .. } = self;
        let mut plain = vec![0u8; 64 * 1024];
        assert!(g.run_until(|g| {
            let s = g.tcp(*sock);
            if pending.is_empty() && tls.wants_write() {
                tls.write_tls(pending).unwrap();
            }
            if !pending.is_empty() && s.can_send() {
                let n = s.send_slice(pending).unwrap();
                pending.drain(..n);
            }
            while s.can_recv() {
                let n = s.recv(|b| {
                    let n = tls.read_tls(&mut &b[..]).unwrap();
                    (n, n)
                });
                tls.process_new_packets().unwrap();
                loop {
                    match tls.reader().read(&mut plain) {
                        Ok(0) => break,
                        Ok(k) => got += k,
                        Err(_) => break,
                    }
                }
                if n.unwrap_or(0) == 0 {
                    break;
                }
            }
            got >= want
        }));
    }
}

/// The bytes of a small response (`ok`) with its head.
const SMALL_REPLY: usize = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".len();

fn https(c: &mut Criterion) {
    let (port, server_ca) = server();
    let request = format!("GET /v1 HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {PH}\r\n\r\n", alcove_net::HOST_NAME);
    let bulk_request = format!("GET /bulk HTTP/1.1\r\nHost: {}\r\n\r\n", alcove_net::HOST_NAME);
    let bulk_reply = BULK + format!("HTTP/1.1 200 OK\r\nContent-Length: {BULK}\r\n\r\n").len();
    let mut group = c.benchmark_group("https");
    group.sample_size(20);
    for (label, intercept) in [("passthrough", false), ("intercepted", true)] {
        let mut cl = client(port, &server_ca, intercept);
        cl.exchange(request.as_bytes(), SMALL_REPLY);
        group.throughput(Throughput::Elements(1));
        group.bench_function(format!("request_{label}"), |b| b.iter(|| cl.exchange(request.as_bytes(), SMALL_REPLY)));
        group.throughput(Throughput::Bytes(BULK as u64));
        group.bench_function(format!("download_8MiB_{label}"), |b| {
            b.iter(|| cl.exchange(bulk_request.as_bytes(), bulk_reply))
        });
    }
    group.finish();
}

/// What `--secret` adds to a sandbox's start (the CA) and to the first
/// intercepted connection to a name (its leaf; later ones are cached).
fn ca(c: &mut Criterion) {
    let mut group = c.benchmark_group("ca");
    group.bench_function("generate", |b| b.iter(|| SandboxCa::generate(SystemTime::now()).unwrap()));
    let ca = SandboxCa::generate(SystemTime::now()).unwrap();
    let mut n = 0u64;
    group.bench_function("leaf_new_name", |b| {
        b.iter(|| {
            n += 1;
            ca.leaf(&format!("h{n}.example.test"), SystemTime::now()).unwrap()
        })
    });
    group.bench_function("leaf_cached", |b| b.iter(|| ca.leaf("h1.example.test", SystemTime::now()).unwrap()));
    group.finish();
}

criterion_group!(benches, https, ca);
criterion_main!(benches);
