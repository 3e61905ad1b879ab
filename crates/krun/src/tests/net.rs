//! The network path of a microVM, to the boundary this host allows (no
//! guest boots on kvm_pvm): the plan has one virtio-net device with the
//! guest's MAC exactly when the spec has a network, the agent's config
//! carries the link it configures, the builder gets the engine's adapter,
//! and `launch` hands the engine's end back as `NetworkDevice::FramePair`.

use super::*;
use crate::plan::{NetPlan, MAX_VM_MTU};
use alcove_backend::{GuestNetwork, NetworkDevice};
use alcove_net::device::krun::{krun_backend, VNET_HDR_LEN};
use alcove_net::device::{FrameDevice, PairDevice};
use alcove_protocol::agent_config::VmNetwork;
use std::net::Ipv4Addr;

const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0xa1, 0xc0, 0x0e];

fn link() -> GuestNetwork {
    GuestNetwork {
        interface: "eth0".into(),
        mac: MAC,
        mtu: 1500,
        address_v4: Ipv4Addr::new(10, 0, 2, 15),
        prefix_v4: 24,
        gateway_v4: Ipv4Addr::new(10, 0, 2, 2),
        address_v6: None,
        prefix_v6: 64,
        gateway_v6: None,
        host_alias_v4: Ipv4Addr::new(10, 0, 2, 2),
    }
}

fn networked(f: &Fixture) -> GuestSpec {
    GuestSpec { network: Some(link()), ..f.spec() }
}

#[test]
fn a_networked_guest_gets_one_virtio_net_device_with_its_mac() {
    let f = Fixture::new();
    let plan = plan_of(&f, &f.config(), &networked(&f)).expect("plan");
    assert_eq!(plan.net, Some(NetPlan { mac: MAC }));
    // The agent configures eth0 from its config before any command runs.
    let vm = plan.agent_config.vm.as_ref().expect("vm");
    assert_eq!(
        vm.network,
        Some(VmNetwork {
            interface: "eth0".into(),
            mtu: 1500,
            address_v4: Ipv4Addr::new(10, 0, 2, 15),
            prefix_v4: 24,
            gateway_v4: Ipv4Addr::new(10, 0, 2, 2),
            address_v6: None,
            prefix_v6: 64,
            gateway_v6: None,
        })
    );
    // The guest's name files are those of a networked guest.
    let resolv = vm.name_files.iter().find(|n| n.path == "/etc/resolv.conf").expect("a resolv.conf");
    assert!(resolv.content.contains("nameserver 10.0.2.2"), "{resolv:?}");
    let hosts = vm.name_files.iter().find(|n| n.path == "/etc/hosts").expect("an /etc/hosts");
    assert!(hosts.content.contains("host.alcove.internal"), "{hosts:?}");

    let (backend, mut engine_end) = krun_backend().expect("frame pair");
    let (_h, g) = alcove_backend::console::channel().expect("pair");
    let mut rec = Recorder::default();
    apply(&plan, Box::new(port::AgentPort::new(g)), Some(Box::new(backend)), Box::new(|_| {}), &mut rec)
        .expect("apply");
    let nets: Vec<_> = rec.calls.iter().filter(|c| matches!(c, Call::Net(_))).collect();
    assert_eq!(nets, vec![&Call::Net(MAC)], "one device, the guest's MAC");
    // The backend the builder got is the one given: a frame the engine
    // sends comes out of it behind a zeroed virtio header.
    engine_end.send_frame(b"to the guest").expect("send");
    let mut buf = vec![0u8; 2048];
    let n = rec.nets[0].read_frame(&mut buf).expect("a frame");
    assert_eq!(&buf[VNET_HDR_LEN..n], b"to the guest");
}

#[test]
fn without_a_network_there_is_no_device_and_the_backend_must_match_the_plan() {
    let f = Fixture::new();
    let plan = plan_of(&f, &f.config(), &f.spec()).expect("plan");
    assert_eq!(plan.net, None);
    assert_eq!(plan.agent_config.vm.as_ref().expect("vm").network, None);
    let (_h, g) = alcove_backend::console::channel().expect("pair");
    let (backend, _engine_end) = krun_backend().expect("frame pair");
    let mut rec = Recorder::default();
    let err = apply(&plan, Box::new(port::AgentPort::new(g)), Some(Box::new(backend)), Box::new(|_| {}), &mut rec)
        .expect_err("a backend for a plan without a network");
    assert!(err.to_string().contains("without one"), "{err}");

    let with_net = plan_of(&f, &f.config(), &networked(&f)).expect("plan");
    let (_h, g) = alcove_backend::console::channel().expect("pair");
    let err = apply(&with_net, Box::new(port::AgentPort::new(g)), None, Box::new(|_| {}), &mut Recorder::default())
        .expect_err("a networked plan without a backend");
    assert!(err.to_string().contains("no backend"), "{err}");
}

#[test]
fn bad_network_settings_are_refused_before_anything_is_created() {
    let f = Fixture::new();
    let cases: Vec<(GuestNetwork, &str)> = vec![
        (GuestNetwork { mtu: 65520, ..link() }, "MTU 65520 is larger than a microVM's link carries (1500)"),
        (GuestNetwork { mtu: 20, ..link() }, "MTU 20 is outside"),
        (GuestNetwork { prefix_v4: 33, ..link() }, "IPv4 prefix length 33 is longer than 32"),
        (GuestNetwork { gateway_v4: Ipv4Addr::new(192, 168, 0, 1), ..link() }, "the gateway 192.168.0.1"),
        (GuestNetwork { interface: "eth0/x".into(), ..link() }, "interface name \"eth0/x\" is not valid"),
        (GuestNetwork { mac: [0x01, 0, 0, 0, 0, 1], ..link() }, "is not a unicast address"),
        (GuestNetwork { prefix_v6: 200, address_v6: Some("fd00::15".parse().unwrap()), ..link() }, "IPv6 prefix"),
    ];
    assert_eq!(MAX_VM_MTU, 1500);
    for (net, want) in cases {
        let spec = GuestSpec { network: Some(net), ..f.spec() };
        let err = plan_of(&f, &f.config(), &spec).expect_err(want);
        assert!(matches!(err, BackendError::InvalidConfig(_)), "{err}");
        let msg = err.to_string();
        assert!(msg.contains(want) && !msg.contains('\n'), "{want}: {msg}");
    }
    let mut config = f.config();
    config.libkrunfw = Some(fake_krunfw(f.dir.path()));
    let spec = GuestSpec { network: Some(GuestNetwork { mtu: 9000, ..link() }), ..f.spec() };
    let err = launch(config, &spec).err().expect("refused");
    assert!(err.to_string().contains("MTU 9000"), "{err}");
    assert!(!spec.sandbox_dir.exists(), "nothing may be written for a refused launch");
}

/// The socket type of a descriptor.
fn socket_type(fd: &std::os::fd::OwnedFd) -> libc::c_int {
    use std::os::fd::AsRawFd;
    let mut ty: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: a live descriptor and an int-sized option buffer.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_TYPE,
            (&mut ty as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    assert_eq!(rc, 0, "getsockopt: {}", std::io::Error::last_os_error());
    ty
}

#[test]
fn launch_hands_the_engines_end_of_the_link_back() {
    let f = Fixture::new();
    let mut config = f.config();
    config.libkrunfw = Some(fake_krunfw(f.dir.path()));
    let launched = launch(config.clone(), &networked(&f)).expect("launch");
    let Some(NetworkDevice::FramePair { fd }) = launched.network_device else {
        panic!("a networked microVM hands back its frame pair")
    };
    assert_eq!(socket_type(&fd), libc::SOCK_SEQPACKET);
    // Its peer is alive inside the built VM: a frame can be written.
    let mut engine_end = PairDevice::from_fd(fd);
    engine_end.send_frame(&[0u8; 60]).expect("the VM's end is open");
    let cfg = AgentConfig::from_json(&fs::read(f.p("sandboxes/box1/boot/.alcove/agent.json")).expect("config"))
        .expect("json");
    assert_eq!(cfg.vm.expect("vm").network.map(|n| (n.interface, n.mtu)), Some(("eth0".into(), 1500)));
    drop(launched.runner);

    let plain = launch(config, &f.spec()).expect("launch");
    assert!(plain.network_device.is_none(), "no link without a network");
}
