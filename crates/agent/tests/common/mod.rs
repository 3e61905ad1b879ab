//! Test harness: runs the real `alcove-agent` binary as a plain child
//! process (`--no-pid1`) with the channel at fd 3 and the configuration on a
//! pipe at fd 4, exactly as the jail backend passes them, and speaks protocol
//! frames to it.
#![allow(dead_code)]

use alcove_protocol::agent_config::AgentConfig;
use alcove_protocol::*;
use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

pub const TIMEOUT: Duration = Duration::from_secs(20);

/// The binary under test: `ALCOVE_AGENT_UNDER_TEST` (e.g. the static build)
/// or this package's binary.
pub fn agent_binary() -> String {
    std::env::var("ALCOVE_AGENT_UNDER_TEST").unwrap_or_else(|_| env!("CARGO_BIN_EXE_alcove-agent").to_string())
}

pub fn require_root() {
    alcove_testkit::require_root("the agent tests switch users and spawn as root");
}

pub struct Agent {
    pub child: Child,
    pub sock: UnixStream,
    frames: mpsc::Receiver<Option<Frame>>,
    stash: HashMap<u32, VecDeque<Frame>>,
    pub closed: bool,
    next_id: AtomicU32,
    pub log: tempfile::NamedTempFile,
    pub ready: Ready,
    /// Descriptors that came with the agent's frames, in order.
    fds: Arc<Mutex<VecDeque<OwnedFd>>>,
}

/// The host end of the channel read with `recvmsg`, keeping the descriptors
/// frames carry (as the relay does).
fn pipe_with(bytes: &[u8]) -> OwnedFd {
    let mut fds = [0; 2];
    // SAFETY: valid array.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: fresh fds we own.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let mut wf = std::fs::File::from(w);
    wf.write_all(bytes).expect("config fits in the pipe");
    drop(wf);
    r
}

impl Agent {
    pub fn start() -> Agent {
        Agent::start_with(&AgentConfig { hostname: "test-box".into(), ..AgentConfig::default() })
    }

    pub fn start_with(config: &AgentConfig) -> Agent {
        Agent::start_raw(&config.to_json(), &[])
    }

    /// Starts the agent with raw config bytes and extra arguments.
    pub fn start_raw(config: &[u8], extra: &[&str]) -> Agent {
        let mut cmd = Command::new(agent_binary());
        cmd.args(["--no-pid1", "--config-fd", "4"]).args(extra);
        Agent::start_cmd(cmd, config)
    }

    /// Starts `cmd` (which must end up exec'ing the agent with the channel
    /// at fd 3 and the configuration at fd 4).
    pub fn start_cmd(cmd: Command, config: &[u8]) -> Agent {
        Agent::start_cmd_with(cmd, config, None)
    }

    /// Starts the agent with the send buffer of its end of the channel set
    /// to `sndbuf` bytes (the kernel doubles it) once it is ready (the agent
    /// grows the buffer at start), so large frames leave in several pieces.
    pub fn start_with_sndbuf(sndbuf: usize) -> Agent {
        let config = AgentConfig { hostname: "test-box".into(), ..AgentConfig::default() };
        let mut cmd = Command::new(agent_binary());
        cmd.args(["--no-pid1", "--config-fd", "4"]);
        Agent::start_cmd_with(cmd, &config.to_json(), Some(sndbuf))
    }

    fn start_cmd_with(mut cmd: Command, config: &[u8], sndbuf: Option<usize>) -> Agent {
        require_root();
        let (host, guest) = UnixStream::pair().expect("socketpair");
        let cfg = pipe_with(config);
        let log = tempfile::NamedTempFile::new().expect("log file");
        let (g, c) = (guest.as_raw_fd(), cfg.as_raw_fd());
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(log.reopen().expect("reopen log"));
        // SAFETY: only dup/dup2 between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                let g2 = libc::fcntl(g, libc::F_DUPFD_CLOEXEC, 10);
                let c2 = libc::fcntl(c, libc::F_DUPFD_CLOEXEC, 10);
                if g2 < 0 || c2 < 0 || libc::dup2(g2, 3) < 0 || libc::dup2(c2, 4) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().expect("spawn agent");
        // Kept until Ready when its send buffer is to be shrunk afterwards.
        let guest = match sndbuf {
            Some(_) => Some(guest),
            None => {
                drop(guest);
                None
            }
        };
        drop(cfg);
        let (tx, rx) = mpsc::channel();
        let fds = Arc::new(Mutex::new(VecDeque::new()));
        let mut reader = alcove_testkit::FdCapture::new(host.try_clone().expect("clone"), fds.clone());
        std::thread::spawn(move || loop {
            match Frame::read_from(&mut reader) {
                Ok(Some(f)) => {
                    if tx.send(Some(f)).is_err() {
                        return;
                    }
                }
                _ => {
                    let _ = tx.send(None);
                    return;
                }
            }
        });
        let mut a = Agent {
            child,
            sock: host,
            frames: rx,
            stash: HashMap::new(),
            closed: false,
            next_id: AtomicU32::new(1),
            log,
            ready: Ready { protocol_version: 0, agent_version: String::new(), boot: BootTimings::default() },
            fds,
        };
        match a.recv(CONTROL_ID).decode_body().expect("decodes") {
            Message::Ready(r) => a.ready = r,
            other => panic!("first frame is not Ready: {other:?}"),
        }
        if let (Some(guest), Some(bytes)) = (guest, sndbuf) {
            let v = bytes as libc::c_int;
            // SAFETY: SO_SNDBUF takes an int; this is a descriptor of the
            // agent's socket, shared with the agent.
            let rc = unsafe {
                libc::setsockopt(
                    guest.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_SNDBUF,
                    (&v as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            assert_eq!(rc, 0, "SO_SNDBUF: {}", std::io::Error::last_os_error());
        }
        a
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    /// The oldest descriptor received with a frame and not yet taken.
    pub fn take_fd(&self) -> Option<OwnedFd> {
        self.fds.lock().expect("fd queue").pop_front()
    }

    pub fn new_id(&self) -> u32 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    pub fn send(&mut self, id: u32, flags: Flags, msg: &Message) -> usize {
        let f = Frame::message(id, flags, msg).expect("encodes");
        f.write_to(&mut self.sock).expect("send to agent");
        f.wire_len()
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.sock.write_all(bytes).expect("send raw");
    }

    fn pull(&mut self, deadline: Instant) -> Option<Frame> {
        if self.closed {
            return None;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match self.frames.recv_timeout(left) {
            Ok(Some(f)) => Some(f),
            Ok(None) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                self.closed = true;
                None
            }
            Err(mpsc::RecvTimeoutError::Timeout) => None,
        }
    }

    /// The next frame on `id` within `timeout`, if any.
    pub fn try_recv(&mut self, id: u32, timeout: Duration) -> Option<Frame> {
        if let Some(f) = self.stash.get_mut(&id).and_then(VecDeque::pop_front) {
            return Some(f);
        }
        let deadline = Instant::now() + timeout;
        loop {
            let f = self.pull(deadline)?;
            if f.id == id {
                return Some(f);
            }
            self.stash.entry(f.id).or_default().push_back(f);
        }
    }

    pub fn recv(&mut self, id: u32) -> Frame {
        match self.try_recv(id, TIMEOUT) {
            Some(f) => f,
            None => panic!(
                "no frame on session {id} within {TIMEOUT:?} (closed: {}); agent log:\n{}",
                self.closed,
                self.log_text()
            ),
        }
    }

    pub fn recv_msg(&mut self, id: u32) -> (Frame, Message) {
        let f = self.recv(id);
        let m = f.decode_body().expect("agent frames decode");
        (f, m)
    }

    /// Opens an exec session.
    pub fn start_exec(&mut self, req: ExecRequest) -> u32 {
        let id = self.new_id();
        self.send(id, Flags::SESSION_START, &Message::ExecRequest(req));
        id
    }

    /// Collects an exec session to its end, crediting everything received.
    /// Reads session `id` (crediting its output) until its stdout holds
    /// `text`: the command has got that far. Returns the stdout so far.
    pub fn wait_stdout(&mut self, id: u32, text: &str) -> String {
        let mut out = Vec::new();
        while !String::from_utf8_lossy(&out).contains(text) {
            let (f, m) = self.recv_msg(id);
            match m {
                Message::ExecStarted { .. } => {}
                Message::ExecStdout { data } => {
                    out.extend_from_slice(&data);
                    self.send(id, Flags::NONE, &Message::Credit { bytes: f.wire_len() as u32 });
                }
                other => panic!("waiting for {text:?} on session {id}: {other:?}"),
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    pub fn finish_exec(&mut self, id: u32) -> ExecResult {
        let mut r = ExecResult::default();
        loop {
            let (f, m) = self.recv_msg(id);
            match m {
                Message::ExecStarted { pid } => r.pid = Some(pid),
                Message::ExecStdout { data } => {
                    r.stdout.extend_from_slice(&data);
                    self.send(id, Flags::NONE, &Message::Credit { bytes: f.wire_len() as u32 });
                }
                Message::ExecStderr { data } => {
                    r.stderr.extend_from_slice(&data);
                    self.send(id, Flags::NONE, &Message::Credit { bytes: f.wire_len() as u32 });
                }
                Message::Credit { bytes } => r.stdin_credit += u64::from(bytes),
                Message::ExecExited(st) => {
                    assert!(f.flags.contains(Flags::TERMINAL), "ExecExited is terminal");
                    r.status = Some(st);
                    return r;
                }
                Message::ExecFailed(e) => {
                    assert!(f.flags.contains(Flags::TERMINAL), "ExecFailed is terminal");
                    r.failed = Some(e);
                    return r;
                }
                other => panic!("unexpected message on exec session: {other:?}"),
            }
        }
    }

    pub fn exec(&mut self, req: ExecRequest) -> ExecResult {
        let id = self.start_exec(req);
        self.finish_exec(id)
    }

    pub fn sh(&mut self, script: &str) -> ExecResult {
        self.exec(ExecRequest { argv: vec!["/bin/sh".into(), "-c".into(), script.into()], ..ExecRequest::default() })
    }

    /// Runs a one-shot file request.
    pub fn fs(&mut self, req: FsRequest) -> Result<FsReply, FsError> {
        let id = self.new_id();
        self.send(id, Flags::SESSION_START, &Message::FsRequest(req));
        let (f, m) = self.recv_msg(id);
        assert!(f.flags.contains(Flags::TERMINAL));
        match m {
            Message::FsResponse(r) => r,
            other => panic!("expected FsResponse, got {other:?}"),
        }
    }

    /// Waits for the agent process to exit.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let end = Instant::now() + limit;
        while Instant::now() < end {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if std::thread::panicking() || std::env::var_os("ALCOVE_TEST_SHOW_LOG").is_some() {
            eprintln!("---- agent log ----\n{}", self.log_text());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Debug, Default)]
pub struct ExecResult {
    pub pid: Option<u32>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub status: Option<ExitStatus>,
    pub failed: Option<SpawnError>,
    pub stdin_credit: u64,
}

impl ExecResult {
    pub fn out(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    pub fn err(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
    pub fn code(&self) -> Option<i32> {
        self.status.and_then(|s| s.code)
    }
    pub fn failure(&self) -> SpawnErrorKind {
        match &self.failed {
            Some(e) => e.kind,
            None => panic!("expected a spawn failure, got {self:?}"),
        }
    }
}

pub fn argv(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}
