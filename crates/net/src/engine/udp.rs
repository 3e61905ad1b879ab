//! UDP: one connected host socket per (guest end, remote end), closed
//! after `udp_idle` without a datagram either way.
//!
//! Invariants:
//! - A session exists only after a policy decision; a refusal answers ICMP
//!   port unreachable (administratively prohibited for martians).
//! - Replies reach the guest only from the address it sent to: the host
//!   socket is connected, so the kernel drops datagrams from anyone else.
//! - Datagrams that do not fit the link MTU are dropped and counted (the
//!   engine does not fragment).
//! - Port 53 never gets a session: DNS is the engine's own (see `dns`).

use super::{Engine, FlowKey, Source};
use crate::flows::{CloseReason, Counters, Direction, FlowMeta, NetEvent};
use crate::policy::{DecidedBy, Proto};
use crate::wire::{self, Unreachable};
use mio::{Interest, Token};
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

pub(crate) struct UdpFlow {
    meta: FlowMeta,
    socket: mio::net::UdpSocket,
    token: Token,
    last: Instant,
}

#[derive(Default)]
pub(crate) struct UdpTable {
    flows: HashMap<FlowKey, UdpFlow>,
}

impl UdpTable {
    pub fn next_deadline(&self, idle: Duration) -> Option<Instant> {
        self.flows.values().map(|f| f.last + idle).min()
    }
}

impl Engine {
    pub(super) fn udp_datagram(&mut self, src: SocketAddr, dst: SocketAddr, payload: &[u8], frame: &[u8]) {
        if dst.port() == 53 {
            return self.dns_udp_query(src, dst, payload);
        }
        if self.published_udp_reply(src, dst, payload) {
            return;
        }
        let key = (src, dst);
        if !self.rate_allows_datagram(true, payload.len()) {
            return;
        }
        if let Some(flow) = self.udp.flows.get_mut(&key) {
            flow.last = Instant::now();
            if flow.socket.send(payload).is_ok() {
                flow.meta.bytes_from_guest += payload.len() as u64;
            }
            return;
        }
        let over = (self.udp.flows.len() >= self.cfg.limits.max_udp_flows).then_some("udp sessions");
        let decision = self.decide(Proto::Udp, dst.ip(), Some(dst.port()), over);
        let mut meta = self.flow_meta(Proto::Udp, Direction::Outbound, src, dst);
        meta.decided_by = decision.by.clone();
        if !decision.allowed {
            let why = if decision.by == DecidedBy::Martian { Unreachable::Prohibited } else { Unreachable::Port };
            if let Some(reply) = wire::icmp_unreachable(&self.cfg.plan, frame, dst.ip(), why) {
                self.send_to_guest(reply);
            }
            self.emit(NetEvent::Denied(meta.record(false, CloseReason::Denied)));
            return;
        }
        let target = SocketAddr::new(self.cfg.plan.host_side(dst.ip()), dst.port());
        let socket = match open_udp(target) {
            Ok(s) => s,
            Err(e) => {
                if let Some(reply) = wire::icmp_unreachable(&self.cfg.plan, frame, dst.ip(), Unreachable::Port) {
                    self.send_to_guest(reply);
                }
                self.emit(NetEvent::Flow(meta.record(true, CloseReason::ConnectFailed(e.to_string()))));
                return;
            }
        };
        let mut flow = UdpFlow { meta, socket, token: Token(0), last: Instant::now() };
        flow.token = self.token(Source::Udp(key));
        if self.poll.registry().register(&mut flow.socket, flow.token, Interest::READABLE).is_err() {
            self.sources.remove(&flow.token);
            return;
        }
        if flow.socket.send(payload).is_ok() {
            flow.meta.bytes_from_guest += payload.len() as u64;
        }
        self.udp.flows.insert(key, flow);
    }

    pub(super) fn udp_readable(&mut self, key: FlowKey) {
        let mut buf = vec![0u8; 65536];
        loop {
            let Some(flow) = self.udp.flows.get_mut(&key) else { return };
            match flow.socket.recv(&mut buf) {
                Ok(n) if !self.rate_allows_datagram(false, n) => {}
                Ok(n) => {
                    let Some(flow) = self.udp.flows.get_mut(&key) else { return };
                    flow.last = Instant::now();
                    match wire::udp(&self.cfg.plan, key.1, key.0, &buf[..n], self.cfg.mtu) {
                        Some(frame) => {
                            flow.meta.bytes_to_guest += n as u64;
                            self.send_to_guest(frame);
                        }
                        None => Counters::add(&self.counters.dropped_frames, 1),
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                // ICMP errors from the far side surface here; the session stays.
                Err(_) => {}
            }
        }
    }

    /// Whether the rate limit lets a datagram of `len` bytes through now
    /// (UDP has no window to slow down: over the limit it is dropped).
    fn rate_allows_datagram(&mut self, from_guest: bool, len: usize) -> bool {
        let Some((up, down)) = self.rate.as_mut() else { return true };
        let bucket = if from_guest { up } else { down };
        let granted = bucket.take(len, Instant::now());
        if granted < len {
            bucket.refund(granted);
            Counters::add(&self.counters.dropped_frames, 1);
            return false;
        }
        true
    }

    pub(super) fn udp_expire(&mut self, now: Instant) {
        let idle = self.cfg.limits.udp_idle;
        let old: Vec<FlowKey> = self.udp.flows.iter().filter(|(_, f)| f.last + idle <= now).map(|(k, _)| *k).collect();
        for key in old {
            self.udp_close(key, CloseReason::Idle);
        }
    }

    fn udp_close(&mut self, key: FlowKey, reason: CloseReason) {
        if let Some(mut flow) = self.udp.flows.remove(&key) {
            self.sources.remove(&flow.token);
            let _ = self.poll.registry().deregister(&mut flow.socket);
            self.emit(NetEvent::Flow(flow.meta.record(true, reason)));
        }
    }

    pub(super) fn revoke_udp(&mut self) -> usize {
        let denied: Vec<FlowKey> = self
            .udp
            .flows
            .keys()
            .filter(|(_, remote)| !self.decide(Proto::Udp, remote.ip(), Some(remote.port()), None).allowed)
            .copied()
            .collect();
        for key in &denied {
            self.udp_close(*key, CloseReason::Revoked);
        }
        denied.len()
    }

    pub(super) fn close_all_udp(&mut self) {
        let keys: Vec<FlowKey> = self.udp.flows.keys().copied().collect();
        for key in keys {
            self.udp_close(key, CloseReason::Shutdown);
        }
    }
}

fn open_udp(target: SocketAddr) -> io::Result<mio::net::UdpSocket> {
    let bind: SocketAddr = if target.is_ipv4() { "0.0.0.0:0".parse().unwrap() } else { "[::]:0".parse().unwrap() };
    let socket = mio::net::UdpSocket::bind(bind)?;
    socket.connect(target)?;
    Ok(socket)
}
