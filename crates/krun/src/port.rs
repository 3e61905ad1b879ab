//! The `agent` virtio-console port, served from the guest end of the agent
//! channel (a connected `SOCK_STREAM` Unix socket; the relay holds the host
//! end).
//!
//! Invariants, from msb_krun's console device:
//! - `read` with nothing to read returns `WouldBlock`. `Ok(0)` means
//!   end-of-file and closes the port for good, so it is returned only when
//!   the host end is closed or broken.
//! - The socket itself is the wake fd: it polls readable when `read` has
//!   data (or at end-of-file).
//! - `write` never blocks; when the socket buffer is full it returns
//!   `WouldBlock` and the TX thread parks in `wait_until_writable`, so a
//!   host that stops reading stalls the guest's writes (backpressure), never
//!   drops them. Once the host end is gone, guest output is discarded.
//! - All I/O uses `MSG_DONTWAIT` and `MSG_NOSIGNAL`: the fd's own flags are
//!   untouched and a closed peer never raises SIGPIPE.

use msb_krun::ConsolePortBackend;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;

/// The agent port's backend.
#[derive(Debug)]
pub struct AgentPort {
    sock: UnixStream,
}

impl AgentPort {
    /// Serves the port from `guest_end`.
    pub fn new(guest_end: UnixStream) -> AgentPort {
        AgentPort { sock: guest_end }
    }
}

fn last_errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

impl ConsolePortBackend for AgentPort {
    fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        loop {
            // SAFETY: buf is valid for writes of buf.len() bytes; the fd is
            // owned by self.sock for the duration of the call.
            let n =
                unsafe { libc::recv(self.sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
            if n >= 0 {
                // n == 0 is end-of-file: the host end is closed.
                return Ok(n as usize);
            }
            match last_errno() {
                libc::EINTR => continue,
                libc::EAGAIN => return Err(io::ErrorKind::WouldBlock.into()),
                // A broken peer is end-of-file too; any other error would
                // make the RX thread spin on a readable fd.
                _ => return Ok(0),
            }
        }
    }

    fn write(&self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            // SAFETY: buf is valid for reads of buf.len() bytes.
            let n = unsafe {
                libc::send(
                    self.sock.as_raw_fd(),
                    buf.as_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                )
            };
            if n >= 0 {
                return Ok(n as usize);
            }
            match last_errno() {
                libc::EINTR => continue,
                libc::EAGAIN => return Err(io::ErrorKind::WouldBlock.into()),
                // The host end is gone: nobody can receive this any more.
                libc::EPIPE | libc::ECONNRESET | libc::ENOTCONN => return Ok(buf.len()),
                e => return Err(io::Error::from_raw_os_error(e)),
            }
        }
    }

    fn read_wake_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }

    fn wait_until_writable(&self) {
        let mut pfd = libc::pollfd { fd: self.sock.as_raw_fd(), events: libc::POLLOUT, revents: 0 };
        loop {
            // SAFETY: pfd is a valid pollfd array of length 1.
            let r = unsafe { libc::poll(&mut pfd, 1, -1) };
            if r >= 0 || last_errno() != libc::EINTR {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::time::{Duration, Instant};

    #[test]
    fn empty_read_is_would_block_never_eof() {
        let (_host, guest) = alcove_backend::console::channel().expect("pair");
        let port = AgentPort::new(guest);
        let mut buf = [0u8; 16];
        let e = port.read(&mut buf).expect_err("no data");
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        let e = port.read(&mut []).expect_err("empty buffer");
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
    }

    #[test]
    fn bytes_flow_both_ways() {
        let (mut host, guest) = alcove_backend::console::channel().expect("pair");
        let port = AgentPort::new(guest);
        host.write_all(b"to guest").expect("write");
        let mut buf = [0u8; 64];
        let n = port.read(&mut buf).expect("read");
        assert_eq!(&buf[..n], b"to guest");
        assert_eq!(port.write(b"to host").expect("write"), 7);
        let mut got = [0u8; 7];
        host.read_exact(&mut got).expect("read");
        assert_eq!(&got, b"to host");
    }

    #[test]
    fn host_close_is_eof_and_later_writes_are_discarded() {
        let (host, guest) = alcove_backend::console::channel().expect("pair");
        let port = AgentPort::new(guest);
        drop(host);
        let mut buf = [0u8; 8];
        assert_eq!(port.read(&mut buf).expect("eof"), 0);
        assert_eq!(port.write(b"lost").expect("discarded"), 4);
    }

    #[test]
    fn full_socket_applies_backpressure_until_the_host_reads() {
        let (mut host, guest) = alcove_backend::console::channel().expect("pair");
        let port = AgentPort::new(guest);
        let chunk = [7u8; 4096];
        let mut sent = 0usize;
        loop {
            match port.write(&chunk) {
                Ok(n) => sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("unexpected {e}"),
            }
            assert!(sent < 64 << 20, "socket never filled");
        }
        let reader = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            let mut buf = vec![0u8; sent];
            host.read_exact(&mut buf).expect("drain");
            host
        });
        let t = Instant::now();
        port.wait_until_writable();
        assert!(t.elapsed() >= Duration::from_millis(40), "wait returned before the host read");
        assert!(port.write(&chunk).expect("writable again") > 0);
        drop(reader.join().expect("reader"));
    }

    #[test]
    fn wake_fd_is_the_socket() {
        let (_host, guest) = alcove_backend::console::channel().expect("pair");
        let fd = guest.as_raw_fd();
        assert_eq!(AgentPort::new(guest).read_wake_fd(), fd);
    }
}
