//! Flow records, events and counters: what the engine tells its owner.
//!
//! Invariants:
//! - Every flow the guest starts ends in exactly one [`NetEvent::Flow`]
//!   (allowed, closed) or [`NetEvent::Denied`] (refused at once), unless
//!   the event queue was full, in which case
//!   [`Counters::events_dropped`] counts it: records are never silently
//!   lost.
//! - Byte counts are payload bytes moved between the guest and the host,
//!   per direction, as seen by the engine.
//! - Counters are monotonic atomics readable from any thread without a
//!   round trip to the engine.

use crate::policy::{DecidedBy, Proto};
use crossbeam_channel::{Sender, TrySendError};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// Which side opened a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// The guest connected out.
    Outbound,
    /// A host client came in through a published port.
    Inbound,
}

/// How a flow ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// Both sides closed normally.
    Closed,
    /// Refused before it started (policy, martian destination or a bound).
    Denied,
    /// The host-side connect failed (the guest got RST).
    ConnectFailed(String),
    /// The guest reset the connection.
    GuestReset,
    /// The host peer reset the connection or an I/O error ended it.
    HostReset(String),
    /// A new policy no longer allows it (both sides got RST).
    Revoked,
    /// A UDP or ICMP session idle past its expiry.
    Idle,
    /// The engine stopped.
    Shutdown,
    /// A DNS query answered (or refused) by the engine.
    Answered(String),
    /// A stream filter (interception) ended the flow, for this reason.
    Blocked(String),
    /// A secret's placeholder went where it does not belong (verdict
    /// `secret_violation`): which secret, to which host, how. Never the value.
    SecretViolation { secret: String, host: String, how: String },
}

/// One flow, as recorded when it ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowRecord {
    pub id: u64,
    pub protocol: Proto,
    pub direction: Direction,
    /// The guest's end.
    pub guest: SocketAddr,
    /// The other end as the guest addresses it (port 0 for ICMP).
    pub remote: SocketAddr,
    /// The name the guest resolved for the remote address, or the DNS
    /// question for DNS flows.
    pub name: Option<String>,
    pub allowed: bool,
    pub decided_by: DecidedBy,
    pub bytes_from_guest: u64,
    pub bytes_to_guest: u64,
    pub started: SystemTime,
    pub duration: Duration,
    pub close: CloseReason,
}

/// What the engine reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetEvent {
    /// An allowed flow ended.
    Flow(FlowRecord),
    /// A flow was refused: a policy violation (or a bound reached).
    Denied(FlowRecord),
    /// The engine's thread ended; `error` says why if it was not asked to.
    Stopped { error: Option<String> },
}

/// Traffic counters of one engine.
#[derive(Debug, Default)]
pub struct Counters {
    pub rx_frames: AtomicU64,
    pub rx_bytes: AtomicU64,
    pub tx_frames: AtomicU64,
    pub tx_bytes: AtomicU64,
    pub dropped_frames: AtomicU64,
    pub flows_allowed: AtomicU64,
    pub flows_denied: AtomicU64,
    pub events_dropped: AtomicU64,
}

/// A copy of [`Counters`]; rx is from the guest, tx is to the guest.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CounterSnapshot {
    pub rx_frames: u64,
    pub rx_bytes: u64,
    pub tx_frames: u64,
    pub tx_bytes: u64,
    pub dropped_frames: u64,
    pub flows_allowed: u64,
    pub flows_denied: u64,
    pub events_dropped: u64,
}

impl Counters {
    pub fn snapshot(&self) -> CounterSnapshot {
        let r = |c: &AtomicU64| c.load(Ordering::Relaxed);
        CounterSnapshot {
            rx_frames: r(&self.rx_frames),
            rx_bytes: r(&self.rx_bytes),
            tx_frames: r(&self.tx_frames),
            tx_bytes: r(&self.tx_bytes),
            dropped_frames: r(&self.dropped_frames),
            flows_allowed: r(&self.flows_allowed),
            flows_denied: r(&self.flows_denied),
            events_dropped: r(&self.events_dropped),
        }
    }

    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// The bookkeeping of a live flow, turned into a [`FlowRecord`] at its end.
#[derive(Debug, Clone)]
pub(crate) struct FlowMeta {
    pub id: u64,
    pub protocol: Proto,
    pub direction: Direction,
    pub guest: SocketAddr,
    pub remote: SocketAddr,
    pub name: Option<String>,
    pub decided_by: DecidedBy,
    pub bytes_from_guest: u64,
    pub bytes_to_guest: u64,
    pub started: SystemTime,
    pub started_at: Instant,
}

impl FlowMeta {
    pub fn record(&self, allowed: bool, close: CloseReason) -> FlowRecord {
        FlowRecord {
            id: self.id,
            protocol: self.protocol,
            direction: self.direction,
            guest: self.guest,
            remote: self.remote,
            name: self.name.clone(),
            allowed,
            decided_by: self.decided_by.clone(),
            bytes_from_guest: self.bytes_from_guest,
            bytes_to_guest: self.bytes_to_guest,
            started: self.started,
            duration: self.started_at.elapsed(),
            close,
        }
    }
}

/// Where events go: a bounded channel, with drops counted.
pub(crate) struct EventSink {
    tx: Sender<NetEvent>,
    counters: Arc<Counters>,
    next_id: u64,
}

impl EventSink {
    pub fn new(tx: Sender<NetEvent>, counters: Arc<Counters>) -> EventSink {
        EventSink { tx, counters, next_id: 1 }
    }

    pub fn next_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    pub fn emit(&self, event: NetEvent) {
        match &event {
            NetEvent::Flow(_) => Counters::add(&self.counters.flows_allowed, 1),
            NetEvent::Denied(_) => Counters::add(&self.counters.flows_denied, 1),
            NetEvent::Stopped { .. } => {}
        }
        match self.tx.try_send(event) {
            Ok(()) | Err(TrySendError::Disconnected(_)) => {}
            Err(TrySendError::Full(_)) => Counters::add(&self.counters.events_dropped, 1),
        }
    }

    /// Stopped must arrive even when the queue is full: it is the last word.
    pub fn emit_final(&self, event: NetEvent) {
        let _ = self.tx.send_timeout(event, Duration::from_secs(1));
    }
}
