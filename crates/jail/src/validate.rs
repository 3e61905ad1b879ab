//! Validation of a [`GuestSpec`] before anything is created: every check
//! is a one-line [`BackendError::InvalidConfig`].

use crate::cgroup::Limits;
use crate::limits::DEFAULT_PIDS_LIMIT;
use alcove_backend::{BackendError, GuestSpec};
use std::ffi::CString;
use std::fs;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Most volumes a jail takes (their mounts travel in one `SCM_RIGHTS`
/// message of at most 253 descriptors).
pub const MAX_VOLUMES: usize = 200;

fn invalid(msg: impl Into<String>) -> BackendError {
    BackendError::InvalidConfig(msg.into())
}

/// A volume that passed validation.
pub(crate) struct Volume {
    /// Canonical host path.
    pub host: PathBuf,
    /// Normalised absolute guest path.
    pub guest: String,
    pub is_dir: bool,
    pub readonly: bool,
    /// Skipped, not a failure, when its mount point cannot be made (alcove's
    /// own name files in a rootless jail whose /etc the caller cannot write).
    pub optional: bool,
}

/// A spec that passed validation, with paths resolved.
pub(crate) struct Checked {
    /// Lower layers of the overlay, top-most first (today: the rootfs).
    pub lowers: Vec<PathBuf>,
    pub agent: PathBuf,
    pub volumes: Vec<Volume>,
    pub limits: Limits,
    /// The spec gave a cgroup limit (which must then be applied).
    pub limits_asked: bool,
}

fn host_cpus() -> u32 {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    if n < 1 {
        1
    } else {
        n as u32
    }
}

pub(crate) fn overlay_safe(what: &str, p: &Path) -> Result<(), BackendError> {
    let s = p.as_os_str().as_bytes();
    if s.iter().any(|b| matches!(b, b',' | b':' | b'\\' | b'\n' | 0)) {
        return Err(invalid(format!(
            "{what} path {} contains ',', ':' or '\\', which overlayfs options cannot carry",
            p.display()
        )));
    }
    Ok(())
}

/// Whether `name` may be a jail's hostname (`--hostname`): 1 to 64 bytes
/// (the kernel's limit), dot-separated labels of letters, digits and `-`
/// that neither start nor end with `-` (RFC 1123). The error is one line.
pub fn check_hostname(name: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("hostname {name:?} {why}"));
    if name.is_empty() || name.len() > 64 {
        return bad("must be 1 to 64 bytes long");
    }
    for label in name.split('.') {
        if label.is_empty() {
            return bad("has an empty label");
        }
        if !label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return bad("may contain only letters, digits, '-' and '.'");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return bad("has a label that starts or ends with '-'");
        }
    }
    Ok(())
}

pub(crate) fn validate(spec: &GuestSpec) -> Result<Checked, BackendError> {
    let name = &spec.name;
    if name.is_empty() || name.len() > 64 {
        return Err(invalid(format!("sandbox name {name:?} must be 1 to 64 bytes long (it becomes the hostname)")));
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')) {
        return Err(invalid(format!("sandbox name {name:?} may contain only letters, digits, '-', '_' and '.'")));
    }
    if spec.sandbox_dir.as_os_str().is_empty() {
        return Err(invalid("the sandbox directory is not set"));
    }
    if spec.guest_log.as_os_str().is_empty() {
        return Err(invalid("the guest log path is not set"));
    }
    let rootfs = spec.rootfs.as_ref().ok_or_else(|| invalid("the jail backend needs a root filesystem directory"))?;
    let meta = fs::metadata(rootfs).map_err(|e| invalid(format!("rootfs {} is not usable: {e}", rootfs.display())))?;
    if !meta.is_dir() {
        return Err(invalid(format!("rootfs {} is not a directory", rootfs.display())));
    }
    let rootfs = fs::canonicalize(rootfs).map_err(|e| invalid(format!("rootfs {}: {e}", rootfs.display())))?;
    overlay_safe("rootfs", &rootfs)?;
    overlay_safe("sandbox directory", &spec.sandbox_dir)?;

    let agent = spec.agent_binary.as_ref().ok_or_else(|| invalid("no agent binary given"))?;
    let meta =
        fs::metadata(agent).map_err(|e| invalid(format!("agent binary {} is not usable: {e}", agent.display())))?;
    if !meta.is_file() {
        return Err(invalid(format!("agent binary {} is not a regular file", agent.display())));
    }
    if meta.permissions().mode() & 0o111 == 0 {
        return Err(invalid(format!("agent binary {} is not executable", agent.display())));
    }
    let agent = fs::canonicalize(agent).map_err(|e| invalid(format!("agent binary {}: {e}", agent.display())))?;

    let mut volumes = Vec::new();
    for m in &spec.mounts {
        let guest = m.guest.as_str();
        if !guest.starts_with('/') {
            return Err(invalid(format!("mount guest path {guest:?} is not absolute")));
        }
        if guest.split('/').any(|c| c == ".." || c == ".") || guest.contains('\0') {
            return Err(invalid(format!("mount guest path {guest:?} must not contain '.' or '..' components")));
        }
        let norm = guest.trim_end_matches('/');
        if norm.is_empty() {
            return Err(invalid("a mount cannot replace the guest's root directory"));
        }
        for reserved in ["/proc", "/sys", "/dev", "/.alcove"] {
            if norm == reserved || norm.starts_with(&format!("{reserved}/")) {
                return Err(invalid(format!("mount guest path {guest:?} is under {reserved}, which the jail manages")));
            }
        }
        let meta = fs::metadata(&m.host)
            .map_err(|e| invalid(format!("mount host path {} is not usable: {e}", m.host.display())))?;
        let host =
            fs::canonicalize(&m.host).map_err(|e| invalid(format!("mount host path {}: {e}", m.host.display())))?;
        volumes.push(Volume {
            host,
            guest: norm.to_string(),
            is_dir: meta.is_dir(),
            readonly: m.readonly,
            optional: false,
        });
    }

    if volumes.len() > MAX_VOLUMES {
        return Err(invalid(format!("{} volumes are more than the {MAX_VOLUMES} a jail can take", volumes.len())));
    }
    crate::limits::validate_values(spec)?;
    let memory_bytes = spec.memory_mib.map(|m| m * 1024 * 1024);
    let cpus = match spec.cpus {
        None => None,
        Some(0) => return Err(invalid("cpus must be at least 1")),
        Some(c) if c > host_cpus() => {
            return Err(invalid(format!("cpus {c} exceeds the {} CPUs of this host", host_cpus())))
        }
        Some(c) => Some(c),
    };
    let limits_asked = spec.memory_mib.is_some() || spec.cpus.is_some() || spec.pids_limit.is_some();
    let pids = spec.pids_limit.unwrap_or(DEFAULT_PIDS_LIMIT);
    Ok(Checked {
        lowers: vec![rootfs],
        agent,
        volumes,
        limits: Limits { memory_bytes, cpus, pids: Some(pids) },
        limits_asked,
    })
}
pub(crate) fn cstring(what: &str, bytes: &[u8]) -> Result<CString, BackendError> {
    CString::new(bytes).map_err(|_| invalid(format!("{what} contains a NUL byte")))
}

pub(crate) fn pipe() -> Result<(OwnedFd, OwnedFd), BackendError> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two fds into the array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(BackendError::io("creating a pipe", std::io::Error::last_os_error()));
    }
    // SAFETY: both fds are fresh and owned by us.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Guest-path prefixes of `guest` (a normalised absolute path), outermost
/// first, excluding `guest` itself.
pub(crate) fn parents(guest: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut acc = String::new();
    let parts: Vec<&str> = guest.split('/').filter(|c| !c.is_empty()).collect();
    for part in parts.iter().take(parts.len().saturating_sub(1)) {
        acc.push('/');
        acc.push_str(part);
        out.push(acc.clone());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostnames_follow_rfc_1123() {
        for good in ["web", "web-1", "a.b.c", "X9", &"a".repeat(63)] {
            assert_eq!(check_hostname(good), Ok(()), "{good}");
        }
        for (bad, why) in [
            ("", "1 to 64 bytes"),
            (&"a".repeat(65), "1 to 64 bytes"),
            ("a..b", "empty label"),
            (".a", "empty label"),
            ("-a", "starts or ends"),
            ("a-", "starts or ends"),
            ("a_b", "only letters"),
            ("a b", "only letters"),
        ] {
            let err = check_hostname(bad).expect_err(bad);
            assert!(err.contains(why) && !err.contains('\n'), "{bad}: {err}");
        }
    }

    #[test]
    fn parents_of_guest_paths() {
        assert_eq!(parents("/a/b/c"), ["/a", "/a/b"]);
        assert!(parents("/a").is_empty());
    }
}
