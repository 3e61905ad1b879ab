//! The engine: one thread, one `mio::Poll`, one smoltcp interface.
//!
//! Each turn waits on the device, the host sockets, the command waker and
//! the nearest deadline (smoltcp's `poll_delay`, a dial, a DNS query or a
//! session expiry), then: reads guest frames and decides each
//! ([`Engine::ingest`]), handles host-socket readiness, polls smoltcp,
//! moves bytes for the flows that saw activity, polls again, reaps ended
//! flows and writes the frames for the guest.
//!
//! Invariants:
//! - Idle means idle: with no packet moving and no flow dialling, expiring
//!   or retransmitting, the poll has no timeout and the thread sleeps.
//! - Nothing in a turn blocks: every socket is non-blocking, host dials
//!   complete through readiness, DNS upstream answers through readiness.
//! - A guest frame never reaches a host socket without a policy decision
//!   for its flow, and every refusal answers the guest at once (RST, ICMP
//!   unreachable, NXDOMAIN).
//! - At most one turn's worth of guest frames ([`FRAME_BATCH`]) is read
//!   before host-side work runs, so a flooding guest cannot starve
//!   published ports or commands.

mod dns;
mod filtered;
mod icmp;
mod pins;
mod ports;
mod rate;
mod sni;
pub(crate) mod stack;
mod tcp;
mod udp;

use crate::config::NetConfig;
use crate::device::FrameDevice;
use crate::flows::{Counters, EventSink, NetEvent};
use crate::handle::Command;
use crate::wire::{self, Parsed};
use crossbeam_channel::Receiver;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use std::collections::{HashMap, HashSet, VecDeque};
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub(crate) use ports::PortTable;

/// Guest frames read per turn before host-side work gets its share.
pub(crate) const FRAME_BATCH: usize = 256;
const DEVICE: Token = Token(0);
pub(crate) const WAKER: Token = Token(1);

/// Key of a TCP or UDP flow: (guest end, remote end as the guest sees it).
pub(crate) type FlowKey = (std::net::SocketAddr, std::net::SocketAddr);

/// What a poll token stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Tcp(FlowKey),
    Udp(FlowKey),
    Icmp(icmp::IcmpKey),
    DnsUpstream(u64),
    TcpListener(u64),
    UdpListener(u64),
}

pub(crate) struct Engine {
    cfg: NetConfig,
    device: Box<dyn FrameDevice>,
    poll: Poll,
    stack: stack::Stack,
    sources: HashMap<Token, Source>,
    next_token: usize,
    tcp: HashMap<FlowKey, tcp::TcpFlow>,
    dirty: HashSet<FlowKey>,
    /// Flows pumped or aborted this turn, checked for their end after the poll.
    reap_candidates: HashSet<FlowKey>,
    udp: udp::UdpTable,
    icmp: icmp::IcmpTable,
    dns: dns::Dns,
    ports: PortTable,
    pins: pins::Pins,
    events: EventSink,
    counters: Arc<Counters>,
    out: VecDeque<Vec<u8>>,
    device_full: bool,
    buffered: usize,
    rx_buf: Vec<u8>,
    commands: Option<Receiver<Command>>,
    stopped: bool,
    /// The last read stopped at the batch bound, not at an empty device.
    pending_device_read: bool,
    /// `--net-rate`: (guest → host, host → guest).
    rate: Option<(rate::TokenBucket, rate::TokenBucket)>,
    /// Flows waiting for the rate limiter to refill.
    throttled: HashSet<FlowKey>,
    /// Chooses flows for stream filters (TLS interception).
    interceptor: Option<Box<dyn crate::intercept::Interceptor>>,
}

impl Engine {
    pub fn new(
        cfg: NetConfig,
        device: Box<dyn FrameDevice>,
        events: EventSink,
        counters: Arc<Counters>,
        commands: Option<Receiver<Command>>,
    ) -> io::Result<(Engine, Arc<Waker>)> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let fd = device.pollable_fd();
        poll.registry().register(&mut SourceFd(&fd), DEVICE, Interest::READABLE | Interest::WRITABLE)?;
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let stack = stack::Stack::new(&cfg.plan, cfg.mtu, seed ^ u64::from(std::process::id()));
        let rx_buf = vec![0u8; cfg.mtu + 14 + 64];
        let udp = udp::UdpTable::default();
        let dns = dns::Dns::default();
        let rate = cfg
            .limits
            .rate_limit
            .map(|r| (rate::TokenBucket::new(r, Instant::now()), rate::TokenBucket::new(r, Instant::now())));
        Ok((
            Engine {
                cfg,
                device,
                poll,
                stack,
                sources: HashMap::new(),
                next_token: 2,
                tcp: HashMap::new(),
                dirty: HashSet::new(),
                reap_candidates: HashSet::new(),
                udp,
                icmp: icmp::IcmpTable::default(),
                dns,
                ports: PortTable::default(),
                pins: pins::Pins::default(),
                events,
                counters,
                out: VecDeque::new(),
                device_full: false,
                buffered: 0,
                rx_buf,
                commands,
                stopped: false,
                pending_device_read: false,
                rate,
                throttled: HashSet::new(),
                interceptor: None,
            },
            waker,
        ))
    }

    fn token(&mut self, source: Source) -> Token {
        let token = Token(self.next_token);
        self.next_token += 1;
        self.sources.insert(token, source);
        token
    }

    /// Runs until asked to stop or the device goes away.
    pub fn run(&mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        while !self.stopped {
            let timeout = self.next_timeout();
            match self.poll.poll(&mut events, timeout) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            let mut device_readable = false;
            for event in events.iter() {
                match event.token() {
                    DEVICE => {
                        if event.is_writable() {
                            self.device_full = false;
                        }
                        device_readable |= event.is_readable() || event.is_read_closed();
                    }
                    WAKER => self.run_commands(),
                    token => self.host_event(token, event),
                }
            }
            if device_readable || self.pending_device_read {
                self.read_device()?;
            }
            self.turn();
        }
        self.shutdown();
        Ok(())
    }

    /// Reads up to a batch of frames; re-arms itself (through the waker)
    /// when frames remain, since the device is edge-triggered.
    fn read_device(&mut self) -> io::Result<()> {
        let mut buf = std::mem::take(&mut self.rx_buf);
        let mut result = Ok(());
        self.pending_device_read = true;
        for _ in 0..FRAME_BATCH {
            match self.device.recv_frame(&mut buf) {
                Ok(n) => self.ingest(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.pending_device_read = false;
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        self.rx_buf = buf;
        result
    }

    /// Everything after the readiness events of a turn.
    pub(crate) fn turn(&mut self) {
        self.stack.poll();
        self.pump_dirty();
        self.stack.poll();
        self.reap_tcp();
        self.expire(Instant::now());
        self.flush();
    }

    /// Decides one guest frame.
    pub(crate) fn ingest(&mut self, frame: &[u8]) {
        Counters::add(&self.counters.rx_frames, 1);
        Counters::add(&self.counters.rx_bytes, frame.len() as u64);
        let parsed = wire::parse(frame, &self.cfg.plan);
        if !matches!(parsed, Parsed::Drop(_)) {
            // Learn the guest's MAC from what it sends (the TAP side picks its own).
            let mut mac = [0u8; 6];
            mac.copy_from_slice(&frame[6..12]);
            if mac[0] & 1 == 0 {
                self.cfg.plan.guest_mac = mac;
            }
        }
        match parsed {
            Parsed::Stack => self.stack.queues.rx.push_back(frame.to_vec()),
            Parsed::Tcp(seg) => self.tcp_segment(seg, frame),
            Parsed::Udp { src, dst, payload } => self.udp_datagram(src, dst, payload, frame),
            Parsed::Echo { src, dst, ident, seq, data } => self.echo_request(src, dst, ident, seq, data, frame),
            Parsed::Drop(why) => {
                tracing::trace!(why, "dropped guest frame");
                Counters::add(&self.counters.dropped_frames, 1);
            }
        }
    }

    /// Queues a frame for the guest.
    pub(crate) fn send_to_guest(&mut self, frame: Vec<u8>) {
        if frame.is_empty() {
            return;
        }
        if frame.len() > self.cfg.mtu + 14 {
            // Larger than the link carries (e.g. an echo reply to a huge ping).
            Counters::add(&self.counters.dropped_frames, 1);
            return;
        }
        if self.out.len() >= self.cfg.limits.max_queued_frames {
            Counters::add(&self.counters.dropped_frames, 1);
            return;
        }
        self.out.push_back(frame);
    }

    /// Writes queued frames (smoltcp's first) until the device is full.
    fn flush(&mut self) {
        for frame in self.stack.queues.tx.drain(..) {
            if self.out.len() >= self.cfg.limits.max_queued_frames {
                Counters::add(&self.counters.dropped_frames, 1);
                continue;
            }
            self.out.push_back(frame);
        }
        while !self.device_full {
            let Some(frame) = self.out.front() else { break };
            match self.device.send_frame(frame) {
                Ok(()) => {
                    Counters::add(&self.counters.tx_frames, 1);
                    Counters::add(&self.counters.tx_bytes, frame.len() as u64);
                    self.out.pop_front();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.device_full = true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    // A frame the device refuses (e.g. too long) is lost like on a wire.
                    Counters::add(&self.counters.dropped_frames, 1);
                    self.out.pop_front();
                }
            }
        }
    }

    fn next_timeout(&mut self) -> Option<Duration> {
        if self.pending_device_read || !self.stack.queues.rx.is_empty() {
            return Some(Duration::ZERO);
        }
        let now = Instant::now();
        let mut next = self.stack.poll_delay();
        let mut consider = |at: Option<Instant>| {
            if let Some(at) = at {
                let d = at.saturating_duration_since(now);
                next = Some(next.map_or(d, |n| n.min(d)));
            }
        };
        consider(self.tcp_next_deadline());
        consider(self.udp.next_deadline(self.cfg.limits.udp_idle));
        consider(self.icmp.next_deadline(self.cfg.limits.udp_idle));
        consider(self.dns.next_deadline());
        if !self.throttled.is_empty() {
            if let Some((up, down)) = &self.rate {
                consider(Some(up.ready_at().min(down.ready_at())));
            }
        }
        // Round up to a millisecond: epoll's resolution, so a deadline is
        // never woken for just before it is due.
        next.map(|d| Duration::from_millis(d.as_micros().div_ceil(1000) as u64))
    }

    fn expire(&mut self, now: Instant) {
        if let Some((up, down)) = &self.rate {
            if up.ready_at().min(down.ready_at()) <= now {
                let woken: Vec<FlowKey> = self.throttled.drain().collect();
                self.dirty.extend(woken);
            }
        }
        self.tcp_expire(now);
        self.udp_expire(now);
        self.icmp_expire(now);
        self.dns_expire(now);
    }

    fn host_event(&mut self, token: Token, event: &mio::event::Event) {
        let Some(source) = self.sources.get(&token).copied() else { return };
        match source {
            Source::Tcp(key) => self.tcp_event(key, event),
            Source::Udp(key) => self.udp_readable(key),
            Source::Icmp(key) => self.icmp_readable(key),
            Source::DnsUpstream(id) => self.dns_readable(id),
            Source::TcpListener(id) => self.accept_published(id),
            Source::UdpListener(id) => self.published_udp_readable(id),
        }
    }

    fn run_commands(&mut self) {
        let Some(commands) = self.commands.clone() else { return };
        while let Ok(command) = commands.try_recv() {
            match command {
                Command::SetPolicy(policy, reply) => {
                    let revoked = self.set_policy(policy);
                    let _ = reply.send(revoked);
                }
                Command::AddPort(port, reply) => {
                    // The reply carries the outcome; a failed registration publishes nothing.
                    let _ = reply.send(self.add_port(port));
                }
                Command::RemovePort(mapping, reply) => {
                    let _ = reply.send(self.remove_port(&mapping));
                }
                Command::ListPorts(reply) => {
                    let _ = reply.send(self.ports.mappings());
                }
                Command::Stop => self.stopped = true,
            }
        }
    }

    /// Swaps the policy and closes every flow it no longer allows.
    pub(crate) fn set_policy(&mut self, policy: crate::policy::Policy) -> usize {
        self.cfg.policy = policy;
        self.revoke_tcp() + self.revoke_udp() + self.revoke_icmp()
    }

    fn shutdown(&mut self) {
        self.close_all_tcp();
        self.close_all_udp();
        self.flush();
    }

    fn emit(&self, event: NetEvent) {
        self.events.emit(event);
    }

    pub(crate) fn set_interceptor(&mut self, interceptor: Option<Box<dyn crate::intercept::Interceptor>>) {
        self.interceptor = interceptor;
    }

    pub(crate) fn final_event(&self, event: NetEvent) {
        self.events.emit_final(event);
    }
}

#[cfg(test)]
mod tests;
