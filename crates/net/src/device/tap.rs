//! A TAP device created inside a network namespace: the guest side sees an
//! interface (e.g. `eth0`) in that namespace, the engine keeps the file
//! descriptor in the host's.
//!
//! Invariants:
//! - Only a short-lived helper thread ever enters the target namespace
//!   (`setns` affects the calling thread only); the caller's thread and
//!   the engine never change namespace.
//! - The device is `IFF_TAP | IFF_NO_PI` without `IFF_VNET_HDR`: frames are
//!   plain Ethernet, so the engine never trusts guest-supplied offload
//!   metadata. A large MTU gives most of the bulk-throughput benefit
//!   offloads would (see BENCHMARKS notes in the crate docs).
//! - The descriptor is non-blocking and close-on-exec.

use super::{cvt, FrameDevice};
use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

/// A TAP device's host-side descriptor.
#[derive(Debug)]
pub struct TapDevice {
    fd: OwnedFd,
    name: String,
}

#[repr(C)]
struct IfReq {
    name: [libc::c_char; libc::IFNAMSIZ],
    data: [u8; 24],
}

impl IfReq {
    fn new(name: &str) -> io::Result<IfReq> {
        let c =
            CString::new(name).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "interface name has a NUL"))?;
        let bytes = c.as_bytes_with_nul();
        if bytes.len() > libc::IFNAMSIZ || name.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("interface name {name:?} is empty or too long"),
            ));
        }
        let mut req = IfReq { name: [0; libc::IFNAMSIZ], data: [0; 24] };
        for (dst, src) in req.name.iter_mut().zip(bytes) {
            *dst = *src as libc::c_char;
        }
        Ok(req)
    }
}

fn ioctl(fd: RawFd, request: libc::Ioctl, req: &mut IfReq) -> io::Result<()> {
    // SAFETY: `req` is a live, correctly sized ifreq for these requests.
    let ret = unsafe { libc::ioctl(fd, request, req as *mut IfReq) };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

impl TapDevice {
    /// Creates TAP interface `name` inside the network namespace at
    /// `netns` (e.g. `/proc/PID/ns/net` or `/run/netns/NAME`), sets its MTU
    /// and brings it up. Addresses and routes are the caller's to set.
    pub fn create_in_netns(netns: &Path, name: &str, mtu: u32) -> io::Result<TapDevice> {
        let ns = File::open(netns)?;
        let name = name.to_string();
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    // SAFETY: setns on this helper thread only; `ns` is an open namespace file.
                    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                        return Err(io::Error::last_os_error());
                    }
                    Self::create_here(&name, mtu)
                })
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("TAP helper thread panicked")))
        })
    }

    /// [`TapDevice::create_in_netns`], then the guest's address, prefix
    /// and default route ([`super::link::configure_here`]) from the same
    /// helper thread: the link is ready before any guest process runs, and
    /// no guest process needs `CAP_NET_ADMIN` for it.
    pub fn create_configured_in_netns(netns: &Path, link: &super::LinkConfig) -> io::Result<TapDevice> {
        let ns = File::open(netns)?;
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    // SAFETY: setns on this helper thread only; `ns` is an open namespace file.
                    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                        return Err(io::Error::last_os_error());
                    }
                    let tap = Self::create_here(&link.name, link.mtu)?;
                    super::link::configure_here(link)?;
                    Ok(tap)
                })
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("TAP helper thread panicked")))
        })
    }

    /// Wraps a TAP descriptor made elsewhere (by a backend, handed over
    /// with the guest). It must be non-blocking and `IFF_NO_PI`.
    pub fn from_fd(fd: OwnedFd, name: impl Into<String>) -> TapDevice {
        TapDevice { fd, name: name.into() }
    }

    /// The descriptor and the interface's name.
    pub fn into_parts(self) -> (OwnedFd, String) {
        (self.fd, self.name)
    }

    /// Creates TAP interface `name` in the calling thread's namespace.
    pub fn create_here(name: &str, mtu: u32) -> io::Result<TapDevice> {
        let path = c"/dev/net/tun";
        // SAFETY: a valid C string path.
        let raw = unsafe { libc::open(path.as_ptr(), libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: open succeeded; the descriptor is ours.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let mut req = IfReq::new(name)?;
        let flags = (libc::IFF_TAP | libc::IFF_NO_PI) as i16;
        req.data[..2].copy_from_slice(&flags.to_ne_bytes());
        ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut req)?;

        // MTU and IFF_UP through an ordinary socket of this namespace.
        // SAFETY: plain socket creation.
        let sock = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if sock < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: socket succeeded; the descriptor is ours.
        let sock = unsafe { OwnedFd::from_raw_fd(sock) };
        let mut req = IfReq::new(name)?;
        req.data[..4].copy_from_slice(&(mtu as i32).to_ne_bytes());
        ioctl(sock.as_raw_fd(), libc::SIOCSIFMTU as libc::Ioctl, &mut req)?;
        let mut req = IfReq::new(name)?;
        ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS as libc::Ioctl, &mut req)?;
        let flags = i16::from_ne_bytes([req.data[0], req.data[1]]) | libc::IFF_UP as i16;
        req.data[..2].copy_from_slice(&flags.to_ne_bytes());
        ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS as libc::Ioctl, &mut req)?;
        Ok(TapDevice { fd, name: name.to_string() })
    }

    /// The interface's name inside its namespace.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl FrameDevice for TapDevice {
    fn recv_frame(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: `buf` is valid for writes of its length.
        cvt(unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) })
    }

    fn send_frame(&mut self, frame: &[u8]) -> io::Result<()> {
        // SAFETY: `frame` is valid for reads of its length.
        cvt(unsafe { libc::write(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len()) }).map(|_| ())
    }

    fn pollable_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}
