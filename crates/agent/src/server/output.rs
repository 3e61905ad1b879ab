//! A command's output on its way to the host: the three paths it can take
//! ([`OutputPath`]), output coalescing, and reading a chunk when the
//! session's window allows.
//!
//! Invariants:
//! - A chunk is read from a pipe only when a frame of it fits the window
//!   (`DATA_OVERHEAD + MIN_CHUNK` at least) and the channel is not blocked
//!   by a pending spliced frame: a stalled client stalls only its own
//!   command, which then blocks on its pipe; nothing is dropped.
//! - Window accounting is the same on every path: a spliced frame is charged
//!   its full wire length when its prefix is committed, a handed-over pipe
//!   the `ExecStdoutPipe` frame.
//! - A spliced frame's payload is exactly the bytes announced in its prefix:
//!   they were in the pipe when the prefix was sent (`FIONREAD`), and only
//!   this loop reads the pipe.

use super::channel::{is_disconnect, PendingSplice};
use super::session::{Kind, Session};
use super::{encode, Server, DATA_OVERHEAD, MIN_CHUNK};
use crate::sys::{self, Fd};
use alcove_protocol::codec::{data_frame_prefix, DataKind};
use alcove_protocol::fdpass;
use alcove_protocol::{Flags, Message, MAX_CHUNK};
use std::io;
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

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
/// Output chunks at least this large are spliced from the pipe into the
/// channel; smaller ones are cheaper to copy in one `write(2)`.
const SPLICE_MIN: usize = 16 * 1024;

/// How an output stream of a command reaches the host. This is the one
/// place that says which path is used when; the code that acts on it is
/// [`Server::pump_stream`] (frames and spliced frames) and
/// [`Server::hand_over_stdout`] (hand-over).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum OutputPath {
    /// Each chunk is read into the agent and queued as an encoded
    /// `ExecStdout`/`ExecStderr` frame. The path that always works: used for
    /// a terminal (a PTY master is not a pipe, so it cannot be spliced), for
    /// every stream on a VM's virtio-console port (fds cannot travel over
    /// it, and the splice path was built for the socket channel only), and
    /// for a pipe after a `splice(2)` into the channel failed.
    Frames,
    /// A pipe on a socket channel (a jail). A chunk of [`SPLICE_MIN`] or
    /// more, while nothing else is queued for the channel, leaves as the
    /// frame's prefix (`codec::data_frame_prefix`) followed by `splice(2)` of
    /// exactly that many bytes from the pipe into the socket: the payload
    /// never enters the agent's memory. Smaller chunks (cheaper to copy in
    /// one `write(2)`) and chunks that would have to queue behind other
    /// bytes go as [`OutputPath::Frames`]. A frame the socket took only
    /// partly is completed before any other byte (see `channel`).
    Spliced,
    /// The read end of the stdout pipe itself was sent to the host
    /// (`ExecStdoutPipe`, flag `FD`, the descriptor on the frame's first
    /// byte) and the agent reads nothing more from it: stdout then costs the
    /// command's write and one splice on the host. Only for stdout, when the
    /// client asked (`ExecRequest::stdout_pipe`), on a socket channel, for a
    /// pipe (the stream was [`OutputPath::Spliced`]), and only when the
    /// channel takes the frame's first byte at once with nothing queued
    /// before it (the descriptor must travel with that byte); otherwise the
    /// stream stays [`OutputPath::Spliced`], which the client handles alike.
    HandedOver,
}

impl OutputPath {
    /// The path a new stream starts on: `pipe` is false for a terminal.
    pub(super) fn for_stream(pipe: bool, channel_is_port: bool) -> OutputPath {
        if pipe && !channel_is_port {
            OutputPath::Spliced
        } else {
            OutputPath::Frames
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum StreamKind {
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

/// One output stream of a command (stdout, stderr, or a terminal).
#[derive(Debug)]
pub(super) struct OutStream {
    /// Open until the stream ends, is handed over or is abandoned.
    pub(super) fd: Option<Fd>,
    pub(super) kind: StreamKind,
    /// How this stream's chunks reach the host.
    pub(super) path: OutputPath,
    /// When the last read returned data.
    last_read: Option<Instant>,
    /// Not read again before this (output coalescing).
    pub(super) rest_until: Option<Instant>,
}

impl OutStream {
    pub(super) fn new(fd: Fd, kind: StreamKind, path: OutputPath) -> OutStream {
        OutStream { fd: Some(fd), kind, path, last_read: None, rest_until: None }
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

/// What an attempt to splice an output chunk did.
enum SpliceOutcome {
    /// Nothing was sent; read the chunk the ordinary way.
    NotSent,
    /// The frame was sent, or is pending in `Channel::pending_splice`.
    Sent,
    /// The channel is full (or broken): nothing was read or sent.
    Deferred,
}

impl Server {
    /// Answers [`ExecRequest::stdout_pipe`](alcove_protocol::ExecRequest):
    /// moves session `id`'s stdout to [`OutputPath::HandedOver`] when the
    /// conditions given there hold.
    pub(super) fn hand_over_stdout(&mut self, id: u32) {
        self.channel.flush();
        if self.channel.backlog() {
            log!("session {id}: stdout relayed (the channel is busy)");
            return;
        }
        let Some(Session { kind: Kind::Exec(e), window, .. }) = self.sessions.get_mut(&id) else { return };
        let Some(stream) =
            e.streams.first_mut().filter(|s| s.kind == StreamKind::Stdout && s.path == OutputPath::Spliced)
        else {
            return;
        };
        let Some(pipe) = stream.fd.as_ref() else { return };
        let mut bytes = Vec::new();
        if encode(id, Flags::FD, &Message::ExecStdoutPipe).encode_into(&mut bytes).is_err() {
            return;
        }
        match fdpass::send_fd_msg(self.channel.fd.raw(), &bytes, pipe.raw()) {
            Ok(n) => {
                self.channel.frames_out += 1;
                // The host holds the pipe now; the agent's copy closes.
                stream.fd = None;
                stream.path = OutputPath::HandedOver;
                *window -= bytes.len() as i64;
                self.channel.out.extend_from_slice(&bytes[n..]);
                log!("session {id}: stdout pipe handed to the client");
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                log!("session {id}: stdout relayed (the channel is full)");
            }
            Err(e) => self.channel.broken(&e),
        }
    }

    /// Reads one chunk from a session's output stream if the window allows.
    /// `drain`: the process has exited and the grace is over, so an empty
    /// pipe counts as finished.
    pub(super) fn pump_stream(&mut self, id: u32, idx: usize, drain: bool) -> bool {
        let Some(s) = self.sessions.get_mut(&id) else { return false };
        let avail = s.window - DATA_OVERHEAD as i64;
        let Kind::Exec(e) = &mut s.kind else { return false };
        let Some(st) = e.streams.get_mut(idx) else { return false };
        let Some(fd) = &st.fd else { return false };
        if avail < MIN_CHUNK as i64 {
            return false;
        }
        let max = (avail as usize).min(MAX_CHUNK);
        if self.channel.blocked() {
            // The channel is full; the output waits in its pipe.
            return false;
        }
        if st.path == OutputPath::Spliced && self.channel.out_pos == self.channel.out.len() {
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
        let prefix_sent = match sys::write(self.channel.fd.raw(), head) {
            Ok(k) if k > 0 => {
                self.channel.frames_out += 1;
                k
            }
            Ok(_) => return SpliceOutcome::NotSent,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                // Nothing committed: leave the output in its pipe until the
                // channel can take more.
                self.channel.full = true;
                return SpliceOutcome::Deferred;
            }
            Err(e) => {
                self.channel.broken(&e);
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
            match sys::splice(pipe, self.channel.fd.raw(), left) {
                Ok(k) => left -= k.min(left),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if is_disconnect(&e) => {
                    self.channel.broken(&e);
                    return SpliceOutcome::Sent;
                }
                Err(e) => {
                    log!("session {id}: splicing output failed ({e}); copying it instead");
                    if let Some(Session { kind: Kind::Exec(ex), .. }) = self.sessions.get_mut(&id) {
                        if let Some(st) = ex.streams.get_mut(idx) {
                            st.path = OutputPath::Frames;
                        }
                    }
                    let at = self.channel.out.len();
                    self.channel.copy_payload(id, pipe, left, at);
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
                self.channel.pending_splice = Some(PendingSplice { id, prefix, prefix_sent, pipe, left });
            }
            Err(e) => {
                // Without a duplicate, finish the frame from a copy.
                log!("session {id}: cannot hold the output pipe ({e}); copying the rest of the frame");
                let at = self.channel.out.len();
                self.channel.out.extend_from_slice(&head[prefix_sent..]);
                self.channel.copy_payload(id, pipe, left, at + head.len() - prefix_sent);
            }
        }
        SpliceOutcome::Sent
    }
}

#[cfg(test)]
mod tests {
    use super::OutputPath;

    #[test]
    fn only_a_pipe_on_a_socket_channel_starts_spliced() {
        assert_eq!(OutputPath::for_stream(true, false), OutputPath::Spliced);
        assert_eq!(OutputPath::for_stream(false, false), OutputPath::Frames, "a terminal");
        assert_eq!(OutputPath::for_stream(true, true), OutputPath::Frames, "a pipe on a virtio port");
        assert_eq!(OutputPath::for_stream(false, true), OutputPath::Frames, "a terminal on a virtio port");
    }
}
