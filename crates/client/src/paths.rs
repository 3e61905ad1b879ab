//! Where sandboxes live and where their sockets are.
//!
//! Invariants:
//! - A socket path is `<runtime dir>/<16 hex digits>.sock`, the digits being a
//!   64-bit FNV-1a hash of the canonical `$ALCOVE_HOME` and the sandbox name,
//!   so its length does not depend on the name and two homes never share a
//!   socket for the same name.
//! - [`socket_path`] refuses a runtime directory so long that the socket path
//!   would not fit in `sun_path` (108 bytes including the NUL), so every
//!   returned path can be bound and connected.
//! - The runtime directory is created with mode 0700, and only used when it
//!   is a directory owned by the caller (or root) that gives group and
//!   others no access ([`check_socket_dir`]); a directory pre-created by
//!   another user (e.g. `/tmp/alcove-UID`) is refused, never chmod-ed or
//!   trusted.

use crate::ClientError;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Size of `sun_path` in `struct sockaddr_un` on Linux, NUL included.
pub const SUN_PATH_LEN: usize = 108;

/// Bytes of the socket file name: 16 hex digits and `.sock`.
const SOCKET_FILE_LEN: usize = 16 + ".sock".len();

/// Longest runtime directory (in bytes) that leaves room for `/<file>` and the
/// terminating NUL in `sun_path`.
pub const MAX_RUNTIME_DIR_LEN: usize = SUN_PATH_LEN - 1 - 1 - SOCKET_FILE_LEN;

/// Longest valid sandbox name.
pub const MAX_NAME_LEN: usize = 63;

fn env_path(var: &str) -> Option<PathBuf> {
    std::env::var_os(var).filter(|v| !v.is_empty()).map(PathBuf::from)
}

/// alcove's home: `$ALCOVE_HOME`, else `~/.alcove`.
pub fn alcove_home() -> PathBuf {
    if let Some(home) = env_path("ALCOVE_HOME") {
        return home;
    }
    #[allow(deprecated)]
    let user_home = env_path("HOME").or_else(std::env::home_dir).unwrap_or_else(|| PathBuf::from("/"));
    user_home.join(".alcove")
}

/// The directory holding sandbox sockets: `$ALCOVE_RUNTIME_DIR`, else
/// `/run/alcove` for root, else `$XDG_RUNTIME_DIR/alcove`, else
/// `/tmp/alcove-<uid>`. It may not exist yet; see [`ensure_runtime_dir`].
pub fn runtime_dir() -> PathBuf {
    if let Some(dir) = env_path("ALCOVE_RUNTIME_DIR") {
        return dir;
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let uid = unsafe { libc::geteuid() };
    if uid == 0 {
        return PathBuf::from("/run/alcove");
    }
    if let Some(xdg) = env_path("XDG_RUNTIME_DIR") {
        return xdg.join("alcove");
    }
    PathBuf::from(format!("/tmp/alcove-{uid}"))
}

/// Creates [`runtime_dir`] (and its parents) if needed, sets it to mode 0700
/// and returns it. Refuses a directory too long for socket paths.
pub fn ensure_runtime_dir() -> Result<PathBuf, ClientError> {
    let dir = runtime_dir();
    ensure_dir(&dir)?;
    Ok(dir)
}

/// Creates `dir` with mode 0700 (missing parents too), or takes an existing
/// one of the caller's, tightening it to 0700. A symlink, or a directory of
/// another user, is refused ([`ClientError::UntrustedSocketDir`]).
pub fn ensure_dir(dir: &Path) -> Result<(), ClientError> {
    check_runtime_dir_len(dir)?;
    let err = |source| ClientError::RuntimeDir { dir: dir.to_path_buf(), source };
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(err)?;
    let meta = std::fs::symlink_metadata(dir).map_err(err)?;
    let untrusted = |reason: String| ClientError::UntrustedSocketDir { dir: dir.to_path_buf(), reason };
    if !meta.is_dir() {
        return Err(untrusted("it is not a directory (a symlink is not followed)".into()));
    }
    if meta.uid() != euid() {
        return Err(untrusted(format!("it belongs to uid {}", meta.uid())));
    }
    if meta.mode() & 0o7777 != 0o700 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(err)?;
    }
    Ok(())
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

fn check_runtime_dir_len(dir: &Path) -> Result<(), ClientError> {
    let len = dir.as_os_str().len();
    if len > MAX_RUNTIME_DIR_LEN {
        return Err(ClientError::RuntimeDirTooLong { dir: dir.to_path_buf(), len, max: MAX_RUNTIME_DIR_LEN });
    }
    Ok(())
}

/// Checks a sandbox name: `[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}`.
pub fn validate_name(name: &str) -> Result<(), ClientError> {
    let bad = |reason| Err(ClientError::InvalidName { name: name.to_string(), reason });
    let Some(first) = name.chars().next() else {
        return bad("it is empty");
    };
    if name.len() > MAX_NAME_LEN {
        return bad("it is longer than 63 characters");
    }
    if !first.is_ascii_alphanumeric() {
        return bad("it must start with a letter or a digit");
    }
    if !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')) {
        return bad("only letters, digits, '_', '.' and '-' are allowed");
    }
    Ok(())
}

/// The socket of sandbox `name` of the alcove home `home`, in [`runtime_dir`].
pub fn socket_path(home: &Path, name: &str) -> Result<PathBuf, ClientError> {
    socket_path_in(&runtime_dir(), home, name)
}

/// The socket of sandbox `name` of the alcove home `home`, in `runtime_dir`.
/// The result is always shorter than [`SUN_PATH_LEN`].
pub fn socket_path_in(runtime_dir: &Path, home: &Path, name: &str) -> Result<PathBuf, ClientError> {
    validate_name(name)?;
    check_runtime_dir_len(runtime_dir)?;
    let home = canonical(home);
    let mut hash = Fnv1a::new();
    hash.write(home.as_os_str().as_encoded_bytes());
    // A separator that cannot appear in a path keeps (home, name) pairs apart.
    hash.write(&[0]);
    hash.write(name.as_bytes());
    Ok(runtime_dir.join(format!("{:016x}.sock", hash.finish())))
}

/// The canonical form of `p`, or its absolute form when it does not exist.
fn canonical(p: &Path) -> PathBuf {
    if let Ok(c) = std::fs::canonicalize(p) {
        return c;
    }
    if p.is_absolute() {
        return p.to_path_buf();
    }
    std::env::current_dir().map(|cwd| cwd.join(p)).unwrap_or_else(|_| p.to_path_buf())
}

/// 64-bit FNV-1a.
struct Fnv1a(u64);

impl Fnv1a {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;

    fn new() -> Fnv1a {
        Fnv1a(Self::OFFSET)
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(Self::PRIME);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv_matches_reference_vectors() {
        let h = |s: &[u8]| {
            let mut f = Fnv1a::new();
            f.write(s);
            f.finish()
        };
        assert_eq!(h(b""), 0xcbf29ce484222325);
        assert_eq!(h(b"a"), 0xaf63dc4c8601ec8c);
        assert_eq!(h(b"foobar"), 0x85944171f73967e8);
    }

    #[test]
    fn names_are_validated() {
        for ok in ["a", "Z9", "0", "my-box_1.2", &"x".repeat(63)] {
            assert!(validate_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-a", ".a", "_a", "a b", "a/b", "é", &"x".repeat(64), "a\0"] {
            let err = validate_name(bad).expect_err(bad);
            assert!(err.to_string().starts_with(&format!("invalid sandbox name {bad:?}: ")), "{err}");
        }
    }
}
