//! Configuring a network interface of the calling thread's network
//! namespace through the classic interface ioctls — what `ip link set`,
//! `ip addr add` and `ip route add default` do, without netlink.
//!
//! Two users: the host side of a jail (its TAP `eth0`, configured from a
//! helper thread that entered the jail's namespace, see
//! `alcove_net::device::TapDevice::create_configured_in_netns`) and the
//! guest agent inside a microVM (its virtio-net `eth0`, configured before
//! any command runs). The agent is a static binary copied into every
//! sandbox, so this crate depends on `libc` alone.
//!
//! Invariants:
//! - Nothing here changes namespace: every call acts on the namespace of
//!   the calling thread.
//! - Every input is checked before the first system call (interface name,
//!   prefix lengths, MTU): a bad value is an [`LinkError::Invalid`] naming
//!   it, and nothing has been changed.
//! - A failing call is an [`LinkError::Call`] naming the step and the
//!   interface, with the OS error.

use std::fmt;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// Smallest MTU an IPv4 link may have (RFC 791).
pub const MIN_MTU: u32 = 68;
/// Largest MTU the kernel accepts on any link.
pub const MAX_MTU: u32 = 65535;

/// Why an interface could not be configured.
#[derive(Debug)]
pub enum LinkError {
    /// A value asked for cannot be configured; nothing was changed.
    Invalid(String),
    /// A system call failed.
    Call {
        /// The step (e.g. "set the MTU of").
        step: &'static str,
        /// The interface.
        interface: String,
        /// The OS error.
        source: io::Error,
    },
}

impl fmt::Display for LinkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LinkError::Invalid(what) => f.write_str(what),
            LinkError::Call { step, interface, source } => write!(f, "cannot {step} {interface}: {source}"),
        }
    }
}

impl std::error::Error for LinkError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            LinkError::Invalid(_) => None,
            LinkError::Call { source, .. } => Some(source),
        }
    }
}

impl From<LinkError> for io::Error {
    fn from(e: LinkError) -> io::Error {
        match e {
            LinkError::Invalid(what) => io::Error::new(io::ErrorKind::InvalidInput, what),
            LinkError::Call { ref source, .. } => io::Error::new(source.kind(), e.to_string()),
        }
    }
}

/// The guest's side of a jail's TAP link, set by the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkConfig {
    /// Interface name in the guest's namespace.
    pub name: String,
    /// The link MTU (set when the TAP is created).
    pub mtu: u32,
    /// The guest's MAC address.
    pub mac: [u8; 6],
    /// The guest's IPv4 address.
    pub address_v4: Ipv4Addr,
    /// Its prefix length.
    pub prefix_v4: u8,
    /// The default gateway.
    pub gateway_v4: Ipv4Addr,
}

/// A checked interface name (1 to 15 bytes, no NUL, no `/`).
#[derive(Debug, Clone, Copy)]
struct Name<'a>(&'a str);

fn name(text: &str) -> Result<Name<'_>, LinkError> {
    let bytes = text.as_bytes();
    if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ || bytes.contains(&0) || bytes.contains(&b'/') {
        return Err(LinkError::Invalid(format!(
            "interface name {text:?} is not valid (1 to {} bytes, no '/' or NUL)",
            libc::IFNAMSIZ - 1
        )));
    }
    Ok(Name(text))
}

/// Checks an interface name without configuring anything.
pub fn check_name(text: &str) -> Result<(), LinkError> {
    name(text).map(|_| ())
}

/// Checks an MTU without configuring anything.
pub fn check_mtu(mtu: u32) -> Result<(), LinkError> {
    if !(MIN_MTU..=MAX_MTU).contains(&mtu) {
        return Err(LinkError::Invalid(format!("MTU {mtu} is outside {MIN_MTU}..={MAX_MTU}")));
    }
    Ok(())
}

/// Checks an IPv4 prefix length without configuring anything.
pub fn check_prefix_v4(prefix: u8) -> Result<(), LinkError> {
    if prefix > 32 {
        return Err(LinkError::Invalid(format!("IPv4 prefix length {prefix} is longer than 32")));
    }
    Ok(())
}

/// Checks an IPv6 prefix length without configuring anything.
pub fn check_prefix_v6(prefix: u8) -> Result<(), LinkError> {
    if prefix > 128 {
        return Err(LinkError::Invalid(format!("IPv6 prefix length {prefix} is longer than 128")));
    }
    Ok(())
}

/// Checks an IPv4 address, its prefix length and the default gateway: a
/// usable unicast address, a prefix of at most 32 and a gateway that is
/// another address inside the prefix (the route needs it on-link).
pub fn check_ipv4(address: Ipv4Addr, prefix: u8, gateway: Ipv4Addr) -> Result<(), LinkError> {
    check_prefix_v4(prefix)?;
    if address.is_unspecified() || address.is_broadcast() || address.is_multicast() {
        return Err(LinkError::Invalid(format!("{address} is not a usable IPv4 address")));
    }
    let mask = u32::from(netmask(prefix));
    if u32::from(address) & mask != u32::from(gateway) & mask || gateway == address {
        return Err(LinkError::Invalid(format!("the gateway {gateway} is not another address of {address}/{prefix}")));
    }
    Ok(())
}

/// Checks the optional IPv6 side: a prefix of at most 128 with an
/// address, and no gateway without an address.
pub fn check_ipv6(address: Option<Ipv6Addr>, prefix: u8, gateway: Option<Ipv6Addr>) -> Result<(), LinkError> {
    match (address, gateway) {
        (Some(_), _) => check_prefix_v6(prefix),
        (None, Some(gw)) => Err(LinkError::Invalid(format!("an IPv6 gateway {gw} without an IPv6 address"))),
        (None, None) => Ok(()),
    }
}

/// `struct ifreq`: the name and a 24-byte union.
#[repr(C)]
struct IfReq {
    name: [libc::c_char; libc::IFNAMSIZ],
    data: [u8; 24],
}

const _: () = assert!(std::mem::size_of::<IfReq>() == 40);

impl IfReq {
    fn new(name: Name<'_>) -> IfReq {
        let mut req = IfReq { name: [0; libc::IFNAMSIZ], data: [0; 24] };
        for (dst, src) in req.name.iter_mut().zip(name.0.as_bytes()) {
            *dst = *src as libc::c_char;
        }
        req
    }

    fn with_sockaddr(name: Name<'_>, addr: libc::sockaddr) -> IfReq {
        let mut req = IfReq::new(name);
        // SAFETY: sockaddr is 16 bytes of plain data, within the 24-byte union.
        let bytes: [u8; 16] = unsafe { std::mem::transmute::<libc::sockaddr, [u8; 16]>(addr) };
        req.data[..16].copy_from_slice(&bytes);
        req
    }
}

/// `struct rtentry` of <net/route.h>.
#[repr(C)]
struct RtEntry {
    rt_pad1: libc::c_ulong,
    rt_dst: libc::sockaddr,
    rt_gateway: libc::sockaddr,
    rt_genmask: libc::sockaddr,
    rt_flags: libc::c_ushort,
    rt_pad2: libc::c_short,
    rt_pad3: libc::c_ulong,
    rt_pad4: *mut libc::c_void,
    rt_metric: libc::c_short,
    rt_dev: *mut libc::c_char,
    rt_mtu: libc::c_ulong,
    rt_window: libc::c_ulong,
    rt_irtt: libc::c_ushort,
}

const RTF_UP: libc::c_ushort = 0x0001;
const RTF_GATEWAY: libc::c_ushort = 0x0002;
const ARPHRD_ETHER: libc::sa_family_t = 1;

fn sockaddr_v4(addr: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr { s_addr: u32::from(addr).to_be() },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr are both 16 bytes of plain data.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

/// The netmask of an IPv4 prefix length (at most 32).
pub fn netmask(prefix: u8) -> Ipv4Addr {
    Ipv4Addr::from(u32::MAX.checked_shl(32 - u32::from(prefix.min(32))).unwrap_or(0))
}

fn socket(family: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: plain socket creation.
    let raw = unsafe { libc::socket(family, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: socket succeeded; the descriptor is ours.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

fn ioctl<T>(fd: &OwnedFd, request: libc::Ioctl, arg: &mut T) -> io::Result<()> {
    // SAFETY: `arg` is a live, correctly laid out argument for `request`.
    if unsafe { libc::ioctl(fd.as_raw_fd(), request, arg as *mut T) } < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Runs one step on a fresh socket of `family`, naming it on failure.
fn step<T>(
    family: libc::c_int,
    what: &'static str,
    name: Name<'_>,
    request: libc::Ioctl,
    arg: &mut T,
) -> Result<(), LinkError> {
    let call = |source| LinkError::Call { step: what, interface: name.0.to_string(), source };
    let sock = socket(family).map_err(call)?;
    ioctl(&sock, request, arg).map_err(call)
}

/// Sets the MTU of `interface`.
pub fn set_mtu(interface: &str, mtu: u32) -> Result<(), LinkError> {
    let n = name(interface)?;
    check_mtu(mtu)?;
    let mut req = IfReq::new(n);
    req.data[..4].copy_from_slice(&(mtu as libc::c_int).to_ne_bytes());
    step(libc::AF_INET, "set the MTU of", n, libc::SIOCSIFMTU as libc::Ioctl, &mut req)
}

/// Brings `interface` up (keeping its other flags).
pub fn set_up(interface: &str) -> Result<(), LinkError> {
    let n = name(interface)?;
    let mut req = IfReq::new(n);
    step(libc::AF_INET, "read the flags of", n, libc::SIOCGIFFLAGS as libc::Ioctl, &mut req)?;
    let flags = libc::c_short::from_ne_bytes([req.data[0], req.data[1]]) | libc::IFF_UP as libc::c_short;
    req.data[..2].copy_from_slice(&flags.to_ne_bytes());
    step(libc::AF_INET, "bring up", n, libc::SIOCSIFFLAGS as libc::Ioctl, &mut req)
}

/// Sets the MAC address of `interface`.
pub fn set_mac(interface: &str, mac: [u8; 6]) -> Result<(), LinkError> {
    let n = name(interface)?;
    // SAFETY: sockaddr is plain data.
    let mut hw: libc::sockaddr = unsafe { std::mem::zeroed() };
    hw.sa_family = ARPHRD_ETHER;
    for (dst, src) in hw.sa_data.iter_mut().zip(mac) {
        *dst = src as libc::c_char;
    }
    step(
        libc::AF_INET,
        "set the MAC address of",
        n,
        libc::SIOCSIFHWADDR as libc::Ioctl,
        &mut IfReq::with_sockaddr(n, hw),
    )
}

/// Sets the IPv4 address and prefix of `interface` (the kernel adds the
/// prefix's route once the link is up).
pub fn set_ipv4(interface: &str, address: Ipv4Addr, prefix: u8) -> Result<(), LinkError> {
    let n = name(interface)?;
    check_prefix_v4(prefix)?;
    let mut addr = IfReq::with_sockaddr(n, sockaddr_v4(address));
    step(libc::AF_INET, "set the IPv4 address of", n, libc::SIOCSIFADDR as libc::Ioctl, &mut addr)?;
    let mut mask = IfReq::with_sockaddr(n, sockaddr_v4(netmask(prefix)));
    step(libc::AF_INET, "set the IPv4 netmask of", n, libc::SIOCSIFNETMASK as libc::Ioctl, &mut mask)
}

/// Adds the IPv4 default route through `gateway` on `interface`, which
/// must be up with an address whose prefix holds the gateway.
pub fn add_default_route_v4(interface: &str, gateway: Ipv4Addr) -> Result<(), LinkError> {
    let n = name(interface)?;
    let mut dev = Vec::with_capacity(n.0.len() + 1);
    dev.extend_from_slice(n.0.as_bytes());
    dev.push(0);
    let mut route = RtEntry {
        rt_pad1: 0,
        rt_dst: sockaddr_v4(Ipv4Addr::UNSPECIFIED),
        rt_gateway: sockaddr_v4(gateway),
        rt_genmask: sockaddr_v4(Ipv4Addr::UNSPECIFIED),
        rt_flags: RTF_UP | RTF_GATEWAY,
        rt_pad2: 0,
        rt_pad3: 0,
        rt_pad4: std::ptr::null_mut(),
        rt_metric: 0,
        rt_dev: dev.as_mut_ptr().cast(),
        rt_mtu: 0,
        rt_window: 0,
        rt_irtt: 0,
    };
    step(libc::AF_INET, "add the IPv4 default route on", n, libc::SIOCADDRT as libc::Ioctl, &mut route)
}

fn index_of(n: Name<'_>) -> Result<libc::c_int, LinkError> {
    let mut req = IfReq::new(n);
    step(libc::AF_INET, "find the index of", n, libc::SIOCGIFINDEX as libc::Ioctl, &mut req)?;
    Ok(libc::c_int::from_ne_bytes([req.data[0], req.data[1], req.data[2], req.data[3]]))
}

/// `struct in6_rtmsg` of <linux/ipv6_route.h> (libc's has private fields).
#[repr(C)]
struct In6RtMsg {
    rtmsg_dst: libc::in6_addr,
    rtmsg_src: libc::in6_addr,
    rtmsg_gateway: libc::in6_addr,
    rtmsg_type: u32,
    rtmsg_dst_len: u16,
    rtmsg_src_len: u16,
    rtmsg_metric: u32,
    rtmsg_info: libc::c_ulong,
    rtmsg_flags: u32,
    rtmsg_ifindex: libc::c_int,
}

const _: () = assert!(std::mem::size_of::<In6RtMsg>() == 80);

fn in6(addr: Ipv6Addr) -> libc::in6_addr {
    libc::in6_addr { s6_addr: addr.octets() }
}

/// Adds an IPv6 address with its prefix to `interface`.
pub fn add_ipv6(interface: &str, address: Ipv6Addr, prefix: u8) -> Result<(), LinkError> {
    let n = name(interface)?;
    check_prefix_v6(prefix)?;
    let mut req =
        libc::in6_ifreq { ifr6_addr: in6(address), ifr6_prefixlen: u32::from(prefix), ifr6_ifindex: index_of(n)? };
    step(libc::AF_INET6, "add the IPv6 address to", n, libc::SIOCSIFADDR as libc::Ioctl, &mut req)
}

/// Adds the IPv6 default route through `gateway` on `interface`.
pub fn add_default_route_v6(interface: &str, gateway: Ipv6Addr) -> Result<(), LinkError> {
    let n = name(interface)?;
    let mut route = In6RtMsg {
        rtmsg_dst: in6(Ipv6Addr::UNSPECIFIED),
        rtmsg_src: in6(Ipv6Addr::UNSPECIFIED),
        rtmsg_gateway: in6(gateway),
        rtmsg_type: 0,
        rtmsg_dst_len: 0,
        rtmsg_src_len: 0,
        rtmsg_metric: 0,
        rtmsg_info: 0,
        rtmsg_flags: u32::from(RTF_UP | RTF_GATEWAY),
        rtmsg_ifindex: index_of(n)?,
    };
    step(libc::AF_INET6, "add the IPv6 default route on", n, libc::SIOCADDRT as libc::Ioctl, &mut route)
}

/// Sets the MAC address, IPv4 address and prefix of `config.name` and a
/// default route through the gateway, in this thread's namespace (a
/// jail's TAP, made with its MTU and brought up by its creator). The
/// interface must exist and be up (the route needs a live link).
pub fn configure_here(config: &LinkConfig) -> io::Result<()> {
    name(&config.name)?;
    check_prefix_v4(config.prefix_v4)?;
    // The MAC can only change while the link is down on some kernels;
    // a TAP accepts it up.
    set_mac(&config.name, config.mac)?;
    set_ipv4(&config.name, config.address_v4, config.prefix_v4)?;
    add_default_route_v4(&config.name, config.gateway_v4)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netmasks_from_prefixes() {
        assert_eq!(netmask(24), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(netmask(0), Ipv4Addr::UNSPECIFIED);
        assert_eq!(netmask(32), Ipv4Addr::BROADCAST);
    }

    #[test]
    fn bad_values_are_refused_before_any_call() {
        for bad in ["", "a-name-far-too-long", "eth/0", "e\0"] {
            let e = set_up(bad).expect_err(bad);
            assert!(matches!(e, LinkError::Invalid(_)), "{bad:?}: {e}");
        }
        let e = set_ipv4("eth0", Ipv4Addr::LOCALHOST, 33).expect_err("prefix 33");
        assert_eq!(e.to_string(), "IPv4 prefix length 33 is longer than 32");
        let e = add_ipv6("eth0", Ipv6Addr::LOCALHOST, 129).expect_err("prefix 129");
        assert_eq!(e.to_string(), "IPv6 prefix length 129 is longer than 128");
        assert_eq!(set_mtu("eth0", 67).expect_err("mtu").to_string(), "MTU 67 is outside 68..=65535");
        assert!(set_mtu("eth0", 65536).is_err());
    }

    #[test]
    fn a_missing_interface_names_the_step_and_the_interface() {
        let e = set_up("alcove-nosuch0").expect_err("no such interface");
        assert!(matches!(e, LinkError::Call { .. }), "{e}");
        assert!(e.to_string().starts_with("cannot read the flags of alcove-nosuch0: "), "{e}");
    }
}
