//! Where alcove keeps things: the one owner of every path under
//! `$ALCOVE_HOME` and of the runtime directory that holds sandbox sockets.
//! The runtime (sandbox process), the CLI and the client library all ask
//! [`Layout`]; nobody joins these paths by hand.
//!
//! ```text
//! $ALCOVE_HOME/                  (0700)
//!   alcove.db                    the records (alcove-store)
//!   bin/                         the installed guest agent
//!   lib/                         libkrunfw installed on first use (alcove-hostprobe)
//!   rootfs/                      root filesystems (alcove-rootfs)
//!   sandboxes/NAME/              (0700) one per sandbox
//!     config.json  cli.json  lock
//!     logs/                      (0700) runtime.log, runtime.stderr, guest.log, ...
//! <runtime dir>/                 (0700) <16 hex digits>.sock per sandbox
//! ```
//!
//! Invariants:
//! - A socket path is `<runtime dir>/<16 hex digits>.sock`, the digits being a
//!   64-bit FNV-1a hash of the canonical `$ALCOVE_HOME` and the sandbox name,
//!   so its length does not depend on the name and two homes never share a
//!   socket for the same name.
//! - A runtime directory so long that the socket path would not fit in
//!   `sun_path` (108 bytes including the NUL) is refused, so every socket
//!   path returned can be bound and connected.
//! - The runtime directory is created 0700 in one place
//!   ([`Layout::ensure_runtime_dir`]) and only used when it is a directory
//!   owned by the caller; one of another user (e.g. a pre-created
//!   `/tmp/alcove-UID`) is refused, never chmod-ed or trusted.
//! - Every sandbox path is built from a valid name ([`validate_name`]), so
//!   none leaves `sandboxes/`.
#![warn(missing_docs)]

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

/// Why a path cannot be given or a directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    /// Not a valid sandbox name.
    #[error("invalid sandbox name {name:?}: {reason}")]
    InvalidName {
        /// The refused name.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Socket paths in this runtime directory would not fit in `sun_path`.
    #[error("runtime directory {dir} is {len} bytes long; socket paths need it to be at most {max} bytes (set ALCOVE_RUNTIME_DIR to a shorter path)")]
    RuntimeDirTooLong {
        /// The directory.
        dir: PathBuf,
        /// Its length in bytes.
        len: usize,
        /// The longest accepted length.
        max: usize,
    },
    /// The runtime directory could not be created or secured.
    #[error("cannot prepare runtime directory {dir}: {source}")]
    RuntimeDir {
        /// The directory.
        dir: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The runtime directory could let another user plant or replace a
    /// socket: it must be the caller's, with mode 0700.
    #[error("refusing the socket directory {}: {reason} (it must be owned by you with mode 0700; remove it, or set ALCOVE_RUNTIME_DIR to a directory of yours)", dir.display())]
    UntrustedRuntimeDir {
        /// The directory.
        dir: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

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
/// `/tmp/alcove-<uid>`. It may not exist yet.
pub fn runtime_dir() -> PathBuf {
    if let Some(dir) = env_path("ALCOVE_RUNTIME_DIR") {
        return dir;
    }
    let uid = euid();
    if uid == 0 {
        return PathBuf::from("/run/alcove");
    }
    if let Some(xdg) = env_path("XDG_RUNTIME_DIR") {
        return xdg.join("alcove");
    }
    PathBuf::from(format!("/tmp/alcove-{uid}"))
}

fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Checks a sandbox name: `[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}`.
pub fn validate_name(name: &str) -> Result<(), LayoutError> {
    let bad = |reason| Err(LayoutError::InvalidName { name: name.to_string(), reason });
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

/// The places of one alcove installation: a home and a runtime directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    home: PathBuf,
    runtime: PathBuf,
}

impl Layout {
    /// The installation of this process's environment ([`alcove_home`],
    /// [`runtime_dir`]).
    pub fn from_env() -> Layout {
        Layout::new(alcove_home())
    }

    /// The installation at `home`, with the environment's runtime directory.
    pub fn new(home: impl Into<PathBuf>) -> Layout {
        Layout { home: home.into(), runtime: runtime_dir() }
    }

    /// The installation at `home` with its sockets in `runtime`.
    pub fn with_runtime_dir(home: impl Into<PathBuf>, runtime: impl Into<PathBuf>) -> Layout {
        Layout { home: home.into(), runtime: runtime.into() }
    }

    /// `$ALCOVE_HOME`.
    pub fn home(&self) -> &Path {
        &self.home
    }

    /// Creates the home (0700) if needed, and makes this layout use its
    /// canonical path (sockets are named after it).
    pub fn ensure_home(self) -> Result<Layout, std::io::Error> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.home)
            .map_err(|e| std::io::Error::new(e.kind(), format!("cannot create {}: {e}", self.home.display())))?;
        let home = std::fs::canonicalize(&self.home).unwrap_or(self.home);
        Ok(Layout { home, runtime: self.runtime })
    }

    /// The database.
    pub fn db(&self) -> PathBuf {
        self.home.join("alcove.db")
    }

    /// Where the guest agent is installed.
    pub fn bin_dir(&self) -> PathBuf {
        self.home.join("bin")
    }

    /// Where libkrunfw is installed on first use.
    pub fn lib_dir(&self) -> PathBuf {
        self.home.join("lib")
    }

    /// `sandboxes/NAME`.
    pub fn sandbox_dir(&self, name: &str) -> PathBuf {
        self.home.join("sandboxes").join(name)
    }

    /// `sandboxes/NAME/config.json`, the sandbox's configuration (0600).
    pub fn config_file(&self, name: &str) -> PathBuf {
        self.sandbox_dir(name).join("config.json")
    }

    /// `sandboxes/NAME/cli.json`, what only the CLI keeps of a sandbox.
    pub fn cli_meta_file(&self, name: &str) -> PathBuf {
        self.sandbox_dir(name).join("cli.json")
    }

    /// `sandboxes/NAME/lock`, held by the sandbox process for its life.
    pub fn lock_file(&self, name: &str) -> PathBuf {
        self.sandbox_dir(name).join("lock")
    }

    /// `sandboxes/NAME/logs`.
    pub fn log_dir(&self, name: &str) -> PathBuf {
        self.sandbox_dir(name).join("logs")
    }

    /// `sandboxes/NAME/logs/FILE` (e.g. [`GUEST_LOG`]).
    pub fn log_file(&self, name: &str, file: &str) -> PathBuf {
        self.log_dir(name).join(file)
    }

    /// The runtime directory.
    pub fn runtime_dir(&self) -> &Path {
        &self.runtime
    }

    /// The socket of sandbox `name` in the runtime directory. The result is
    /// always shorter than [`SUN_PATH_LEN`].
    pub fn socket(&self, name: &str) -> Result<PathBuf, LayoutError> {
        validate_name(name)?;
        check_runtime_dir_len(&self.runtime)?;
        let home = canonical(&self.home);
        let mut hash = Fnv1a::new();
        hash.write(home.as_os_str().as_encoded_bytes());
        // A separator that cannot appear in a path keeps (home, name) pairs apart.
        hash.write(&[0]);
        hash.write(name.as_bytes());
        Ok(self.runtime.join(format!("{:016x}.sock", hash.finish())))
    }

    /// Creates the runtime directory (and its parents) with mode 0700, or
    /// takes an existing one of the caller's, tightening it to 0700. A
    /// symlink, a directory of another user, or one too long for socket
    /// paths is refused. The only place it is created.
    pub fn ensure_runtime_dir(&self) -> Result<(), LayoutError> {
        ensure_private_dir(&self.runtime)
    }
}

/// `logs/guest.log`: what the guest wrote to its console.
pub const GUEST_LOG: &str = "guest.log";
/// `logs/runtime.log`: the sandbox process's own log.
pub const RUNTIME_LOG: &str = "runtime.log";
/// `logs/runtime.stderr`: the sandbox process's stderr (panics).
pub const RUNTIME_STDERR: &str = "runtime.stderr";

/// Creates `dir` with mode 0700 (missing parents too), or takes an existing
/// one of the caller's, tightening it to 0700 (see
/// [`Layout::ensure_runtime_dir`]).
pub fn ensure_private_dir(dir: &Path) -> Result<(), LayoutError> {
    check_runtime_dir_len(dir)?;
    let err = |source| LayoutError::RuntimeDir { dir: dir.to_path_buf(), source };
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(err)?;
    let meta = std::fs::symlink_metadata(dir).map_err(err)?;
    let untrusted = |reason: String| LayoutError::UntrustedRuntimeDir { dir: dir.to_path_buf(), reason };
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

fn check_runtime_dir_len(dir: &Path) -> Result<(), LayoutError> {
    let len = dir.as_os_str().len();
    if len > MAX_RUNTIME_DIR_LEN {
        return Err(LayoutError::RuntimeDirTooLong { dir: dir.to_path_buf(), len, max: MAX_RUNTIME_DIR_LEN });
    }
    Ok(())
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

    #[test]
    fn every_sandbox_path_is_under_its_directory() {
        let l = Layout::with_runtime_dir("/h", "/r");
        assert_eq!(l.db(), Path::new("/h/alcove.db"));
        assert_eq!(l.bin_dir(), Path::new("/h/bin"));
        assert_eq!(l.lib_dir(), Path::new("/h/lib"));
        assert_eq!(l.config_file("s"), Path::new("/h/sandboxes/s/config.json"));
        assert_eq!(l.cli_meta_file("s"), Path::new("/h/sandboxes/s/cli.json"));
        assert_eq!(l.lock_file("s"), Path::new("/h/sandboxes/s/lock"));
        assert_eq!(l.log_file("s", GUEST_LOG), Path::new("/h/sandboxes/s/logs/guest.log"));
        let sock = l.socket("s").expect("socket");
        assert_eq!(sock.parent(), Some(Path::new("/r")));
        assert_eq!(sock.file_name().map(|n| n.len()), Some(SOCKET_FILE_LEN));
        // Another home, another socket for the same name.
        assert_ne!(Layout::with_runtime_dir("/h2", "/r").socket("s").expect("socket"), sock);
        assert!(matches!(l.socket("../x"), Err(LayoutError::InvalidName { .. })));
    }

    #[test]
    fn the_runtime_dir_is_created_private_and_a_long_one_refused() {
        let d = tempfile::tempdir().expect("tempdir");
        let rt = d.path().join("a/b");
        let l = Layout::with_runtime_dir(d.path(), &rt);
        l.ensure_runtime_dir().expect("created");
        assert_eq!(std::fs::metadata(&rt).expect("md").mode() & 0o7777, 0o700);
        std::fs::set_permissions(&rt, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        l.ensure_runtime_dir().expect("tightened");
        assert_eq!(std::fs::metadata(&rt).expect("md").mode() & 0o7777, 0o700);
        let long = Layout::with_runtime_dir(d.path(), d.path().join("x".repeat(MAX_RUNTIME_DIR_LEN)));
        assert!(matches!(long.ensure_runtime_dir(), Err(LayoutError::RuntimeDirTooLong { .. })));
        assert!(matches!(long.socket("s"), Err(LayoutError::RuntimeDirTooLong { .. })));
    }
}
