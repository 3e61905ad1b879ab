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
//! Invariants: the framing of the connection never depends on the sink —
//! a sink that fails (its reader went away) has the rest of its payloads
//! read and dropped; a pipe that refuses `splice` gets copies instead.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::io::Interest;
use tokio::net::UnixStream;

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
            // SAFETY: null offsets (both ends are streams); no memory is passed.
            let n = unsafe {
                libc::splice(
                    stream.as_raw_fd(),
                    std::ptr::null_mut(),
                    self.raw(),
                    std::ptr::null_mut(),
                    len,
                    libc::SPLICE_F_MOVE,
                )
            };
            if n > 0 {
                return Ok(Some(n as usize));
            }
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            let e = io::Error::last_os_error();
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
