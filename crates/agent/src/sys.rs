//! Thin wrappers over the system calls the agent uses.
//!
//! Invariant: every wrapper turns a `-1` return into `io::Error::last_os_error()`
//! and retries `EINTR` where retrying is correct; no wrapper panics. File
//! descriptors the agent owns are held in [`Fd`], which closes on drop.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

/// An owned file descriptor, closed on drop.
#[derive(Debug)]
pub struct Fd(RawFd);

impl Fd {
    /// Takes ownership of `fd`.
    pub fn new(fd: RawFd) -> Fd {
        Fd(fd)
    }

    /// The raw number.
    pub fn raw(&self) -> RawFd {
        self.0
    }

    /// Gives up ownership without closing.
    pub fn into_raw(self) -> RawFd {
        let fd = self.0;
        std::mem::forget(self);
        fd
    }
}

impl AsRawFd for Fd {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

impl Drop for Fd {
    fn drop(&mut self) {
        // SAFETY: we own the descriptor and close it once.
        unsafe {
            libc::close(self.0);
        }
    }
}

/// Converts a `-1` return into the OS error.
pub fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// A pipe `(read, write)`, both close-on-exec.
pub fn pipe() -> io::Result<(Fd, Fd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: fds is a valid two-element array.
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    Ok((Fd(fds[0]), Fd(fds[1])))
}

/// Sets or clears `O_NONBLOCK`.
pub fn set_nonblocking(fd: RawFd, on: bool) -> io::Result<()> {
    // SAFETY: fcntl on an fd we hold; bad fds give EBADF.
    let flags = check(unsafe { libc::fcntl(fd, libc::F_GETFL) })?;
    let new = if on { flags | libc::O_NONBLOCK } else { flags & !libc::O_NONBLOCK };
    if new != flags {
        // SAFETY: as above.
        check(unsafe { libc::fcntl(fd, libc::F_SETFL, new) })?;
    }
    Ok(())
}

/// Sets `FD_CLOEXEC`.
pub fn set_cloexec(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on an fd we hold.
    let flags = check(unsafe { libc::fcntl(fd, libc::F_GETFD) })?;
    // SAFETY: as above.
    check(unsafe { libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) })?;
    Ok(())
}

/// Marks every descriptor from `first` up close-on-exec, so nothing the
/// agent inherited leaks into commands.
pub fn cloexec_from(first: RawFd) {
    // SAFETY: close_range only changes descriptor flags.
    let rc = unsafe {
        libc::syscall(libc::SYS_close_range, first as libc::c_uint, libc::c_uint::MAX, libc::CLOSE_RANGE_CLOEXEC)
    };
    if rc == 0 {
        return;
    }
    // Older kernels: walk /proc/self/fd (collect first: the walk opens an fd).
    let fds: Vec<RawFd> = match std::fs::read_dir("/proc/self/fd") {
        Ok(rd) => rd.flatten().filter_map(|e| e.file_name().to_str()?.parse().ok()).filter(|fd| *fd >= first).collect(),
        Err(_) => return,
    };
    for fd in fds {
        let _ = set_cloexec(fd);
    }
}

/// Runs a byte-count system call until it is not interrupted: its count,
/// or the error `errno` names.
fn retry_eintr(mut call: impl FnMut() -> isize) -> io::Result<usize> {
    loop {
        let n = call();
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// One `read(2)`; `EINTR` is retried.
pub fn read(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: buf is valid for buf.len() bytes.
    retry_eintr(|| unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) })
}

/// One `write(2)`; `EINTR` is retried.
pub fn write(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: buf is valid for buf.len() bytes.
    retry_eintr(|| unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) })
}

/// Bytes waiting to be read on a pipe (or socket, or terminal): `FIONREAD`.
pub fn readable_bytes(fd: RawFd) -> io::Result<usize> {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD stores one int into n.
    check(unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n) })?;
    Ok(usize::try_from(n).unwrap_or(0))
}

/// One non-blocking `splice(2)` of at most `len` bytes from the pipe `from`
/// to `to`; `EINTR` is retried. With a Unix stream socket as `to` the kernel
/// hands the pipe's pages to the socket instead of copying them.
pub fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    let flags = libc::SPLICE_F_NONBLOCK | libc::SPLICE_F_MOVE;
    // SAFETY: null offsets (both ends are streams); no memory is passed.
    retry_eintr(|| unsafe { libc::splice(from, std::ptr::null_mut(), to, std::ptr::null_mut(), len, flags) })
}

/// A close-on-exec duplicate of `fd` (at 3 or above).
pub fn dup(fd: RawFd) -> io::Result<Fd> {
    // SAFETY: duplicating a descriptor has no memory-safety preconditions.
    let n = check(unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) })?;
    Ok(Fd(n))
}

/// Makes this process non-dumpable: no process without `CAP_SYS_PTRACE`
/// can ptrace it, take its descriptors (`pidfd_getfd`), read its memory or
/// list `/proc/PID/fd`, even one running as the same user. `execve` resets
/// the flag, so the agent sets it itself once it runs; its commands get the
/// default back when they exec.
pub fn forbid_ptrace() -> io::Result<()> {
    // SAFETY: prctl with integer arguments.
    check(unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) }).map(drop)
}

/// Whether this process is dumpable (ptrace-able by its own user).
pub fn is_dumpable() -> bool {
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_GET_DUMPABLE, 0, 0, 0, 0) == 1 }
}

/// Reads until end of file from a blocking fd.
pub fn read_to_end(fd: RawFd) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let n = read(fd, &mut buf)?;
        if n == 0 {
            return Ok(out);
        }
        out.extend_from_slice(&buf[..n]);
    }
}

/// `poll(2)` over `fds`; `EINTR` counts as a timeout with nothing ready.
pub fn poll(fds: &mut [libc::pollfd], timeout: Option<Duration>) -> io::Result<usize> {
    // ppoll, not poll: the loop's short deadlines (output coalescing, a few
    // hundred microseconds) must not be rounded up to whole milliseconds.
    let ts = timeout.map(|d| libc::timespec {
        tv_sec: d.as_secs().min(i64::MAX as u64) as libc::time_t,
        tv_nsec: libc::c_long::from(d.subsec_nanos() as i32),
    });
    let tsp = ts.as_ref().map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: fds is a valid slice of pollfd; tsp is null or points to a
    // live timespec; a null sigmask leaves the mask unchanged.
    let n = unsafe { libc::ppoll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, tsp, std::ptr::null()) };
    if n < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            return Ok(0);
        }
        return Err(e);
    }
    Ok(n as usize)
}

/// Keeps large buffers on the heap. glibc serves allocations of 128 KiB and
/// more with a fresh `mmap` and returns them with `munmap`, so every output
/// chunk (up to `MAX_CHUNK`, 128 KiB) would cost page faults, page zeroing
/// and a TLB flush; measured, that was a third of the agent's CPU time when
/// streaming. With these thresholds freed chunks are reused instead. The
/// heap it keeps is bounded by what the sessions' windows allow in flight.
pub fn tune_allocator() {
    // SAFETY: mallopt only changes allocator parameters; called before any
    // thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 16 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 32 << 20);
    }
}

/// Asks for a pipe buffer of `bytes` (rounded up by the kernel to a power of
/// two pages). Best effort: the limit (`/proc/sys/fs/pipe-max-size`, the
/// per-user page budget) may refuse it, and the default then stays.
pub fn grow_pipe(fd: RawFd, bytes: usize) {
    let want = bytes.min(libc::c_int::MAX as usize) as libc::c_int;
    // SAFETY: F_SETPIPE_SZ takes an int and only changes the pipe's capacity.
    unsafe {
        libc::fcntl(fd, libc::F_SETPIPE_SZ, want);
    }
}

/// Asks for a socket send buffer of `bytes` (the kernel doubles the value
/// and caps it at `net.core.wmem_max`). Best effort, like [`grow_pipe`].
pub fn grow_sndbuf(fd: RawFd, bytes: usize) {
    let v = bytes.min(libc::c_int::MAX as usize / 2) as libc::c_int;
    // SAFETY: SO_SNDBUF takes an int, passed by pointer with its size.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// Microseconds on `clock`.
pub fn clock_us(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: ts is a valid timespec.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    (ts.tv_sec as u64).saturating_mul(1_000_000) + (ts.tv_nsec as u64) / 1000
}

/// Blocks `signals` in the calling thread (and threads it creates later).
pub fn block_signals(signals: &[libc::c_int]) -> io::Result<libc::sigset_t> {
    // SAFETY: sigset operations on a local set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in signals {
            libc::sigaddset(&mut set, *s);
        }
        let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        Ok(set)
    }
}

/// A non-blocking, close-on-exec signalfd for `set`.
pub fn signalfd(set: &libc::sigset_t) -> io::Result<Fd> {
    // SAFETY: set is a valid sigset.
    let fd = check(unsafe { libc::signalfd(-1, set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC) })?;
    Ok(Fd(fd))
}

/// Drains a signalfd, returning the signal numbers read.
pub fn read_signals(fd: RawFd) -> io::Result<Vec<u32>> {
    let mut out = Vec::new();
    loop {
        // SAFETY: signalfd_siginfo is plain data.
        let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
        let size = std::mem::size_of::<libc::signalfd_siginfo>();
        // SAFETY: info is valid for size bytes.
        let n = unsafe { libc::read(fd, (&mut info as *mut libc::signalfd_siginfo).cast(), size) };
        if n < 0 {
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock => return Ok(out),
                _ => return Err(e),
            }
        }
        if (n as usize) < size {
            return Ok(out);
        }
        out.push(info.ssi_signo);
    }
}

/// Sends `sig` to `pid` (negative: a process group). Errors are returned.
pub fn kill(pid: libc::pid_t, sig: libc::c_int) -> io::Result<()> {
    // SAFETY: kill has no memory-safety preconditions.
    check(unsafe { libc::kill(pid, sig) }).map(|_| ())
}

/// A reaped child.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reaped {
    /// Its pid.
    pub pid: libc::pid_t,
    /// Raw wait status.
    pub status: libc::c_int,
}

/// Reaps every child that has ended, without blocking.
pub fn reap_all() -> Vec<Reaped> {
    let mut out = Vec::new();
    loop {
        let mut status = 0;
        // SAFETY: status is a valid int.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid > 0 {
            out.push(Reaped { pid, status });
            continue;
        }
        if pid < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
            continue;
        }
        return out;
    }
}

/// Decodes a wait status into `(exit code, signal)`.
pub fn decode_status(status: libc::c_int) -> (Option<i32>, Option<i32>) {
    if libc::WIFEXITED(status) {
        (Some(libc::WEXITSTATUS(status)), None)
    } else if libc::WIFSIGNALED(status) {
        (None, Some(libc::WTERMSIG(status)))
    } else {
        (None, None)
    }
}

/// Mounts a filesystem.
pub fn mount(source: &CStr, target: &CStr, fstype: &CStr, flags: libc::c_ulong, data: Option<&CStr>) -> io::Result<()> {
    let data_ptr = data.map(|d| d.as_ptr().cast()).unwrap_or(std::ptr::null());
    // SAFETY: all pointers are valid NUL-terminated strings or null.
    check(unsafe { libc::mount(source.as_ptr(), target.as_ptr(), fstype.as_ptr(), flags, data_ptr) }).map(|_| ())
}

/// Builds a C string, mapping an interior NUL to `InvalidInput`.
pub fn cstring(s: &str) -> io::Result<std::ffi::CString> {
    std::ffi::CString::new(s)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, format!("{s:?} contains a NUL byte")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forbid_ptrace_makes_the_process_non_dumpable() {
        // In a child, so this test process keeps its own state.
        // SAFETY: the child only makes raw system calls and _exits.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let ok = is_dumpable() && forbid_ptrace().is_ok() && !is_dumpable();
            // SAFETY: ends the child without running the test harness.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) };
        }
        let mut status = 0;
        // SAFETY: our own child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert_eq!(decode_status(status), (Some(0), None));
    }

    #[test]
    fn output_pipes_can_be_grown() {
        let (r, _w) = pipe().expect("pipe");
        grow_pipe(r.raw(), 1024 * 1024);
        // SAFETY: F_GETPIPE_SZ only reads the capacity.
        let size = unsafe { libc::fcntl(r.raw(), libc::F_GETPIPE_SZ) };
        assert_eq!(size, 1024 * 1024);
    }

    #[test]
    fn poll_waits_sub_millisecond_timeouts_without_rounding_to_zero() {
        let (r, _w) = pipe().expect("pipe");
        let mut fds = [libc::pollfd { fd: r.raw(), events: libc::POLLIN, revents: 0 }];
        let t = std::time::Instant::now();
        assert_eq!(poll(&mut fds, Some(Duration::from_micros(300))).expect("polls"), 0);
        assert!(t.elapsed() >= Duration::from_micros(300), "returned after {:?}", t.elapsed());
    }

    #[test]
    fn pipes_carry_bytes_and_report_would_block() {
        let (r, w) = pipe().expect("pipe");
        set_nonblocking(r.raw(), true).expect("nonblocking");
        let mut buf = [0u8; 8];
        let err = read(r.raw(), &mut buf).expect_err("empty pipe");
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        assert_eq!(write(w.raw(), b"abc").expect("write"), 3);
        assert_eq!(read(r.raw(), &mut buf).expect("read"), 3);
        assert_eq!(&buf[..3], b"abc");
        drop(w);
        assert_eq!(read(r.raw(), &mut buf).expect("eof"), 0);
    }

    #[test]
    fn splice_moves_exactly_what_the_pipe_holds_into_a_socket() {
        let (r, w) = pipe().expect("pipe");
        set_nonblocking(r.raw(), true).expect("nonblocking");
        let (a, b) = std::os::unix::net::UnixStream::pair().expect("socketpair");
        let payload: Vec<u8> = (0..50_000u32).map(|i| (i % 251) as u8).collect();
        assert_eq!(readable_bytes(r.raw()).expect("fionread"), 0);
        let err = splice(r.raw(), a.as_raw_fd(), 10).expect_err("empty pipe");
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        let mut sent = 0;
        while sent < payload.len() {
            sent += write(w.raw(), &payload[sent..]).expect("fills the pipe");
        }
        assert_eq!(readable_bytes(r.raw()).expect("fionread"), payload.len());
        // A duplicate reads the same pipe.
        let d = dup(r.raw()).expect("dup");
        assert_eq!(splice(d.raw(), a.as_raw_fd(), 20_000).expect("splices"), 20_000);
        assert_eq!(readable_bytes(r.raw()).expect("fionread"), payload.len() - 20_000);
        let mut moved = 20_000;
        while moved < payload.len() {
            moved += splice(r.raw(), a.as_raw_fd(), payload.len() - moved).expect("splices");
        }
        drop(a);
        let got = read_to_end(b.as_raw_fd()).expect("reads");
        assert!(got == payload, "the socket carries the pipe's bytes in order");
    }

    #[test]
    fn wait_statuses_decode() {
        // Exit code 3: status 3 << 8; killed by signal 9: status 9.
        assert_eq!(decode_status(3 << 8), (Some(3), None));
        assert_eq!(decode_status(9), (None, Some(9)));
    }
}
