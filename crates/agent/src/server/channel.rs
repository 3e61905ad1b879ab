//! The channel to the host: outbound buffer, flushing, spliced frames.

use super::*;

impl Server {
    pub(super) fn push_frame(&mut self, f: &Frame) -> usize {
        if let Err(e) = f.encode_into(&mut self.out) {
            log!("dropping an unencodable frame on session {}: {e}", f.id);
            return 0;
        }
        f.wire_len()
    }

    /// Sends a frame on a session, charging its window.
    pub(super) fn send_on(&mut self, id: u32, flags: Flags, msg: &Message) {
        let f = encode(id, flags, msg);
        let n = self.push_frame(&f) as i64;
        if let Some(s) = self.sessions.get_mut(&id) {
            s.window -= n;
        }
    }

    pub(super) fn send_credit(&mut self, id: u32, bytes: u32) {
        if bytes > 0 {
            self.push_frame(&encode(id, Flags::NONE, &Message::Credit { bytes }));
        }
    }

    /// Whether bytes wait for the channel to become writable.
    pub(super) fn channel_backlog(&self) -> bool {
        self.out_pos < self.out.len() || self.spliced.is_some() || self.chan_full
    }

    pub(super) fn flush(&mut self) {
        if self.spliced.is_some() && !self.resume_splice() {
            return;
        }
        while self.out_pos < self.out.len() {
            match sys::write(self.chan.raw(), &self.out[self.out_pos..]) {
                Ok(0) => break,
                Ok(n) => self.out_pos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    self.channel_broken(&e);
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
        while (self.out_pos < self.out.len() || self.spliced.is_some()) && !self.host_gone {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                log!("gave up sending {} buffered bytes to the host", self.out.len() - self.out_pos);
                return;
            }
            let mut p = [libc::pollfd { fd: self.chan.raw(), events: libc::POLLOUT, revents: 0 }];
            if sys::poll(&mut p, Some(left)).is_err() {
                return;
            }
            self.flush();
        }
    }

    /// Continues the pending spliced frame; true once it is complete.
    pub(super) fn resume_splice(&mut self) -> bool {
        let Some(p) = &mut self.spliced else { return true };
        while p.prefix_sent < p.prefix.as_bytes().len() {
            match sys::write(self.chan.raw(), &p.prefix.as_bytes()[p.prefix_sent..]) {
                Ok(0) => return false,
                Ok(k) => p.prefix_sent += k,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(e) => {
                    self.channel_broken(&e);
                    return false;
                }
            }
        }
        while p.left > 0 {
            match sys::splice(p.pipe.raw(), self.chan.raw(), p.left) {
                Ok(0) => break,
                Ok(k) => p.left -= k.min(p.left),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(e) if is_disconnect(&e) => {
                    self.channel_broken(&e);
                    return false;
                }
                Err(e) => {
                    log!("session {}: splicing output failed ({e}); copying the rest of the frame", p.id);
                    break;
                }
            }
        }
        let Some(p) = self.spliced.take() else { return true };
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
    pub(super) fn channel_broken(&mut self, e: &io::Error) {
        if !self.host_gone {
            log!("writing to the channel failed: {e}");
        }
        self.host_gone = true;
        self.out.clear();
        self.out_pos = 0;
        self.spliced = None;
        self.chan_full = false;
    }
}

/// Whether a failed write means the peer is gone.
pub(super) fn is_disconnect(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EPIPE | libc::ECONNRESET | libc::ENOTCONN))
}
