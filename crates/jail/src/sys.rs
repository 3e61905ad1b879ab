//! Raw system calls of the new mount API (Linux 5.2+, `mount_setattr` 5.12+)
//! shared by the host side ([`crate::mounts`]) and the jail's first process
//! ([`crate::child`]).
//!
//! Invariant: nothing here allocates or takes a lock, so every function may
//! run in the child between `clone` and `exec`. Each returns the raw result
//! (`-1` with `errno` set on failure).

use std::ffi::CStr;
use std::os::raw::{c_char, c_int, c_uint};

pub(crate) const OPEN_TREE_CLONE: c_uint = 1;
pub(crate) const AT_RECURSIVE: c_uint = 0x8000;
pub(crate) const MOVE_MOUNT_F_EMPTY_PATH: c_uint = 0x4;
pub(crate) const MOUNT_ATTR_RDONLY: u64 = 0x1;
pub(crate) const MOUNT_ATTR_NOSUID: u64 = 0x2;
pub(crate) const MOUNT_ATTR_NODEV: u64 = 0x4;
pub(crate) const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;
pub(crate) const FSOPEN_CLOEXEC: c_uint = 1;
pub(crate) const FSMOUNT_CLOEXEC: c_uint = 1;
pub(crate) const FSCONFIG_SET_FLAG: c_uint = 0;
pub(crate) const FSCONFIG_SET_STRING: c_uint = 1;
pub(crate) const FSCONFIG_SET_FD: c_uint = 5;
pub(crate) const FSCONFIG_CMD_CREATE: c_uint = 6;

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// `open_tree(dirfd, path, OPEN_TREE_CLONE | O_CLOEXEC | extra)`: a detached
/// copy of the mount at `path`.
///
/// # Safety
/// `path` must be a valid C string.
pub(crate) unsafe fn open_tree_at(dirfd: c_int, path: *const c_char, extra: c_uint) -> c_int {
    libc::syscall(libc::SYS_open_tree, dirfd, path, OPEN_TREE_CLONE | libc::O_CLOEXEC as c_uint | extra) as c_int
}

/// [`open_tree_at`] relative to the working directory.
///
/// # Safety
/// `path` must be a valid C string.
pub(crate) unsafe fn open_tree(path: *const c_char, extra: c_uint) -> c_int {
    open_tree_at(libc::AT_FDCWD, path, extra)
}

/// Attaches the detached mount `fd` at `target`.
///
/// # Safety
/// Plain system call.
pub(crate) unsafe fn move_mount(fd: c_int, target: &CStr) -> c_int {
    libc::syscall(libc::SYS_move_mount, fd, c"".as_ptr(), libc::AT_FDCWD, target.as_ptr(), MOVE_MOUNT_F_EMPTY_PATH)
        as c_int
}

/// Sets `attrs` on the mount `fd` (and every mount below it when
/// `recursive`); `userns_fd` is the user namespace of `MOUNT_ATTR_IDMAP`,
/// else `-1`.
///
/// # Safety
/// Plain system call.
pub(crate) unsafe fn set_attrs(fd: c_int, attrs: u64, recursive: bool, userns_fd: c_int) -> c_int {
    let attr = MountAttr {
        attr_set: attrs,
        attr_clr: 0,
        propagation: 0,
        userns_fd: if userns_fd >= 0 { userns_fd as u64 } else { 0 },
    };
    let flags = libc::AT_EMPTY_PATH as c_uint | if recursive { AT_RECURSIVE } else { 0 };
    libc::syscall(
        libc::SYS_mount_setattr,
        fd,
        c"".as_ptr(),
        flags,
        &attr as *const MountAttr,
        std::mem::size_of::<MountAttr>(),
    ) as c_int
}

/// `fsopen(fstype, FSOPEN_CLOEXEC)`.
///
/// # Safety
/// Plain system call.
pub(crate) unsafe fn fsopen(fstype: &CStr) -> c_int {
    libc::syscall(libc::SYS_fsopen, fstype.as_ptr(), FSOPEN_CLOEXEC) as c_int
}

/// `fsconfig(fs, cmd, key, value, aux)`.
///
/// # Safety
/// `key` and `value` must be null or valid C strings as `cmd` requires.
pub(crate) unsafe fn fsconfig(fs: c_int, cmd: c_uint, key: *const c_char, value: *const c_char, aux: c_int) -> c_int {
    libc::syscall(libc::SYS_fsconfig, fs, cmd, key, value, aux) as c_int
}

/// `fsmount(fs, FSMOUNT_CLOEXEC, attrs)`: the created superblock as a
/// detached mount.
///
/// # Safety
/// Plain system call.
pub(crate) unsafe fn fsmount(fs: c_int, attrs: u64) -> c_int {
    libc::syscall(libc::SYS_fsmount, fs, FSMOUNT_CLOEXEC, attrs as c_uint) as c_int
}
