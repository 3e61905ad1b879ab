//! The relay's routing table: client slots and their id ranges, session
//! routes, what is queued towards each client, credit earned, and the
//! agent's liveness. Pure: it takes events (a client connected, a frame
//! arrived, a frame was written, a client left) and returns [`Action`]s for
//! the actor to carry out. It owns no socket, spawns no task and never
//! waits, so every rule below is unit-tested with plain calls.
//!
//! Invariants:
//! - *ids*: slot `k` owns the id block `(k+1) << 24`; each client in the
//!   slot (each *generation*) gets the next 1/16 of it (see [`slot_range`]),
//!   and a generation whose range still holds a session is skipped, so a
//!   client never gets ids whose session may still be ending in the guest;
//! - *routes*: a session is routed to the client that started it until the
//!   guest's terminal frame; once its client is gone the route stays, no
//!   longer counted as activity, and its frames are discarded (credited,
//!   so the agent can finish the killed session);
//! - *towards a client*: every item queued for a client is counted in its
//!   `queued_bytes` when queued and uncounted when its writer reports it
//!   written ([`RouteTable::client_wrote`]): one place each. A queue beyond
//!   one window per open session plus [`CLIENT_QUEUE_SLACK`] means a broken
//!   peer: that client is disconnected, never silently truncated;
//! - *credit*: a session earns credit for what its client has been written,
//!   returned in batches of [`CREDIT_BATCH`]; credit is owed only for
//!   sessions the table knows (a guest cannot grow the ledger with made-up
//!   ids).
//!
//! Over 600 lines on purpose: one table whose every rule reads and writes
//! the same slots and routes; split, each half would need the other's
//! state.

use super::flow::{RelayCounters, ToGuest, CLIENT_QUEUE_SLACK, MAX_SESSIONS_PER_CLIENT};
use crate::actors::peer_log::PeerWarnings;
use crate::clock::Clock;
use crate::messages::{Activity, Terminate};
use crate::store::TerminationReason;
use alcove_protocol::{Flags, Frame, Handshake, Message, Ready, SandboxRequest, CONTROL_ID, INITIAL_WINDOW};
use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

/// Most clients connected at once.
pub const MAX_CLIENTS: usize = 128;
/// Credit is returned in batches of this many bytes per session.
pub(crate) const CREDIT_BATCH: u32 = INITIAL_WINDOW / 8;
/// Generations a slot cycles through before its ids repeat.
const SLOT_GENERATIONS: u64 = 16;
/// Ids per client: a slot's block of 2^24 ids, shared by its generations.
const IDS_PER_CLIENT: u32 = (1 << 24) / SLOT_GENERATIONS as u32;

/// The id range of slot `k` at `generation`: slot `k` owns the block
/// `(k+1) << 24` (2^24 ids, none of them 0), and each generation of the
/// slot gets the next 1/16 of that block.
fn slot_range(k: usize, generation: u64) -> Handshake {
    let block = ((k as u32) + 1) << 24;
    let start = block + (generation % SLOT_GENERATIONS) as u32 * IDS_PER_CLIENT;
    Handshake { id_start: start, id_end: start + (IDS_PER_CLIENT - 1) }
}

fn too_many_sessions() -> String {
    format!("too many sessions: a client may have {MAX_SESSIONS_PER_CLIENT} open at once")
}

/// One connected client: its slot and the generation of that slot it holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct ClientKey {
    pub(crate) slot: usize,
    pub(crate) generation: u64,
}

impl ClientKey {
    /// The ids this client may use.
    pub(crate) fn range(self) -> Handshake {
        slot_range(self.slot, self.generation)
    }
}

/// What travels to a client's writer: a frame, and the descriptor it
/// carries when it has flag FD (a frame and its descriptor are one item, so
/// they cannot part).
#[derive(Debug)]
pub(crate) struct ToClient {
    pub(crate) frame: Frame,
    pub(crate) fd: Option<OwnedFd>,
}

/// The descriptor that came with a guest frame, as the guest reader found it.
#[derive(Debug)]
pub(crate) enum Descriptor {
    /// None came (right for a frame without flag FD).
    None,
    /// The read end of a pipe: what the protocol lets a guest hand out.
    Pipe(OwnedFd),
    /// Something else, already closed.
    NotAPipe,
}

/// What a client's writer reports for each item it has written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Written {
    pub(crate) id: u32,
    pub(crate) flags: Flags,
    pub(crate) wire_len: usize,
}

impl Written {
    pub(crate) fn of(frame: &Frame) -> Written {
        Written { id: frame.id, flags: frame.flags, wire_len: frame.wire_len() }
    }
}

/// What the actor must do, in order.
#[derive(Debug)]
pub(crate) enum Action {
    /// Queue an item for a client (already counted in its queue).
    ToClient(ClientKey, ToClient),
    /// Queue a frame for the guest: a client's (charged to it) or the
    /// relay's own (a kill, an abort).
    ToGuest(ToGuest),
    /// Owe the agent `bytes` of credit on session `id`.
    Credit { id: u32, bytes: u32 },
    /// The client is gone from the table: close its queue (its writer
    /// writes what is queued, then ends the connection).
    CloseClient(ClientKey),
    /// Tell Lifecycle the agent is ready.
    AgentReady(Ready),
    /// Give Lifecycle a cause to end the sandbox.
    Terminate(Terminate),
    /// Ask Lifecycle for `request`; its answer goes back through
    /// [`RouteTable::sandbox_reply`] on session `id` of `client`.
    SandboxRequest { client: ClientKey, id: u32, request: SandboxRequest },
}

/// What a session is, for ending it when its client leaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SessionKind {
    Exec,
    Fs,
}

struct Route {
    /// The owning client; `None` once it is gone.
    owner: Option<ClientKey>,
    kind: SessionKind,
    /// Bytes written to the client and not yet credited.
    uncredited: u32,
}

/// What the table knows of one connected client.
struct ClientState {
    generation: u64,
    /// Wire bytes queued and not yet written to the client.
    queued_bytes: usize,
    /// Sessions of this client whose final frame has not been written yet.
    open_sessions: usize,
}

impl ClientState {
    /// A well-behaved agent never queues more than one window per open
    /// session (it waits for credit, and credit follows writing).
    fn limit(&self) -> usize {
        self.open_sessions.max(1) * INITIAL_WINDOW as usize + CLIENT_QUEUE_SLACK
    }
}

/// See the module docs.
pub(crate) struct RouteTable {
    clock: Arc<dyn Clock>,
    counters: Arc<RelayCounters>,
    warnings: PeerWarnings,
    slots: Vec<Option<ClientState>>,
    /// The generation each slot's next client gets.
    next_generation: Vec<u64>,
    sessions: HashMap<u32, Route>,
    guest_attached: bool,
    /// The agent's `Ready`, held until clients may have it.
    pending_ready: Option<Frame>,
    ready_at: Option<Duration>,
    last_heartbeat: Option<Duration>,
    last_activity: Duration,
    /// Lifecycle's paused state, mirrored for the watchdog's rules.
    paused: bool,
    discarded_frames: u64,
    closed: bool,
}

impl RouteTable {
    /// An empty table reading time from `clock`, keeping figures in `counters`.
    pub(crate) fn new(clock: Arc<dyn Clock>, counters: Arc<RelayCounters>) -> RouteTable {
        RouteTable {
            last_activity: clock.now(),
            warnings: PeerWarnings::new(clock.clone()),
            clock,
            counters,
            slots: (0..MAX_CLIENTS).map(|_| None).collect(),
            next_generation: vec![0; MAX_CLIENTS],
            sessions: HashMap::new(),
            guest_attached: false,
            pending_ready: None,
            ready_at: None,
            last_heartbeat: None,
            paused: false,
            discarded_frames: 0,
            closed: false,
        }
    }

    /// Counts as activity for the idle timeout.
    pub(crate) fn touch(&mut self) {
        self.last_activity = self.clock.now();
    }

    /// Liveness and use, for the watchdog.
    pub(crate) fn activity(&self) -> Activity {
        Activity {
            ready_at: self.ready_at,
            last_heartbeat: self.last_heartbeat,
            last_activity: self.last_activity,
            open_sessions: self.sessions.values().filter(|r| r.owner.is_some()).count(),
            paused: self.paused,
        }
    }

    /// Lifecycle paused or resumed the guest. A resume restarts the idle
    /// and heartbeat clocks: a frozen agent could not beat, and a paused
    /// sandbox was not idle by its own choice.
    pub(crate) fn set_paused(&mut self, paused: bool) {
        self.paused = paused;
        if !paused {
            self.touch();
            if self.ready_at.is_some() {
                self.last_heartbeat = Some(self.clock.now());
            }
        }
    }

    /// Lifecycle's answer to `client`'s request on session `id`: one
    /// terminal `SandboxReply`, counted like any item queued for it.
    pub(crate) fn sandbox_reply(&mut self, client: ClientKey, id: u32, result: Result<(), String>) -> Vec<Action> {
        let Ok(frame) = Frame::message(id, Flags::TERMINAL, &Message::SandboxReply(result)) else {
            return Vec::new();
        };
        let Some(state) = self.state_of(client) else {
            return Vec::new();
        };
        state.queued_bytes += frame.wire_len();
        vec![Action::ToClient(client, ToClient { frame, fd: None })]
    }

    /// The agent channel is attached (client frames may go to the guest).
    pub(crate) fn attach_guest(&mut self) {
        self.guest_attached = true;
    }

    /// The agent channel's writer is gone: client frames have nowhere to go.
    pub(crate) fn detach_guest(&mut self) {
        self.guest_attached = false;
    }

    fn state_of(&mut self, client: ClientKey) -> Option<&mut ClientState> {
        self.slots.get_mut(client.slot)?.as_mut().filter(|s| s.generation == client.generation)
    }

    fn is_live(&self, client: ClientKey) -> bool {
        self.slots.get(client.slot).and_then(|s| s.as_ref()).is_some_and(|s| s.generation == client.generation)
    }

    /// A client connected: the first free slot with a generation whose id
    /// range holds no session (a gone client's session may still be open in
    /// the guest), or `None` (refused) when there is none or the relay is
    /// closed.
    pub(crate) fn admit(&mut self) -> Option<ClientKey> {
        if self.closed {
            return None;
        }
        for k in 0..self.slots.len() {
            if self.slots[k].is_some() {
                continue;
            }
            for _ in 0..SLOT_GENERATIONS {
                let generation = self.next_generation[k];
                self.next_generation[k] += 1;
                let range = slot_range(k, generation);
                if !self.sessions.keys().any(|id| range.contains(*id)) {
                    self.slots[k] = Some(ClientState { generation, queued_bytes: 0, open_sessions: 0 });
                    self.touch();
                    return Some(ClientKey { slot: k, generation });
                }
            }
        }
        self.warnings
            .warn("client refused", || tracing::warn!("refused a client: all {MAX_CLIENTS} client slots are in use"));
        None
    }

    /// Accepting a connection failed.
    pub(crate) fn accept_failed(&mut self, error: &std::io::Error) {
        self.warnings.warn("accept failed", || tracing::warn!(%error, "accept on agent.sock failed"));
    }

    /// A frame from `client` (charged to it while it travels). Frames of a
    /// client already gone are dropped.
    pub(crate) fn client_frame(&mut self, client: ClientKey, item: ToGuest) -> Vec<Action> {
        if !self.is_live(client) {
            return Vec::new();
        }
        self.touch();
        let frame = &item.frame;
        let range = client.range();
        if frame.flags.contains(Flags::FD) {
            // A client's descriptors never reach the guest.
            return self.disconnect(client, "dropped: clients may not send descriptors");
        }
        if frame.id == CONTROL_ID {
            if frame.flags.contains(Flags::SHUTDOWN) {
                return vec![Action::Terminate(Terminate::new(
                    TerminationReason::ShutdownRequested,
                    "a client asked the sandbox to stop",
                ))];
            }
            return match frame.decode_body() {
                Ok(Message::Touch) => Vec::new(),
                _ => self.disconnect(client, "dropped: unexpected control frame"),
            };
        }
        if !range.contains(frame.id) {
            let why = format!(
                "dropped: session id {} is outside the client's range {}..={}",
                frame.id, range.id_start, range.id_end
            );
            return self.disconnect(client, &why);
        }
        // A request is decoded once, here; the guest's frames never are.
        let request = frame.flags.contains(Flags::SESSION_START).then(|| frame.decode_body());
        if let Some(Ok(Message::SandboxRequest(request))) = request {
            // For the sandbox process, never the guest: open until its reply
            // is written, and bounded like any session.
            let id = frame.id;
            let Some(state) = self.state_of(client) else {
                return Vec::new();
            };
            if state.open_sessions >= MAX_SESSIONS_PER_CLIENT {
                return self.refuse_session(client, id, too_many_sessions());
            }
            state.open_sessions += 1;
            return vec![Action::SandboxRequest { client, id, request }];
        }
        if !self.guest_attached {
            return self.disconnect(client, "dropped: the guest is not attached");
        }
        if let Some(request) = request {
            let kind = match request {
                Ok(Message::ExecRequest(_)) => SessionKind::Exec,
                Ok(Message::FsRequest(_)) => SessionKind::Fs,
                _ => {
                    return self
                        .disconnect(client, &format!("dropped: session {} did not start with a request", frame.id))
                }
            };
            if self.sessions.contains_key(&frame.id) {
                return self.disconnect(client, &format!("dropped: session id {} is already in use", frame.id));
            }
            let id = frame.id;
            if self.paused {
                // Its frozen agent would leave the client waiting until a resume.
                return self.refuse_session(client, id, "the sandbox is paused; resume it first".into());
            }
            let Some(state) = self.state_of(client) else {
                return Vec::new();
            };
            if state.open_sessions >= MAX_SESSIONS_PER_CLIENT {
                return self.refuse_session(client, id, too_many_sessions());
            }
            state.open_sessions += 1;
            self.sessions.insert(id, Route { owner: Some(client), kind, uncredited: 0 });
            if kind == SessionKind::Exec {
                crate::kill_point!("sandbox-during-exec");
            }
        }
        vec![Action::ToGuest(item)]
    }

    /// Answers a session the client may not open (it has
    /// [`MAX_SESSIONS_PER_CLIENT`] open, or the sandbox is paused) with a
    /// terminal `SessionAborted`; the request never reaches the guest.
    fn refuse_session(&mut self, client: ClientKey, id: u32, reason: String) -> Vec<Action> {
        self.counters.session_refused();
        let Ok(frame) = Frame::message(id, Flags::TERMINAL, &Message::SessionAborted { reason }) else {
            return Vec::new();
        };
        let Some(state) = self.state_of(client) else {
            return Vec::new();
        };
        // Counted as open until its terminal frame is written, like any session.
        state.open_sessions += 1;
        state.queued_bytes += frame.wire_len();
        vec![Action::ToClient(client, ToClient { frame, fd: None })]
    }

    /// `client`'s writer has written `written` to its socket: the bytes
    /// leave its queue, a terminal frame closes its session's count, and the
    /// session earns credit.
    pub(crate) fn client_wrote(&mut self, client: ClientKey, written: Written) -> Vec<Action> {
        let terminal = written.flags.contains(Flags::TERMINAL);
        // A gone client's writer still drains what was queued; its
        // accounting went with its slot, the sessions' credit did not.
        if let Some(state) = self.state_of(client) {
            state.queued_bytes = state.queued_bytes.saturating_sub(written.wire_len);
            if terminal && written.id != CONTROL_ID {
                state.open_sessions = state.open_sessions.saturating_sub(1);
            }
        }
        if written.id == CONTROL_ID || terminal {
            return Vec::new();
        }
        let Some(route) = self.sessions.get_mut(&written.id) else {
            return Vec::new();
        };
        route.uncredited = route.uncredited.saturating_add(written.wire_len as u32);
        if route.uncredited < CREDIT_BATCH {
            return Vec::new();
        }
        vec![Action::Credit { id: written.id, bytes: std::mem::take(&mut route.uncredited) }]
    }

    /// `client`'s queue can no longer be written to (its writer has ended
    /// before the table learnt of it): it is disconnected, and the frame
    /// that did not reach it credited like any frame of a gone client.
    pub(crate) fn undeliverable(&mut self, client: ClientKey, frame: &Frame) -> Vec<Action> {
        let mut actions = self.disconnect(client, "dropped: its writer stopped");
        if !frame.flags.contains(Flags::TERMINAL) {
            actions.extend(self.credit(frame.id, frame.wire_len() as u32));
        }
        actions
    }

    /// `client`'s connection ended (or it must go): frees its slot and ends
    /// its open sessions in the guest — exec sessions by SIGKILL, file
    /// sessions by `SessionAborted` (the agent drops a half-written file).
    /// Their routes stay until the guest's final frame, no longer counted as
    /// activity.
    pub(crate) fn disconnect(&mut self, client: ClientKey, why: &str) -> Vec<Action> {
        if !self.is_live(client) {
            return Vec::new();
        }
        self.slots[client.slot] = None;
        self.touch();
        let mut actions = Vec::new();
        for (id, route) in self.sessions.iter_mut() {
            if route.owner != Some(client) {
                continue;
            }
            route.owner = None;
            let end = match route.kind {
                SessionKind::Exec => Message::ExecSignal { signal: libc::SIGKILL },
                SessionKind::Fs => Message::SessionAborted { reason: "the client disconnected".into() },
            };
            if let Ok(frame) = Frame::message(*id, Flags::NONE, &end) {
                actions.push(Action::ToGuest(ToGuest::own(frame)));
            }
        }
        tracing::debug!(slot = client.slot, why, ended_sessions = actions.len(), "client disconnected");
        actions.push(Action::CloseClient(client));
        actions
    }

    /// Credit for session `id`, if the table knows it.
    fn credit(&self, id: u32, bytes: u32) -> Option<Action> {
        (bytes > 0 && self.sessions.contains_key(&id)).then_some(Action::Credit { id, bytes })
    }

    /// A frame from the guest, with the descriptor that came with it.
    pub(crate) fn guest_frame(&mut self, frame: Frame, descriptor: Descriptor) -> Vec<Action> {
        let fd = if frame.flags.contains(Flags::FD) { self.check_descriptor(frame.id, descriptor) } else { None };
        if frame.id == CONTROL_ID {
            return self.control_from_guest(frame);
        }
        // Any frame of a ready agent shows it alive, as a heartbeat does:
        // a busy agent's heartbeats are not what keeps it from being
        // judged unresponsive, and it may send them less often.
        if self.ready_at.is_some() {
            self.last_heartbeat = Some(self.clock.now());
        }
        if frame.flags.contains(Flags::FD) && fd.is_none() {
            // Without its descriptor the frame would tell the client a lie;
            // its window bytes go back to the agent.
            return self.credit(frame.id, frame.wire_len() as u32).into_iter().collect();
        }
        self.route_from_guest(frame, fd)
    }

    fn check_descriptor(&mut self, session: u32, descriptor: Descriptor) -> Option<OwnedFd> {
        match descriptor {
            Descriptor::Pipe(fd) => Some(fd),
            Descriptor::NotAPipe => {
                self.warnings.warn("bad descriptor", || {
                    tracing::warn!(session, "the agent sent a descriptor that is not a pipe's read end; dropped")
                });
                None
            }
            Descriptor::None => {
                self.warnings.warn("missing descriptor", || {
                    tracing::warn!(session, "the agent sent an FD frame without a descriptor; dropped")
                });
                None
            }
        }
    }

    fn control_from_guest(&mut self, frame: Frame) -> Vec<Action> {
        match frame.decode_body() {
            Ok(Message::Ready(ready)) => {
                if self.ready_at.is_some() {
                    return Vec::new();
                }
                let now = self.clock.now();
                self.ready_at = Some(now);
                self.last_heartbeat = Some(now);
                self.last_activity = now;
                if let Err(e) = alcove_protocol::handshake::check_version(ready.clone()) {
                    return vec![Action::Terminate(Terminate::new(TerminationReason::InternalError, e.to_string()))];
                }
                // Clients get this frame once Lifecycle has recorded Running.
                self.pending_ready = Some(frame);
                vec![Action::AgentReady(ready)]
            }
            Ok(Message::Heartbeat { .. }) => {
                self.last_heartbeat = Some(self.clock.now());
                Vec::new()
            }
            Ok(other) => {
                tracing::debug!(?other, "ignored control message from the agent");
                Vec::new()
            }
            Err(e) => {
                self.warnings.warn(
                    "bad control frame",
                    || tracing::warn!(error = %e, "undecodable control frame from the agent"),
                );
                Vec::new()
            }
        }
    }

    fn route_from_guest(&mut self, frame: Frame, fd: Option<OwnedFd>) -> Vec<Action> {
        let id = frame.id;
        let terminal = frame.flags.contains(Flags::TERMINAL);
        let wire = frame.wire_len();
        let client = match self.sessions.get(&id).map(|r| r.owner) {
            Some(Some(client)) if self.is_live(client) => client,
            Some(_) => {
                self.discarded_frames += 1;
                if terminal {
                    self.end_session(id);
                    return Vec::new();
                }
                // Nobody will read this frame; credit it so the agent can
                // finish the (already killed) session instead of waiting
                // forever.
                return self.credit(id, wire as u32).into_iter().collect();
            }
            None => {
                // Not a session: nothing to credit.
                self.discarded_frames += 1;
                return Vec::new();
            }
        };
        if terminal {
            self.end_session(id);
        }
        let Some(state) = self.state_of(client) else {
            return Vec::new();
        };
        let queued = state.queued_bytes + wire;
        if queued <= state.limit() {
            state.queued_bytes = queued;
            self.counters.client_queued(queued);
            return vec![Action::ToClient(client, ToClient { frame, fd })];
        }
        self.counters.client_over_queue();
        let why = "dropped: its queue exceeded what flow control allows";
        self.warnings.warn("client over its queue", || {
            tracing::warn!(slot = client.slot, session = id, queued, why, "disconnecting client")
        });
        let mut actions = self.disconnect(client, why);
        // The frame that did not fit is the disconnected client's last:
        // credit it like any frame of a gone client.
        if !terminal {
            actions.extend(self.credit(id, wire as u32));
        }
        actions
    }

    /// The guest's terminal frame of session `id` has arrived.
    fn end_session(&mut self, id: u32) {
        if self.sessions.remove(&id).is_some() {
            self.touch();
        }
    }

    /// Lifecycle has recorded Running: the agent's `Ready`, for the
    /// clients' handshakes (once).
    pub(crate) fn open_to_clients(&mut self) -> Option<Frame> {
        self.pending_ready.take()
    }

    /// The relay closes: sessions still open get a final `SessionAborted`
    /// so their clients do not hang, and every client's queue is closed
    /// (each writer delivers what is queued, then ends).
    pub(crate) fn close(&mut self) -> Vec<Action> {
        if self.closed {
            return Vec::new();
        }
        self.closed = true;
        let mut actions = Vec::new();
        let open: Vec<(u32, Option<ClientKey>)> = self.sessions.drain().map(|(id, r)| (id, r.owner)).collect();
        for (id, owner) in open {
            let Some(client) = owner else {
                continue;
            };
            let reason = "the sandbox stopped before the session ended".to_string();
            let Ok(frame) = Frame::message(id, Flags::TERMINAL, &Message::SessionAborted { reason }) else {
                continue;
            };
            if let Some(state) = self.state_of(client) {
                state.queued_bytes += frame.wire_len();
                actions.push(Action::ToClient(client, ToClient { frame, fd: None }));
            }
        }
        for slot in 0..self.slots.len() {
            if let Some(state) = self.slots[slot].take() {
                actions.push(Action::CloseClient(ClientKey { slot, generation: state.generation }));
            }
        }
        self.warnings.flush();
        if self.discarded_frames > 0 {
            tracing::info!(
                frames = self.discarded_frames,
                "frames for sessions of disconnected clients were discarded"
            );
        }
        actions
    }
}

#[cfg(test)]
mod tests;
