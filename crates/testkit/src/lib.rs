//! Helpers shared by alcove's test suites, so each suite does not grow its
//! own copy. A dev-dependency only: nothing here ships.
//!
//! The test doubles themselves live with what they stand in for: the
//! scripted guest is `alcove_backend::mock` (used by the actor tests and by
//! the sandbox process's `mock` backend), the raw relay client is in the
//! root crate's `tests/common`, the agent harness in the agent crate's
//! `tests/common`. What they have in common is here.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};

/// Fails the test unless it runs as root, saying `why` it must.
pub fn require_root(why: &str) {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(euid, 0, "{why}: run the tests as root");
}

/// A [`std::io::Read`] over a Unix socket that reads with `recvmsg`, as the
/// relay and the client library do, and keeps every descriptor that came
/// with the bytes, in order.
#[derive(Debug)]
pub struct FdCapture {
    sock: UnixStream,
    fds: Arc<Mutex<VecDeque<OwnedFd>>>,
}

impl FdCapture {
    /// Reads `sock`; descriptors go to `fds`.
    pub fn new(sock: UnixStream, fds: Arc<Mutex<VecDeque<OwnedFd>>>) -> FdCapture {
        FdCapture { sock, fds }
    }
}

impl std::io::Read for FdCapture {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let (n, fds) = alcove_protocol::fdpass::recv_with_fds(self.sock.as_raw_fd(), buf)?;
        self.fds.lock().unwrap_or_else(|p| p.into_inner()).extend(fds);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn descriptors_are_kept_in_order_with_the_bytes() {
        let (a, b) = UnixStream::pair().expect("socketpair");
        let (r, _w) = std::io::pipe().expect("pipe");
        alcove_protocol::fdpass::send_fd_msg(a.as_raw_fd(), b"x", r.as_raw_fd()).expect("sends");
        (&a).write_all(b"yz").expect("writes");
        let fds = Arc::new(Mutex::new(VecDeque::new()));
        let mut capture = FdCapture::new(b, fds.clone());
        let mut got = [0u8; 3];
        capture.read_exact(&mut got).expect("reads");
        assert_eq!(&got, b"xyz");
        assert_eq!(fds.lock().expect("queue").len(), 1);
    }
}
