//! The channel to the host: the socket or virtio-console port, its frame
//! decoder, and the outbound buffer with the one spliced frame that may be
//! in flight.
//!
//! Invariants:
//! - Bytes reach the channel in the order they were committed: the
//!   outbound buffer (`out[out_pos..]`) is written front to back, and a
//!   spliced frame the socket took only partly ([`PendingSplice`]) is
//!   completed before any other byte is written.
//! - While a spliced frame is pending or the channel refused the start of
//!   one (`full`), [`Channel::blocked`] is true and no output pipe is read
//!   (the pending frame's bytes are still in its pipe).
//! - Once a write fails for good, `host_gone` is set and nothing is queued
//!   any more: [`Channel::broken`] drops the buffer and the pending frame.
//! - After `framing_lost`, nothing more is read from the channel.

use crate::sys::{self, Fd};
use alcove_protocol::codec::DataPrefix;
use alcove_protocol::{Frame, FrameDecoder, INITIAL_WINDOW};
use std::io;
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

/// Send buffer asked for on a socket channel (the kernel doubles it).
const CHANNEL_SNDBUF: usize = INITIAL_WINDOW as usize;
/// Back-off while a virtio-console port's host side is not connected.
pub(super) const PORT_RETRY: Duration = Duration::from_millis(50);

/// The agent's end of the channel and everything queued for it.
pub(super) struct Channel {
    pub(super) fd: Fd,
    pub(super) decoder: FrameDecoder,
    /// The decoder failed: the stream cannot be trusted any more.
    pub(super) framing_lost: bool,
    /// Encoded bytes waiting for the channel, from `out_pos` on.
    pub(super) out: Vec<u8>,
    pub(super) out_pos: usize,
    /// Read buffer.
    pub(super) rbuf: Vec<u8>,
    /// Port mode: the channel is left out of poll until then.
    pub(super) retry_at: Option<Instant>,
    /// The channel closed or a write failed: the host is gone.
    pub(super) host_gone: bool,
    /// A spliced frame still being written (see the module docs).
    pub(super) pending_splice: Option<PendingSplice>,
    /// The channel refused the start of a spliced frame: no output is read
    /// until it is writable again.
    pub(super) full: bool,
    /// Frames the channel has taken so far (queued, spliced or handed
    /// over): what shows the host the agent is alive, with or without a
    /// heartbeat (see [`super::heartbeat`]).
    pub(super) frames_out: u64,
}

/// A spliced frame the channel has taken only partly.
#[derive(Debug)]
pub(super) struct PendingSplice {
    pub(super) id: u32,
    pub(super) prefix: DataPrefix,
    /// Bytes of the prefix already written.
    pub(super) prefix_sent: usize,
    /// The output pipe (a duplicate: the session may close its own).
    pub(super) pipe: Fd,
    /// Payload bytes still in the pipe.
    pub(super) left: usize,
}

impl Channel {
    /// Takes `fd` (a connected stream socket, or a virtio-console port when
    /// `is_port`), non-blocking and close-on-exec.
    pub(super) fn new(fd: Fd, is_port: bool) -> io::Result<Channel> {
        sys::set_nonblocking(fd.raw(), true)?;
        sys::set_cloexec(fd.raw())?;
        if !is_port {
            // Room for a whole window of output in the socket, so a burst
            // leaves without waiting for the relay to be scheduled.
            sys::grow_sndbuf(fd.raw(), CHANNEL_SNDBUF);
        }
        Ok(Channel {
            fd,
            decoder: FrameDecoder::new(),
            framing_lost: false,
            out: Vec::new(),
            out_pos: 0,
            rbuf: vec![0u8; 64 * 1024],
            retry_at: None,
            host_gone: false,
            pending_splice: None,
            full: false,
            frames_out: 0,
        })
    }

    /// Queues a frame; returns its wire length (0 if it could not be encoded).
    pub(super) fn push_frame(&mut self, f: &Frame) -> usize {
        if let Err(e) = f.encode_into(&mut self.out) {
            log!("dropping an unencodable frame on session {}: {e}", f.id);
            return 0;
        }
        self.frames_out += 1;
        f.wire_len()
    }

    /// Whether bytes wait for the channel to become writable.
    pub(super) fn backlog(&self) -> bool {
        self.out_pos < self.out.len() || self.blocked()
    }

    /// Whether output must stay in its pipes: a spliced frame is pending or
    /// the channel refused the start of one.
    pub(super) fn blocked(&self) -> bool {
        self.pending_splice.is_some() || self.full
    }

    pub(super) fn flush(&mut self) {
        if self.pending_splice.is_some() && !self.resume_splice() {
            return;
        }
        while self.out_pos < self.out.len() {
            match sys::write(self.fd.raw(), &self.out[self.out_pos..]) {
                Ok(0) => break,
                Ok(n) => self.out_pos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    self.broken(&e);
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

    pub(super) fn flush_blocking(&mut self, limit: Duration) {
        let end = Instant::now() + limit;
        while (self.out_pos < self.out.len() || self.pending_splice.is_some()) && !self.host_gone {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                log!("gave up sending {} buffered bytes to the host", self.out.len() - self.out_pos);
                return;
            }
            let mut p = [libc::pollfd { fd: self.fd.raw(), events: libc::POLLOUT, revents: 0 }];
            if sys::poll(&mut p, Some(left)).is_err() {
                return;
            }
            self.flush();
        }
    }

    /// Continues the pending spliced frame; true once it is complete.
    fn resume_splice(&mut self) -> bool {
        let Some(p) = &mut self.pending_splice else { return true };
        while p.prefix_sent < p.prefix.as_bytes().len() {
            match sys::write(self.fd.raw(), &p.prefix.as_bytes()[p.prefix_sent..]) {
                Ok(0) => return false,
                Ok(k) => p.prefix_sent += k,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(e) => {
                    self.broken(&e);
                    return false;
                }
            }
        }
        while p.left > 0 {
            match sys::splice(p.pipe.raw(), self.fd.raw(), p.left) {
                Ok(0) => break,
                Ok(k) => p.left -= k.min(p.left),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(e) if is_disconnect(&e) => {
                    self.broken(&e);
                    return false;
                }
                Err(e) => {
                    log!("session {}: splicing output failed ({e}); copying the rest of the frame", p.id);
                    break;
                }
            }
        }
        let Some(p) = self.pending_splice.take() else { return true };
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
    pub(super) fn copy_payload(&mut self, id: u32, pipe: RawFd, len: usize, at: usize) {
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
    pub(super) fn broken(&mut self, e: &io::Error) {
        if !self.host_gone {
            log!("writing to the channel failed: {e}");
        }
        self.host_gone = true;
        self.out.clear();
        self.out_pos = 0;
        self.pending_splice = None;
        self.full = false;
    }
}

/// Whether a failed write means the peer is gone.
pub(super) fn is_disconnect(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EPIPE | libc::ECONNRESET | libc::ENOTCONN))
}
