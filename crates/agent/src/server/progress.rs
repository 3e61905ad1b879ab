//! Per-iteration progress of sessions.

use super::*;

impl Server {
    pub(super) fn progress_sessions(&mut self) {
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

    pub(super) fn maybe_finish_exec(&mut self, id: u32) {
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

    pub(super) fn send_final(&mut self, id: u32) {
        let Some(s) = self.sessions.get_mut(&id) else { return };
        let fits = s.final_frame.as_ref().is_some_and(|f| s.window >= f.wire_len() as i64);
        if fits && matches!(s.kind, Kind::Closing) {
            if let Some(f) = s.final_frame.take() {
                self.sessions.remove(&id);
                self.push_frame(&f);
            }
        }
    }

    pub(super) fn heartbeat(&mut self) {
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
}
