//! File sessions: streamed reads and writes on the loop, one-shot
//! operations on worker threads.
//!
//! Invariants:
//! - Worker threads touch nothing of the server: each runs one
//!   `fsops::run_oneshot`, sends `(id, gen, result)` on the results channel
//!   and writes a byte to the wake pipe; the loop picks the result up.
//! - A result is used only if its session still exists with the same
//!   generation and is still `Pending`: a late result for an aborted or
//!   reused id is dropped.
//! - File content is paced like exec output: a read chunk is sent only when
//!   it fits the window, and written `FsData` is credited back once it is in
//!   the file.
//! - A terminal reply never exceeds one window; a larger one becomes an
//!   error.

use super::session::Kind;
use super::{encode, Server, DATA_OVERHEAD, MIN_CHUNK};
use crate::fsops::{self, ReadStream, WriteStream};
use crate::sys::{self, Fd};
use alcove_protocol::{Flags, FsError, FsErrorKind, FsReply, FsRequest, Message, INITIAL_WINDOW, MAX_CHUNK};
use std::io;
use std::sync::mpsc;

/// A finished one-shot operation: session id, its generation, the reply.
type FsResult = (u32, u64, Result<FsReply, FsError>);

/// Where worker threads deliver their results, and the pipe that wakes the
/// loop for them.
pub(super) struct FsWorkers {
    pub(super) wake_r: Fd,
    wake_w: Fd,
    results_tx: mpsc::Sender<FsResult>,
    results_rx: mpsc::Receiver<FsResult>,
}

impl FsWorkers {
    pub(super) fn new() -> io::Result<FsWorkers> {
        let (wake_r, wake_w) = sys::pipe()?;
        sys::set_nonblocking(wake_r.raw(), true)?;
        sys::set_nonblocking(wake_w.raw(), true)?;
        let (results_tx, results_rx) = mpsc::channel();
        Ok(FsWorkers { wake_r, wake_w, results_tx, results_rx })
    }
}

impl Server {
    pub(super) fn start_fs(&mut self, id: u32, req: FsRequest) {
        if self.shutdown.is_some() {
            let err = FsError { kind: FsErrorKind::Other, message: "the sandbox is shutting down".into() };
            self.channel.push_frame(&encode(id, Flags::TERMINAL, &Message::FsResponse(Err(err))));
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
                self.channel.push_frame(&encode(id, Flags::TERMINAL, &Message::FsResponse(Err(e))));
                return;
            }
        };
        let pending = matches!(kind, Kind::Pending);
        self.sessions.open(id, kind);
        if pending {
            let gen = self.sessions.get(&id).map(|s| s.gen).unwrap_or(0);
            let tx = self.workers.results_tx.clone();
            let wake = self.workers.wake_w.raw();
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

    pub(super) fn finish_fs(&mut self, id: u32, result: Result<FsReply, FsError>) {
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

    pub(super) fn handle_results(&mut self) {
        let mut buf = [0u8; 256];
        while matches!(sys::read(self.workers.wake_r.raw(), &mut buf), Ok(n) if n > 0) {}
        while let Ok((id, gen, result)) = self.workers.results_rx.try_recv() {
            if self.sessions.get(&id).is_some_and(|s| s.gen == gen && matches!(s.kind, Kind::Pending)) {
                self.finish_fs(id, result);
            }
        }
    }

    pub(super) fn on_fs_data(&mut self, id: u32, data: &[u8], wire: u32) {
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

    pub(super) fn on_fs_end(&mut self, id: u32) {
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

    /// Sends the next chunk of a file being read, if the window allows.
    pub(super) fn pump_file(&mut self, id: u32) {
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
}
