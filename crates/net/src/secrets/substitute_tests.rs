//! The rewriter's gates and substitutions, without sockets.

use super::*;
use crate::secrets::{Secret, Secrets};
use std::sync::Arc;

const PH: &str = "alcoveph00112233445566778899aabbccddeeff";
const VALUE: &str = "sk-real-value";

fn secrets() -> Secrets {
    Secrets::new(vec![
        Secret {
            name: "API_KEY".into(),
            placeholder: PH.into(),
            hosts: vec!["api.test".parse().unwrap(), "*.svc.test".parse().unwrap()],
            value: Arc::new(VALUE.as_bytes().to_vec()),
        },
        Secret {
            name: "OTHER".into(),
            placeholder: "alcovephffffffffffffffffffffffffffffffff".into(),
            hosts: vec!["other.test".parse().unwrap()],
            value: Arc::new(b"other-value".to_vec()),
        },
    ])
}

fn rewriter(sni: &str, dns_resolved: bool) -> Rewriter {
    Rewriter::new(secrets(), Gates { sni: sni.into(), dns_resolved })
}

/// Feeds `input` in pieces of `step` bytes; returns (to_host, to_guest).
fn run(r: &mut Rewriter, input: &[u8], step: usize) -> Result<(Vec<u8>, Vec<u8>), FilterError> {
    let (mut host, mut guest) = (Vec::new(), Vec::new());
    for piece in input.chunks(step.max(1)) {
        r.feed(piece, &mut host, &mut guest)?;
    }
    Ok((host, guest))
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn the_request_line_and_headers_are_substituted_when_every_gate_holds() {
    let req = format!("GET /v1?key={PH} HTTP/1.1\r\nHost: api.test\r\nX-Api-Key: {PH}\r\n\r\n");
    for step in [1, 7, 4096] {
        let (host, guest) = run(&mut rewriter("api.test", true), req.as_bytes(), step).unwrap();
        let want = format!("GET /v1?key={VALUE} HTTP/1.1\r\nhost: api.test\r\nx-api-key: {VALUE}\r\n\r\n");
        assert_eq!(text(&host), want, "step {step}");
        assert!(guest.is_empty());
    }
}

#[test]
fn basic_credentials_are_substituted_inside_their_base64() {
    let creds = base64::engine::general_purpose::STANDARD.encode(format!("user:{PH}"));
    let req = format!("GET / HTTP/1.1\r\nHost: api.test:443\r\nAuthorization: Basic {creds}\r\n\r\n");
    let (host, _) = run(&mut rewriter("api.test", true), req.as_bytes(), 4096).unwrap();
    let want = base64::engine::general_purpose::STANDARD.encode(format!("user:{VALUE}"));
    assert!(text(&host).contains(&format!("authorization: Basic {want}\r\n")), "{}", text(&host));
}

#[test]
fn a_body_is_substituted_and_its_length_rewritten_and_keep_alive_goes_on() {
    let body = format!("{{\"key\":\"{PH}\"}}");
    let req = format!(
        "POST /a HTTP/1.1\r\nHost: x.svc.test\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n{body}GET /b HTTP/1.1\r\nHost: x.svc.test\r\n\r\n",
        body.len()
    );
    for step in [1, 5, 4096] {
        let (host, guest) = run(&mut rewriter("x.svc.test", true), req.as_bytes(), step).unwrap();
        let new_body = format!("{{\"key\":\"{VALUE}\"}}");
        let want = format!(
            "POST /a HTTP/1.1\r\nhost: x.svc.test\r\ncontent-length: {}\r\n\r\n{new_body}GET /b HTTP/1.1\r\nhost: x.svc.test\r\n\r\n",
            new_body.len()
        );
        assert_eq!(text(&host), want, "step {step}");
        assert_eq!(guest, b"HTTP/1.1 100 Continue\r\n\r\n");
    }
}

#[test]
fn requests_without_placeholders_pass_unchanged_but_for_header_case() {
    let req = b"GET / HTTP/1.1\r\nHost: api.test\r\nContent-Length: 3\r\n\r\nabc";
    let (host, _) = run(&mut rewriter("api.test", true), req, 2).unwrap();
    assert_eq!(host, b"GET / HTTP/1.1\r\nhost: api.test\r\ncontent-length: 3\r\n\r\nabc");
}

fn violation(e: FilterError) -> (String, String) {
    match e {
        FilterError::SecretViolation { secret, host, .. } => (secret, host),
        other => panic!("not a violation: {other:?}"),
    }
}

#[test]
fn a_placeholder_for_a_host_the_secret_is_not_bound_to_is_a_violation() {
    let req = format!("GET / HTTP/1.1\r\nHost: other.test\r\nX: {PH}\r\n\r\n");
    let e = run(&mut rewriter("other.test", true), req.as_bytes(), 4096).unwrap_err();
    assert_eq!(violation(e), ("API_KEY".into(), "other.test".into()));
}

#[test]
fn a_host_header_other_than_the_sni_is_a_violation() {
    let req = format!("GET / HTTP/1.1\r\nHost: evil.test\r\nX: {PH}\r\n\r\n");
    let e = run(&mut rewriter("api.test", true), req.as_bytes(), 4096).unwrap_err();
    assert_eq!(violation(e), ("API_KEY".into(), "evil.test".into()));
    let no_host = format!("GET /{PH} HTTP/1.1\r\n\r\n");
    let e = run(&mut rewriter("api.test", true), no_host.as_bytes(), 4096).unwrap_err();
    assert_eq!(violation(e).1, "(no Host header)");
}

#[test]
fn an_sni_not_resolved_through_the_sandbox_dns_blocks_instead_of_substituting() {
    let req = format!("GET / HTTP/1.1\r\nHost: api.test\r\nX: {PH}\r\n\r\n");
    let e = run(&mut rewriter("api.test", false), req.as_bytes(), 4096).unwrap_err();
    let FilterError::Blocked(why) = e else { panic!("{e:?}") };
    assert!(why.contains("API_KEY") && why.contains("DNS") && !why.contains(VALUE) && !why.contains(PH), "{why}");
}

#[test]
fn placeholders_that_cannot_be_substituted_block_the_flow() {
    let chunked = format!("POST / HTTP/1.1\r\nHost: api.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n{:x}\r\n{PH}\r\n0\r\n\r\n", PH.len());
    let gzip = format!(
        "POST / HTTP/1.1\r\nHost: api.test\r\nContent-Encoding: gzip\r\nContent-Length: {}\r\n\r\n{PH}",
        PH.len()
    );
    let opaque = format!("\x00\x01binary {PH}");
    for (input, why) in [(chunked, "chunked"), (gzip, "compressed"), (opaque, "not HTTP/1.1")] {
        for step in [1, 3, 4096] {
            let e = run(&mut rewriter("api.test", true), input.as_bytes(), step).unwrap_err();
            let FilterError::Blocked(text) = e else { panic!("{e:?}") };
            assert!(text.contains(why) && text.contains("API_KEY"), "{text}");
        }
    }
}

#[test]
fn chunked_bodies_without_placeholders_pass_and_the_next_request_is_parsed() {
    let input = format!("POST / HTTP/1.1\r\nHost: api.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\nGET /{PH} HTTP/1.1\r\nHost: api.test\r\n\r\n");
    for step in [1, 4096] {
        let (host, _) = run(&mut rewriter("api.test", true), input.as_bytes(), step).unwrap();
        assert!(text(&host).ends_with(&format!("GET /{VALUE} HTTP/1.1\r\nhost: api.test\r\n\r\n")), "{}", text(&host));
        assert!(text(&host).contains("5\r\nhello\r\n0\r\n\r\n"));
    }
}

#[test]
fn a_value_with_a_line_break_is_never_written_into_a_head() {
    let s = secrets();
    s.set_value("API_KEY", b"a\r\nInjected: 1".to_vec()).unwrap();
    let mut r = Rewriter::new(s, Gates { sni: "api.test".into(), dns_resolved: true });
    let req = format!("GET / HTTP/1.1\r\nHost: api.test\r\nX: {PH}\r\n\r\n");
    assert!(matches!(run(&mut r, req.as_bytes(), 4096), Err(FilterError::Blocked(_))));
}

#[test]
fn rotation_takes_effect_on_the_next_request() {
    let s = secrets();
    let mut r = Rewriter::new(s.clone(), Gates { sni: "api.test".into(), dns_resolved: true });
    let req = format!("GET /{PH} HTTP/1.1\r\nHost: api.test\r\n\r\n");
    let (first, _) = run(&mut r, req.as_bytes(), 4096).unwrap();
    s.set_value("API_KEY", b"rotated".to_vec()).unwrap();
    let (second, _) = run(&mut r, req.as_bytes(), 4096).unwrap();
    assert!(text(&first).contains(VALUE) && text(&second).contains("/rotated "), "{}", text(&second));
}

#[test]
fn host_ports_and_brackets_are_stripped() {
    assert_eq!(host_without_port("api.test:8443"), "api.test");
    assert_eq!(host_without_port("api.test"), "api.test");
    assert_eq!(host_without_port("[::1]:443"), "::1");
}
