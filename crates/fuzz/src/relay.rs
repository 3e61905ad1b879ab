//! Target `relay`: the relay's routing, through the real sandbox (actor
//! system, relay, lifecycle, database) started with [`alcove::start`] on a
//! backend whose guest is this target: the guest end of the agent channel
//! is a socket the input writes to, and clients connect to agent.sock as
//! any client does.
//!
//! The input is a script of up to [`MAX_ACTIONS`] steps: clients connect
//! and disconnect, send frames (valid messages or raw bodies, any flags, ids
//! in their own range, in another client's, control or raw) or garbage; the
//! guest sends frames (with a pipe descriptor, a wrong descriptor or none),
//! garbage, or hangs up. Between steps every socket is drained. Checked:
//! - every byte the relay writes to a client or the guest is a valid frame
//!   stream;
//! - a client only ever receives frames of its own id range (or control);
//! - the guest only ever receives frames of ranges handed to clients (or
//!   control);
//! - after the script, while the sandbox lives, a new client still gets a
//!   handshake and its request reaches the guest (routing survived);
//! - the sandbox then stops when asked, within a bound, with its outcome
//!   recorded and not an internal error, and agent.sock gone.
//!
//! Retargeting: the script and the checks only use agent.sock, the agent
//! channel and [`alcove::SandboxHandle`]; a change of the relay's inside
//! (a pure routing table) needs no change here.

use crate::frames::{ready, FrameSpec};
use alcove::store::TerminationReason;
use alcove::{Policy, PolicySpec, SandboxOptions};
use alcove_backend::{
    BackendError, ExitObserver, GuestBackend, GuestControl, GuestExit, GuestRunner, GuestSpec, Launched,
};
use alcove_protocol::{
    fdpass, ExecRequest, Flags, Frame, FrameDecoder, Handshake, Message, CONTROL_ID, HANDSHAKE_LEN, PROTOCOL_VERSION,
};
use arbitrary::Arbitrary;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::{mpsc, Mutex};
use std::time::{Duration, Instant};

/// Most steps of one input.
pub const MAX_ACTIONS: usize = 24;
/// Bound on anything the target waits for.
const WAIT: Duration = Duration::from_secs(20);

/// One input.
#[derive(Arbitrary, Debug)]
pub struct RelayScript {
    actions: Vec<Action>,
}

#[derive(Arbitrary, Debug)]
enum Action {
    Connect,
    Disconnect {
        client: u8,
    },
    ClientFrame {
        client: u8,
        frame: FrameSpec,
    },
    ClientGarbage {
        client: u8,
        bytes: Vec<u8>,
    },
    GuestFrame {
        frame: FrameSpec,
        fd: FdSpec,
    },
    GuestGarbage {
        bytes: Vec<u8>,
    },
    GuestHangup,
    /// Waits until a client has received a frame (or a short bound passes):
    /// lets routing happen between steps.
    AwaitClient {
        client: u8,
    },
}

#[derive(Arbitrary, Debug)]
enum FdSpec {
    None,
    PipeReadEnd,
    PipeWriteEnd,
}

/// Nothing to set up for this target.
pub fn prepare_process() {}

/// Runs one input.
pub fn fuzz(data: &[u8]) {
    let Some(script) = crate::structured::<RelayScript>(data) else {
        return;
    };
    run(&script);
}

/// A backend whose guest is the fuzz target: it hands the guest end of the
/// agent channel out and ends when forced.
struct ScriptedGuest {
    guest_end: mpsc::Sender<UnixStream>,
}

struct Runner {
    exit: mpsc::Receiver<i32>,
}

struct Control {
    exit: Mutex<mpsc::Sender<i32>>,
}

impl GuestBackend for ScriptedGuest {
    fn launch(self: Box<Self>, _spec: &GuestSpec) -> Result<Launched, BackendError> {
        let (host, guest) = UnixStream::pair().map_err(|e| BackendError::io("creating the agent channel", e))?;
        self.guest_end.send(guest).map_err(|_| BackendError::Setup("the fuzz target is gone".into()))?;
        let (tx, rx) = mpsc::channel();
        Ok(Launched {
            agent_channel: host,
            runner: Box::new(Runner { exit: rx }),
            control: std::sync::Arc::new(Control { exit: Mutex::new(tx) }),
            network_device: None,
        })
    }
}

impl GuestRunner for Runner {
    fn run(self: Box<Self>, observer: ExitObserver) {
        let code = self.exit.recv().unwrap_or(137);
        observer.guest_exited(GuestExit::exited(code));
    }
}

impl GuestControl for Control {
    fn force_stop(&self) {
        let _ = self.exit.lock().unwrap_or_else(|p| p.into_inner()).send(137);
    }
}

fn policy() -> Policy {
    Policy::try_from(PolicySpec {
        ready_timeout: Duration::from_secs(3600),
        heartbeat_timeout: Duration::from_secs(3600),
        drain_timeout: Duration::from_millis(20),
        shutdown_grace: Duration::from_millis(10),
        watchdog_tick: Duration::from_millis(50),
        metrics_interval: Duration::ZERO,
        ..PolicySpec::default()
    })
    .expect("a valid policy")
}

/// One end of a socket as the target sees it: what it has read, decoded.
struct Peer {
    sock: UnixStream,
    decoder: FrameDecoder,
    closed: bool,
}

impl Peer {
    fn new(sock: UnixStream) -> Peer {
        sock.set_nonblocking(true).expect("nonblocking");
        Peer { sock, decoder: FrameDecoder::new(), closed: false }
    }

    /// Reads what is there; returns the frames. Panics if the relay broke
    /// framing.
    fn drain(&mut self, who: &str) -> Vec<Frame> {
        let mut buf = [0u8; 16 * 1024];
        while !self.closed {
            // recvmsg, so descriptors the relay passes are taken and closed.
            match fdpass::recv_with_fds(self.sock.as_raw_fd(), &mut buf) {
                Ok((0, _)) => self.closed = true,
                Ok((n, _fds)) => self.decoder.extend(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => self.closed = true,
            }
        }
        let mut frames = Vec::new();
        loop {
            match self.decoder.next_frame() {
                Ok(Some(f)) => frames.push(f),
                Ok(None) => break,
                Err(e) => panic!("the relay wrote a broken frame stream to {who}: {e}"),
            }
        }
        frames
    }

    /// Writes `bytes` (the first with `fd` attached, when given), reading
    /// everyone meanwhile so the relay is never stuck on us. Gives up on a
    /// closed socket or after [`WAIT`] (a stall the final probe reports).
    fn send(&mut self, bytes: &[u8], fd: Option<&OwnedFd>) -> bool {
        let mut sent = 0;
        if let Some(fd) = fd {
            match fdpass::send_fd_msg(self.sock.as_raw_fd(), bytes, fd.as_raw_fd()) {
                Ok(n) => sent = n,
                Err(_) => return false,
            }
        }
        let deadline = Instant::now() + WAIT;
        while sent < bytes.len() {
            match self.sock.write(&bytes[sent..]) {
                Ok(n) => sent += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    if Instant::now() > deadline {
                        return false;
                    }
                    std::thread::yield_now();
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        true
    }
}

struct Client {
    peer: Peer,
    range: Handshake,
    /// Frames received after the handshake.
    received: usize,
}

struct World {
    socket: std::path::PathBuf,
    guest: Peer,
    /// Clients by connection order; `None` once disconnected.
    clients: Vec<Option<Client>>,
    /// Every range handed out.
    ranges: Vec<Handshake>,
    to_clients: usize,
    to_guest: usize,
    /// Longest wait of [`Action::AwaitClient`].
    await_bound: Duration,
}

impl World {
    fn connect(&mut self) -> Option<Client> {
        let mut sock = UnixStream::connect(&self.socket).ok()?;
        sock.set_read_timeout(Some(WAIT)).expect("timeout");
        let mut raw = [0u8; HANDSHAKE_LEN];
        sock.read_exact(&mut raw).ok()?;
        let range = Handshake::decode(raw).expect("the relay handed out a valid range");
        let ready = Frame::read_from(&mut sock).ok()??;
        assert_eq!(ready.id, CONTROL_ID, "the frame after the handshake is not control");
        assert!(matches!(ready.decode_body(), Ok(Message::Ready(_))), "the frame after the handshake is not Ready");
        for r in &self.ranges {
            let overlaps = range.id_start <= r.id_end && r.id_start <= range.id_end;
            let live = self.clients.iter().flatten().any(|c| c.range == *r);
            assert!(!(overlaps && live), "range {range:?} overlaps the live client's {r:?}");
        }
        self.ranges.push(range);
        Some(Client { peer: Peer::new(sock), range, received: 0 })
    }

    fn encode(&self, spec: &FrameSpec) -> Vec<u8> {
        spec.build(&self.ranges).encode().expect("small frames encode")
    }

    fn client_index(&self, n: u8) -> Option<usize> {
        (!self.clients.is_empty()).then(|| usize::from(n) % self.clients.len())
    }

    fn apply(&mut self, action: &Action) {
        match action {
            Action::Connect => {
                let c = self.connect();
                self.clients.push(c);
            }
            Action::Disconnect { client } => {
                if let Some(i) = self.client_index(*client) {
                    self.clients[i] = None;
                }
            }
            Action::ClientFrame { client, frame } => {
                let bytes = self.encode(frame);
                if let Some(c) = self.client_index(*client).and_then(|i| self.clients[i].as_mut()) {
                    c.peer.send(&bytes, None);
                }
            }
            Action::ClientGarbage { client, bytes } => {
                if let Some(c) = self.client_index(*client).and_then(|i| self.clients[i].as_mut()) {
                    c.peer.send(bytes, None);
                }
            }
            Action::GuestFrame { frame, fd } => {
                let bytes = self.encode(frame);
                let pipe = match fd {
                    FdSpec::None => None,
                    FdSpec::PipeReadEnd => Some(pipe().0),
                    FdSpec::PipeWriteEnd => Some(pipe().1),
                };
                self.guest.send(&bytes, pipe.as_ref());
            }
            Action::GuestGarbage { bytes } => {
                self.guest.send(bytes, None);
            }
            Action::AwaitClient { client } => {
                let deadline = Instant::now() + self.await_bound;
                let Some(i) = self.client_index(*client) else {
                    return;
                };
                while self.clients[i].as_ref().is_some_and(|c| c.received == 0 && !c.peer.closed)
                    && Instant::now() < deadline
                {
                    self.drain();
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            Action::GuestHangup => {
                // The relay sees end of file; the guest still reads.
                let _ = self.guest.sock.shutdown(std::net::Shutdown::Write);
            }
        }
    }

    /// Reads every socket and checks where each frame went.
    fn drain(&mut self) -> Vec<Frame> {
        for c in self.clients.iter_mut().flatten() {
            let frames = c.peer.drain("a client");
            self.to_clients += frames.len();
            c.received += frames.len();
            for f in frames {
                assert!(
                    f.id == CONTROL_ID || c.range.contains(f.id),
                    "a client of range {:?} got a frame of session {}",
                    c.range,
                    f.id
                );
            }
        }
        let to_guest = self.guest.drain("the guest");
        self.to_guest += to_guest.len();
        for f in &to_guest {
            assert!(
                f.id == CONTROL_ID || self.ranges.iter().any(|r| r.contains(f.id)),
                "the guest got a frame of session {}, in no client's range",
                f.id
            );
        }
        to_guest
    }
}

fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: fds is a valid array of two ints.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0, "pipe2");
    use std::os::fd::FromRawFd;
    // SAFETY: both descriptors are fresh and owned by nobody else.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

/// What one script did, for tests that prove the target reaches routing.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RelayReport {
    /// Frames clients received after their handshake.
    pub to_clients: usize,
    /// Frames the guest received.
    pub to_guest: usize,
    /// The final probe's request reached the guest.
    pub probe_routed: bool,
}

/// Runs a script against a fresh sandbox.
pub fn run(script: &RelayScript) -> RelayReport {
    run_with(script, Duration::from_millis(20))
}

/// [`run`], with the bound of [`Action::AwaitClient`].
fn run_with(script: &RelayScript, await_bound: Duration) -> RelayReport {
    let dir = crate::scratch_dir();
    let socket = dir.path().join("run").join("agent.sock");
    let mut opts = SandboxOptions::new("fuzzbox", dir.path().join("alcove.db"), &socket);
    opts.policy = policy();
    let (tx, rx) = mpsc::channel();
    let handle = alcove::start(opts, Box::new(ScriptedGuest { guest_end: tx })).expect("the sandbox starts");
    let guest = rx.recv_timeout(WAIT).expect("the backend was launched");
    let mut world = World {
        socket: socket.clone(),
        guest: Peer::new(guest),
        clients: Vec::new(),
        ranges: Vec::new(),
        to_clients: 0,
        to_guest: 0,
        await_bound,
    };
    let ready = Frame::message(CONTROL_ID, Flags::NONE, &Message::Ready(ready(PROTOCOL_VERSION))).expect("encodes");
    assert!(world.guest.send(&ready.encode().expect("encodes"), None));
    assert!(handle.wait_ready(WAIT), "the sandbox did not become ready");

    for action in script.actions.iter().take(MAX_ACTIONS) {
        world.apply(action);
        world.drain();
    }
    let probe_routed = probe(&mut world, &handle);

    handle.stop();
    let outcome = handle.wait_timeout(WAIT).expect("the sandbox did not stop in time");
    assert!(outcome.recorded, "the outcome was not recorded: {outcome:?}");
    assert_ne!(outcome.reason, TerminationReason::InternalError, "{outcome:?}");
    assert!(!socket.exists(), "agent.sock is left after the end");
    RelayReport { to_clients: world.to_clients, to_guest: world.to_guest, probe_routed }
}

/// A new client's request must still reach the guest, unless the sandbox
/// has ended (a hostile guest may end it: garbage, hang-up, Shutdown).
fn probe(world: &mut World, handle: &alcove::SandboxHandle) -> bool {
    if handle.outcome().is_some() || world.guest.closed {
        return false;
    }
    let Some(mut client) = world.connect() else {
        assert!(handle.wait_timeout(WAIT).is_some(), "a live sandbox refused a new client");
        return false;
    };
    let id = client.range.id_start;
    let exec = Message::ExecRequest(ExecRequest { argv: vec!["probe".into()], ..ExecRequest::default() });
    let frame = Frame::message(id, Flags::SESSION_START, &exec).expect("encodes").encode().expect("encodes");
    let sent = client.peer.send(&frame, None);
    world.clients.push(Some(client));
    if !sent {
        // The relay closes clients once the sandbox is ending (a hostile
        // guest may end it); a live sandbox must not.
        assert!(handle.wait_timeout(WAIT).is_some(), "a live sandbox dropped a new client's request");
        return false;
    }
    let deadline = Instant::now() + WAIT;
    loop {
        if world.drain().iter().any(|f| f.id == id) {
            return true;
        }
        if handle.outcome().is_some() || world.guest.closed {
            return false;
        }
        assert!(Instant::now() < deadline, "the relay stopped routing: a new client's request never reached the guest");
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frames::{BodySpec, IdSpec, MsgSpec};

    fn frame(id: IdSpec, flags: Flags, msg: MsgSpec) -> FrameSpec {
        FrameSpec { id, flags: flags.bits(), body: BodySpec::Msg(msg) }
    }

    #[test]
    fn a_guest_reply_reaches_its_client_and_routing_survives_hostile_steps() {
        let own = || IdSpec::InRange { client: 0, offset: 0 };
        let script = RelayScript {
            actions: vec![
                Action::Connect,
                Action::Connect,
                Action::ClientFrame {
                    client: 0,
                    frame: frame(own(), Flags::SESSION_START, MsgSpec::Exec { stdin: false, stdout_pipe: false }),
                },
                Action::GuestFrame {
                    frame: frame(own(), Flags::NONE, MsgSpec::Stdout(b"hi".to_vec())),
                    fd: FdSpec::None,
                },
                Action::AwaitClient { client: 0 },
                Action::ClientGarbage { client: 1, bytes: vec![0xff; 32] },
                Action::GuestFrame {
                    frame: frame(IdSpec::Raw(u32::MAX), Flags::TERMINAL, MsgSpec::Exited(0)),
                    fd: FdSpec::PipeWriteEnd,
                },
                Action::Disconnect { client: 0 },
            ],
        };
        let report = run_with(&script, WAIT);
        assert!(report.to_guest >= 1, "the request did not reach the guest: {report:?}");
        assert!(report.to_clients >= 1, "the guest's output did not reach its client: {report:?}");
        assert!(report.probe_routed, "routing did not survive: {report:?}");
    }
}
