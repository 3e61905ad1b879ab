//! The engine as a libkrun microVM's network: a custom
//! [`msb_krun::NetBackend`] for `builder.net(|n| n.mac(..).custom(..))`.
//!
//! The virtio-net worker thread of msb_krun calls the backend; the engine
//! runs on its own thread. They are joined by a [`frame_pair`]: the
//! backend owns one end, the engine the other ([`krun_backend`]).
//!
//! Invariants:
//! - Frames handed to the worker start with a zeroed `virtio_net_hdr_v1`
//!   (12 bytes): msb_krun 0.1.42 negotiates no offloads, so no flags,
//!   no GSO, no partial checksum.
//! - Each frame is one datagram: a write is whole or nothing, so
//!   `has_unfinished_write` is always false.

use super::{frame_pair, FrameDevice, PairDevice};
use msb_krun::backends::net::{NetBackend, ReadError, WriteError};
use std::io;
use std::os::fd::RawFd;

/// Length of `virtio_net_hdr_v1`, which precedes every frame the worker
/// exchanges with its backend.
pub const VNET_HDR_LEN: usize = 12;

/// The backend half given to msb_krun.
#[derive(Debug)]
pub struct KrunNetBackend {
    end: PairDevice,
}

/// Creates the backend for the VM and the device for the engine.
pub fn krun_backend() -> io::Result<(KrunNetBackend, PairDevice)> {
    let (vm_side, engine_side) = frame_pair()?;
    Ok((KrunNetBackend { end: vm_side }, engine_side))
}

fn errno(e: &io::Error) -> nix::Error {
    nix::Error::from_raw(e.raw_os_error().unwrap_or(libc::EIO))
}

impl NetBackend for KrunNetBackend {
    fn read_frame(&mut self, buf: &mut [u8]) -> Result<usize, ReadError> {
        if buf.len() <= VNET_HDR_LEN {
            return Err(ReadError::NothingRead);
        }
        buf[..VNET_HDR_LEN].fill(0);
        match self.end.recv_frame(&mut buf[VNET_HDR_LEN..]) {
            Ok(n) => Ok(VNET_HDR_LEN + n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Err(ReadError::NothingRead),
            Err(e) => Err(ReadError::Internal(errno(&e))),
        }
    }

    fn write_frame(&mut self, hdr_len: usize, buf: &mut [u8]) -> Result<(), WriteError> {
        let Some(frame) = buf.get(hdr_len..) else { return Err(WriteError::NothingWritten) };
        match self.end.send_frame(frame) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Err(WriteError::NothingWritten),
            Err(e) if e.raw_os_error() == Some(libc::EPIPE) => Err(WriteError::ProcessNotRunning),
            Err(e) => Err(WriteError::Internal(errno(&e))),
        }
    }

    fn has_unfinished_write(&self) -> bool {
        false
    }

    fn try_finish_write(&mut self, _hdr_len: usize, _buf: &[u8]) -> Result<(), WriteError> {
        Ok(())
    }

    fn raw_socket_fd(&self) -> RawFd {
        self.end.pollable_fd()
    }
}
