//! Where Ethernet frames come from and go to.
//!
//! Invariants:
//! - A [`FrameDevice`] moves whole frames: one `recv_frame` is one frame,
//!   one `send_frame` is one frame or nothing.
//! - Both calls are non-blocking: an empty or full device answers
//!   [`std::io::ErrorKind::WouldBlock`]; the engine waits on
//!   [`FrameDevice::pollable_fd`] (readable: frames wait; writable: room).
//! - A frame longer than the buffer given to `recv_frame` is truncated by
//!   the kernel and then dropped by the parser; it never overruns anything.

mod link;
mod pair;
mod tap;

#[cfg(feature = "krun")]
pub mod krun;

pub use link::{configure_here, LinkConfig};
pub use pair::{frame_pair, PairDevice};
pub use tap::TapDevice;

use std::io;
use std::os::fd::RawFd;

/// A link carrying Ethernet frames to and from the guest.
pub trait FrameDevice: Send {
    /// Reads one frame into `buf`, returning its length.
    fn recv_frame(&mut self, buf: &mut [u8]) -> io::Result<usize>;
    /// Writes one frame.
    fn send_frame(&mut self, frame: &[u8]) -> io::Result<()>;
    /// A descriptor that polls readable when a frame waits and writable
    /// when a frame can be written.
    fn pollable_fd(&self) -> RawFd;
}

impl<T: FrameDevice + ?Sized> FrameDevice for Box<T> {
    fn recv_frame(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        (**self).recv_frame(buf)
    }
    fn send_frame(&mut self, frame: &[u8]) -> io::Result<()> {
        (**self).send_frame(frame)
    }
    fn pollable_fd(&self) -> RawFd {
        (**self).pollable_fd()
    }
}

pub(crate) fn cvt(ret: libc::ssize_t) -> io::Result<usize> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret as usize)
    }
}
