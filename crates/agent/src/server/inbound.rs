//! Frames from the host: reading the channel, decoding, and dispatching
//! each frame to its session.
//!
//! Invariants:
//! - Everything read is hostile until decoded: a frame the decoder rejects
//!   means framing is lost; the agent stops reading and shuts down.
//! - Id 0 is control (`Shutdown`, `Touch`); any frame with the SHUTDOWN
//!   flag shuts down, whatever its body.
//! - A session starts only with SESSION_START and an `ExecRequest` or
//!   `FsRequest` on an unused id; anything else on a new id is answered
//!   with one terminal `ExecFailed`, a second start on an open id is ignored.
//! - Frames for a session that has ended (late credit or data) are dropped;
//!   a frame that does not belong on an open session aborts that session
//!   alone.
//! - On a virtio-console port, end of file means the host side is away for
//!   now: a partial frame is dropped and the channel polled again after
//!   [`PORT_RETRY`].

use super::channel::PORT_RETRY;
use super::session::Kind;
use super::{encode, Server, DEFAULT_GRACE_MS};
use crate::{spawn, sys};
use alcove_protocol::{Flags, Frame, FrameDecoder, Message, SpawnError, SpawnErrorKind, CONTROL_ID};
use std::io;
use std::time::Instant;

impl Server {
    pub(super) fn read_channel(&mut self) {
        for _ in 0..16 {
            match sys::read(self.channel.fd.raw(), &mut self.channel.rbuf) {
                Ok(0) if self.cfg.channel_is_port => {
                    if self.channel.decoder.pending() != 0 {
                        // A reconnecting host starts a fresh stream.
                        log!("the host side of the port disconnected inside a frame; dropping the partial frame");
                        self.channel.decoder = FrameDecoder::new();
                    }
                    self.channel.retry_at = Some(Instant::now() + PORT_RETRY);
                    return;
                }
                Ok(0) => {
                    self.channel.host_gone = true;
                    return;
                }
                Ok(n) => self.channel.decoder.extend(&self.channel.rbuf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    if e.raw_os_error() != Some(libc::ECONNRESET) {
                        log!("reading the channel failed: {e}");
                    }
                    self.channel.host_gone = true;
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
            match self.channel.decoder.next_frame() {
                Ok(Some(f)) => self.on_frame(f),
                Ok(None) => return true,
                Err(e) => {
                    log!("lost framing on the channel ({e}); shutting down");
                    self.channel.framing_lost = true;
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
                    self.channel.push_frame(&encode(id, Flags::TERMINAL, &m));
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
                    self.channel.push_frame(&encode(id, Flags::TERMINAL, &m));
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
        Message::SandboxRequest(_) => "SandboxRequest",
        Message::SandboxReply(_) => "SandboxReply",
    }
}
