//! Test helpers: an engine on a frame pair, a guest TCP/IP stack (smoltcp)
//! on the other end, raw frame builders and a DNS server on 127.0.0.1.
#![allow(dead_code)]

use alcove_net::device::{frame_pair, FrameDevice, PairDevice};
use alcove_net::{AddressPlan, NetConfig, NetEvent, Network};
use crossbeam_channel::Receiver;
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{self, ChecksumCapabilities, DeviceCapabilities, Medium};
use smoltcp::socket::tcp;
use smoltcp::time::Instant as SmolInstant;
use smoltcp::wire::*;
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a test waits for something that should happen at once.
pub const DEADLINE: Duration = Duration::from_secs(20);

pub struct Harness {
    pub net: Network,
    pub guest: PairDevice,
    pub events: Receiver<NetEvent>,
    pub plan: AddressPlan,
}

pub fn start(config: NetConfig) -> Harness {
    let (engine_end, guest) = frame_pair().unwrap();
    let plan = config.plan.clone();
    let (net, events) = Network::start(config, Box::new(engine_end), Vec::new()).unwrap();
    let mut h = Harness { net, guest, events, plan };
    h.arp_gateway();
    h
}

impl Harness {
    /// The next event that satisfies `pred`, skipping others.
    pub fn event(&self, mut pred: impl FnMut(&NetEvent) -> bool) -> NetEvent {
        let end = Instant::now() + DEADLINE;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            let event = self.events.recv_timeout(left).expect("no matching event before the deadline");
            if pred(&event) {
                return event;
            }
        }
    }

    /// The next frame from the engine that `pick` accepts (others skipped).
    pub fn frame<T>(&mut self, mut pick: impl FnMut(&[u8]) -> Option<T>) -> T {
        let end = Instant::now() + DEADLINE;
        let mut buf = vec![0u8; 70000];
        loop {
            let left = end.saturating_duration_since(Instant::now());
            let n =
                self.guest.recv_frame_timeout(&mut buf, left).unwrap().expect("no matching frame before the deadline");
            if let Some(t) = pick(&buf[..n]) {
                return t;
            }
        }
    }

    /// Resolves the gateway's MAC as a guest would first (which also tells
    /// the engine the guest's).
    pub fn arp_gateway(&mut self) {
        let repr = ArpRepr::EthernetIpv4 {
            operation: ArpOperation::Request,
            source_hardware_addr: EthernetAddress(self.plan.guest_mac),
            source_protocol_addr: self.plan.guest_v4,
            target_hardware_addr: EthernetAddress([0; 6]),
            target_protocol_addr: self.plan.gateway_v4,
        };
        let mut buf = vec![0u8; 14 + repr.buffer_len()];
        let mut f = EthernetFrame::new_unchecked(&mut buf[..]);
        EthernetRepr {
            src_addr: EthernetAddress(self.plan.guest_mac),
            dst_addr: EthernetAddress::BROADCAST,
            ethertype: EthernetProtocol::Arp,
        }
        .emit(&mut f);
        repr.emit(&mut ArpPacket::new_unchecked(f.payload_mut()));
        self.send(&buf);
        let gateway = self.plan.gateway_mac;
        self.frame(|f| {
            let eth = EthernetFrame::new_checked(f).ok()?;
            let arp = ArpRepr::parse(&ArpPacket::new_checked(eth.payload()).ok()?).ok()?;
            match arp {
                ArpRepr::EthernetIpv4 { operation: ArpOperation::Reply, source_hardware_addr, .. } => {
                    assert_eq!(source_hardware_addr, EthernetAddress(gateway));
                    Some(())
                }
                _ => None,
            }
        });
    }

    /// Hands the guest end to a smoltcp guest stack (raw frames stop here).
    pub fn guest_stack(&mut self) -> GuestStack {
        self.guest_stack_with_mtu(1500)
    }

    pub fn guest_stack_with_mtu(&mut self, mtu: usize) -> GuestStack {
        let (unused, _) = frame_pair().unwrap();
        let pair = std::mem::replace(&mut self.guest, unused);
        GuestStack::new(pair, &self.plan, mtu)
    }

    pub fn send(&mut self, frame: &[u8]) {
        self.guest.send_frame(frame).unwrap();
    }
}

fn checksums() -> ChecksumCapabilities {
    ChecksumCapabilities::default()
}

/// Builds a frame from the guest to the gateway.
pub fn guest_ip_frame(plan: &AddressPlan, src: IpAddr, dst: IpAddr, proto: IpProtocol, payload: &[u8]) -> Vec<u8> {
    let eth = |t| EthernetRepr {
        src_addr: EthernetAddress(plan.guest_mac),
        dst_addr: EthernetAddress(plan.gateway_mac),
        ethertype: t,
    };
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let ip =
                Ipv4Repr { src_addr: s, dst_addr: d, next_header: proto, payload_len: payload.len(), hop_limit: 64 };
            let mut buf = vec![0u8; 14 + 20 + payload.len()];
            let mut f = EthernetFrame::new_unchecked(&mut buf[..]);
            eth(EthernetProtocol::Ipv4).emit(&mut f);
            let mut p = Ipv4Packet::new_unchecked(f.payload_mut());
            ip.emit(&mut p, &checksums());
            p.payload_mut().copy_from_slice(payload);
            buf
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let ip =
                Ipv6Repr { src_addr: s, dst_addr: d, next_header: proto, payload_len: payload.len(), hop_limit: 64 };
            let mut buf = vec![0u8; 14 + 40 + payload.len()];
            let mut f = EthernetFrame::new_unchecked(&mut buf[..]);
            eth(EthernetProtocol::Ipv6).emit(&mut f);
            let mut p = Ipv6Packet::new_unchecked(f.payload_mut());
            ip.emit(&mut p);
            p.payload_mut().copy_from_slice(payload);
            buf
        }
        _ => panic!("mixed families"),
    }
}

/// A guest SYN from `src` to `dst`.
pub fn syn(plan: &AddressPlan, src: SocketAddr, dst: SocketAddr, seq: u32) -> Vec<u8> {
    let repr = TcpRepr {
        src_port: src.port(),
        dst_port: dst.port(),
        control: TcpControl::Syn,
        seq_number: TcpSeqNumber(seq as i32),
        ack_number: None,
        window_len: 64240,
        window_scale: Some(7),
        max_seg_size: Some(1460),
        sack_permitted: false,
        sack_ranges: [None; 3],
        timestamp: None,
        payload: &[],
    };
    let mut tcp = vec![0u8; repr.buffer_len()];
    repr.emit(&mut TcpPacket::new_unchecked(&mut tcp[..]), &src.ip().into(), &dst.ip().into(), &checksums());
    guest_ip_frame(plan, src.ip(), dst.ip(), IpProtocol::Tcp, &tcp)
}

/// A guest UDP datagram.
pub fn udp(plan: &AddressPlan, src: SocketAddr, dst: SocketAddr, payload: &[u8]) -> Vec<u8> {
    let repr = UdpRepr { src_port: src.port(), dst_port: dst.port() };
    let mut udp = vec![0u8; 8 + payload.len()];
    repr.emit(
        &mut UdpPacket::new_unchecked(&mut udp[..]),
        &src.ip().into(),
        &dst.ip().into(),
        payload.len(),
        |p| p.copy_from_slice(payload),
        &checksums(),
    );
    guest_ip_frame(plan, src.ip(), dst.ip(), IpProtocol::Udp, &udp)
}

/// What a frame to the guest carries, as far as tests care.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    Tcp { src: SocketAddr, dst: SocketAddr, syn: bool, ack: bool, rst: bool, ack_number: Option<u32> },
    Udp { src: SocketAddr, dst: SocketAddr, payload: Vec<u8> },
    IcmpUnreachable { code: u8 },
    EchoReply { src: IpAddr, ident: u16, seq: u16 },
    Other,
}

pub fn see(frame: &[u8]) -> Seen {
    let Ok(eth) = EthernetFrame::new_checked(frame) else { return Seen::Other };
    let (src, dst, proto, body): (IpAddr, IpAddr, IpProtocol, Vec<u8>) = match eth.ethertype() {
        EthernetProtocol::Ipv4 => {
            let p = Ipv4Packet::new_checked(eth.payload()).unwrap();
            assert!(p.verify_checksum(), "engine sent a bad ipv4 checksum");
            (p.src_addr().into(), p.dst_addr().into(), p.next_header(), p.payload().to_vec())
        }
        EthernetProtocol::Ipv6 => {
            let p = Ipv6Packet::new_checked(eth.payload()).unwrap();
            (p.src_addr().into(), p.dst_addr().into(), p.next_header(), p.payload().to_vec())
        }
        _ => return Seen::Other,
    };
    match proto {
        IpProtocol::Tcp => {
            let p = TcpPacket::new_checked(&body[..]).unwrap();
            assert!(p.verify_checksum(&src.into(), &dst.into()), "engine sent a bad tcp checksum");
            Seen::Tcp {
                src: SocketAddr::new(src, p.src_port()),
                dst: SocketAddr::new(dst, p.dst_port()),
                syn: p.syn(),
                ack: p.ack(),
                rst: p.rst(),
                ack_number: p.ack().then(|| p.ack_number().0 as u32),
            }
        }
        IpProtocol::Udp => {
            let p = UdpPacket::new_checked(&body[..]).unwrap();
            assert!(p.verify_checksum(&src.into(), &dst.into()), "engine sent a bad udp checksum");
            Seen::Udp {
                src: SocketAddr::new(src, p.src_port()),
                dst: SocketAddr::new(dst, p.dst_port()),
                payload: p.payload().to_vec(),
            }
        }
        IpProtocol::Icmp => {
            let p = Icmpv4Packet::new_checked(&body[..]).unwrap();
            assert!(p.verify_checksum(), "engine sent a bad icmp checksum");
            match p.msg_type() {
                Icmpv4Message::DstUnreachable => Seen::IcmpUnreachable { code: p.msg_code() },
                Icmpv4Message::EchoReply => Seen::EchoReply { src, ident: p.echo_ident(), seq: p.echo_seq_no() },
                _ => Seen::Other,
            }
        }
        IpProtocol::Icmpv6 => {
            let p = Icmpv6Packet::new_checked(&body[..]).unwrap();
            match p.msg_type() {
                Icmpv6Message::DstUnreachable => Seen::IcmpUnreachable { code: p.msg_code() },
                Icmpv6Message::EchoReply => Seen::EchoReply { src, ident: p.echo_ident(), seq: p.echo_seq_no() },
                _ => Seen::Other,
            }
        }
        _ => Seen::Other,
    }
}

// ---------------------------------------------------------------- DNS

/// A DNS query message.
pub fn dns_query(id: u16, name: &str, qtype: RecordType) -> Vec<u8> {
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    m.to_vec().unwrap()
}

/// A DNS server on 127.0.0.1 answering A/AAAA from a table; counts queries.
pub struct TestDns {
    pub addr: SocketAddr,
    pub asked: Arc<Mutex<Vec<String>>>,
    pub count: Arc<AtomicUsize>,
}

impl TestDns {
    pub fn start(table: &[(&str, &str)]) -> TestDns {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = socket.local_addr().unwrap();
        let mut map: HashMap<String, Vec<IpAddr>> = HashMap::new();
        for (name, ip) in table {
            map.entry(name.to_string()).or_default().push(ip.parse().unwrap());
        }
        let asked = Arc::new(Mutex::new(Vec::new()));
        let count = Arc::new(AtomicUsize::new(0));
        let (asked2, count2) = (asked.clone(), count.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                let Ok((n, peer)) = socket.recv_from(&mut buf) else { return };
                let Ok(q) = Message::from_vec(&buf[..n]) else { continue };
                count2.fetch_add(1, Ordering::SeqCst);
                let query = q.queries[0].clone();
                let name = query.name.to_ascii().trim_end_matches('.').to_string();
                asked2.lock().unwrap().push(name.clone());
                let mut r = Message::response(q.metadata.id, OpCode::Query);
                r.metadata.recursion_available = true;
                r.add_query(query.clone());
                match map.get(&name) {
                    None => r.metadata.response_code = ResponseCode::NXDomain,
                    Some(addrs) => {
                        for a in addrs {
                            let data = match (a, query.query_type) {
                                (IpAddr::V4(v4), RecordType::A) => RData::A((*v4).into()),
                                (IpAddr::V6(v6), RecordType::AAAA) => RData::AAAA((*v6).into()),
                                _ => continue,
                            };
                            r.add_answer(Record::from_rdata(query.name.clone(), 30, data));
                        }
                    }
                }
                let _ = socket.send_to(&r.to_vec().unwrap(), peer);
            }
        });
        TestDns { addr, asked, count }
    }
}

/// The addresses and code of a DNS answer frame.
pub fn dns_answer(payload: &[u8]) -> (u16, ResponseCode, Vec<IpAddr>) {
    let m = Message::from_vec(payload).unwrap();
    let addrs = m
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
            _ => None,
        })
        .collect();
    (m.metadata.id, m.metadata.response_code, addrs)
}

// ---------------------------------------------------------------- guest stack

/// A smoltcp stack playing the guest on the other end of the pair.
pub struct GuestStack {
    pub iface: Interface,
    pub sockets: SocketSet<'static>,
    dev: GuestDev,
    epoch: Instant,
}

struct GuestDev {
    pair: PairDevice,
    mtu: usize,
}

pub struct GRx(Vec<u8>);
pub struct GTx<'a>(&'a mut PairDevice);

impl phy::RxToken for GRx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl phy::TxToken for GTx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut buf = vec![0u8; len];
        let r = f(&mut buf);
        let _ = self.0.send_frame(&buf);
        r
    }
}

impl phy::Device for GuestDev {
    type RxToken<'a> = GRx;
    type TxToken<'a> = GTx<'a>;
    fn receive(&mut self, _: SmolInstant) -> Option<(GRx, GTx<'_>)> {
        let mut buf = vec![0u8; self.mtu + 14];
        match self.pair.recv_frame(&mut buf) {
            Ok(n) => {
                buf.truncate(n);
                Some((GRx(buf), GTx(&mut self.pair)))
            }
            Err(_) => None,
        }
    }
    fn transmit(&mut self, _: SmolInstant) -> Option<GTx<'_>> {
        Some(GTx(&mut self.pair))
    }
    fn capabilities(&self) -> DeviceCapabilities {
        let mut c = DeviceCapabilities::default();
        c.medium = Medium::Ethernet;
        c.max_transmission_unit = self.mtu + 14;
        c
    }
}

impl GuestStack {
    pub fn new(pair: PairDevice, plan: &AddressPlan, mtu: usize) -> GuestStack {
        let mut dev = GuestDev { pair, mtu };
        let config = Config::new(HardwareAddress::Ethernet(EthernetAddress(plan.guest_mac)));
        let mut iface = Interface::new(config, &mut dev, SmolInstant::from_micros(0));
        iface.update_ip_addrs(|a| {
            a.push(IpCidr::new(plan.guest_v4.into(), plan.prefix_v4)).unwrap();
            a.push(IpCidr::new(plan.guest_v6.into(), plan.prefix_v6)).unwrap();
        });
        iface.routes_mut().add_default_ipv4_route(plan.gateway_v4).unwrap();
        iface.routes_mut().add_default_ipv6_route(plan.gateway_v6).unwrap();
        GuestStack { iface, sockets: SocketSet::new(Vec::new()), dev, epoch: Instant::now() }
    }

    fn now(&self) -> SmolInstant {
        SmolInstant::from_micros(self.epoch.elapsed().as_micros() as i64)
    }

    pub fn tcp_socket(&mut self, buffer: usize) -> SocketHandle {
        let s = tcp::Socket::new(tcp::SocketBuffer::new(vec![0; buffer]), tcp::SocketBuffer::new(vec![0; buffer]));
        self.sockets.add(s)
    }

    pub fn connect(&mut self, remote: SocketAddr, local_port: u16) -> SocketHandle {
        let h = self.tcp_socket(256 * 1024);
        let cx = self.iface.context();
        self.sockets
            .get_mut::<tcp::Socket>(h)
            .connect(cx, (IpAddress::from(remote.ip()), remote.port()), local_port)
            .unwrap();
        h
    }

    pub fn tcp(&mut self, h: SocketHandle) -> &mut tcp::Socket<'static> {
        self.sockets.get_mut::<tcp::Socket>(h)
    }

    /// Drives the guest stack until `cond` holds; false at the deadline.
    pub fn run_until(&mut self, mut cond: impl FnMut(&mut GuestStack) -> bool) -> bool {
        let end = Instant::now() + DEADLINE;
        loop {
            let now = self.now();
            self.iface.poll(now, &mut self.dev, &mut self.sockets);
            if cond(self) {
                return true;
            }
            if Instant::now() >= end {
                return false;
            }
            let now = self.now();
            let wait = self
                .iface
                .poll_delay(now, &self.sockets)
                .map(|d| Duration::from_micros(d.total_micros()))
                .unwrap_or(DEADLINE);
            wait_readable(&self.dev.pair, wait.min(Duration::from_millis(100)));
        }
    }
}

fn wait_readable(pair: &PairDevice, timeout: Duration) {
    let mut pfd = libc::pollfd { fd: pair.pollable_fd(), events: libc::POLLIN, revents: 0 };
    // SAFETY: one valid pollfd.
    unsafe { libc::poll(&mut pfd, 1, timeout.as_millis().max(1) as i32) };
}

/// Reads everything from a std stream until EOF.
pub fn read_all(s: &mut std::net::TcpStream) -> io::Result<Vec<u8>> {
    let mut v = Vec::new();
    std::io::Read::read_to_end(s, &mut v)?;
    Ok(v)
}

/// A TLS ClientHello for `name`, padded by `padding` bytes (RFC 7685) so
/// it can span several segments.
pub fn client_hello(name: &str, padding: usize) -> Vec<u8> {
    let mut sni = Vec::new();
    sni.extend_from_slice(&((name.len() + 3) as u16).to_be_bytes());
    sni.push(0);
    sni.extend_from_slice(&(name.len() as u16).to_be_bytes());
    sni.extend_from_slice(name.as_bytes());
    let mut ext = vec![0, 0];
    ext.extend_from_slice(&(sni.len() as u16).to_be_bytes());
    ext.extend_from_slice(&sni);
    ext.extend_from_slice(&[0, 0x15]);
    ext.extend_from_slice(&(padding as u16).to_be_bytes());
    ext.extend(std::iter::repeat_n(0u8, padding));
    let mut body = vec![3, 3];
    body.extend_from_slice(&[0x11; 32]);
    body.push(0);
    body.extend_from_slice(&[0, 2, 0x13, 0x01, 1, 0]);
    body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
    body.extend_from_slice(&ext);
    let mut hs = vec![1];
    hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    hs.extend_from_slice(&body);
    let mut rec = vec![0x16, 3, 1];
    rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
    rec.extend_from_slice(&hs);
    rec
}
