//! The Relay actor: agent.sock, client slots, frame routing, sessions,
//! flow control and activity.
//!
//! The actor owns the [`RouteTable`] and is the only code that touches it.
//! The socket tasks hold no routing state: they report what happens as
//! [`RelayEvent`]s (a connection, a frame read, a frame written, a client
//! gone), which reach the actor through its own channels
//! ([`StreamHandler`]), and the actor carries out the [`Action`]s the table
//! returns — queueing items for a client's writer or the guest's, owing
//! credit, closing a client, telling Lifecycle. The table is never
//! borrowed by two pieces of code: there is no shared cell to borrow.
//!
//! Files:
//! - [`route_table`]: the pure routing table and its rules (ids, sessions,
//!   credit, queue bounds), unit-tested without sockets or tasks;
//! - [`client_io`]: accepting on agent.sock, each client's reader and writer;
//! - [`guest_io`]: the agent channel's reader and writer;
//! - [`flow`]: the budgets and the credit ledger the tasks share, and the
//!   counters behind [`RelayStats`](flow::RelayStats);
//! - [`socket`]: binding agent.sock;
//! - `route_probe` (feature `fuzzing` only): the table behind a public
//!   handle, for the `route` fuzz target.
//!
//! A frame from a client: its reader charges it to the client's budget →
//! [`RelayEvent::ClientFrame`] → [`RouteTable::client_frame`] (range check,
//! session registration) → [`Action::ToGuest`] → the guest writer. A frame
//! from the guest: the guest reader → [`RelayEvent::GuestFrame`] →
//! [`RouteTable::guest_frame`] (route by id, queue bound) →
//! [`Action::ToClient`] → the client's writer → [`RelayEvent::ClientWrote`]
//! → [`RouteTable::client_wrote`] → [`Action::Credit`] → the guest writer.
//!
//! A client's disconnect ends its sessions in the guest: exec sessions by
//! SIGKILL, file sessions by `SessionAborted` (an upload cut short is
//! discarded, not completed). Every bound on memory is stated in [`flow`]
//! and [`route_table`].

mod client_io;
pub mod flow;
mod guest_io;
#[cfg(feature = "fuzzing")]
pub mod route_probe;
mod route_table;
mod socket;
#[cfg(test)]
mod tests;

pub use route_table::MAX_CLIENTS;
pub use socket::{bind_socket, RelayError};

use crate::clock::Clock;
use crate::messages::{
    AgentReady, AttachGuest, CloseRelay, GetActivity, OpenToClients, SendShutdown, SetPaused, Terminate, Touch,
};
use crate::store::TerminationReason;
use actix::prelude::*;
use alcove_protocol::async_io::FrameReader;
use alcove_protocol::fdpass::FdReadHalf;
use alcove_protocol::{Flags, Frame, Message, SandboxRequest, CONTROL_ID};
use client_io::ClientTask;
use flow::{CreditLedger, RelayCounters, ToGuest};
use route_table::{Action, ClientKey, Descriptor, RouteTable, ToClient, Written};
use std::path::PathBuf;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, watch};

/// Events from the host side (accept and client tasks, the guest writer)
/// queued for the actor at most. Each client's frames are also bounded by
/// its budget; this bounds the rest (connections, write reports).
const HOST_EVENTS_IN_FLIGHT: usize = 256;
/// How long closing waits at most for the guest's reader to read what the
/// guest wrote before it ended (it stops at the channel's end, or when
/// nothing more is readable). Part of [`crate::config::ExitBudget::HANDOFF`];
/// reached only when routing those frames is held up (a stalled client).
const GUEST_DRAIN: std::time::Duration = std::time::Duration::from_millis(250);

/// What the relay's tasks report to the actor.
pub(crate) enum RelayEvent {
    /// A connection on agent.sock.
    Accepted(UnixStream),
    /// Accepting a connection failed.
    AcceptFailed(std::io::Error),
    /// A client's frame, charged to its budget.
    ClientFrame(ClientKey, ToGuest),
    /// A client's writer wrote an item to its socket.
    ClientWrote(ClientKey, Written),
    /// A client's connection ended, and why.
    ClientGone(ClientKey, String),
    /// A frame from the guest and the descriptor that came with it.
    GuestFrame(Frame, Descriptor),
    /// The agent channel broke framing.
    GuestBroken(String),
    /// The agent channel's writer has ended.
    GuestWriterGone,
    /// The agent channel's reader has ended: every frame the guest wrote
    /// has been reported before this.
    GuestReaderGone,
}

/// The messages the Relay sends, and to whom (given at construction).
pub struct RelayPeers {
    /// Lifecycle: the agent is ready.
    pub agent_ready: Recipient<AgentReady>,
    /// Lifecycle: a cause to end the sandbox (a client's SHUTDOWN flag, a
    /// broken agent channel, an unusable socket).
    pub terminate: Recipient<Terminate>,
    /// Lifecycle: a client's pause or resume.
    pub set_paused: Recipient<SetPaused>,
}

/// The senders of the items queued for each client the table holds: one
/// is added when the table admits a client and removed when an action
/// closes it, both under the same [`ClientKey`], so a stale key finds
/// nothing.
#[derive(Default)]
struct ClientQueues(Vec<Option<(u64, mpsc::UnboundedSender<ToClient>)>>);

impl ClientQueues {
    fn insert(&mut self, key: ClientKey, tx: mpsc::UnboundedSender<ToClient>) {
        if self.0.len() <= key.slot {
            self.0.resize_with(key.slot + 1, || None);
        }
        self.0[key.slot] = Some((key.generation, tx));
    }

    /// Queues `item`; gives it back when the client's writer is gone.
    fn send(&self, key: ClientKey, item: ToClient) -> Result<(), ToClient> {
        match self.0.get(key.slot) {
            Some(Some((generation, tx))) if *generation == key.generation => tx.send(item).map_err(|e| e.0),
            _ => Err(item),
        }
    }

    fn remove(&mut self, key: ClientKey) {
        if let Some(entry) = self.0.get_mut(key.slot) {
            if entry.as_ref().is_some_and(|(generation, _)| *generation == key.generation) {
                *entry = None;
            }
        }
    }
}

/// A channel's receiving end as a [`futures_core::Stream`], for
/// [`AsyncContext::add_stream`].
struct Inbox(mpsc::Receiver<RelayEvent>);

impl futures_core::Stream for Inbox {
    type Item = RelayEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<RelayEvent>> {
        self.0.poll_recv(cx)
    }
}

/// Owns agent.sock and routes frames.
pub struct Relay {
    table: RouteTable,
    peers: RelayPeers,
    clients: ClientQueues,
    /// The guest writer's queue, once the guest is attached.
    guest: Option<mpsc::UnboundedSender<ToGuest>>,
    /// Credit owed to the agent, drained by the guest writer.
    credits: Rc<CreditLedger>,
    counters: Arc<RelayCounters>,
    /// Host-side events: cloned into every task but the guest reader.
    events: mpsc::Sender<RelayEvent>,
    inbox: Option<Inbox>,
    /// The agent's `Ready`, once clients may have it.
    ready: watch::Sender<Option<Frame>>,
    closing: watch::Sender<bool>,
    /// True while the guest's reader may still report frames.
    guest_reading: watch::Sender<bool>,
    listener: Option<std::os::unix::net::UnixListener>,
    socket_path: PathBuf,
}

impl Relay {
    /// A relay for an already bound socket (see [`bind_socket`]), keeping
    /// its figures in `counters`.
    pub fn new(
        listener: std::os::unix::net::UnixListener,
        socket_path: PathBuf,
        clock: Arc<dyn Clock>,
        peers: RelayPeers,
        counters: Arc<RelayCounters>,
    ) -> Relay {
        let (events, inbox) = mpsc::channel(HOST_EVENTS_IN_FLIGHT);
        Relay {
            table: RouteTable::new(clock, counters.clone()),
            peers,
            clients: ClientQueues::default(),
            guest: None,
            credits: Rc::new(CreditLedger::default()),
            counters,
            events,
            inbox: Some(Inbox(inbox)),
            ready: watch::channel(None).0,
            closing: watch::channel(false).0,
            guest_reading: watch::channel(false).0,
            listener: Some(listener),
            socket_path,
        }
    }

    /// Carries out the table's actions, in order.
    fn carry_out(&mut self, actions: Vec<Action>, ctx: &mut Context<Self>) {
        for action in actions {
            match action {
                Action::ToClient(key, item) => {
                    if let Err(item) = self.clients.send(key, item) {
                        let more = self.table.undeliverable(key, &item.frame);
                        self.carry_out(more, ctx);
                    }
                }
                Action::ToGuest(item) => {
                    let sent = self.guest.as_ref().is_some_and(|g| g.send(item).is_ok());
                    if !sent && self.guest.take().is_some() {
                        self.table.detach_guest();
                    }
                }
                Action::Credit { id, bytes } => self.credits.owe(id, bytes),
                Action::CloseClient(key) => self.clients.remove(key),
                Action::AgentReady(ready) => self.peers.agent_ready.do_send(AgentReady { ready }),
                Action::Terminate(cause) => self.peers.terminate.do_send(cause),
                Action::SandboxRequest { client, id, request } => {
                    let paused = request == SandboxRequest::Pause;
                    let lifecycle = self.peers.set_paused.clone();
                    let asked = async move { lifecycle.send(SetPaused { paused }).await };
                    ctx.spawn(asked.into_actor(self).map(move |answer, this, ctx| {
                        let result = answer.unwrap_or_else(|_| Err("the sandbox is stopping".into()));
                        if result.is_ok() {
                            this.table.set_paused(paused);
                        }
                        let actions = this.table.sandbox_reply(client, id, result);
                        this.carry_out(actions, ctx);
                    }));
                }
            }
        }
    }

    /// Gives a connection a slot and starts serving it, or refuses it.
    fn admit(&mut self, stream: UnixStream) {
        let Some(key) = self.table.admit() else {
            return;
        };
        let (tx, queue) = mpsc::unbounded_channel();
        let kept = tx.downgrade();
        self.clients.insert(key, tx);
        let task = ClientTask {
            key,
            queue,
            kept,
            ready: self.ready.subscribe(),
            closing: self.closing.subscribe(),
            events: self.events.clone(),
            counters: self.counters.clone(),
        };
        actix::spawn(client_io::serve_client(stream, task));
    }

    fn attach_guest(&mut self, channel: std::os::unix::net::UnixStream, ctx: &mut Context<Self>) {
        let stream = channel.set_nonblocking(true).and_then(|()| UnixStream::from_std(channel));
        let stream = match stream {
            Ok(s) => s,
            Err(e) => {
                self.peers.terminate.do_send(Terminate::new(
                    TerminationReason::InternalError,
                    format!("cannot use the agent channel: {e}"),
                ));
                return;
            }
        };
        let (read, write) = stream.into_split();
        // Unbounded in frames, bounded in bytes: each client's frames by its
        // budget, the relay's own by the sessions they end.
        let (tx, queue) = mpsc::unbounded_channel();
        self.guest = Some(tx);
        self.table.attach_guest();
        self.guest_reading.send_replace(true);
        actix::spawn(guest_io::guest_writer(write, queue, self.credits.clone(), self.events.clone()));
        let (guest_events, guest_inbox) = mpsc::channel(guest_io::GUEST_FRAMES_IN_FLIGHT);
        ctx.add_stream(Inbox(guest_inbox));
        let reader = FrameReader::new(FdReadHalf::new(read), 256 * 1024);
        actix::spawn(guest_io::guest_reader(reader, guest_events, self.closing.subscribe()));
    }
}

impl Actor for Relay {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        if let Some(inbox) = self.inbox.take() {
            ctx.add_stream(inbox);
        }
        let Some(std_listener) = self.listener.take() else {
            return;
        };
        match UnixListener::from_std(std_listener) {
            Ok(listener) => {
                actix::spawn(client_io::accept_loop(listener, self.events.clone(), self.closing.subscribe()));
            }
            Err(e) => self.peers.terminate.do_send(Terminate::new(
                TerminationReason::InternalError,
                format!("cannot serve {}: {e}", self.socket_path.display()),
            )),
        }
    }
}

impl StreamHandler<RelayEvent> for Relay {
    fn handle(&mut self, event: RelayEvent, ctx: &mut Self::Context) {
        let actions = match event {
            RelayEvent::Accepted(stream) => {
                self.admit(stream);
                return;
            }
            RelayEvent::AcceptFailed(e) => {
                self.table.accept_failed(&e);
                return;
            }
            RelayEvent::ClientFrame(key, item) => self.table.client_frame(key, item),
            RelayEvent::ClientWrote(key, written) => self.table.client_wrote(key, written),
            RelayEvent::ClientGone(key, why) => self.table.disconnect(key, &why),
            RelayEvent::GuestFrame(frame, descriptor) => self.table.guest_frame(frame, descriptor),
            RelayEvent::GuestBroken(e) => {
                self.peers.terminate.do_send(Terminate::new(
                    TerminationReason::AgentUnresponsive,
                    format!("the agent sent an unreadable frame: {e}"),
                ));
                return;
            }
            RelayEvent::GuestWriterGone => {
                self.guest = None;
                self.table.detach_guest();
                return;
            }
            RelayEvent::GuestReaderGone => {
                self.guest_reading.send_replace(false);
                return;
            }
        };
        self.carry_out(actions, ctx);
    }

    /// The actor keeps a sender of its host channel, and the guest's ends
    /// with the guest: neither end stops the relay.
    fn finished(&mut self, _: &mut Self::Context) {}
}

impl Handler<AttachGuest> for Relay {
    type Result = ();

    fn handle(&mut self, msg: AttachGuest, ctx: &mut Self::Context) {
        self.attach_guest(msg.channel, ctx);
    }
}

impl Handler<OpenToClients> for Relay {
    type Result = ();

    fn handle(&mut self, _: OpenToClients, _: &mut Self::Context) {
        if let Some(frame) = self.table.open_to_clients() {
            self.ready.send_replace(Some(frame));
        }
    }
}

impl Handler<GetActivity> for Relay {
    type Result = MessageResult<GetActivity>;

    fn handle(&mut self, _: GetActivity, _: &mut Self::Context) -> Self::Result {
        MessageResult(self.table.activity())
    }
}

impl Handler<Touch> for Relay {
    type Result = ();

    fn handle(&mut self, _: Touch, _: &mut Self::Context) {
        self.table.touch();
    }
}

impl Handler<SendShutdown> for Relay {
    type Result = bool;

    fn handle(&mut self, msg: SendShutdown, _: &mut Self::Context) -> bool {
        let grace_ms = u32::try_from(msg.grace.as_millis()).unwrap_or(u32::MAX);
        let (Some(guest), Ok(frame)) =
            (&self.guest, Frame::message(CONTROL_ID, Flags::SHUTDOWN, &Message::Shutdown { grace_ms }))
        else {
            return false;
        };
        guest.send(ToGuest::own(frame)).is_ok()
    }
}

impl Handler<CloseRelay> for Relay {
    type Result = ResponseActFuture<Self, ()>;

    /// Stops accepting at once; then, once the guest's last frames are
    /// routed (its reader has read all there is and ended, or
    /// [`GUEST_DRAIN`] has passed), ends
    /// the sessions still open and lets each client's writer drain and
    /// close. The guest has usually just ended, so its final frames (a
    /// command's exit) are in the channel: they go to their clients rather
    /// than being replaced by `SessionAborted`.
    fn handle(&mut self, _: CloseRelay, _: &mut Self::Context) -> Self::Result {
        self.closing.send_replace(true);
        let mut reading = self.guest_reading.subscribe();
        let drained = async move {
            let _ = tokio::time::timeout(GUEST_DRAIN, reading.wait_for(|reading| !reading)).await;
        };
        Box::pin(drained.into_actor(self).map(|(), this, ctx| {
            let actions = this.table.close();
            this.carry_out(actions, ctx);
        }))
    }
}
