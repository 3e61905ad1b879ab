//! The mock backend: an in-process guest that speaks the real protocol over
//! the real agent channel.
//!
//! Over 600 lines on purpose: the mock is one complete scripted agent (exec,
//! stdin, credit, pipes, shutdown) whose parts share one session table.
//!
//! It exists for actor-level tests and for the standalone sandbox process's
//! `mock` backend. A [`MockScript`] says how it behaves: when (or whether) it
//! becomes ready, how often it sends heartbeats and when it stops, whether it
//! crashes, and whether it hangs on `Shutdown`. Everything it observes is
//! appended to a shared [`MockLog`] so tests can check, for example, that the
//! guest received `Shutdown` before it exited.
//!
//! Commands it understands (`argv[0]`):
//! - `echo ARGS…` — prints the arguments joined by spaces and a newline;
//! - `cat` — copies stdin to stdout until EOF;
//! - `stderr TEXT…` — prints to stderr;
//! - `exit N` — exits with code N;
//! - `sleep MS` — exits 0 after MS milliseconds, or by signal;
//! - `stream N` — writes N bytes to stdout, honouring the flow-control window;
//! - `lines N` — writes N short lines, one frame each (many small frames);
//! - `flood N` — a guest that breaks flow control: writes N bytes to stdout
//!   without waiting for credit;
//! - `pipe N` — writes N bytes to stdout through a pipe whose read end it
//!   hands to the host (`ExecStdoutPipe`, flag FD) when the request asks
//!   for it, as a jail's agent does; as `stream N` otherwise;
//! - `poweroff N` — ends the whole guest with exit code N, as a guest whose
//!   init exits by itself;
//! - `badfd` / `nofd` — a broken guest: `ExecStdoutPipe` carrying a pipe's
//!   write end, or no descriptor at all; then prints `after` and exits 0;
//! - anything else fails with `not_found`.
//!
//! Threads: one reader (frames from the host), one heartbeat thread, one per
//! running command. Frames to the host are written under one mutex, so each
//! frame is written whole. The reader answers `ExecStdin` with `Credit` at
//! once, from its own thread, as a simple agent may: while the host does not
//! read the channel, the reader blocks and reads nothing either. A
//! [`MockGate`] stops the reader on purpose (a guest that does not read).

use crate::{BackendError, ExitObserver, GuestBackend, GuestControl, GuestExit, GuestRunner, GuestSpec, Launched};
use alcove_protocol::fdpass;
use alcove_protocol::{
    BootTimings, ExecRequest, ExitStatus, Flags, Frame, Message, Ready, SpawnError, SpawnErrorKind, CONTROL_ID,
    INITIAL_WINDOW, MAX_CHUNK, PROTOCOL_VERSION,
};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::Duration;

/// How the mock guest behaves. Durations are real time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct MockScript {
    /// Send `Ready` after this long; never when `None`.
    pub ready_after_ms: Option<u64>,
    /// Interval between heartbeats.
    pub heartbeat_interval_ms: u64,
    /// Stop sending heartbeats after this many.
    pub heartbeats_stop_after: Option<u64>,
    /// Exit by itself with `crash_code` after this long.
    pub crash_after_ms: Option<u64>,
    /// Exit code of a crash.
    pub crash_code: i32,
    /// Ignore `Shutdown` (the host must force the stop).
    pub hang_on_shutdown: bool,
    /// Exit code after an orderly `Shutdown`.
    pub shutdown_code: i32,
    /// Fail `launch` with this message.
    pub fail_launch: Option<String>,
}

impl Default for MockScript {
    fn default() -> MockScript {
        MockScript {
            ready_after_ms: Some(0),
            heartbeat_interval_ms: 1000,
            heartbeats_stop_after: None,
            crash_after_ms: None,
            crash_code: 1,
            hang_on_shutdown: false,
            shutdown_code: 0,
            fail_launch: None,
        }
    }
}

/// What the mock guest saw and did, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MockEvent {
    /// `Ready` was sent.
    ReadySent,
    /// `Shutdown` arrived from the host.
    ShutdownReceived,
    /// A command started.
    ExecStarted(Vec<String>),
    /// A signal was delivered to a session.
    Signalled {
        /// Session id.
        id: u32,
        /// Signal number.
        signal: i32,
    },
    /// The host ended a session for its gone client (`SessionAborted`).
    Aborted {
        /// Session id.
        id: u32,
    },
    /// A command's output waits for credit: the session's window is used
    /// up (logged each time it starts waiting).
    WindowFull {
        /// Session id.
        id: u32,
    },
    /// The host paused the guest (the mock's processes keep running: only
    /// the call is recorded).
    Paused,
    /// The host resumed the guest.
    Resumed,
    /// The host forced the stop.
    ForceStopped,
    /// The guest ended with this code.
    Exited(i32),
}

/// Shared, append-only record of [`MockEvent`]s.
#[derive(Clone, Debug, Default)]
pub struct MockLog(Arc<(Mutex<Vec<MockEvent>>, Condvar)>);

impl MockLog {
    fn push(&self, e: MockEvent) {
        lock(&self.0 .0).push(e);
        self.0 .1.notify_all();
    }

    /// A copy of every event so far.
    pub fn events(&self) -> Vec<MockEvent> {
        lock(&self.0 .0).clone()
    }

    /// Whether `e` happened.
    pub fn contains(&self, e: &MockEvent) -> bool {
        lock(&self.0 .0).contains(e)
    }

    /// Waits until `e` has happened (woken by each new event, no polling);
    /// false if `timeout` passed first.
    pub fn wait_for(&self, e: &MockEvent, timeout: std::time::Duration) -> bool {
        let events = lock(&self.0 .0);
        let (events, _) = self
            .0
             .1
            .wait_timeout_while(events, timeout, |events| !events.contains(e))
            .unwrap_or_else(|p| p.into_inner());
        events.contains(e)
    }
}

/// Stops and restarts the mock guest's reading of the agent channel, as a
/// guest that stops reading it would. Open by default.
#[derive(Clone, Debug, Default)]
pub struct MockGate(Arc<(Mutex<bool>, Condvar)>);

impl MockGate {
    /// The reader reads no further frame (the one it is reading, if any, is
    /// still handled) until [`MockGate::open`].
    pub fn close(&self) {
        *lock(&self.0 .0) = true;
    }

    /// The reader goes on.
    pub fn open(&self) {
        *lock(&self.0 .0) = false;
        self.0 .1.notify_all();
    }

    fn wait_open(&self) {
        let mut closed = lock(&self.0 .0);
        while *closed {
            closed = self.0 .1.wait(closed).unwrap_or_else(|p| p.into_inner());
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking mock thread must not wedge the others.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The mock backend.
#[derive(Debug, Default)]
pub struct MockBackend {
    script: MockScript,
    log: MockLog,
    gate: MockGate,
}

impl MockBackend {
    /// A mock guest following `script`.
    pub fn new(script: MockScript) -> MockBackend {
        MockBackend { script, log: MockLog::default(), gate: MockGate::default() }
    }

    /// The event log, to keep before the backend is moved into the sandbox.
    pub fn log(&self) -> MockLog {
        self.log.clone()
    }

    /// The gate of the guest's reader, to keep before the backend is moved
    /// into the sandbox.
    pub fn gate(&self) -> MockGate {
        self.gate.clone()
    }
}

impl GuestBackend for MockBackend {
    fn launch(self: Box<Self>, _spec: &GuestSpec) -> Result<Launched, BackendError> {
        if let Some(msg) = &self.script.fail_launch {
            return Err(BackendError::Setup(msg.clone()));
        }
        let (host, guest) = crate::console::channel().map_err(|e| BackendError::io("creating the agent channel", e))?;
        let (exit_tx, exit_rx) = mpsc::channel();
        let guest =
            Arc::new(Guest::new(guest, self.script.clone(), self.log.clone(), self.gate.clone(), exit_tx.clone())?);
        guest.start()?;
        Ok(Launched {
            agent_channel: host,
            runner: Box::new(MockRunner { exit_rx, log: self.log.clone() }),
            control: Arc::new(MockControl { exit_tx: Mutex::new(exit_tx), guest, log: self.log }),
            network_device: None,
        })
    }
}

struct MockRunner {
    exit_rx: mpsc::Receiver<i32>,
    log: MockLog,
}

impl GuestRunner for MockRunner {
    fn run(self: Box<Self>, observer: ExitObserver) {
        // Every sender lives as long as the guest; a closed channel means the
        // guest's threads are gone, which is a crash.
        let code = self.exit_rx.recv().unwrap_or(139);
        self.log.push(MockEvent::Exited(code));
        observer.guest_exited(GuestExit::exited(code));
    }
}

struct MockControl {
    exit_tx: Mutex<mpsc::Sender<i32>>,
    guest: Arc<Guest>,
    log: MockLog,
}

impl GuestControl for MockControl {
    fn force_stop(&self) {
        self.log.push(MockEvent::ForceStopped);
        self.guest.halt();
        let _ = lock(&self.exit_tx).send(137);
    }

    fn pause(&self) -> Result<(), String> {
        self.log.push(MockEvent::Paused);
        Ok(())
    }

    fn resume(&self) -> Result<(), String> {
        self.log.push(MockEvent::Resumed);
        Ok(())
    }
}

/// Per-session flow-control window, shared by the reader and the command.
#[derive(Default)]
struct Window {
    available: Mutex<i64>,
    changed: Condvar,
}

struct Session {
    stdin: Option<mpsc::Sender<Option<Vec<u8>>>>,
    signal: mpsc::Sender<i32>,
    window: Arc<Window>,
}

struct Guest {
    writer: Mutex<UnixStream>,
    reader: Mutex<Option<UnixStream>>,
    script: MockScript,
    log: MockLog,
    gate: MockGate,
    exit_tx: Mutex<mpsc::Sender<i32>>,
    sessions: Mutex<HashMap<u32, Session>>,
    halted: Mutex<bool>,
}

impl Guest {
    fn new(
        stream: UnixStream,
        script: MockScript,
        log: MockLog,
        gate: MockGate,
        exit_tx: mpsc::Sender<i32>,
    ) -> Result<Guest, BackendError> {
        let reader = stream.try_clone().map_err(|e| BackendError::io("cloning the agent channel", e))?;
        Ok(Guest {
            writer: Mutex::new(stream),
            reader: Mutex::new(Some(reader)),
            script,
            log,
            gate,
            exit_tx: Mutex::new(exit_tx),
            sessions: Mutex::new(HashMap::new()),
            halted: Mutex::new(false),
        })
    }

    fn start(self: &Arc<Self>) -> Result<(), BackendError> {
        let Some(reader) = lock(&self.reader).take() else {
            return Err(BackendError::Setup("mock guest started twice".into()));
        };
        let me = Arc::clone(self);
        spawn("mock-guest-reader", move || me.read_loop(reader))?;
        let me = Arc::clone(self);
        spawn("mock-guest-boot", move || me.boot())?;
        if let Some(ms) = self.script.crash_after_ms {
            let me = Arc::clone(self);
            spawn("mock-guest-crash", move || {
                thread::sleep(Duration::from_millis(ms));
                me.exit(me.script.crash_code);
            })?;
        }
        Ok(())
    }

    fn halted(&self) -> bool {
        *lock(&self.halted)
    }

    fn halt(&self) {
        *lock(&self.halted) = true;
        let _ = lock(&self.writer).shutdown(std::net::Shutdown::Both);
    }

    fn exit(&self, code: i32) {
        if self.halted() {
            return;
        }
        self.halt();
        let _ = lock(&self.exit_tx).send(code);
    }

    fn send(&self, id: u32, flags: Flags, msg: &Message) -> bool {
        let Ok(frame) = Frame::message(id, flags, msg) else {
            return false;
        };
        let Ok(bytes) = frame.encode() else {
            return false;
        };
        if self.halted() {
            return false;
        }
        lock(&self.writer).write_all(&bytes).is_ok()
    }

    fn boot(self: Arc<Self>) {
        let Some(after) = self.script.ready_after_ms else {
            return;
        };
        thread::sleep(Duration::from_millis(after));
        let ready = Ready {
            protocol_version: PROTOCOL_VERSION,
            agent_version: format!("mock-{}", env!("CARGO_PKG_VERSION")),
            boot: BootTimings { agent_start_us: 0, mounts_done_us: 0, ready_us: after * 1000 },
        };
        if !self.send(CONTROL_ID, Flags::NONE, &Message::Ready(ready)) {
            return;
        }
        self.log.push(MockEvent::ReadySent);
        let mut seq = 0u64;
        loop {
            if self.script.heartbeats_stop_after.is_some_and(|n| seq >= n) {
                return;
            }
            let active_sessions = lock(&self.sessions).len() as u32;
            if !self.send(CONTROL_ID, Flags::NONE, &Message::Heartbeat { seq, active_sessions }) {
                return;
            }
            seq += 1;
            thread::sleep(Duration::from_millis(self.script.heartbeat_interval_ms.max(1)));
        }
    }

    fn read_loop(self: Arc<Self>, mut reader: UnixStream) {
        loop {
            self.gate.wait_open();
            let frame = match Frame::read_from(&mut reader) {
                Ok(Some(f)) => f,
                // The host closed the channel or broke framing: a real agent
                // would kill its sessions and exit.
                Ok(None) | Err(_) => {
                    self.exit(self.script.shutdown_code);
                    return;
                }
            };
            let Ok(msg) = frame.decode_body() else {
                continue;
            };
            self.handle(frame.id, msg);
        }
    }

    fn handle(self: &Arc<Self>, id: u32, msg: Message) {
        match msg {
            Message::Shutdown { .. } => {
                self.log.push(MockEvent::ShutdownReceived);
                if !self.script.hang_on_shutdown {
                    for s in lock(&self.sessions).values() {
                        let _ = s.signal.send(libc::SIGTERM);
                    }
                    self.exit(self.script.shutdown_code);
                }
            }
            Message::ExecRequest(req) => self.exec(id, req),
            // File sessions are not served (no reply); their end is logged.
            Message::SessionAborted { .. } => self.log.push(MockEvent::Aborted { id }),
            Message::ExecStdin { data } => {
                if let Some(tx) = lock(&self.sessions).get(&id).and_then(|s| s.stdin.clone()) {
                    let credit = (data.len() + 16) as u32;
                    let _ = tx.send(Some(data));
                    self.send(id, Flags::NONE, &Message::Credit { bytes: credit });
                }
            }
            Message::ExecStdinEof => {
                if let Some(tx) = lock(&self.sessions).get(&id).and_then(|s| s.stdin.clone()) {
                    let _ = tx.send(None);
                }
            }
            Message::ExecSignal { signal } => {
                if let Some(s) = lock(&self.sessions).get(&id) {
                    self.log.push(MockEvent::Signalled { id, signal });
                    let _ = s.signal.send(signal);
                }
            }
            Message::Credit { bytes } => {
                if let Some(s) = lock(&self.sessions).get(&id) {
                    *lock(&s.window.available) += i64::from(bytes);
                    s.window.changed.notify_all();
                }
            }
            _ => {}
        }
    }

    fn exec(self: &Arc<Self>, id: u32, req: ExecRequest) {
        let Some(program) = req.argv.first().cloned() else {
            self.fail(id, SpawnErrorKind::InvalidRequest, "empty argv");
            return;
        };
        if !["echo", "cat", "stderr", "exit", "sleep", "stream", "lines", "pipe", "badfd", "nofd", "poweroff", "flood"]
            .contains(&program.as_str())
        {
            self.fail(id, SpawnErrorKind::NotFound, &format!("{program}: command not found"));
            return;
        }
        let (stdin_tx, stdin_rx) = mpsc::channel();
        let (signal_tx, signal_rx) = mpsc::channel();
        let window = Arc::new(Window { available: Mutex::new(i64::from(INITIAL_WINDOW)), changed: Condvar::new() });
        lock(&self.sessions).insert(
            id,
            Session { stdin: req.stdin.then_some(stdin_tx), signal: signal_tx, window: Arc::clone(&window) },
        );
        self.log.push(MockEvent::ExecStarted(req.argv.clone()));
        self.send(id, Flags::NONE, &Message::ExecStarted { pid: 1000 + id });
        let me = Arc::clone(self);
        let run = move || {
            let status = match me.hand_out_descriptor(id, &req) {
                Some(status) => status,
                None => me.run_command(id, &req.argv, &stdin_rx, &signal_rx, &window),
            };
            lock(&me.sessions).remove(&id);
            me.send(id, Flags::TERMINAL, &Message::ExecExited(status));
        };
        if spawn("mock-guest-exec", run).is_err() {
            lock(&self.sessions).remove(&id);
            self.fail(id, SpawnErrorKind::ResourceSetupFailed, "cannot start a thread");
        }
    }

    /// The descriptor commands (`pipe` when asked for the pipe, `badfd`,
    /// `nofd`); `None` for any other command.
    fn hand_out_descriptor(&self, id: u32, req: &ExecRequest) -> Option<ExitStatus> {
        let exited = |code| ExitStatus { code: Some(code), signal: None, oom_killed: false };
        let (r, w) = match req.argv[0].as_str() {
            "pipe" if req.stdout_pipe => std::io::pipe().ok()?,
            "badfd" | "nofd" => std::io::pipe().ok()?,
            _ => return None,
        };
        let Some(frame) = Frame::message(id, Flags::FD, &Message::ExecStdoutPipe).ok().and_then(|f| f.encode().ok())
        else {
            return Some(exited(1));
        };
        let sent = {
            let mut writer = lock(&self.writer);
            let fd = match req.argv[0].as_str() {
                "badfd" => Some(w.as_raw_fd()),
                "nofd" => None,
                _ => Some(r.as_raw_fd()),
            };
            match fd {
                Some(fd) => {
                    fdpass::send_fd_msg(writer.as_raw_fd(), &frame, fd).and_then(|n| writer.write_all(&frame[n..]))
                }
                None => writer.write_all(&frame),
            }
        };
        drop(r);
        if sent.is_err() {
            return Some(exited(1));
        }
        if req.argv[0] != "pipe" {
            self.send(id, Flags::NONE, &Message::ExecStdout { data: b"after\n".to_vec() });
            return Some(exited(0));
        }
        let total: usize = req.argv.get(1).and_then(|a| a.parse().ok()).unwrap_or(0);
        let mut w = w;
        let chunk = vec![b'p'; 64 * 1024];
        let mut left = total;
        while left > 0 {
            let n = left.min(chunk.len());
            if w.write_all(&chunk[..n]).is_err() {
                return Some(exited(1));
            }
            left -= n;
        }
        Some(exited(0))
    }

    fn fail(&self, id: u32, kind: SpawnErrorKind, message: &str) {
        self.send(id, Flags::TERMINAL, &Message::ExecFailed(SpawnError { kind, message: message.to_string() }));
    }

    /// Sends output, waiting for window like the real agent.
    fn output(&self, id: u32, window: &Window, msg: Message) -> bool {
        let Ok(frame) = Frame::message(id, Flags::NONE, &msg) else {
            return false;
        };
        let cost = frame.wire_len() as i64;
        let mut avail = lock(&window.available);
        if *avail < cost {
            self.log.push(MockEvent::WindowFull { id });
        }
        while *avail < cost {
            if self.halted() {
                return false;
            }
            let (guard, _) =
                window.changed.wait_timeout(avail, Duration::from_millis(50)).unwrap_or_else(|p| p.into_inner());
            avail = guard;
        }
        *avail -= cost;
        drop(avail);
        self.send(id, Flags::NONE, &msg)
    }

    fn run_command(
        &self,
        id: u32,
        argv: &[String],
        stdin: &mpsc::Receiver<Option<Vec<u8>>>,
        signals: &mpsc::Receiver<i32>,
        window: &Window,
    ) -> ExitStatus {
        let exited = |code| ExitStatus { code: Some(code), signal: None, oom_killed: false };
        let args = &argv[1..];
        match argv[0].as_str() {
            "echo" => {
                let line = format!("{}\n", args.join(" "));
                self.output(id, window, Message::ExecStdout { data: line.into_bytes() });
                exited(0)
            }
            "stderr" => {
                let line = format!("{}\n", args.join(" "));
                self.output(id, window, Message::ExecStderr { data: line.into_bytes() });
                exited(0)
            }
            "exit" => exited(args.first().and_then(|a| a.parse().ok()).unwrap_or(0)),
            "poweroff" => {
                let code = args.first().and_then(|a| a.parse().ok()).unwrap_or(0);
                self.exit(code);
                exited(code)
            }
            "cat" => loop {
                if let Ok(sig) = signals.try_recv() {
                    return ExitStatus { code: None, signal: Some(sig), oom_killed: false };
                }
                match stdin.recv_timeout(Duration::from_millis(20)) {
                    Ok(Some(data)) => {
                        self.output(id, window, Message::ExecStdout { data });
                    }
                    Ok(None) => return exited(0),
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    Err(mpsc::RecvTimeoutError::Disconnected) => return exited(0),
                }
            },
            "sleep" => {
                let ms = args.first().and_then(|a| a.parse().ok()).unwrap_or(0);
                match signals.recv_timeout(Duration::from_millis(ms)) {
                    Ok(sig) => ExitStatus { code: None, signal: Some(sig), oom_killed: false },
                    Err(_) => exited(0),
                }
            }
            // `pipe` asked without `stdout_pipe`: relayed like `stream`.
            "stream" | "pipe" => {
                let mut left: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(0);
                while left > 0 {
                    if let Ok(sig) = signals.try_recv() {
                        return ExitStatus { code: None, signal: Some(sig), oom_killed: false };
                    }
                    let n = left.min(MAX_CHUNK);
                    if !self.output(id, window, Message::ExecStdout { data: vec![b'x'; n] }) {
                        return exited(1);
                    }
                    left -= n;
                }
                exited(0)
            }
            "flood" => {
                let mut left: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(0);
                while left > 0 {
                    let n = left.min(MAX_CHUNK);
                    if !self.send(id, Flags::NONE, &Message::ExecStdout { data: vec![b'x'; n] }) {
                        return exited(1);
                    }
                    left -= n;
                }
                exited(0)
            }
            "lines" => {
                let n: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(0);
                for i in 0..n {
                    if let Ok(sig) = signals.try_recv() {
                        return ExitStatus { code: None, signal: Some(sig), oom_killed: false };
                    }
                    if !self.output(id, window, Message::ExecStdout { data: format!("line {i}\n").into_bytes() }) {
                        return exited(1);
                    }
                }
                exited(0)
            }
            _ => exited(127),
        }
    }
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> Result<(), BackendError> {
    thread::Builder::new()
        .name(name.to_string())
        .spawn(f)
        .map(|_| ())
        .map_err(|e| BackendError::io(format!("starting thread {name}"), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waiting_for_an_event_wakes_when_it_is_logged() {
        let log = MockLog::default();
        assert!(!log.wait_for(&MockEvent::Aborted { id: 1 }, std::time::Duration::ZERO));
        let writer = log.clone();
        let t = std::thread::spawn(move || {
            writer.push(MockEvent::Aborted { id: 2 });
            writer.push(MockEvent::Aborted { id: 1 });
        });
        assert!(log.wait_for(&MockEvent::Aborted { id: 1 }, std::time::Duration::from_secs(60)));
        t.join().expect("the writer");
    }

    fn launch(script: MockScript) -> (Launched, MockLog) {
        let backend = MockBackend::new(script);
        let log = backend.log();
        (Box::new(backend).launch(&GuestSpec::default()).expect("mock launches"), log)
    }

    fn read(stream: &mut UnixStream) -> (u32, Flags, Message) {
        let f = Frame::read_from(stream).expect("read").expect("frame");
        let m = f.decode_body().expect("decodes");
        (f.id, f.flags, m)
    }

    fn send(stream: &mut UnixStream, id: u32, flags: Flags, msg: &Message) {
        Frame::message(id, flags, msg).expect("encodes").write_to(stream).expect("writes");
    }

    #[test]
    fn ready_then_echo_then_shutdown() {
        let (mut l, log) = launch(MockScript { heartbeat_interval_ms: 10_000, ..MockScript::default() });
        let ch = &mut l.agent_channel;
        assert!(matches!(read(ch).2, Message::Ready(r) if r.protocol_version == PROTOCOL_VERSION));
        assert!(matches!(read(ch).2, Message::Heartbeat { seq: 0, .. }));
        let req = ExecRequest { argv: vec!["echo".into(), "hi".into()], ..ExecRequest::default() };
        send(ch, 7, Flags::SESSION_START, &Message::ExecRequest(req));
        assert_eq!(read(ch), (7, Flags::NONE, Message::ExecStarted { pid: 1007 }));
        assert_eq!(read(ch), (7, Flags::NONE, Message::ExecStdout { data: b"hi\n".to_vec() }));
        let (id, flags, msg) = read(ch);
        assert_eq!((id, flags), (7, Flags::TERMINAL));
        assert!(matches!(msg, Message::ExecExited(ExitStatus { code: Some(0), .. })));
        send(ch, CONTROL_ID, Flags::SHUTDOWN, &Message::Shutdown { grace_ms: 10 });
        let (tx, rx) = mpsc::channel();
        l.runner.run(ExitObserver::new(move |e| tx.send(e.code).expect("test alive")));
        assert_eq!(rx.recv().expect("exit reported"), Some(0));
        let events = log.events();
        let shutdown = events.iter().position(|e| *e == MockEvent::ShutdownReceived).expect("shutdown seen");
        let exited = events.iter().position(|e| *e == MockEvent::Exited(0)).expect("exit seen");
        assert!(shutdown < exited);
    }

    #[test]
    fn stream_stops_at_the_window_until_credit() {
        let (mut l, _log) = launch(MockScript { heartbeat_interval_ms: 10_000, ..MockScript::default() });
        let ch = &mut l.agent_channel;
        read(ch);
        read(ch);
        let total = 3 * INITIAL_WINDOW as usize;
        let req = ExecRequest { argv: vec!["stream".into(), total.to_string()], ..ExecRequest::default() };
        send(ch, 9, Flags::SESSION_START, &Message::ExecRequest(req));
        read(ch);
        let mut got = 0usize;
        let mut wire = 0usize;
        ch.set_read_timeout(Some(Duration::from_millis(300))).expect("timeout set");
        while let Ok(Some(f)) = Frame::read_from(ch) {
            wire += f.wire_len();
            if let Ok(Message::ExecStdout { data }) = f.decode_body() {
                got += data.len();
            }
        }
        assert!(wire <= INITIAL_WINDOW as usize, "sent {wire} bytes past the window");
        assert!(got > 0 && got < total);
        ch.set_read_timeout(None).expect("timeout cleared");
        send(ch, 9, Flags::NONE, &Message::Credit { bytes: 4 * INITIAL_WINDOW });
        loop {
            let (_, flags, msg) = read(ch);
            match msg {
                Message::ExecStdout { data } => got += data.len(),
                Message::ExecExited(_) => {
                    assert!(flags.contains(Flags::TERMINAL));
                    break;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(got, total);
    }

    #[test]
    fn launch_failure_is_an_error() {
        let backend = MockBackend::new(MockScript { fail_launch: Some("boom".into()), ..MockScript::default() });
        let err = Box::new(backend).launch(&GuestSpec::default()).err().expect("fails");
        assert_eq!(err.to_string(), "boom");
    }

    #[test]
    fn pipe_unasked_for_a_pipe_is_relayed_as_frames() {
        let (mut l, _log) = launch(MockScript { heartbeat_interval_ms: 10_000, ..MockScript::default() });
        let ch = &mut l.agent_channel;
        assert!(matches!(read(ch).2, Message::Ready(_)));
        assert!(matches!(read(ch).2, Message::Heartbeat { .. }));
        let req = ExecRequest { argv: vec!["pipe".into(), "1000".into()], ..ExecRequest::default() };
        send(ch, 5, Flags::SESSION_START, &Message::ExecRequest(req));
        let mut got = 0;
        loop {
            match read(ch) {
                (5, _, Message::ExecStarted { .. }) => {}
                (5, flags, Message::ExecStdout { data }) => {
                    assert!(!flags.contains(Flags::FD));
                    got += data.len();
                }
                (5, _, Message::ExecExited(st)) => {
                    assert_eq!(st.code, Some(0));
                    break;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(got, 1000);
    }
}
