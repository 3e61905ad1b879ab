//! Bounded, rotating log files, and a pump that moves a pipe into one.
//!
//! The guest writes its log (the agent's stderr in a jail, the console in a
//! VM) and the guest is hostile: it must not be able to fill the host's
//! disk. So the guest never holds a host file descriptor: it writes into a
//! pipe, and a host thread ([`LogPump`]) copies the pipe into a
//! [`BoundedLog`]. The same writer bounds the sandbox process's own
//! `runtime.log`.
//!
//! Invariants of [`BoundedLog`]:
//! - the current file never grows beyond [`LogLimits::max_file_bytes`]: a
//!   write that would cross the bound is cut there, the file is rotated
//!   (`NAME` → `NAME.1` → … → `NAME.<kept_files>`, the oldest dropped) and
//!   the rest goes to a fresh `NAME`. At most `max_file_bytes × (kept_files +
//!   1)` bytes are on disk per log.
//! - files are created owner-only (0600) whatever the umask, and opened
//!   without following a symlink;
//! - an existing `NAME` is appended to (a restarted sandbox keeps its log),
//!   its size counting towards the bound.
//!
//! [`LogPump`] reads until every writer has closed the pipe. When the log
//! cannot be written (disk full) what it reads is dropped, so a stalled log
//! never blocks the guest; one warning says so.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

/// Size bounds of one log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogLimits {
    /// Largest size of the current file, in bytes (at least 1).
    pub max_file_bytes: u64,
    /// Rotated files kept beside it (`NAME.1` is the newest).
    pub kept_files: u32,
}

/// `guest.log`: 8 MiB per file, three rotated files (32 MiB at most).
pub const GUEST_LOG_LIMITS: LogLimits = LogLimits { max_file_bytes: 8 << 20, kept_files: 3 };

/// `runtime.log`: 8 MiB per file, three rotated files (32 MiB at most).
pub const RUNTIME_LOG_LIMITS: LogLimits = LogLimits { max_file_bytes: 8 << 20, kept_files: 3 };

/// A log file that rotates by size (see the module invariants).
#[derive(Debug)]
pub struct BoundedLog {
    path: PathBuf,
    limits: LogLimits,
    file: File,
    size: u64,
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).mode(0o600).custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC).open(path)
}

fn rotated(path: &Path, n: u32) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

impl BoundedLog {
    /// Opens (or creates, 0600) the log at `path` for appending.
    pub fn open(path: &Path, limits: LogLimits) -> io::Result<BoundedLog> {
        let limits = LogLimits { max_file_bytes: limits.max_file_bytes.max(1), ..limits };
        let file = open_append(path)?;
        let size = file.metadata()?.len();
        Ok(BoundedLog { path: path.to_path_buf(), limits, file, size })
    }

    /// The current file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn rotate(&mut self) -> io::Result<()> {
        if self.limits.kept_files == 0 {
            self.file.set_len(0)?;
            self.size = 0;
            return Ok(());
        }
        for n in (1..self.limits.kept_files).rev() {
            match fs::rename(rotated(&self.path, n), rotated(&self.path, n + 1)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        fs::rename(&self.path, rotated(&self.path, 1))?;
        self.file = open_append(&self.path)?;
        self.size = self.file.metadata()?.len();
        Ok(())
    }
}

impl Write for BoundedLog {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.size >= self.limits.max_file_bytes {
            self.rotate()?;
        }
        let room = self.limits.max_file_bytes.saturating_sub(self.size).max(1);
        let take = buf.len().min(usize::try_from(room).unwrap_or(usize::MAX));
        let n = self.file.write(&buf[..take])?;
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// The thread moving a pipe into a [`BoundedLog`].
#[derive(Debug)]
pub struct LogPump {
    done: mpsc::Receiver<()>,
}

impl LogPump {
    /// Starts a thread named `name` that copies everything read from
    /// `pipe` (a read end) into `log`, until end of file.
    pub fn spawn(name: &str, pipe: OwnedFd, mut log: BoundedLog) -> io::Result<LogPump> {
        let (tx, done) = mpsc::channel();
        let mut pipe = File::from(pipe);
        std::thread::Builder::new().name(name.to_string()).spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            let mut failed = false;
            loop {
                let n = match pipe.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        tracing::warn!(error = %e, log = %log.path().display(), "reading the guest log pipe failed");
                        break;
                    }
                };
                if let Err(e) = log.write_all(&buf[..n]) {
                    if !failed {
                        tracing::warn!(error = %e, log = %log.path().display(), "cannot write the log; dropping its output");
                        failed = true;
                    }
                }
            }
            let _ = tx.send(());
        })?;
        Ok(LogPump { done })
    }

    /// Waits up to `within` for the pump to reach end of file (every writer
    /// gone, everything written). Returns whether it did.
    pub fn finish(self, within: Duration) -> bool {
        // A dropped sender (the thread panicked) also ends the wait.
        !matches!(self.done.recv_timeout(within), Err(mpsc::RecvTimeoutError::Timeout))
    }
}

/// A pipe whose write end goes to a writer the host does not trust, and
/// whose read end is pumped into the bounded log at `path`: the write end
/// (close-on-exec; dup it where it must survive an exec) and the pump.
pub fn log_pipe(path: &Path, limits: LogLimits) -> io::Result<(OwnedFd, LogPump)> {
    let log = BoundedLog::open(path, limits)?;
    let (read, write) = std::io::pipe()?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let pump = LogPump::spawn(&format!("alcove-log-{name}"), OwnedFd::from(read), log)?;
    Ok((OwnedFd::from(write), pump))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn sizes(dir: &Path) -> Vec<(String, u64)> {
        let mut v: Vec<(String, u64)> = fs::read_dir(dir)
            .expect("dir")
            .map(|e| {
                let e = e.expect("entry");
                (e.file_name().to_string_lossy().into_owned(), e.metadata().expect("md").len())
            })
            .collect();
        v.sort();
        v
    }

    #[test]
    fn a_log_rotates_by_size_and_keeps_a_bounded_number_of_files() {
        let d = tempfile::tempdir().expect("tempdir");
        let path = d.path().join("guest.log");
        let limits = LogLimits { max_file_bytes: 100, kept_files: 2 };
        let mut log = BoundedLog::open(&path, limits).expect("open");
        for i in 0..50u8 {
            log.write_all(&[b'a' + (i % 26); 30]).expect("write");
        }
        // 1500 bytes written: the current file and two rotated ones, all
        // within the bound, the newest content in the current file.
        assert_eq!(
            sizes(d.path()),
            vec![("guest.log".into(), 100), ("guest.log.1".into(), 100), ("guest.log.2".into(), 100)]
        );
        let current = fs::read(&path).expect("read");
        assert_eq!(&current[current.len() - 30..], &[b'a' + (49 % 26); 30]);
        // A single write larger than the bound is split, never kept whole.
        log.write_all(&[b'z'; 250]).expect("write");
        assert!(sizes(d.path()).iter().all(|(_, n)| *n <= 100), "{:?}", sizes(d.path()));
        assert_eq!(sizes(d.path()).len(), 3);
    }

    #[test]
    fn logs_are_private_appended_and_never_followed() {
        let d = tempfile::tempdir().expect("tempdir");
        // SAFETY: umask has no preconditions; the test restores it.
        let old = unsafe { libc::umask(0) };
        let path = d.path().join("runtime.log");
        let limits = LogLimits { max_file_bytes: 10, kept_files: 1 };
        let mut log = BoundedLog::open(&path, limits).expect("open");
        log.write_all(b"0123456789abc").expect("write");
        // SAFETY: as above.
        unsafe { libc::umask(old) };
        for (name, _) in sizes(d.path()) {
            let mode = fs::metadata(d.path().join(&name)).expect("md").permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{name}");
        }
        drop(log);
        let mut again = BoundedLog::open(&path, limits).expect("reopen");
        again.write_all(b"de").expect("write");
        assert_eq!(fs::read(&path).expect("read"), b"abcde", "appended");

        let target = d.path().join("elsewhere");
        fs::write(&target, b"").expect("write");
        let link = d.path().join("linked.log");
        std::os::unix::fs::symlink(&target, &link).expect("symlink");
        assert!(BoundedLog::open(&link, limits).is_err(), "a symlink is not followed");
    }

    #[test]
    fn a_pump_bounds_what_a_writer_pours_into_its_pipe() {
        let d = tempfile::tempdir().expect("tempdir");
        let path = d.path().join("guest.log");
        let limits = LogLimits { max_file_bytes: 64 * 1024, kept_files: 1 };
        let (write_end, pump) = log_pipe(&path, limits).expect("pipe");
        let mut w = File::from(write_end);
        let chunk = vec![b'x'; 32 * 1024];
        for _ in 0..64 {
            w.write_all(&chunk).expect("the writer is never blocked for good");
        }
        w.write_all(b"last line\n").expect("write");
        drop(w);
        assert!(pump.finish(Duration::from_secs(20)), "the pump reaches end of file");
        let total: u64 = sizes(d.path()).iter().map(|(_, n)| n).sum();
        assert!(total <= 2 * 64 * 1024, "2 MiB written, {total} bytes kept");
        assert!(fs::read(&path).expect("read").ends_with(b"last line\n"));
    }
}
