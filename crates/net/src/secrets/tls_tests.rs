//! An intercepted connection end to end in memory: a rustls client (the
//! guest, trusting the sandbox CA) ↔ [`TlsFilter`] ↔ a rustls server (the
//! upstream, with its own test CA).

use super::*;
use crate::secrets::ca::SandboxCa;
use crate::secrets::{Secret, Secrets, SecretsConfig};
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use std::time::{Duration, SystemTime};

const PH: &str = "alcoveph0123456789abcdef0123456789abcdef";
const VALUE: &str = "sk-live-value";

struct Upstream {
    roots_der: Vec<rustls::pki_types::CertificateDer<'static>>,
    config: Arc<rustls::ServerConfig>,
}

/// A test CA and a server certificate for `name`, valid from `start` for `life`.
fn upstream(name: &str, start: SystemTime, life: Duration) -> Upstream {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::default();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec![name.to_string()]).unwrap();
    params.not_before = start.into();
    params.not_after = (start + life).into();
    let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
    let roots_der = vec![ca.der().clone()];
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())))
        .unwrap();
    Upstream { roots_der, config: Arc::new(config) }
}

fn config(up: &Upstream) -> SecretsConfig {
    SecretsConfig {
        secrets: Secrets::new(vec![Secret {
            name: "API_KEY".into(),
            placeholder: PH.into(),
            hosts: vec!["api.test".parse().unwrap()],
            value: Arc::new(VALUE.as_bytes().to_vec()),
        }]),
        ca: Arc::new(SandboxCa::generate(SystemTime::now()).unwrap()),
        upstream: Arc::new(crate::secrets::UpstreamTrust::only(up.roots_der.clone())),
        ports: vec![443],
    }
}

fn guest_client(cfg: &SecretsConfig, name: &str) -> ClientConnection {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cfg.ca.cert_der()).unwrap();
    let mut c = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    c.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    ClientConnection::new(Arc::new(c), ServerName::try_from(name.to_string()).unwrap()).unwrap()
}

/// What each end saw.
#[derive(Default)]
struct Seen {
    upstream_plain: Vec<u8>,
    guest_plain: Vec<u8>,
    guest_alpn: Option<Vec<u8>>,
    /// The guest saw the upstream's close_notify.
    guest_closed: bool,
}

/// Pumps the three parties until nothing moves; the upstream answers `reply`
/// once it has a request head.
fn pump(
    filter: &mut TlsFilter,
    guest: &mut ClientConnection,
    server: &mut ServerConnection,
    request: &[u8],
    reply: &[u8],
) -> Result<Seen, FilterError> {
    let mut seen = Seen::default();
    guest.writer().write_all(request).unwrap();
    let mut replied = false;
    for _ in 0..50 {
        let mut out = FilterOutput::default();
        let mut bytes = Vec::new();
        while guest.wants_write() {
            guest.write_tls(&mut bytes).unwrap();
        }
        if !bytes.is_empty() {
            filter.guest_bytes(&bytes, &mut out)?;
        }
        let mut back = Vec::new();
        if !out.to_host.is_empty() {
            server.read_tls(&mut out.to_host.as_slice()).unwrap();
            server.process_new_packets().unwrap();
            drain_plaintext(&mut server.reader(), &mut seen.upstream_plain).unwrap();
            if !replied && seen.upstream_plain.windows(4).any(|w| w == b"\r\n\r\n") {
                server.writer().write_all(reply).unwrap();
                server.send_close_notify();
                replied = true;
            }
        }
        while server.wants_write() {
            server.write_tls(&mut back).unwrap();
        }
        let mut out2 = FilterOutput::default();
        if !back.is_empty() {
            filter.host_bytes(&back, &mut out2)?;
        }
        if !out2.to_host.is_empty() {
            server.read_tls(&mut out2.to_host.as_slice()).unwrap();
            server.process_new_packets().unwrap();
        }
        let moved = !bytes.is_empty()
            || !back.is_empty()
            || !out.to_guest.is_empty()
            || !out2.to_guest.is_empty()
            || !out2.to_host.is_empty();
        for to_guest in [out.to_guest, out2.to_guest] {
            if !to_guest.is_empty() {
                guest.read_tls(&mut to_guest.as_slice()).unwrap();
                guest.process_new_packets().unwrap();
                seen.guest_closed |= drain_plaintext(&mut guest.reader(), &mut seen.guest_plain).unwrap();
            }
        }
        if !moved {
            break;
        }
    }
    seen.guest_alpn = guest.alpn_protocol().map(<[u8]>::to_vec);
    Ok(seen)
}

#[test]
fn the_upstream_gets_the_value_and_the_guest_only_the_reply() {
    let up = upstream("api.test", SystemTime::now() - Duration::from_secs(60), Duration::from_secs(3600));
    let cfg = config(&up);
    let mut filter = TlsFilter::new(&cfg, "api.test", true).unwrap();
    let mut guest = guest_client(&cfg, "api.test");
    let mut server = ServerConnection::new(up.config.clone()).unwrap();
    let request = format!("GET /x HTTP/1.1\r\nHost: api.test\r\nAuthorization: Bearer {PH}\r\n\r\n");
    let seen = pump(
        &mut filter,
        &mut guest,
        &mut server,
        request.as_bytes(),
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    )
    .unwrap();
    let upstream_text = String::from_utf8_lossy(&seen.upstream_plain);
    assert!(upstream_text.contains(&format!("authorization: Bearer {VALUE}\r\n")), "{upstream_text}");
    assert!(!upstream_text.contains(PH));
    assert!(seen.guest_plain.ends_with(b"\r\n\r\nok"), "{:?}", String::from_utf8_lossy(&seen.guest_plain));
    assert_eq!(seen.guest_alpn.as_deref(), Some(&b"http/1.1"[..]), "only http/1.1 is offered to the guest");
    assert!(seen.guest_closed, "the upstream's close_notify reaches the guest");
}

#[test]
fn an_expired_upstream_certificate_is_refused_before_any_request_goes_out() {
    let long_ago = SystemTime::now() - Duration::from_secs(10 * 24 * 3600);
    let up = upstream("api.test", long_ago, Duration::from_secs(24 * 3600));
    let cfg = config(&up);
    let mut filter = TlsFilter::new(&cfg, "api.test", true).unwrap();
    let mut guest = guest_client(&cfg, "api.test");
    let mut server = ServerConnection::new(up.config.clone()).unwrap();
    let request = format!("GET /{PH} HTTP/1.1\r\nHost: api.test\r\n\r\n");
    let e = match pump(&mut filter, &mut guest, &mut server, request.as_bytes(), b"") {
        Ok(seen) => panic!("went through: {:?}", String::from_utf8_lossy(&seen.upstream_plain)),
        Err(e) => e,
    };
    let FilterError::Blocked(why) = e else { panic!("{e:?}") };
    assert!(why.contains("TLS to api.test") && why.to_lowercase().contains("expired"), "{why}");
}

#[test]
fn an_upstream_the_roots_do_not_know_is_refused() {
    let now = SystemTime::now() - Duration::from_secs(60);
    let up = upstream("api.test", now, Duration::from_secs(3600));
    let stranger = upstream("api.test", now, Duration::from_secs(3600));
    let cfg = config(&up);
    let mut filter = TlsFilter::new(&cfg, "api.test", true).unwrap();
    let mut guest = guest_client(&cfg, "api.test");
    let mut server = ServerConnection::new(stranger.config.clone()).unwrap();
    let result = pump(&mut filter, &mut guest, &mut server, b"GET / HTTP/1.1\r\nHost: api.test\r\n\r\n", b"");
    assert!(matches!(result, Err(FilterError::Blocked(why)) if why.contains("TLS to api.test")));
}

#[test]
fn upstream_ca_files_must_hold_certificates() {
    let up = upstream("a.test", SystemTime::now(), Duration::from_secs(60));
    let pem = format!(
        "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &up.roots_der[0])
    );
    assert_eq!(crate::secrets::parse_pem_certs(pem.as_bytes()).unwrap().len(), 1);
    assert!(crate::secrets::parse_pem_certs(b"hello").is_err());
    assert!(crate::secrets::parse_pem_certs(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n").is_err());
}

#[test]
fn scan_filter_sees_a_placeholder_split_across_reads() {
    let secrets = config(&upstream("a.test", SystemTime::now(), Duration::from_secs(60))).secrets;
    let mut scan = ScanFilter::new(secrets, Some("plain.test".into()), "10.0.2.2:80".parse().unwrap());
    let mut out = FilterOutput::default();
    let req = format!("GET /?k={PH} HTTP/1.1\r\n");
    let (a, b) = req.as_bytes().split_at(15);
    scan.guest_bytes(a, &mut out).unwrap();
    let e = scan.guest_bytes(b, &mut out).unwrap_err();
    assert_eq!(
        e,
        FilterError::SecretViolation {
            secret: "API_KEY".into(),
            host: "plain.test".into(),
            how: "in plaintext".into()
        }
    );
    assert!(!out.to_host.windows(PH.len()).any(|w| w == PH.as_bytes()));
}
