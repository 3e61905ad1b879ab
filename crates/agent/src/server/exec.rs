//! Exec sessions: starting a command, its stdin, its end.
//!
//! Invariants:
//! - Stdin is paced by credit: the agent returns `Credit{wire bytes}` once
//!   an `ExecStdin` frame's bytes are written into the process (or, when
//!   the process has no stdin or closed it, at once), so the client never
//!   stalls; a client that queues more than [`STDIN_QUEUE_LIMIT`] beyond
//!   that is cut off (its session aborted).
//! - A command's session ends with `ExecExited` only once the process is
//!   reaped and every output stream is closed (ended, handed over, or
//!   abandoned after the drain bounds).
//! - Every command runs in its own process group: signals and kills go to
//!   the group (`-pid`).

use super::output::{OutStream, OutputPath, StreamKind};
use super::session::{Kind, Session};
use super::{encode, Server};
use crate::oom;
use crate::spawn::{self, ChildIo};
use crate::sys::{self, Fd};
use alcove_protocol::{ExecRequest, ExitStatus, Flags, Message, SpawnError, SpawnErrorKind, INITIAL_WINDOW};
use std::collections::VecDeque;
use std::io;
use std::path::PathBuf;
use std::time::Instant;

/// Most sessions open at once.
const MAX_SESSIONS: usize = 4096;
/// Stdin bytes a client may queue beyond its window before it is cut off.
const STDIN_QUEUE_LIMIT: usize = 2 * INITIAL_WINDOW as usize;

#[derive(Debug)]
pub(super) struct StdinChunk {
    data: Vec<u8>,
    written: usize,
    /// Wire bytes to credit when written (0 for agent-made chunks).
    credit: u32,
}

/// The command's stdin (a pipe, or the terminal's master side).
#[derive(Debug)]
pub(super) struct StdinSink {
    pub(super) fd: Option<Fd>,
    pub(super) queue: VecDeque<StdinChunk>,
    queued_bytes: usize,
    eof_requested: bool,
    pty: bool,
}

/// A running (or exited, still draining) command.
#[derive(Debug)]
pub(super) struct ExecSession {
    pub(super) pid: libc::pid_t,
    pub(super) streams: Vec<OutStream>,
    pub(super) stdin: Option<StdinSink>,
    pub(super) tty: Option<Fd>,
    pub(super) exit: Option<(Option<i32>, Option<i32>)>,
    pub(super) exited_at: Option<Instant>,
    /// The OOM counter file and its value when the command started.
    oom: Option<(PathBuf, u64)>,
    /// Output frames sent, spliced among them, and spliced frames the
    /// channel took only partly at first (for the log).
    pub(super) frames: u64,
    pub(super) spliced: u64,
    pub(super) resumed: u64,
}

impl Server {
    fn refuse_exec(&mut self, id: u32, e: SpawnError) {
        log!("session {id}: exec refused: {} ({})", e.message, e.kind.as_str());
        self.channel.push_frame(&encode(id, Flags::TERMINAL, &Message::ExecFailed(e)));
    }

    pub(super) fn start_exec(&mut self, id: u32, req: ExecRequest) {
        if self.shutdown.is_some() {
            return self.refuse_exec(
                id,
                SpawnError { kind: SpawnErrorKind::ShuttingDown, message: "the sandbox is shutting down".into() },
            );
        }
        if self.sessions.len() >= MAX_SESSIONS {
            return self.refuse_exec(
                id,
                SpawnError {
                    kind: SpawnErrorKind::ResourceSetupFailed,
                    message: format!("too many open sessions ({MAX_SESSIONS})"),
                },
            );
        }
        let prepared = match spawn::prepare(&req, &self.cfg.defaults, &self.cfg.root) {
            Ok(p) => p,
            Err(e) => return self.refuse_exec(id, e),
        };
        // Looked up per command: the host may move the agent between cgroups.
        let oom = oom::find_counter().and_then(|p| oom::read_counter(&p).map(|n| (p, n)));
        let child = match spawn::spawn(&prepared) {
            Ok(c) => c,
            Err(e) => return self.refuse_exec(id, e),
        };
        let pid = child.pid;
        let port = self.cfg.channel_is_port;
        let pipe_path = OutputPath::for_stream(true, port);
        let (streams, stdin, tty) = match child.io {
            ChildIo::Pipes { stdin, stdout, stderr } => (
                vec![
                    OutStream::new(stdout, StreamKind::Stdout, pipe_path),
                    OutStream::new(stderr, StreamKind::Stderr, pipe_path),
                ],
                stdin.map(|fd| StdinSink {
                    fd: Some(fd),
                    queue: VecDeque::new(),
                    queued_bytes: 0,
                    eof_requested: false,
                    pty: false,
                }),
                None,
            ),
            ChildIo::Pty { master } => {
                let dup = |fd: &Fd| -> Option<Fd> {
                    // SAFETY: duplicating an fd we own.
                    let n = unsafe { libc::fcntl(fd.raw(), libc::F_DUPFD_CLOEXEC, 3) };
                    (n >= 0).then(|| Fd::new(n))
                };
                let (Some(w), Some(t)) = (dup(&master), dup(&master)) else {
                    let _ = sys::kill(-pid, libc::SIGKILL);
                    self.sessions.track_pid(pid, 0);
                    return self.refuse_exec(
                        id,
                        SpawnError {
                            kind: SpawnErrorKind::ResourceSetupFailed,
                            message: "cannot duplicate the terminal".into(),
                        },
                    );
                };
                (
                    vec![OutStream::new(master, StreamKind::Stdout, OutputPath::for_stream(false, port))],
                    Some(StdinSink {
                        fd: Some(w),
                        queue: VecDeque::new(),
                        queued_bytes: 0,
                        eof_requested: false,
                        pty: true,
                    }),
                    Some(t),
                )
            }
        };
        let mut shown = format!("{:?}", req.argv);
        if shown.len() > 200 {
            let cut = (0..=200).rev().find(|i| shown.is_char_boundary(*i)).unwrap_or(0);
            shown.truncate(cut);
            shown.push_str("...");
        }
        log!("session {id}: started pid {pid}: {shown}");
        self.sessions.track_pid(pid, id);
        let exec = ExecSession {
            pid,
            streams,
            stdin,
            tty,
            exit: None,
            exited_at: None,
            oom,
            frames: 0,
            spliced: 0,
            resumed: 0,
        };
        self.sessions.open(id, Kind::Exec(Box::new(exec)));
        self.send_on(id, Flags::NONE, &Message::ExecStarted { pid: pid as u32 });
        if req.stdout_pipe && !self.cfg.channel_is_port {
            self.hand_over_stdout(id);
        }
    }

    pub(super) fn on_stdin(&mut self, id: u32, data: Vec<u8>, wire: u32) {
        let mut credit_now = false;
        let mut abort = false;
        if let Some(Session { kind: Kind::Exec(e), .. }) = self.sessions.get_mut(&id) {
            match &mut e.stdin {
                Some(sink) if sink.fd.is_some() && !sink.eof_requested => {
                    if sink.queued_bytes + data.len() > STDIN_QUEUE_LIMIT {
                        abort = true;
                    } else if data.is_empty() {
                        credit_now = true;
                    } else {
                        sink.queued_bytes += data.len();
                        sink.queue.push_back(StdinChunk { data, written: 0, credit: wire });
                    }
                }
                // No stdin (or it is closed): the bytes go nowhere, but the
                // client must not stall waiting for credit.
                _ => credit_now = true,
            }
        } else {
            // Stdin for a non-exec session.
            abort = true;
        }
        if abort {
            self.abort_session(id, "stdin beyond the flow-control window or on a non-exec session");
        } else if credit_now {
            self.send_credit(id, wire);
        }
    }

    pub(super) fn on_stdin_eof(&mut self, id: u32) {
        if let Some(Session { kind: Kind::Exec(e), .. }) = self.sessions.get_mut(&id) {
            if let Some(sink) = &mut e.stdin {
                if !sink.eof_requested {
                    sink.eof_requested = true;
                    if sink.pty {
                        // The terminal's EOF character (VEOF, ^D by default).
                        sink.queued_bytes += 1;
                        sink.queue.push_back(StdinChunk { data: vec![0x04], written: 0, credit: 0 });
                    } else if sink.queue.is_empty() {
                        sink.fd = None;
                    }
                }
            }
        }
    }

    pub(super) fn write_stdin(&mut self, id: u32) {
        let mut credits: u64 = 0;
        if let Some(Session { kind: Kind::Exec(e), .. }) = self.sessions.get_mut(&id) {
            if let Some(sink) = &mut e.stdin {
                while let (Some(fd), Some(front)) = (&sink.fd, sink.queue.front_mut()) {
                    match sys::write(fd.raw(), &front.data[front.written..]) {
                        Ok(n) => {
                            front.written += n;
                            if front.written == front.data.len() {
                                credits += u64::from(front.credit);
                                sink.queued_bytes = sink.queued_bytes.saturating_sub(front.data.len());
                                sink.queue.pop_front();
                            }
                        }
                        Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
                        Err(err) => {
                            if err.raw_os_error() != Some(libc::EPIPE) {
                                log!("session {id}: writing stdin failed: {err}");
                            }
                            // The process closed its stdin: discard, but credit.
                            for c in sink.queue.drain(..) {
                                credits += u64::from(c.credit);
                            }
                            sink.queued_bytes = 0;
                            sink.fd = None;
                        }
                    }
                }
                if sink.queue.is_empty() && sink.eof_requested && !sink.pty {
                    sink.fd = None;
                }
            }
        }
        while credits > 0 {
            let c = credits.min(u64::from(u32::MAX)) as u32;
            self.send_credit(id, c);
            credits -= u64::from(c);
        }
    }

    pub(super) fn maybe_finish_exec(&mut self, id: u32) {
        let Some(s) = self.sessions.get_mut(&id) else { return };
        let Kind::Exec(e) = &s.kind else { return };
        let Some((code, signal)) = e.exit else { return };
        if e.streams.iter().any(|st| st.fd.is_some()) {
            return;
        }
        let oom_killed = signal == Some(libc::SIGKILL)
            && e.oom
                .as_ref()
                .is_some_and(|(path, before)| oom::read_counter(path).is_some_and(|after| after > *before));
        let status = ExitStatus { code, signal, oom_killed };
        log!(
            "session {id}: pid {} ended: {status:?}; {} output frames, {} spliced ({} resumed)",
            e.pid,
            e.frames,
            e.spliced,
            e.resumed
        );
        s.kind = Kind::Closing;
        s.final_frame = Some(encode(id, Flags::TERMINAL, &Message::ExecExited(status)));
    }

    pub(super) fn reap(&mut self) {
        for r in sys::reap_all() {
            match self.sessions.take_pid(r.pid) {
                Some(id) => {
                    if let Some(Session { kind: Kind::Exec(e), .. }) = self.sessions.get_mut(&id) {
                        if e.pid == r.pid {
                            e.exit = Some(sys::decode_status(r.status));
                            e.exited_at = Some(Instant::now());
                        }
                    }
                }
                None => log!("reaped orphan pid {}", r.pid),
            }
        }
    }
}
