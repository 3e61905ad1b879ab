//! DNS: every query the guest sends to port 53 (UDP or TCP, any address)
//! is answered by the engine, from policy or by forwarding to the
//! configured upstream resolvers.
//!
//! Invariants:
//! - Messages are parsed and rebuilt with hickory-proto; the upstream sees
//!   a re-encoded query under an identifier of the engine's choosing, and
//!   only an answer with that identifier and the same question is used.
//! - A name a rule denies, or any name when nothing can be allowed, is
//!   answered NXDOMAIN at once without asking an upstream.
//! - Rebind protection: an upstream answer keeps only the addresses the
//!   policy may allow for that name ([`Policy::may_allow`]); an answer left
//!   with none becomes NXDOMAIN.
//! - Addresses in an answer given to the guest are pinned to the question's
//!   name, so domain rules decide the flows that follow.
//! - Without IPv6 egress, AAAA questions get an empty answer at once.
//! - `host.alcove.internal` is answered locally with the host address;
//!   other names under `alcove.internal` are NXDOMAIN.
//! - Every query ends in a flow record; every unanswerable one in SERVFAIL
//!   (no upstream, upstream silent past `dns_timeout`, too many in flight).

use super::tcp::{martian, Phase, TcpFlow};
use super::{Engine, FlowKey, Source};
use crate::config::HOST_NAME;
use crate::flows::{CloseReason, Counters, Direction, FlowMeta, NetEvent};
use crate::policy::{normalize_name, DecidedBy, NameDecision, Policy, Proto};
use crate::wire::{self, TcpSeg};
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{RData, Record, RecordType};
use mio::{Interest, Token};
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

/// Largest DNS-over-TCP input kept for one connection.
const TCP_INPUT_MAX: usize = 2 * 65537;

/// Where an answer goes.
#[derive(Debug, Clone, Copy)]
enum ReplyTo {
    /// A UDP datagram from `server` (the address the guest asked) to `guest`.
    Udp { guest: SocketAddr, server: SocketAddr },
    /// The DNS-over-TCP connection with this key.
    Tcp(FlowKey),
}

struct Pending {
    socket: mio::net::UdpSocket,
    token: Token,
    reply_to: ReplyTo,
    guest_id: u16,
    upstream_id: u16,
    query: Query,
    name: String,
    name_rule: Option<usize>,
    deadline: Instant,
    meta: FlowMeta,
}

#[derive(Default)]
pub(crate) struct Dns {
    pending: HashMap<u64, Pending>,
    next: u64,
}

impl Dns {
    pub fn next_deadline(&self) -> Option<Instant> {
        self.pending.values().map(|p| p.deadline).min()
    }
}

/// The input side of a DNS-over-TCP connection.
#[derive(Default)]
pub(crate) struct TcpDns {
    input: Vec<u8>,
}

fn respond(request: &Message, code: ResponseCode) -> Message {
    let mut reply = Message::error_msg(request.metadata.id, request.metadata.op_code, code);
    reply.metadata.recursion_desired = request.metadata.recursion_desired;
    reply.metadata.recursion_available = true;
    reply.add_queries(request.queries.iter().cloned());
    reply
}

/// Keeps the answer addresses policy may allow for `name`; pins them.
/// Returns whether some address was removed.
fn filter_answers(
    answer: &mut Message,
    policy: &Policy,
    plan: &crate::config::AddressPlan,
    name: &str,
    name_rule: Option<usize>,
    ipv6_egress: bool,
    pins: &mut super::pins::Pins,
) -> bool {
    let names = [name.to_string()];
    let mut removed = false;
    answer.answers.retain(|record: &Record| {
        let addr = match &record.data {
            RData::A(a) => IpAddr::V4(a.0),
            RData::AAAA(a) if !ipv6_egress => {
                removed = true;
                return false;
            }
            RData::AAAA(a) => IpAddr::V6(a.0),
            _ => return true,
        };
        // The address the host would contact decides (the host address is
        // loopback); unreachable ones are refused like private ones.
        let keep = name_rule.is_some() || (!martian(plan, addr) && policy.may_allow(plan.host_side(addr), &names));
        removed |= !keep;
        keep
    });
    // Addresses in the additional section would bypass the filter.
    answer.additionals.retain(|r| !matches!(r.data, RData::A(_) | RData::AAAA(_)));
    for record in &answer.answers {
        match &record.data {
            RData::A(a) => pins.pin(IpAddr::V4(a.0), name),
            RData::AAAA(a) => pins.pin(IpAddr::V6(a.0), name),
            _ => {}
        }
    }
    removed
}

impl Engine {
    pub(super) fn dns_udp_query(&mut self, guest: SocketAddr, server: SocketAddr, payload: &[u8]) {
        let meta = self.flow_meta(Proto::Udp, Direction::Outbound, guest, server);
        self.dns_query(payload, ReplyTo::Udp { guest, server }, meta);
    }

    fn dns_query(&mut self, bytes: &[u8], reply_to: ReplyTo, mut meta: FlowMeta) {
        meta.bytes_from_guest = bytes.len() as u64;
        meta.decided_by = DecidedBy::Profile(self.cfg.policy.profile);
        let Ok(request) = Message::from_vec(bytes) else {
            if bytes.len() >= 12 {
                let id = u16::from_be_bytes([bytes[0], bytes[1]]);
                let reply = Message::error_msg(id, OpCode::Query, ResponseCode::FormErr);
                self.dns_reply(reply_to, &reply, &mut meta);
            }
            return self.emit(NetEvent::Flow(meta.record(true, CloseReason::Answered("malformed".into()))));
        };
        if request.metadata.message_type != MessageType::Query
            || request.metadata.op_code != OpCode::Query
            || request.queries.len() != 1
        {
            return self.dns_finish(
                reply_to,
                respond(&request, ResponseCode::NotImp),
                meta,
                true,
                "not a single query",
            );
        }
        let query = request.queries[0].clone();
        let name = normalize_name(&query.name.to_ascii());
        meta.name = Some(name.clone());
        if let Some(violation) = self.interceptor.as_mut().and_then(|i| i.dns_query(&name)) {
            // A secret's placeholder in a question: refused, never forwarded.
            let reply = respond(&request, ResponseCode::Refused);
            self.dns_reply(reply_to, &reply, &mut meta);
            return self.emit(NetEvent::Denied(meta.record(false, violation.close_reason())));
        }
        let qtype = query.query_type;
        let local = name == HOST_NAME || name.ends_with(".alcove.internal") || name == "alcove.internal";
        if local {
            return self.dns_local(&request, &name, qtype, reply_to, meta);
        }
        let name_rule = match self.cfg.policy.decide_name(&name) {
            NameDecision::Denied(index) => {
                meta.decided_by = DecidedBy::Rule { index, text: self.cfg.policy.rules[index].text.clone() };
                return self.dns_finish(reply_to, respond(&request, ResponseCode::NXDomain), meta, false, "denied");
            }
            NameDecision::Nothing => {
                return self.dns_finish(reply_to, respond(&request, ResponseCode::NXDomain), meta, false, "denied")
            }
            NameDecision::Allowed(index) => {
                meta.decided_by = DecidedBy::Rule { index, text: self.cfg.policy.rules[index].text.clone() };
                Some(index)
            }
            NameDecision::Undecided => None,
        };
        if qtype == RecordType::AAAA && !self.cfg.ipv6_egress {
            return self.dns_finish(
                reply_to,
                respond(&request, ResponseCode::NoError),
                meta,
                true,
                "aaaa withheld: no ipv6 egress",
            );
        }
        let Some(upstream) = self.cfg.dns_upstreams.first().copied() else {
            return self.dns_finish(
                reply_to,
                respond(&request, ResponseCode::ServFail),
                meta,
                true,
                "no upstream resolver",
            );
        };
        if self.dns.pending.len() >= self.cfg.limits.max_dns_in_flight {
            meta.decided_by = DecidedBy::Limit("dns queries in flight");
            return self.dns_finish(reply_to, respond(&request, ResponseCode::ServFail), meta, false, "limit");
        }
        let upstream_id =
            (self.stack.now().total_micros() as u16) ^ (self.dns.next as u16).rotate_left(7) ^ request.metadata.id;
        let mut forward = request.clone();
        forward.metadata.id = upstream_id;
        let sent = forward.to_vec().map_err(io::Error::other).and_then(|q| {
            let any: SocketAddr = if upstream.is_ipv4() {
                (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
            } else {
                (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
            };
            let socket = mio::net::UdpSocket::bind(any)?;
            socket.connect(upstream)?;
            socket.send(&q)?;
            Ok(socket)
        });
        let mut socket = match sent {
            Ok(s) => s,
            Err(e) => {
                let why = format!("upstream: {e}");
                return self.dns_finish(reply_to, respond(&request, ResponseCode::ServFail), meta, true, &why);
            }
        };
        let id = self.dns.next;
        self.dns.next += 1;
        let token = self.token(Source::DnsUpstream(id));
        if self.poll.registry().register(&mut socket, token, Interest::READABLE).is_err() {
            self.sources.remove(&token);
            return self.dns_finish(reply_to, respond(&request, ResponseCode::ServFail), meta, true, "register");
        }
        let deadline = Instant::now() + self.cfg.limits.dns_timeout;
        let pending = Pending {
            socket,
            token,
            reply_to,
            guest_id: request.metadata.id,
            upstream_id,
            query,
            name,
            name_rule,
            deadline,
            meta,
        };
        self.dns.pending.insert(id, pending);
    }

    fn dns_local(&mut self, request: &Message, name: &str, qtype: RecordType, reply_to: ReplyTo, meta: FlowMeta) {
        let plan = &self.cfg.plan;
        let names = [HOST_NAME.to_string()];
        let allowed = name == HOST_NAME && self.cfg.policy.may_allow(std::net::Ipv4Addr::LOCALHOST.into(), &names);
        if !allowed {
            return self.dns_finish(
                reply_to,
                respond(request, ResponseCode::NXDomain),
                meta,
                name == HOST_NAME,
                "local name",
            );
        }
        let mut reply = respond(request, ResponseCode::NoError);
        reply.metadata.authoritative = true;
        let owner = request.queries[0].name.clone();
        match qtype {
            RecordType::A => {
                reply.add_answer(Record::from_rdata(owner, 60, RData::A(plan.host_v4.into())));
            }
            RecordType::AAAA if self.cfg.ipv6_egress => {
                reply.add_answer(Record::from_rdata(owner, 60, RData::AAAA(plan.host_v6.into())));
            }
            _ => {}
        }
        self.dns_finish(reply_to, reply, meta, true, "local name")
    }

    fn dns_finish(&mut self, reply_to: ReplyTo, reply: Message, mut meta: FlowMeta, allowed: bool, why: &str) {
        self.dns_reply(reply_to, &reply, &mut meta);
        let close = CloseReason::Answered(format!("{} ({why})", reply.metadata.response_code));
        if allowed {
            self.emit(NetEvent::Flow(meta.record(true, close)));
        } else {
            self.emit(NetEvent::Denied(meta.record(false, close)));
        }
    }

    fn dns_reply(&mut self, reply_to: ReplyTo, reply: &Message, meta: &mut FlowMeta) {
        let Ok(bytes) = reply.to_vec() else { return };
        match reply_to {
            ReplyTo::Udp { guest, server } => {
                let frame = wire::udp(&self.cfg.plan, server, guest, &bytes, self.cfg.mtu).or_else(|| {
                    let truncated = reply.truncate().to_vec().ok()?;
                    wire::udp(&self.cfg.plan, server, guest, &truncated, self.cfg.mtu)
                });
                match frame {
                    Some(frame) => {
                        meta.bytes_to_guest += bytes.len() as u64;
                        self.send_to_guest(frame);
                    }
                    None => Counters::add(&self.counters.dropped_frames, 1),
                }
            }
            ReplyTo::Tcp(key) => {
                let Some(TcpFlow { phase: Phase::Open { handle }, .. }) = self.tcp.get(&key) else { return };
                let socket = self.stack.tcp(*handle);
                let Ok(len) = u16::try_from(bytes.len()) else { return };
                if socket.send_capacity() - socket.send_queue() >= bytes.len() + 2 {
                    let _ = socket.send_slice(&len.to_be_bytes());
                    let _ = socket.send_slice(&bytes);
                    meta.bytes_to_guest += bytes.len() as u64;
                }
                self.dirty.insert(key);
            }
        }
    }

    pub(super) fn dns_readable(&mut self, id: u64) {
        let mut buf = vec![0u8; 65536];
        loop {
            let Some(pending) = self.dns.pending.get_mut(&id) else { return };
            let n = match pending.socket.recv(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => return self.dns_fail(id, &format!("upstream: {e}")),
            };
            let Ok(mut answer) = Message::from_vec(&buf[..n]) else { continue };
            if answer.metadata.id != pending.upstream_id
                || answer.metadata.message_type != MessageType::Response
                || answer.queries.len() != 1
                || answer.queries[0] != pending.query
            {
                continue;
            }
            let Some(mut pending) = self.dns.pending.remove(&id) else { return };
            self.sources.remove(&pending.token);
            let _ = self.poll.registry().deregister(&mut pending.socket);
            answer.metadata.id = pending.guest_id;
            let had_addresses = answer.answers.iter().any(|r| matches!(r.data, RData::A(_) | RData::AAAA(_)));
            let removed = filter_answers(
                &mut answer,
                &self.cfg.policy,
                &self.cfg.plan,
                &pending.name,
                pending.name_rule,
                self.cfg.ipv6_egress,
                &mut self.pins,
            );
            let left = answer.answers.iter().any(|r| matches!(r.data, RData::A(_) | RData::AAAA(_)));
            if removed && had_addresses && !left {
                let mut refused = Message::error_msg(pending.guest_id, OpCode::Query, ResponseCode::NXDomain);
                refused.metadata.recursion_desired = answer.metadata.recursion_desired;
                refused.metadata.recursion_available = true;
                refused.add_query(pending.query.clone());
                return self.dns_finish(
                    pending.reply_to,
                    refused,
                    pending.meta,
                    false,
                    "rebind protection: no allowed address",
                );
            }
            let why = if removed { "answered, some addresses removed" } else { "answered" };
            return self.dns_finish(pending.reply_to, answer, pending.meta, true, why);
        }
    }

    fn dns_fail(&mut self, id: u64, why: &str) {
        let Some(mut pending) = self.dns.pending.remove(&id) else { return };
        self.sources.remove(&pending.token);
        let _ = self.poll.registry().deregister(&mut pending.socket);
        let mut reply = Message::error_msg(pending.guest_id, OpCode::Query, ResponseCode::ServFail);
        reply.metadata.recursion_available = true;
        reply.add_query(pending.query.clone());
        self.dns_finish(pending.reply_to, reply, pending.meta, true, why);
    }

    pub(super) fn dns_expire(&mut self, now: Instant) {
        let late: Vec<u64> = self.dns.pending.iter().filter(|(_, p)| p.deadline <= now).map(|(id, _)| *id).collect();
        for id in late {
            self.dns_fail(id, "upstream timed out");
        }
    }

    /// A guest SYN to port 53: the engine itself accepts it.
    pub(super) fn accept_dns_tcp(&mut self, seg: TcpSeg, frame: &[u8]) {
        let key = (seg.src, seg.dst);
        let reserve = 2 * self.cfg.limits.tcp_buffer;
        let mut meta = self.flow_meta(Proto::Tcp, Direction::Outbound, seg.src, seg.dst);
        meta.decided_by = DecidedBy::Profile(self.cfg.policy.profile);
        if self.tcp.len() >= self.cfg.limits.max_tcp_flows
            || self.buffered + reserve > self.cfg.limits.max_buffered_bytes
        {
            meta.decided_by = DecidedBy::Limit("tcp connections");
            self.send_to_guest(wire::tcp_rst(&self.cfg.plan, &seg));
            return self.emit(NetEvent::Denied(meta.record(false, CloseReason::Denied)));
        }
        let Some(handle) = self.stack.accept_syn(seg.dst, frame.to_vec(), self.cfg.limits.tcp_buffer) else {
            self.send_to_guest(wire::tcp_rst(&self.cfg.plan, &seg));
            return;
        };
        self.buffered += reserve;
        let mut flow = TcpFlow::new(meta, Phase::Open { handle }, None, None);
        flow.dns = Some(TcpDns::default());
        self.tcp.insert(key, flow);
    }

    /// Reads length-prefixed queries from a DNS-over-TCP connection.
    pub(super) fn pump_dns_tcp(&mut self, key: FlowKey) {
        let mut queries = Vec::new();
        {
            let Some(flow) = self.tcp.get_mut(&key) else { return };
            let Phase::Open { handle } = flow.phase else { return };
            let Some(dns) = flow.dns.as_mut() else { return };
            let socket = self.stack.tcp(handle);
            while socket.can_recv() {
                let mut chunk = [0u8; 4096];
                match socket.recv_slice(&mut chunk) {
                    Ok(n) if n > 0 => dns.input.extend_from_slice(&chunk[..n]),
                    _ => break,
                }
                if dns.input.len() > TCP_INPUT_MAX {
                    socket.abort();
                    return;
                }
            }
            while dns.input.len() >= 2 {
                let len = usize::from(u16::from_be_bytes([dns.input[0], dns.input[1]]));
                if dns.input.len() < 2 + len {
                    break;
                }
                queries.push(dns.input[2..2 + len].to_vec());
                dns.input.drain(..2 + len);
            }
            let guest_done = !socket.may_recv() && matches!(socket.state(), smoltcp::socket::tcp::State::CloseWait);
            let waiting = self.dns.pending.values().any(|p| matches!(p.reply_to, ReplyTo::Tcp(k) if k == key));
            if guest_done && queries.is_empty() && !waiting {
                socket.close();
            }
        }
        for query in queries {
            let mut meta = self.flow_meta(Proto::Tcp, Direction::Outbound, key.0, key.1);
            meta.started = std::time::SystemTime::now();
            self.dns_query(&query, ReplyTo::Tcp(key), meta);
        }
    }
}
