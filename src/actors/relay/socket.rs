//! agent.sock on disk: bound 0600 in a directory the caller has already made
//! private ([`crate::sandbox::bind_agent_socket`]); removed at the end by
//! [`crate::run_end::finish`].

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Why agent.sock could not be bound.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// Binding failed.
    #[error("cannot listen on {path}: {source}")]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
}

/// Creates agent.sock 0600, replacing a stale socket file.
pub fn bind_socket(path: &Path) -> Result<std::os::unix::net::UnixListener, RelayError> {
    let bind_err = |source: io::Error| RelayError::Bind { path: path.to_path_buf(), source };
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(source) => return Err(bind_err(source)),
    }
    let listener = std::os::unix::net::UnixListener::bind(path).map_err(bind_err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(bind_err)?;
    listener.set_nonblocking(true).map_err(bind_err)?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn the_socket_is_private_and_a_stale_one_is_replaced() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("x.sock");
        let first = bind_socket(&path).expect("binds");
        assert_eq!(std::fs::metadata(&path).expect("socket").mode() & 0o777, 0o600);
        drop(first);
        let _second = bind_socket(&path).expect("rebinds over the stale file");
    }
}
