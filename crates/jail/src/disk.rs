//! The disk limit of a sandbox's writable layer: a sparse ext4 image,
//! `sandbox_dir/disk.img`, holding `upper/` and `work/`.
//!
//! Why an image: the host filesystem measured for this project (ext4 root
//! without the `project` feature or the `prjquota` mount option, which can
//! only be turned on unmounted) has no project quota, and a per-sandbox
//! filesystem bounds the layer wherever a loop device exists. Costs are in
//! BENCHMARKS.md.
//!
//! Invariants:
//! - the image is created once (sparse, `mkfs.ext4`) and renamed into place
//!   only when complete; its size is fixed then;
//! - it is attached to a free loop device with `LO_FLAGS_AUTOCLEAR` and
//!   mounted as a *detached* mount (`fsopen("ext4")` + `fsmount`,
//!   `nosuid,nodev`): nothing appears in the host's mount table, and once
//!   the jail's overlay is gone the filesystem is unmounted and the loop
//!   device released by the kernel;
//! - only the kernel writes the image's metadata; the guest reaches its
//!   content through the overlay only (the image lives in the 0700 sandbox
//!   directory).

use crate::sys;
use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Why the disk image could not be used.
#[derive(Debug, thiserror::Error)]
#[error("the sandbox's disk image {path}: {what}: {source}")]
pub struct DiskError {
    path: PathBuf,
    what: String,
    #[source]
    source: io::Error,
}

const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
const LO_FLAGS_AUTOCLEAR: u32 = 4;

#[repr(C)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; 64],
    lo_crypt_name: [u8; 64],
    lo_encrypt_key: [u8; 32],
    lo_init: [u64; 2],
}

#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

/// The mounted image and its layer directories.
pub(crate) struct Disk {
    /// The detached mount: closing it unmounts the image, so it stays open
    /// until the overlay holds the layers.
    mount: OwnedFd,
    /// `upper/` as an `O_PATH` descriptor.
    pub upper: OwnedFd,
    /// `work/` as an `O_PATH` descriptor.
    pub work: OwnedFd,
}

impl Disk {
    /// The image's detached mount, for the caller to close once the overlay
    /// holds the layers (its last close waits out an RCU grace period).
    pub fn into_mount(self) -> OwnedFd {
        self.mount
    }

    /// The host path through which `upper/` can be walked (for ownership).
    pub fn upper_path(&self) -> PathBuf {
        // `/.` makes every call follow the descriptor's magic link.
        PathBuf::from(format!("/proc/self/fd/{}/.", self.upper.as_raw_fd()))
    }
}

/// Opens (creating on first use) the image of `mib` MiB in `sandbox_dir`
/// and mounts it, detached.
pub(crate) fn open(sandbox_dir: &Path, mib: u64) -> Result<Disk, DiskError> {
    let image = sandbox_dir.join("disk.img");
    let fail = |what: &str| {
        let image = image.clone();
        let what = what.to_string();
        move |source: io::Error| DiskError { path: image, what, source }
    };
    if !image.exists() {
        create(&image, mib).map_err(fail("creating it"))?;
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(&image)
        .map_err(fail("opening it"))?;
    // The device stays open until the mount holds it: with autoclear, its
    // last close before that would detach it.
    let (device, _open_device) = attach(&file).map_err(fail("attaching it to a loop device"))?;
    let root = mount_ext4(&device).map_err(fail("mounting it"))?;
    let dir = |name: &std::ffi::CStr, mode: libc::mode_t| -> io::Result<OwnedFd> {
        // SAFETY: *at calls on our mount fd with static names.
        unsafe {
            if libc::mkdirat(root.as_raw_fd(), name.as_ptr(), mode) < 0 && *libc::__errno_location() != libc::EEXIST {
                return Err(io::Error::last_os_error());
            }
            let fd = libc::openat(
                root.as_raw_fd(),
                name.as_ptr(),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            );
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(OwnedFd::from_raw_fd(fd))
        }
    };
    let upper = dir(c"upper", 0o755).map_err(fail("preparing upper/"))?;
    let work = dir(c"work", 0o700).map_err(fail("preparing work/"))?;
    Ok(Disk { mount: root, upper, work })
}

/// A sparse file of `mib` MiB formatted ext4, renamed into place when done.
fn create(image: &Path, mib: u64) -> io::Result<()> {
    let tmp = image.with_extension("img.tmp");
    let f = OpenOptions::new().create(true).truncate(true).write(true).mode(0o600).open(&tmp)?;
    f.set_len(mib << 20)?;
    drop(f);
    let mkfs =
        crate::limits::mkfs_ext4().ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "mkfs.ext4 not found"))?;
    // No reserved blocks (the layer is the guest's alone); the root
    // directory belongs to root until the jail's range takes it over.
    let out = std::process::Command::new(mkfs)
        .args(["-q", "-F", "-m", "0", "-E", "root_owner=0:0"])
        .arg(&tmp)
        .stdin(std::process::Stdio::null())
        .output()?;
    if !out.status.success() {
        let _ = fs::remove_file(&tmp);
        let msg = String::from_utf8_lossy(&out.stderr).trim().replace('\n', "; ");
        return Err(io::Error::other(format!("mkfs.ext4 failed: {msg}")));
    }
    File::open(&tmp)?.sync_all()?;
    fs::rename(&tmp, image)
}

/// Attaches `file` to a free loop device (autoclear); returns its path and
/// the open device.
fn attach(file: &File) -> io::Result<(PathBuf, File)> {
    let control = OpenOptions::new().read(true).write(true).custom_flags(libc::O_CLOEXEC).open("/dev/loop-control")?;
    // Another process may take the device between GET_FREE and CONFIGURE.
    for _ in 0..16 {
        // SAFETY: ioctl without argument on our control fd.
        let n = unsafe { libc::ioctl(control.as_raw_fd(), LOOP_CTL_GET_FREE as _) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let path = PathBuf::from(format!("/dev/loop{n}"));
        let device = OpenOptions::new().read(true).write(true).custom_flags(libc::O_CLOEXEC).open(&path)?;
        // SAFETY: LoopConfig is plain data; all-zero is a valid value.
        let mut config: LoopConfig = unsafe { std::mem::zeroed() };
        config.fd = file.as_raw_fd() as u32;
        config.info.lo_flags = LO_FLAGS_AUTOCLEAR;
        // SAFETY: LOOP_CONFIGURE reads a loop_config of this layout.
        if unsafe { libc::ioctl(device.as_raw_fd(), LOOP_CONFIGURE as _, &config) } == 0 {
            return Ok((path, device));
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EBUSY) {
            return Err(e);
        }
    }
    Err(io::Error::other("every free loop device was taken by someone else first"))
}

fn mount_ext4(device: &Path) -> io::Result<OwnedFd> {
    let source = CString::new(device.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: plain system calls with valid C strings; fds owned below.
    unsafe {
        let fs = sys::fsopen(c"ext4");
        if fs < 0 {
            return Err(io::Error::last_os_error());
        }
        let fs = OwnedFd::from_raw_fd(fs);
        if sys::fsconfig(fs.as_raw_fd(), sys::FSCONFIG_SET_STRING, c"source".as_ptr(), source.as_ptr(), 0) < 0
            || sys::fsconfig(fs.as_raw_fd(), sys::FSCONFIG_CMD_CREATE, std::ptr::null(), std::ptr::null(), 0) < 0
        {
            return Err(io::Error::last_os_error());
        }
        let mnt = sys::fsmount(fs.as_raw_fd(), sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NODEV);
        if mnt < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(OwnedFd::from_raw_fd(mnt))
    }
}
