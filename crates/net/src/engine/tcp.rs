//! TCP: connect before accept, then a byte pump between the guest-facing
//! smoltcp socket and the host-side stream.
//!
//! Invariants:
//! - On a guest SYN the host dials first; the guest's SYN is held (its
//!   retransmissions replace it) and smoltcp sees it only once the host
//!   connection is up, so SYN-ACK means "connected". A refused, failed,
//!   timed-out or denied dial answers RST at once.
//! - Half-close both ways: a guest FIN becomes `shutdown(Write)` on the
//!   host stream after the guest's data; host EOF becomes a FIN after the
//!   host's data. Resets cross both ways (`SO_LINGER 0` towards the host).
//! - Keep-alive: smoltcp answers the guest's probes; the host side has
//!   `SO_KEEPALIVE` from the kernel. Neither wakes the engine while idle.
//! - A flow's bytes sit in its two smoltcp buffers and nowhere else; both
//!   are reserved against `max_buffered_bytes` when the dial starts.
//! - A flow's socket is removed only after a poll has run since it closed
//!   or was aborted, so the RST or final ACK has gone out.

use super::{Engine, FlowKey, Source};
use crate::config::HOST_NAME;
use crate::flows::{CloseReason, Direction, FlowMeta, NetEvent};
use crate::policy::{DecidedBy, Decision, Proto, Target};
use crate::wire::{self, TcpSeg};
use mio::{Interest, Token};
use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp::State;
use socket2::{Domain, Protocol, SockRef, Socket, Type};
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::time::{Instant, SystemTime};

pub(crate) enum Phase {
    /// The host dial is in progress; `syn` is the guest's latest SYN frame.
    Dialing { seg: TcpSeg, syn: Vec<u8>, deadline: Instant },
    /// smoltcp owns the guest side.
    Open { handle: SocketHandle },
}

pub(crate) struct TcpFlow {
    pub meta: FlowMeta,
    pub phase: Phase,
    /// `None` for DNS-over-TCP, which the engine answers itself.
    pub host: Option<mio::net::TcpStream>,
    pub token: Option<Token>,
    pub dns: Option<super::dns::TcpDns>,
    pub host_readable: bool,
    pub host_writable: bool,
    pub host_eof: bool,
    pub fin_to_host: bool,
    /// Set when an interceptor chose this flow.
    pub filtered: Option<super::filtered::Filtered>,
    /// Whether the first guest bytes were looked at for a TLS server name.
    sni_checked: bool,
    /// Set when the engine ended the flow (revoked, host reset).
    pub close: Option<CloseReason>,
}

impl TcpFlow {
    pub fn new(meta: FlowMeta, phase: Phase, host: Option<mio::net::TcpStream>, token: Option<Token>) -> TcpFlow {
        // Only the guest's outbound connections start with its ClientHello.
        let sni_checked = meta.direction == Direction::Inbound;
        TcpFlow {
            meta,
            phase,
            host,
            token,
            dns: None,
            host_readable: true,
            host_writable: true,
            host_eof: false,
            fin_to_host: false,
            sni_checked,
            filtered: None,
            close: None,
        }
    }
}

/// Whether the guest may never reach `dst` through the gateway: the
/// engine's own addresses (other than the host address), the rest of its
/// link, loopback, unspecified, broadcast, multicast.
pub(crate) fn martian(plan: &crate::config::AddressPlan, dst: IpAddr) -> bool {
    let host = dst == IpAddr::V4(plan.host_v4) || dst == IpAddr::V6(plan.host_v6);
    if host {
        return false;
    }
    if plan.on_link(dst) || plan.is_own(dst) {
        return true;
    }
    let host_side = plan.host_side(dst);
    host_side.is_loopback()
        || host_side.is_unspecified()
        || host_side.is_multicast()
        || host_side == IpAddr::from([255u8; 4])
}

fn reset_on_drop(stream: &mio::net::TcpStream) {
    let _ = SockRef::from(stream).set_linger(Some(std::time::Duration::ZERO));
}

impl Engine {
    pub(super) fn flow_meta(
        &mut self,
        protocol: Proto,
        direction: Direction,
        guest: SocketAddr,
        remote: SocketAddr,
    ) -> FlowMeta {
        let names = self.names_for(remote.ip());
        FlowMeta {
            id: self.events.next_id(),
            protocol,
            direction,
            guest,
            remote,
            name: names.last().cloned(),
            decided_by: DecidedBy::Martian,
            bytes_from_guest: 0,
            bytes_to_guest: 0,
            started: SystemTime::now(),
            started_at: Instant::now(),
        }
    }

    /// The names the guest resolved `addr` for (and the host name for the
    /// host address).
    pub(super) fn names_for(&self, addr: IpAddr) -> Vec<String> {
        names_for(&self.pins, &self.cfg.plan, addr)
    }

    /// The policy decision for a new outbound flow, bounds and martians first.
    pub(super) fn decide(
        &self,
        proto: Proto,
        dst: IpAddr,
        port: Option<u16>,
        over_limit: Option<&'static str>,
    ) -> Decision {
        if martian(&self.cfg.plan, dst) {
            return Decision { allowed: false, by: DecidedBy::Martian };
        }
        let names = self.names_for(dst);
        let decision =
            self.cfg.policy.decide(&Target { addr: self.cfg.plan.host_side(dst), names: &names, proto, port });
        match over_limit {
            Some(what) if decision.allowed => Decision { allowed: false, by: DecidedBy::Limit(what) },
            _ => decision,
        }
    }

    fn tcp_reserve(&self) -> usize {
        2 * self.cfg.limits.tcp_buffer
    }

    pub(super) fn tcp_segment(&mut self, seg: TcpSeg, frame: &[u8]) {
        let key = (seg.src, seg.dst);
        if let Some(flow) = self.tcp.get_mut(&key) {
            match &mut flow.phase {
                Phase::Dialing { syn, seg: held, .. } => {
                    if seg.syn && !seg.ack {
                        *syn = frame.to_vec();
                        *held = seg;
                    }
                }
                Phase::Open { .. } => {
                    self.dirty.insert(key);
                    self.stack.queues.rx.push_back(frame.to_vec());
                }
            }
            return;
        }
        if !seg.syn || seg.ack {
            // A segment of no flow: smoltcp answers it with RST.
            self.stack.queues.rx.push_back(frame.to_vec());
            return;
        }
        if seg.dst.port() == 53 {
            self.accept_dns_tcp(seg, frame);
            return;
        }
        let over = if self.tcp.len() >= self.cfg.limits.max_tcp_flows {
            Some("tcp connections")
        } else if self.buffered + self.tcp_reserve() > self.cfg.limits.max_buffered_bytes {
            Some("buffered bytes")
        } else {
            None
        };
        let decision = self.decide(Proto::Tcp, seg.dst.ip(), Some(seg.dst.port()), over);
        let mut meta = self.flow_meta(Proto::Tcp, Direction::Outbound, seg.src, seg.dst);
        meta.decided_by = decision.by;
        if !decision.allowed {
            self.send_to_guest(wire::tcp_rst(&self.cfg.plan, &seg));
            self.emit(NetEvent::Denied(meta.record(false, CloseReason::Denied)));
            return;
        }
        let target = SocketAddr::new(self.cfg.plan.host_side(seg.dst.ip()), seg.dst.port());
        let mut stream = match dial(target) {
            Ok(stream) => stream,
            Err(e) => {
                self.send_to_guest(wire::tcp_rst(&self.cfg.plan, &seg));
                self.emit(NetEvent::Flow(meta.record(true, CloseReason::ConnectFailed(e.to_string()))));
                return;
            }
        };
        let token = self.token(Source::Tcp(key));
        if let Err(e) = self.poll.registry().register(&mut stream, token, Interest::READABLE | Interest::WRITABLE) {
            self.sources.remove(&token);
            self.send_to_guest(wire::tcp_rst(&self.cfg.plan, &seg));
            self.emit(NetEvent::Flow(meta.record(true, CloseReason::ConnectFailed(e.to_string()))));
            return;
        }
        self.buffered += self.tcp_reserve();
        let deadline = Instant::now() + self.cfg.limits.connect_timeout;
        let phase = Phase::Dialing { seg, syn: frame.to_vec(), deadline };
        self.tcp.insert(key, TcpFlow::new(meta, phase, Some(stream), Some(token)));
    }

    pub(super) fn tcp_event(&mut self, key: FlowKey, event: &mio::event::Event) {
        let Some(flow) = self.tcp.get_mut(&key) else { return };
        match flow.phase {
            Phase::Dialing { .. } => {
                let Some(stream) = flow.host.as_ref() else { return };
                match stream.take_error() {
                    Ok(Some(e)) | Err(e) => return self.dial_failed(key, CloseReason::ConnectFailed(e.to_string())),
                    Ok(None) => {}
                }
                match stream.peer_addr() {
                    Ok(_) => self.dial_done(key),
                    Err(e) if e.kind() == io::ErrorKind::NotConnected => {
                        if event.is_error() || event.is_write_closed() {
                            self.dial_failed(key, CloseReason::ConnectFailed("connection failed".into()));
                        }
                    }
                    Err(e) => self.dial_failed(key, CloseReason::ConnectFailed(e.to_string())),
                }
            }
            Phase::Open { .. } => {
                if event.is_readable() || event.is_read_closed() || event.is_error() {
                    flow.host_readable = true;
                }
                if event.is_writable() || event.is_write_closed() || event.is_error() {
                    flow.host_writable = true;
                }
                self.dirty.insert(key);
            }
        }
    }

    fn dial_done(&mut self, key: FlowKey) {
        let buffer = self.cfg.limits.tcp_buffer;
        let Some(flow) = self.tcp.get_mut(&key) else { return };
        let Phase::Dialing { syn, .. } =
            std::mem::replace(&mut flow.phase, Phase::Open { handle: SocketHandle::default() })
        else {
            return;
        };
        let Some(handle) = self.stack.accept_syn(flow.meta.remote, syn.clone(), buffer) else {
            // smoltcp refused the held SYN: answer it like a failed dial.
            if let Some(seg) = match crate::wire::parse(&syn, &self.cfg.plan) {
                crate::wire::Parsed::Tcp(seg) => Some(seg),
                _ => None,
            } {
                flow.phase = Phase::Dialing { seg, syn, deadline: Instant::now() };
            }
            if let Some(stream) = &flow.host {
                reset_on_drop(stream);
            }
            return self.dial_failed(key, CloseReason::ConnectFailed("the guest's SYN was not accepted".into()));
        };
        flow.phase = Phase::Open { handle };
        self.dirty.insert(key);
    }

    fn dial_failed(&mut self, key: FlowKey, reason: CloseReason) {
        let Some(mut flow) = self.tcp.remove(&key) else { return };
        self.release(&mut flow);
        if let Phase::Dialing { seg, .. } = flow.phase {
            self.send_to_guest(wire::tcp_rst(&self.cfg.plan, &seg));
        }
        self.emit(NetEvent::Flow(flow.meta.record(true, reason)));
    }

    /// Deregisters the host side and returns the flow's buffer reservation.
    fn release(&mut self, flow: &mut TcpFlow) {
        if let Some(token) = flow.token.take() {
            self.sources.remove(&token);
        }
        if let Some(stream) = flow.host.as_mut() {
            let _ = self.poll.registry().deregister(stream);
        }
        self.buffered = self.buffered.saturating_sub(self.tcp_reserve());
    }

    pub(super) fn tcp_next_deadline(&self) -> Option<Instant> {
        if self.dialing_count() == 0 {
            return None;
        }
        self.tcp
            .values()
            .filter_map(|f| match f.phase {
                Phase::Dialing { deadline, .. } => Some(deadline),
                Phase::Open { .. } => None,
            })
            .min()
    }

    fn dialing_count(&self) -> usize {
        // Cheap enough at the bound of max_tcp_flows; only scanned when timers are computed.
        self.tcp.values().filter(|f| matches!(f.phase, Phase::Dialing { .. })).count()
    }

    pub(super) fn tcp_expire(&mut self, now: Instant) {
        let late: Vec<FlowKey> = self
            .tcp
            .iter()
            .filter(|(_, f)| matches!(f.phase, Phase::Dialing { deadline, .. } if deadline <= now))
            .map(|(k, _)| *k)
            .collect();
        for key in late {
            self.dial_failed(key, CloseReason::ConnectFailed("connect timed out".into()));
        }
    }

    /// Moves bytes for every flow that saw activity this turn.
    pub(super) fn pump_dirty(&mut self) {
        let dirty: Vec<FlowKey> = self.dirty.drain().collect();
        for key in &dirty {
            self.pump(*key);
        }
        self.reap_candidates.extend(dirty);
    }

    fn pump(&mut self, key: FlowKey) {
        let Some(flow) = self.tcp.get_mut(&key) else { return };
        let Phase::Open { handle } = flow.phase else { return };
        if flow.dns.is_some() {
            return self.pump_dns_tcp(key);
        }
        let socket = self.stack.tcp(handle);
        if !flow.sni_checked {
            let mut sni = None;
            // Hold the guest's first bytes until its first TLS record is
            // complete (a ClientHello may span segments), then name the flow.
            let fin =
                !matches!(socket.state(), State::SynReceived | State::Established | State::FinWait1 | State::FinWait2);
            let full = socket.recv_queue() >= super::sni::MAX_HELLO.min(socket.recv_capacity());
            match super::sni::client_hello_sni(socket.peek(super::sni::MAX_HELLO).unwrap_or(&[])) {
                super::sni::Sni::Incomplete if !fin && !full => {}
                super::sni::Sni::Found(name) => {
                    flow.meta.name = Some(name.clone());
                    flow.sni_checked = true;
                    sni = Some(name);
                }
                _ => flow.sni_checked = true,
            }
            if flow.sni_checked {
                if let (Some(interceptor), Some(stream)) = (self.interceptor.as_mut(), flow.host.as_ref()) {
                    let names = names_for(&self.pins, &self.cfg.plan, flow.meta.remote.ip());
                    let info = crate::intercept::FlowInfo {
                        id: flow.meta.id,
                        guest: flow.meta.guest,
                        remote: flow.meta.remote,
                        dialled: stream.peer_addr().unwrap_or(flow.meta.remote),
                        sni: sni.as_deref(),
                        resolved_names: &names,
                    };
                    if let Some(filter) = interceptor.intercept(&info) {
                        flow.filtered = Some(super::filtered::Filtered { filter, out: Default::default() });
                    }
                }
            }
        }
        if flow.filtered.is_some() {
            return self.pump_filtered(key);
        }
        let socket = self.stack.tcp(handle);
        let Some(stream) = flow.host.as_mut() else { return };
        let now = Instant::now();
        let mut starved = false;
        // Guest → host.
        while flow.sni_checked && flow.host_writable && socket.can_recv() {
            let allowance = match self.rate.as_mut() {
                Some((up, _)) => up.take(socket.recv_queue(), now),
                None => usize::MAX,
            };
            if allowance == 0 {
                starved = true;
                break;
            }
            let written = socket.recv(|data| match stream.write(&data[..data.len().min(allowance)]) {
                Ok(n) => (n, Ok(n)),
                Err(e) => (0, Err(e)),
            });
            if let (Some((up, _)), Ok(moved)) = (self.rate.as_mut(), &written) {
                let moved = moved.as_ref().copied().unwrap_or(0);
                up.refund(allowance.saturating_sub(moved));
            }
            match written {
                Ok(Ok(n)) => flow.meta.bytes_from_guest += n as u64,
                Ok(Err(e)) if e.kind() == io::ErrorKind::WouldBlock => flow.host_writable = false,
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Ok(Err(e)) => {
                    flow.close = Some(CloseReason::HostReset(e.to_string()));
                    socket.abort();
                    return;
                }
                Err(_) => break,
            }
        }
        let guest_finished =
            matches!(socket.state(), State::CloseWait | State::LastAck | State::Closing | State::TimeWait);
        if guest_finished && flow.sni_checked && !flow.fin_to_host && socket.recv_queue() == 0 {
            let _ = stream.shutdown(std::net::Shutdown::Write);
            flow.fin_to_host = true;
        }
        // Host → guest.
        while flow.host_readable && !flow.host_eof && socket.can_send() {
            let allowance = match self.rate.as_mut() {
                Some((_, down)) => down.take(socket.send_capacity() - socket.send_queue(), now),
                None => usize::MAX,
            };
            if allowance == 0 {
                starved = true;
                break;
            }
            let read = socket.send(|buf| {
                let limit = buf.len().min(allowance);
                match stream.read(&mut buf[..limit]) {
                    Ok(0) => (0, Ok(0)),
                    Ok(n) => (n, Ok(n)),
                    Err(e) => (0, Err(e)),
                }
            });
            if let (Some((_, down)), Ok(moved)) = (self.rate.as_mut(), &read) {
                let moved = moved.as_ref().copied().unwrap_or(0);
                down.refund(allowance.saturating_sub(moved));
            }
            match read {
                Ok(Ok(0)) => {
                    flow.host_eof = true;
                    socket.close();
                }
                Ok(Ok(n)) => flow.meta.bytes_to_guest += n as u64,
                Ok(Err(e)) if e.kind() == io::ErrorKind::WouldBlock => flow.host_readable = false,
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Ok(Err(e)) => {
                    flow.close = Some(CloseReason::HostReset(e.to_string()));
                    socket.abort();
                    return;
                }
                Err(_) => break,
            }
        }
        if starved {
            self.throttled.insert(key);
        }
    }

    /// Removes flows whose guest side has closed (after the poll that sent
    /// their last segment) and records them.
    pub(super) fn reap_tcp(&mut self) {
        let candidates: Vec<FlowKey> = self.reap_candidates.drain().collect();
        for key in candidates {
            let Some(flow) = self.tcp.get(&key) else { continue };
            let Phase::Open { handle } = flow.phase else { continue };
            let state = self.stack.tcp(handle).state();
            if !matches!(state, State::Closed | State::TimeWait) {
                continue;
            }
            let Some(mut flow) = self.tcp.remove(&key) else { continue };
            self.stack.sockets.remove(handle);
            self.release(&mut flow);
            let reason = match flow.close.take() {
                Some(reason) => reason,
                None if flow.dns.is_some() => CloseReason::Closed,
                None if flow.fin_to_host && flow.host_eof => CloseReason::Closed,
                None => CloseReason::GuestReset,
            };
            let blocked = matches!(reason, CloseReason::Blocked(_) | CloseReason::SecretViolation { .. });
            if blocked || matches!(reason, CloseReason::GuestReset | CloseReason::Revoked) {
                if let Some(stream) = &flow.host {
                    reset_on_drop(stream);
                }
            }
            match reason {
                _ if blocked => self.emit(NetEvent::Denied(flow.meta.record(false, reason))),
                _ => self.emit(NetEvent::Flow(flow.meta.record(true, reason))),
            }
        }
    }

    /// Closes, with RST both ways, the flows the current policy denies.
    pub(super) fn revoke_tcp(&mut self) -> usize {
        let keys: Vec<FlowKey> = self
            .tcp
            .iter()
            .filter(|(_, f)| f.meta.direction == Direction::Outbound && f.dns.is_none())
            .map(|(k, _)| *k)
            .collect();
        let mut revoked = 0;
        for key in keys {
            let Some(flow) = self.tcp.get(&key) else { continue };
            let decision = self.decide(Proto::Tcp, flow.meta.remote.ip(), Some(flow.meta.remote.port()), None);
            if decision.allowed {
                continue;
            }
            revoked += 1;
            self.revoke_one(key);
        }
        revoked
    }

    fn revoke_one(&mut self, key: FlowKey) {
        let Some(flow) = self.tcp.get_mut(&key) else { return };
        match flow.phase {
            Phase::Dialing { .. } => {
                if let Some(stream) = &flow.host {
                    reset_on_drop(stream);
                }
                self.dial_failed(key, CloseReason::Revoked);
            }
            Phase::Open { handle } => {
                flow.close = Some(CloseReason::Revoked);
                self.stack.tcp(handle).abort();
                self.reap_candidates.insert(key);
            }
        }
    }

    /// Engine stop: every connection is reset on both sides.
    pub(super) fn close_all_tcp(&mut self) {
        let keys: Vec<FlowKey> = self.tcp.keys().copied().collect();
        for key in keys {
            if let Some(flow) = self.tcp.get_mut(&key) {
                flow.close = Some(CloseReason::Shutdown);
                if let Phase::Open { handle } = flow.phase {
                    self.stack.tcp(handle).abort();
                }
                if let Some(stream) = &flow.host {
                    reset_on_drop(stream);
                }
            }
        }
        self.stack.poll();
        let keys: Vec<FlowKey> = self.tcp.keys().copied().collect();
        for key in keys {
            if let Some(mut flow) = self.tcp.remove(&key) {
                self.release(&mut flow);
                if let Phase::Open { handle } = flow.phase {
                    self.stack.sockets.remove(handle);
                }
                self.emit(NetEvent::Flow(flow.meta.record(true, CloseReason::Shutdown)));
            }
        }
    }
}

/// The names the guest resolved `addr` for, plus the host name for the
/// host address.
fn names_for(pins: &super::pins::Pins, plan: &crate::config::AddressPlan, addr: IpAddr) -> Vec<String> {
    let mut names = pins.names(addr).to_vec();
    if addr == IpAddr::V4(plan.host_v4) || addr == IpAddr::V6(plan.host_v6) {
        names.push(HOST_NAME.to_string());
    }
    names
}

/// Starts a non-blocking connect to `target`.
fn dial(target: SocketAddr) -> io::Result<mio::net::TcpStream> {
    let socket = Socket::new(Domain::for_address(target), Type::STREAM.nonblocking().cloexec(), Some(Protocol::TCP))?;
    socket.set_tcp_nodelay(true)?;
    socket.set_keepalive(true)?;
    match socket.connect(&target.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(mio::net::TcpStream::from_std(socket.into()))
}
