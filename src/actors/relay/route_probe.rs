//! A public handle on the pure [`RouteTable`], for the `route` fuzz target
//! (crate `alcove-fuzz`). Compiled only with the `fuzzing` feature: the
//! table stays crate-private in every build that ships.
//!
//! The probe forwards each event to the table unchanged and turns the
//! [`Action`]s it returns into plain [`Effect`]s a fuzzer can check against
//! a model. It adds no rule of its own: what the fuzzer proves of the probe
//! holds of the table the relay actor drives.

use super::flow::{GuestBudget, RelayCounters, ToGuest};
use super::route_table::{Action, ClientKey, Descriptor, RouteTable, Written};
use crate::clock::{Clock, ManualClock};
use crate::messages::Activity;
use alcove_protocol::{Frame, Handshake};
use std::os::fd::OwnedFd;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

/// One connected client of the probe's table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ProbeClient(ClientKey);

impl ProbeClient {
    /// The ids this client may use.
    pub fn range(self) -> Handshake {
        self.0.range()
    }

    /// The slot the client holds.
    pub fn slot(self) -> usize {
        self.0.slot
    }
}

/// The descriptor that came with a guest frame.
#[derive(Debug)]
pub enum ProbeDescriptor {
    /// None came.
    None,
    /// A pipe's read end (what a guest may hand out).
    Pipe(OwnedFd),
    /// Something else, already closed by the reader.
    NotAPipe,
}

/// What the table asked the relay to do, in order.
#[derive(Debug)]
pub enum Effect {
    /// A frame queued for a client.
    ToClient {
        /// Whose writer gets it.
        client: ProbeClient,
        /// The frame.
        frame: Frame,
        /// Whether a descriptor travels with it.
        fd: bool,
    },
    /// A frame for the guest.
    ToGuest {
        /// The frame.
        frame: Frame,
        /// The relay made it (a kill, an abort) rather than forwarding a
        /// client's.
        own: bool,
    },
    /// Credit owed to the agent.
    Credit {
        /// The session.
        id: u32,
        /// Bytes of window given back.
        bytes: u32,
    },
    /// The client's queue closes.
    CloseClient(ProbeClient),
    /// Lifecycle is told the agent is ready.
    AgentReady,
    /// Lifecycle is given a cause to end the sandbox.
    Terminate,
    /// Lifecycle is asked to pause (or resume) the guest; the answer goes
    /// back through [`RouteProbe::sandbox_reply`].
    SandboxRequest {
        /// Who asked.
        client: ProbeClient,
        /// The request's session.
        id: u32,
        /// Pause rather than resume.
        pause: bool,
    },
}

/// The table, a manual clock, and nothing else.
pub struct RouteProbe {
    table: RouteTable,
    clock: Arc<ManualClock>,
    /// What client frames are charged to, as a client reader charges them.
    budget: Rc<GuestBudget>,
}

impl Default for RouteProbe {
    fn default() -> Self {
        RouteProbe::new()
    }
}

impl RouteProbe {
    /// An empty table at time zero.
    pub fn new() -> RouteProbe {
        let clock = Arc::new(ManualClock::default());
        let counters = Arc::new(RelayCounters::default());
        let table = RouteTable::new(clock.clone() as Arc<dyn Clock>, counters.clone());
        RouteProbe { table, clock, budget: Rc::new(GuestBudget::new(counters)) }
    }

    /// Moves the table's clock on.
    pub fn advance(&self, by: Duration) {
        self.clock.advance(by);
    }

    /// The agent channel is attached.
    pub fn attach_guest(&mut self) {
        self.table.attach_guest();
    }

    /// The agent channel's writer is gone.
    pub fn detach_guest(&mut self) {
        self.table.detach_guest();
    }

    /// A client connects: its key, or `None` when refused.
    pub fn admit(&mut self) -> Option<ProbeClient> {
        self.table.admit().map(ProbeClient)
    }

    /// A frame from `client`, as its reader would report it.
    pub fn client_frame(&mut self, client: ProbeClient, frame: Frame) -> Vec<Effect> {
        effects(self.table.client_frame(client.0, ToGuest::charged(frame, &self.budget)))
    }

    /// `client`'s writer wrote `frame`.
    pub fn client_wrote(&mut self, client: ProbeClient, frame: &Frame) -> Vec<Effect> {
        effects(self.table.client_wrote(client.0, Written::of(frame)))
    }

    /// `client`'s writer could not deliver `frame`.
    pub fn undeliverable(&mut self, client: ProbeClient, frame: &Frame) -> Vec<Effect> {
        effects(self.table.undeliverable(client.0, frame))
    }

    /// `client`'s connection ended.
    pub fn disconnect(&mut self, client: ProbeClient) -> Vec<Effect> {
        effects(self.table.disconnect(client.0, "the fuzzer hung up"))
    }

    /// A frame from the guest, with what came with it.
    pub fn guest_frame(&mut self, frame: Frame, descriptor: ProbeDescriptor) -> Vec<Effect> {
        let descriptor = match descriptor {
            ProbeDescriptor::None => Descriptor::None,
            ProbeDescriptor::Pipe(fd) => Descriptor::Pipe(fd),
            ProbeDescriptor::NotAPipe => Descriptor::NotAPipe,
        };
        effects(self.table.guest_frame(frame, descriptor))
    }

    /// Lifecycle answered a [`Effect::SandboxRequest`]; on success the
    /// relay mirrors the new state first, as the actor does.
    pub fn sandbox_reply(&mut self, client: ProbeClient, id: u32, pause: bool, ok: bool) -> Vec<Effect> {
        if ok {
            self.table.set_paused(pause);
        }
        let result = if ok { Ok(()) } else { Err("refused by the fuzzer".to_string()) };
        effects(self.table.sandbox_reply(client.0, id, result))
    }

    /// Lifecycle recorded Running: the agent's `Ready` for handshakes.
    pub fn open_to_clients(&mut self) -> Option<Frame> {
        self.table.open_to_clients()
    }

    /// The relay closes.
    pub fn close(&mut self) -> Vec<Effect> {
        effects(self.table.close())
    }

    /// Liveness and use, as the watchdog sees them.
    pub fn activity(&self) -> Activity {
        self.table.activity()
    }
}

fn effects(actions: Vec<Action>) -> Vec<Effect> {
    actions
        .into_iter()
        .map(|action| match action {
            Action::ToClient(client, item) => {
                Effect::ToClient { client: ProbeClient(client), fd: item.fd.is_some(), frame: item.frame }
            }
            Action::ToGuest(item) => Effect::ToGuest { own: item.is_own(), frame: item.frame.clone() },
            Action::Credit { id, bytes } => Effect::Credit { id, bytes },
            Action::CloseClient(client) => Effect::CloseClient(ProbeClient(client)),
            Action::AgentReady(_) => Effect::AgentReady,
            Action::Terminate(_) => Effect::Terminate,
            Action::SandboxRequest { client, id, request } => Effect::SandboxRequest {
                client: ProbeClient(client),
                id,
                pause: request == alcove_protocol::SandboxRequest::Pause,
            },
        })
        .collect()
}
