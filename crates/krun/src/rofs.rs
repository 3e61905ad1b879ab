//! A read-only virtio-fs backend: msb_krun's passthrough filesystem with
//! every mutating request refused in the VMM.
//!
//! msb_krun 0.1.42's `fs(tag, path)` shares have no read-only flag, so a
//! share the guest mounts read-only is only read-only until guest root
//! remounts it. [`ReadOnlyFs`] closes that gap: it is handed to msb_krun as a
//! custom backend (`FsBuilder::custom`) and serves the same passthrough
//! filesystem `fs(tag, path)` would build (`PassthroughFs` with
//! `Config { root_dir, allow_root_dir_delete: false, ..Default::default() }`,
//! as `devices::virtio::Fs::new` does), but only the requests that cannot
//! change the host directory reach it.
//!
//! Invariants:
//! - Every method of `DynFileSystem` is implemented here; none falls back to
//!   a trait default, so a future default cannot silently start writing.
//! - Delegated (read side): `init` (without the writeback cache), `destroy`,
//!   `lookup` (except `.`/`..`/names with `/`, which never come from a
//!   kernel's path walk and could step out of the share), `forget`,
//!   `batch_forget`, `getattr`, `readlink`, `open`/`opendir` with a
//!   read-only access mode and none of `O_TRUNC`, `O_APPEND`, `O_CREAT`,
//!   `O_TMPFILE`, `read`, `flush` and `fsync`/`fsyncdir` (on read-only
//!   handles they change nothing), `release`, `releasedir`, `statfs`,
//!   `getxattr`, `listxattr`, `readdir` and `readdirplus` (streaming
//!   forms; `readdirplus` is rebuilt from `readdir` + `lookup` so that `..`
//!   of the share's root is never looked up on the host),
//!   `access` without `W_OK`, `lseek`, DAX `setupmapping` without the write
//!   flag (the file is mapped `PROT_READ`), `removemapping`, and the
//!   snapshot-state hooks.
//! - Refused with `EROFS`: `setattr`, `symlink`, `mknod`, `mkdir`, `unlink`,
//!   `rmdir`, `rename`, `link`, `create`, `write`, `fallocate`, `setxattr`,
//!   `removexattr`, `copyfilerange` (its destination is always in this
//!   share), writable opens, `access(W_OK)`, writable DAX mappings, and
//!   every `ioctl` (the passthrough's ioctls are fd export, the guest
//!   exit-code report, which belongs to the boot share, and root-directory
//!   removal; none is a read).
//! - The lock and notification requests answer `ENOSYS`, as the passthrough
//!   does; the vector forms of `readdir`/`readdirplus` answer `ENOSYS`
//!   because msb_krun only calls the streaming forms.

use msb_krun::backends::fs::{
    stat64, statvfs64, AddDirEntry, AddDirEntryPlus, Context, DirEntry, DynFileSystem, Entry, Extensions, FsOptions,
    GetxattrReply, ListxattrReply, OpenOptions, RemovemappingOne, SetattrValid, ZeroCopyReader, ZeroCopyWriter,
};
use msb_krun_devices::virtio::fs::filesystem::FileSystem;
use msb_krun_devices::virtio::fs::fuse::SetupmappingFlags;
use msb_krun_devices::virtio::fs::passthrough::{Config, PassthroughFs};
use std::ffi::{CStr, CString};
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::FromRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicI32;
use std::sync::Arc;
use std::time::Duration;

/// Why a read-only share cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum RofsError {
    /// msb_krun's passthrough takes the directory as a string.
    #[error("read-only share {0}: the path is not valid UTF-8")]
    NotUtf8(PathBuf),
    /// The passthrough could not be created (it opens `/proc/self/fd`).
    #[error("read-only share {dir}: cannot create the passthrough filesystem: {source}")]
    Passthrough {
        /// The share's host directory.
        dir: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// A virtio-fs backend serving `root` read-only (see the module docs).
pub struct ReadOnlyFs {
    root: PathBuf,
    inner: PassthroughFs,
}

impl std::fmt::Debug for ReadOnlyFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadOnlyFs").field("root", &self.root).finish_non_exhaustive()
    }
}

fn erofs() -> io::Error {
    io::Error::from_raw_os_error(libc::EROFS)
}

fn enosys() -> io::Error {
    io::Error::from_raw_os_error(libc::ENOSYS)
}

fn is_dot(name: &[u8]) -> bool {
    name == b"." || name == b".."
}

/// A readdirplus entry without attributes (`nodeid` 0).
fn no_entry() -> Entry {
    Entry {
        inode: 0,
        generation: 0,
        // SAFETY: stat64 is plain data; all-zero is a valid value.
        attr: unsafe { std::mem::zeroed() },
        attr_flags: 0,
        attr_timeout: Duration::ZERO,
        entry_timeout: Duration::ZERO,
    }
}

/// Whether open flags can only read: `O_RDONLY` and none of the flags that
/// create, truncate or append.
pub fn open_flags_read_only(flags: u32) -> bool {
    let flags = flags as i32;
    let tmpfile = libc::O_TMPFILE & !libc::O_DIRECTORY;
    flags & libc::O_ACCMODE == libc::O_RDONLY && flags & (libc::O_TRUNC | libc::O_APPEND | libc::O_CREAT | tmpfile) == 0
}

impl ReadOnlyFs {
    /// The passthrough msb_krun would build for `fs(tag, dir)`, read-only.
    pub fn new(dir: &Path) -> Result<ReadOnlyFs, RofsError> {
        let root_dir = dir.to_str().ok_or_else(|| RofsError::NotUtf8(dir.to_path_buf()))?.to_string();
        let cfg = Config { root_dir, allow_root_dir_delete: false, ..Config::default() };
        let inner =
            PassthroughFs::new(cfg).map_err(|source| RofsError::Passthrough { dir: dir.to_path_buf(), source })?;
        Ok(ReadOnlyFs { root: dir.to_path_buf(), inner })
    }

    /// The host directory served.
    pub fn root(&self) -> &Path {
        &self.root
    }
}

/// Adapts msb_krun's `dyn ZeroCopyWriter` to what the passthrough's generic
/// `read` wants (`io::Write + ZeroCopyWriter`).
struct Sink<'a>(&'a mut dyn ZeroCopyWriter);

impl ZeroCopyWriter for Sink<'_> {
    fn write_from(&mut self, f: &File, count: usize, off: u64) -> io::Result<usize> {
        self.0.write_from(f, count, off)
    }
    fn write_all_from(&mut self, f: &mut File, count: usize, off: u64) -> io::Result<()> {
        self.0.write_all_from(f, count, off)
    }
    fn copy_to_end(&mut self, f: &mut File, off: u64) -> io::Result<usize> {
        self.0.copy_to_end(f, off)
    }
}

impl Write for Sink<'_> {
    /// Only the passthrough's built-in `init.krun` image is served from
    /// memory; it goes through a memfd because the transport only copies
    /// from files.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // SAFETY: a constant name; the return value is checked.
        let fd = unsafe { libc::memfd_create(c"alcove-rofs".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just created and is owned here.
        let mut f = unsafe { File::from_raw_fd(fd) };
        f.write_all(buf)?;
        self.0.write_from(&f, buf.len(), 0)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl DynFileSystem for ReadOnlyFs {
    fn capture_state(&self) -> io::Result<Vec<u8>> {
        self.inner.capture_state()
    }

    fn validate_state(&self, state: &[u8]) -> io::Result<()> {
        self.inner.validate_state(state)
    }

    fn restore_state(&self, state: &[u8]) -> io::Result<()> {
        self.inner.restore_state(state)
    }

    fn request_error(&self, inode: u64) -> Option<i32> {
        self.inner.request_error(inode)
    }

    fn init(&self, capable: FsOptions) -> io::Result<FsOptions> {
        let opts = self.inner.init(capable - FsOptions::WRITEBACK_CACHE)?;
        Ok(opts - FsOptions::WRITEBACK_CACHE)
    }

    fn destroy(&self) {
        self.inner.destroy()
    }

    fn lookup(&self, ctx: Context, parent: u64, name: &CStr) -> io::Result<Entry> {
        let bytes = name.to_bytes();
        if is_dot(bytes) || bytes.contains(&b'/') {
            return Err(io::Error::from_raw_os_error(libc::EACCES));
        }
        self.inner.lookup(ctx, parent, name)
    }

    fn forget(&self, ctx: Context, inode: u64, count: u64) {
        self.inner.forget(ctx, inode, count)
    }

    fn batch_forget(&self, ctx: Context, requests: Vec<(u64, u64)>) {
        self.inner.batch_forget(ctx, requests)
    }

    fn getattr(&self, ctx: Context, inode: u64, handle: Option<u64>) -> io::Result<(stat64, Duration)> {
        self.inner.getattr(ctx, inode, handle)
    }

    fn setattr(
        &self,
        _ctx: Context,
        _inode: u64,
        _attr: stat64,
        _handle: Option<u64>,
        _valid: SetattrValid,
    ) -> io::Result<(stat64, Duration)> {
        Err(erofs())
    }

    fn readlink(&self, ctx: Context, inode: u64) -> io::Result<Vec<u8>> {
        self.inner.readlink(ctx, inode)
    }

    fn symlink(
        &self,
        _ctx: Context,
        _linkname: &CStr,
        _parent: u64,
        _name: &CStr,
        _extensions: Extensions,
    ) -> io::Result<Entry> {
        Err(erofs())
    }

    fn mknod(
        &self,
        _ctx: Context,
        _inode: u64,
        _name: &CStr,
        _mode: u32,
        _rdev: u32,
        _umask: u32,
        _extensions: Extensions,
    ) -> io::Result<Entry> {
        Err(erofs())
    }

    fn mkdir(
        &self,
        _ctx: Context,
        _parent: u64,
        _name: &CStr,
        _mode: u32,
        _umask: u32,
        _extensions: Extensions,
    ) -> io::Result<Entry> {
        Err(erofs())
    }

    fn unlink(&self, _ctx: Context, _parent: u64, _name: &CStr) -> io::Result<()> {
        Err(erofs())
    }

    fn rmdir(&self, _ctx: Context, _parent: u64, _name: &CStr) -> io::Result<()> {
        Err(erofs())
    }

    fn rename(
        &self,
        _ctx: Context,
        _olddir: u64,
        _oldname: &CStr,
        _newdir: u64,
        _newname: &CStr,
        _flags: u32,
    ) -> io::Result<()> {
        Err(erofs())
    }

    fn link(&self, _ctx: Context, _inode: u64, _newparent: u64, _newname: &CStr) -> io::Result<Entry> {
        Err(erofs())
    }

    fn open(&self, ctx: Context, inode: u64, kill_priv: bool, flags: u32) -> io::Result<(Option<u64>, OpenOptions)> {
        if !open_flags_read_only(flags) {
            return Err(erofs());
        }
        self.inner.open(ctx, inode, kill_priv, flags)
    }

    fn create(
        &self,
        _ctx: Context,
        _parent: u64,
        _name: &CStr,
        _mode: u32,
        _kill_priv: bool,
        _flags: u32,
        _umask: u32,
        _extensions: Extensions,
    ) -> io::Result<(Entry, Option<u64>, OpenOptions)> {
        Err(erofs())
    }

    fn read(
        &self,
        ctx: Context,
        inode: u64,
        handle: u64,
        w: &mut dyn ZeroCopyWriter,
        size: u32,
        offset: u64,
        lock_owner: Option<u64>,
        flags: u32,
    ) -> io::Result<usize> {
        self.inner.read(ctx, inode, handle, Sink(w), size, offset, lock_owner, flags)
    }

    fn write(
        &self,
        _ctx: Context,
        _inode: u64,
        _handle: u64,
        _r: &mut dyn ZeroCopyReader,
        _size: u32,
        _offset: u64,
        _lock_owner: Option<u64>,
        _delayed_write: bool,
        _kill_priv: bool,
        _flags: u32,
    ) -> io::Result<usize> {
        Err(erofs())
    }

    fn flush(&self, ctx: Context, inode: u64, handle: u64, lock_owner: u64) -> io::Result<()> {
        self.inner.flush(ctx, inode, handle, lock_owner)
    }

    fn fsync(&self, ctx: Context, inode: u64, datasync: bool, handle: u64) -> io::Result<()> {
        self.inner.fsync(ctx, inode, datasync, handle)
    }

    fn fallocate(
        &self,
        _ctx: Context,
        _inode: u64,
        _handle: u64,
        _mode: u32,
        _offset: u64,
        _length: u64,
    ) -> io::Result<()> {
        Err(erofs())
    }

    fn release(
        &self,
        ctx: Context,
        inode: u64,
        flags: u32,
        handle: u64,
        flush: bool,
        flock_release: bool,
        lock_owner: Option<u64>,
    ) -> io::Result<()> {
        self.inner.release(ctx, inode, flags, handle, flush, flock_release, lock_owner)
    }

    fn statfs(&self, ctx: Context, inode: u64) -> io::Result<statvfs64> {
        self.inner.statfs(ctx, inode)
    }

    fn setxattr(&self, _ctx: Context, _inode: u64, _name: &CStr, _value: &[u8], _flags: u32) -> io::Result<()> {
        Err(erofs())
    }

    fn getxattr(&self, ctx: Context, inode: u64, name: &CStr, size: u32) -> io::Result<GetxattrReply> {
        self.inner.getxattr(ctx, inode, name, size)
    }

    fn listxattr(&self, ctx: Context, inode: u64, size: u32) -> io::Result<ListxattrReply> {
        self.inner.listxattr(ctx, inode, size)
    }

    fn removexattr(&self, _ctx: Context, _inode: u64, _name: &CStr) -> io::Result<()> {
        Err(erofs())
    }

    fn opendir(&self, ctx: Context, inode: u64, flags: u32) -> io::Result<(Option<u64>, OpenOptions)> {
        if !open_flags_read_only(flags) {
            return Err(erofs());
        }
        self.inner.opendir(ctx, inode, flags)
    }

    fn readdir(
        &self,
        _ctx: Context,
        _inode: u64,
        _handle: u64,
        _size: u32,
        _offset: u64,
    ) -> io::Result<Vec<DirEntry<'static>>> {
        Err(enosys())
    }

    fn readdir_for_each(
        &self,
        ctx: Context,
        inode: u64,
        handle: u64,
        size: u32,
        offset: u64,
        add_entry: &mut AddDirEntry<'_>,
    ) -> io::Result<()> {
        self.inner.readdir(ctx, inode, handle, size, offset, add_entry)
    }

    fn readdirplus(
        &self,
        _ctx: Context,
        _inode: u64,
        _handle: u64,
        _size: u32,
        _offset: u64,
    ) -> io::Result<Vec<(DirEntry<'static>, Entry)>> {
        Err(enosys())
    }

    fn readdirplus_for_each(
        &self,
        ctx: Context,
        inode: u64,
        handle: u64,
        size: u32,
        offset: u64,
        add_entry: &mut AddDirEntryPlus<'_>,
    ) -> io::Result<()> {
        // What the passthrough's own readdirplus does (readdir, then a
        // lookup per name), except that `.` and `..` are not looked up: in
        // the share's root, `..` would register the host directory above
        // the share as an inode the guest could then address. The kernel
        // ignores attributes of dot entries, and inode 0 tells it none are
        // given.
        self.inner.readdir(ctx, inode, handle, size, offset, |dir_entry: DirEntry| {
            // The passthrough's names carry no terminating NUL.
            let entry = if is_dot(dir_entry.name) {
                no_entry()
            } else {
                let name = CString::new(dir_entry.name).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
                self.inner.lookup(ctx, inode, &name)?
            };
            add_entry(dir_entry, entry)
        })
    }

    fn fsyncdir(&self, ctx: Context, inode: u64, datasync: bool, handle: u64) -> io::Result<()> {
        self.inner.fsyncdir(ctx, inode, datasync, handle)
    }

    fn releasedir(&self, ctx: Context, inode: u64, flags: u32, handle: u64) -> io::Result<()> {
        self.inner.releasedir(ctx, inode, flags, handle)
    }

    fn access(&self, ctx: Context, inode: u64, mask: u32) -> io::Result<()> {
        if mask as i32 & libc::W_OK != 0 {
            return Err(erofs());
        }
        self.inner.access(ctx, inode, mask)
    }

    fn lseek(&self, ctx: Context, inode: u64, handle: u64, offset: u64, whence: u32) -> io::Result<u64> {
        self.inner.lseek(ctx, inode, handle, offset, whence)
    }

    fn copyfilerange(
        &self,
        _ctx: Context,
        _inode_in: u64,
        _handle_in: u64,
        _offset_in: u64,
        _inode_out: u64,
        _handle_out: u64,
        _offset_out: u64,
        _len: u64,
        _flags: u64,
    ) -> io::Result<usize> {
        Err(erofs())
    }

    fn setupmapping(
        &self,
        ctx: Context,
        inode: u64,
        handle: u64,
        foffset: u64,
        len: u64,
        flags: u64,
        moffset: u64,
        host_shm_base: u64,
        shm_size: u64,
    ) -> io::Result<()> {
        if flags & SetupmappingFlags::WRITE.bits() != 0 {
            return Err(erofs());
        }
        self.inner.setupmapping(ctx, inode, handle, foffset, len, flags, moffset, host_shm_base, shm_size)
    }

    fn removemapping(
        &self,
        ctx: Context,
        requests: Vec<RemovemappingOne>,
        host_shm_base: u64,
        shm_size: u64,
    ) -> io::Result<()> {
        self.inner.removemapping(ctx, requests, host_shm_base, shm_size)
    }

    fn ioctl(
        &self,
        _ctx: Context,
        _inode: u64,
        _handle: u64,
        _flags: u32,
        _cmd: u32,
        _arg: u64,
        _in_size: u32,
        _out_size: u32,
        _exit_code: &Arc<AtomicI32>,
    ) -> io::Result<Vec<u8>> {
        Err(erofs())
    }

    fn getlk(&self) -> io::Result<()> {
        Err(enosys())
    }

    fn setlk(&self) -> io::Result<()> {
        Err(enosys())
    }

    fn setlkw(&self) -> io::Result<()> {
        Err(enosys())
    }

    fn bmap(&self) -> io::Result<()> {
        Err(enosys())
    }

    fn poll(&self) -> io::Result<()> {
        Err(enosys())
    }

    fn notify_reply(&self) -> io::Result<()> {
        Err(enosys())
    }
}

#[cfg(test)]
#[path = "rofs_tests.rs"]
mod tests;
