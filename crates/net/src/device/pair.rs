//! A pair of connected frame devices over an `AF_UNIX` `SOCK_SEQPACKET`
//! socket pair: one message is one frame, the kernel keeps frame
//! boundaries and applies back-pressure. Used by tests and benchmarks, and
//! as the link between the engine and a microVM's virtio-net worker.

use super::{cvt, FrameDevice};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// One end of a frame pair.
#[derive(Debug)]
pub struct PairDevice {
    fd: OwnedFd,
}

/// Socket buffer asked for on each end (root may exceed `wmem_max`).
const BUFFER_BYTES: libc::c_int = 4 * 1024 * 1024;

/// Creates two connected, non-blocking frame devices.
pub fn frame_pair() -> io::Result<(PairDevice, PairDevice)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` is a valid two-element array for socketpair to fill.
    let ret = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    if ret != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: socketpair succeeded, so both descriptors are open and ours.
    let (a, b) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    for fd in [&a, &b] {
        for opt in [libc::SO_SNDBUFFORCE, libc::SO_RCVBUFFORCE] {
            // Without CAP_NET_ADMIN the FORCE variants fail; fall back to the
            // capped ones. Either way a failure only costs throughput.
            if set_int(fd, opt, BUFFER_BYTES).is_err() {
                let plain = if opt == libc::SO_SNDBUFFORCE { libc::SO_SNDBUF } else { libc::SO_RCVBUF };
                let _ = set_int(fd, plain, BUFFER_BYTES);
            }
        }
    }
    Ok((PairDevice { fd: a }, PairDevice { fd: b }))
}

fn set_int(fd: &OwnedFd, opt: libc::c_int, value: libc::c_int) -> io::Result<()> {
    // SAFETY: the option value is a live c_int of the size passed.
    let ret = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            opt,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if ret == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

impl PairDevice {
    /// Wraps one end of a pair made by [`frame_pair`] and handed over as a
    /// descriptor (by a backend, with the guest).
    pub fn from_fd(fd: OwnedFd) -> PairDevice {
        PairDevice { fd }
    }

    /// The descriptor, to hand over.
    pub fn into_fd(self) -> OwnedFd {
        self.fd
    }

    /// Waits up to `timeout` for a frame (for tests and tools driving the
    /// guest side). `Ok(None)` when none came.
    pub fn recv_frame_timeout(&mut self, buf: &mut [u8], timeout: Duration) -> io::Result<Option<usize>> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            match self.recv_frame(buf) {
                Ok(n) => return Ok(Some(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            let mut pfd = libc::pollfd { fd: self.fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
            let ms = left.as_millis().clamp(1, i32::MAX as u128) as libc::c_int;
            // SAFETY: one valid pollfd.
            unsafe { libc::poll(&mut pfd, 1, ms) };
        }
    }
}

impl FrameDevice for PairDevice {
    fn recv_frame(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: `buf` is valid for writes of its length.
        cvt(unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) })
            .and_then(|n| {
                if n == 0 && !buf.is_empty() {
                    Err(io::Error::new(io::ErrorKind::UnexpectedEof, "frame peer closed"))
                } else {
                    Ok(n)
                }
            })
    }

    fn send_frame(&mut self, frame: &[u8]) -> io::Result<()> {
        // SAFETY: `frame` is valid for reads of its length.
        cvt(unsafe {
            libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
        })
        .map(|_| ())
    }

    fn pollable_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}
