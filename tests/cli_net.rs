//! The network end to end through the real CLI (jail sandboxes, root):
//! `--net none` keeps loopback only; `--net host` reaches a server on the
//! host's loopback through host.alcove.internal; a denied connect is
//! refused, not hung; a denied name is NXDOMAIN while others are answered
//! by the test's own DNS server (given with `--dns`); a published port
//! reaches a guest listener; flow records are true; bad input is one line.
//!
//! Traffic stays on this machine: the host's loopback, the jail's own
//! namespace, and a DNS server on 127.0.0.1 started here.

mod cli_support;

use cli_support::Alcove;
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a step may take on a loaded machine before it counts as hung.
const DEADLINE: Duration = Duration::from_secs(30);

/// A TCP server on 127.0.0.1 that reads one line and answers `body`.
fn line_server(body: &'static str) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let mut buf = [0u8; 256];
            let _ = s.read(&mut buf);
            let _ = s.write_all(body.as_bytes());
        }
    });
    port
}

/// A DNS server on 127.0.0.1 answering A queries for `names` with
/// 127.0.0.1 and NXDOMAIN for anything else; it remembers every question.
struct TestDns {
    port: u16,
    asked: Arc<Mutex<Vec<String>>>,
}

impl TestDns {
    fn start(names: &'static [&'static str]) -> TestDns {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = socket.local_addr().unwrap().port();
        let asked = Arc::new(Mutex::new(Vec::new()));
        let log = asked.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while let Ok((n, from)) = socket.recv_from(&mut buf) {
                if let Some(reply) = answer(&buf[..n], names, &log) {
                    let _ = socket.send_to(&reply, from);
                }
            }
        });
        TestDns { port, asked }
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn was_asked(&self, name: &str) -> bool {
        self.asked.lock().unwrap().iter().any(|n| n == name)
    }
}

/// The reply to one query (RFC 1035 wire format, one question).
fn answer(query: &[u8], names: &[&str], log: &Mutex<Vec<String>>) -> Option<Vec<u8>> {
    if query.len() < 12 {
        return None;
    }
    let mut labels = Vec::new();
    let mut i = 12;
    loop {
        let len = *query.get(i)? as usize;
        i += 1;
        if len == 0 {
            break;
        }
        labels.push(String::from_utf8_lossy(query.get(i..i + len)?).to_ascii_lowercase());
        i += len;
    }
    let qtype = u16::from_be_bytes([*query.get(i)?, *query.get(i + 1)?]);
    let question_end = i + 4;
    let name = labels.join(".");
    log.lock().unwrap().push(name.clone());
    let known = names.contains(&name.as_str());
    let mut reply = query[..question_end].to_vec();
    reply[2] = 0x84 | (query[2] & 0x01); // response, authoritative, RD as asked
    reply[3] = if known { 0x00 } else { 0x03 }; // NOERROR or NXDOMAIN
    let answers: u16 = if known && qtype == 1 { 1 } else { 0 };
    reply[4..6].copy_from_slice(&1u16.to_be_bytes());
    reply[6..8].copy_from_slice(&answers.to_be_bytes());
    reply[8..12].fill(0);
    if answers == 1 {
        reply.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 127, 0, 0, 1]);
    }
    Some(reply)
}

fn flows(a: &Alcove, name: &str, denied: bool) -> Vec<Value> {
    let mut args = vec!["net", "flows", name, "--json"];
    if denied {
        args.push("--denied");
    }
    match serde_json::from_str(&a.ok(&args)).expect("net flows --json is JSON") {
        Value::Array(rows) => rows,
        other => panic!("not an array: {other}"),
    }
}

/// Polls `net flows` until a row matches (the record is written when the
/// engine sees the flow end).
fn wait_flow(a: &Alcove, name: &str, denied: bool, pred: impl Fn(&Value) -> bool) -> Value {
    let end = Instant::now() + DEADLINE;
    loop {
        if let Some(row) = flows(a, name, denied).into_iter().find(|r| pred(r)) {
            return row;
        }
        assert!(Instant::now() < end, "no matching flow record: {:?}", flows(a, name, false));
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn without_net_a_sandbox_has_loopback_and_its_name_files() {
    let a = Alcove::new();
    let rootfs = a.rootfs_arg();
    let script = "ls /sys/class/net; echo --; cat /etc/hosts; echo --; cat /etc/hostname";
    for extra in [&[][..], &["--net", "none"][..]] {
        let args =
            [&["run", "--rootfs", &rootfs, "--name", "plain"][..], extra, &["--", "sh", "-c", script][..]].concat();
        let out = a.ok(&args);
        let parts: Vec<&str> = out.split("--\n").collect();
        assert_eq!(parts[0].trim(), "lo", "{out}");
        assert!(parts[1].lines().any(|l| l.split_whitespace().eq(["127.0.0.1", "localhost"])), "{out}");
        assert!(parts[1].contains("plain") && !parts[1].contains("host.alcove.internal"), "{out}");
        assert_eq!(parts[2], "plain\n");
        assert_eq!(a.inspect("plain")["network"]["guest_address"], Value::Null);
        a.ok(&["rm", "plain"]);
    }
}

#[test]
fn net_host_reaches_the_hosts_loopback_and_records_the_flow() {
    let a = Alcove::new();
    let port = line_server("hello from the host\n");
    let dns = TestDns::start(&[]);
    a.ok(&["create", "--rootfs", &a.rootfs_arg(), "--net", "host", "--dns", &dns.addr(), "linked"]);
    let entry = a.ps_entry("linked").expect("listed");
    assert_eq!(entry["network"]["profile"], "host");
    assert_eq!(entry["network"]["guest_address"], "10.0.2.15");
    assert_eq!(a.inspect("linked")["network"]["guest_address"], "10.0.2.15");

    let script = format!(
        "cat /etc/resolv.conf; grep host.alcove.internal /etc/hosts; echo hi | nc -w 20 host.alcove.internal {port}"
    );
    let out = a.ok(&["exec", "linked", "sh", "-c", &script]);
    assert!(out.contains("nameserver 10.0.2.1"), "{out}");
    assert!(out.contains("10.0.2.2\thost.alcove.internal"), "{out}");
    assert!(out.ends_with("hello from the host\n"), "{out}");

    let remote = format!("10.0.2.2:{port}");
    let row = wait_flow(&a, "linked", false, |r| r["remote"] == remote.as_str());
    assert_eq!(row["allowed"], true);
    assert_eq!(row["protocol"], "tcp");
    assert_eq!(row["direction"], "outbound");
    assert_eq!(row["bytes_from_guest"], 3, "{row}");
    assert_eq!(row["bytes_to_guest"], "hello from the host\n".len(), "{row}");
    assert_eq!(row["decided_by"], "profile host");
    a.ok(&["rm", "-f", "linked"]);
}

#[test]
fn a_denied_connect_is_refused_at_once_and_recorded() {
    let a = Alcove::new();
    let port = line_server("should never arrive\n");
    let dns = TestDns::start(&[]);
    // public: the host's loopback is not a public address.
    a.ok(&["create", "--rootfs", &a.rootfs_arg(), "--net", "public", "--dns", &dns.addr(), "refused"]);
    let started = Instant::now();
    let out = a.run(&["exec", "refused", "sh", "-c", &format!("echo hi | nc -w 20 10.0.2.2 {port}; echo rc=$?")]);
    let took = started.elapsed();
    assert_eq!(out.code, 0, "{out:?}");
    assert!(!out.stdout.contains("should never arrive"), "{out:?}");
    assert!(out.stdout.contains("rc=1"), "{out:?}");
    // Refused (RST), not left to nc's 20 s timeout.
    assert!(took < Duration::from_secs(10), "the refusal took {took:?}");
    let row = wait_flow(&a, "refused", true, |r| r["remote"] == format!("10.0.2.2:{port}").as_str());
    assert_eq!(row["allowed"], false);
    assert_eq!(row["decided_by"], "profile public");
    a.ok(&["rm", "-f", "refused"]);
}

#[test]
fn a_denied_name_is_nxdomain_and_never_asked_upstream() {
    let a = Alcove::new();
    let dns = TestDns::start(&["allowed.test", "blocked.test"]);
    a.ok(&[
        "create",
        "--rootfs",
        &a.rootfs_arg(),
        "--net",
        "all",
        // The test server answers with loopback, which rebind protection
        // removes unless a rule names the domain.
        "--net-rule",
        "allow:allowed.test",
        "--net-rule",
        "deny:blocked.test",
        "--dns",
        &dns.addr(),
        "names",
    ]);
    let out = a.run(&["exec", "names", "sh", "-c", "nslookup allowed.test; echo --; nslookup blocked.test"]);
    let (allowed, blocked) = out.stdout.split_once("--\n").expect("both lookups ran");
    assert!(allowed.contains("127.0.0.1"), "{out:?}");
    assert!(blocked.contains("NXDOMAIN"), "{out:?}");
    assert!(dns.was_asked("allowed.test"), "the --dns server was not used");
    assert!(!dns.was_asked("blocked.test"), "a denied name was forwarded upstream");
    let row = wait_flow(&a, "names", true, |r| r["name"] == "blocked.test");
    assert!(row["decided_by"].as_str().unwrap().contains("deny:blocked.test"), "{row}");
    a.ok(&["rm", "-f", "names"]);
}

/// What a guest listener on port 8080 of `name` says to a client of the
/// host's `host_port`.
fn through_published_port(a: &Alcove, name: &str, host_port: u16) -> String {
    let mut listener = a
        .cmd(&["exec", name, "sh", "-c", "echo from-the-guest | nc -l -p 8080"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let end = Instant::now() + DEADLINE;
    let got = loop {
        // Until nc listens, the guest resets the connection; try again.
        let mut got = String::new();
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", host_port)) {
            if s.read_to_string(&mut got).is_ok() && !got.is_empty() {
                break got;
            }
        }
        assert!(Instant::now() < end, "the published port never reached the guest's listener");
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = listener.wait();
    got
}

#[test]
fn a_published_port_reaches_a_guest_listener() {
    let a = Alcove::new();
    let host_port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mapping = format!("127.0.0.1:{host_port}:8080");
    a.ok(&["create", "--rootfs", &a.rootfs_arg(), "--net", "host", "-p", &mapping, "served"]);
    assert_eq!(through_published_port(&a, "served", host_port), "from-the-guest\n");
    // Attempts made before nc listened were reset with nothing moved; the
    // one that reached it carried the guest's line.
    let row = wait_flow(&a, "served", false, |r| r["direction"] == "inbound" && r["bytes_from_guest"] != 0);
    assert_eq!(row["bytes_from_guest"], "from-the-guest\n".len(), "{row}");
    assert_eq!(row["bytes_to_guest"], 0, "{row}");
    // The host client appears to the guest as host.alcove.internal.
    assert_eq!(row["remote"].as_str().map(|r| r.starts_with("10.0.2.2:")), Some(true), "{row}");
    assert_eq!(row["guest"], "10.0.2.15:8080", "{row}");
    assert_eq!(row["decided_by"], format!("published port {host_port}"), "{row}");
    a.ok(&["rm", "-f", "served"]);
}

#[test]
fn bad_network_input_is_one_line_and_creates_nothing() {
    let a = Alcove::new();
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_port = taken.local_addr().unwrap().port().to_string();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec!["--net".into(), "everywhere".into()], "unknown network profile \"everywhere\""),
        (vec!["--net-rule".into(), "permit:10.0.0.1".into()], "permit:10.0.0.1"),
        (vec!["--net".into(), "host".into(), "--net-rule".into(), "allow:10.0.0.0/40".into()], "10.0.0.0/40"),
        (vec!["--net".into(), "host".into(), "-p".into(), "80".into()], "invalid port mapping \"80\""),
        (vec!["--net".into(), "host".into(), "--dns".into(), "resolver".into()], "invalid DNS server \"resolver\""),
        (vec!["--dns".into(), "127.0.0.1".into()], "--dns needs a network"),
        (vec!["--net".into(), "host".into(), "-p".into(), format!("{taken_port}:80")], "cannot publish"),
        (
            vec!["--backend".into(), "krun".into(), "--net".into(), "host".into(), "-p".into(), "8o:80".into()],
            "invalid port mapping \"8o:80\"",
        ),
    ];
    for (extra, needle) in cases {
        let mut args: Vec<String> = vec!["create".into(), "--rootfs".into(), a.rootfs_arg()];
        args.extend(extra);
        args.push("bad".into());
        a.run(&args).assert_error(needle);
        assert!(a.ps_entry("bad").is_none(), "a sandbox was recorded for {args:?}");
        assert!(!a.home.join("sandboxes/bad").exists(), "a directory was left for {args:?}");
    }
}

/// `--net` on krun: the same settings as a jail's are recorded and the
/// engine starts on the microVM's link (its published port listens while
/// the VM boots); where microVMs boot, the guest reaches the host's
/// loopback through it over a 1500-byte link; elsewhere (kvm_pvm, no
/// vmx/svm) the one failure is the microVM's boot, never the network.
#[test]
fn krun_takes_net_and_fails_only_where_microvms_cannot_boot() {
    let a = Alcove::new();
    let port = line_server("hello from the host\n");
    let host_port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mapping = format!("127.0.0.1:{host_port}:80");
    let script = format!("cat /sys/class/net/eth0/mtu; echo hi | nc -w 20 host.alcove.internal {port}");
    let rootfs = a.rootfs_arg();
    let args = ["run", "--backend", "krun", "--net", "host", "-p", &mapping, "--name", "vmnet", "--rootfs", &rootfs];
    let mut child = a
        .cmd(&[&args[..], &["--", "sh", "-c", &script]].concat())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The engine binds published ports when it starts on the guest's link,
    // before the VM is entered; the run ends only after the boot fails.
    let end = Instant::now() + DEADLINE;
    let mut listened = false;
    while Instant::now() < end && child.try_wait().unwrap().is_none() {
        if TcpStream::connect(("127.0.0.1", host_port)).is_ok() {
            listened = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    let (code, stdout, stderr) =
        (out.status.code(), String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let network = &a.inspect("vmnet")["network"];
    assert_eq!(network["profile"], "host", "{network}");
    assert_eq!(network["guest_address"], "10.0.2.15", "{network}");
    let (auto, _) = alcove_hostprobe::probe().auto_backend();
    if auto == alcove_hostprobe::Backend::Krun {
        assert_eq!(code, Some(0), "{stderr}");
        assert_eq!(stdout, "1500\nhello from the host\n", "{stderr}");
    } else {
        assert!(listened, "the published port never listened: the engine did not start on the microVM's link");
        assert_eq!(code, Some(125), "{stdout} {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains("failed to start") && stderr.contains("KVM_EXIT_INTERNAL_ERROR"), "{stderr}");
        assert!(!stderr.contains("--net") && !stderr.contains("network"), "{stderr}");
        let run = &a.inspect("vmnet")["runs"][0];
        assert_eq!(run["reason"], "Failed", "{run}");
    }
    a.ok(&["rm", "-f", "vmnet"]);
}

#[test]
fn with_net_deny_ends_a_violation_ends_the_sandbox_as_network_policy() {
    let a = Alcove::new();
    let port = line_server("should never arrive\n");
    a.ok(&["create", "--rootfs", &a.rootfs_arg(), "--net", "public", "--net-deny-ends", "strict"]);
    let _ = a.run(&["exec", "strict", "sh", "-c", &format!("echo hi | nc -w 20 10.0.2.2 {port}; sleep 60")]);
    let entry = a.wait_status("strict", "Stopped", DEADLINE);
    assert_eq!(entry["last_run"]["reason"], "NetworkPolicy", "{entry}");
    let detail = entry["last_run"]["detail"].as_str().unwrap_or_default().to_string();
    assert!(detail.contains(&format!("10.0.2.2:{port}")) && detail.contains("profile public"), "{entry}");
    a.ok(&["rm", "strict"]);
}

#[test]
fn metrics_count_the_sandboxes_network_bytes() {
    let a = Alcove::new();
    let port = line_server("hello from the host\n");
    a.ok(&["create", "--rootfs", &a.rootfs_arg(), "--net", "host", "counted"]);
    a.ok(&["exec", "counted", "sh", "-c", &format!("echo hi | nc -w 20 host.alcove.internal {port}")]);
    let end = Instant::now() + DEADLINE;
    loop {
        let m: Value = serde_json::from_str(&a.ok(&["metrics", "counted", "--json"])).expect("metrics JSON");
        let (rx, tx) = (m["latest"]["net_rx_bytes"].as_u64(), m["latest"]["net_tx_bytes"].as_u64());
        // Frames both ways carried at least the payloads.
        if rx.unwrap_or(0) >= "hello from the host\n".len() as u64 && tx.unwrap_or(0) >= 3 {
            break;
        }
        assert!(Instant::now() < end, "network bytes never reached the metrics: {m}");
        std::thread::sleep(Duration::from_millis(100));
    }
    a.ok(&["rm", "-f", "counted"]);
}

/// A TCP server on 127.0.0.1 that greets each client and keeps the
/// connection open until the client goes.
fn holding_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            std::thread::spawn(move || {
                let _ = s.write_all(b"ready\n");
                let mut sink = Vec::new();
                let _ = s.read_to_end(&mut sink);
            });
        }
    });
    port
}

#[test]
fn a_live_policy_change_cuts_an_open_flow() {
    use std::io::BufRead;
    let a = Alcove::new();
    let port = holding_server();
    a.ok(&["create", "--rootfs", &a.rootfs_arg(), "--net", "host", "live"]);
    let mut held = a
        .cmd(&[
            "exec",
            "live",
            "sh",
            "-c",
            &format!(
            // nc's stdin stays open (a writer that never writes) and the
            // shell waits for nc alone, so only a reset ends it early.
            "mkfifo /tmp/in; (sleep 600 >/tmp/in 2>/dev/null &); nc host.alcove.internal {port} </tmp/in; echo nc-ended"
        ),
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(held.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().and_then(Result::ok).as_deref(), Some("ready"), "the flow never opened");

    let out = a.ok(&["net", "policy", "live", "--net", "public"]);
    assert_eq!(out, "1 flow(s) revoked\n");
    // The guest's connection was reset: nc ends without its peer closing.
    assert_eq!(lines.next().and_then(Result::ok).as_deref(), Some("nc-ended"));
    let _ = held.kill();
    let _ = held.wait();
    let row = wait_flow(&a, "live", false, |r| r["remote"] == format!("10.0.2.2:{port}").as_str());
    assert_eq!(row["close"], "revoked", "{row}");
    // The new policy holds for new flows.
    let out = a.ok(&["exec", "live", "sh", "-c", &format!("nc -w 20 10.0.2.2 {port} </dev/null; echo rc=$?")]);
    assert!(out.ends_with("rc=1\n"), "{out}");

    // A malformed rule is one line and changes nothing.
    a.run(&["net", "policy", "live", "--net-rule", "permit:1.2.3.4"]).assert_error("permit:1.2.3.4");
    a.ok(&["rm", "-f", "live"]);
}

#[test]
fn ports_are_added_listed_and_removed_at_run_time() {
    let a = Alcove::new();
    a.ok(&["create", "--rootfs", &a.rootfs_arg(), "--net", "host", "ported"]);
    let added = a.ok(&["port", "add", "ported", "127.0.0.1:0:8080"]);
    let mapping = added.trim().to_string();
    assert!(mapping.starts_with("127.0.0.1:") && mapping.ends_with(":8080/tcp"), "{added}");
    let host_port: u16 = mapping.split(':').nth(1).unwrap().parse().unwrap();
    assert_ne!(host_port, 0);
    assert_eq!(a.ok(&["port", "ls", "ported"]), format!("{mapping}\n"));
    // The port is really bound on the host.
    TcpStream::connect(("127.0.0.1", host_port)).expect("the added port listens");
    a.ok(&["port", "rm", "ported", &mapping]);
    assert_eq!(a.ok(&["port", "ls", "ported"]), "");
    assert!(TcpStream::connect(("127.0.0.1", host_port)).is_err(), "a removed port still listens");
    a.run(&["port", "rm", "ported", &mapping]).assert_error("is not published");
    a.run(&["port", "add", "ported", "8080"]).assert_error("invalid port mapping");

    // A sandbox without a network has nothing to change.
    a.ok(&["create", "--rootfs", &a.rootfs_arg(), "isolated"]);
    a.run(&["port", "ls", "isolated"]).assert_error("is it running with --net?");
    a.ok(&["rm", "-f", "ported", "isolated"]);
}

#[test]
fn a_networked_run_ends_with_its_commands_outcome() {
    let a = Alcove::new();
    // The guest's link vanishes with it; that must not become the reason.
    for (script, code, reason) in [("true", 0, "Completed"), ("exit 7", 7, "Failed")] {
        let out =
            a.run(&["run", "--rootfs", &a.rootfs_arg(), "--net", "host", "--name", "ended", "--", "sh", "-c", script]);
        assert_eq!(out.code, code, "{out:?}");
        let entry = a.ps_entry("ended").expect("kept");
        assert_eq!(entry["last_run"]["reason"], reason, "{entry}");
        a.ok(&["rm", "ended"]);
    }
}

#[test]
fn a_stopped_networked_sandbox_starts_again_with_its_network() {
    let a = Alcove::new();
    let port = line_server("hello again\n");
    let host_port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mapping = format!("127.0.0.1:{host_port}:8080");
    a.ok(&["create", "--rootfs", &a.rootfs_arg(), "--net", "host", "-p", &mapping, "again"]);
    let nc = format!("echo hi | nc -w 20 host.alcove.internal {port}");
    assert_eq!(a.ok(&["exec", "again", "sh", "-c", &nc]), "hello again\n");
    a.ok(&["stop", "again"]);
    assert!(TcpStream::connect(("127.0.0.1", host_port)).is_err(), "a stopped sandbox still publishes its port");
    a.ok(&["start", "again"]);
    assert_eq!(a.ok(&["exec", "again", "sh", "-c", &nc]), "hello again\n");
    assert_eq!(a.ok(&["port", "ls", "again"]), format!("{mapping}/tcp\n"));
    a.ok(&["rm", "-f", "again"]);
}

/// The `network` section of `config.json`, what `alcove start` reads.
fn saved_network(a: &Alcove, name: &str) -> Value {
    let path = a.home.join("sandboxes").join(name).join("config.json");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600, "config.json stays 0600");
    serde_json::from_slice::<Value>(&std::fs::read(path).unwrap()).unwrap()["network"].clone()
}

#[test]
fn a_live_policy_change_is_kept_across_a_restart() {
    let a = Alcove::new();
    let port = line_server("hello\n");
    let dns = TestDns::start(&[]);
    a.ok(&["create", "--rootfs", &a.rootfs_arg(), "--net", "host", "--dns", &dns.addr(), "kept"]);
    let nc = format!("nc -w 20 10.0.2.2 {port} </dev/null; echo rc=$?");
    assert_eq!(a.ok(&["exec", "kept", "sh", "-c", &nc]), "hello\nrc=0\n");

    a.ok(&["net", "policy", "kept", "--net", "public", "--net-rule", "deny:*.example.com"]);
    for network in [a.inspect("kept")["network"].clone(), saved_network(&a, "kept")] {
        assert_eq!(network["profile"], "public", "{network}");
        assert_eq!(network["rules"], serde_json::json!(["deny:*.example.com"]), "{network}");
        assert_eq!(network["dns"], serde_json::json!([dns.addr()]), "the rest is kept: {network}");
    }
    // A change that could not start the sandbox again (--dns without a
    // link) is refused whole: the engine and the configuration keep public.
    a.run(&["net", "policy", "kept", "--net", "none"]).assert_error("--dns needs a network");
    assert_eq!(a.inspect("kept")["network"]["profile"], "public");
    assert!(a.ok(&["exec", "kept", "sh", "-c", &nc]).ends_with("rc=1\n"), "public still runs");

    a.ok(&["stop", "kept"]);
    a.ok(&["start", "kept"]);
    // The kept policy holds: public denies the host's loopback.
    let out = a.ok(&["exec", "kept", "sh", "-c", &nc]);
    assert!(out.ends_with("rc=1\n"), "{out}");
    let row = wait_flow(&a, "kept", true, |r| r["remote"] == format!("10.0.2.2:{port}").as_str());
    assert_eq!(row["decided_by"], "profile public", "{row}");
    a.ok(&["rm", "-f", "kept"]);
}

#[test]
fn a_port_added_at_run_time_is_kept_across_a_restart() {
    let a = Alcove::new();
    a.ok(&["create", "--rootfs", &a.rootfs_arg(), "--net", "host", "ported"]);
    let mapping = a.ok(&["port", "add", "ported", "127.0.0.1:0:8080"]).trim().to_string();
    let host_port: u16 = mapping.split(':').nth(1).unwrap().parse().unwrap();
    for network in [a.inspect("ported")["network"].clone(), saved_network(&a, "ported")] {
        assert_eq!(network["publish"], serde_json::json!([mapping]), "kept as bound: {network}");
    }
    // A port the engine cannot publish changes nothing.
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_port = taken.local_addr().unwrap().port();
    a.run(&["port", "add", "ported", &format!("127.0.0.1:{taken_port}:9090")]).assert_error("cannot publish");
    assert_eq!(a.inspect("ported")["network"]["publish"], serde_json::json!([mapping]));
    assert_eq!(saved_network(&a, "ported")["publish"], serde_json::json!([mapping]));

    a.ok(&["stop", "ported"]);
    a.ok(&["start", "ported"]);
    assert_eq!(a.ok(&["port", "ls", "ported"]), format!("{mapping}\n"));
    assert_eq!(through_published_port(&a, "ported", host_port), "from-the-guest\n");

    // A removed port stays removed.
    a.ok(&["port", "rm", "ported", &mapping]);
    assert_eq!(a.inspect("ported")["network"]["publish"], serde_json::json!([]));
    a.ok(&["stop", "ported"]);
    a.ok(&["start", "ported"]);
    assert_eq!(a.ok(&["port", "ls", "ported"]), "");
    assert!(TcpStream::connect(("127.0.0.1", host_port)).is_err(), "a removed port listens after a restart");
    a.ok(&["rm", "-f", "ported"]);
}
