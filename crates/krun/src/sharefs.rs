//! The virtio-fs backend of every share: msb_krun's passthrough filesystem
//! behind a wrapper that keeps the guest inside the shared directory and,
//! for read-only shares, refuses every mutating request in the VMM.
//!
//! Over 600 lines on purpose: one wrapper method per filesystem request, each
//! with its own containment check, in one place to be reviewed together.
//!
//! Why a wrapper at all. msb_krun 0.1.42's `fs(tag, path)` shares are its
//! `PassthroughFs` served as is, and that has two problems for alcove:
//! - No read-only flag: a share the guest mounts read-only is only
//!   read-only until guest root remounts it.
//! - Names are not checked. A guest that sends raw FUSE requests can ask for
//!   `..` (or `../x`) relative to the share's root inode, and the passthrough
//!   resolves it with `openat` on the host: `lookup(ROOT, "..")` registers
//!   the host directory above the share as an inode, and so does the
//!   passthrough's own `readdirplus` in the root (its test for `.`/`..`
//!   compares names that have lost their NUL terminator, so it never
//!   matches). From that inode the guest reaches the parent of the share;
//!   through a writable share (the boot trampoline, `upper`, read-write
//!   mounts) that is write access to the host outside the sandbox.
//!
//! [`ShareFs`] is handed to msb_krun as a custom backend
//! (`FsBuilder::custom`) and builds the same passthrough `fs(tag, path)`
//! would (`PassthroughFs` with `Config { root_dir, allow_root_dir_delete:
//! false, ..Default::default() }`, as `devices::virtio::Fs::new` does). The
//! FUSE server calls the backend for every request, `ioctl` included (msb_krun
//! intercepts nothing before the filesystem), so what reaches the host is
//! decided here.
//!
//! Invariants, both modes:
//! - Every method of `DynFileSystem` is implemented here; none falls back to
//!   a trait default, so a future default cannot silently change behaviour.
//! - Path names from the guest are single components: `lookup`, `create`,
//!   `mkdir`, `mknod`, `symlink` (the new entry's name; the link target is
//!   stored, never resolved by the host), `link`, `rename` (both names),
//!   `unlink` and `rmdir` refuse the empty name, `.`, `..` and any name
//!   containing `/` with `EINVAL` (the name is malformed; a kernel's path
//!   walk never sends one). The passthrough resolves names with `*at`
//!   calls relative to the parent's host fd, so with single components no
//!   request can step out of the share. Extended-attribute names are not
//!   path names (the passthrough hands them to `fsetxattr`/`lsetxattr` as
//!   is) and are not checked.
//! - `readdirplus` is rebuilt from `readdir` + `lookup` and never looks up
//!   `.` or `..`: those entries carry inode 0 (no attributes, which the
//!   kernel ignores for dot entries anyway).
//! - The vector forms of `readdir`/`readdirplus` answer `ENOSYS` because
//!   msb_krun only calls the streaming forms; the lock and notification
//!   requests go to the passthrough (which answers `ENOSYS`).
//!
//! [`ShareMode::Writable`] (the boot trampoline `/dev/root`, `upper`,
//! read-write mounts): everything else is delegated unchanged, `init`
//! included, and so is `ioctl`: the guest reports its exit code with the
//! passthrough's exit-code ioctl on the boot share, which stores it in the
//! VM's exit-code cell msb_krun passes in. (The fd-export ioctl needs an
//! export table msb_krun only sets up with its `gpu` feature, so it answers
//! `EOPNOTSUPP` as it would for a plain share; root-directory removal is
//! off, `allow_root_dir_delete: false`.)
//!
//! [`ShareMode::ReadOnly`] (the `rootfs` share, read-only mounts):
//! - Delegated (read side): `init` (without the writeback cache), `destroy`,
//!   `lookup`, `forget`, `batch_forget`, `getattr`, `readlink`,
//!   `open`/`opendir` with a read-only access mode and none of `O_TRUNC`,
//!   `O_APPEND`, `O_CREAT`, `O_TMPFILE`, `read`, `flush` and
//!   `fsync`/`fsyncdir` (on read-only handles they change nothing),
//!   `release`, `releasedir`, `statfs`, `getxattr`, `listxattr`, `readdir`,
//!   `readdirplus`, `access` without `W_OK`, `lseek`, DAX `setupmapping`
//!   without the write flag (the file is mapped `PROT_READ`),
//!   `removemapping`, and the snapshot-state hooks.
//! - Refused with `EROFS` (before any name check; nothing reaches the
//!   host): `setattr`, `symlink`, `mknod`, `mkdir`, `unlink`, `rmdir`,
//!   `rename`, `link`, `create`, `write`, `fallocate`, `setxattr`,
//!   `removexattr`, `copyfilerange` (its destination is always in this
//!   share), writable opens, `access(W_OK)`, writable DAX mappings, and
//!   every `ioctl` (the passthrough's ioctls are fd export, the guest
//!   exit-code report, which belongs to the boot share, and root-directory
//!   removal; none is a read).

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
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicI32;
use std::sync::Arc;
use std::time::Duration;

/// Why a share's backend cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum ShareFsError {
    /// msb_krun's passthrough takes the directory as a string.
    #[error("share {0}: the path is not valid UTF-8")]
    NotUtf8(PathBuf),
    /// The passthrough opens the directory through a C string.
    #[error("share {0}: the path contains a NUL byte")]
    Nul(PathBuf),
    /// The passthrough could not be created (it opens `/proc/self/fd`).
    #[error("share {dir}: cannot create the passthrough filesystem: {source}")]
    Passthrough {
        /// The share's host directory.
        dir: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// What the guest may do to a share's host directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShareMode {
    /// Only reads reach the host; every mutating request answers `EROFS`.
    ReadOnly,
    /// Reads and writes reach the host, inside the share only.
    Writable,
}

/// A virtio-fs backend serving `root` (see the module docs).
pub struct ShareFs {
    root: PathBuf,
    mode: ShareMode,
    inner: PassthroughFs,
}

impl std::fmt::Debug for ShareFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShareFs").field("root", &self.root).field("mode", &self.mode).finish_non_exhaustive()
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

/// Whether a guest-supplied entry name is one path component inside its
/// parent: not empty, not `.` or `..`, no `/`.
pub fn is_plain_name(name: &[u8]) -> bool {
    !name.is_empty() && !is_dot(name) && !name.contains(&b'/')
}

/// `EINVAL` unless `name` is a plain name ([`is_plain_name`]).
fn check_name(name: &CStr) -> io::Result<()> {
    if is_plain_name(name.to_bytes()) {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(libc::EINVAL))
    }
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

/// A memfd for staging bytes between the transport and memory.
fn memfd() -> io::Result<File> {
    // SAFETY: a constant name; the return value is checked.
    let fd = unsafe { libc::memfd_create(c"alcove-sharefs".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and is owned here.
    Ok(unsafe { File::from_raw_fd(fd) })
}

impl ShareFs {
    /// The passthrough msb_krun would build for `fs(tag, dir)`, served in
    /// `mode`.
    pub fn new(dir: &Path, mode: ShareMode) -> Result<ShareFs, ShareFsError> {
        let root_dir = dir.to_str().ok_or_else(|| ShareFsError::NotUtf8(dir.to_path_buf()))?.to_string();
        if root_dir.contains('\0') {
            return Err(ShareFsError::Nul(dir.to_path_buf()));
        }
        let cfg = Config { root_dir, allow_root_dir_delete: false, ..Config::default() };
        let inner =
            PassthroughFs::new(cfg).map_err(|source| ShareFsError::Passthrough { dir: dir.to_path_buf(), source })?;
        Ok(ShareFs { root: dir.to_path_buf(), mode, inner })
    }

    /// A read-only share of `dir`.
    pub fn read_only(dir: &Path) -> Result<ShareFs, ShareFsError> {
        ShareFs::new(dir, ShareMode::ReadOnly)
    }

    /// A writable share of `dir`.
    pub fn writable(dir: &Path) -> Result<ShareFs, ShareFsError> {
        ShareFs::new(dir, ShareMode::Writable)
    }

    /// The host directory served.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// How it is served.
    pub fn mode(&self) -> ShareMode {
        self.mode
    }

    /// `EROFS` on a read-only share.
    fn writes(&self) -> io::Result<()> {
        match self.mode {
            ShareMode::Writable => Ok(()),
            ShareMode::ReadOnly => Err(erofs()),
        }
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
        let mut f = memfd()?;
        f.write_all(buf)?;
        self.0.write_from(&f, buf.len(), 0)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Adapts msb_krun's `dyn ZeroCopyReader` to what the passthrough's generic
/// `write` wants (`io::Read + ZeroCopyReader`).
struct Source<'a>(&'a mut dyn ZeroCopyReader);

impl ZeroCopyReader for Source<'_> {
    fn read_to(&mut self, f: &File, count: usize, off: u64) -> io::Result<usize> {
        self.0.read_to(f, count, off)
    }
    fn read_exact_to(&mut self, f: &mut File, count: usize, off: u64) -> io::Result<()> {
        self.0.read_exact_to(f, count, off)
    }
    fn copy_to_end(&mut self, f: &mut File, off: u64) -> io::Result<usize> {
        self.0.copy_to_end(f, off)
    }
}

impl io::Read for Source<'_> {
    /// The passthrough writes with `read_to` only; a copy into memory, should
    /// it ever be asked for, goes through a memfd because the transport only
    /// copies into files.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let f = memfd()?;
        let n = self.0.read_to(&f, buf.len(), 0)?;
        f.read_exact_at(&mut buf[..n], 0)?;
        Ok(n)
    }
}

impl DynFileSystem for ShareFs {
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
        match self.mode {
            ShareMode::Writable => self.inner.init(capable),
            ShareMode::ReadOnly => {
                let opts = self.inner.init(capable - FsOptions::WRITEBACK_CACHE)?;
                Ok(opts - FsOptions::WRITEBACK_CACHE)
            }
        }
    }

    fn destroy(&self) {
        self.inner.destroy()
    }

    fn lookup(&self, ctx: Context, parent: u64, name: &CStr) -> io::Result<Entry> {
        check_name(name)?;
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
        ctx: Context,
        inode: u64,
        attr: stat64,
        handle: Option<u64>,
        valid: SetattrValid,
    ) -> io::Result<(stat64, Duration)> {
        self.writes()?;
        self.inner.setattr(ctx, inode, attr, handle, valid)
    }

    fn readlink(&self, ctx: Context, inode: u64) -> io::Result<Vec<u8>> {
        self.inner.readlink(ctx, inode)
    }

    fn symlink(
        &self,
        ctx: Context,
        linkname: &CStr,
        parent: u64,
        name: &CStr,
        extensions: Extensions,
    ) -> io::Result<Entry> {
        self.writes()?;
        check_name(name)?;
        self.inner.symlink(ctx, linkname, parent, name, extensions)
    }

    fn mknod(
        &self,
        ctx: Context,
        inode: u64,
        name: &CStr,
        mode: u32,
        rdev: u32,
        umask: u32,
        extensions: Extensions,
    ) -> io::Result<Entry> {
        self.writes()?;
        check_name(name)?;
        self.inner.mknod(ctx, inode, name, mode, rdev, umask, extensions)
    }

    fn mkdir(
        &self,
        ctx: Context,
        parent: u64,
        name: &CStr,
        mode: u32,
        umask: u32,
        extensions: Extensions,
    ) -> io::Result<Entry> {
        self.writes()?;
        check_name(name)?;
        self.inner.mkdir(ctx, parent, name, mode, umask, extensions)
    }

    fn unlink(&self, ctx: Context, parent: u64, name: &CStr) -> io::Result<()> {
        self.writes()?;
        check_name(name)?;
        self.inner.unlink(ctx, parent, name)
    }

    fn rmdir(&self, ctx: Context, parent: u64, name: &CStr) -> io::Result<()> {
        self.writes()?;
        check_name(name)?;
        self.inner.rmdir(ctx, parent, name)
    }

    fn rename(
        &self,
        ctx: Context,
        olddir: u64,
        oldname: &CStr,
        newdir: u64,
        newname: &CStr,
        flags: u32,
    ) -> io::Result<()> {
        self.writes()?;
        check_name(oldname)?;
        check_name(newname)?;
        self.inner.rename(ctx, olddir, oldname, newdir, newname, flags)
    }

    fn link(&self, ctx: Context, inode: u64, newparent: u64, newname: &CStr) -> io::Result<Entry> {
        self.writes()?;
        check_name(newname)?;
        self.inner.link(ctx, inode, newparent, newname)
    }

    fn open(&self, ctx: Context, inode: u64, kill_priv: bool, flags: u32) -> io::Result<(Option<u64>, OpenOptions)> {
        if !open_flags_read_only(flags) {
            self.writes()?;
        }
        self.inner.open(ctx, inode, kill_priv, flags)
    }

    fn create(
        &self,
        ctx: Context,
        parent: u64,
        name: &CStr,
        mode: u32,
        kill_priv: bool,
        flags: u32,
        umask: u32,
        extensions: Extensions,
    ) -> io::Result<(Entry, Option<u64>, OpenOptions)> {
        self.writes()?;
        check_name(name)?;
        self.inner.create(ctx, parent, name, mode, kill_priv, flags, umask, extensions)
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
        ctx: Context,
        inode: u64,
        handle: u64,
        r: &mut dyn ZeroCopyReader,
        size: u32,
        offset: u64,
        lock_owner: Option<u64>,
        delayed_write: bool,
        kill_priv: bool,
        flags: u32,
    ) -> io::Result<usize> {
        self.writes()?;
        self.inner.write(ctx, inode, handle, Source(r), size, offset, lock_owner, delayed_write, kill_priv, flags)
    }

    fn flush(&self, ctx: Context, inode: u64, handle: u64, lock_owner: u64) -> io::Result<()> {
        self.inner.flush(ctx, inode, handle, lock_owner)
    }

    fn fsync(&self, ctx: Context, inode: u64, datasync: bool, handle: u64) -> io::Result<()> {
        self.inner.fsync(ctx, inode, datasync, handle)
    }

    fn fallocate(&self, ctx: Context, inode: u64, handle: u64, mode: u32, offset: u64, length: u64) -> io::Result<()> {
        self.writes()?;
        self.inner.fallocate(ctx, inode, handle, mode, offset, length)
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

    fn setxattr(&self, ctx: Context, inode: u64, name: &CStr, value: &[u8], flags: u32) -> io::Result<()> {
        self.writes()?;
        self.inner.setxattr(ctx, inode, name, value, flags)
    }

    fn getxattr(&self, ctx: Context, inode: u64, name: &CStr, size: u32) -> io::Result<GetxattrReply> {
        self.inner.getxattr(ctx, inode, name, size)
    }

    fn listxattr(&self, ctx: Context, inode: u64, size: u32) -> io::Result<ListxattrReply> {
        self.inner.listxattr(ctx, inode, size)
    }

    fn removexattr(&self, ctx: Context, inode: u64, name: &CStr) -> io::Result<()> {
        self.writes()?;
        self.inner.removexattr(ctx, inode, name)
    }

    fn opendir(&self, ctx: Context, inode: u64, flags: u32) -> io::Result<(Option<u64>, OpenOptions)> {
        if !open_flags_read_only(flags) {
            self.writes()?;
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
                check_name(&name)?;
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
            self.writes()?;
        }
        self.inner.access(ctx, inode, mask)
    }

    fn lseek(&self, ctx: Context, inode: u64, handle: u64, offset: u64, whence: u32) -> io::Result<u64> {
        self.inner.lseek(ctx, inode, handle, offset, whence)
    }

    fn copyfilerange(
        &self,
        ctx: Context,
        inode_in: u64,
        handle_in: u64,
        offset_in: u64,
        inode_out: u64,
        handle_out: u64,
        offset_out: u64,
        len: u64,
        flags: u64,
    ) -> io::Result<usize> {
        self.writes()?;
        self.inner.copyfilerange(ctx, inode_in, handle_in, offset_in, inode_out, handle_out, offset_out, len, flags)
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
            self.writes()?;
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
        ctx: Context,
        inode: u64,
        handle: u64,
        flags: u32,
        cmd: u32,
        arg: u64,
        in_size: u32,
        out_size: u32,
        exit_code: &Arc<AtomicI32>,
    ) -> io::Result<Vec<u8>> {
        self.writes()?;
        self.inner.ioctl(ctx, inode, handle, flags, cmd, arg, in_size, out_size, exit_code)
    }

    fn getlk(&self) -> io::Result<()> {
        self.inner.getlk()
    }

    fn setlk(&self) -> io::Result<()> {
        self.inner.setlk()
    }

    fn setlkw(&self) -> io::Result<()> {
        self.inner.setlkw()
    }

    fn bmap(&self) -> io::Result<()> {
        self.inner.bmap()
    }

    fn poll(&self) -> io::Result<()> {
        self.inner.poll()
    }

    fn notify_reply(&self) -> io::Result<()> {
        self.inner.notify_reply()
    }
}

#[cfg(test)]
#[path = "sharefs_tests.rs"]
mod tests;
