//! The session table and what every session has in common: its window,
//! its terminal frame, and the per-iteration progress that drains output
//! and ends sessions.
//!
//! Invariants:
//! - `window` is the bytes of frames (header included) the agent may still
//!   send on the session; every frame sent on it is charged ([`Server::send_on`]),
//!   the terminal one included; `Credit` frames the agent sends are not.
//! - A session ends with exactly one TERMINAL frame and nothing after it:
//!   the frame waits in `final_frame` while the session is `Closing`, and
//!   is queued in the same step that removes the session, only once the
//!   window holds it.
//! - Each session gets a generation number never used before, so a worker's
//!   late result for a reused id is recognised and dropped.
//! - `pids` maps the pid of every command not yet reaped to its session id
//!   (0 for a command whose session was refused after it started).

use super::exec::ExecSession;
use super::{encode, Server, DATA_OVERHEAD, DRAIN_CAP, DRAIN_GRACE, MIN_CHUNK};
use crate::fsops::{ReadStream, WriteStream};
use crate::sys;
use alcove_protocol::{Flags, Frame, FsError, FsErrorKind, Message, INITIAL_WINDOW};
use std::collections::HashMap;
use std::time::Instant;

/// What a session is doing.
#[derive(Debug)]
pub(super) enum Kind {
    Exec(Box<ExecSession>),
    Read(ReadStream),
    Write(WriteStream),
    /// A one-shot file operation runs on a worker thread.
    Pending,
    /// Only the terminal frame is left to send.
    Closing,
}

#[derive(Debug)]
pub(super) struct Session {
    pub(super) gen: u64,
    pub(super) window: i64,
    pub(super) kind: Kind,
    pub(super) final_frame: Option<Frame>,
}

/// Open sessions by id, and the commands' pids.
#[derive(Debug)]
pub(super) struct SessionTable {
    by_id: HashMap<u32, Session>,
    pids: HashMap<libc::pid_t, u32>,
    next_gen: u64,
}

impl SessionTable {
    pub(super) fn new() -> SessionTable {
        SessionTable { by_id: HashMap::new(), pids: HashMap::new(), next_gen: 1 }
    }

    /// Opens session `id` with a full window.
    pub(super) fn open(&mut self, id: u32, kind: Kind) {
        let gen = self.next_gen;
        self.next_gen += 1;
        self.by_id.insert(id, Session { gen, window: i64::from(INITIAL_WINDOW), kind, final_frame: None });
    }

    pub(super) fn get(&self, id: &u32) -> Option<&Session> {
        self.by_id.get(id)
    }

    pub(super) fn get_mut(&mut self, id: &u32) -> Option<&mut Session> {
        self.by_id.get_mut(id)
    }

    pub(super) fn contains_key(&self, id: &u32) -> bool {
        self.by_id.contains_key(id)
    }

    pub(super) fn remove(&mut self, id: &u32) -> Option<Session> {
        self.by_id.remove(id)
    }

    pub(super) fn len(&self) -> usize {
        self.by_id.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    pub(super) fn ids(&self) -> Vec<u32> {
        self.by_id.keys().copied().collect()
    }

    pub(super) fn values(&self) -> impl Iterator<Item = &Session> {
        self.by_id.values()
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = (&u32, &Session)> {
        self.by_id.iter()
    }

    /// Remembers that `pid` belongs to session `id` until it is reaped.
    pub(super) fn track_pid(&mut self, pid: libc::pid_t, id: u32) {
        self.pids.insert(pid, id);
    }

    /// The session of a reaped pid, forgotten from now on.
    pub(super) fn take_pid(&mut self, pid: libc::pid_t) -> Option<u32> {
        self.pids.remove(&pid)
    }
}

impl Server {
    /// Sends a frame on a session, charging its window.
    pub(super) fn send_on(&mut self, id: u32, flags: Flags, msg: &Message) {
        let f = encode(id, flags, msg);
        let n = self.channel.push_frame(&f) as i64;
        if let Some(s) = self.sessions.get_mut(&id) {
            s.window -= n;
        }
    }

    pub(super) fn send_credit(&mut self, id: u32, bytes: u32) {
        if bytes > 0 {
            self.channel.push_frame(&encode(id, Flags::NONE, &Message::Credit { bytes }));
        }
    }

    /// Ends a session after a protocol violation by its client.
    pub(super) fn abort_session(&mut self, id: u32, reason: &str) {
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

    pub(super) fn progress_sessions(&mut self) {
        let now = Instant::now();
        let ids: Vec<u32> = self.sessions.ids();
        for id in ids {
            // Exec: drain after exit, then the terminal frame.
            let mut drain_streams = Vec::new();
            let mut read_chunk = false;
            // A full channel (a spliced frame waiting) is the host's pace too.
            let chan_blocked = self.channel.blocked();
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

    fn send_final(&mut self, id: u32) {
        let Some(s) = self.sessions.get_mut(&id) else { return };
        let fits = s.final_frame.as_ref().is_some_and(|f| s.window >= f.wire_len() as i64);
        if fits && matches!(s.kind, Kind::Closing) {
            if let Some(f) = s.final_frame.take() {
                self.sessions.remove(&id);
                self.channel.push_frame(&f);
            }
        }
    }
}
