//! A microVM's network link, configured by the agent from its start-up
//! configuration ([`VmNetwork`]) before it serves any request.
//!
//! Invariants:
//! - Runs only when the configuration asks: in a microVM with a network
//!   (`VmBoot::network`). A jail's link is configured by the host before
//!   the agent starts, and a jail's configuration has no `vm` section.
//! - Every value is checked before the first change ([`check`]): a bad
//!   configuration is one clear error and leaves the interfaces untouched.
//! - Order: loopback up, then the MTU (before the link is up, as the
//!   driver sizes its buffers by it), the link up, the IPv4 address and
//!   its default route, then IPv6 if given. Any failing step is fatal to
//!   the boot: a sandbox asked for a network must not run without it.
//! - Acts on the calling thread's network namespace and nothing else (the
//!   test runs it inside a namespace it made).

use alcove_link::LinkError;
use alcove_protocol::agent_config::VmNetwork;

/// The loopback interface.
pub const LOOPBACK: &str = "lo";

/// Checks every value of `net` without changing anything.
pub fn check(net: &VmNetwork) -> Result<(), LinkError> {
    alcove_link::check_name(&net.interface)?;
    alcove_link::check_mtu(net.mtu)?;
    alcove_link::check_ipv4(net.address_v4, net.prefix_v4, net.gateway_v4)?;
    alcove_link::check_ipv6(net.address_v6, net.prefix_v6, net.gateway_v6)
}

/// Configures loopback and `net.interface` in this thread's namespace.
pub fn configure(net: &VmNetwork) -> Result<(), LinkError> {
    check(net)?;
    alcove_link::set_up(LOOPBACK)?;
    let name = net.interface.as_str();
    alcove_link::set_mtu(name, net.mtu)?;
    alcove_link::set_up(name)?;
    alcove_link::set_ipv4(name, net.address_v4, net.prefix_v4)?;
    alcove_link::add_default_route_v4(name, net.gateway_v4)?;
    if let Some(address) = net.address_v6 {
        // Best effort: without duplicate address detection the address is
        // usable at once rather than after about a second (the engine is
        // the only other host on the link).
        let dad = format!("/proc/sys/net/ipv6/conf/{name}/accept_dad");
        let _ = std::fs::write(dad, "0");
        alcove_link::add_ipv6(name, address, net.prefix_v6)?;
        if let Some(gateway) = net.gateway_v6 {
            alcove_link::add_default_route_v6(name, gateway)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn good() -> VmNetwork {
        VmNetwork {
            interface: "eth0".into(),
            mtu: 1500,
            address_v4: Ipv4Addr::new(10, 0, 2, 15),
            prefix_v4: 24,
            gateway_v4: Ipv4Addr::new(10, 0, 2, 2),
            address_v6: None,
            prefix_v6: 64,
            gateway_v6: None,
        }
    }

    #[test]
    fn bad_configurations_are_one_clear_line() {
        assert!(check(&good()).is_ok());
        let cases: Vec<(VmNetwork, &str)> = vec![
            (VmNetwork { prefix_v4: 33, ..good() }, "IPv4 prefix length 33 is longer than 32"),
            (VmNetwork { mtu: 0, ..good() }, "MTU 0 is outside"),
            (VmNetwork { interface: "".into(), ..good() }, "interface name \"\" is not valid"),
            (VmNetwork { interface: "much-too-long-name".into(), ..good() }, "is not valid"),
            (VmNetwork { address_v4: Ipv4Addr::UNSPECIFIED, ..good() }, "0.0.0.0 is not a usable IPv4 address"),
            (VmNetwork { gateway_v4: Ipv4Addr::new(192, 168, 1, 1), ..good() }, "the gateway 192.168.1.1 is not"),
            (VmNetwork { gateway_v4: Ipv4Addr::new(10, 0, 2, 15), ..good() }, "the gateway 10.0.2.15 is not"),
            (
                VmNetwork { address_v6: Some("fd00::2".parse().unwrap()), prefix_v6: 129, ..good() },
                "IPv6 prefix length 129",
            ),
            (VmNetwork { gateway_v6: Some("fd00::1".parse().unwrap()), ..good() }, "without an IPv6 address"),
        ];
        for (net, want) in cases {
            let e = configure(&net).expect_err(want).to_string();
            assert!(e.contains(want) && !e.contains('\n'), "{want}: {e}");
        }
    }
}
