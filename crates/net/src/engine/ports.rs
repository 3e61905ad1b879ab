//! The engine's side of published ports: accepting host clients and
//! relaying them to the guest.
//!
//! Invariants:
//! - A listener is registered with the engine's poll: an accept wakes the
//!   engine at once, and every pending connection is accepted in the same
//!   turn (edge-triggered, drained to `WouldBlock`).
//! - An inbound TCP connection reaches the guest from the host address
//!   with an engine-chosen port; if the guest refuses, the host client is
//!   reset. Bounds apply as to outbound flows.
//! - UDP: each host peer gets its own source port towards the guest;
//!   guest replies to that port go back to that peer only. At most
//!   [`MAX_UDP_PEERS`] peers per port; the least recently active goes.
//! - Removing a port closes its listener; connections already relayed go on.

use super::tcp::{Phase, TcpFlow};
use super::{Engine, Source};
use crate::flows::{CloseReason, Direction, FlowMeta, NetEvent};
use crate::policy::{DecidedBy, Proto};
use crate::ports::{BoundPort, BoundSocket, PortMapping};
use mio::{Interest, Token};
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

pub(crate) const MAX_UDP_PEERS: usize = 256;

struct TcpPort {
    mapping: PortMapping,
    listener: mio::net::TcpListener,
    token: Token,
}

struct UdpPeer {
    local_port: u16,
    last: Instant,
    meta: FlowMeta,
}

struct UdpPort {
    mapping: PortMapping,
    socket: mio::net::UdpSocket,
    token: Token,
    peers: HashMap<SocketAddr, UdpPeer>,
}

#[derive(Default)]
pub(crate) struct PortTable {
    tcp: HashMap<u64, TcpPort>,
    udp: HashMap<u64, UdpPort>,
    next_id: u64,
    next_local_port: u16,
}

impl PortTable {
    pub fn mappings(&self) -> Vec<PortMapping> {
        let mut all: Vec<PortMapping> =
            self.tcp.values().map(|p| p.mapping).chain(self.udp.values().map(|p| p.mapping)).collect();
        all.sort_by_key(|m| (m.host, m.guest_port));
        all
    }
}

impl Engine {
    pub(crate) fn add_port(&mut self, port: BoundPort) -> io::Result<()> {
        let id = self.ports.next_id;
        self.ports.next_id += 1;
        match port.socket {
            BoundSocket::Tcp(listener) => {
                let mut listener = mio::net::TcpListener::from_std(listener);
                let token = self.token(Source::TcpListener(id));
                self.poll.registry().register(&mut listener, token, Interest::READABLE)?;
                self.ports.tcp.insert(id, TcpPort { mapping: port.mapping, listener, token });
                // Clients may already be waiting in the backlog.
                self.accept_published(id);
            }
            BoundSocket::Udp(socket) => {
                let mut socket = mio::net::UdpSocket::from_std(socket);
                let token = self.token(Source::UdpListener(id));
                self.poll.registry().register(&mut socket, token, Interest::READABLE)?;
                self.ports.udp.insert(id, UdpPort { mapping: port.mapping, socket, token, peers: HashMap::new() });
                self.published_udp_readable(id);
            }
        }
        Ok(())
    }

    pub(crate) fn remove_port(&mut self, mapping: &PortMapping) -> bool {
        let tcp = self.ports.tcp.iter().find(|(_, p)| p.mapping == *mapping).map(|(id, _)| *id);
        if let Some(mut port) = tcp.and_then(|id| self.ports.tcp.remove(&id)) {
            self.sources.remove(&port.token);
            let _ = self.poll.registry().deregister(&mut port.listener);
            return true;
        }
        let udp = self.ports.udp.iter().find(|(_, p)| p.mapping == *mapping).map(|(id, _)| *id);
        if let Some(mut port) = udp.and_then(|id| self.ports.udp.remove(&id)) {
            self.sources.remove(&port.token);
            let _ = self.poll.registry().deregister(&mut port.socket);
            for (_, peer) in port.peers.drain() {
                self.emit(NetEvent::Flow(peer.meta.record(true, CloseReason::Closed)));
            }
            return true;
        }
        false
    }

    /// The host address of the guest's family, and a free source port on it.
    fn inbound_local(&mut self, guest: SocketAddr) -> Option<SocketAddr> {
        let host: IpAddr = match guest.ip() {
            IpAddr::V4(_) => self.cfg.plan.host_v4.into(),
            IpAddr::V6(_) => self.cfg.plan.host_v6.into(),
        };
        for _ in 0..16384 {
            self.ports.next_local_port = match self.ports.next_local_port {
                p if p < 49152 => 49152,
                u16::MAX => 49152,
                p => p + 1,
            };
            let local = SocketAddr::new(host, self.ports.next_local_port);
            let in_use = self.tcp.contains_key(&(guest, local))
                || self.ports.udp.values().any(|p| p.peers.values().any(|peer| peer.local_port == local.port()));
            if !in_use {
                return Some(local);
            }
        }
        None
    }

    pub(super) fn accept_published(&mut self, id: u64) {
        loop {
            let Some(port) = self.ports.tcp.get(&id) else { return };
            let mapping = port.mapping;
            let (mut stream, peer) = match port.listener.accept() {
                Ok(accepted) => accepted,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // ECONNABORTED and friends: that client is gone, others may wait.
                Err(_) => continue,
            };
            let guest = SocketAddr::new(self.cfg.plan.guest_v4.into(), mapping.guest_port);
            let reserve = 2 * self.cfg.limits.tcp_buffer;
            let mut meta = self.flow_meta(Proto::Tcp, Direction::Inbound, guest, peer);
            meta.decided_by = DecidedBy::Published(mapping.host.port());
            let over = self.tcp.len() >= self.cfg.limits.max_tcp_flows
                || self.buffered + reserve > self.cfg.limits.max_buffered_bytes;
            let local = if over { None } else { self.inbound_local(guest) };
            let handle = local.and_then(|local| self.stack.connect(local, guest, self.cfg.limits.tcp_buffer));
            let (Some(local), Some(handle)) = (local, handle) else {
                let _ = socket2::SockRef::from(&stream).set_linger(Some(std::time::Duration::ZERO));
                meta.decided_by = DecidedBy::Limit("tcp connections");
                self.emit(NetEvent::Denied(meta.record(false, CloseReason::Denied)));
                continue;
            };
            meta.remote = local;
            let _ = stream.set_nodelay(true);
            let key = (guest, local);
            let token = self.token(Source::Tcp(key));
            if self.poll.registry().register(&mut stream, token, Interest::READABLE | Interest::WRITABLE).is_err() {
                self.sources.remove(&token);
                self.stack.sockets.remove(handle);
                continue;
            }
            self.buffered += reserve;
            let mut flow = TcpFlow::new(meta, Phase::Open { handle }, Some(stream), Some(token));
            flow.meta.name = Some(peer.to_string());
            self.tcp.insert(key, flow);
            self.dirty.insert(key);
        }
    }

    pub(super) fn published_udp_readable(&mut self, id: u64) {
        let mut buf = vec![0u8; 65536];
        loop {
            let Some(port) = self.ports.udp.get(&id) else { return };
            let (n, peer) = match port.socket.recv_from(&mut buf) {
                Ok(got) => got,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => continue,
            };
            let guest = SocketAddr::new(self.cfg.plan.guest_v4.into(), port.mapping.guest_port);
            let host_port = port.mapping.host.port();
            let known = port.peers.get(&peer).map(|p| p.local_port);
            let local_port = match known {
                Some(p) => p,
                None => {
                    let Some(local) = self.inbound_local(guest) else { continue };
                    let mut meta = self.flow_meta(Proto::Udp, Direction::Inbound, guest, local);
                    meta.decided_by = DecidedBy::Published(host_port);
                    meta.name = Some(peer.to_string());
                    let Some(port) = self.ports.udp.get_mut(&id) else { return };
                    if port.peers.len() >= MAX_UDP_PEERS {
                        let oldest = port.peers.iter().min_by_key(|(_, p)| p.last).map(|(a, _)| *a);
                        if let Some(old) = oldest.and_then(|a| port.peers.remove(&a)) {
                            self.events.emit(NetEvent::Flow(old.meta.record(true, CloseReason::Idle)));
                        }
                    }
                    port.peers.insert(peer, UdpPeer { local_port: local.port(), last: Instant::now(), meta });
                    local.port()
                }
            };
            let from = SocketAddr::new(self.cfg.plan.host_v4.into(), local_port);
            if let Some(frame) = crate::wire::udp(&self.cfg.plan, from, guest, &buf[..n], self.cfg.mtu) {
                self.send_to_guest(frame);
                if let Some(p) = self.ports.udp.get_mut(&id).and_then(|port| port.peers.get_mut(&peer)) {
                    p.last = Instant::now();
                    p.meta.bytes_to_guest += n as u64;
                }
            }
        }
    }

    /// A guest datagram to a published UDP port's peer; `true` if it was one.
    pub(super) fn published_udp_reply(&mut self, src: SocketAddr, dst: SocketAddr, payload: &[u8]) -> bool {
        let plan = &self.cfg.plan;
        if dst.ip() != IpAddr::V4(plan.host_v4) || src.ip() != IpAddr::V4(plan.guest_v4) {
            return false;
        }
        for port in self.ports.udp.values_mut() {
            if port.mapping.guest_port != src.port() {
                continue;
            }
            let Some((peer_addr, peer)) = port.peers.iter_mut().find(|(_, p)| p.local_port == dst.port()) else {
                continue;
            };
            if port.socket.send_to(payload, *peer_addr).is_ok() {
                peer.last = Instant::now();
                peer.meta.bytes_from_guest += payload.len() as u64;
            }
            return true;
        }
        false
    }
}
