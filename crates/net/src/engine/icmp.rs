//! ICMP echo to remote hosts through unprivileged ICMP sockets
//! (`SOCK_DGRAM`/`IPPROTO_ICMP`, allowed by `net.ipv4.ping_group_range`).
//! Pings to the gateway and host addresses are answered by smoltcp.
//!
//! Invariants:
//! - One host socket per (guest, remote, guest identifier); the kernel
//!   picks the identifier on the wire and matches replies to the socket,
//!   the engine puts the guest's identifier back.
//! - Where ICMP sockets are not allowed, or policy denies, the guest gets
//!   an ICMP "administratively prohibited" at once.
//! - Sessions close after `udp_idle` like UDP ones.

use super::{Engine, Source};
use crate::flows::{CloseReason, Direction, FlowMeta, NetEvent};
use crate::policy::Proto;
use crate::wire::{self, Unreachable};
use mio::unix::SourceFd;
use mio::{Interest, Token};
use socket2::{Domain, Protocol, Socket, Type};
use std::collections::HashMap;
use std::io;
use std::mem::MaybeUninit;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

/// (guest address, remote address, guest's echo identifier).
pub(crate) type IcmpKey = (IpAddr, IpAddr, u16);

pub(crate) struct IcmpFlow {
    meta: FlowMeta,
    socket: Socket,
    token: Token,
    last: Instant,
}

#[derive(Default)]
pub(crate) struct IcmpTable {
    flows: HashMap<IcmpKey, IcmpFlow>,
}

impl IcmpTable {
    pub fn next_deadline(&self, idle: Duration) -> Option<Instant> {
        self.flows.values().map(|f| f.last + idle).min()
    }
}

fn echo_request(v6: bool, seq: u16, data: &[u8]) -> Vec<u8> {
    let mut packet = Vec::with_capacity(8 + data.len());
    packet.push(if v6 { 128 } else { 8 });
    packet.extend_from_slice(&[0, 0, 0, 0, 0]); // code, checksum and identifier: the kernel's
    packet.extend_from_slice(&seq.to_be_bytes());
    packet.extend_from_slice(data);
    packet
}

impl Engine {
    pub(super) fn echo_request(&mut self, src: IpAddr, dst: IpAddr, ident: u16, seq: u16, data: &[u8], frame: &[u8]) {
        let key = (src, dst, ident);
        let target = SocketAddr::new(self.cfg.plan.host_side(dst), 0);
        if !self.icmp.flows.contains_key(&key) {
            let over = (self.icmp.flows.len() >= self.cfg.limits.max_icmp_flows).then_some("icmp sessions");
            let decision = self.decide(Proto::Icmp, dst, None, over);
            let mut meta =
                self.flow_meta(Proto::Icmp, Direction::Outbound, SocketAddr::new(src, 0), SocketAddr::new(dst, 0));
            meta.decided_by = decision.by;
            let refuse = |engine: &mut Engine| {
                if let Some(reply) = wire::icmp_unreachable(&engine.cfg.plan, frame, dst, Unreachable::Prohibited) {
                    engine.send_to_guest(reply);
                }
            };
            if !decision.allowed {
                refuse(self);
                self.emit(NetEvent::Denied(meta.record(false, CloseReason::Denied)));
                return;
            }
            let socket = match open_icmp(target) {
                Ok(s) => s,
                Err(e) => {
                    refuse(self);
                    self.emit(NetEvent::Flow(meta.record(true, CloseReason::ConnectFailed(e.to_string()))));
                    return;
                }
            };
            let token = self.token(Source::Icmp(key));
            let fd = socket.as_raw_fd();
            if self.poll.registry().register(&mut SourceFd(&fd), token, Interest::READABLE).is_err() {
                self.sources.remove(&token);
                return;
            }
            self.icmp.flows.insert(key, IcmpFlow { meta, socket, token, last: Instant::now() });
        }
        let Some(flow) = self.icmp.flows.get_mut(&key) else { return };
        flow.last = Instant::now();
        if flow.socket.send_to(&echo_request(dst.is_ipv6(), seq, data), &target.into()).is_ok() {
            flow.meta.bytes_from_guest += data.len() as u64;
        }
    }

    pub(super) fn icmp_readable(&mut self, key: IcmpKey) {
        let mut buf = [MaybeUninit::<u8>::uninit(); 65536];
        loop {
            let Some(flow) = self.icmp.flows.get_mut(&key) else { return };
            match flow.socket.recv(&mut buf) {
                Ok(n) => {
                    // SAFETY: recv initialised the first `n` bytes.
                    let packet: &[u8] = unsafe { std::slice::from_raw_parts(buf.as_ptr().cast(), n) };
                    let reply_type = if key.1.is_ipv6() { 129 } else { 0 };
                    if n < 8 || packet[0] != reply_type {
                        continue;
                    }
                    flow.last = Instant::now();
                    let seq = u16::from_be_bytes([packet[6], packet[7]]);
                    let data = &packet[8..];
                    flow.meta.bytes_to_guest += data.len() as u64;
                    let frame = wire::echo_reply(&self.cfg.plan, key.1, key.0, key.2, seq, data);
                    self.send_to_guest(frame);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => return,
            }
        }
    }

    pub(super) fn icmp_expire(&mut self, now: Instant) {
        let idle = self.cfg.limits.udp_idle;
        let old: Vec<IcmpKey> = self.icmp.flows.iter().filter(|(_, f)| f.last + idle <= now).map(|(k, _)| *k).collect();
        for key in old {
            self.icmp_close(key, CloseReason::Idle);
        }
    }

    fn icmp_close(&mut self, key: IcmpKey, reason: CloseReason) {
        if let Some(flow) = self.icmp.flows.remove(&key) {
            self.sources.remove(&flow.token);
            let fd = flow.socket.as_raw_fd();
            let _ = self.poll.registry().deregister(&mut SourceFd(&fd));
            self.emit(NetEvent::Flow(flow.meta.record(true, reason)));
        }
    }

    pub(super) fn revoke_icmp(&mut self) -> usize {
        let denied: Vec<IcmpKey> = self
            .icmp
            .flows
            .keys()
            .filter(|(_, remote, _)| !self.decide(Proto::Icmp, *remote, None, None).allowed)
            .copied()
            .collect();
        for key in &denied {
            self.icmp_close(*key, CloseReason::Revoked);
        }
        denied.len()
    }
}

fn open_icmp(target: SocketAddr) -> io::Result<Socket> {
    let (domain, protocol) =
        if target.is_ipv4() { (Domain::IPV4, Protocol::ICMPV4) } else { (Domain::IPV6, Protocol::ICMPV6) };
    Socket::new(domain, Type::DGRAM.nonblocking().cloexec(), Some(protocol))
}
