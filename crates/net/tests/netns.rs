//! End to end: a network namespace made by the test, the engine's TAP as
//! its `eth0`, and busybox inside it reaching a server on the host's
//! loopback through host.alcove.internal; a published port reached from
//! the host; a denied connect refused at once. Needs root (as the rest of
//! alcove's tests) and installs busybox-static if busybox is missing.
//! (busybox 1.35's static `wget` segfaults on this machine even on the
//! host, so HTTP goes through `nc`.)

mod common;

use alcove_net::device::TapDevice;
use alcove_net::policy::{Policy, Profile};
use alcove_net::{NetConfig, NetEvent, Network};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

struct Netns {
    name: String,
}

impl Netns {
    fn new() -> Netns {
        // Tests run in parallel: one namespace each.
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("alcove-net-{}-{n}", std::process::id());
        run("ip", &["netns", "add", &name]);
        std::fs::create_dir_all(format!("/etc/netns/{name}")).unwrap();
        std::fs::write(format!("/etc/netns/{name}/resolv.conf"), "nameserver 10.0.2.1\n").unwrap();
        Netns { name }
    }

    fn exec(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).args(args);
        c
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
        let _ = std::fs::remove_dir_all(format!("/etc/netns/{}", self.name));
    }
}

fn run(cmd: &str, args: &[&str]) {
    let status = Command::new(cmd).args(args).status().unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(status.success(), "{cmd} {args:?} failed");
}

fn busybox() -> String {
    for path in ["/bin/busybox", "/usr/bin/busybox"] {
        if Path::new(path).exists() {
            return path.to_string();
        }
    }
    run("apt-get", &["update", "-q"]);
    run("apt-get", &["install", "-y", "-q", "busybox-static"]);
    "/bin/busybox".to_string()
}

/// An HTTP server on 127.0.0.1 answering every request with `body`.
fn http_server(body: &'static str) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let _ = write!(s, "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len());
        }
    });
    port
}

/// `GET /` through busybox nc inside the namespace.
fn http_get(ns: &Netns, bb: &str, target: &str) -> std::process::Output {
    let script = format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | {bb} nc -w 30 {target}");
    ns.exec(&[bb, "sh", "-c", &script]).output().unwrap()
}

#[test]
fn busybox_in_a_namespace_uses_the_engine() {
    let bb = busybox();
    let ns = Netns::new();
    let tap = TapDevice::create_in_netns(Path::new(&format!("/run/netns/{}", ns.name)), "eth0", 1500).unwrap();
    run("ip", &["-n", &ns.name, "link", "set", "lo", "up"]);
    run("ip", &["-n", &ns.name, "addr", "add", "10.0.2.15/24", "dev", "eth0"]);
    run("ip", &["-n", &ns.name, "route", "add", "default", "via", "10.0.2.1"]);
    let config = NetConfig { policy: Policy { profile: Profile::Host, rules: vec![] }, ..NetConfig::default() };
    let (net, events) = Network::start(config, Box::new(tap), Vec::new()).unwrap();

    // The gateway answers ping.
    let ping = ns.exec(&[&bb, "ping", "-c", "1", "-W", "10", "10.0.2.1"]).output().unwrap();
    assert!(ping.status.success(), "ping: {}", String::from_utf8_lossy(&ping.stderr));

    // host.alcove.internal (resolved by the engine's DNS) → 127.0.0.1.
    let port = http_server("hello from the host");
    let out = http_get(&ns, &bb, &format!("host.alcove.internal {port}"));
    assert!(out.status.success(), "nc: {:?} {}", out.status, String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).ends_with("\r\n\r\nhello from the host"), "{out:?}");

    // A published port reaches a listener inside the namespace.
    let mapping = net.add_port("127.0.0.1:0:8080".parse().unwrap()).unwrap();
    let mut listener = ns.exec(&[&bb, "sh", "-c", "echo from-the-guest | busybox nc -l -p 8080"]);
    let mut child = listener.stdout(Stdio::null()).spawn().unwrap();
    let end = Instant::now() + common::DEADLINE;
    let got = loop {
        // Until nc listens, the guest resets the connection; retry.
        let mut s = TcpStream::connect(mapping.host).unwrap();
        let mut got = String::new();
        if s.read_to_string(&mut got).is_ok() && !got.is_empty() {
            break got;
        }
        assert!(Instant::now() < end, "the published port never reached the guest's listener");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(got, "from-the-guest\n");
    let _ = child.wait();

    // A denied connect is refused at once, not hung.
    net.set_policy(Policy { profile: Profile::Public, rules: vec![] }).unwrap();
    let started = Instant::now();
    let out = http_get(&ns, &bb, &format!("10.0.2.2 {port}"));
    let took = started.elapsed();
    assert!(!out.status.success(), "a denied connection succeeded");
    assert!(took < Duration::from_secs(1), "refusal took {took:?}");
    let denied = std::iter::from_fn(|| events.recv_timeout(common::DEADLINE).ok())
        .find(|e| matches!(e, NetEvent::Denied(r) if r.remote.port() == port))
        .expect("a Denied record for the refused connect");
    let NetEvent::Denied(record) = denied else { unreachable!() };
    assert_eq!(record.guest.ip(), std::net::IpAddr::from([10, 0, 2, 15]));
    net.stop();
}

/// The guest's link made ready from the host: address, prefix, MAC and
/// default route set inside the namespace without any process in it.
#[test]
fn a_configured_tap_has_its_address_and_default_route() {
    let ns = Netns::new();
    let link = alcove_net::device::LinkConfig {
        name: "eth0".into(),
        mtu: 1400,
        mac: [0x02, 0x61, 0x6c, 0x63, 0x00, 0x02],
        address_v4: "10.0.2.15".parse().unwrap(),
        prefix_v4: 24,
        gateway_v4: "10.0.2.1".parse().unwrap(),
    };
    let tap = TapDevice::create_configured_in_netns(Path::new(&format!("/run/netns/{}", ns.name)), &link).unwrap();
    let show = |args: &[&str]| {
        let out = Command::new("ip").args(["-n", &ns.name]).args(args).output().unwrap();
        assert!(out.status.success(), "ip {args:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let addr = show(&["-4", "addr", "show", "dev", "eth0"]);
    assert!(addr.contains("inet 10.0.2.15/24"), "{addr}");
    let link_line = show(&["link", "show", "dev", "eth0"]);
    assert!(link_line.contains("mtu 1400") && link_line.contains("02:61:6c:63:00:02"), "{link_line}");
    let routes = show(&["-4", "route"]);
    assert!(routes.contains("default via 10.0.2.1 dev eth0"), "{routes}");
    let (fd, name) = tap.into_parts();
    assert_eq!(name, "eth0");
    drop(TapDevice::from_fd(fd, name));
}
