//! Exec sessions: start, stdin, output, reaping.

use super::channel::is_disconnect;
use super::*;

impl Server {
    pub(super) fn new_session(&mut self, id: u32, kind: Kind) {
        let gen = self.next_gen;
        self.next_gen += 1;
        self.sessions.insert(id, Session { gen, window: i64::from(INITIAL_WINDOW), kind, final_frame: None });
    }

    pub(super) fn refuse_exec(&mut self, id: u32, e: SpawnError) {
        log!("session {id}: exec refused: {} ({})", e.message, e.kind.as_str());
        self.push_frame(&encode(id, Flags::TERMINAL, &Message::ExecFailed(e)));
    }

    pub(super) fn start_exec(&mut self, id: u32, req: ExecRequest) {
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
    pub(super) fn hand_over_stdout(&mut self, id: u32) {
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

    pub(super) fn on_stdin(&mut self, id: u32, data: Vec<u8>, wire: u32) {
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

    pub(super) fn on_stdin_eof(&mut self, id: u32) {
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

    pub(super) fn write_stdin(&mut self, id: u32) {
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
    pub(super) fn splice_chunk(
        &mut self,
        id: u32,
        idx: usize,
        pipe: RawFd,
        kind: StreamKind,
        n: usize,
    ) -> SpliceOutcome {
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

    pub(super) fn handle_signals(&mut self) {
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

    pub(super) fn reap(&mut self) {
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
}
