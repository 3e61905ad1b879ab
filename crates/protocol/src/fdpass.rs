//! File descriptors carried by frames over a Unix stream socket
//! ([`crate::Flags::FD`]).
//!
//! A sender attaches one descriptor (`SCM_RIGHTS`) to the first byte of the
//! frame whose flags say FD ([`send_with_fd`]). A Unix stream socket hands a
//! descriptor to the `recvmsg(2)` that reads the first byte it came with, and
//! never glues bytes after that into the same read, so a reader that reads
//! everything through [`FdReadHalf`] has the descriptor queued by the time it
//! parses that frame's header. Descriptors are taken in frame order
//! ([`FdReadHalf::take_fd`]).
//!
//! Invariants: received descriptors are close-on-exec; at most
//! [`MAX_QUEUED_FDS`] wait unclaimed (a peer sending more than its frames
//! announce has the surplus closed); [`is_pipe_read_end`] is the check a
//! receiver makes before trusting a descriptor to be a pipe it may read.
//! Descriptors are matched to FD frames by order alone, so a peer that
//! attaches them to other frames can shift them between its own sessions;
//! for the agent that is no new power (it writes every session's output).
//! (`FdReadHalf` and `send_with_fd` need the `tokio` feature.)

#[cfg(feature = "tokio")]
pub use self::tokio_io::{send_with_fd, FdReadHalf, MAX_QUEUED_FDS};
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// Descriptors one `recvmsg` can take; more are closed by the kernel
/// (`MSG_CTRUNC`).
const FDS_PER_READ: usize = 4;

const fn cmsg_space(len: usize) -> usize {
    // SAFETY: CMSG_SPACE is arithmetic on its argument.
    unsafe { libc::CMSG_SPACE(len as u32) as usize }
}

#[cfg(feature = "tokio")]
mod tokio_io {
    use super::{recv_into, send_fd_msg};
    use std::collections::VecDeque;
    use std::io;
    use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
    use std::pin::Pin;
    use std::task::{ready, Context, Poll};
    use tokio::io::{AsyncRead, Interest, ReadBuf};
    use tokio::net::unix::OwnedReadHalf;
    use tokio::net::UnixStream;

    /// Descriptors received but not yet claimed by a frame, at most.
    pub const MAX_QUEUED_FDS: usize = 16;

    /// The read half of a Unix stream that keeps the descriptors arriving with
    /// its bytes (see the module docs).
    #[derive(Debug)]
    pub struct FdReadHalf {
        half: OwnedReadHalf,
        fds: VecDeque<OwnedFd>,
    }

    impl FdReadHalf {
        /// Wraps `half`; every read becomes a `recvmsg`.
        pub fn new(half: OwnedReadHalf) -> FdReadHalf {
            FdReadHalf { half, fds: VecDeque::new() }
        }

        /// The oldest received descriptor not yet taken.
        pub fn take_fd(&mut self) -> Option<OwnedFd> {
            self.fds.pop_front()
        }

        /// The stream (for `splice(2)` of payload bytes, which never carry a
        /// descriptor: those come with a frame's first byte).
        pub fn stream(&self) -> &UnixStream {
            self.half.as_ref()
        }

        fn keep(&mut self, fds: Vec<OwnedFd>) {
            for fd in fds {
                if self.fds.len() < MAX_QUEUED_FDS {
                    self.fds.push_back(fd);
                }
                // else: dropped, i.e. closed.
            }
        }
    }

    impl AsyncRead for FdReadHalf {
        fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
            let this = self.get_mut();
            loop {
                ready!(this.half.as_ref().poll_read_ready(cx))?;
                // SAFETY: recv_into writes at most `unfilled.len()` bytes into
                // it and reports how many; only those are marked initialised.
                let unfilled = unsafe { buf.unfilled_mut() };
                let fd = this.half.as_ref().as_raw_fd();
                match this.half.as_ref().try_io(Interest::READABLE, || recv_into(fd, unfilled)) {
                    Ok((n, fds)) => {
                        this.keep(fds);
                        // SAFETY: the kernel wrote `n` bytes at the start of `unfilled`.
                        unsafe { buf.assume_init(n) };
                        buf.advance(n);
                        return Poll::Ready(Ok(()));
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(e) => return Poll::Ready(Err(e)),
                }
            }
        }
    }

    /// Sends `bytes` (one whole frame with [`crate::Flags::FD`]) on `stream`
    /// with `fd` attached to the first byte. Waits for room; the rest of a
    /// partly taken frame follows as plain bytes.
    pub async fn send_with_fd(stream: &UnixStream, bytes: &[u8], fd: BorrowedFd<'_>) -> io::Result<()> {
        let mut sent = 0;
        while sent < bytes.len() {
            stream.writable().await?;
            let rest = &bytes[sent..];
            let result = if sent == 0 {
                stream.try_io(Interest::WRITABLE, || send_fd_msg(stream.as_raw_fd(), rest, fd.as_raw_fd()))
            } else {
                stream.try_write(rest)
            };
            match result {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// One `recvmsg(2)` into `buf` (blocking or not as `sock` is): the bytes
/// read and the descriptors that came with them, close-on-exec. Room for
/// four descriptors (`FDS_PER_READ`); the kernel closes any beyond.
pub fn recv_with_fds(sock: RawFd, buf: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>)> {
    // SAFETY: initialised bytes are valid MaybeUninit bytes, and recvmsg
    // only ever writes initialised bytes into them.
    let buf = unsafe { &mut *(buf as *mut [u8] as *mut [MaybeUninit<u8>]) };
    recv_into(sock, buf)
}

/// [`recv_with_fds`] into possibly uninitialised memory.
fn recv_into(sock: RawFd, buf: &mut [MaybeUninit<u8>]) -> io::Result<(usize, Vec<OwnedFd>)> {
    const SPACE: usize = cmsg_space(FDS_PER_READ * std::mem::size_of::<RawFd>());
    // u64 elements keep the control buffer aligned for cmsghdr.
    let mut control = [0u64; SPACE.div_ceil(8)];
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    // SAFETY: msghdr is plain data; every pointer in it refers to a live
    // local (iov, control) for the duration of the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control);
    // SAFETY: see above; the kernel writes at most iov_len bytes and
    // msg_controllen bytes of control data.
    let n = unsafe { libc::recvmsg(sock, &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut fds = Vec::new();
    // SAFETY: the CMSG_* macros walk the control data the kernel filled in,
    // bounded by msg_controllen; SCM_RIGHTS payloads are arrays of ints, each
    // a descriptor now owned by this process.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                let count = ((*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize) / std::mem::size_of::<RawFd>();
                for i in 0..count {
                    fds.push(OwnedFd::from_raw_fd(data.add(i).read_unaligned()));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    Ok((n as usize, fds))
}

/// One `sendmsg(2)` of `bytes` with `fd` as `SCM_RIGHTS`; the descriptor goes
/// with the first byte the kernel takes. Blocking or not as `sock` is.
pub fn send_fd_msg(sock: RawFd, bytes: &[u8], fd: RawFd) -> io::Result<usize> {
    const SPACE: usize = cmsg_space(std::mem::size_of::<RawFd>());
    let mut control = [0u64; SPACE.div_ceil(8)];
    let mut iov = libc::iovec { iov_base: bytes.as_ptr() as *mut libc::c_void, iov_len: bytes.len() };
    // SAFETY: as in recv_with_fds; the kernel only reads through iov here.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = SPACE;
    // SAFETY: CMSG_FIRSTHDR of a control buffer of CMSG_SPACE(sizeof(int))
    // bytes is non-null and has room for one int of data.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32) as _;
        libc::CMSG_DATA(cmsg).cast::<RawFd>().write_unaligned(fd);
    }
    // SAFETY: msg points at live locals; MSG_NOSIGNAL turns a closed peer
    // into EPIPE instead of a signal.
    let n = unsafe { libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// Whether `fd` is the read end of an anonymous pipe: the only kind of
/// descriptor a relay or client accepts from a guest. Decided without
/// calling into any filesystem (the link text of `/proc/self/fd/N` and the
/// descriptor's access mode), so a hostile descriptor cannot stall the
/// check.
pub fn is_pipe_read_end(fd: BorrowedFd<'_>) -> bool {
    // SAFETY: F_GETFL only reads the descriptor's status flags.
    let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
    if flags < 0 || flags & libc::O_ACCMODE != libc::O_RDONLY {
        return false;
    }
    std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .is_ok_and(|target| target.to_string_lossy().starts_with("pipe:["))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    #[cfg(feature = "tokio")]
    use tokio::{io::AsyncReadExt, net::UnixStream};

    fn pipe() -> (OwnedFd, OwnedFd) {
        let (r, w) = std::io::pipe().expect("pipe");
        (r.into(), w.into())
    }

    #[cfg(feature = "tokio")]
    #[tokio::test]
    async fn a_descriptor_arrives_with_its_bytes_and_in_order() {
        let (a, b) = UnixStream::pair().expect("pair");
        let (rd, _wr) = b.into_split();
        let mut rd = FdReadHalf::new(rd);
        let (r1, w1) = pipe();
        let (r2, _w2) = pipe();
        a.try_write(b"plain ").expect("write");
        send_with_fd(&a, b"first ", r1.as_fd()).await.expect("send");
        send_with_fd(&a, b"second", r2.as_fd()).await.expect("send");
        drop(a);
        let mut got = Vec::new();
        rd.read_to_end(&mut got).await.expect("read");
        assert_eq!(got, b"plain first second");
        let first = rd.take_fd().expect("first descriptor");
        let second = rd.take_fd().expect("second descriptor");
        assert!(rd.take_fd().is_none());
        assert!(is_pipe_read_end(first.as_fd()) && is_pipe_read_end(second.as_fd()));
        // The first one received is the first pipe: what is written into w1
        // comes out of it.
        // SAFETY: writes from a live buffer into a pipe we own.
        assert_eq!(unsafe { libc::write(w1.as_raw_fd(), b"x".as_ptr().cast(), 1) }, 1);
        let mut byte = [0u8; 1];
        // SAFETY: reads into a live one-byte buffer.
        assert_eq!(unsafe { libc::read(first.as_raw_fd(), byte.as_mut_ptr().cast(), 1) }, 1);
        assert_eq!(&byte, b"x");
        // SAFETY: F_GETFD only reads the descriptor's flags.
        assert_ne!(unsafe { libc::fcntl(first.as_raw_fd(), libc::F_GETFD) } & libc::FD_CLOEXEC, 0);
    }

    #[cfg(feature = "tokio")]
    #[tokio::test]
    async fn a_read_stops_at_the_bytes_a_descriptor_came_with() {
        let (a, b) = UnixStream::pair().expect("pair");
        let (rd, _wr) = b.into_split();
        let mut rd = FdReadHalf::new(rd);
        let (r, _w) = pipe();
        a.try_write(b"before").expect("write");
        send_with_fd(&a, b"carrier", r.as_fd()).await.expect("send");
        a.try_write(b"after").expect("write");
        let mut buf = [0u8; 64];
        let mut got = Vec::new();
        while !got.ends_with(b"carrier") {
            let n = rd.read(&mut buf).await.expect("read");
            got.extend_from_slice(&buf[..n]);
        }
        // Nothing past the carrier's bytes came in the read that brought
        // the descriptor.
        assert_eq!(got, b"beforecarrier");
        assert!(rd.take_fd().is_some());
    }

    #[test]
    fn only_pipe_read_ends_pass_the_check() {
        let (r, w) = pipe();
        assert!(is_pipe_read_end(r.as_fd()));
        assert!(!is_pipe_read_end(w.as_fd()), "a write end");
        let file = std::fs::File::open("/proc/self/status").expect("open");
        assert!(!is_pipe_read_end(file.as_fd()), "a regular file");
        let (s, _t) = std::os::unix::net::UnixStream::pair().expect("pair");
        assert!(!is_pipe_read_end(s.as_fd()), "a socket");
    }

    #[cfg(feature = "tokio")]
    #[tokio::test]
    async fn surplus_descriptors_are_closed_not_hoarded() {
        let (a, b) = UnixStream::pair().expect("pair");
        let (rd, _wr) = b.into_split();
        let mut rd = FdReadHalf::new(rd);
        let (r, _w) = pipe();
        for _ in 0..MAX_QUEUED_FDS + 5 {
            send_with_fd(&a, b"x", r.as_fd()).await.expect("send");
        }
        drop(a);
        let mut got = Vec::new();
        rd.read_to_end(&mut got).await.expect("read");
        assert_eq!(got.len(), MAX_QUEUED_FDS + 5);
        let mut kept = 0;
        while rd.take_fd().is_some() {
            kept += 1;
        }
        assert_eq!(kept, MAX_QUEUED_FDS);
    }
}
