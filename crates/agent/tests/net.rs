//! The agent's network step (`alcove_agent::net::configure`), for real: in
//! a network namespace the test makes, with a veth named `eth0` standing
//! in for a microVM's virtio-net, the step runs on a thread that entered
//! the namespace, and `ip` then reads the address, the routes, the MTU and
//! the links' state. A refused configuration changes nothing. Needs root.

use alcove_agent::net::configure;
use alcove_protocol::agent_config::VmNetwork;
use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::process::Command;

struct Netns {
    name: String,
}

impl Netns {
    fn new() -> Netns {
        alcove_testkit::require_root("network namespaces and veth devices");
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let ns = Netns { name: format!("alcove-agent-net-{}-{n}", std::process::id()) };
        ip(&["netns", "add", &ns.name]);
        ip(&["-n", &ns.name, "link", "add", "eth0", "type", "veth", "peer", "name", "peer0"]);
        ip(&["-n", &ns.name, "link", "set", "peer0", "up"]);
        ns
    }

    /// `ip -n NS ARGS`'s output.
    fn show(&self, args: &[&str]) -> String {
        let out = Command::new("ip").args(["-n", &self.name]).args(args).output().expect("ip runs");
        assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).expect("utf-8")
    }

    /// Runs the agent's step on a thread inside the namespace.
    fn configure(&self, net: &VmNetwork) -> Result<(), alcove_link::LinkError> {
        let ns = File::open(format!("/run/netns/{}", self.name)).expect("namespace file");
        std::thread::scope(|s| {
            s.spawn(|| {
                // SAFETY: setns on this scoped thread only; `ns` is an open namespace file.
                assert_eq!(unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) }, 0, "setns");
                configure(net)
            })
            .join()
            .expect("the configuring thread")
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

fn ip(args: &[&str]) {
    let st = Command::new("ip").args(args).status().expect("ip runs");
    assert!(st.success(), "ip {args:?} failed");
}

fn link() -> VmNetwork {
    VmNetwork {
        interface: "eth0".into(),
        // Not the veth's default, so the step visibly set it.
        mtu: 1400,
        address_v4: Ipv4Addr::new(10, 0, 2, 15),
        prefix_v4: 24,
        gateway_v4: Ipv4Addr::new(10, 0, 2, 2),
        address_v6: None,
        prefix_v6: 64,
        gateway_v6: None,
    }
}

fn is_up(ns: &Netns, dev: &str) -> bool {
    let line = ns.show(&["-o", "link", "show", "dev", dev]);
    let flags = line.split('<').nth(1).and_then(|r| r.split('>').next()).unwrap_or_default();
    flags.split(',').any(|f| f == "UP")
}

#[test]
fn the_agent_configures_eth0_and_loopback_in_its_namespace() {
    let ns = Netns::new();
    assert!(!is_up(&ns, "lo") && !is_up(&ns, "eth0"), "a new namespace starts with its links down");

    ns.configure(&link()).expect("configured");

    assert!(is_up(&ns, "lo"), "loopback is up");
    assert!(is_up(&ns, "eth0"), "eth0 is up");
    let eth0 = ns.show(&["link", "show", "dev", "eth0"]);
    assert!(eth0.contains(" mtu 1400 "), "{eth0}");
    let v4 = ns.show(&["-4", "-o", "addr", "show", "dev", "eth0"]);
    assert!(v4.contains("inet 10.0.2.15/24 "), "{v4}");
    let routes = ns.show(&["-4", "route", "show"]);
    assert!(routes.lines().any(|l| l.starts_with("default via 10.0.2.2 dev eth0")), "{routes}");
    assert!(routes.lines().any(|l| l.starts_with("10.0.2.0/24 dev eth0")), "{routes}");
    let lo = ns.show(&["-4", "-o", "addr", "show", "dev", "lo"]);
    assert!(lo.contains("inet 127.0.0.1/8"), "{lo}");
}

#[test]
fn ipv6_is_configured_when_the_config_has_it() {
    let ns = Netns::new();
    let net = VmNetwork {
        address_v6: Some("fd00:a1c0::15".parse().unwrap()),
        prefix_v6: 64,
        gateway_v6: Some("fd00:a1c0::2".parse().unwrap()),
        ..link()
    };
    ns.configure(&net).expect("configured");
    let v6 = ns.show(&["-6", "-o", "addr", "show", "dev", "eth0"]);
    assert!(v6.contains("inet6 fd00:a1c0::15/64 "), "{v6}");
    let routes = ns.show(&["-6", "route", "show"]);
    assert!(routes.lines().any(|l| l.starts_with("default via fd00:a1c0::2 dev eth0")), "{routes}");
    assert!(ns.show(&["-4", "-o", "addr", "show", "dev", "eth0"]).contains("inet 10.0.2.15/24 "));
}

#[test]
fn a_bad_configuration_is_one_clear_error_and_changes_nothing() {
    let ns = Netns::new();
    let cases = [
        (VmNetwork { prefix_v4: 33, ..link() }, "IPv4 prefix length 33 is longer than 32"),
        (VmNetwork { mtu: 40, ..link() }, "MTU 40 is outside 68..=65535"),
        (VmNetwork { gateway_v4: Ipv4Addr::new(10, 9, 9, 9), ..link() }, "the gateway 10.9.9.9 is not"),
    ];
    for (net, want) in cases {
        let e = ns.configure(&net).expect_err(want).to_string();
        assert!(e.contains(want) && !e.contains('\n'), "{want}: {e}");
    }
    // A device the namespace does not have: the failing step is named.
    let e = ns.configure(&VmNetwork { interface: "eth9".into(), ..link() }).expect_err("no eth9").to_string();
    assert!(e.starts_with("cannot set the MTU of eth9: "), "{e}");
    assert!(!is_up(&ns, "eth0"), "eth0 was left alone");
    assert_eq!(ns.show(&["-4", "-o", "addr", "show", "dev", "eth0"]), "", "no address was set");
    assert_eq!(ns.show(&["-4", "route", "show"]), "", "no route was added");
}
