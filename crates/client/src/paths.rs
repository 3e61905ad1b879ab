//! Where sandboxes' sockets are, as the client sees them: the paths come
//! from [`alcove_layout`] (re-exported here with client errors), the trust
//! checks before connecting are the client's own.
//!
//! Invariants:
//! - Socket paths and the runtime directory's creation are
//!   [`alcove_layout::Layout`]'s (see its invariants: fixed-length names,
//!   `sun_path` fits, 0700, another user's directory refused).
//! - A socket is trusted only in a directory owned by the caller or root
//!   that gives group and others no access ([`check_socket_dir`]).

use crate::ClientError;
pub use alcove_layout::{alcove_home, runtime_dir, MAX_NAME_LEN, MAX_RUNTIME_DIR_LEN, SUN_PATH_LEN};
use alcove_layout::{Layout, LayoutError};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Creates [`runtime_dir`] (and its parents) if needed, sets it to mode 0700
/// and returns it ([`Layout::ensure_runtime_dir`]).
pub fn ensure_runtime_dir() -> Result<PathBuf, ClientError> {
    let layout = Layout::from_env();
    layout.ensure_runtime_dir().map_err(untrusted_as_socket_dir)?;
    Ok(layout.runtime_dir().to_path_buf())
}

/// Creates `dir` with mode 0700, or takes an existing one of the caller's
/// (see [`alcove_layout::ensure_private_dir`]).
pub fn ensure_dir(dir: &Path) -> Result<(), ClientError> {
    alcove_layout::ensure_private_dir(dir).map_err(untrusted_as_socket_dir)
}

/// A runtime directory the caller may not trust is the client's
/// [`ClientError::UntrustedSocketDir`], whichever side found it.
fn untrusted_as_socket_dir(e: LayoutError) -> ClientError {
    match e {
        LayoutError::UntrustedRuntimeDir { dir, reason } => ClientError::UntrustedSocketDir { dir, reason },
        other => ClientError::Layout(other),
    }
}

fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Checks that `dir`, the directory of a socket about to be trusted, is
/// owned by the caller or root and gives group and others no access, so no
/// other user can have put or swapped the socket in it. A missing directory
/// is `Ok(false)` (nothing listens there).
pub fn check_socket_dir(dir: &Path) -> Result<bool, ClientError> {
    let untrusted = |reason: String| ClientError::UntrustedSocketDir { dir: dir.to_path_buf(), reason };
    let meta = match std::fs::metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(untrusted(format!("cannot inspect it: {e}"))),
    };
    if !meta.is_dir() {
        return Err(untrusted("it is not a directory".into()));
    }
    let owner = meta.uid();
    if owner != euid() && owner != 0 {
        return Err(untrusted(format!("it belongs to uid {owner}")));
    }
    if meta.mode() & 0o077 != 0 {
        return Err(untrusted(format!("its mode {:o} lets other users in", meta.mode() & 0o7777)));
    }
    Ok(true)
}

/// Whether a peer of uid `uid` may be trusted as a sandbox: the caller
/// itself or root.
pub fn trusted_peer(uid: u32) -> bool {
    uid == euid() || uid == 0
}

/// Checks a sandbox name: `[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}`.
pub fn validate_name(name: &str) -> Result<(), ClientError> {
    Ok(alcove_layout::validate_name(name)?)
}

/// The socket of sandbox `name` of the alcove home `home`, in [`runtime_dir`].
pub fn socket_path(home: &Path, name: &str) -> Result<PathBuf, ClientError> {
    Ok(Layout::new(home).socket(name)?)
}

/// The socket of sandbox `name` of the alcove home `home`, in `runtime_dir`.
/// The result is always shorter than [`SUN_PATH_LEN`].
pub fn socket_path_in(runtime_dir: &Path, home: &Path, name: &str) -> Result<PathBuf, ClientError> {
    Ok(Layout::with_runtime_dir(home, runtime_dir).socket(name)?)
}
