//! The engine's configuration: the guest's address plan, upstream resolvers
//! and bounds.
//!
//! Default address plan (IPv4 10.0.2.0/24, IPv6 fd61:6c63:6f76:6500::/64,
//! "alcove" in hex):
//!
//! | role | IPv4 | IPv6 | MAC |
//! |---|---|---|---|
//! | gateway: answers ARP/NDP and ping, DNS resolver | 10.0.2.1 | fd61:6c63:6f76:6500::1 (and fe80::1) | 02:61:6c:63:00:01 |
//! | `host.alcove.internal`: the host's loopback (127.0.0.1 / ::1) | 10.0.2.2 | fd61:6c63:6f76:6500::2 | (the gateway's) |
//! | guest `eth0` | 10.0.2.15 | fd61:6c63:6f76:6500::15 | 02:61:6c:63:00:02 |
//!
//! The guest's default routes point at the gateway; `/etc/resolv.conf`
//! names the gateway.

use crate::policy::Policy;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

/// The name that resolves to the host's loopback through the engine.
pub const HOST_NAME: &str = "host.alcove.internal";

/// Addresses on the guest's link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressPlan {
    pub gateway_mac: [u8; 6],
    pub guest_mac: [u8; 6],
    pub gateway_v4: Ipv4Addr,
    pub host_v4: Ipv4Addr,
    pub guest_v4: Ipv4Addr,
    pub prefix_v4: u8,
    pub gateway_v6: Ipv6Addr,
    pub host_v6: Ipv6Addr,
    pub guest_v6: Ipv6Addr,
    pub prefix_v6: u8,
}

/// The gateway's IPv6 link-local address (NDP from the guest's link-local
/// address is answered from it).
pub const GATEWAY_LINK_LOCAL: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);

impl Default for AddressPlan {
    fn default() -> Self {
        let v6 = |last| Ipv6Addr::new(0xfd61, 0x6c63, 0x6f76, 0x6500, 0, 0, 0, last);
        AddressPlan {
            gateway_mac: [0x02, 0x61, 0x6c, 0x63, 0x00, 0x01],
            guest_mac: [0x02, 0x61, 0x6c, 0x63, 0x00, 0x02],
            gateway_v4: Ipv4Addr::new(10, 0, 2, 1),
            host_v4: Ipv4Addr::new(10, 0, 2, 2),
            guest_v4: Ipv4Addr::new(10, 0, 2, 15),
            prefix_v4: 24,
            gateway_v6: v6(1),
            host_v6: v6(2),
            guest_v6: v6(0x15),
            prefix_v6: 64,
        }
    }
}

impl AddressPlan {
    /// Whether `addr` is one of the engine's own addresses on the link.
    pub fn is_own(&self, addr: IpAddr) -> bool {
        match addr {
            IpAddr::V4(a) => a == self.gateway_v4 || a == self.host_v4,
            IpAddr::V6(a) => a == self.gateway_v6 || a == self.host_v6 || a == GATEWAY_LINK_LOCAL,
        }
    }

    /// Whether `addr` is the guest's own address (v4, v6 or a link-local one).
    pub fn is_guest(&self, addr: IpAddr) -> bool {
        match addr {
            IpAddr::V4(a) => a == self.guest_v4,
            IpAddr::V6(a) => a == self.guest_v6 || (a.segments()[0] & 0xffc0) == 0xfe80,
        }
    }

    /// Whether `addr` lies in the guest's link subnets.
    pub fn on_link(&self, addr: IpAddr) -> bool {
        match addr {
            IpAddr::V4(a) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix_v4)).unwrap_or(0);
                u32::from(a) & mask == u32::from(self.gateway_v4) & mask
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix_v6)).unwrap_or(0);
                u128::from(a) & mask == u128::from(self.gateway_v6) & mask
            }
        }
    }

    /// The host address a guest-side destination stands for: the host
    /// address maps to the host's loopback, every other address is itself.
    pub fn host_side(&self, addr: IpAddr) -> IpAddr {
        match addr {
            IpAddr::V4(a) if a == self.host_v4 => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(a) if a == self.host_v6 => IpAddr::V6(Ipv6Addr::LOCALHOST),
            IpAddr::V6(a) => match a.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => addr,
            },
            other => other,
        }
    }
}

/// Bounds on what one guest may use. Exceeding one refuses the new flow
/// (RST, ICMP unreachable, SERVFAIL) and is recorded; existing flows go on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// TCP connections, including those still dialling.
    pub max_tcp_flows: usize,
    /// UDP sessions (one host socket each).
    pub max_udp_flows: usize,
    /// ICMP echo sessions (one host socket each).
    pub max_icmp_flows: usize,
    /// DNS queries waiting for an upstream answer.
    pub max_dns_in_flight: usize,
    /// Receive and send buffer of each TCP connection, each direction.
    pub tcp_buffer: usize,
    /// All TCP buffers of the sandbox together.
    pub max_buffered_bytes: usize,
    /// A UDP or ICMP session with no packet for this long is closed.
    pub udp_idle: Duration,
    /// A host-side TCP dial that takes longer is answered with RST.
    pub connect_timeout: Duration,
    /// An upstream DNS query unanswered for this long is answered SERVFAIL.
    pub dns_timeout: Duration,
    /// Bytes per second through TCP and UDP proxies, each direction; `None`
    /// for no limit.
    pub rate_limit: Option<u64>,
    /// Events buffered for the consumer before new ones are counted as
    /// dropped.
    pub event_queue: usize,
    /// Frames buffered towards a device that cannot take them.
    pub max_queued_frames: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_tcp_flows: 1024,
            max_udp_flows: 256,
            max_icmp_flows: 64,
            max_dns_in_flight: 256,
            tcp_buffer: 128 * 1024,
            max_buffered_bytes: 256 * 1024 * 1024,
            udp_idle: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(20),
            dns_timeout: Duration::from_secs(5),
            rate_limit: None,
            event_queue: 4096,
            max_queued_frames: 4096,
        }
    }
}

/// Everything the engine needs to start.
#[derive(Debug, Clone)]
pub struct NetConfig {
    pub plan: AddressPlan,
    pub policy: Policy,
    /// Resolvers DNS queries are forwarded to (the host's, or `--dns`).
    pub dns_upstreams: Vec<SocketAddr>,
    /// Whether the host can reach IPv6 destinations; when false, AAAA
    /// answers are withheld so guests fall back to IPv4 at once.
    pub ipv6_egress: bool,
    pub limits: Limits,
    /// The link MTU (the guest's `eth0` must use the same).
    pub mtu: usize,
}

impl Default for NetConfig {
    fn default() -> Self {
        NetConfig {
            plan: AddressPlan::default(),
            policy: Policy::default(),
            dns_upstreams: Vec::new(),
            ipv6_egress: false,
            limits: Limits::default(),
            mtu: 1500,
        }
    }
}

/// Whether the host has a route to the IPv6 internet. Connecting a UDP
/// socket only looks the route up; nothing is sent.
pub fn host_has_ipv6_egress() -> bool {
    let probe = SocketAddr::new(IpAddr::V6(Ipv6Addr::new(0x2001, 0x4860, 0, 0, 0, 0, 0, 0x8888)), 53);
    std::net::UdpSocket::bind("[::]:0").and_then(|s| s.connect(probe)).is_ok()
}

/// The `nameserver` lines of a resolv.conf, as socket addresses on port 53.
pub fn resolvers_from_resolv_conf(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next() == Some("nameserver")).then_some(())?;
            let addr = words.next()?.split('%').next()?.parse::<IpAddr>().ok()?;
            Some(SocketAddr::new(addr, 53))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_maps_the_host_address_to_loopback() {
        let plan = AddressPlan::default();
        assert_eq!(plan.host_side("10.0.2.2".parse().unwrap()), "127.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(plan.host_side("fd61:6c63:6f76:6500::2".parse().unwrap()), "::1".parse::<IpAddr>().unwrap());
        assert_eq!(plan.host_side("::ffff:1.2.3.4".parse().unwrap()), "1.2.3.4".parse::<IpAddr>().unwrap());
        assert_eq!(plan.host_side("1.2.3.4".parse().unwrap()), "1.2.3.4".parse::<IpAddr>().unwrap());
        assert!(plan.on_link("10.0.2.200".parse().unwrap()));
        assert!(!plan.on_link("10.0.3.1".parse().unwrap()));
        assert!(plan.on_link("fd61:6c63:6f76:6500::99".parse().unwrap()));
    }

    #[test]
    fn resolv_conf_nameservers() {
        let text = "# c\nnameserver 127.0.0.53\nsearch x\nnameserver fe80::1%eth0\nnameserver bogus\n";
        let got = resolvers_from_resolv_conf(text);
        assert_eq!(got, vec!["127.0.0.53:53".parse().unwrap(), "[fe80::1]:53".parse().unwrap()]);
    }
}
