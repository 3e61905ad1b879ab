//! The mounts a root-run jail gets from the host, as detached mount trees:
//! the overlay root, the agent binary and the volumes. The jail's first
//! process receives them with the go byte and attaches them in its own
//! mount namespace, so nothing is ever mounted in the host's.
//!
//! With a private user namespace every lower layer, the agent and each
//! volume is an idmapped clone (`open_tree` + `mount_setattr(IDMAP)`) onto
//! the jail's user namespace, so guest root sees the host's root-owned
//! files as its own; the overlay itself is built by the host
//! (`fsopen("overlay")`, each idmapped lower through `lowerdir+`), so its
//! upper layer is written with host ids of the sandbox's range.
//!
//! Invariants:
//! - every mount handed over is `nosuid,nodev` (the overlay, the agent,
//!   each volume recursively); read-only volumes and the agent are
//!   recursively read-only;
//! - the detached idmapped lower layers outlive the overlay's creation and
//!   are handed back to the caller ([`Overlay::layers`]): closing the last
//!   descriptor of a detached mount unmounts it, and that waits for an RCU
//!   grace period (BENCHMARKS.md has what it costs here), so the launch closes them off its path, when the
//!   jail is cleaned up;
//! - a lower layer that cannot be idmapped is an [`MountError::Idmap`]
//!   error, which makes the caller fall back to a jail without a user
//!   namespace; a volume or the agent that cannot be idmapped is attached
//!   as it is (its files then show the overflow id inside) and logged.

use crate::sys;
use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

/// Why a mount could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// Idmapping a lower layer, or building an overlay over idmapped lower
    /// layers, failed: this host or filesystem cannot give the jail a
    /// private user namespace.
    #[error("idmapped lower layer {path}: {source}")]
    Idmap {
        /// The layer.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Any other step.
    #[error("{what}: {source}{log}")]
    Os {
        /// The step and its object.
        what: String,
        /// The OS error.
        #[source]
        source: io::Error,
        /// What the filesystem logged about it (`: …`, or empty).
        log: String,
    },
}

fn os(what: impl Into<String>) -> MountError {
    MountError::Os { what: what.into(), source: io::Error::last_os_error(), log: String::new() }
}

fn cstr(p: &Path) -> Result<CString, MountError> {
    CString::new(p.as_os_str().as_encoded_bytes()).map_err(|_| MountError::Os {
        what: format!("path {}", p.display()),
        source: io::Error::from(io::ErrorKind::InvalidInput),
        log: String::new(),
    })
}

fn owned(fd: RawFd) -> OwnedFd {
    // SAFETY: `fd` was just returned by the kernel and is owned by nobody else.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// The writable layer's directories: paths on the host, or directories of
/// a detached filesystem (the sandbox's disk image, whose mount descriptor
/// the caller keeps open until the overlay exists).
pub(crate) enum UpperDirs {
    /// Paths.
    Paths { upper: PathBuf, work: PathBuf },
    /// `O_PATH` descriptors.
    Fds { upper: OwnedFd, work: OwnedFd },
}

/// What the overlay is made of.
pub(crate) struct OverlaySpec<'a> {
    /// Lower layers, top-most first.
    pub lowers: &'a [PathBuf],
    pub upper: &'a UpperDirs,
    /// Mount `volatile` (a throw-away layer).
    pub volatile: bool,
}

/// A detached overlay and the detached lower layers it was built from.
pub(crate) struct Overlay {
    /// The overlay (`nosuid,nodev`).
    pub mount: OwnedFd,
    /// The idmapped lower layers (empty without a user namespace); the
    /// overlay holds its own clones, so these only wait to be closed
    /// somewhere a grace period costs nothing (see the module invariants).
    pub layers: Vec<OwnedFd>,
}

/// The detached overlay root. `userns`: idmap every lower layer onto it.
pub(crate) fn overlay(spec: &OverlaySpec<'_>, userns: Option<&OwnedFd>) -> Result<Overlay, MountError> {
    // SAFETY: plain system call with a static string.
    let fs = unsafe { sys::fsopen(c"overlay") };
    if fs < 0 {
        return Err(os("opening an overlay filesystem context (fsopen)"));
    }
    let fs = owned(fs);
    let context = FsContext(&fs);
    // The detached lower mounts must stay open until the overlay is created:
    // closing the last descriptor of a detached tree unmounts it, and the
    // overlay's reference alone would then name an unmounted layer.
    let mut lower_mounts = Vec::new();
    match userns {
        Some(ns) => {
            for lower in spec.lowers {
                let fd = idmapped_clone(lower, ns, sys::MOUNT_ATTR_RDONLY, false)
                    .map_err(|source| MountError::Idmap { path: lower.clone(), source })?;
                context
                    .set_fd(c"lowerdir+", &fd)
                    .map_err(|source| MountError::Idmap { path: lower.clone(), source })?;
                lower_mounts.push(fd);
            }
        }
        None => {
            let joined = spec.lowers.iter().map(|p| p.as_os_str().as_encoded_bytes()).collect::<Vec<_>>().join(&b':');
            let value = CString::new(joined).map_err(|_| MountError::Os {
                what: "lower layer paths".into(),
                source: io::Error::from(io::ErrorKind::InvalidInput),
                log: String::new(),
            })?;
            context.set_string(c"lowerdir", &value).map_err(|e| context.error("setting the lower layers", e))?;
        }
    }
    match spec.upper {
        UpperDirs::Paths { upper, work } => {
            context.set_string(c"upperdir", &cstr(upper)?).map_err(|e| context.error("setting upperdir", e))?;
            context.set_string(c"workdir", &cstr(work)?).map_err(|e| context.error("setting workdir", e))?;
        }
        UpperDirs::Fds { upper, work } => {
            for (key, fd) in [(c"upperdir", upper), (c"workdir", work)] {
                // Descriptors as layers need Linux 6.13; older kernels
                // take the descriptor's /proc path.
                if context.set_fd(key, fd).is_err() {
                    let path = CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd())).expect("no NUL");
                    context.set_string(key, &path).map_err(|e| context.error("setting the disk image's layer", e))?;
                }
            }
        }
    }
    if spec.volatile {
        // Skips the sync of the upper filesystem at unmount (Linux 5.10+);
        // a kernel without it only loses that shortcut.
        let _ = context.set_flag(c"volatile");
    }
    // SAFETY: plain system call on our context.
    if unsafe { sys::fsconfig(fs.as_raw_fd(), sys::FSCONFIG_CMD_CREATE, std::ptr::null(), std::ptr::null(), 0) } < 0 {
        let e = io::Error::last_os_error();
        if userns.is_some() {
            return Err(MountError::Idmap { path: spec.lowers[0].clone(), source: with_log(e, &fs) });
        }
        return Err(context.error(
            "creating the overlay (upper/ and work/ must be on one filesystem that supports overlayfs upper layers)",
            e,
        ));
    }
    // SAFETY: plain system call on our context.
    let mnt = unsafe { sys::fsmount(fs.as_raw_fd(), sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NODEV) };
    if mnt < 0 {
        return Err(os("mounting the overlay (fsmount)"));
    }
    Ok(Overlay { mount: owned(mnt), layers: lower_mounts })
}

struct FsContext<'a>(&'a OwnedFd);

impl FsContext<'_> {
    fn call(&self, cmd: u32, key: &std::ffi::CStr, value: *const libc::c_char, aux: i32) -> io::Result<()> {
        // SAFETY: key is a valid C string; value is null or a valid C string.
        if unsafe { sys::fsconfig(self.0.as_raw_fd(), cmd, key.as_ptr(), value, aux) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn set_string(&self, key: &std::ffi::CStr, value: &std::ffi::CStr) -> io::Result<()> {
        self.call(sys::FSCONFIG_SET_STRING, key, value.as_ptr(), 0)
    }

    fn set_fd(&self, key: &std::ffi::CStr, fd: &OwnedFd) -> io::Result<()> {
        self.call(sys::FSCONFIG_SET_FD, key, std::ptr::null(), fd.as_raw_fd())
    }

    fn set_flag(&self, key: &std::ffi::CStr) -> io::Result<()> {
        self.call(sys::FSCONFIG_SET_FLAG, key, std::ptr::null(), 0)
    }

    fn error(&self, what: &str, source: io::Error) -> MountError {
        MountError::Os { what: what.into(), source, log: fs_log(self.0) }
    }
}

/// The messages the filesystem logged on its context (`: …`), if any.
fn fs_log(fs: &OwnedFd) -> String {
    let mut lines = Vec::new();
    let mut buf = [0u8; 512];
    loop {
        // SAFETY: read into a stack buffer of the given length.
        let n = unsafe { libc::read(fs.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            break;
        }
        lines.push(String::from_utf8_lossy(&buf[..n as usize]).trim().to_string());
    }
    if lines.is_empty() {
        String::new()
    } else {
        format!(" ({})", lines.join("; "))
    }
}

fn with_log(e: io::Error, fs: &OwnedFd) -> io::Error {
    let log = fs_log(fs);
    if log.is_empty() {
        e
    } else {
        io::Error::new(e.kind(), format!("{e}{log}"))
    }
}

/// A detached clone of `path` with `attrs`, idmapped onto `userns`.
fn idmapped_clone(path: &Path, userns: &OwnedFd, attrs: u64, recursive: bool) -> io::Result<OwnedFd> {
    let c =
        CString::new(path.as_os_str().as_encoded_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let extra = if recursive { sys::AT_RECURSIVE } else { 0 };
    // SAFETY: valid C string.
    let fd = unsafe { sys::open_tree(c.as_ptr(), extra) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = owned(fd);
    // SAFETY: plain system calls on our fds.
    unsafe {
        if sys::set_attrs(fd.as_raw_fd(), attrs, recursive, -1) < 0
            || sys::set_attrs(fd.as_raw_fd(), sys::MOUNT_ATTR_IDMAP, recursive, userns.as_raw_fd()) < 0
        {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(fd)
}

/// A detached clone of `path` with `attrs` (no idmap).
fn plain_clone(path: &Path, attrs: u64, recursive: bool) -> Result<OwnedFd, MountError> {
    let c = cstr(path)?;
    let extra = if recursive { sys::AT_RECURSIVE } else { 0 };
    // SAFETY: valid C string.
    let fd = unsafe { sys::open_tree(c.as_ptr(), extra) };
    if fd < 0 {
        return Err(os(format!("opening {}", path.display())));
    }
    let fd = owned(fd);
    // SAFETY: plain system call on our fd.
    if unsafe { sys::set_attrs(fd.as_raw_fd(), attrs, recursive, -1) } < 0 {
        return Err(os(format!("setting the mount flags of {}", path.display())));
    }
    Ok(fd)
}

/// A bind of `path` for the jail: `nosuid,nodev` (and read-only) on every
/// mount of the tree when `recursive`; idmapped onto `userns` where the
/// filesystem allows it.
pub(crate) fn bind(
    path: &Path,
    readonly: bool,
    recursive: bool,
    userns: Option<&OwnedFd>,
) -> Result<OwnedFd, MountError> {
    let attrs = sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NODEV | if readonly { sys::MOUNT_ATTR_RDONLY } else { 0 };
    if let Some(ns) = userns {
        match idmapped_clone(path, ns, attrs, recursive) {
            Ok(fd) => return Ok(fd),
            Err(e) => tracing::warn!(
                path = %path.display(),
                error = %e,
                "this mount cannot be idmapped: its files show as the overflow id in the jail"
            ),
        }
    }
    plain_clone(path, attrs, recursive)
}
