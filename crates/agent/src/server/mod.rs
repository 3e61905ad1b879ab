//! The agent's event loop: one thread, `poll(2)` over the channel, a
//! signalfd, a wake pipe for worker results, and every session's pipes.
//!
//! The loop's state is split by concern, each part in its own file with
//! its own invariants:
//! - `channel.rs`: the channel to the host and the bytes queued for it
//!   (`Channel`);
//! - `inbound.rs`: decoding the host's frames and dispatching them;
//! - `session.rs`: the session table (`SessionTable`), windows, terminal
//!   frames, and per-iteration progress;
//! - `exec.rs`: commands (start, stdin, exit); `output.rs`: their output and
//!   the three paths it takes to the host (`OutputPath`);
//! - `fs.rs`: file sessions and the worker threads of one-shot operations
//!   (`FsWorkers`);
//! - `shutdown.rs`: signals, the shutdown sequence, the agent's exit.
//!
//! Invariants of the whole:
//! - Only this loop touches sessions, the channel and the outbound buffer;
//!   one-shot file operations run on short-lived worker threads that send
//!   back a reply through an mpsc channel and a wake pipe.
//! - Flow control: a session's `window` is the bytes of frames (header
//!   included) the agent may still send on it. Output is read from a pipe only
//!   when a chunk frame fits, so a stalled client stalls only its own command
//!   (which then blocks on its pipe); nothing is dropped. Every frame of a
//!   session counts, including the terminal one; `Credit` frames the agent
//!   sends do not (they are control data, never credited back).
//! - Stdin: the agent returns `Credit{wire bytes}` when an `ExecStdin` or
//!   `FsData` frame has been written into the process or the file.
//! - A session ends with exactly one TERMINAL frame and nothing after it.
//! - No fd is polled for work the loop could not do: a stream only while
//!   its session's window holds a chunk and the channel has no backlog, a
//!   stdin only while bytes wait for it.

use crate::oom;
use crate::spawn::Defaults;
use crate::sys::{self, Fd};
use alcove_protocol::{
    BootTimings, Flags, Frame, FsError, FsErrorKind, Message, Ready, SpawnError, SpawnErrorKind, CONTROL_ID,
    HEADER_LEN, MAX_CHUNK, PROTOCOL_VERSION,
};
use channel::{Channel, PORT_RETRY};
use fs::FsWorkers;
use heartbeat::Heartbeat;
use session::{Kind, SessionTable};
use shutdown::{ShutdownState, FINAL_DRAIN};
use std::io;
use std::os::fd::RawFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub use shutdown::DEFAULT_GRACE_MS;

/// Upper bound of the encoding overhead of a data message (variant tag and
/// length prefix) on top of the frame header.
const DATA_OVERHEAD: usize = HEADER_LEN + 16;
/// Smallest data chunk worth a frame when the window is nearly used up.
const MIN_CHUNK: usize = 512;
/// How long output is still collected after a command exits while its pipes
/// stay open (a background child holds them), and how much later a pipe that
/// keeps producing (while the client keeps up) is abandoned; waiting for
/// credit never counts. Shared with clients that read a handed-over pipe.
const DRAIN_GRACE: Duration = alcove_protocol::OUTPUT_DRAIN_GRACE;
/// See [`DRAIN_GRACE`].
const DRAIN_CAP: Duration = alcove_protocol::OUTPUT_DRAIN_CAP;

macro_rules! log {
    ($($arg:tt)*) => { $crate::logging::log(format_args!($($arg)*)) };
}

mod channel;
mod exec;
mod fs;
mod heartbeat;
mod inbound;
mod output;
mod session;
mod shutdown;

/// How the loop ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The host asked for a shutdown (or the agent decided on one).
    Shutdown,
    /// The channel closed: the host is gone.
    HostGone,
}

/// Static settings of the loop.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Command defaults.
    pub defaults: Defaults,
    /// The root whose /etc/passwd and /etc/group are read.
    pub root: PathBuf,
    /// Whether the agent is PID 1 of its namespace (it then signals every
    /// process at shutdown, not only sessions).
    pub pid1: bool,
    /// Heartbeat period.
    pub heartbeat: Duration,
    /// The channel is a virtio-console port: end of file (and POLLHUP) means
    /// the host side is not connected yet or right now, not that it is gone
    /// for good; the agent backs off and retries instead of exiting.
    pub channel_is_port: bool,
}

/// What a polled descriptor stands for.
#[derive(Clone, Copy)]
enum Target {
    Chan,
    Signal,
    Wake,
    Stream(u32, usize),
    Stdin(u32),
}

/// The agent's server.
pub struct Server {
    cfg: ServerConfig,
    /// The channel to the host, inbound and outbound.
    channel: Channel,
    /// Open sessions and the pids of their commands.
    sessions: SessionTable,
    /// SIGCHLD, SIGTERM and SIGINT.
    sigfd: Fd,
    /// Results of one-shot file operations, from worker threads.
    workers: FsWorkers,
    heartbeat: Heartbeat,
    shutdown: Option<ShutdownState>,
    /// Scratch buffer for output reads (reused: no allocation and zeroing
    /// of a whole chunk per read).
    sbuf: Vec<u8>,
    /// Work is pending that no fd will announce: poll without waiting.
    busy: bool,
}

/// Encodes a message, replacing one too large for a frame by a small error.
fn encode(id: u32, flags: Flags, msg: &Message) -> Frame {
    match Frame::message(id, flags, msg) {
        Ok(f) => f,
        Err(e) => {
            // Only an oversized message can fail; replace it by a small error.
            log!("cannot encode a reply on session {id}: {e}");
            let fallback = match msg {
                Message::FsResponse(_) => Message::FsResponse(Err(FsError {
                    kind: FsErrorKind::Other,
                    message: format!("the reply does not fit in one frame: {e}"),
                })),
                _ => Message::ExecFailed(SpawnError {
                    kind: SpawnErrorKind::Other,
                    message: format!("reply too large: {e}"),
                }),
            };
            Frame::message(id, flags, &fallback).unwrap_or_else(|_| Frame::new(id, flags, Vec::new()))
        }
    }
}

impl Server {
    /// A server on the channel `chan` (a connected stream socket or a
    /// virtio-console port). `sigfd` must be a signalfd for SIGCHLD (and
    /// optionally SIGTERM/SIGINT) with those signals blocked in every thread.
    pub fn new(cfg: ServerConfig, chan: Fd, sigfd: Fd) -> io::Result<Server> {
        let channel = Channel::new(chan, cfg.channel_is_port)?;
        let workers = FsWorkers::new()?;
        let heartbeat = Heartbeat::new(cfg.heartbeat, Instant::now());
        Ok(Server {
            cfg,
            channel,
            sessions: SessionTable::new(),
            sigfd,
            workers,
            heartbeat,
            shutdown: None,
            sbuf: vec![0u8; MAX_CHUNK],
            busy: false,
        })
    }

    /// Sends `Ready` and serves until shutdown or until the host is gone.
    pub fn run(mut self, boot: BootTimings) -> Outcome {
        let ready = Message::Ready(Ready {
            protocol_version: PROTOCOL_VERSION,
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            boot,
        });
        self.channel.push_frame(&encode(CONTROL_ID, Flags::NONE, &ready));
        log!("ready (protocol {PROTOCOL_VERSION}); OOM counter: {:?}", oom::find_counter());
        loop {
            if self.channel.host_gone {
                self.kill_everything(libc::SIGKILL);
                self.wait_children(Duration::from_secs(1));
                log!("the host closed the channel; exiting");
                return Outcome::HostGone;
            }
            if self.shutdown_complete() {
                self.channel.flush_blocking(Duration::from_secs(2));
                log!("shutdown complete");
                return Outcome::Shutdown;
            }
            if let Err(e) = self.iterate() {
                log!("event loop error: {e}; shutting down");
                self.begin_shutdown(DEFAULT_GRACE_MS);
                // Avoid spinning on a persistent poll failure.
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }

    fn iterate(&mut self) -> io::Result<()> {
        let now = Instant::now();
        let mut fds: Vec<libc::pollfd> = Vec::new();
        let mut targets: Vec<Target> = Vec::new();
        let mut add = |fd: RawFd, events: libc::c_short, t: Target, fds: &mut Vec<libc::pollfd>| {
            fds.push(libc::pollfd { fd, events, revents: 0 });
            targets.push(t);
        };
        let mut timeout = self.heartbeat.next_at().saturating_duration_since(now);
        if std::mem::take(&mut self.busy) {
            timeout = Duration::ZERO;
        }
        if self.channel.retry_at.is_some_and(|t| now >= t) {
            self.channel.retry_at = None;
        }
        match self.channel.retry_at {
            // A disconnected port reports POLLHUP constantly: leave it out.
            Some(t) => timeout = timeout.min(t.saturating_duration_since(now)),
            None => {
                let mut chan_events = 0;
                if !self.channel.framing_lost {
                    chan_events |= libc::POLLIN;
                }
                if self.channel.backlog() {
                    chan_events |= libc::POLLOUT;
                }
                add(self.channel.fd.raw(), chan_events, Target::Chan, &mut fds);
            }
        }
        add(self.sigfd.raw(), libc::POLLIN, Target::Signal, &mut fds);
        add(self.workers.wake_r.raw(), libc::POLLIN, Target::Wake, &mut fds);
        // While the channel cannot take what is already encoded, output is
        // left in the pipes: it is read later in larger chunks, and the
        // commands feel the backpressure.
        let channel_backlog = self.channel.backlog();
        for (&id, s) in self.sessions.iter() {
            match &s.kind {
                Kind::Exec(e) => {
                    let can_send = s.window >= (DATA_OVERHEAD + MIN_CHUNK) as i64 && !channel_backlog;
                    for (i, st) in e.streams.iter().enumerate() {
                        if let (Some(fd), true) = (&st.fd, can_send) {
                            match st.rest_until {
                                Some(t) if t > now && e.exit.is_none() => timeout = timeout.min(t - now),
                                _ => add(fd.raw(), libc::POLLIN, Target::Stream(id, i), &mut fds),
                            }
                        }
                    }
                    if let Some(sink) = &e.stdin {
                        if let (Some(fd), false) = (&sink.fd, sink.queue.is_empty()) {
                            add(fd.raw(), libc::POLLOUT, Target::Stdin(id), &mut fds);
                        }
                    }
                    // Wake when the drain grace ends; after it, open streams
                    // are read (and closed when empty) on every iteration,
                    // and data or credit wakes the loop.
                    if let Some(t) = e.exited_at {
                        if now < t + DRAIN_GRACE && e.streams.iter().any(|s| s.fd.is_some()) {
                            timeout = timeout.min(t + DRAIN_GRACE - now);
                        }
                    }
                }
                Kind::Read(r) if !r.eof && s.window >= (DATA_OVERHEAD + MIN_CHUNK) as i64 => timeout = Duration::ZERO,
                _ => {}
            }
            if let Some(f) = &s.final_frame {
                if s.window >= f.wire_len() as i64 && !matches!(s.kind, Kind::Exec(_)) {
                    timeout = Duration::ZERO;
                }
            }
        }
        if let Some(sd) = &self.shutdown {
            let until = match sd.killed_at {
                None => sd.kill_at,
                Some(t) => t + FINAL_DRAIN,
            };
            // Re-check at least every 50 ms while stopping (children exit).
            timeout = timeout.min(until.saturating_duration_since(now)).min(Duration::from_millis(50));
        }

        sys::poll(&mut fds, Some(timeout))?;

        let mut ready_streams = Vec::new();
        let mut ready_stdin = Vec::new();
        for (pfd, t) in fds.iter().zip(targets.iter()) {
            if pfd.revents == 0 {
                continue;
            }
            match *t {
                Target::Chan => {
                    if pfd.revents & libc::POLLOUT != 0 {
                        self.channel.full = false;
                        self.channel.flush();
                    }
                    if pfd.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 {
                        if !self.channel.framing_lost {
                            self.read_channel();
                        } else if self.cfg.channel_is_port {
                            self.channel.retry_at = Some(Instant::now() + PORT_RETRY);
                        } else if pfd.revents & (libc::POLLHUP | libc::POLLERR) != 0 {
                            // Not reading any more, and the peer hung up.
                            self.channel.host_gone = true;
                        }
                    }
                }
                Target::Signal => self.handle_signals(),
                Target::Wake => self.handle_results(),
                Target::Stream(id, i) => ready_streams.push((id, i)),
                Target::Stdin(id) => ready_stdin.push(id),
            }
        }
        for id in ready_stdin {
            self.write_stdin(id);
        }
        for (id, i) in ready_streams {
            self.pump_stream(id, i, false);
        }
        self.progress_sessions();
        self.send_heartbeat();
        self.progress_shutdown();
        self.channel.flush();
        Ok(())
    }

    fn send_heartbeat(&mut self) {
        let Some(seq) = self.heartbeat.due(Instant::now(), self.channel.frames_out) else {
            return;
        };
        let msg = Message::Heartbeat { seq, active_sessions: self.sessions.len() as u32 };
        self.channel.push_frame(&encode(CONTROL_ID, Flags::NONE, &msg));
        self.heartbeat.sent(self.channel.frames_out);
    }
}
