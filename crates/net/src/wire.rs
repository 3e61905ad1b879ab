//! Guest frames: parsing what arrives and building the few frames the
//! engine writes itself (RST, ICMP errors, UDP datagrams, echo replies).
//! TCP segments of proxied connections are built by smoltcp.
//!
//! Invariants:
//! - Every frame from the guest is parsed with length and checksum checks
//!   (smoltcp's `new_checked` and `Repr::parse`); anything malformed is
//!   [`Parsed::Drop`], never a panic.
//! - Frames whose source is not the guest's address, IP fragments, IPv6
//!   extension headers, and frames not addressed to the gateway's MAC (or
//!   broadcast/multicast for ARP and NDP) are dropped.
//! - Only ARP and NDP for the engine's own addresses and ICMP echo to
//!   them reach smoltcp as [`Parsed::Stack`]; the rest is decided by the
//!   engine first.

use crate::config::AddressPlan;
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr,
    Icmpv4DstUnreachable, Icmpv4Packet, Icmpv4Repr, Icmpv6DstUnreachable, Icmpv6Packet, Icmpv6Repr, IpAddress,
    IpProtocol, Ipv4Packet, Ipv4Repr, Ipv6Packet, Ipv6Repr, NdiscRepr, TcpControl, TcpPacket, TcpRepr, TcpSeqNumber,
    UdpPacket, UdpRepr,
};
use std::net::{IpAddr, SocketAddr};

/// What the engine does with one guest frame.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Parsed<'a> {
    /// ARP/NDP for our addresses, echo to our addresses: smoltcp answers.
    Stack,
    Tcp(TcpSeg),
    Udp {
        src: SocketAddr,
        dst: SocketAddr,
        payload: &'a [u8],
    },
    Echo {
        src: IpAddr,
        dst: IpAddr,
        ident: u16,
        seq: u16,
        data: &'a [u8],
    },
    Drop(&'static str),
}

/// The parts of a guest TCP segment the engine looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TcpSeg {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub syn: bool,
    pub ack: bool,
    pub rst: bool,
    pub seq: u32,
    /// Sequence space the segment occupies (payload, SYN, FIN).
    pub seq_len: u32,
}

/// The IP header of a guest packet, kept to quote it in ICMP errors.
#[derive(Debug, Clone, Copy)]
pub(crate) enum IpHeader {
    V4(Ipv4Repr),
    V6(Ipv6Repr),
}

fn checksums() -> ChecksumCapabilities {
    ChecksumCapabilities::default()
}

/// Parses one frame from the guest.
pub(crate) fn parse<'a>(frame: &'a [u8], plan: &AddressPlan) -> Parsed<'a> {
    let Ok(eth) = EthernetFrame::new_checked(frame) else { return Parsed::Drop("short ethernet frame") };
    let dst_mac = eth.dst_addr();
    let to_gateway = dst_mac == EthernetAddress(plan.gateway_mac);
    if !to_gateway && !dst_mac.is_broadcast() && !dst_mac.is_multicast() {
        return Parsed::Drop("not for the gateway's MAC");
    }
    match eth.ethertype() {
        EthernetProtocol::Arp => parse_arp(eth.payload(), plan),
        EthernetProtocol::Ipv4 if to_gateway => parse_v4(eth.payload(), plan),
        EthernetProtocol::Ipv6 => parse_v6(eth.payload(), plan, to_gateway),
        _ => Parsed::Drop("ethertype"),
    }
}

fn parse_arp<'a>(payload: &[u8], plan: &AddressPlan) -> Parsed<'a> {
    let Ok(packet) = ArpPacket::new_checked(payload) else { return Parsed::Drop("short arp") };
    match ArpRepr::parse(&packet) {
        Ok(ArpRepr::EthernetIpv4 {
            operation: ArpOperation::Request | ArpOperation::Reply,
            target_protocol_addr,
            source_protocol_addr,
            ..
        }) if plan.is_own(IpAddr::V4(target_protocol_addr)) && source_protocol_addr == plan.guest_v4 => Parsed::Stack,
        _ => Parsed::Drop("arp not for us"),
    }
}

fn parse_v4<'a>(payload: &'a [u8], plan: &AddressPlan) -> Parsed<'a> {
    let Ok(packet) = Ipv4Packet::new_checked(payload) else { return Parsed::Drop("short ipv4") };
    if packet.more_frags() || packet.frag_offset() != 0 {
        return Parsed::Drop("ipv4 fragment");
    }
    let Ok(ip) = Ipv4Repr::parse(&packet, &checksums()) else { return Parsed::Drop("bad ipv4 header") };
    if ip.src_addr != plan.guest_v4 {
        return Parsed::Drop("ipv4 source is not the guest");
    }
    let src = IpAddr::V4(ip.src_addr);
    let dst = IpAddr::V4(ip.dst_addr);
    let body = &packet.payload()[..ip.payload_len.min(packet.payload().len())];
    match ip.next_header {
        IpProtocol::Tcp => parse_tcp(body, src, dst),
        IpProtocol::Udp => parse_udp(body, src, dst),
        IpProtocol::Icmp => {
            let Ok(icmp) = Icmpv4Packet::new_checked(body) else { return Parsed::Drop("short icmp") };
            match Icmpv4Repr::parse(&icmp, &checksums()) {
                Ok(Icmpv4Repr::EchoRequest { .. }) if plan.is_own(dst) => Parsed::Stack,
                Ok(Icmpv4Repr::EchoRequest { ident, seq_no, data }) => {
                    Parsed::Echo { src, dst, ident, seq: seq_no, data }
                }
                _ => Parsed::Drop("icmp type"),
            }
        }
        _ => Parsed::Drop("ipv4 protocol"),
    }
}

fn parse_v6<'a>(payload: &'a [u8], plan: &AddressPlan, to_gateway: bool) -> Parsed<'a> {
    let Ok(packet) = Ipv6Packet::new_checked(payload) else { return Parsed::Drop("short ipv6") };
    let Ok(ip) = Ipv6Repr::parse(&packet) else { return Parsed::Drop("bad ipv6 header") };
    let src = IpAddr::V6(ip.src_addr);
    let dst = IpAddr::V6(ip.dst_addr);
    if !plan.is_guest(src) {
        return Parsed::Drop("ipv6 source is not the guest");
    }
    let body = &packet.payload()[..ip.payload_len.min(packet.payload().len())];
    if ip.next_header == IpProtocol::Icmpv6 {
        let Ok(icmp) = Icmpv6Packet::new_checked(body) else { return Parsed::Drop("short icmpv6") };
        let caps = checksums();
        return match Icmpv6Repr::parse(&ip.src_addr, &ip.dst_addr, &icmp, &caps) {
            Ok(Icmpv6Repr::Ndisc(NdiscRepr::NeighborSolicit { target_addr, .. }))
                if plan.is_own(IpAddr::V6(target_addr)) =>
            {
                Parsed::Stack
            }
            Ok(Icmpv6Repr::Ndisc(NdiscRepr::NeighborAdvert { .. })) if to_gateway && plan.is_own(dst) => Parsed::Stack,
            Ok(Icmpv6Repr::EchoRequest { .. }) if to_gateway && plan.is_own(dst) => Parsed::Stack,
            Ok(Icmpv6Repr::EchoRequest { ident, seq_no, data }) if to_gateway => {
                Parsed::Echo { src, dst, ident, seq: seq_no, data }
            }
            _ => Parsed::Drop("icmpv6 type"),
        };
    }
    if !to_gateway || ip.src_addr != plan.guest_v6 {
        return Parsed::Drop("ipv6 traffic not from the guest's address to the gateway");
    }
    match ip.next_header {
        IpProtocol::Tcp => parse_tcp(body, src, dst),
        IpProtocol::Udp => parse_udp(body, src, dst),
        _ => Parsed::Drop("ipv6 next header"),
    }
}

fn parse_tcp<'a>(body: &'a [u8], src: IpAddr, dst: IpAddr) -> Parsed<'a> {
    let Ok(packet) = TcpPacket::new_checked(body) else { return Parsed::Drop("short tcp") };
    let Ok(tcp) = TcpRepr::parse(&packet, &IpAddress::from(src), &IpAddress::from(dst), &checksums()) else {
        return Parsed::Drop("bad tcp");
    };
    Parsed::Tcp(TcpSeg {
        src: SocketAddr::new(src, tcp.src_port),
        dst: SocketAddr::new(dst, tcp.dst_port),
        syn: tcp.control == TcpControl::Syn,
        ack: tcp.ack_number.is_some(),
        rst: tcp.control == TcpControl::Rst,
        seq: tcp.seq_number.0 as u32,
        seq_len: tcp.segment_len() as u32,
    })
}

fn parse_udp<'a>(body: &'a [u8], src: IpAddr, dst: IpAddr) -> Parsed<'a> {
    let Ok(packet) = UdpPacket::new_checked(body) else { return Parsed::Drop("short udp") };
    let Ok(udp) = UdpRepr::parse(&packet, &IpAddress::from(src), &IpAddress::from(dst), &checksums()) else {
        return Parsed::Drop("bad udp");
    };
    Parsed::Udp {
        src: SocketAddr::new(src, udp.src_port),
        dst: SocketAddr::new(dst, udp.dst_port),
        payload: packet.payload(),
    }
}

/// Re-parses the IP header of a guest frame that [`parse`] accepted (to
/// quote it in an ICMP error). `None` for anything else.
pub(crate) fn ip_header(frame: &[u8]) -> Option<(IpHeader, &[u8])> {
    let eth = EthernetFrame::new_checked(frame).ok()?;
    match eth.ethertype() {
        EthernetProtocol::Ipv4 => {
            let packet = Ipv4Packet::new_checked(eth.payload()).ok()?;
            let ip = Ipv4Repr::parse(&packet, &checksums()).ok()?;
            let hl = packet.header_len() as usize;
            Some((IpHeader::V4(ip), &eth.payload()[hl..]))
        }
        EthernetProtocol::Ipv6 => {
            let packet = Ipv6Packet::new_checked(eth.payload()).ok()?;
            let ip = Ipv6Repr::parse(&packet).ok()?;
            Some((IpHeader::V6(ip), &eth.payload()[40..]))
        }
        _ => None,
    }
}

/// Builds a frame from the gateway to the guest around an IP payload of
/// `payload_len` bytes written by `fill` (which gets the payload buffer and
/// the IP addresses for checksums).
fn ip_frame(
    plan: &AddressPlan,
    src: IpAddr,
    dst: IpAddr,
    protocol: IpProtocol,
    payload_len: usize,
    fill: impl FnOnce(&mut [u8], IpAddress, IpAddress),
) -> Vec<u8> {
    let eth = |ethertype| EthernetRepr {
        src_addr: EthernetAddress(plan.gateway_mac),
        dst_addr: EthernetAddress(plan.guest_mac),
        ethertype,
    };
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let ip = Ipv4Repr { src_addr: s, dst_addr: d, next_header: protocol, payload_len, hop_limit: 64 };
            let mut buf = vec![0u8; 14 + ip.buffer_len() + payload_len];
            let mut frame = EthernetFrame::new_unchecked(&mut buf[..]);
            eth(EthernetProtocol::Ipv4).emit(&mut frame);
            let mut packet = Ipv4Packet::new_unchecked(frame.payload_mut());
            ip.emit(&mut packet, &checksums());
            fill(packet.payload_mut(), IpAddress::Ipv4(s), IpAddress::Ipv4(d));
            buf
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let ip = Ipv6Repr { src_addr: s, dst_addr: d, next_header: protocol, payload_len, hop_limit: 64 };
            let mut buf = vec![0u8; 14 + ip.buffer_len() + payload_len];
            let mut frame = EthernetFrame::new_unchecked(&mut buf[..]);
            eth(EthernetProtocol::Ipv6).emit(&mut frame);
            let mut packet = Ipv6Packet::new_unchecked(frame.payload_mut());
            ip.emit(&mut packet);
            fill(packet.payload_mut(), IpAddress::Ipv6(s), IpAddress::Ipv6(d));
            buf
        }
        _ => Vec::new(),
    }
}

/// The RST|ACK that refuses a guest segment (RFC 9293 3.10.7.1).
pub(crate) fn tcp_rst(plan: &AddressPlan, seg: &TcpSeg) -> Vec<u8> {
    let repr = TcpRepr {
        src_port: seg.dst.port(),
        dst_port: seg.src.port(),
        control: TcpControl::Rst,
        seq_number: TcpSeqNumber(0),
        ack_number: Some(TcpSeqNumber(seg.seq.wrapping_add(seg.seq_len) as i32)),
        window_len: 0,
        window_scale: None,
        max_seg_size: None,
        sack_permitted: false,
        sack_ranges: [None; 3],
        timestamp: None,
        payload: &[],
    };
    ip_frame(plan, seg.dst.ip(), seg.src.ip(), IpProtocol::Tcp, repr.buffer_len(), |buf, s, d| {
        repr.emit(&mut TcpPacket::new_unchecked(buf), &s, &d, &checksums());
    })
}

/// A UDP datagram from `from` to the guest's `to`. `None` when it does not
/// fit the link MTU (the engine does not fragment).
pub(crate) fn udp(plan: &AddressPlan, from: SocketAddr, to: SocketAddr, payload: &[u8], mtu: usize) -> Option<Vec<u8>> {
    let ip_header = if from.is_ipv4() { 20 } else { 40 };
    if ip_header + 8 + payload.len() > mtu {
        return None;
    }
    let repr = UdpRepr { src_port: from.port(), dst_port: to.port() };
    Some(ip_frame(plan, from.ip(), to.ip(), IpProtocol::Udp, 8 + payload.len(), |buf, s, d| {
        let mut packet = UdpPacket::new_unchecked(buf);
        repr.emit(&mut packet, &s, &d, payload.len(), |p| p.copy_from_slice(payload), &checksums());
    }))
}

/// Why a guest packet is refused with an ICMP error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unreachable {
    /// Denied or unreachable UDP port.
    Port,
    /// Denied by policy (administratively prohibited).
    Prohibited,
}

/// An ICMP destination-unreachable answering the guest `frame`, from `from`.
pub(crate) fn icmp_unreachable(plan: &AddressPlan, frame: &[u8], from: IpAddr, why: Unreachable) -> Option<Vec<u8>> {
    let (header, rest) = ip_header(frame)?;
    match header {
        IpHeader::V4(ip) => {
            let data = &rest[..rest.len().min(ip.payload_len).min(528)];
            let reason = match why {
                Unreachable::Port => Icmpv4DstUnreachable::PortUnreachable,
                Unreachable::Prohibited => Icmpv4DstUnreachable::CommProhibited,
            };
            let repr = Icmpv4Repr::DstUnreachable { reason, header: ip, data };
            let src = if from.is_ipv4() { from } else { IpAddr::V4(plan.gateway_v4) };
            Some(ip_frame(plan, src, IpAddr::V4(ip.src_addr), IpProtocol::Icmp, repr.buffer_len(), |buf, _, _| {
                repr.emit(&mut Icmpv4Packet::new_unchecked(buf), &checksums());
            }))
        }
        IpHeader::V6(ip) => {
            let data = &rest[..rest.len().min(ip.payload_len).min(1232 - 48)];
            let reason = match why {
                Unreachable::Port => Icmpv6DstUnreachable::PortUnreachable,
                Unreachable::Prohibited => Icmpv6DstUnreachable::AdminProhibit,
            };
            let repr = Icmpv6Repr::DstUnreachable { reason, header: ip, data };
            let src = match from {
                IpAddr::V6(a) => a,
                IpAddr::V4(_) => plan.gateway_v6,
            };
            Some(ip_frame(
                plan,
                IpAddr::V6(src),
                IpAddr::V6(ip.src_addr),
                IpProtocol::Icmpv6,
                repr.buffer_len(),
                |buf, _, _| {
                    repr.emit(&src, &ip.src_addr, &mut Icmpv6Packet::new_unchecked(buf), &checksums());
                },
            ))
        }
    }
}

/// An echo reply from `from` to the guest.
pub(crate) fn echo_reply(plan: &AddressPlan, from: IpAddr, to: IpAddr, ident: u16, seq: u16, data: &[u8]) -> Vec<u8> {
    match (from, to) {
        (IpAddr::V4(_), IpAddr::V4(_)) => {
            let repr = Icmpv4Repr::EchoReply { ident, seq_no: seq, data };
            ip_frame(plan, from, to, IpProtocol::Icmp, repr.buffer_len(), |buf, _, _| {
                repr.emit(&mut Icmpv4Packet::new_unchecked(buf), &checksums());
            })
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let repr = Icmpv6Repr::EchoReply { ident, seq_no: seq, data };
            ip_frame(plan, from, to, IpProtocol::Icmpv6, repr.buffer_len(), |buf, _, _| {
                repr.emit(&s, &d, &mut Icmpv6Packet::new_unchecked(buf), &checksums());
            })
        }
        _ => Vec::new(),
    }
}
