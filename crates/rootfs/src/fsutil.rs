//! Small filesystem helpers: unique temp dirs, no-replace renames, tree removal and sizing,
//! advisory locks.
//!
//! Invariant: temporary directories made here are named `.tmp-<what>-<pid>-<n>` directly under
//! the rootfs store, so a dot-prefixed name is never a rootfs (names cannot start with a dot)
//! and a crashed process's leftovers can be recognised by their dead pid and pruned.

use std::collections::HashSet;
use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// Prefix of every temporary directory under the store.
pub(crate) const TMP_PREFIX: &str = ".tmp-";

/// Creates a fresh, uniquely named directory `parent/.tmp-<what>-<pid>-<n>` (mode 0700).
pub(crate) fn make_temp_dir(parent: &Path, what: &str) -> io::Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let pid = std::process::id();
    loop {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = parent.join(format!("{TMP_PREFIX}{what}-{pid}-{nanos:x}{n}"));
        match fs::DirBuilder::new().mode(0o700).create(&path) {
            Ok(()) => return Ok(path),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
}

fn cstr(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

/// Renames `from` to `to` unless `to` exists. Returns `Ok(false)` when `to` already exists.
pub(crate) fn rename_noreplace(from: &Path, to: &Path) -> io::Result<bool> {
    let f = cstr(from)?;
    let t = cstr(to)?;
    // SAFETY: both pointers are valid NUL-terminated strings for the duration of the call.
    let rc = unsafe { libc::renameat2(libc::AT_FDCWD, f.as_ptr(), libc::AT_FDCWD, t.as_ptr(), libc::RENAME_NOREPLACE) };
    if rc == 0 {
        return Ok(true);
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EEXIST) | Some(libc::ENOTEMPTY) => Ok(false),
        Some(libc::EINVAL) | Some(libc::ENOSYS) => {
            // The filesystem does not support RENAME_NOREPLACE: a plain rename of a directory
            // onto a non-empty directory still fails, so only an empty target could be lost.
            if fs::symlink_metadata(to).is_ok() {
                return Ok(false);
            }
            match fs::rename(from, to) {
                Ok(()) => Ok(true),
                Err(e) if matches!(e.raw_os_error(), Some(libc::EEXIST | libc::ENOTEMPTY)) => Ok(false),
                Err(e) => Err(e),
            }
        }
        _ => Err(err),
    }
}

/// Removes a tree without following symlinks. Directories without write permission (possible
/// when not root) are made writable first. A missing path is not an error.
pub(crate) fn remove_tree(path: &Path) -> io::Result<()> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if !meta.is_dir() {
        return fs::remove_file(path);
    }
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(first) => {
            make_dirs_writable(path);
            match fs::remove_dir_all(path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(_) => Err(first),
            }
        }
    }
}

fn make_dirs_writable(dir: &Path) {
    let Ok(meta) = fs::symlink_metadata(dir) else {
        return;
    };
    if !meta.is_dir() {
        return;
    }
    let mode = meta.permissions().mode();
    if mode & 0o700 != 0o700 {
        let _ = fs::set_permissions(dir, fs::Permissions::from_mode(mode | 0o700));
    }
    if let Ok(rd) = fs::read_dir(dir) {
        for entry in rd.flatten() {
            if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                make_dirs_writable(&entry.path());
            }
        }
    }
}

/// Apparent size in bytes of every regular file and symlink under `root`, counting each
/// hard-linked inode once. Symlinks are never followed.
pub(crate) fn tree_size(root: &Path) -> io::Result<u64> {
    let mut seen = HashSet::new();
    let mut total = 0u64;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir)? {
            let entry = entry?;
            let meta = entry.metadata()?; // does not traverse symlinks
            if meta.is_dir() {
                stack.push(entry.path());
            } else if meta.nlink() > 1 && !seen.insert((meta.dev(), meta.ino())) {
                continue;
            } else {
                total = total.saturating_add(meta.len());
            }
        }
    }
    Ok(total)
}

/// An exclusive advisory lock on a file, released on drop.
pub(crate) struct FileLock {
    _file: fs::File,
}

impl FileLock {
    /// Opens (creating if needed) `path` and blocks until an exclusive `flock` is held.
    pub(crate) fn acquire(path: &Path) -> io::Result<FileLock> {
        use std::os::fd::AsRawFd;
        let file = fs::OpenOptions::new().create(true).truncate(false).write(true).open(path)?;
        loop {
            // SAFETY: flock on a valid, owned file descriptor.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
            if rc == 0 {
                return Ok(FileLock { _file: file });
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        }
    }
}

/// True when the effective user is root.
pub(crate) fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn pid_alive(pid: i32) -> bool {
    if pid <= 0 {
        return true;
    }
    // SAFETY: signal 0 only checks for existence and permission.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

/// Removes temporary directories under `store` left by processes that no longer exist.
/// Best effort: errors are ignored.
pub(crate) fn prune_stale_temps(store: &Path) {
    let Ok(rd) = fs::read_dir(store) else {
        return;
    };
    for entry in rd.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(rest) = name.strip_prefix(TMP_PREFIX) else {
            continue;
        };
        // rest = <what>-<pid>-<n>
        let mut parts = rest.rsplitn(3, '-');
        let _n = parts.next();
        let Some(pid) = parts.next().and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        if !pid_alive(pid) {
            let _ = remove_tree(&entry.path());
        }
    }
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}
