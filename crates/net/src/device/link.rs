//! Configuring the guest's side of a TAP link (address, prefix, default
//! route) through the classic interface ioctls of the calling thread's
//! network namespace — what `ip addr add` and `ip route add default` do,
//! without a guest process or `CAP_NET_ADMIN` inside the guest.
//!
//! Invariants:
//! - Runs on the thread that created the TAP inside the guest's namespace
//!   ([`super::TapDevice::create_configured_in_netns`]); nothing here
//!   changes namespace.
//! - IPv4 only: the engine answers IPv6 only where the host has IPv6
//!   egress, and a guest without an IPv6 address falls back to IPv4 at
//!   once (no DAD delay, no half-configured link).

use std::io;
use std::mem::size_of;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// The guest's side of the link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkConfig {
    /// Interface name in the guest's namespace.
    pub name: String,
    pub mtu: u32,
    pub mac: [u8; 6],
    pub address_v4: Ipv4Addr,
    pub prefix_v4: u8,
    pub gateway_v4: Ipv4Addr,
}

#[repr(C)]
struct IfReqAddr {
    name: [libc::c_char; libc::IFNAMSIZ],
    addr: libc::sockaddr,
    pad: [u8; 8],
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

fn netmask(prefix: u8) -> Ipv4Addr {
    Ipv4Addr::from(u32::MAX.checked_shl(32 - u32::from(prefix.min(32))).unwrap_or(0))
}

fn ifreq(name: &str, addr: libc::sockaddr) -> io::Result<IfReqAddr> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ || bytes.contains(&0) {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("interface name {name:?} is not valid")));
    }
    let mut req = IfReqAddr { name: [0; libc::IFNAMSIZ], addr, pad: [0; 8] };
    for (dst, src) in req.name.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    Ok(req)
}

fn ioctl<T>(fd: &OwnedFd, request: libc::Ioctl, arg: &mut T) -> io::Result<()> {
    // SAFETY: `arg` is a live, correctly laid out argument for `request`.
    if unsafe { libc::ioctl(fd.as_raw_fd(), request, arg as *mut T) } < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Sets the MAC address, IPv4 address and prefix of `config.name` and a
/// default route through the gateway, in this thread's namespace. The
/// interface must exist and be up (the route needs a live link).
pub fn configure_here(config: &LinkConfig) -> io::Result<()> {
    if config.prefix_v4 > 32 {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "IPv4 prefix longer than 32"));
    }
    // SAFETY: plain socket creation.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: socket succeeded; the descriptor is ours.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };

    // SAFETY: sockaddr is plain data.
    let mut hw: libc::sockaddr = unsafe { std::mem::zeroed() };
    hw.sa_family = ARPHRD_ETHER;
    for (dst, src) in hw.sa_data.iter_mut().zip(config.mac) {
        *dst = src as libc::c_char;
    }
    // The MAC can only change while the link is down on some kernels;
    // a TAP accepts it up.
    ioctl(&sock, libc::SIOCSIFHWADDR as libc::Ioctl, &mut ifreq(&config.name, hw)?)?;
    ioctl(&sock, libc::SIOCSIFADDR as libc::Ioctl, &mut ifreq(&config.name, sockaddr_v4(config.address_v4))?)?;
    let mask = sockaddr_v4(netmask(config.prefix_v4));
    ioctl(&sock, libc::SIOCSIFNETMASK as libc::Ioctl, &mut ifreq(&config.name, mask)?)?;

    let mut dev = std::ffi::CString::new(config.name.as_str())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "interface name has a NUL"))?
        .into_bytes_with_nul();
    let mut route = RtEntry {
        rt_pad1: 0,
        rt_dst: sockaddr_v4(Ipv4Addr::UNSPECIFIED),
        rt_gateway: sockaddr_v4(config.gateway_v4),
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
    const _: () = assert!(size_of::<IfReqAddr>() == 40);
    ioctl(&sock, libc::SIOCADDRT as libc::Ioctl, &mut route)
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
    fn bad_names_are_refused_before_any_call() {
        let any = sockaddr_v4(Ipv4Addr::LOCALHOST);
        assert!(ifreq("", any).is_err());
        assert!(ifreq("a-name-far-too-long", any).is_err());
    }
}
