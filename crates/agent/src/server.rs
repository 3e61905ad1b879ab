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

    // ----- outbound -----

    fn push_frame(&mut self, f: &Frame) -> usize {
        if let Err(e) = f.encode_into(&mut self.out) {
            log!("dropping an unencodable frame on session {}: {e}", f.id);
            return 0;
        }
        f.wire_len()
    }

    /// Sends a frame on a session, charging its window.
    fn send_on(&mut self, id: u32, flags: Flags, msg: &Message) {
        let f = encode(id, flags, msg);
        let n = self.push_frame(&f) as i64;
        if let Some(s) = self.sessions.get_mut(&id) {
            s.window -= n;
        }
    }

    fn send_credit(&mut self, id: u32, bytes: u32) {
        if bytes > 0 {
            self.push_frame(&encode(id, Flags::NONE, &Message::Credit { bytes }));
        }
    }

    /// Whether bytes wait for the channel to become writable.
    fn channel_backlog(&self) -> bool {
        self.out_pos < self.out.len() || self.spliced.is_some() || self.chan_full
    }

    fn flush(&mut self) {
        if self.spliced.is_some() && !self.resume_splice() {
            return;
        }
        while self.out_pos < self.out.len() {
            match sys::write(self.chan.raw(), &self.out[self.out_pos..]) {
                Ok(0) => break,
                Ok(n) => self.out_pos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    self.channel_broken(&e);
                    return;
                }
            }
        }
        if self.out_pos == self.out.len() {
            self.out.clear();
            self.out_pos = 0;
        } else if self.out_pos > 1 << 20 {
            self.out.drain(..self.out_pos);
            self.out_pos = 0;
        }
    }

    fn flush_blocking(&mut self, limit: Duration) {
        let end = Instant::now() + limit;
        while (self.out_pos < self.out.len() || self.spliced.is_some()) && !self.host_gone {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                log!("gave up sending {} buffered bytes to the host", self.out.len() - self.out_pos);
                return;
            }
            let mut p = [libc::pollfd { fd: self.chan.raw(), events: libc::POLLOUT, revents: 0 }];
            if sys::poll(&mut p, Some(left)).is_err() {
                return;
            }
            self.flush();
        }
    }

    // ----- inbound -----

    fn read_channel(&mut self) {
        for _ in 0..16 {
            match sys::read(self.chan.raw(), &mut self.rbuf) {
                Ok(0) if self.cfg.channel_is_port => {
                    if self.decoder.pending() != 0 {
                        // A reconnecting host starts a fresh stream.
                        log!("the host side of the port disconnected inside a frame; dropping the partial frame");
                        self.decoder = FrameDecoder::new();
                    }
                    self.chan_retry_at = Some(Instant::now() + PORT_RETRY);
                    return;
                }
                Ok(0) => {
                    self.host_gone = true;
                    return;
                }
                Ok(n) => self.decoder.extend(&self.rbuf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    if e.raw_os_error() != Some(libc::ECONNRESET) {
                        log!("reading the channel failed: {e}");
                    }
                    self.host_gone = true;
                    return;
                }
            }
            if !self.drain_decoder() {
                return;
            }
        }
        self.drain_decoder();
    }

    /// Handles every buffered frame; false once framing is lost.
    fn drain_decoder(&mut self) -> bool {
        loop {
            match self.decoder.next_frame() {
                Ok(Some(f)) => self.on_frame(f),
                Ok(None) => return true,
                Err(e) => {
                    log!("lost framing on the channel ({e}); shutting down");
                    self.framing_lost = true;
                    self.begin_shutdown(DEFAULT_GRACE_MS);
                    return false;
                }
            }
        }
    }

    fn on_frame(&mut self, f: Frame) {
        if f.id == CONTROL_ID {
            match f.decode_body() {
                Ok(Message::Shutdown { grace_ms }) => self.begin_shutdown(grace_ms),
                Ok(_) if f.flags.contains(Flags::SHUTDOWN) => self.begin_shutdown(DEFAULT_GRACE_MS),
                Ok(Message::Touch) => {}
                Ok(other) => log!("ignoring unexpected control message {other:?}"),
                Err(e) if f.flags.contains(Flags::SHUTDOWN) => {
                    log!("shutdown frame with a bad body ({e}); shutting down anyway");
                    self.begin_shutdown(DEFAULT_GRACE_MS);
                }
                Err(e) => log!("ignoring a malformed control frame: {e}"),
            }
            return;
        }
        let id = f.id;
        let msg = match f.decode_body() {
            Ok(m) => m,
            Err(e) => {
                log!("malformed frame on session {id}: {e}");
                if f.flags.contains(Flags::SESSION_START) && !self.sessions.contains_key(&id) {
                    let m = Message::ExecFailed(SpawnError {
                        kind: SpawnErrorKind::InvalidRequest,
                        message: format!("malformed request: {e}"),
                    });
                    self.push_frame(&encode(id, Flags::TERMINAL, &m));
                } else {
                    self.abort_session(id, &format!("malformed frame: {e}"));
                }
                return;
            }
        };
        if f.flags.contains(Flags::SESSION_START) {
            if self.sessions.contains_key(&id) {
                log!("session {id} opened twice; ignoring the second request");
                return;
            }
            match msg {
                Message::ExecRequest(req) => self.start_exec(id, req),
                Message::FsRequest(req) => self.start_fs(id, req),
                other => {
                    let m = Message::ExecFailed(SpawnError {
                        kind: SpawnErrorKind::InvalidRequest,
                        message: format!(
                            "a session must start with ExecRequest or FsRequest, not {}",
                            msg_name(&other)
                        ),
                    });
                    self.push_frame(&encode(id, Flags::TERMINAL, &m));
                }
            }
            return;
        }
        let wire = f.wire_len() as u32;
        if !self.sessions.contains_key(&id) {
            // Late credit or data for a session that already ended.
            return;
        }
        match msg {
            Message::Credit { bytes } => {
                if let Some(s) = self.sessions.get_mut(&id) {
                    s.window = s.window.saturating_add(i64::from(bytes));
                }
            }
            Message::ExecStdin { data } => self.on_stdin(id, data, wire),
            Message::ExecStdinEof => self.on_stdin_eof(id),
            Message::ExecResize(size) => {
                if let Some(Kind::Exec(e)) = self.sessions.get(&id).map(|s| &s.kind) {
                    if let Some(t) = &e.tty {
                        if let Err(err) = spawn::set_winsize(t.raw(), size) {
                            log!("session {id}: resize failed: {err}");
                        }
                    }
                }
            }
            Message::ExecSignal { signal } => {
                if let Some(Kind::Exec(e)) = self.sessions.get(&id).map(|s| &s.kind) {
                    if !(1..=64).contains(&signal) {
                        log!("session {id}: ignoring invalid signal {signal}");
                    } else if e.exit.is_none() {
                        if let Err(err) = sys::kill(-e.pid, signal).or_else(|_| sys::kill(e.pid, signal)) {
                            log!("session {id}: signal {signal} to {} failed: {err}", e.pid);
                        }
                    }
                }
            }
            Message::FsData { data } => self.on_fs_data(id, &data, wire),
            Message::FsEnd => self.on_fs_end(id),
            // The host ends a session whose client is gone: a half-written
            // file is dropped, never completed.
            Message::SessionAborted { reason } => self.abort_session(id, &format!("ended by the host: {reason}")),
            other => self.abort_session(id, &format!("unexpected {} on an open session", msg_name(&other))),
        }
    }

    /// Ends a session after a protocol violation by its client.
    fn abort_session(&mut self, id: u32, reason: &str) {
        let Some(s) = self.sessions.get_mut(&id) else { return };
        log!("aborting session {id}: {reason}");
        match &mut s.kind {
            Kind::Exec(e) => {
                if e.exit.is_none() {
                    let _ = sys::kill(-e.pid, libc::SIGKILL);
                }
                // The session ends with ExecExited once the process is reaped.
            }
            Kind::Closing => {}
            _ => {
                s.kind = Kind::Closing;
                let err = FsError { kind: FsErrorKind::InvalidInput, message: reason.to_string() };
                s.final_frame = Some(encode(id, Flags::TERMINAL, &Message::FsResponse(Err(err))));
            }
        }
    }

    // ----- exec -----

    fn new_session(&mut self, id: u32, kind: Kind) {
        let gen = self.next_gen;
        self.next_gen += 1;
        self.sessions.insert(id, Session { gen, window: i64::from(INITIAL_WINDOW), kind, final_frame: None });
    }

    fn refuse_exec(&mut self, id: u32, e: SpawnError) {
        log!("session {id}: exec refused: {} ({})", e.message, e.kind.as_str());
        self.push_frame(&encode(id, Flags::TERMINAL, &Message::ExecFailed(e)));
    }

    fn start_exec(&mut self, id: u32, req: ExecRequest) {
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
        let (streams, stdin, tty) = match child.io {
            ChildIo::Pipes { stdin, stdout, stderr } => (
                vec![
                    OutStream::new(stdout, StreamKind::Stdout, true),
                    OutStream::new(stderr, StreamKind::Stderr, true),
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
                    self.pids.insert(pid, 0);
                    return self.refuse_exec(
                        id,
                        SpawnError {
                            kind: SpawnErrorKind::ResourceSetupFailed,
                            message: "cannot duplicate the terminal".into(),
                        },
                    );
                };
                (
                    vec![OutStream::new(master, StreamKind::Stdout, false)],
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
        self.pids.insert(pid, id);
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
        self.new_session(id, Kind::Exec(Box::new(exec)));
        self.send_on(id, Flags::NONE, &Message::ExecStarted { pid: pid as u32 });
        if req.stdout_pipe && !self.cfg.channel_is_port {
            self.hand_over_stdout(id);
        }
    }

    /// Answers [`ExecRequest::stdout_pipe`]: sends the read end of the
    /// command's stdout pipe to the host with `ExecStdoutPipe` (flag FD) and
    /// stops reading it. Only when the channel takes the frame's first byte
    /// right now with nothing queued before it (the descriptor must travel
    /// with that byte); otherwise, or on a terminal, stdout is relayed as
    /// usual, which the client handles alike.
    fn hand_over_stdout(&mut self, id: u32) {
        self.flush();
        if self.channel_backlog() {
            log!("session {id}: stdout relayed (the channel is busy)");
            return;
        }
        let Some(Session { kind: Kind::Exec(e), window, .. }) = self.sessions.get_mut(&id) else { return };
        let Some(stream) = e.streams.first_mut().filter(|s| s.kind == StreamKind::Stdout && s.splice) else {
            return;
        };
        let Some(pipe) = stream.fd.as_ref() else { return };
        let mut bytes = Vec::new();
        if encode(id, Flags::FD, &Message::ExecStdoutPipe).encode_into(&mut bytes).is_err() {
            return;
        }
        match fdpass::send_fd_msg(self.chan.raw(), &bytes, pipe.raw()) {
            Ok(n) => {
                // The host holds the pipe now; the agent's copy closes.
                stream.fd = None;
                *window -= bytes.len() as i64;
                self.out.extend_from_slice(&bytes[n..]);
                log!("session {id}: stdout pipe handed to the client");
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                log!("session {id}: stdout relayed (the channel is full)");
            }
            Err(e) => self.channel_broken(&e),
        }
    }

    fn on_stdin(&mut self, id: u32, data: Vec<u8>, wire: u32) {
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

    fn on_stdin_eof(&mut self, id: u32) {
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

    fn write_stdin(&mut self, id: u32) {
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

    /// Reads one chunk from a session's output stream if the window allows.
    /// `drain`: the process has exited and the grace is over, so an empty
    /// pipe counts as finished.
    fn pump_stream(&mut self, id: u32, idx: usize, drain: bool) -> bool {
        let Some(s) = self.sessions.get_mut(&id) else { return false };
        let avail = s.window - DATA_OVERHEAD as i64;
        let Kind::Exec(e) = &mut s.kind else { return false };
        let Some(st) = e.streams.get_mut(idx) else { return false };
        let Some(fd) = &st.fd else { return false };
        if avail < MIN_CHUNK as i64 {
            return false;
        }
        let max = (avail as usize).min(MAX_CHUNK);
        if self.spliced.is_some() || self.chan_full {
            // The channel is full; the output waits in its pipe.
            return false;
        }
        if st.splice && !self.cfg.channel_is_port && self.out_pos == self.out.len() {
            let pipe = fd.raw();
            let kind = st.kind;
            if let Ok(ready) = sys::readable_bytes(pipe) {
                if ready >= SPLICE_MIN {
                    let n = ready.min(max);
                    match self.splice_chunk(id, idx, pipe, kind, n) {
                        SpliceOutcome::Sent => {
                            if let Some(Session { kind: Kind::Exec(e), .. }) = self.sessions.get_mut(&id) {
                                let exited = e.exit.is_some();
                                if let Some(st) = e.streams.get_mut(idx) {
                                    st.note_output(n, max, exited);
                                }
                            }
                            return true;
                        }
                        SpliceOutcome::Deferred => return false,
                        SpliceOutcome::NotSent => {}
                    }
                }
            }
        }
        let Some(s) = self.sessions.get_mut(&id) else { return false };
        let Kind::Exec(e) = &mut s.kind else { return false };
        let Some(st) = e.streams.get_mut(idx) else { return false };
        let Some(fd) = &st.fd else { return false };
        let buf = &mut self.sbuf[..max];
        match sys::read(fd.raw(), buf) {
            Ok(0) => {
                st.fd = None;
                false
            }
            Ok(n) => {
                st.note_output(n, max, e.exit.is_some());
                e.frames += 1;
                let buf = buf[..n].to_vec();
                let msg = match st.kind {
                    StreamKind::Stdout => Message::ExecStdout { data: buf },
                    StreamKind::Stderr => Message::ExecStderr { data: buf },
                };
                self.send_on(id, Flags::NONE, &msg);
                true
            }
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                if drain {
                    st.fd = None;
                }
                false
            }
            Err(err) => {
                // EIO: the PTY's slave side is closed everywhere.
                if err.raw_os_error() != Some(libc::EIO) {
                    log!("session {id}: reading output failed: {err}");
                }
                st.fd = None;
                false
            }
        }
    }

    /// Sends `n` bytes (all waiting in `pipe`) of session `id`'s output
    /// stream `idx` as one frame: its prefix by `write(2)`, the payload by
    /// `splice(2)`. Only called with nothing else queued for the channel.
    fn splice_chunk(&mut self, id: u32, idx: usize, pipe: RawFd, kind: StreamKind, n: usize) -> SpliceOutcome {
        let Ok(prefix) = data_frame_prefix(id, Flags::NONE, kind.data_kind(), n) else {
            return SpliceOutcome::NotSent;
        };
        let head = prefix.as_bytes();
        let prefix_sent = match sys::write(self.chan.raw(), head) {
            Ok(k) if k > 0 => k,
            Ok(_) => return SpliceOutcome::NotSent,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                // Nothing committed: leave the output in its pipe until the
                // channel can take more.
                self.chan_full = true;
                return SpliceOutcome::Deferred;
            }
            Err(e) => {
                self.channel_broken(&e);
                return SpliceOutcome::Deferred;
            }
        };
        if let Some(s) = self.sessions.get_mut(&id) {
            s.window -= prefix.wire_len(n) as i64;
            if let Kind::Exec(e) = &mut s.kind {
                e.frames += 1;
                e.spliced += 1;
            }
        }
        let mut left = n;
        if prefix_sent == head.len() {
            match sys::splice(pipe, self.chan.raw(), left) {
                Ok(k) => left -= k.min(left),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if is_disconnect(&e) => {
                    self.channel_broken(&e);
                    return SpliceOutcome::Sent;
                }
                Err(e) => {
                    log!("session {id}: splicing output failed ({e}); copying it instead");
                    if let Some(Session { kind: Kind::Exec(ex), .. }) = self.sessions.get_mut(&id) {
                        if let Some(st) = ex.streams.get_mut(idx) {
                            st.splice = false;
                        }
                    }
                    let at = self.out.len();
                    self.copy_payload(id, pipe, left, at);
                    return SpliceOutcome::Sent;
                }
            }
        }
        if left == 0 {
            return SpliceOutcome::Sent;
        }
        match sys::dup(pipe) {
            Ok(pipe) => {
                if let Some(Session { kind: Kind::Exec(e), .. }) = self.sessions.get_mut(&id) {
                    e.resumed += 1;
                }
                self.spliced = Some(Spliced { id, prefix, prefix_sent, pipe, left });
            }
            Err(e) => {
                // Without a duplicate, finish the frame from a copy.
                log!("session {id}: cannot hold the output pipe ({e}); copying the rest of the frame");
                let at = self.out.len();
                self.out.extend_from_slice(&head[prefix_sent..]);
                self.copy_payload(id, pipe, left, at + head.len() - prefix_sent);
            }
        }
        SpliceOutcome::Sent
    }

    /// Continues the pending spliced frame; true once it is complete.
    fn resume_splice(&mut self) -> bool {
        let Some(p) = &mut self.spliced else { return true };
        while p.prefix_sent < p.prefix.as_bytes().len() {
            match sys::write(self.chan.raw(), &p.prefix.as_bytes()[p.prefix_sent..]) {
                Ok(0) => return false,
                Ok(k) => p.prefix_sent += k,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(e) => {
                    self.channel_broken(&e);
                    return false;
                }
            }
        }
        while p.left > 0 {
            match sys::splice(p.pipe.raw(), self.chan.raw(), p.left) {
                Ok(0) => break,
                Ok(k) => p.left -= k.min(p.left),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(e) if is_disconnect(&e) => {
                    self.channel_broken(&e);
                    return false;
                }
                Err(e) => {
                    log!("session {}: splicing output failed ({e}); copying the rest of the frame", p.id);
                    break;
                }
            }
        }
        let Some(p) = self.spliced.take() else { return true };
        if p.left > 0 {
            // Ahead of everything queued since: the frame comes first.
            let at = self.out_pos;
            self.copy_payload(p.id, p.pipe.raw(), p.left, at);
        }
        true
    }

    /// Inserts `len` payload bytes read from `pipe` at `at` in the outbound
    /// buffer: the rest of a frame whose prefix is already committed. The
    /// bytes are in the pipe (only this loop reads it); should they not be,
    /// the frame is padded with zeros to keep the framing, and that is logged.
    fn copy_payload(&mut self, id: u32, pipe: RawFd, len: usize, at: usize) {
        let mut data = vec![0u8; len];
        let mut got = 0;
        while got < len {
            match sys::read(pipe, &mut data[got..]) {
                Ok(k) if k > 0 => got += k,
                other => {
                    log!("session {id}: {} bytes of an output frame vanished from the pipe ({other:?})", len - got);
                    break;
                }
            }
        }
        self.out.splice(at..at, data);
    }

    /// A write to the channel failed: the host is gone.
    fn channel_broken(&mut self, e: &io::Error) {
        if !self.host_gone {
            log!("writing to the channel failed: {e}");
        }
        self.host_gone = true;
        self.out.clear();
        self.out_pos = 0;
        self.spliced = None;
        self.chan_full = false;
    }

    fn handle_signals(&mut self) {
        let signals = match sys::read_signals(self.sigfd.raw()) {
            Ok(s) => s,
            Err(e) => {
                log!("reading the signalfd failed: {e}");
                Vec::new()
            }
        };
        let mut chld = false;
        for sig in signals {
            match sig as libc::c_int {
                libc::SIGCHLD => chld = true,
                libc::SIGTERM | libc::SIGINT => {
                    log!("received signal {sig}; shutting down");
                    self.begin_shutdown(DEFAULT_GRACE_MS);
                }
                _ => {}
            }
        }
        if chld {
            self.reap();
        }
    }

    fn reap(&mut self) {
        for r in sys::reap_all() {
            match self.pids.remove(&r.pid) {
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

    // ----- files -----

    fn start_fs(&mut self, id: u32, req: FsRequest) {
        if self.shutdown.is_some() {
            let err = FsError { kind: FsErrorKind::Other, message: "the sandbox is shutting down".into() };
            self.push_frame(&encode(id, Flags::TERMINAL, &Message::FsResponse(Err(err))));
            return;
        }
        let kind = match &req {
            FsRequest::Read { path } => ReadStream::open(path).map(Kind::Read),
            FsRequest::Write { path, mode } => WriteStream::create(path, *mode).map(Kind::Write),
            _ => Ok(Kind::Pending),
        };
        let kind = match kind {
            Ok(k) => k,
            Err(e) => {
                self.push_frame(&encode(id, Flags::TERMINAL, &Message::FsResponse(Err(e))));
                return;
            }
        };
        let pending = matches!(kind, Kind::Pending);
        self.new_session(id, kind);
        if pending {
            let gen = self.sessions.get(&id).map(|s| s.gen).unwrap_or(0);
            let tx = self.results_tx.clone();
            let wake = self.wake_w.raw();
            let spawned = std::thread::Builder::new().name(format!("fs-{id}")).spawn(move || {
                let result = fsops::run_oneshot(&req);
                let _ = tx.send((id, gen, result));
                let _ = sys::write(wake, &[1]);
            });
            if let Err(e) = spawned {
                let err = FsError { kind: FsErrorKind::Other, message: format!("cannot start a worker thread: {e}") };
                self.finish_fs(id, Err(err));
            }
        }
    }

    fn finish_fs(&mut self, id: u32, result: Result<FsReply, FsError>) {
        let mut frame = encode(id, Flags::TERMINAL, &Message::FsResponse(result));
        if frame.wire_len() > INITIAL_WINDOW as usize {
            let err = FsError {
                kind: FsErrorKind::Other,
                message: format!(
                    "the reply ({} bytes) exceeds the session window; list a smaller directory",
                    frame.wire_len()
                ),
            };
            frame = encode(id, Flags::TERMINAL, &Message::FsResponse(Err(err)));
        }
        if let Some(s) = self.sessions.get_mut(&id) {
            s.kind = Kind::Closing;
            s.final_frame = Some(frame);
        }
    }

    fn handle_results(&mut self) {
        let mut buf = [0u8; 256];
        while matches!(sys::read(self.wake_r.raw(), &mut buf), Ok(n) if n > 0) {}
        while let Ok((id, gen, result)) = self.results_rx.try_recv() {
            if self.sessions.get(&id).is_some_and(|s| s.gen == gen && matches!(s.kind, Kind::Pending)) {
                self.finish_fs(id, result);
            }
        }
    }

    fn on_fs_data(&mut self, id: u32, data: &[u8], wire: u32) {
        let result = match self.sessions.get_mut(&id).map(|s| &mut s.kind) {
            Some(Kind::Write(w)) => w.write_chunk(data),
            Some(Kind::Closing) => return,
            _ => return self.abort_session(id, "FsData on a session that is not a write"),
        };
        match result {
            Ok(()) => self.send_credit(id, wire),
            Err(e) => self.finish_fs(id, Err(e)),
        }
    }

    fn on_fs_end(&mut self, id: u32) {
        let Some(s) = self.sessions.get_mut(&id) else { return };
        match std::mem::replace(&mut s.kind, Kind::Closing) {
            Kind::Write(w) => {
                let r = w.finish().map(|bytes| FsReply::Done { bytes });
                self.finish_fs(id, r);
            }
            Kind::Closing => {}
            other => {
                s.kind = other;
                self.abort_session(id, "FsEnd on a session that is not a write");
            }
        }
    }

    // ----- progress -----

    fn progress_sessions(&mut self) {
        let now = Instant::now();
        let ids: Vec<u32> = self.sessions.keys().copied().collect();
        for id in ids {
            // Exec: drain after exit, then the terminal frame.
            let mut drain_streams = Vec::new();
            let mut read_chunk = false;
            // A full channel (a spliced frame waiting) is the host's pace too.
            let chan_blocked = self.spliced.is_some() || self.chan_full;
            if let Some(s) = self.sessions.get_mut(&id) {
                // Waiting for credit is the client's pace, never a reason to give up.
                let can_send = s.window >= (DATA_OVERHEAD + MIN_CHUNK) as i64 && !chan_blocked;
                match &mut s.kind {
                    Kind::Exec(e) => {
                        if let Some(t) = e.exited_at {
                            if now >= t + DRAIN_GRACE {
                                for (i, st) in e.streams.iter_mut().enumerate() {
                                    if st.fd.is_some() {
                                        if can_send && now >= t + DRAIN_GRACE + DRAIN_CAP {
                                            log!(
                                                "session {id}: output still open {DRAIN_CAP:?} after exit; closing it"
                                            );
                                            st.fd = None;
                                        } else {
                                            drain_streams.push(i);
                                        }
                                    }
                                }
                            }
                        }
                    }
                    Kind::Read(r) if !r.eof => read_chunk = true,
                    _ => {}
                }
            }
            for i in drain_streams {
                // Data after the grace: look again right away until empty.
                if self.pump_stream(id, i, true) {
                    self.busy = true;
                }
            }
            if read_chunk {
                self.pump_file(id);
            }
            self.maybe_finish_exec(id);
            self.send_final(id);
        }
    }

    fn pump_file(&mut self, id: u32) {
        let Some(s) = self.sessions.get_mut(&id) else { return };
        let avail = s.window - DATA_OVERHEAD as i64;
        let Kind::Read(r) = &mut s.kind else { return };
        if avail < MIN_CHUNK as i64 {
            return;
        }
        match r.next_chunk((avail as usize).min(MAX_CHUNK)) {
            Ok(data) if data.is_empty() => {
                let bytes = r.bytes;
                self.finish_fs(id, Ok(FsReply::Done { bytes }));
            }
            Ok(data) => self.send_on(id, Flags::NONE, &Message::FsData { data }),
            Err(e) => self.finish_fs(id, Err(e)),
        }
    }

    fn maybe_finish_exec(&mut self, id: u32) {
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

    fn send_final(&mut self, id: u32) {
        let Some(s) = self.sessions.get_mut(&id) else { return };
        let fits = s.final_frame.as_ref().is_some_and(|f| s.window >= f.wire_len() as i64);
        if fits && matches!(s.kind, Kind::Closing) {
            if let Some(f) = s.final_frame.take() {
                self.sessions.remove(&id);
                self.push_frame(&f);
            }
        }
    }

    fn heartbeat(&mut self) {
        let now = Instant::now();
        if now < self.next_heartbeat {
            return;
        }
        self.heartbeat_seq += 1;
        let msg = Message::Heartbeat { seq: self.heartbeat_seq, active_sessions: self.sessions.len() as u32 };
        self.push_frame(&encode(CONTROL_ID, Flags::NONE, &msg));
        self.next_heartbeat += self.cfg.heartbeat;
        if self.next_heartbeat < now {
            self.next_heartbeat = now + self.cfg.heartbeat;
        }
    }

    // ----- shutdown -----

    fn exec_pids(&self) -> Vec<libc::pid_t> {
        self.sessions
            .values()
            .filter_map(|s| match &s.kind {
                Kind::Exec(e) if e.exit.is_none() => Some(e.pid),
                _ => None,
            })
            .collect()
    }

    fn kill_everything(&mut self, sig: libc::c_int) {
        for pid in self.exec_pids() {
            let _ = sys::kill(-pid, sig);
        }
        if self.cfg.pid1 {
            // Every process of the namespace except this one.
            let _ = sys::kill(-1, sig);
        }
    }

    fn begin_shutdown(&mut self, grace_ms: u32) {
        if self.shutdown.is_some() {
            return;
        }
        log!("shutdown requested (grace {grace_ms} ms, {} sessions)", self.sessions.len());
        self.shutdown = Some(ShutdownState {
            kill_at: Instant::now() + Duration::from_millis(u64::from(grace_ms)),
            killed_at: None,
        });
        self.kill_everything(libc::SIGTERM);
    }

    fn progress_shutdown(&mut self) {
        let now = Instant::now();
        let nothing_left = self.exec_pids().is_empty() && (!self.cfg.pid1 || !has_children());
        let Some(sd) = &mut self.shutdown else { return };
        if sd.killed_at.is_none() && (now >= sd.kill_at || nothing_left) {
            sd.killed_at = Some(now);
            if !nothing_left {
                log!("grace over; killing what is left");
                self.kill_everything(libc::SIGKILL);
            }
        }
    }

    fn shutdown_complete(&self) -> bool {
        let Some(ShutdownState { killed_at: Some(t), .. }) = &self.shutdown else { return false };
        self.sessions.is_empty() || Instant::now() >= *t + FINAL_DRAIN
    }

    fn wait_children(&mut self, limit: Duration) {
        let end = Instant::now() + limit;
        while has_children() && Instant::now() < end {
            sys::reap_all();
            std::thread::sleep(Duration::from_millis(5));
        }
        sys::reap_all();
    }
}

/// Whether a failed write means the peer is gone.
fn is_disconnect(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EPIPE | libc::ECONNRESET | libc::ENOTCONN))
}

/// Whether the process has any child left (running or not yet reaped).
fn has_children() -> bool {
    // SAFETY: siginfo_t is plain data; waitid with WNOWAIT does not reap.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: info is valid.
    let rc = unsafe { libc::waitid(libc::P_ALL, 0, &mut info, libc::WEXITED | libc::WNOHANG | libc::WNOWAIT) };
    rc == 0
}

fn msg_name(m: &Message) -> &'static str {
    match m {
        Message::Ready(_) => "Ready",
        Message::Heartbeat { .. } => "Heartbeat",
        Message::Shutdown { .. } => "Shutdown",
        Message::Touch => "Touch",
        Message::ExecRequest(_) => "ExecRequest",
        Message::ExecStarted { .. } => "ExecStarted",
        Message::ExecStdin { .. } => "ExecStdin",
        Message::ExecStdinEof => "ExecStdinEof",
        Message::ExecStdout { .. } => "ExecStdout",
        Message::ExecStderr { .. } => "ExecStderr",
        Message::ExecExited(_) => "ExecExited",
        Message::ExecFailed(_) => "ExecFailed",
        Message::ExecResize(_) => "ExecResize",
        Message::ExecSignal { .. } => "ExecSignal",
        Message::FsRequest(_) => "FsRequest",
        Message::FsData { .. } => "FsData",
        Message::FsEnd => "FsEnd",
        Message::FsResponse(_) => "FsResponse",
        Message::Credit { .. } => "Credit",
        Message::SessionAborted { .. } => "SessionAborted",
        Message::ExecStdoutPipe => "ExecStdoutPipe",
    }
}
