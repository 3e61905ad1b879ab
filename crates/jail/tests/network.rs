//! The jail's name files and network link (root required): every jail gets
//! /etc/hosts and /etc/hostname (and /etc/resolv.conf when networked)
//! without the base rootfs changing and without a guest's own edit being
//! overwritten; a networked jail has `eth0` configured before PID 1 runs,
//! and the host holds the TAP's descriptor.

use alcove_backend::{GuestExit, GuestNetwork, GuestSpec, NetworkDevice};
use alcove_jail::{Jail, JailBackend, JailOptions};
use std::io::Read;

mod common;

use common::Fixture;

fn run(spec: &GuestSpec, script: &str) -> (GuestExit, String, Option<NetworkDevice>) {
    let jail = JailBackend::new(JailOptions {
        init_argv: Some(vec!["sh".into(), "-c".into(), script.into()]),
        ..JailOptions::default()
    })
    .spawn(spec)
    .expect("jail starts");
    let Jail { mut agent_channel, runner, control: _control, network_device } = jail;
    let reader = std::thread::spawn(move || {
        let mut out = String::new();
        let _ = agent_channel.read_to_string(&mut out);
        out
    });
    let exit = runner.wait();
    (exit, reader.join().expect("reader"), network_device)
}

fn link() -> GuestNetwork {
    GuestNetwork {
        interface: "eth0".into(),
        mac: [0x02, 0x61, 0x6c, 0x63, 0x00, 0x02],
        mtu: 1500,
        address_v4: "10.0.2.15".parse().unwrap(),
        prefix_v4: 24,
        gateway_v4: "10.0.2.1".parse().unwrap(),
        address_v6: None,
        prefix_v6: 64,
        gateway_v6: None,
        host_alias_v4: "10.0.2.2".parse().unwrap(),
    }
}

const SHOW: &str = r#"
    echo "--hosts" >&3; cat /etc/hosts >&3
    echo "--hostname" >&3; cat /etc/hostname >&3
    echo "--resolv" >&3; cat /etc/resolv.conf >&3 2>/dev/null
    echo "--net" >&3; ls /sys/class/net >&3
    echo "--end" >&3
"#;

fn section<'a>(out: &'a str, name: &str) -> &'a str {
    let start = out.find(&format!("--{name}\n")).unwrap_or_else(|| panic!("no {name} in {out}")) + name.len() + 3;
    let len = out[start..].find("\n--").map_or(out.len() - start, |i| i + 1);
    &out[start..start + len]
}

#[test]
fn a_jail_without_network_gets_hosts_and_hostname_and_only_loopback() {
    let fx = Fixture::new();
    let (exit, out, device) = run(&fx.spec("names-only"), SHOW);
    assert_eq!(exit.code, Some(0), "{out}\n{}", fx.guest_log());
    let hosts = section(&out, "hosts");
    assert!(hosts.lines().any(|l| l.split_whitespace().eq(["127.0.0.1", "localhost"])), "{hosts}");
    assert!(hosts.lines().any(|l| l.starts_with("::1") && l.split_whitespace().any(|w| w == "localhost")), "{hosts}");
    assert!(hosts.lines().any(|l| l.split_whitespace().skip(1).any(|w| w == "names-only")), "{hosts}");
    assert!(!hosts.contains("host.alcove.internal"), "{hosts}");
    assert_eq!(section(&out, "hostname"), "names-only\n");
    assert_eq!(section(&out, "net").trim(), "lo");
    assert!(device.is_none());
    // The base rootfs has none of them.
    for f in ["etc/hosts", "etc/hostname", "etc/resolv.conf"] {
        assert!(!fx.rootfs().join(f).exists(), "{f} was written into the base rootfs");
    }
}

#[test]
fn a_guests_own_edit_of_hosts_survives_a_restart() {
    let fx = Fixture::new();
    let spec = fx.spec("kept-edit");
    let (exit, out, _) = run(&spec, "echo '192.0.2.7 mine.example' >> /etc/hosts && echo ok >&3");
    assert_eq!((exit.code, out.as_str()), (Some(0), "ok\n"), "{}", fx.guest_log());
    let (exit, out, _) = run(&spec, SHOW);
    assert_eq!(exit.code, Some(0), "{out}");
    let hosts = section(&out, "hosts");
    assert!(hosts.contains("192.0.2.7 mine.example"), "the guest's edit was overwritten:\n{hosts}");
    assert!(hosts.contains("localhost"), "{hosts}");
}

#[test]
fn a_base_rootfs_file_is_replaced_in_the_guest_only() {
    let fx = Fixture::new();
    std::fs::write(fx.rootfs().join("etc/hosts"), "10.9.9.9 stale-build-host\n").unwrap();
    let (exit, out, _) = run(&fx.spec("base-hosts"), SHOW);
    assert_eq!(exit.code, Some(0), "{out}");
    assert!(!section(&out, "hosts").contains("stale-build-host"), "{out}");
    assert_eq!(std::fs::read_to_string(fx.rootfs().join("etc/hosts")).unwrap(), "10.9.9.9 stale-build-host\n");
}

#[test]
fn a_networked_jail_has_eth0_configured_before_pid1_runs() {
    let fx = Fixture::new();
    let spec = GuestSpec { network: Some(link()), ..fx.spec("linked") };
    let script = format!(
        "{SHOW}\n echo \"addr=$(ip -4 addr show dev eth0 | grep -o 'inet [0-9./]*')\" >&3
        echo \"route=$(ip -4 route | grep default)\" >&3
        echo \"mtu=$(cat /sys/class/net/eth0/mtu)\" >&3"
    );
    let (exit, out, device) = run(&spec, &script);
    assert_eq!(exit.code, Some(0), "{out}\n{}", fx.guest_log());
    let hosts = section(&out, "hosts");
    assert!(hosts.lines().any(|l| l.split_whitespace().eq(["10.0.2.2", "host.alcove.internal"])), "{hosts}");
    assert!(hosts.lines().any(|l| l.split_whitespace().eq(["10.0.2.15", "linked"])), "{hosts}");
    assert_eq!(section(&out, "resolv").trim(), "nameserver 10.0.2.1");
    let mut ifaces: Vec<&str> = section(&out, "net").split_whitespace().collect();
    ifaces.sort();
    assert_eq!(ifaces, ["eth0", "lo"]);
    assert!(out.contains("addr=inet 10.0.2.15/24"), "{out}");
    assert!(out.contains("route=default via 10.0.2.1 dev eth0"), "{out}");
    assert!(out.contains("mtu=1500"), "{out}");
    match device {
        Some(NetworkDevice::Tap { name, .. }) => assert_eq!(name, "eth0"),
        other => panic!("no TAP descriptor handed to the host: {other:?}"),
    }
}
