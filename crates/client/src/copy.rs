//! Copying a guest file or tree out to the host, beneath one host directory.
//!
//! Everything the guest says about the tree (names, kinds, modes, symlink
//! targets) is hostile input, and the host side runs with the caller's
//! privileges (often root). Invariants:
//! - Every name that came from the guest is checked by [`check_entry_name`]
//!   before it touches the host: one non-empty path component, not `.` or
//!   `..`, without `/` or NUL. Anything else stops the copy with
//!   [`ClientError::UnsafeName`].
//! - Host-side work is done relative to directory descriptors, one validated
//!   component at a time, and never follows a symlink: directories are
//!   opened with `O_NOFOLLOW | O_DIRECTORY`, new files are created with
//!   `O_CREAT | O_EXCL` under a private temporary name and renamed over the
//!   destination name, symlinks are created the same way. An existing
//!   symlink where a directory or file goes is replaced, never followed; an
//!   existing regular file is never turned into a directory.
//! - Modes are applied with `fchmod` on descriptors this module opened, and
//!   only the permission bits (`0o777`): set-uid, set-gid and sticky bits
//!   chosen by the guest are cleared. New files and directories are owner-only
//!   until their final mode is applied.
//! - The first component (the destination directory the caller names) is
//!   resolved as the caller gives it; only what lies beneath it is guarded.

use crate::{Client, ClientError};
use alcove_protocol::FileKind;
use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Deepest tree copied out (each level holds one open directory).
pub const MAX_COPY_DEPTH: usize = 256;

/// What a [`Client::copy_out`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CopyReport {
    /// Regular files written.
    pub files: u64,
    /// Directories created or reused.
    pub dirs: u64,
    /// Symlinks created.
    pub symlinks: u64,
    /// Bytes of file content written.
    pub bytes: u64,
    /// Guest paths skipped: neither a regular file, a directory nor a
    /// symlink (devices, sockets, fifos).
    pub skipped: Vec<String>,
}

/// Why a name is not a single path component.
fn unsafe_reason(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("it is empty")
    } else if name == "." || name == ".." {
        Some("it names a directory itself")
    } else if name.contains('/') {
        Some("it contains '/'")
    } else if name.contains('\0') {
        Some("it contains a NUL byte")
    } else {
        None
    }
}

/// Checks that `name` (from the guest) is exactly one non-empty path
/// component: not `.` or `..`, no `/`, no NUL. `dir` is the guest directory
/// it was listed in, for the message.
pub fn check_entry_name(dir: &str, name: &str) -> Result<(), ClientError> {
    match unsafe_reason(name) {
        None => Ok(()),
        Some(reason) => Err(ClientError::UnsafeName { dir: dir.to_string(), name: name.to_string(), reason }),
    }
}

fn join_guest(dir: &str, name: &str) -> String {
    format!("{}/{name}", dir.trim_end_matches('/'))
}

impl Client {
    /// Copies the guest path `guest` (a file, a symlink or a whole tree) to
    /// the host as `dest_dir/name`. `dest_dir` must be an existing host
    /// directory; nothing is created, changed or followed outside
    /// `dest_dir/name` (see the module invariants). An existing
    /// `dest_dir/name` is replaced when it is a file or a symlink, and merged
    /// into when both are directories.
    pub async fn copy_out(&self, guest: &str, dest_dir: &Path, name: &str) -> Result<CopyReport, ClientError> {
        check_entry_name(guest, name)?;
        let dir = HostDir::open(dest_dir).map_err(|e| ClientError::host("open directory", dest_dir, e))?;
        let st = self.stat(guest).await?;
        let mut report = CopyReport::default();
        let entry = Entry { guest: guest.to_string(), kind: st.kind, mode: st.mode, link: st.link_target };
        self.copy_entry(&dir, name, entry, 0, &mut report).await?;
        Ok(report)
    }

    async fn copy_entry(
        &self,
        dir: &HostDir,
        name: &str,
        entry: Entry,
        depth: usize,
        report: &mut CopyReport,
    ) -> Result<(), ClientError> {
        let cname = CString::new(name).map_err(|_| ClientError::UnsafeName {
            dir: entry.guest.clone(),
            name: name.to_string(),
            reason: "it contains a NUL byte",
        })?;
        let host_path = dir.path.join(name);
        let host = |what: &'static str| move |e: io::Error| ClientError::host(what, &dir.path.join(name), e);
        match entry.kind {
            FileKind::Dir => {
                if depth >= MAX_COPY_DEPTH {
                    return Err(ClientError::TooDeep { path: entry.guest, max: MAX_COPY_DEPTH });
                }
                let sub = dir.directory(&cname).map_err(host("create directory"))?;
                for child in self.list(&entry.guest).await? {
                    check_entry_name(&entry.guest, &child.name)?;
                    let next = Entry {
                        guest: join_guest(&entry.guest, &child.name),
                        kind: child.stat.kind,
                        mode: child.stat.mode,
                        link: child.stat.link_target,
                    };
                    Box::pin(self.copy_entry(&sub, &child.name, next, depth + 1, report)).await?;
                }
                sub.chmod(entry.mode).map_err(|e| ClientError::host("chmod", &host_path, e))?;
                report.dirs += 1;
            }
            FileKind::File => {
                let (tmp, file) = dir.temp_file().map_err(host("create"))?;
                let mut file = tokio::fs::File::from_std(file);
                let copied = self.read_file_to(&entry.guest, &mut file).await;
                let file = file.into_std().await;
                let finished = copied.and_then(|bytes| {
                    fchmod(file.as_raw_fd(), entry.mode).map_err(|e| ClientError::host("chmod", &host_path, e))?;
                    drop(file);
                    dir.commit(&tmp, &cname).map_err(|e| ClientError::host("write", &host_path, e))?;
                    Ok(bytes)
                });
                match finished {
                    Ok(bytes) => {
                        report.files += 1;
                        report.bytes += bytes;
                    }
                    Err(e) => {
                        dir.remove_temp(&tmp);
                        return Err(e);
                    }
                }
            }
            FileKind::Symlink => {
                let target = entry
                    .link
                    .ok_or_else(|| ClientError::Unexpected(format!("{}: a symlink without a target", entry.guest)))?;
                let target = CString::new(target).map_err(|_| ClientError::UnsafeName {
                    dir: entry.guest.clone(),
                    name: name.to_string(),
                    reason: "its symlink target contains a NUL byte",
                })?;
                dir.symlink(&target, &cname).map_err(host("create symlink"))?;
                report.symlinks += 1;
            }
            FileKind::Other => report.skipped.push(entry.guest),
        }
        Ok(())
    }
}

/// One guest path to copy, with what its listing said about it.
struct Entry {
    guest: String,
    kind: FileKind,
    mode: u32,
    link: Option<String>,
}

/// What is at a name in a host directory (not following a symlink).
#[derive(Debug, PartialEq, Eq)]
enum Existing {
    Dir,
    Symlink,
    Other,
}

/// An open host directory; every operation is relative to it and takes one
/// component that was already checked.
struct HostDir {
    fd: OwnedFd,
    /// For messages only, never for access.
    path: PathBuf,
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

fn cvt(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn fchmod(fd: libc::c_int, mode: u32) -> io::Result<()> {
    // Permission bits only: no set-uid, set-gid or sticky bit from the guest.
    // SAFETY: fchmod on a descriptor this module owns.
    cvt(unsafe { libc::fchmod(fd, (mode & 0o777) as libc::mode_t) }).map(drop)
}

impl HostDir {
    /// Opens the caller's destination directory (resolved as given).
    fn open(path: &Path) -> io::Result<HostDir> {
        let c = CString::new(path.as_os_str().as_encoded_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "the path contains a NUL byte"))?;
        // SAFETY: a NUL-terminated path; the result is checked.
        let fd = cvt(unsafe { libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC) })?;
        // SAFETY: a fresh descriptor we own.
        Ok(HostDir { fd: unsafe { OwnedFd::from_raw_fd(fd) }, path: path.to_path_buf() })
    }

    fn existing(&self, name: &CStr) -> io::Result<Option<Existing>> {
        // SAFETY: zeroed stat is a valid out-buffer.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: a valid dirfd, NUL-terminated name and out-pointer.
        let rc = unsafe { libc::fstatat(self.fd.as_raw_fd(), name.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            return if e.raw_os_error() == Some(libc::ENOENT) { Ok(None) } else { Err(e) };
        }
        Ok(Some(match st.st_mode & libc::S_IFMT {
            libc::S_IFDIR => Existing::Dir,
            libc::S_IFLNK => Existing::Symlink,
            _ => Existing::Other,
        }))
    }

    fn open_dir_nofollow(&self, name: &CStr) -> io::Result<HostDir> {
        let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
        // SAFETY: a valid dirfd and NUL-terminated name.
        let fd = cvt(unsafe { libc::openat(self.fd.as_raw_fd(), name.as_ptr(), flags) })?;
        let path = self.path.join(String::from_utf8_lossy(name.to_bytes()).as_ref());
        // SAFETY: a fresh descriptor we own.
        Ok(HostDir { fd: unsafe { OwnedFd::from_raw_fd(fd) }, path })
    }

    /// A real directory at `name`: reused if there is one, created (0700
    /// until its final mode) if not, replacing a symlink. A regular file is
    /// not replaced.
    fn directory(&self, name: &CStr) -> io::Result<HostDir> {
        match self.existing(name)? {
            Some(Existing::Dir) => return self.open_dir_nofollow(name),
            Some(Existing::Symlink) => {
                // SAFETY: a valid dirfd and NUL-terminated name; removes the link itself.
                cvt(unsafe { libc::unlinkat(self.fd.as_raw_fd(), name.as_ptr(), 0) })?;
            }
            Some(Existing::Other) => {
                return Err(io::Error::new(io::ErrorKind::AlreadyExists, "it exists and is not a directory"))
            }
            None => {}
        }
        // SAFETY: a valid dirfd and NUL-terminated name.
        match cvt(unsafe { libc::mkdirat(self.fd.as_raw_fd(), name.as_ptr(), 0o700) }) {
            Ok(_) => {}
            // Made meanwhile: O_NOFOLLOW below refuses anything but a directory.
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
            Err(e) => return Err(e),
        }
        self.open_dir_nofollow(name)
    }

    fn temp_name() -> CString {
        let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        CString::new(format!(".alcove-cp-{}-{n}", std::process::id())).expect("no NUL")
    }

    /// A new owner-only file under a temporary name (never an existing one).
    fn temp_file(&self) -> io::Result<(CString, std::fs::File)> {
        let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC;
        loop {
            let tmp = Self::temp_name();
            // SAFETY: a valid dirfd and NUL-terminated name; O_EXCL never follows.
            match cvt(unsafe { libc::openat(self.fd.as_raw_fd(), tmp.as_ptr(), flags, 0o600 as libc::c_uint) }) {
                // SAFETY: a fresh descriptor we own.
                Ok(fd) => return Ok((tmp, unsafe { std::fs::File::from_raw_fd(fd) })),
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Renames the temporary entry over `name` (replacing a file or a
    /// symlink, refusing a directory).
    fn commit(&self, tmp: &CStr, name: &CStr) -> io::Result<()> {
        let fd = self.fd.as_raw_fd();
        if self.existing(name)? == Some(Existing::Dir) {
            self.remove_temp(tmp);
            return Err(io::Error::new(io::ErrorKind::AlreadyExists, "a directory is in the way"));
        }
        // SAFETY: valid dirfds and NUL-terminated names; rename replaces the
        // entry itself, whatever it is, and follows nothing.
        cvt(unsafe { libc::renameat(fd, tmp.as_ptr(), fd, name.as_ptr()) }).map(drop).inspect_err(|_| {
            self.remove_temp(tmp);
        })
    }

    fn remove_temp(&self, tmp: &CStr) {
        // SAFETY: a valid dirfd and NUL-terminated name.
        unsafe { libc::unlinkat(self.fd.as_raw_fd(), tmp.as_ptr(), 0) };
    }

    /// A symlink `name → target`, replacing a file or symlink there.
    fn symlink(&self, target: &CStr, name: &CStr) -> io::Result<()> {
        loop {
            let tmp = Self::temp_name();
            // SAFETY: NUL-terminated strings and a valid dirfd.
            match cvt(unsafe { libc::symlinkat(target.as_ptr(), self.fd.as_raw_fd(), tmp.as_ptr()) }) {
                Ok(_) => return self.commit(&tmp, name),
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => continue,
                Err(e) => return Err(e),
            }
        }
    }

    fn chmod(&self, mode: u32) -> io::Result<()> {
        fchmod(self.fd.as_raw_fd(), mode)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_single_components_are_names() {
        for ok in ["a", "a.b", "..a", "a..", ".hidden", "é", " "] {
            check_entry_name("/d", ok).expect(ok);
        }
        for bad in ["", ".", "..", "../x", "/abs", "a/b", "a/", "a\0b"] {
            let err = check_entry_name("/d", bad).expect_err(bad);
            assert!(matches!(&err, ClientError::UnsafeName { name, .. } if name == bad), "{err:?}");
            let text = err.to_string();
            assert!(text.contains("/d") && !text.contains('\n'), "{text}");
        }
    }

    #[test]
    fn host_side_replaces_symlinks_and_never_follows_them() {
        let d = tempfile::tempdir().expect("tempdir");
        let outside = tempfile::tempdir().expect("tempdir");
        std::os::unix::fs::symlink(outside.path(), d.path().join("l")).expect("symlink");
        std::os::unix::fs::symlink(outside.path().join("f"), d.path().join("f")).expect("symlink");
        std::fs::write(d.path().join("plain"), b"x").expect("write");
        let dir = HostDir::open(d.path()).expect("open");
        let sub = dir.directory(c"l").expect("directory replaces the symlink");
        assert!(std::fs::symlink_metadata(d.path().join("l")).expect("l").is_dir());
        let (tmp, file) = sub.temp_file().expect("temp");
        drop(file);
        sub.commit(&tmp, c"inner").expect("commit");
        let (tmp, file) = dir.temp_file().expect("temp");
        drop(file);
        dir.commit(&tmp, c"f").expect("a file replaces the symlink");
        assert!(std::fs::symlink_metadata(d.path().join("f")).expect("f").is_file());
        assert_eq!(std::fs::read_dir(outside.path()).expect("outside").count(), 0, "nothing written outside");
        let e = dir.directory(c"plain").err().expect("a file is not made a directory");
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        let (tmp, file) = dir.temp_file().expect("temp");
        drop(file);
        assert!(dir.commit(&tmp, c"l").is_err(), "a directory is not replaced by a file");
        // No temporary entry is left behind.
        let names: Vec<String> = std::fs::read_dir(d.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().all(|n| !n.starts_with(".alcove-cp-")), "{names:?}");
    }
}
