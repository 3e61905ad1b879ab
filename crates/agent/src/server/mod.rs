//! The agent's event loop: one thread, `poll(2)` over the channel, a
//! signalfd, a wake pipe for worker results, and every session's pipes.
//!
//! Invariants:
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
//! - SIGCHLD is blocked in every thread and read from the signalfd; all
//!   children (sessions and re-parented orphans) are reaped with
//!   `waitpid(-1, WNOHANG)` and matched to sessions by pid.
//! - A session ends with exactly one TERMINAL frame and nothing after it.
//! - Zero-copy output (socket channel only, not a virtio port): when nothing
//!   else is queued for the channel, an output chunk of a command's pipe is
//!   sent as the frame's prefix (`codec::data_frame_prefix`) followed by
//!   `splice(2)` of exactly the announced bytes from the pipe into the
//!   socket. A frame the socket took only partly is `Spliced` state: it is
//!   completed before any other byte is written to the channel, and while it
//!   is pending no output pipe is read (the frame's remaining bytes are still
//!   in its pipe). Window accounting is the same as for an encoded frame.

use crate::fsops::{self, ReadStream, WriteStream};
use crate::oom;
use crate::spawn::{self, ChildIo, Defaults};
use crate::sys::{self, Fd};
use alcove_protocol::codec::{data_frame_prefix, DataKind, DataPrefix};
use alcove_protocol::fdpass;
use alcove_protocol::{
    BootTimings, ExecRequest, ExitStatus, Flags, Frame, FrameDecoder, FsError, FsErrorKind, FsReply, FsRequest,
    Message, Ready, SpawnError, SpawnErrorKind, CONTROL_ID, HEADER_LEN, INITIAL_WINDOW, MAX_CHUNK, PROTOCOL_VERSION,
};
use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::fd::RawFd;
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

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
/// Grace used when the agent must shut down on its own (lost framing, SIGTERM).
pub const DEFAULT_GRACE_MS: u32 = 2000;
/// How long final frames may take to drain after the last SIGKILL.
const FINAL_DRAIN: Duration = Duration::from_secs(2);
/// Most sessions open at once.
const MAX_SESSIONS: usize = 4096;
/// Stdin bytes a client may queue beyond its window before it is cut off.
const STDIN_QUEUE_LIMIT: usize = 2 * INITIAL_WINDOW as usize;
/// Output coalescing: a stream read twice within [`STREAMING_GAP`] is
/// producing continuously; after a read that did not fill a chunk it rests
/// this long before the next read, so the pipe (grown to 1 MiB, see
/// `spawn`) collects a large chunk instead of one frame per `write(2)` of the
/// command (busybox writes 4 KiB at a time). A lone burst (an `echo`, a
/// keystroke's echo) is never delayed, nor is anything after the command
/// has exited.
const OUTPUT_COALESCE: Duration = Duration::from_micros(250);
/// See [`OUTPUT_COALESCE`].
const STREAMING_GAP: Duration = Duration::from_millis(2);
/// Send buffer asked for on a socket channel (the kernel doubles it).
const CHANNEL_SNDBUF: usize = INITIAL_WINDOW as usize;
/// Output chunks at least this large are spliced from the pipe into the
/// channel; smaller ones are cheaper to copy in one `write(2)`.
const SPLICE_MIN: usize = 16 * 1024;

macro_rules! log {
    ($($arg:tt)*) => { $crate::logging::log(format_args!($($arg)*)) };
}

mod channel;
mod exec;
mod fs;
mod inbound;
mod progress;
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

/// Back-off while a virtio-console port's host side is not connected.
const PORT_RETRY: Duration = Duration::from_millis(50);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StreamKind {
    Stdout,
    Stderr,
}

impl StreamKind {
    fn data_kind(self) -> DataKind {
        match self {
            StreamKind::Stdout => DataKind::ExecStdout,
            StreamKind::Stderr => DataKind::ExecStderr,
        }
    }
}

#[derive(Debug)]
struct OutStream {
    fd: Option<Fd>,
    kind: StreamKind,
    /// A pipe (not a terminal), so its data can be spliced.
    splice: bool,
    /// When the last read returned data.
    last_read: Option<Instant>,
    /// Not read again before this (output coalescing).
    rest_until: Option<Instant>,
}

impl OutStream {
    fn new(fd: Fd, kind: StreamKind, splice: bool) -> OutStream {
        OutStream { fd: Some(fd), kind, splice, last_read: None, rest_until: None }
    }

    /// The coalescing clock after `n` bytes left this stream (up to `max`
    /// were allowed): see [`OUTPUT_COALESCE`].
    fn note_output(&mut self, n: usize, max: usize, exited: bool) {
        let now = Instant::now();
        let streaming = self.last_read.is_some_and(|t| now.duration_since(t) < STREAMING_GAP);
        self.last_read = Some(now);
        self.rest_until = (streaming && n < max && !exited).then(|| now + OUTPUT_COALESCE);
    }
}

#[derive(Debug)]
struct StdinChunk {
    data: Vec<u8>,
    written: usize,
    /// Wire bytes to credit when written (0 for agent-made chunks).
    credit: u32,
}

#[derive(Debug)]
struct StdinSink {
    fd: Option<Fd>,
    queue: VecDeque<StdinChunk>,
    queued_bytes: usize,
    eof_requested: bool,
    pty: bool,
}

#[derive(Debug)]
struct ExecSession {
    pid: libc::pid_t,
    streams: Vec<OutStream>,
    stdin: Option<StdinSink>,
    tty: Option<Fd>,
    exit: Option<(Option<i32>, Option<i32>)>,
    exited_at: Option<Instant>,
    /// The OOM counter file and its value when the command started.
    oom: Option<(PathBuf, u64)>,
    /// Output frames sent, spliced among them, and spliced frames the
    /// channel took only partly at first (for the log).
    frames: u64,
    spliced: u64,
    resumed: u64,
}

/// A spliced frame the channel has taken only partly.
#[derive(Debug)]
struct Spliced {
    id: u32,
    prefix: DataPrefix,
    /// Bytes of the prefix already written.
    prefix_sent: usize,
    /// The output pipe (a duplicate: the session may close its own).
    pipe: Fd,
    /// Payload bytes still in the pipe.
    left: usize,
}

/// What an attempt to splice an output chunk did.
enum SpliceOutcome {
    /// Nothing was sent; read the chunk the ordinary way.
    NotSent,
    /// The frame was sent, or is pending in `Server::spliced`.
    Sent,
    /// The channel is full (or broken): nothing was read or sent.
    Deferred,
}

#[derive(Debug)]
enum Kind {
    Exec(Box<ExecSession>),
    Read(ReadStream),
    Write(WriteStream),
    Pending,
    /// Only the terminal frame is left to send.
    Closing,
}

#[derive(Debug)]
struct Session {
    gen: u64,
    window: i64,
    kind: Kind,
    final_frame: Option<Frame>,
}

#[derive(Debug)]
struct ShutdownState {
    kill_at: Instant,
    killed_at: Option<Instant>,
}

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
    chan: Fd,
    decoder: FrameDecoder,
    framing_lost: bool,
    out: Vec<u8>,
    out_pos: usize,
    sessions: HashMap<u32, Session>,
    pids: HashMap<libc::pid_t, u32>,
    sigfd: Fd,
    wake_r: Fd,
    wake_w: Fd,
    results_tx: mpsc::Sender<(u32, u64, Result<FsReply, FsError>)>,
    results_rx: mpsc::Receiver<(u32, u64, Result<FsReply, FsError>)>,
    next_gen: u64,
    heartbeat_seq: u64,
    next_heartbeat: Instant,
    shutdown: Option<ShutdownState>,
    host_gone: bool,
    rbuf: Vec<u8>,
    /// Scratch buffer for output reads (reused: no allocation and zeroing
    /// of a whole chunk per read).
    sbuf: Vec<u8>,
    /// Port mode: the channel is left out of poll until then.
    chan_retry_at: Option<Instant>,
    /// Work is pending that no fd will announce: poll without waiting.
    busy: bool,
    /// A spliced frame still being written (see the module docs).
    spliced: Option<Spliced>,
    /// The channel refused the start of a spliced frame: no output is read
    /// until it is writable again.
    chan_full: bool,
}

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
        sys::set_nonblocking(chan.raw(), true)?;
        sys::set_cloexec(chan.raw())?;
        if !cfg.channel_is_port {
            // Room for a whole window of output in the socket, so a burst
            // leaves without waiting for the relay to be scheduled.
            sys::grow_sndbuf(chan.raw(), CHANNEL_SNDBUF);
        }
        let (wake_r, wake_w) = sys::pipe()?;
        sys::set_nonblocking(wake_r.raw(), true)?;
        sys::set_nonblocking(wake_w.raw(), true)?;
        let (results_tx, results_rx) = mpsc::channel();
        let next_heartbeat = Instant::now() + cfg.heartbeat;
        Ok(Server {
            cfg,
            chan,
            decoder: FrameDecoder::new(),
            framing_lost: false,
            out: Vec::new(),
            out_pos: 0,
            sessions: HashMap::new(),
            pids: HashMap::new(),
            sigfd,
            wake_r,
            wake_w,
            results_tx,
            results_rx,
            next_gen: 1,
            heartbeat_seq: 0,
            next_heartbeat,
            shutdown: None,
            host_gone: false,
            rbuf: vec![0u8; 64 * 1024],
            sbuf: vec![0u8; MAX_CHUNK],
            chan_retry_at: None,
            busy: false,
            spliced: None,
            chan_full: false,
        })
    }

    /// Sends `Ready` and serves until shutdown or until the host is gone.
    pub fn run(mut self, boot: BootTimings) -> Outcome {
        let ready = Message::Ready(Ready {
            protocol_version: PROTOCOL_VERSION,
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            boot,
        });
        self.push_frame(&encode(CONTROL_ID, Flags::NONE, &ready));
        log!("ready (protocol {PROTOCOL_VERSION}); OOM counter: {:?}", oom::find_counter());
        loop {
            if self.host_gone {
                self.kill_everything(libc::SIGKILL);
                self.wait_children(Duration::from_secs(1));
                log!("the host closed the channel; exiting");
                return Outcome::HostGone;
            }
            if self.shutdown_complete() {
                self.flush_blocking(Duration::from_secs(2));
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
        let mut timeout = self.next_heartbeat.saturating_duration_since(now);
        if std::mem::take(&mut self.busy) {
            timeout = Duration::ZERO;
        }
        if self.chan_retry_at.is_some_and(|t| now >= t) {
            self.chan_retry_at = None;
        }
        match self.chan_retry_at {
            // A disconnected port reports POLLHUP constantly: leave it out.
            Some(t) => timeout = timeout.min(t.saturating_duration_since(now)),
            None => {
                let mut chan_events = 0;
                if !self.framing_lost {
                    chan_events |= libc::POLLIN;
                }
                if self.channel_backlog() {
                    chan_events |= libc::POLLOUT;
                }
                add(self.chan.raw(), chan_events, Target::Chan, &mut fds);
            }
        }
        add(self.sigfd.raw(), libc::POLLIN, Target::Signal, &mut fds);
        add(self.wake_r.raw(), libc::POLLIN, Target::Wake, &mut fds);
        // While the channel cannot take what is already encoded, output is
        // left in the pipes: it is read later in larger chunks, and the
        // commands feel the backpressure.
        let channel_backlog = self.channel_backlog();
        for (&id, s) in &self.sessions {
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
                        self.chan_full = false;
                        self.flush();
                    }
                    if pfd.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 {
                        if !self.framing_lost {
                            self.read_channel();
                        } else if self.cfg.channel_is_port {
                            self.chan_retry_at = Some(Instant::now() + PORT_RETRY);
                        } else if pfd.revents & (libc::POLLHUP | libc::POLLERR) != 0 {
                            // Not reading any more, and the peer hung up.
                            self.host_gone = true;
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
        self.heartbeat();
        self.progress_shutdown();
        self.flush();
        Ok(())
    }
}
