//! What the relay holds in memory for its peers, and the bounds on it.
//!
//! The relay runs every task on one thread. Two of these types are shared
//! between the relay's tasks ([`GuestBudget`] between a client's reader and
//! the guest writer, [`CreditLedger`] between the actor and the guest
//! writer); both hold their state in `Cell`s, moved out and back in by
//! methods that call nothing else meanwhile, so no borrow can be held
//! across an await or re-entered. [`RelayCounters`] is atomic: the
//! [`crate::SandboxHandle`] reads it from other threads.
//!
//! Invariants (each checked by a test in tests/hostile.rs):
//! - *towards a client*: at most one flow-control window per open session
//!   of that client (the agent's window; the relay credits a frame only once
//!   it is written to the client) plus a small slack, and at most
//!   [`MAX_SESSIONS_PER_CLIENT`] open sessions per client; a guest that
//!   sends beyond its window loses that client, not host memory;
//! - *towards the guest*: each client has at most [`CLIENT_GUEST_BUDGET`]
//!   bytes of frames queued for the agent channel (plus the one frame it is
//!   charging); past that its reader stops reading its socket, so a client
//!   flooding stdin into a guest that does not read holds a bounded amount
//!   of memory and the other clients keep their share of the queue;
//! - *credit*: credit owed to the agent is merged per session in a
//!   [`CreditLedger`] that the guest writer drains before any other frame;
//!   the actor adds to it without waiting, and the guest reader and the
//!   client writers wait only on the actor, which never waits: none of them
//!   waits on the agent channel's other direction (a guest that answers
//!   stdin with credit from its reading thread cannot deadlock the relay).

use alcove_protocol::{Frame, INITIAL_WINDOW};
use std::cell::Cell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::Notify;

/// Bytes of frames one client may have queued towards the guest before its
/// reader stops reading it: one stdin window.
pub const CLIENT_GUEST_BUDGET: usize = INITIAL_WINDOW as usize;

/// Bytes a client's queue may hold beyond one window per open session
/// (room for the frames of a session that are not window-charged: its start
/// and its end).
pub const CLIENT_QUEUE_SLACK: usize = 64 * 1024;

/// Sessions one client may have open at once; a further session is refused
/// with a terminal `SessionAborted`, so what is queued towards one client is
/// bounded by this many windows.
pub const MAX_SESSIONS_PER_CLIENT: usize = 64;

/// What the relay has held, for tests and benchmarks (high-water marks since
/// the sandbox started).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RelayStats {
    /// The most bytes of frames queued towards one client at once.
    pub peak_client_queue: usize,
    /// The most bytes of frames one client had queued towards the guest.
    pub peak_client_to_guest: usize,
    /// The most bytes of client frames queued towards the guest at once.
    pub peak_guest_queue: usize,
    /// Bytes of client frames queued towards the guest now.
    pub guest_queue: usize,
    /// Clients disconnected because the guest sent more than flow control
    /// allows for them.
    pub clients_over_queue: u64,
    /// Sessions refused because their client had
    /// [`MAX_SESSIONS_PER_CLIENT`] open.
    pub sessions_refused: u64,
}

/// The counters behind [`RelayStats`], written by the relay's thread.
#[derive(Debug, Default)]
pub struct RelayCounters {
    peak_client_queue: AtomicUsize,
    peak_client_to_guest: AtomicUsize,
    peak_guest_queue: AtomicUsize,
    guest_queue: AtomicUsize,
    clients_over_queue: AtomicU64,
    sessions_refused: AtomicU64,
}

impl RelayCounters {
    /// A snapshot.
    pub fn stats(&self) -> RelayStats {
        RelayStats {
            peak_client_queue: self.peak_client_queue.load(Ordering::Relaxed),
            peak_client_to_guest: self.peak_client_to_guest.load(Ordering::Relaxed),
            peak_guest_queue: self.peak_guest_queue.load(Ordering::Relaxed),
            guest_queue: self.guest_queue.load(Ordering::Relaxed),
            clients_over_queue: self.clients_over_queue.load(Ordering::Relaxed),
            sessions_refused: self.sessions_refused.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn client_queued(&self, bytes: usize) {
        self.peak_client_queue.fetch_max(bytes, Ordering::Relaxed);
    }

    pub(crate) fn client_over_queue(&self) {
        self.clients_over_queue.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn session_refused(&self) {
        self.sessions_refused.fetch_add(1, Ordering::Relaxed);
    }
}

/// One client's share of the queue towards the guest.
pub(crate) struct GuestBudget {
    queued: Cell<usize>,
    freed: Notify,
    counters: Arc<RelayCounters>,
}

impl GuestBudget {
    /// An empty budget whose charges are also counted in `counters`.
    pub(crate) fn new(counters: Arc<RelayCounters>) -> GuestBudget {
        GuestBudget { queued: Cell::new(0), freed: Notify::new(), counters }
    }

    /// Waits until the client may queue another frame.
    pub(crate) async fn wait_for_room(&self) {
        while self.queued.get() >= CLIENT_GUEST_BUDGET {
            self.freed.notified().await;
        }
    }
}

/// A frame for the agent channel, charged to the client that sent it (none
/// for the relay's own frames). The charge is given back when the item is
/// dropped — written, refused or lost with the channel alike — so no
/// client's reader can wait for bytes nobody will release.
pub(crate) struct ToGuest {
    pub(crate) frame: Frame,
    charge: Option<Rc<GuestBudget>>,
}

impl ToGuest {
    /// A frame of the relay's own (signals, aborts, shutdown).
    pub(crate) fn own(frame: Frame) -> ToGuest {
        ToGuest { frame, charge: None }
    }

    /// A client's frame, charged to `budget` until it is dropped.
    pub(crate) fn charged(frame: Frame, budget: &Rc<GuestBudget>) -> ToGuest {
        let bytes = frame.wire_len();
        let queued = budget.queued.get() + bytes;
        budget.queued.set(queued);
        let counters = &budget.counters;
        counters.peak_client_to_guest.fetch_max(queued, Ordering::Relaxed);
        let total = counters.guest_queue.fetch_add(bytes, Ordering::Relaxed) + bytes;
        counters.peak_guest_queue.fetch_max(total, Ordering::Relaxed);
        ToGuest { frame, charge: Some(budget.clone()) }
    }

    /// Whether the relay made this frame (no client is charged for it).
    #[cfg(feature = "fuzzing")]
    pub(crate) fn is_own(&self) -> bool {
        self.charge.is_none()
    }
}

impl std::fmt::Debug for ToGuest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ToGuest").field("frame", &self.frame).field("charged", &self.charge.is_some()).finish()
    }
}

impl Drop for ToGuest {
    fn drop(&mut self) {
        if let Some(budget) = self.charge.take() {
            let bytes = self.frame.wire_len();
            budget.queued.set(budget.queued.get().saturating_sub(bytes));
            budget.counters.guest_queue.fetch_sub(bytes, Ordering::Relaxed);
            budget.freed.notify_one();
        }
    }
}

/// Credit owed to the agent, merged per session until the guest writer
/// sends it. Never waits; holds one entry per session with credit pending.
#[derive(Default)]
pub(crate) struct CreditLedger {
    owed: Cell<HashMap<u32, u32>>,
    ready: Notify,
}

impl CreditLedger {
    pub(crate) fn owe(&self, id: u32, bytes: u32) {
        if bytes == 0 {
            return;
        }
        let mut owed = self.owed.take();
        let due = owed.entry(id).or_insert(0);
        *due = due.saturating_add(bytes);
        self.owed.set(owed);
        self.ready.notify_one();
    }

    /// Everything owed, emptying the ledger.
    pub(crate) fn take(&self) -> Vec<(u32, u32)> {
        let mut owed = self.owed.take();
        let all = owed.drain().collect();
        // The emptied map goes back, keeping its allocation.
        self.owed.set(owed);
        all
    }

    /// Resolves when credit has been added since the last call.
    pub(crate) async fn added(&self) {
        self.ready.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alcove_protocol::{Flags, Message};

    fn stdin_frame(len: usize) -> Frame {
        Frame::message(7, Flags::NONE, &Message::ExecStdin { data: vec![0; len] }).expect("encodes")
    }

    #[test]
    fn a_budget_is_charged_until_its_frame_is_dropped() {
        let counters = Arc::new(RelayCounters::default());
        let budget = Rc::new(GuestBudget::new(counters.clone()));
        let a = ToGuest::charged(stdin_frame(1000), &budget);
        let b = ToGuest::charged(stdin_frame(2000), &budget);
        let (a_len, b_len) = (a.frame.wire_len(), b.frame.wire_len());
        assert_eq!(budget.queued.get(), a_len + b_len);
        assert_eq!(counters.stats().guest_queue, a_len + b_len);
        drop(a);
        assert_eq!(budget.queued.get(), b_len);
        // The relay's own frames are charged to nobody.
        drop(ToGuest::own(stdin_frame(5000)));
        assert_eq!(budget.queued.get(), b_len);
        drop(b);
        let s = counters.stats();
        assert_eq!(
            (budget.queued.get(), s.guest_queue, s.peak_guest_queue, s.peak_client_to_guest),
            (0, 0, a_len + b_len, a_len + b_len)
        );
    }

    #[test]
    fn credit_is_merged_per_session() {
        let ledger = CreditLedger::default();
        ledger.owe(1, 10);
        ledger.owe(2, 5);
        ledger.owe(1, u32::MAX);
        ledger.owe(3, 0);
        let mut owed = ledger.take();
        owed.sort();
        assert_eq!(owed, [(1, u32::MAX), (2, 5)]);
        assert!(ledger.take().is_empty());
    }
}
