//! agent.sock on disk: created private (0600 in a 0700 directory of this
//! user), removed at the end.

use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Why agent.sock could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// The socket's directory is unusable.
    #[error("socket directory {path} is unusable: {reason}")]
    SocketDir {
        /// The directory.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Binding failed.
    #[error("cannot listen on {path}: {source}")]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
}

/// Creates agent.sock: the directory 0700 (created if missing, refused if
/// another user owns it), the socket 0600. A stale socket file is replaced.
pub fn bind_socket(path: &Path) -> Result<std::os::unix::net::UnixListener, RelayError> {
    let dir = path.parent().ok_or_else(|| RelayError::SocketDir {
        path: path.to_path_buf(),
        reason: "the socket path has no directory".into(),
    })?;
    let dir_err = |reason: String| RelayError::SocketDir { path: dir.to_path_buf(), reason };
    if !dir.exists() {
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(|e| dir_err(e.to_string()))?;
    }
    let meta = std::fs::metadata(dir).map_err(|e| dir_err(e.to_string()))?;
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    if meta.uid() != euid {
        return Err(dir_err(format!("it is owned by uid {}, not by this user", meta.uid())));
    }
    if meta.mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(|e| dir_err(e.to_string()))?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(source) => return Err(RelayError::Bind { path: path.to_path_buf(), source }),
    }
    let listener = std::os::unix::net::UnixListener::bind(path)
        .map_err(|source| RelayError::Bind { path: path.to_path_buf(), source })?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|source| RelayError::Bind { path: path.to_path_buf(), source })?;
    listener.set_nonblocking(true).map_err(|source| RelayError::Bind { path: path.to_path_buf(), source })?;
    Ok(listener)
}

/// Removes agent.sock (a missing file is fine).
pub fn remove_socket(path: &Path) {
    if let Err(e) = std::fs::remove_file(path) {
        if e.kind() != io::ErrorKind::NotFound {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove agent.sock");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_is_private() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("run/x.sock");
        let _l = bind_socket(&path).expect("binds");
        let mode = std::fs::metadata(&path).expect("socket").mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dmode = std::fs::metadata(path.parent().expect("dir")).expect("dir").mode() & 0o777;
        assert_eq!(dmode, 0o700);
        // A stale socket is replaced.
        let _l2 = bind_socket(&path).expect("rebinds");
    }
}
