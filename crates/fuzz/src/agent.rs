//! Target `agent`: the agent's request handling, through its public entry
//! ([`alcove_agent::server::Server`]) run in this process on one end of a
//! socket pair, as `alcove-agent --no-pid1` runs it (not PID 1: it signals
//! only its own sessions at shutdown).
//!
//! The input is a sequence of up to [`MAX_FRAMES`] host frames: session
//! starts, stdin, credit, signals, resizes, file requests and data, control
//! frames, raw bodies, any flags, ids that collide — then a `Shutdown`.
//! What the agent may touch is fenced in: commands come from a fixed list
//! (`true`, `cat`, `echo`, `sh -c` of fixed scripts, `head -c N
//! /dev/zero`, a missing program) with fuzzed arguments, users, limits,
//! terminals and environment values; every file path lies inside a fresh
//! temporary directory. Checked:
//! - everything the agent writes is a valid frame stream, starting with
//!   `Ready`, and every body decodes as a message;
//! - a session never gets more terminal frames than frames were sent on
//!   its id, and every id that got a session start (before any shutdown
//!   was asked for) gets a terminal frame before the agent exits, unless
//!   the host let its flow-control window run out (the terminal frame
//!   counts against the window): the script may credit every session
//!   before the end, and then there is no exception;
//! - the agent exits after `Shutdown` within a bound, with
//!   [`Outcome::Shutdown`].

use alcove_agent::server::{Outcome, Server, ServerConfig};
use alcove_agent::spawn::Defaults;
use alcove_agent::sys::{self, Fd};
use alcove_protocol::{
    fdpass, BootTimings, ExecRequest, Flags, Frame, FrameDecoder, FsRequest, Message, Rlimit, TtySize, CONTROL_ID,
    INITIAL_WINDOW,
};
use arbitrary::Arbitrary;
use std::collections::HashMap;
use std::io::{ErrorKind, Write};
use std::os::fd::{AsRawFd, IntoRawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, OnceLock};
use std::time::Duration;

/// Most frames of one input (the closing `Shutdown` comes on top).
pub const MAX_FRAMES: usize = 24;
/// Bound on the agent's exit after `Shutdown`, commands' grace included.
const WAIT: Duration = Duration::from_secs(30);

static SIGNALS: OnceLock<libc::sigset_t> = OnceLock::new();

/// Blocks SIGCHLD in this thread and so in every thread started later, as
/// the agent's `main` does: the server reads it from a signalfd (SIGTERM and
/// SIGINT keep their usual effect on the fuzzing process). Must run before
/// any thread exists, or a SIGCHLD delivered to another thread is lost.
pub fn prepare_process() {
    SIGNALS.get_or_init(|| sys::block_signals(&[libc::SIGCHLD]).expect("blocking SIGCHLD"));
}

/// The unit tests' harness starts threads before any test runs: block
/// SIGCHLD before `main`, from the binary's constructors.
#[cfg(test)]
#[used]
#[link_section = ".init_array"]
static PREPARE_BEFORE_MAIN: extern "C" fn() = {
    extern "C" fn prepare() {
        prepare_process();
    }
    prepare
};

/// One input.
#[derive(Arbitrary, Debug)]
pub struct AgentScript {
    frames: Vec<HostFrame>,
    final_grace_ms: u8,
    /// Before the closing `Shutdown`, credit every started session
    /// generously, as a host whose clients keep reading does.
    credit_at_end: bool,
}

#[derive(Arbitrary, Debug)]
struct HostFrame {
    id: Id,
    flags: u8,
    body: Body,
}

#[derive(Arbitrary, Debug)]
enum Id {
    Control,
    Small(u8),
    Raw(u32),
}

#[derive(Arbitrary, Debug)]
enum Body {
    Exec(Exec),
    Stdin(Vec<u8>),
    StdinEof,
    Resize(u16, u16),
    Signal(i32),
    Credit(u32),
    Fs(Fs),
    FsData(Vec<u8>),
    FsEnd,
    Touch,
    Shutdown(u8),
    /// A message only the guest sends, coming from the host.
    Misplaced(Misplaced),
    Raw(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
enum Misplaced {
    Stdout(Vec<u8>),
    Exited(i32),
    Heartbeat(u64),
    Aborted(String),
    StdoutPipe,
}

#[derive(Arbitrary, Debug)]
struct Exec {
    program: Program,
    args: Vec<String>,
    env: Vec<(EnvKey, String)>,
    cwd: Option<Place>,
    user: Option<User>,
    tty: Option<(u16, u16)>,
    stdin: bool,
    rlimit: Option<(Resource, u64, u64)>,
    stdout_pipe: bool,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Program {
    True,
    Cat,
    Echo,
    ShellScript(u8),
    Zeros(u32),
    Missing,
    NotExecutable,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum EnvKey {
    Path,
    Home,
    Term,
    Other,
    Empty,
}

#[derive(Arbitrary, Debug)]
enum User {
    Root,
    Nobody,
    Numeric(u32, Option<u32>),
    Name(String),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Resource {
    Nofile,
    Nproc,
    As,
    Cpu,
    Fsize,
    Stack,
    Core,
    Unknown,
}

/// A path inside the input's directory: up to three components from a
/// small vocabulary (so requests meet each other's files).
#[derive(Arbitrary, Debug)]
struct Place(Vec<Part>);

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Part {
    A,
    B,
    Dir,
    Dot,
    Empty,
}

#[derive(Arbitrary, Debug)]
enum Fs {
    Stat(Place),
    List(Place),
    Read(Place),
    Write(Place, u32),
    Mkdir(Place, bool, u32),
    Remove(Place, bool),
    Rename(Place, Place),
    Copy(Place, Place),
}

const SCRIPTS: [&str; 4] =
    ["echo out; echo err >&2; exit 3", "cat; exit 0", "read line; echo \"$line\"", "kill -TERM $$"];

impl Place {
    fn path(&self, base: &Path) -> String {
        let mut p = base.to_path_buf();
        for part in self.0.iter().take(3) {
            p.push(match part {
                Part::A => "a",
                Part::B => "b",
                Part::Dir => "d",
                Part::Dot => ".",
                Part::Empty => "",
            });
        }
        p.to_string_lossy().into_owned()
    }
}

impl Exec {
    fn request(&self, base: &Path) -> ExecRequest {
        let mut argv: Vec<String> = match self.program {
            Program::True => vec!["true".into()],
            Program::Cat => vec!["cat".into()],
            Program::Echo => vec!["echo".into()],
            Program::ShellScript(n) => vec!["sh".into(), "-c".into(), SCRIPTS[usize::from(n) % SCRIPTS.len()].into()],
            Program::Zeros(n) => vec!["head".into(), "-c".into(), (n % (3 << 20)).to_string(), "/dev/zero".into()],
            Program::Missing => vec!["/nonexistent/alcove-fuzz".into()],
            Program::NotExecutable => vec!["/etc/hostname".into()],
        };
        if matches!(self.program, Program::Echo) {
            argv.extend(self.args.iter().take(4).cloned());
        }
        let env = self
            .env
            .iter()
            .take(4)
            .map(|(k, v)| {
                let key = match k {
                    EnvKey::Path => "PATH",
                    EnvKey::Home => "HOME",
                    EnvKey::Term => "TERM",
                    EnvKey::Other => "ALCOVE_FUZZ",
                    EnvKey::Empty => "",
                };
                (key.to_string(), v.clone())
            })
            .collect();
        let user = self.user.as_ref().map(|u| match u {
            User::Root => "root".to_string(),
            User::Nobody => "nobody".to_string(),
            User::Numeric(uid, Some(gid)) => format!("{uid}:{gid}"),
            User::Numeric(uid, None) => uid.to_string(),
            User::Name(n) => n.clone(),
        });
        let rlimits = self
            .rlimit
            .iter()
            .map(|(r, soft, hard)| Rlimit {
                resource: match r {
                    Resource::Nofile => "nofile",
                    Resource::Nproc => "nproc",
                    Resource::As => "as",
                    Resource::Cpu => "cpu",
                    Resource::Fsize => "fsize",
                    Resource::Stack => "stack",
                    Resource::Core => "core",
                    Resource::Unknown => "bogus",
                }
                .into(),
                soft: *soft,
                hard: *hard,
            })
            .collect();
        ExecRequest {
            argv,
            env,
            cwd: self.cwd.as_ref().map(|p| p.path(base)),
            user,
            tty: self.tty.map(|(rows, cols)| TtySize { rows, cols }),
            stdin: self.stdin,
            rlimits,
            stdout_pipe: self.stdout_pipe,
        }
    }
}

impl Body {
    fn message(&self, base: &Path) -> Result<Message, Vec<u8>> {
        Ok(match self {
            Body::Exec(e) => Message::ExecRequest(e.request(base)),
            Body::Stdin(d) => Message::ExecStdin { data: d.clone() },
            Body::StdinEof => Message::ExecStdinEof,
            Body::Resize(rows, cols) => Message::ExecResize(TtySize { rows: *rows, cols: *cols }),
            Body::Signal(signal) => Message::ExecSignal { signal: *signal },
            Body::Credit(bytes) => Message::Credit { bytes: *bytes },
            Body::Fs(fs) => Message::FsRequest(match fs {
                Fs::Stat(p) => FsRequest::Stat { path: p.path(base) },
                Fs::List(p) => FsRequest::List { path: p.path(base) },
                Fs::Read(p) => FsRequest::Read { path: p.path(base) },
                Fs::Write(p, mode) => FsRequest::Write { path: p.path(base), mode: *mode },
                Fs::Mkdir(p, parents, mode) => FsRequest::Mkdir { path: p.path(base), parents: *parents, mode: *mode },
                Fs::Remove(p, recursive) => FsRequest::Remove { path: p.path(base), recursive: *recursive },
                Fs::Rename(a, b) => FsRequest::Rename { from: a.path(base), to: b.path(base) },
                Fs::Copy(a, b) => FsRequest::Copy { from: a.path(base), to: b.path(base) },
            }),
            Body::FsData(d) => Message::FsData { data: d.clone() },
            Body::FsEnd => Message::FsEnd,
            Body::Touch => Message::Touch,
            Body::Shutdown(grace) => Message::Shutdown { grace_ms: u32::from(*grace) },
            Body::Misplaced(m) => match m {
                Misplaced::Stdout(d) => Message::ExecStdout { data: d.clone() },
                Misplaced::Exited(code) => Message::ExecExited(alcove_protocol::ExitStatus {
                    code: Some(*code),
                    signal: None,
                    oom_killed: false,
                }),
                Misplaced::Heartbeat(seq) => Message::Heartbeat { seq: *seq, active_sessions: 0 },
                Misplaced::Aborted(reason) => Message::SessionAborted { reason: reason.clone() },
                Misplaced::StdoutPipe => Message::ExecStdoutPipe,
            },
            Body::Raw(b) => return Err(b.clone()),
        })
    }
}

/// Runs one input.
pub fn fuzz(data: &[u8]) {
    let Some(script) = crate::structured::<AgentScript>(data) else {
        return;
    };
    run(&script);
}

/// What the agent wrote, read on a thread of its own.
fn read_all(sock: UnixStream) -> Vec<Frame> {
    let mut decoder = FrameDecoder::new();
    let mut frames = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // recvmsg: descriptors the agent hands out (stdout pipes) are closed.
        match fdpass::recv_with_fds(sock.as_raw_fd(), &mut buf) {
            Ok((0, _)) => break,
            Ok((n, _fds)) => decoder.extend(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => panic!("reading the agent's channel failed: {e}"),
        }
        loop {
            match decoder.next_frame() {
                Ok(Some(f)) => frames.push(f),
                Ok(None) => break,
                Err(e) => panic!("the agent wrote a broken frame stream: {e}"),
            }
        }
    }
    assert_eq!(decoder.pending(), 0, "the agent's stream ended inside a frame");
    frames
}

/// Runs a script against a fresh agent loop; returns the agent's frames.
pub fn run(script: &AgentScript) -> Vec<Frame> {
    let set = *SIGNALS.get().expect("agent::prepare_process ran first");
    let dir = crate::scratch_dir();
    let base: PathBuf = dir.path().to_path_buf();
    let (host, agent_end) = UnixStream::pair().expect("socketpair");
    let sigfd = sys::signalfd(&set).expect("signalfd");
    let cfg = ServerConfig {
        defaults: Defaults { env: Vec::new(), workdir: None, user: None, hostname: "fuzz".into() },
        root: PathBuf::from("/"),
        pid1: false,
        heartbeat: Duration::from_secs(3600),
        channel_is_port: false,
    };
    let server = Server::new(cfg, Fd::new(agent_end.into_raw_fd()), sigfd).expect("the server starts");
    let (done_tx, done_rx) = mpsc::channel();
    let agent = std::thread::spawn(move || {
        let outcome = server.run(BootTimings::default());
        let _ = done_tx.send(outcome);
    });
    let reader = {
        let sock = host.try_clone().expect("clone");
        std::thread::spawn(move || read_all(sock))
    };

    let mut sent_on: HashMap<u32, u32> = HashMap::new();
    let mut started: Vec<u32> = Vec::new();
    let mut shutting_down = false;
    let mut writer = &host;
    for f in script.frames.iter().take(MAX_FRAMES) {
        let id = match f.id {
            Id::Control => CONTROL_ID,
            Id::Small(n) => u32::from(n % 8) + 1,
            Id::Raw(id) => id,
        };
        let flags = Flags::from_bits(f.flags & 0b1111).expect("masked to known bits");
        let body = match f.body.message(&base) {
            Ok(msg) => alcove_protocol::encode_message(&msg).expect("small messages encode"),
            Err(raw) => raw,
        };
        if writer.write_all(&Frame::new(id, flags, body).encode().expect("small frames encode")).is_err() {
            // The agent shut down (a SHUTDOWN flag or message) and left.
            break;
        }
        *sent_on.entry(id).or_default() += 1;
        if flags.contains(Flags::SHUTDOWN) || (id == CONTROL_ID && matches!(f.body, Body::Shutdown(_))) {
            // From here on the agent may leave before it reads the rest.
            shutting_down = true;
        }
        if flags.contains(Flags::SESSION_START) && id != CONTROL_ID && !shutting_down {
            started.push(id);
        }
    }
    if script.credit_at_end {
        for id in &started {
            let credit = Frame::message(*id, Flags::NONE, &Message::Credit { bytes: 64 << 20 }).expect("encodes");
            let _ = writer.write_all(&credit.encode().expect("encodes"));
        }
    }
    let grace = u32::from(script.final_grace_ms % 50);
    let shutdown =
        Frame::message(CONTROL_ID, Flags::SHUTDOWN, &Message::Shutdown { grace_ms: grace }).expect("encodes");
    let _ = writer.write_all(&shutdown.encode().expect("encodes"));

    let outcome = done_rx.recv_timeout(WAIT).expect("the agent did not exit after Shutdown");
    assert_eq!(outcome, Outcome::Shutdown);
    agent.join().expect("the agent thread");
    drop(host);
    let frames = reader.join().expect("the reader thread");

    let first = frames.first().expect("the agent said nothing");
    assert!(
        first.id == CONTROL_ID && matches!(first.decode_body(), Ok(Message::Ready(_))),
        "the agent's first frame is not Ready"
    );
    let mut terminals: HashMap<u32, u32> = HashMap::new();
    let mut window_used: HashMap<u32, u64> = HashMap::new();
    for f in &frames {
        let msg = f.decode_body();
        assert!(msg.is_ok(), "the agent sent an undecodable body on session {}", f.id);
        if f.flags.contains(Flags::TERMINAL) {
            *terminals.entry(f.id).or_default() += 1;
        }
        if !matches!(msg, Ok(Message::Credit { .. })) {
            *window_used.entry(f.id).or_default() += f.wire_len() as u64;
        }
    }
    for (id, n) in &terminals {
        let sent = sent_on.get(id).copied().unwrap_or(0);
        assert!(*n <= sent, "session {id} got {n} terminal frames for {sent} frames sent on it");
    }
    for id in started {
        // A session whose window the host let run out cannot send its
        // terminal frame (it counts against the window, after the output
        // still in the pipe): the host ends it (the relay aborts sessions
        // still open at the end). Below half a window nothing can block it.
        let blocked =
            !script.credit_at_end && window_used.get(&id).copied().unwrap_or(0) >= u64::from(INITIAL_WINDOW / 2);
        assert!(blocked || terminals.contains_key(&id), "session {id} was started but never ended");
    }
    frames
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exec(program: Program, args: &[&str]) -> Exec {
        Exec {
            program,
            args: args.iter().map(|a| a.to_string()).collect(),
            env: vec![(EnvKey::Other, "x".into())],
            cwd: None,
            user: None,
            tty: None,
            stdin: false,
            rlimit: None,
            stdout_pipe: false,
        }
    }

    #[test]
    fn requests_reach_the_agent_and_every_session_ends_once() {
        prepare_process();
        let start = |id: u8, body: Body| HostFrame { id: Id::Small(id), flags: Flags::SESSION_START.bits(), body };
        let script = AgentScript {
            frames: vec![
                start(0, Body::Exec(exec(Program::Echo, &["hi"]))),
                start(1, Body::Fs(Fs::Stat(Place(vec![Part::A])))),
                start(2, Body::Raw(vec![0xff, 0x00])),
                HostFrame { id: Id::Small(5), flags: 0, body: Body::Credit(7) },
            ],
            final_grace_ms: 0,
            credit_at_end: true,
        };
        let frames = run(&script);
        let on = |id: u32| frames.iter().filter(move |f| f.id == id);
        assert!(
            on(1).any(|f| matches!(f.decode_body(), Ok(Message::ExecStarted { .. }))),
            "the command was not started"
        );
        for id in [1, 2, 3] {
            assert_eq!(on(id).filter(|f| f.flags.contains(Flags::TERMINAL)).count(), 1, "session {id}");
        }
    }
}
