//! The task's root filesystem: the mounts containerd's snapshotter hands
//! over in Create (an `overlay`, or a `bind` of a prepared directory),
//! mounted on the bundle's root directory; and their removal.
//!
//! Invariants:
//! - Only the mount types a snapshotter produces are accepted (`overlay`,
//!   `bind`); anything else fails Create with its type named.
//! - [`mount_all`] leaves nothing mounted when it fails: what it mounted
//!   before the failure is unmounted again.
//! - [`unmount_all`] removes every mount stacked on the target and
//!   succeeds when none is left (so a second call, or one after a crash,
//!   is harmless).

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// One mount of the rootfs as containerd describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RootfsMount {
    /// `overlay` or `bind`.
    pub kind: String,
    /// Its source.
    pub source: String,
    /// fstab-style options (`ro`, `rbind`, `lowerdir=…`).
    pub options: Vec<String>,
}

/// Why the rootfs could not be mounted or unmounted.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// The mount's type is not one a snapshotter produces.
    #[error("rootfs mount of type {0:?} is not supported (overlay or bind)")]
    UnsupportedType(String),
    /// A path or option holds a NUL byte.
    #[error("rootfs mount: {0} holds a NUL byte")]
    Nul(&'static str),
    /// mount(2) or umount(2) failed.
    #[error("{op} {target}: {source}")]
    Sys {
        /// What was attempted.
        op: &'static str,
        /// Where.
        target: String,
        /// The error.
        source: std::io::Error,
    },
}

/// mount(2) flags and the data string of `options`.
#[derive(Debug, PartialEq, Eq)]
pub struct Parsed {
    /// MS_* flags.
    pub flags: libc::c_ulong,
    /// The options that are not flags, comma-joined (the file system's own).
    pub data: String,
}

/// Splits fstab-style options into mount(2) flags and file-system data.
pub fn parse_options(kind: &str, options: &[String]) -> Parsed {
    let mut flags: libc::c_ulong = if kind == "bind" { libc::MS_BIND } else { 0 };
    let mut data = Vec::new();
    for o in options {
        match o.as_str() {
            "ro" => flags |= libc::MS_RDONLY,
            "rw" => flags &= !libc::MS_RDONLY,
            "bind" => flags |= libc::MS_BIND,
            "rbind" => flags |= libc::MS_BIND | libc::MS_REC,
            "nosuid" => flags |= libc::MS_NOSUID,
            "nodev" => flags |= libc::MS_NODEV,
            "noexec" => flags |= libc::MS_NOEXEC,
            "noatime" => flags |= libc::MS_NOATIME,
            "relatime" => flags |= libc::MS_RELATIME,
            "sync" => flags |= libc::MS_SYNCHRONOUS,
            other => data.push(other),
        }
    }
    Parsed { flags, data: data.join(",") }
}

fn cstring(path: &Path, what: &'static str) -> Result<CString, MountError> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| MountError::Nul(what))
}

/// Mounts `mounts` in order on `target`.
pub fn mount_all(mounts: &[RootfsMount], target: &Path) -> Result<(), MountError> {
    for m in mounts {
        if !matches!(m.kind.as_str(), "overlay" | "bind") {
            return Err(MountError::UnsupportedType(m.kind.clone()));
        }
    }
    for (done, m) in mounts.iter().enumerate() {
        if let Err(e) = mount_one(m, target) {
            for _ in 0..done {
                let _ = unmount_once(target);
            }
            return Err(e);
        }
    }
    Ok(())
}

fn mount_one(m: &RootfsMount, target: &Path) -> Result<(), MountError> {
    let parsed = parse_options(&m.kind, &m.options);
    let source = cstring(Path::new(&m.source), "the source")?;
    let target_c = cstring(target, "the target")?;
    let kind = CString::new(m.kind.as_str()).map_err(|_| MountError::Nul("the type"))?;
    let data = CString::new(parsed.data).map_err(|_| MountError::Nul("an option"))?;
    let sys =
        |op| MountError::Sys { op, target: target.display().to_string(), source: std::io::Error::last_os_error() };
    // SAFETY: every pointer is a NUL-terminated string that outlives the call.
    let rc =
        unsafe { libc::mount(source.as_ptr(), target_c.as_ptr(), kind.as_ptr(), parsed.flags, data.as_ptr().cast()) };
    if rc != 0 {
        return Err(sys("mount"));
    }
    // A read-only bind needs a remount to take the flag (mount(2)).
    if parsed.flags & libc::MS_BIND != 0 && parsed.flags & libc::MS_RDONLY != 0 {
        let flags = parsed.flags | libc::MS_REMOUNT;
        // SAFETY: as above; source and type are ignored for a remount.
        let rc = unsafe { libc::mount(std::ptr::null(), target_c.as_ptr(), std::ptr::null(), flags, std::ptr::null()) };
        if rc != 0 {
            let e = sys("remount read-only");
            let _ = unmount_once(target);
            return Err(e);
        }
    }
    Ok(())
}

/// Unmounts one mount from `target`; Ok(false) when nothing is mounted there.
fn unmount_once(target: &Path) -> Result<bool, MountError> {
    let target_c = cstring(target, "the target")?;
    // SAFETY: a NUL-terminated path.
    let rc = unsafe { libc::umount2(target_c.as_ptr(), libc::MNT_DETACH) };
    if rc == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        // Not a mount point (EINVAL) or gone (ENOENT): nothing left.
        Some(libc::EINVAL) | Some(libc::ENOENT) => Ok(false),
        _ => Err(MountError::Sys { op: "unmount", target: target.display().to_string(), source: e }),
    }
}

/// Unmounts everything stacked on `target`.
pub fn unmount_all(target: &Path) -> Result<(), MountError> {
    // Bounded: a target cannot have more mounts stacked than this shim made
    // plus what a crashed predecessor left; 64 is far above either.
    for _ in 0..64 {
        if !unmount_once(target)? {
            return Ok(());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn overlay_options_are_data_and_flags_are_flags() {
        let p = parse_options("overlay", &opts(&["index=off", "workdir=/w", "upperdir=/u", "lowerdir=/l1:/l2", "ro"]));
        assert_eq!(p.flags, libc::MS_RDONLY);
        assert_eq!(p.data, "index=off,workdir=/w,upperdir=/u,lowerdir=/l1:/l2");
    }

    #[test]
    fn a_bind_is_a_bind_and_rbind_is_recursive() {
        assert_eq!(parse_options("bind", &opts(&["rw"])).flags, libc::MS_BIND);
        let p = parse_options("none", &opts(&["rbind", "nosuid"]));
        assert_eq!(p.flags, libc::MS_BIND | libc::MS_REC | libc::MS_NOSUID);
        assert_eq!(p.data, "");
    }

    #[test]
    fn other_types_are_refused_before_anything_is_mounted() {
        let dir = tempfile::tempdir().expect("temp dir");
        let m = RootfsMount { kind: "nfs".into(), source: "host:/x".into(), options: vec![] };
        let e = mount_all(&[m], dir.path()).expect_err("refused");
        assert_eq!(e.to_string(), "rootfs mount of type \"nfs\" is not supported (overlay or bind)");
    }

    #[test]
    fn unmounting_a_plain_directory_is_a_no_op() {
        let dir = tempfile::tempdir().expect("temp dir");
        unmount_all(dir.path()).expect("nothing to unmount");
    }
}
