//! Shared helpers for the actor-level tests: a sandbox on the mock backend
//! with a real SQLite file and a real agent.sock, and a raw protocol client.
#![allow(dead_code)]

use alcove::clock::ManualClock;
use alcove::store::{RunRecord, RunStatus, SandboxRecord, Store};
use alcove::{Policy, PolicySpec, SandboxHandle, SandboxOptions};
use alcove_backend::mock::{MockBackend, MockGate, MockLog, MockScript};
use alcove_protocol::{ExecRequest, Flags, Frame, Handshake, Message, HANDSHAKE_LEN};
use std::io::Read;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub const WAIT: Duration = Duration::from_secs(10);

pub struct Env {
    pub dir: tempfile::TempDir,
    pub handle: SandboxHandle,
    pub log: MockLog,
    /// Stops and restarts the mock guest's reading of the agent channel.
    pub gate: MockGate,
    pub clock: ManualClock,
    pub db: PathBuf,
}

/// A policy for tests: fast ticks, generous timeouts unless a test sets them.
pub fn policy() -> Policy {
    Policy::try_from(PolicySpec {
        ready_timeout: Duration::from_secs(864_000),
        heartbeat_timeout: Duration::from_secs(864_000),
        drain_timeout: Duration::from_millis(500),
        shutdown_grace: Duration::from_millis(100),
        watchdog_tick: Duration::from_millis(5),
        metrics_interval: Duration::from_millis(20),
        ..PolicySpec::default()
    })
    .expect("a valid policy")
}

/// A script that is ready at once and beats every 20 ms.
pub fn script() -> MockScript {
    MockScript { heartbeat_interval_ms: 20, ..MockScript::default() }
}

pub fn options(dir: &tempfile::TempDir, policy: Policy, clock: &ManualClock) -> SandboxOptions {
    let mut opts = SandboxOptions::new("box1", dir.path().join("alcove.db"), dir.path().join("run/box1.sock"));
    opts.policy = policy;
    opts.clock = Arc::new(clock.clone());
    opts
}

pub fn start(script: MockScript, policy: Policy) -> Env {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new();
    let backend = MockBackend::new(script);
    let log = backend.log();
    let gate = backend.gate();
    let opts = options(&dir, policy, &clock);
    let db = opts.db_path.clone();
    let handle = alcove::start(opts, Box::new(backend)).expect("sandbox starts");
    Env { dir, handle, log, gate, clock, db }
}

impl Env {
    /// Asks the relay until its activity satisfies `done` (each answer is
    /// an event: the relay has handled everything sent before it was asked).
    pub fn wait_activity(&self, what: &str, done: impl Fn(&alcove::messages::Activity) -> bool) {
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            let activity = self.handle.activity().expect("the sandbox is running");
            if done(&activity) {
                return;
            }
            assert!(std::time::Instant::now() < deadline, "never saw {what}: {activity:?}");
            std::thread::yield_now();
        }
    }

    pub fn socket(&self) -> PathBuf {
        self.handle.socket_path().to_path_buf()
    }

    pub fn store(&self) -> Store {
        Store::open(&self.db).expect("db opens")
    }

    pub fn sandbox(&self) -> SandboxRecord {
        self.store().sandbox("box1").expect("query").expect("sandbox row")
    }

    pub fn last_run(&self) -> RunRecord {
        self.store().latest_run("box1").expect("query").expect("run row")
    }

    /// Asserts what every finished sandbox must show: the run is final and
    /// agrees with the outcome, and agent.sock is gone.
    pub fn assert_final(&self, outcome: &alcove::Outcome) {
        assert!(outcome.recorded, "outcome not recorded: {outcome:?}");
        let run = self.last_run();
        assert_eq!(run.status, RunStatus::Terminated);
        assert_eq!(run.reason, Some(outcome.reason));
        assert_eq!(run.exit_code, outcome.exit_code);
        assert!(!self.socket().exists(), "agent.sock left behind");
    }
}

/// A blocking raw protocol client.
pub struct RawClient {
    pub stream: UnixStream,
    pub range: Handshake,
    pub ready: Message,
}

impl RawClient {
    pub fn connect(path: &std::path::Path) -> RawClient {
        let mut stream = UnixStream::connect(path).expect("connects");
        stream.set_read_timeout(Some(WAIT)).expect("timeout");
        let mut hs = [0u8; HANDSHAKE_LEN];
        stream.read_exact(&mut hs).expect("handshake");
        let range = Handshake::decode(hs).expect("valid range");
        let ready = Frame::read_from(&mut stream).expect("read").expect("ready frame").decode_body().expect("decodes");
        RawClient { stream, range, ready }
    }

    pub fn send(&mut self, id: u32, flags: Flags, msg: &Message) {
        Frame::message(id, flags, msg).expect("encodes").write_to(&mut self.stream).expect("writes");
    }

    /// The next frame and the descriptor that came with it, if any (read
    /// with `recvmsg`, as the client library does).
    pub fn recv_with_fd(&mut self) -> Option<(u32, Flags, Message, Option<OwnedFd>)> {
        let fds = Arc::new(std::sync::Mutex::new(std::collections::VecDeque::new()));
        let mut capture = alcove_testkit::FdCapture::new(self.stream.try_clone().expect("clone"), fds.clone());
        let f = Frame::read_from(&mut capture).ok()??;
        let mut fds = fds.lock().expect("fd queue");
        let fd = fds.pop_front();
        assert!(fds.is_empty(), "more than one descriptor came with one frame");
        let m = f.decode_body().expect("decodes");
        Some((f.id, f.flags, m, fd))
    }

    pub fn recv(&mut self) -> Option<(u32, Flags, Message)> {
        let f = Frame::read_from(&mut self.stream).ok()??;
        let m = f.decode_body().expect("decodes");
        Some((f.id, f.flags, m))
    }

    pub fn exec(&mut self, id: u32, argv: &[&str], stdin: bool) {
        let req = ExecRequest { argv: argv.iter().map(|s| s.to_string()).collect(), stdin, ..ExecRequest::default() };
        self.send(id, Flags::SESSION_START, &Message::ExecRequest(req));
    }

    /// Collects a session's stdout until its terminal frame.
    pub fn collect(&mut self, id: u32) -> (Vec<u8>, Message) {
        let mut out = Vec::new();
        loop {
            let (fid, flags, msg) = self.recv().expect("session ends with a terminal frame");
            assert_eq!(fid, id);
            match msg {
                Message::ExecStdout { data } => out.extend(data),
                Message::ExecStarted { .. } => {}
                m if flags.contains(Flags::TERMINAL) => return (out, m),
                m => panic!("unexpected {m:?}"),
            }
        }
    }

    /// True once the relay has closed this connection.
    pub fn closed(&mut self) -> bool {
        self.stream.set_read_timeout(Some(WAIT)).expect("timeout");
        let mut b = [0u8; 1];
        loop {
            match self.stream.read(&mut b) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
                Err(_) => return false,
            }
        }
    }
}
