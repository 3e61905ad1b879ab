//! Limits: their defaults, their bounds, and the pre-flight [`check`] that a
//! limit asked for can be applied on this host before anything is created.
//!
//! Invariants:
//! - a limit given in the [`GuestSpec`] is applied or the jail is not
//!   started (one-line [`BackendError::InvalidConfig`]); only defaults are
//!   left out where the host cannot enforce them (a rootless caller without
//!   a delegated cgroup), which [`fill_defaults`] decides up front so the
//!   sandbox's configuration shows what holds;
//! - [`check`] creates nothing.

use crate::cgroup::{self, Controller};
use crate::{is_root, JailOptions, UserNamespace};
use alcove_backend::{BackendError, GuestSpec};
use std::path::{Path, PathBuf};

/// Memory limit given to a sandbox that asks for none, MiB.
pub const DEFAULT_MEMORY_MIB: u64 = 1024;
/// Process limit used when the spec sets none.
pub const DEFAULT_PIDS_LIMIT: u64 = 4096;
/// Size of /dev/shm when the spec sets none, MiB.
pub const DEFAULT_SHM_MIB: u64 = 64;
/// /tmp without a memory limit, MiB (with one, half of it).
pub const DEFAULT_TMP_MIB: u64 = DEFAULT_MEMORY_MIB / 2;
/// Smallest memory limit accepted, MiB.
pub const MIN_MEMORY_MIB: u64 = 16;
/// Smallest process limit accepted.
pub const MIN_PIDS_LIMIT: u64 = 8;
/// Smallest writable-layer limit accepted, MiB (an ext4 image smaller
/// than this holds little beyond its own metadata).
pub const MIN_DISK_MIB: u64 = 16;
/// Largest size accepted for /tmp, /dev/shm and the disk, MiB (16 TiB).
pub const MAX_SIZE_MIB: u64 = 16 << 20;

fn invalid(msg: impl Into<String>) -> BackendError {
    BackendError::InvalidConfig(msg.into())
}

/// The size of /tmp: the spec's, else half the memory limit, else
/// [`DEFAULT_TMP_MIB`]. Files in /tmp are memory, charged to the jail's
/// cgroup, so a sized /tmp fails with ENOSPC before it can OOM the jail.
pub fn tmp_mib(spec: &GuestSpec) -> u64 {
    spec.tmp_mib.unwrap_or_else(|| spec.memory_mib.map_or(DEFAULT_TMP_MIB, |m| (m / 2).max(1)))
}

/// The size of /dev/shm: the spec's, else [`DEFAULT_SHM_MIB`].
pub fn shm_mib(spec: &GuestSpec) -> u64 {
    spec.shm_mib.unwrap_or(DEFAULT_SHM_MIB)
}

/// Which cgroup limits this process can apply to a jail.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Enforceable {
    /// Memory limit.
    pub memory: bool,
    /// CPU quota.
    pub cpus: bool,
    /// Process limit.
    pub pids: bool,
}

/// What this host lets a jail with `options` enforce: a controller must be
/// mounted and, for a caller that is not root, its cgroup directory
/// writable (a delegated cgroup).
pub fn enforceable(options: &JailOptions) -> Enforceable {
    let Ok(list) = cgroup::hierarchies() else { return Enforceable::default() };
    let usable = |c: Controller| match cgroup::hierarchy_for(&list, c) {
        None => false,
        Some(_) if is_root() => true,
        Some(h) => writable(&cgroup::parent_dir(h, options.cgroup_parent.as_deref())),
    };
    Enforceable { memory: usable(Controller::Memory), cpus: usable(Controller::Cpu), pids: usable(Controller::Pids) }
}

/// The nearest existing directory at or above `dir` is writable.
fn writable(dir: &Path) -> bool {
    let mut probe: Option<&Path> = Some(dir);
    while let Some(d) = probe {
        if d.exists() {
            let Ok(c) = std::ffi::CString::new(d.as_os_str().as_encoded_bytes()) else { return false };
            // SAFETY: access with a valid path.
            return unsafe { libc::access(c.as_ptr(), libc::W_OK) } == 0;
        }
        probe = d.parent();
    }
    false
}

/// Fills in the defaults this host can enforce: memory
/// ([`DEFAULT_MEMORY_MIB`]) and pids ([`DEFAULT_PIDS_LIMIT`]) where a
/// cgroup can hold them, /dev/shm and /tmp sizes always.
pub fn fill_defaults(spec: &mut GuestSpec, options: &JailOptions) {
    let can = enforceable(options);
    if spec.memory_mib.is_none() && can.memory {
        spec.memory_mib = Some(DEFAULT_MEMORY_MIB);
    }
    if spec.pids_limit.is_none() && can.pids {
        spec.pids_limit = Some(DEFAULT_PIDS_LIMIT);
    }
    spec.shm_mib = Some(shm_mib(spec));
    spec.tmp_mib = Some(tmp_mib(spec));
}

/// Bounds of each limit the spec gives (no host access).
pub fn validate_values(spec: &GuestSpec) -> Result<(), BackendError> {
    match spec.memory_mib {
        Some(m) if m < MIN_MEMORY_MIB => {
            return Err(invalid(format!("memory limit {m} MiB is below the minimum of {MIN_MEMORY_MIB} MiB")))
        }
        Some(m) if m > (1 << 30) => return Err(invalid(format!("memory limit {m} MiB is not a sane value"))),
        _ => {}
    }
    match spec.pids_limit {
        Some(p) if p < MIN_PIDS_LIMIT => {
            return Err(invalid(format!("pids limit {p} is below the minimum of {MIN_PIDS_LIMIT}")))
        }
        Some(p) if p > 4_194_304 => return Err(invalid(format!("pids limit {p} is not a sane value"))),
        _ => {}
    }
    for (what, value) in [("/tmp", spec.tmp_mib), ("/dev/shm", spec.shm_mib)] {
        match value {
            Some(0) => return Err(invalid(format!("the size of {what} must be at least 1 MiB"))),
            Some(v) if v > MAX_SIZE_MIB => return Err(invalid(format!("the size of {what} ({v} MiB) is not sane"))),
            _ => {}
        }
    }
    match spec.disk_mib {
        Some(d) if d < MIN_DISK_MIB => {
            Err(invalid(format!("disk limit {d} MiB is below the minimum of {MIN_DISK_MIB} MiB")))
        }
        Some(d) if d > MAX_SIZE_MIB => Err(invalid(format!("disk limit {d} MiB is not a sane value"))),
        _ => Ok(()),
    }
}

/// Pre-flight: every limit `spec` asks for can be applied by a jail with
/// `options` on this host. Creates nothing; the CLI runs it before it
/// records a sandbox, the backend again at launch.
pub fn check(spec: &GuestSpec, options: &JailOptions) -> Result<(), BackendError> {
    validate_values(spec)?;
    let can = enforceable(options);
    let who = if is_root() {
        "this host has no".to_string()
    } else {
        // SAFETY: getuid has no preconditions.
        format!("uid {} has no delegated cgroup with a writable", unsafe { libc::getuid() })
    };
    for (asked, ok, name, flag) in [
        (spec.memory_mib.is_some(), can.memory, "memory", "--memory"),
        (spec.cpus.is_some(), can.cpus, "cpu", "--cpus"),
        (spec.pids_limit.is_some(), can.pids, "pids", "--pids"),
    ] {
        if asked && !ok {
            return Err(invalid(format!("{flag} cannot be applied: {who} {name} cgroup controller")));
        }
    }
    if spec.disk_mib.is_some() {
        disk_supported(options).map_err(|why| invalid(format!("--disk cannot be applied: {why}")))?;
    }
    Ok(())
}

/// Whether a disk limit can be applied: a sparse ext4 image on a loop
/// device, which needs root, the loop driver and `mkfs.ext4`.
pub fn disk_supported(options: &JailOptions) -> Result<(), String> {
    if !is_root() || options.user_namespace == UserNamespace::Caller {
        return Err("a disk limit needs alcove to run as root (it mounts a per-sandbox filesystem image)".into());
    }
    if !Path::new("/dev/loop-control").exists() {
        return Err("/dev/loop-control is missing (the loop driver is not loaded)".into());
    }
    if mkfs_ext4().is_none() {
        return Err("mkfs.ext4 was not found (install e2fsprogs)".into());
    }
    Ok(())
}

/// `mkfs.ext4` on `PATH` or in the sbin directories.
pub(crate) fn mkfs_ext4() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].iter().map(PathBuf::from))
        .map(|d| d.join("mkfs.ext4"))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_default_from_the_memory_limit() {
        let mut spec = GuestSpec::default();
        assert_eq!(tmp_mib(&spec), DEFAULT_TMP_MIB);
        assert_eq!(shm_mib(&spec), DEFAULT_SHM_MIB);
        spec.memory_mib = Some(300);
        assert_eq!(tmp_mib(&spec), 150);
        spec.tmp_mib = Some(7);
        spec.shm_mib = Some(3);
        assert_eq!((tmp_mib(&spec), shm_mib(&spec)), (7, 3));
    }

    #[test]
    fn values_out_of_bounds_are_refused_in_one_line() {
        let bad = [
            GuestSpec { memory_mib: Some(1), ..GuestSpec::default() },
            GuestSpec { pids_limit: Some(2), ..GuestSpec::default() },
            GuestSpec { tmp_mib: Some(0), ..GuestSpec::default() },
            GuestSpec { shm_mib: Some(MAX_SIZE_MIB + 1), ..GuestSpec::default() },
            GuestSpec { disk_mib: Some(MIN_DISK_MIB - 1), ..GuestSpec::default() },
        ];
        for spec in bad {
            let err = validate_values(&spec).expect_err("refused");
            assert!(!err.to_string().contains('\n'), "{err}");
        }
        validate_values(&GuestSpec { disk_mib: Some(MIN_DISK_MIB), ..GuestSpec::default() }).expect("accepted");
    }
}
