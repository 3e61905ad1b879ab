//! Output written straight to a pipe by the connection's reader.
//!
//! An exec session given an [`OutputSink`] for stdout yields no
//! `ExecEvent::Stdout`: the connection's reader task writes each stdout
//! payload to the sink itself, in frame order, before it routes any later
//! frame (so everything is written by the time `Exited` is seen). A large
//! payload is moved from the socket into the pipe with `splice(2)`, never
//! copied through user space. The reader blocks while the pipe is full,
//! which stalls the other sessions of that connection: give a sink to one
//! session on a connection of its own (as the CLI does).
//!
//! With a timeout, what the command wrote before it was killed still reaches
//! the sink (the event path discards output that arrives after the kill).
//!
//! A session with a sink asks the agent for the command's stdout pipe itself
//! (`ExecRequest::stdout_pipe`). Where the agent hands it over (a jail, no
//! PTY), a `PipeDrain` thread moves the pipe's contents into the sink with
//! `splice(2)` — the bytes never cross the agent, the relay or this process's
//! memory — and the session's `Exited` is held back until that thread is
//! done: at the pipe's end, or, when a background process keeps the pipe
//! open, as the agent would give up ([`alcove_protocol::OUTPUT_DRAIN_GRACE`]
//! after the exit once the pipe is empty, at the latest
//! [`alcove_protocol::OUTPUT_DRAIN_CAP`] later). A sink whose reader is gone
//! closes the pipe, so the command gets SIGPIPE (or `EPIPE`) as it would
//! writing to the sink directly.
//!
//! Invariants: the framing of the connection never depends on the sink —
//! a sink that fails (its reader went away) has the rest of its payloads
//! read and dropped; a pipe that refuses `splice` gets copies instead.

use alcove_protocol::{OUTPUT_DRAIN_CAP, OUTPUT_DRAIN_GRACE};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::Interest;
use tokio::net::UnixStream;
use tokio::sync::oneshot;

/// Bytes moved per `splice(2)` from a handed-over pipe.
const DRAIN_CHUNK: usize = 1024 * 1024;

/// Where a session's stdout goes instead of its event stream: a pipe opened
/// for writing in blocking mode (see [`OutputSink::for_pipe`]).
#[derive(Clone, Debug)]
pub struct OutputSink(Arc<SinkState>);

#[derive(Debug)]
struct SinkState {
    fd: OwnedFd,
    /// `splice(2)` into it has not failed yet.
    splice_ok: AtomicBool,
    /// Writes into it have not failed yet.
    alive: AtomicBool,
}

impl PartialEq for OutputSink {
    fn eq(&self, other: &OutputSink) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for OutputSink {}

impl OutputSink {
    /// A sink for `fd` if it is a pipe in blocking mode; `None` otherwise
    /// (a terminal, a file, a socket, or a pipe someone set non-blocking:
    /// the reader relies on a full pipe blocking rather than failing).
    pub fn for_pipe(fd: OwnedFd) -> Option<OutputSink> {
        // SAFETY: fstat fills a local stat; F_GETFL only reads the flags of
        // an fd we own.
        let (mode, flags) = unsafe {
            let mut st: libc::stat = std::mem::zeroed();
            if libc::fstat(fd.as_raw_fd(), &mut st) != 0 {
                return None;
            }
            (st.st_mode, libc::fcntl(fd.as_raw_fd(), libc::F_GETFL))
        };
        if mode & libc::S_IFMT != libc::S_IFIFO || flags < 0 || flags & libc::O_NONBLOCK != 0 {
            return None;
        }
        Some(OutputSink(Arc::new(SinkState { fd, splice_ok: AtomicBool::new(true), alive: AtomicBool::new(true) })))
    }

    fn raw(&self) -> RawFd {
        self.0.fd.as_raw_fd()
    }

    /// Writes all of `data` (blocking); after a failure, drops it.
    pub(crate) fn write_all(&self, mut data: &[u8]) {
        while !data.is_empty() && self.0.alive.load(Ordering::Relaxed) {
            // SAFETY: writes from a live slice to an fd we own.
            let n = unsafe { libc::write(self.raw(), data.as_ptr().cast(), data.len()) };
            if n > 0 {
                data = &data[n as usize..];
                continue;
            }
            let e = io::Error::last_os_error();
            if n < 0 && e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            // EPIPE (the reader is gone) or worse: drop the rest of the output.
            self.0.alive.store(false, Ordering::Relaxed);
        }
    }

    /// Moves up to `len` bytes from `stream` into the sink. `Ok(None)`: the
    /// sink cannot take spliced data (the caller copies instead).
    pub(crate) async fn splice_from(&self, stream: &UnixStream, len: usize) -> io::Result<Option<usize>> {
        if !self.0.splice_ok.load(Ordering::Relaxed) || !self.0.alive.load(Ordering::Relaxed) {
            return Ok(None);
        }
        loop {
            stream.readable().await?;
            let e = match splice(stream.as_raw_fd(), self.raw(), len, libc::SPLICE_F_MOVE) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => return Ok(Some(n)),
                Err(e) => e,
            };
            match e.kind() {
                io::ErrorKind::Interrupted => continue,
                // The socket is drained (the pipe blocks rather than fail):
                // clear its readiness and wait for more.
                io::ErrorKind::WouldBlock => {
                    let _ = stream.try_io(Interest::READABLE, || Err::<(), _>(io::ErrorKind::WouldBlock.into()));
                }
                _ => {
                    if e.raw_os_error() == Some(libc::EPIPE) {
                        self.0.alive.store(false, Ordering::Relaxed);
                    }
                    self.0.splice_ok.store(false, Ordering::Relaxed);
                    return Ok(None);
                }
            }
        }
    }
}

impl OutputSink {
    /// Starts moving everything `pipe` (a handed-over stdout pipe) yields
    /// into this sink on a thread of its own; see the module docs. Fails
    /// when no thread can be started (the pipe is then closed).
    pub(crate) fn drain_pipe(&self, pipe: OwnedFd) -> io::Result<PipeDrain> {
        // SAFETY: eventfd has no memory arguments; the result is checked.
        let raw = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor, owned from here on.
        let exited = Arc::new(unsafe { OwnedFd::from_raw_fd(raw) });
        let (done_tx, done) = oneshot::channel();
        let (sink, signal) = (self.clone(), exited.clone());
        let spawned = std::thread::Builder::new().name("alcove-stdout".into()).spawn(move || {
            move_pipe(&pipe, &sink, &signal);
            let _ = done_tx.send(());
        });
        spawned.map(|_| PipeDrain { exited, done: Some(done) })
    }
}

/// The thread moving a handed-over pipe into a sink. Dropping it counts as
/// the command's exit (the thread then finishes within the drain bounds).
#[derive(Debug)]
pub(crate) struct PipeDrain {
    exited: Arc<OwnedFd>,
    done: Option<oneshot::Receiver<()>>,
}

impl PipeDrain {
    /// The command has exited: from now on the pipe is drained, not waited on.
    pub(crate) fn command_exited(&self) {
        let one: u64 = 1;
        // SAFETY: writes eight bytes from a live u64 to our eventfd.
        unsafe { libc::write(self.exited.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }

    /// Waits until everything the pipe will give has reached the sink.
    pub(crate) async fn finished(mut self) {
        self.command_exited();
        if let Some(done) = self.done.take() {
            let _ = done.await;
        }
    }
}

impl Drop for PipeDrain {
    fn drop(&mut self) {
        self.command_exited();
    }
}

/// What one attempt to move bytes did.
enum Moved {
    /// Bytes moved (or a signal interrupted): try again right away.
    Again,
    /// The pipe is empty (its writers are still there).
    InputEmpty,
    /// The sink is full.
    OutputFull,
    /// The pipe's end, or a sink that can take no more.
    Finished,
}

/// The body of the drain thread: moves `pipe` into `sink` until the pipe
/// ends, the sink dies, or the drain bounds after `exited` fires.
fn move_pipe(pipe: &OwnedFd, sink: &OutputSink, exited: &OwnedFd) {
    let mut exited_at: Option<Instant> = None;
    let mut buf = Vec::new();
    loop {
        let now = Instant::now();
        if exited_at.is_some_and(|t| now >= t + OUTPUT_DRAIN_GRACE + OUTPUT_DRAIN_CAP) {
            return;
        }
        let wait_for = match move_some(pipe, sink, &mut buf) {
            Moved::Again => continue,
            Moved::Finished => return,
            Moved::OutputFull => (sink.raw(), libc::POLLOUT, None),
            Moved::InputEmpty => match exited_at {
                // Drained after the grace: what a background child may still
                // write is given up, as the agent does.
                Some(t) if now >= t + OUTPUT_DRAIN_GRACE => return,
                Some(t) => (pipe.as_raw_fd(), libc::POLLIN, Some(t + OUTPUT_DRAIN_GRACE - now)),
                None => (pipe.as_raw_fd(), libc::POLLIN, None),
            },
        };
        let (fd, events, timeout) = wait_for;
        let mut fds = [
            libc::pollfd { fd, events, revents: 0 },
            libc::pollfd { fd: exited.as_raw_fd(), events: libc::POLLIN, revents: 0 },
        ];
        let timeout_ms = timeout.map_or(-1, |d: Duration| d.as_millis().min(i32::MAX as u128) as i32 + 1);
        // SAFETY: polls a live two-element array.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), 2, timeout_ms) };
        if rc < 0 && io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            return;
        }
        if fds[1].revents & libc::POLLIN != 0 {
            let mut count = 0u64;
            // SAFETY: reads eight bytes into a live u64 (resets the eventfd).
            unsafe { libc::read(exited.as_raw_fd(), (&mut count as *mut u64).cast(), 8) };
            exited_at.get_or_insert_with(Instant::now);
        }
    }
}

/// Moves what is there from `pipe` (non-blocking) into `sink`: spliced, or
/// read into `buf` and written where the sink refuses `splice`.
fn move_some(pipe: &OwnedFd, sink: &OutputSink, buf: &mut Vec<u8>) -> Moved {
    if !sink.0.alive.load(Ordering::Relaxed) {
        return Moved::Finished;
    }
    if sink.0.splice_ok.load(Ordering::Relaxed) {
        let e = match splice(pipe.as_raw_fd(), sink.raw(), DRAIN_CHUNK, libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK) {
            Ok(0) => return Moved::Finished,
            Ok(_) => return Moved::Again,
            Err(e) => e,
        };
        match e.raw_os_error() {
            Some(libc::EINTR) => return Moved::Again,
            Some(libc::EAGAIN) => return if readable(pipe) { Moved::OutputFull } else { Moved::InputEmpty },
            Some(libc::EPIPE) => {
                sink.0.alive.store(false, Ordering::Relaxed);
                return Moved::Finished;
            }
            // The sink cannot take spliced data: copy from now on.
            _ => sink.0.splice_ok.store(false, Ordering::Relaxed),
        }
    }
    buf.resize(64 * 1024, 0);
    // SAFETY: reads into a live buffer of its length.
    let n = unsafe { libc::read(pipe.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    match n {
        0 => Moved::Finished,
        n if n > 0 => {
            sink.write_all(&buf[..n as usize]);
            Moved::Again
        }
        _ => match io::Error::last_os_error().raw_os_error() {
            Some(libc::EAGAIN) => Moved::InputEmpty,
            Some(libc::EINTR) => Moved::Again,
            _ => Moved::Finished,
        },
    }
}

/// One `splice(2)` of up to `len` bytes from `from` to `to` (streams or
/// pipes: no offsets); `Ok(0)` at the end of `from`.
fn splice(from: RawFd, to: RawFd, len: usize, flags: libc::c_uint) -> io::Result<usize> {
    // SAFETY: null offsets (both ends are streams); no memory is passed.
    let n = unsafe { libc::splice(from, std::ptr::null_mut(), to, std::ptr::null_mut(), len, flags) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// Whether `fd` has data (or its end) to read right now.
fn readable(fd: &OwnedFd) -> bool {
    let mut p = [libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 }];
    // SAFETY: polls a live one-element array without waiting.
    unsafe { libc::poll(p.as_mut_ptr(), 1, 0) > 0 }
}
