//! File sessions.

use super::*;

impl Server {
    pub(super) fn start_fs(&mut self, id: u32, req: FsRequest) {
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
        while matches!(sys::read(self.wake_r.raw(), &mut buf), Ok(n) if n > 0) {}
        while let Ok((id, gen, result)) = self.results_rx.try_recv() {
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
}
