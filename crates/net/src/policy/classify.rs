//! Which kind of destination an address is: the groups that `--net` profiles
//! and `group` rules speak of.
//!
//! Invariants:
//! - Classification is a pure function of the address; it never resolves or
//!   connects.
//! - An IPv6 address that embeds an IPv4 one (IPv4-mapped `::ffff:0:0/96`,
//!   IPv4-compatible, NAT64 `64:ff9b::/96`, 6to4 `2002::/16`) is classified as
//!   the embedded IPv4 address, so no encoding reaches a private or metadata
//!   address under the public group.
//! - Metadata is checked before link-local and private, so
//!   169.254.169.254 is `Metadata`, never `LinkLocal`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The class of a destination address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AddrClass {
    /// Globally routable unicast.
    Public,
    /// RFC 1918, shared address space (100.64.0.0/10), unique local (fc00::/7).
    Private,
    /// 127.0.0.0/8 and ::1: the host's own loopback.
    Loopback,
    /// 169.254.0.0/16 and fe80::/10 (without the metadata addresses).
    LinkLocal,
    /// Cloud instance metadata and related endpoints (see [`METADATA_V4`]).
    Metadata,
    /// 224.0.0.0/4 and ff00::/8.
    Multicast,
    /// Anything else that is not globally routable: unspecified, broadcast,
    /// "this network", documentation, benchmarking, reserved ranges.
    Reserved,
}

impl AddrClass {
    /// The group name used in rules (`public`, `private`, ...).
    pub fn name(self) -> &'static str {
        match self {
            AddrClass::Public => "public",
            AddrClass::Private => "private",
            AddrClass::Loopback => "loopback",
            AddrClass::LinkLocal => "link-local",
            AddrClass::Metadata => "metadata",
            AddrClass::Multicast => "multicast",
            AddrClass::Reserved => "reserved",
        }
    }
}

/// IPv4 metadata endpoints: AWS/GCP/Azure/OCI/OpenStack IMDS (169.254.169.254),
/// AWS DNS and NTP (169.254.169.253, .123), ECS task metadata (169.254.170.2),
/// EKS pod identity (169.254.170.23), Alibaba (100.100.100.200), Azure
/// wireserver (168.63.129.16).
pub const METADATA_V4: &[Ipv4Addr] = &[
    Ipv4Addr::new(169, 254, 169, 254),
    Ipv4Addr::new(169, 254, 169, 253),
    Ipv4Addr::new(169, 254, 169, 123),
    Ipv4Addr::new(169, 254, 170, 2),
    Ipv4Addr::new(169, 254, 170, 23),
    Ipv4Addr::new(100, 100, 100, 200),
    Ipv4Addr::new(168, 63, 129, 16),
];

/// IPv6 metadata endpoints: AWS IMDS and EKS pod identity over IPv6.
pub const METADATA_V6: &[Ipv6Addr] =
    &[Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254), Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0023)];

/// The IPv4 address an IPv6 address stands for, if it embeds one.
pub fn embedded_v4(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = v6.segments();
    let tail = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    if let Some(mapped) = v6.to_ipv4_mapped() {
        return Some(mapped);
    }
    // NAT64 well-known prefix 64:ff9b::/96 and the local-use 64:ff9b:1::/48.
    if s[0] == 0x64 && s[1] == 0xff9b {
        return Some(tail);
    }
    // 6to4: 2002:AABB:CCDD::/48 embeds AA.BB.CC.DD.
    if s[0] == 0x2002 {
        return Some(Ipv4Addr::new((s[1] >> 8) as u8, s[1] as u8, (s[2] >> 8) as u8, s[2] as u8));
    }
    // Deprecated IPv4-compatible ::a.b.c.d (but not :: and ::1).
    if s[..6].iter().all(|x| *x == 0) && u32::from(tail) > 1 {
        return Some(tail);
    }
    None
}

/// Classifies an address.
pub fn classify(addr: IpAddr) -> AddrClass {
    match addr {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => match embedded_v4(v6) {
            Some(v4) => classify_v4(v4),
            None => classify_v6(v6),
        },
    }
}

fn classify_v4(a: Ipv4Addr) -> AddrClass {
    let o = a.octets();
    if METADATA_V4.contains(&a) {
        return AddrClass::Metadata;
    }
    if a.is_loopback() {
        return AddrClass::Loopback;
    }
    if a.is_link_local() {
        return AddrClass::LinkLocal;
    }
    if a.is_multicast() {
        return AddrClass::Multicast;
    }
    // 100.64.0.0/10 (carrier-grade NAT) is private to its operator.
    if a.is_private() || (o[0] == 100 && (o[1] & 0xc0) == 64) {
        return AddrClass::Private;
    }
    let reserved = o[0] == 0                                  // "this network"
        || a.is_broadcast()
        || o[0] >= 240                                        // 240.0.0.0/4
        || (o[0] == 192 && o[1] == 0 && o[2] == 0)            // IETF protocol assignments
        || (o[0] == 192 && o[1] == 0 && o[2] == 2)            // TEST-NET-1
        || (o[0] == 198 && o[1] == 51 && o[2] == 100)         // TEST-NET-2
        || (o[0] == 203 && o[1] == 0 && o[2] == 113)          // TEST-NET-3
        || (o[0] == 198 && (o[1] & 0xfe) == 18)               // benchmarking
        || (o[0] == 192 && o[1] == 88 && o[2] == 99); // 6to4 relay anycast
    if reserved {
        AddrClass::Reserved
    } else {
        AddrClass::Public
    }
}

fn classify_v6(a: Ipv6Addr) -> AddrClass {
    let s = a.segments();
    if METADATA_V6.contains(&a) {
        return AddrClass::Metadata;
    }
    if a.is_loopback() {
        return AddrClass::Loopback;
    }
    if a.is_multicast() {
        return AddrClass::Multicast;
    }
    if (s[0] & 0xffc0) == 0xfe80 {
        return AddrClass::LinkLocal;
    }
    if (s[0] & 0xfe00) == 0xfc00 {
        return AddrClass::Private;
    }
    // Global unicast is 2000::/3; inside it documentation, Teredo, ORCHID
    // and benchmarking are not destinations.
    let global = (s[0] & 0xe000) == 0x2000;
    let special = (s[0] == 0x2001 && s[1] == 0x0db8)         // documentation
        || (s[0] == 0x3fff && (s[1] & 0xf000) == 0)            // documentation (RFC 9637)
        || (s[0] == 0x2001 && s[1] == 0)                       // Teredo
        || (s[0] == 0x2001 && s[1] == 0x0002 && s[2] == 0)     // benchmarking
        || (s[0] == 0x2001 && (s[1] & 0xfff0) == 0x0010)       // ORCHID
        || (s[0] == 0x2001 && (s[1] & 0xfff0) == 0x0020); // ORCHIDv2
    if global && !special {
        AddrClass::Public
    } else {
        AddrClass::Reserved
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(s: &str) -> AddrClass {
        classify(s.parse().unwrap())
    }

    #[test]
    fn ipv4_table() {
        let table = [
            ("1.1.1.1", AddrClass::Public),
            ("8.8.8.8", AddrClass::Public),
            ("10.1.2.3", AddrClass::Private),
            ("172.16.0.1", AddrClass::Private),
            ("172.31.255.255", AddrClass::Private),
            ("172.32.0.1", AddrClass::Public),
            ("192.168.1.1", AddrClass::Private),
            ("100.64.0.1", AddrClass::Private),
            ("100.127.255.254", AddrClass::Private),
            ("100.128.0.1", AddrClass::Public),
            ("127.0.0.1", AddrClass::Loopback),
            ("127.255.0.9", AddrClass::Loopback),
            ("169.254.1.1", AddrClass::LinkLocal),
            ("169.254.169.254", AddrClass::Metadata),
            ("169.254.170.2", AddrClass::Metadata),
            ("100.100.100.200", AddrClass::Metadata),
            ("168.63.129.16", AddrClass::Metadata),
            ("224.0.0.251", AddrClass::Multicast),
            ("239.255.255.250", AddrClass::Multicast),
            ("0.0.0.0", AddrClass::Reserved),
            ("0.1.2.3", AddrClass::Reserved),
            ("255.255.255.255", AddrClass::Reserved),
            ("240.0.0.1", AddrClass::Reserved),
            ("192.0.2.1", AddrClass::Reserved),
            ("198.18.0.1", AddrClass::Reserved),
        ];
        for (addr, want) in table {
            assert_eq!(class(addr), want, "{addr}");
        }
    }

    #[test]
    fn ipv6_table() {
        let table = [
            ("2606:4700:4700::1111", AddrClass::Public),
            ("::1", AddrClass::Loopback),
            ("::", AddrClass::Reserved),
            ("fe80::1", AddrClass::LinkLocal),
            ("fd12:3456::1", AddrClass::Private),
            ("fc00::1", AddrClass::Private),
            ("ff02::1", AddrClass::Multicast),
            ("fd00:ec2::254", AddrClass::Metadata),
            ("2001:db8::1", AddrClass::Reserved),
            ("2001::1", AddrClass::Reserved),
            ("4000::1", AddrClass::Reserved),
        ];
        for (addr, want) in table {
            assert_eq!(class(addr), want, "{addr}");
        }
    }

    #[test]
    fn embedded_ipv4_cannot_hide_a_private_or_metadata_address() {
        let table = [
            ("::ffff:127.0.0.1", AddrClass::Loopback),
            ("::ffff:10.0.0.1", AddrClass::Private),
            ("::ffff:169.254.169.254", AddrClass::Metadata),
            ("64:ff9b::a9fe:a9fe", AddrClass::Metadata),
            ("64:ff9b::10.0.0.1", AddrClass::Private),
            ("64:ff9b::1.1.1.1", AddrClass::Public),
            ("2002:c0a8:0101::1", AddrClass::Private),
            ("::10.0.0.1", AddrClass::Private),
        ];
        for (addr, want) in table {
            assert_eq!(class(addr), want, "{addr}");
        }
    }
}
