//! Target `route`: the relay's routing table itself (the pure
//! `RouteTable` behind `alcove::actors::relay::route_probe`, feature
//! `fuzzing`), driven by scripts of the events the relay actor reports —
//! clients admitted and gone, client and guest frames (any id, flags and
//! body, guest descriptors right, wrong or missing), writers writing or
//! failing, the guest attached and detached, time passing, the relay
//! closing — millions of times faster than the `relay` target, which runs
//! the same rules through a whole sandbox.
//!
//! Checked against a model kept beside the table, after every event:
//! - a frame for a client is of its own id range (or control), and only
//!   while the client is connected; a descriptor goes with it exactly when
//!   the frame says FD;
//! - a client's frame reaches the guest unchanged, only from the client's
//!   range, never with a descriptor and never while the guest is detached;
//!   the relay's own frames to the guest (kills, aborts) only name sessions
//!   of the client that is leaving;
//! - a new client's range holds no session still open in the guest (the
//!   generation rule);
//! - credit is owed only for sessions open in the guest, never zero;
//! - `open_sessions` counts exactly the open sessions whose client is
//!   connected;
//! - each client is closed once; a disconnect closes it; `Ready` is taken
//!   once; once closed, the table admits nobody and every client is closed.

use crate::frames::FrameSpec;
use alcove::actors::relay::route_probe::{Effect, ProbeClient, ProbeDescriptor, RouteProbe};
use alcove_protocol::{Flags, Frame, Handshake, Message, CONTROL_ID};
use arbitrary::Arbitrary;
use std::collections::{HashMap, HashSet, VecDeque};
use std::os::fd::{FromRawFd, OwnedFd};
use std::time::Duration;

/// Most steps of one input.
pub const MAX_STEPS: usize = 64;

/// One input.
#[derive(Arbitrary, Debug)]
pub struct RouteScript {
    steps: Vec<Step>,
}

#[derive(Arbitrary, Debug)]
enum Step {
    Connect,
    Disconnect {
        client: u8,
    },
    ClientFrame {
        client: u8,
        frame: FrameSpec,
    },
    GuestFrame {
        frame: FrameSpec,
        descriptor: DescriptorSpec,
    },
    /// The writer of a client (connected or draining) writes its next
    /// `count` items.
    Write {
        client: u8,
        count: u8,
    },
    /// The writer of a client fails on its next item.
    Undeliverable {
        client: u8,
    },
    AttachGuest,
    DetachGuest,
    OpenToClients,
    Advance {
        millis: u16,
    },
    Close,
    /// Lifecycle answers the `which`-th pending pause or resume request.
    SandboxReply {
        which: u8,
        ok: bool,
    },
}

#[derive(Arbitrary, Debug)]
enum DescriptorSpec {
    None,
    Pipe,
    NotAPipe,
}

/// Runs one input.
pub fn fuzz(data: &[u8]) {
    if let Some(script) = crate::structured::<RouteScript>(data) {
        run(&script);
    }
}

/// What a script made the table do (for the tests that show the target
/// reaches its happy path).
#[derive(Clone, Copy, Debug, Default)]
struct Tally {
    forwarded: usize,
    to_clients: usize,
    credits: usize,
    kills: usize,
    closes: usize,
    requests: usize,
}

fn run(script: &RouteScript) -> Tally {
    let mut model = Model::default();
    for step in script.steps.iter().take(MAX_STEPS) {
        model.step(step);
        model.check_counts();
    }
    model.finish()
}

/// A client's writer: what is queued for it, not yet written.
#[derive(Default)]
struct Writer {
    queue: VecDeque<Frame>,
}

#[derive(Default)]
struct Model {
    probe: RouteProbe,
    /// Connected clients, in the order they came.
    live: Vec<ProbeClient>,
    /// Every client's writer, connected or draining after its close.
    writers: HashMap<ProbeClient, Writer>,
    closed_clients: HashSet<ProbeClient>,
    /// Ranges handed out, oldest first (what `IdSpec::InRange` picks from).
    ranges: Vec<Handshake>,
    /// Sessions open in the guest, with their client while it is connected.
    sessions: HashMap<u32, Option<ProbeClient>>,
    guest_attached: bool,
    /// Pause and resume requests waiting for Lifecycle's answer.
    pending_requests: Vec<(ProbeClient, u32, bool)>,
    /// Lifecycle's state as the relay mirrors it.
    paused: bool,
    tally: Tally,
    ready_seen: bool,
    ready_taken: bool,
    closed: bool,
}

impl Model {
    fn pick_live(&self, n: u8) -> Option<ProbeClient> {
        (!self.live.is_empty()).then(|| self.live[usize::from(n) % self.live.len()])
    }

    fn pick_writer(&self, n: u8) -> Option<ProbeClient> {
        let mut keys: Vec<ProbeClient> = self.writers.keys().copied().collect();
        keys.sort_by_key(|k| (k.slot(), k.range().id_start));
        (!keys.is_empty()).then(|| keys[usize::from(n) % keys.len()])
    }

    fn step(&mut self, step: &Step) {
        match step {
            Step::Connect => self.connect(),
            Step::Disconnect { client } => {
                if let Some(client) = self.pick_live(*client) {
                    let effects = self.probe.disconnect(client);
                    assert!(
                        effects.iter().any(|e| matches!(e, Effect::CloseClient(c) if *c == client)),
                        "a disconnect did not close the client"
                    );
                    self.apply(effects, Origin::Disconnect(client));
                }
            }
            Step::ClientFrame { client, frame } => {
                if let Some(client) = self.pick_live(*client) {
                    let frame = frame.build(&self.ranges);
                    let effects = self.probe.client_frame(client, frame.clone());
                    self.apply(effects, Origin::Client(client, &frame));
                }
            }
            Step::GuestFrame { frame, descriptor } => {
                let frame = frame.build(&self.ranges);
                let delivered_with_fd = matches!(descriptor, DescriptorSpec::Pipe);
                let descriptor = match descriptor {
                    DescriptorSpec::None => ProbeDescriptor::None,
                    DescriptorSpec::NotAPipe => ProbeDescriptor::NotAPipe,
                    DescriptorSpec::Pipe => pipe_read_end(),
                };
                let owner = self.sessions.get(&frame.id).copied().flatten();
                let effects = self.probe.guest_frame(frame.clone(), descriptor);
                // The terminal frame of a session ends it, unless it was
                // dropped for want of its descriptor.
                let dropped = frame.flags.contains(Flags::FD) && !delivered_with_fd;
                if frame.id != CONTROL_ID && frame.flags.contains(Flags::TERMINAL) && !dropped {
                    self.sessions.remove(&frame.id);
                }
                self.apply(effects, Origin::Guest(&frame, owner));
            }
            Step::Write { client, count } => {
                if let Some(client) = self.pick_writer(*client) {
                    for _ in 0..*count {
                        let Some(frame) = self.writers.get_mut(&client).and_then(|w| w.queue.pop_front()) else {
                            break;
                        };
                        let effects = self.probe.client_wrote(client, &frame);
                        self.apply(effects, Origin::Wrote);
                    }
                    self.forget_drained(client);
                }
            }
            Step::Undeliverable { client } => {
                if let Some(client) = self.pick_writer(*client) {
                    if let Some(frame) = self.writers.get_mut(&client).and_then(|w| w.queue.pop_front()) {
                        // The writer ends: what it still had is gone with it.
                        let effects = self.probe.undeliverable(client, &frame);
                        self.apply(effects, Origin::Undeliverable(client));
                        if self.closed_clients.contains(&client) {
                            self.writers.remove(&client);
                        }
                    }
                }
            }
            Step::AttachGuest => {
                self.probe.attach_guest();
                self.guest_attached = true;
            }
            Step::DetachGuest => {
                self.probe.detach_guest();
                self.guest_attached = false;
            }
            Step::OpenToClients => {
                let ready = self.probe.open_to_clients();
                if let Some(frame) = ready {
                    assert!(self.ready_seen && !self.ready_taken, "Ready handed out without an AgentReady, or twice");
                    assert!(matches!(frame.decode_body(), Ok(Message::Ready(_))), "the held frame is not Ready");
                    self.ready_taken = true;
                }
            }
            Step::SandboxReply { which, ok } => {
                if !self.pending_requests.is_empty() {
                    let (client, id, pause) =
                        self.pending_requests.remove(usize::from(*which) % self.pending_requests.len());
                    let effects = self.probe.sandbox_reply(client, id, pause, *ok);
                    if *ok {
                        self.paused = pause;
                    }
                    let live = self.live.contains(&client);
                    let replied = effects.iter().any(|e| {
                        matches!(e, Effect::ToClient { client: c, frame, .. }
                            if *c == client && frame.id == id && frame.flags.contains(Flags::TERMINAL))
                    });
                    assert_eq!(replied, live, "a reply must reach its client exactly when it is still connected");
                    self.apply(effects, Origin::Wrote);
                }
            }
            Step::Advance { millis } => self.probe.advance(Duration::from_millis(u64::from(*millis))),
            Step::Close => {
                let effects = self.probe.close();
                let was_closed = self.closed;
                self.closed = true;
                self.apply(effects, Origin::Close);
                assert!(self.live.is_empty(), "a client stayed connected after the relay closed");
                if !was_closed {
                    self.sessions.clear();
                }
                assert!(self.probe.admit().is_none(), "a closed relay admitted a client");
            }
        }
    }

    fn connect(&mut self) {
        let Some(client) = self.probe.admit() else {
            // A script is too short to fill every slot or to block all the
            // generations of every free one: only a closed relay refuses.
            assert!(self.closed, "a client was refused while slots were free");
            return;
        };
        assert!(!self.closed, "a closed relay admitted a client");
        assert!(!self.live.contains(&client) && !self.closed_clients.contains(&client), "a client key was reused");
        let range = client.range();
        for id in self.sessions.keys() {
            assert!(
                !(range.id_start..=range.id_end).contains(id),
                "new client's range {range:?} holds open session {id}"
            );
        }
        for other in &self.live {
            let r = other.range();
            assert!(range.id_end < r.id_start || r.id_end < range.id_start, "ranges {range:?} and {r:?} overlap");
        }
        self.ranges.push(range);
        self.live.push(client);
        self.writers.entry(client).or_default();
    }

    fn apply(&mut self, effects: Vec<Effect>, origin: Origin<'_>) {
        for effect in effects {
            match effect {
                Effect::ToClient { client, frame, fd } => {
                    assert!(self.live.contains(&client), "a frame queued for a client that is not connected");
                    let range = client.range();
                    assert!(
                        frame.id == CONTROL_ID || (range.id_start..=range.id_end).contains(&frame.id),
                        "frame {} queued for a client of range {range:?}",
                        frame.id
                    );
                    assert_eq!(fd, frame.flags.contains(Flags::FD), "descriptor and FD flag disagree");
                    self.writers.entry(client).or_default().queue.push_back(frame);
                    self.tally.to_clients += 1;
                }
                Effect::ToGuest { frame, own: false } => {
                    let Origin::Client(client, sent) = origin else {
                        panic!("a client frame reached the guest outside a client event");
                    };
                    assert!(self.guest_attached, "a client frame reached a detached guest");
                    // A request opens its session; later frames of a session
                    // are the client's bytes and never decoded by the relay.
                    assert!(
                        !(frame.flags.contains(Flags::SESSION_START)
                            && matches!(frame.decode_body(), Ok(Message::SandboxRequest(_)))),
                        "a pause or resume request reached the guest"
                    );
                    assert_eq!(&frame, sent, "a client frame changed on its way to the guest");
                    let range = client.range();
                    assert!((range.id_start..=range.id_end).contains(&frame.id), "out-of-range frame forwarded");
                    assert!(!frame.flags.contains(Flags::FD), "a client's descriptor frame reached the guest");
                    self.tally.forwarded += 1;
                    if frame.flags.contains(Flags::SESSION_START) {
                        assert!(
                            matches!(frame.decode_body(), Ok(Message::ExecRequest(_) | Message::FsRequest(_))),
                            "a session started without a request"
                        );
                        assert!(!self.sessions.contains_key(&frame.id), "session {} started twice", frame.id);
                        assert!(!self.paused, "a session reached a paused guest");
                        self.sessions.insert(frame.id, Some(client));
                    }
                }
                Effect::ToGuest { frame, own: true } => {
                    let leaving = match origin {
                        Origin::Disconnect(c) | Origin::Undeliverable(c) => Some(c),
                        Origin::Client(c, _) => Some(c),
                        // A guest frame over its client's queue bound
                        // disconnects the client the frame was for.
                        Origin::Guest(_, owner) => owner,
                        _ => None,
                    };
                    let owner = self.sessions.get(&frame.id).copied().flatten();
                    assert!(
                        owner.is_some() && owner == leaving,
                        "the relay ended session {} that is not its leaving client's",
                        frame.id
                    );
                    self.tally.kills += 1;
                }
                Effect::Credit { id, bytes } => {
                    assert!(bytes > 0, "zero credit");
                    assert!(self.sessions.contains_key(&id), "credit owed for session {id}, not open in the guest");
                    self.tally.credits += 1;
                }
                Effect::CloseClient(client) => {
                    assert!(self.closed_clients.insert(client), "a client was closed twice");
                    self.tally.closes += 1;
                    assert!(self.live.contains(&client), "a client that was never connected was closed");
                    self.live.retain(|c| *c != client);
                    for owner in self.sessions.values_mut() {
                        if *owner == Some(client) {
                            *owner = None;
                        }
                    }
                    self.forget_drained(client);
                }
                Effect::AgentReady => {
                    assert!(matches!(origin, Origin::Guest(f, _) if f.id == CONTROL_ID), "AgentReady without Ready");
                    assert!(!self.ready_seen, "AgentReady twice");
                    self.ready_seen = true;
                }
                Effect::SandboxRequest { client, id, pause } => {
                    let Origin::Client(sender, sent) = origin else {
                        panic!("a sandbox request outside a client frame");
                    };
                    assert_eq!(client, sender, "a sandbox request credited to another client");
                    assert!(
                        sent.id == id && sent.flags.contains(Flags::SESSION_START),
                        "a request without its session"
                    );
                    let asked = matches!(sent.decode_body(),
                        Ok(Message::SandboxRequest(r)) if (r == alcove_protocol::SandboxRequest::Pause) == pause);
                    assert!(asked, "a sandbox request the client did not make");
                    self.pending_requests.push((client, id, pause));
                    self.tally.requests += 1;
                }
                Effect::Terminate => match origin {
                    Origin::Client(_, f) => {
                        assert!(
                            f.id == CONTROL_ID && f.flags.contains(Flags::SHUTDOWN),
                            "Terminate from a client frame"
                        )
                    }
                    Origin::Guest(f, _) => assert!(f.id == CONTROL_ID, "Terminate from a session frame of the guest"),
                    _ => panic!("Terminate outside a frame"),
                },
            }
        }
    }

    /// A closed client whose writer has written everything is gone.
    fn forget_drained(&mut self, client: ProbeClient) {
        if self.closed_clients.contains(&client) && self.writers.get(&client).is_some_and(|w| w.queue.is_empty()) {
            self.writers.remove(&client);
        }
    }

    fn check_counts(&self) {
        let expected = self.sessions.values().filter(|owner| owner.is_some()).count();
        assert_eq!(self.probe.activity().open_sessions, expected, "open sessions miscounted");
    }

    fn finish(mut self) -> Tally {
        let effects = self.probe.close();
        self.apply(effects, Origin::Close);
        assert!(self.live.is_empty(), "a client stayed connected after the relay closed");
        assert_eq!(self.probe.activity().open_sessions, 0, "sessions open after the relay closed");
        self.tally
    }
}

/// The event that produced a batch of effects.
#[derive(Clone, Copy)]
enum Origin<'a> {
    Client(ProbeClient, &'a Frame),
    /// A guest frame, and the client its session had before it arrived.
    Guest(&'a Frame, Option<ProbeClient>),
    Disconnect(ProbeClient),
    Undeliverable(ProbeClient),
    Wrote,
    Close,
}

fn pipe_read_end() -> ProbeDescriptor {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into the array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return ProbeDescriptor::None;
    }
    // SAFETY: both descriptors are fresh and ours; the write end is closed at once.
    let (read, _write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    ProbeDescriptor::Pipe(read)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frames::{BodySpec, IdSpec, MsgSpec};

    fn frame(id: IdSpec, flags: Flags, msg: MsgSpec) -> FrameSpec {
        FrameSpec { id, flags: flags.bits(), body: BodySpec::Msg(msg) }
    }

    fn own(client: u8) -> IdSpec {
        IdSpec::InRange { client, offset: 7 }
    }

    #[test]
    fn a_session_is_routed_credited_and_killed_when_its_client_leaves() {
        let exec = MsgSpec::Exec { stdin: false, stdout_pipe: false };
        let big = MsgSpec::Stdout(vec![b'x'; 40_000]);
        let mut steps = vec![
            Step::AttachGuest,
            Step::Connect,
            Step::Connect,
            Step::ClientFrame { client: 0, frame: frame(own(0), Flags::SESSION_START, exec) },
        ];
        // Enough output, written, to earn a batch of credit (128 KiB).
        for _ in 0..4 {
            steps.push(Step::GuestFrame {
                frame: frame(own(0), Flags::NONE, big.clone()),
                descriptor: DescriptorSpec::None,
            });
            steps.push(Step::Write { client: 0, count: 1 });
        }
        steps.push(Step::Disconnect { client: 0 });
        let tally = run(&RouteScript { steps });
        assert_eq!(tally.forwarded, 1, "{tally:?}");
        assert_eq!(tally.to_clients, 4, "{tally:?}");
        assert!(tally.credits >= 1, "{tally:?}");
        assert_eq!(tally.kills, 1, "{tally:?}");
        assert_eq!(tally.closes, 2, "{tally:?}");
    }

    #[test]
    fn a_client_frame_outside_its_range_is_never_forwarded() {
        let exec = MsgSpec::Exec { stdin: false, stdout_pipe: false };
        let steps = vec![
            Step::AttachGuest,
            Step::Connect,
            Step::Connect,
            // Client 1 uses client 0's range: dropped, and disconnected.
            Step::ClientFrame { client: 1, frame: frame(own(0), Flags::SESSION_START, exec) },
        ];
        let tally = run(&RouteScript { steps });
        assert_eq!(tally.forwarded, 0, "{tally:?}");
        assert_eq!(tally.closes, 2, "{tally:?}");
    }

    #[test]
    fn a_pause_is_asked_of_lifecycle_and_a_paused_guest_gets_no_new_session() {
        let exec = MsgSpec::Exec { stdin: false, stdout_pipe: false };
        let steps = vec![
            Step::AttachGuest,
            Step::Connect,
            Step::ClientFrame { client: 0, frame: frame(own(0), Flags::SESSION_START, MsgSpec::Sandbox(true)) },
            Step::SandboxReply { which: 0, ok: true },
            Step::ClientFrame {
                client: 0,
                frame: frame(IdSpec::InRange { client: 0, offset: 9 }, Flags::SESSION_START, exec),
            },
        ];
        let tally = run(&RouteScript { steps });
        assert_eq!(tally.requests, 1, "{tally:?}");
        assert_eq!(tally.forwarded, 0, "{tally:?}");
        // The reply and the refusal of the exec.
        assert_eq!(tally.to_clients, 2, "{tally:?}");
    }

    /// Found by cargo-fuzz: the model once required that no frame with a
    /// pause request body reach the guest, but only a frame that opens a
    /// session is a request; later frames are the client's bytes.
    #[test]
    fn a_request_body_inside_a_session_is_the_clients_bytes() {
        let steps = vec![
            Step::AttachGuest,
            Step::Connect,
            Step::ClientFrame { client: 0, frame: frame(own(0), Flags::NONE, MsgSpec::Sandbox(true)) },
        ];
        let tally = run(&RouteScript { steps });
        assert_eq!((tally.forwarded, tally.requests), (1, 0), "{tally:?}");
    }

    /// The model is not vacuous: an effect that breaks a rule fails it.
    #[test]
    #[should_panic(expected = "credit owed for session 99")]
    fn the_model_rejects_credit_for_an_unknown_session() {
        let mut model = Model::default();
        model.apply(vec![Effect::Credit { id: 99, bytes: 1 }], Origin::Wrote);
    }

    #[test]
    #[should_panic(expected = "queued for a client of range")]
    fn the_model_rejects_a_frame_outside_the_clients_range() {
        let mut model = Model::default();
        model.step(&Step::Connect);
        let client = model.live[0];
        let frame = Frame::new(client.range().id_end + 1, Flags::NONE, Vec::new());
        model.apply(vec![Effect::ToClient { client, frame, fd: false }], Origin::Wrote);
    }
}
