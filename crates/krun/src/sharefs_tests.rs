//! Unit tests of [`ShareFs`], called directly on temporary directories.
//! Read-only mode: the read side works, every mutating request answers
//! `EROFS` and leaves the directory exactly as it was, while the same
//! requests through the bare passthrough do change it (so the refusals are
//! the wrapper's doing). Both modes: the bare passthrough hands out the host
//! directory above the share (and writes there), the wrapper refuses the
//! same requests. Writable mode: ordinary work inside the share reaches the
//! host, and the exit-code ioctl still reaches the VM's exit-code cell.
//!
//! Over 600 lines on purpose: one test per request kind and mode.

use super::*;
use msb_krun_devices::virtio::fs::fuse::ROOT_ID;
use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};

fn ctx() -> Context {
    Context { uid: 0, gid: 0, pid: 1 }
}

fn c(s: &str) -> CString {
    CString::new(s).expect("no NUL")
}

#[track_caller]
fn errno<T>(r: io::Result<T>) -> i32 {
    match r {
        Ok(_) => panic!("the request must fail"),
        Err(e) => e.raw_os_error().expect("an OS error"),
    }
}

/// Collects what `read` sends to the guest.
#[derive(Default)]
struct Collect(Vec<u8>);

impl ZeroCopyWriter for Collect {
    fn write_from(&mut self, f: &File, count: usize, off: u64) -> io::Result<usize> {
        let mut buf = vec![0u8; count.min(1 << 20)];
        let n = f.read_at(&mut buf, off)?;
        self.0.extend_from_slice(&buf[..n]);
        Ok(n)
    }
}

/// Data a guest `write` would carry.
struct Data(Vec<u8>);

impl ZeroCopyReader for Data {
    fn read_to(&mut self, f: &File, count: usize, off: u64) -> io::Result<usize> {
        let n = count.min(self.0.len());
        let n = f.write_at(&self.0[..n], off)?;
        self.0.drain(..n);
        Ok(n)
    }
}

impl io::Read for Data {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf.len().min(self.0.len());
        buf[..n].copy_from_slice(&self.0[..n]);
        self.0.drain(..n);
        Ok(n)
    }
}

/// A tree with a file, a subdirectory, a symlink and (where the filesystem
/// supports it) an extended attribute.
fn tree() -> tempfile::TempDir {
    let t = tempfile::tempdir().expect("tempdir");
    fs::write(t.path().join("hello"), "hello world").expect("hello");
    fs::create_dir(t.path().join("sub")).expect("sub");
    fs::write(t.path().join("sub/inner"), "inside").expect("inner");
    std::os::unix::fs::symlink("hello", t.path().join("link")).expect("link");
    let p = c(&t.path().join("hello").to_string_lossy());
    // SAFETY: valid C strings and buffer; the result is not needed.
    unsafe { libc::setxattr(p.as_ptr(), c"user.alcove".as_ptr(), b"v".as_ptr().cast(), 1, 0) };
    t
}

/// Everything observable about a tree except access times: paths, types,
/// modes, owners, sizes, modification and change times, contents, link
/// targets and extended attributes.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, String>) {
        let m = fs::symlink_metadata(dir).expect("meta");
        out.insert(dir.strip_prefix(root).expect("prefix").to_path_buf(), describe(dir, &m));
        let mut names: Vec<_> = fs::read_dir(dir).expect("ls").map(|e| e.expect("entry").path()).collect();
        names.sort();
        for p in names {
            let m = fs::symlink_metadata(&p).expect("meta");
            if m.is_dir() {
                walk(root, &p, out);
            } else {
                out.insert(p.strip_prefix(root).expect("prefix").to_path_buf(), describe(&p, &m));
            }
        }
    }
    fn describe(p: &Path, m: &fs::Metadata) -> String {
        let content = if m.is_file() {
            format!("{:?}", fs::read(p).expect("read"))
        } else if m.file_type().is_symlink() {
            format!("-> {:?}", fs::read_link(p).expect("readlink"))
        } else {
            String::new()
        };
        let cp = c(&p.to_string_lossy());
        let mut names = vec![0u8; 4096];
        // SAFETY: valid C string and buffer of the given length.
        let n = unsafe { libc::llistxattr(cp.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
        names.truncate(n.max(0) as usize);
        format!(
            "mode={:o} uid={} gid={} size={} nlink={} mtime={}.{} ctime={}.{} xattrs={:?} {content}",
            m.mode(),
            m.uid(),
            m.gid(),
            m.size(),
            m.nlink(),
            m.mtime(),
            m.mtime_nsec(),
            m.ctime(),
            m.ctime_nsec(),
            names
        )
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// Runs the FUSE `init` (which, like msb_krun's, sets the process umask to
/// 0; restored here so other tests are not affected).
fn init_with(f: impl FnOnce()) {
    // SAFETY: umask has no memory preconditions.
    let old = unsafe { libc::umask(0o022) };
    f();
    // SAFETY: as above.
    unsafe { libc::umask(old) };
}

fn mounted(dir: &Path) -> ShareFs {
    let fs = ShareFs::read_only(dir).expect("read-only fs");
    assert_eq!(fs.mode(), ShareMode::ReadOnly);
    init_with(|| {
        let opts = fs.init(FsOptions::WRITEBACK_CACHE | FsOptions::SUBMOUNTS).expect("init");
        assert!(!opts.contains(FsOptions::WRITEBACK_CACHE), "no writeback cache on a read-only share");
    });
    fs
}

#[test]
fn reads_are_served() {
    let t = tree();
    let fs = mounted(t.path());
    assert_eq!(fs.root(), t.path());

    let hello = fs.lookup(ctx(), ROOT_ID, &c("hello")).expect("lookup hello");
    assert_eq!(hello.attr.st_size, 11);
    let (st, _) = fs.getattr(ctx(), hello.inode, None).expect("getattr");
    assert_eq!(st.st_size, 11);
    assert_eq!(st.st_ino, fs::metadata(t.path().join("hello")).expect("meta").ino());

    let (h, _) = fs.open(ctx(), hello.inode, false, libc::O_RDONLY as u32).expect("open read-only");
    let h = h.expect("a handle");
    let mut out = Collect::default();
    assert_eq!(fs.read(ctx(), hello.inode, h, &mut out, 64, 0, None, 0).expect("read"), 11);
    assert_eq!(out.0, b"hello world");
    let mut out = Collect::default();
    fs.read(ctx(), hello.inode, h, &mut out, 5, 6, None, 0).expect("read at offset");
    assert_eq!(out.0, b"world");
    assert_eq!(fs.lseek(ctx(), hello.inode, h, 0, libc::SEEK_END as u32).expect("lseek"), 11);
    fs.flush(ctx(), hello.inode, h, 0).expect("flush");
    fs.fsync(ctx(), hello.inode, false, h).expect("fsync of a read-only handle");
    fs.release(ctx(), hello.inode, 0, h, false, false, None).expect("release");

    let sub = fs.lookup(ctx(), ROOT_ID, &c("sub")).expect("lookup sub");
    let (dh, _) = fs.opendir(ctx(), sub.inode, libc::O_RDONLY as u32).expect("opendir");
    let dh = dh.expect("a handle");
    let mut names = Vec::new();
    fs.readdir_for_each(ctx(), sub.inode, dh, 4096, 0, &mut |e: DirEntry| {
        names.push(String::from_utf8_lossy(e.name).trim_end_matches('\0').to_string());
        Ok(1)
    })
    .expect("readdir");
    assert!(names.contains(&"inner".to_string()), "{names:?}");
    let mut plus = Vec::new();
    fs.readdirplus_for_each(ctx(), sub.inode, dh, 4096, 0, &mut |e: DirEntry, entry: Entry| {
        plus.push((String::from_utf8_lossy(e.name).trim_end_matches('\0').to_string(), entry.attr.st_size));
        Ok(1)
    })
    .expect("readdirplus");
    assert!(plus.contains(&("inner".to_string(), 6)), "{plus:?}");
    fs.releasedir(ctx(), sub.inode, 0, dh).expect("releasedir");

    let link = fs.lookup(ctx(), ROOT_ID, &c("link")).expect("lookup link");
    assert_eq!(fs.readlink(ctx(), link.inode).expect("readlink"), b"hello");
    assert!(fs.statfs(ctx(), ROOT_ID).expect("statfs").f_bsize > 0);
    fs.access(ctx(), hello.inode, libc::R_OK as u32).expect("access R_OK");
    fs.access(ctx(), hello.inode, libc::F_OK as u32).expect("access F_OK");
    match fs.listxattr(ctx(), hello.inode, 4096).expect("listxattr") {
        ListxattrReply::Names(n) => {
            let has = String::from_utf8_lossy(&n).contains("user.alcove");
            if has {
                match fs.getxattr(ctx(), hello.inode, &c("user.alcove"), 16).expect("getxattr") {
                    GetxattrReply::Value(v) => assert_eq!(v, b"v"),
                    GetxattrReply::Count(_) => panic!("asked for the value"),
                }
            }
        }
        ListxattrReply::Count(_) => panic!("asked for the names"),
    }
    // The passthrough's built-in init image is served from memory (the
    // memfd path of the adapter).
    let init = fs.lookup(ctx(), ROOT_ID, &c("init.krun")).expect("init.krun");
    let (ih, _) = fs.open(ctx(), init.inode, false, libc::O_RDONLY as u32).expect("open init");
    let mut out = Collect::default();
    let n = fs.read(ctx(), init.inode, ih.expect("handle"), &mut out, 4096, 0, None, 0).expect("read init");
    assert_eq!(n, out.0.len());
    assert_eq!(n as i64, init.attr.st_size.min(4096));
    fs.forget(ctx(), hello.inode, 1);
    fs.batch_forget(ctx(), vec![(sub.inode, 1), (link.inode, 1)]);

    // Names a kernel's path walk never sends, which would leave the share.
    for name in [".", "..", "sub/inner", ""] {
        assert_eq!(errno(fs.lookup(ctx(), ROOT_ID, &c(name))), libc::EINVAL, "{name}");
    }
    fs.destroy();
}

#[test]
fn every_mutation_is_refused_and_changes_nothing() {
    let t = tree();
    let before = snapshot(t.path());
    let fs = mounted(t.path());
    let hello = fs.lookup(ctx(), ROOT_ID, &c("hello")).expect("hello").inode;
    let sub = fs.lookup(ctx(), ROOT_ID, &c("sub")).expect("sub").inode;
    let (h, _) = fs.open(ctx(), hello, false, libc::O_RDONLY as u32).expect("open");
    let h = h.expect("handle");
    let ext = Extensions::default;
    let rofs = libc::EROFS;

    // SAFETY: stat64 is plain data.
    let mut attr: stat64 = unsafe { std::mem::zeroed() };
    attr.st_size = 0;
    attr.st_mode = 0o777;
    attr.st_uid = 1234;
    for valid in [SetattrValid::SIZE, SetattrValid::MODE, SetattrValid::UID, SetattrValid::MTIME, SetattrValid::empty()]
    {
        assert_eq!(errno(fs.setattr(ctx(), hello, attr, Some(h), valid)), rofs, "setattr {valid:?}");
        assert_eq!(errno(fs.setattr(ctx(), hello, attr, None, valid)), rofs, "setattr {valid:?}");
    }
    assert_eq!(errno(fs.symlink(ctx(), &c("hello"), ROOT_ID, &c("sym2"), ext())), rofs);
    let modes = [libc::S_IFREG | 0o644, libc::S_IFIFO | 0o644, libc::S_IFCHR | 0o644];
    for mode in modes {
        assert_eq!(errno(fs.mknod(ctx(), ROOT_ID, &c("node"), mode, 0, 0, ext())), rofs);
    }
    assert_eq!(errno(fs.mkdir(ctx(), ROOT_ID, &c("newdir"), 0o755, 0, ext())), rofs);
    assert_eq!(errno(fs.mkdir(ctx(), sub, &c("deeper"), 0o755, 0, ext())), rofs);
    assert_eq!(errno(fs.unlink(ctx(), ROOT_ID, &c("hello"))), rofs);
    assert_eq!(errno(fs.unlink(ctx(), sub, &c("inner"))), rofs);
    assert_eq!(errno(fs.rmdir(ctx(), ROOT_ID, &c("sub"))), rofs);
    for flags in [0, libc::RENAME_NOREPLACE, libc::RENAME_EXCHANGE] {
        assert_eq!(errno(fs.rename(ctx(), ROOT_ID, &c("hello"), sub, &c("inner"), flags)), rofs);
    }
    assert_eq!(errno(fs.rename(ctx(), ROOT_ID, &c("hello"), ROOT_ID, &c("renamed"), 0)), rofs);
    assert_eq!(errno(fs.link(ctx(), hello, ROOT_ID, &c("hard"))), rofs);
    let write_opens = [
        libc::O_WRONLY,
        libc::O_RDWR,
        libc::O_ACCMODE,
        libc::O_RDONLY | libc::O_TRUNC,
        libc::O_WRONLY | libc::O_TRUNC,
        libc::O_RDONLY | libc::O_APPEND,
        libc::O_RDONLY | libc::O_CREAT,
        libc::O_RDWR | libc::O_TMPFILE,
    ];
    for flags in write_opens {
        assert_eq!(errno(fs.open(ctx(), hello, false, flags as u32)), rofs, "open {flags:#o}");
        assert_eq!(errno(fs.open(ctx(), hello, true, flags as u32)), rofs, "open kill_priv {flags:#o}");
        assert_eq!(errno(fs.opendir(ctx(), sub, flags as u32)), rofs, "opendir {flags:#o}");
    }
    for flags in [libc::O_RDONLY, libc::O_WRONLY, libc::O_RDWR | libc::O_EXCL, libc::O_RDWR | libc::O_TRUNC] {
        let r = fs.create(ctx(), ROOT_ID, &c("created"), 0o644, false, flags as u32, 0, ext());
        assert_eq!(errno(r), rofs, "create {flags:#o}");
        let r = fs.create(ctx(), ROOT_ID, &c("hello"), 0o644, false, flags as u32, 0, ext());
        assert_eq!(errno(r), rofs, "create over an existing file {flags:#o}");
    }
    let mut data = Data(b"XXXXXXXXXXXXXXXX".to_vec());
    assert_eq!(errno(fs.write(ctx(), hello, h, &mut data, 16, 0, None, false, false, 0)), rofs);
    assert_eq!(errno(fs.write(ctx(), hello, h, &mut data, 16, 100, None, true, true, 0)), rofs);
    assert_eq!(data.0.len(), 16, "nothing was taken from the guest's buffer");
    for mode in [0, libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE, libc::FALLOC_FL_ZERO_RANGE] {
        assert_eq!(errno(fs.fallocate(ctx(), hello, h, mode as u32, 0, 4096)), rofs);
    }
    assert_eq!(errno(fs.setxattr(ctx(), hello, &c("user.new"), b"x", 0)), rofs);
    assert_eq!(errno(fs.setxattr(ctx(), hello, &c("user.alcove"), b"changed", 0)), rofs);
    assert_eq!(errno(fs.removexattr(ctx(), hello, &c("user.alcove"))), rofs);
    assert_eq!(errno(fs.copyfilerange(ctx(), hello, h, 0, hello, h, 6, 5, 0)), rofs);
    assert_eq!(errno(fs.access(ctx(), hello, libc::W_OK as u32)), rofs);
    assert_eq!(errno(fs.access(ctx(), sub, (libc::R_OK | libc::W_OK | libc::X_OK) as u32)), rofs);
    let write_map = SetupmappingFlags::WRITE.bits();
    assert_eq!(errno(fs.setupmapping(ctx(), hello, h, 0, 4096, write_map, 0, 0, 1 << 20)), rofs);
    let exit_code = Arc::new(AtomicI32::new(i32::MAX));
    // libkrun's exit-code (0x7602), root-directory removal (0x7603) and fd
    // export (_IOR('v', 1, 16)) requests, and an arbitrary one.
    for cmd in [0x7602u32, 0x7603, 0x8010_7601, libc::FS_IOC_SETFLAGS as u32] {
        assert_eq!(errno(fs.ioctl(ctx(), ROOT_ID, h, 0, cmd, 5, 0, 16, &exit_code)), rofs, "ioctl {cmd:#x}");
        assert_eq!(errno(fs.ioctl(ctx(), hello, h, 0, cmd, 5, 0, 16, &exit_code)), rofs, "ioctl {cmd:#x}");
    }
    assert_eq!(exit_code.load(std::sync::atomic::Ordering::SeqCst), i32::MAX);
    for r in [fs.getlk(), fs.setlk(), fs.setlkw(), fs.bmap(), fs.poll(), fs.notify_reply()] {
        assert_eq!(errno(r), libc::ENOSYS);
    }
    fs.release(ctx(), hello, 0, h, true, true, None).expect("release");
    fs.destroy();
    drop(fs);

    assert!(t.path().join("hello").exists(), "the tree is still there");
    assert_eq!(snapshot(t.path()), before, "the directory changed");
    let mut s = String::new();
    File::open(t.path().join("hello")).and_then(|mut f| f.read_to_string(&mut s)).expect("read back");
    assert_eq!(s, "hello world");
}

/// The same requests through the bare passthrough (what msb_krun's
/// `fs(tag, path)` serves) do change the directory: the refusals above are
/// the wrapper's, not an artefact of the test.
#[test]
fn the_bare_passthrough_would_have_written() {
    let t = tree();
    let before = snapshot(t.path());
    let cfg = Config { root_dir: t.path().to_str().expect("utf-8").into(), ..Config::default() };
    let fs = PassthroughFs::new(cfg).expect("passthrough");
    init_with(|| {
        fs.init(FsOptions::empty()).expect("init");
    });
    let hello = fs.lookup(ctx(), ROOT_ID, &c("hello")).expect("hello").inode;
    let (h, _) = fs.open(ctx(), hello, false, libc::O_RDWR as u32).expect("a writable open works");
    let h = h.expect("handle");
    fs.write(ctx(), hello, h, Data(b"HELLO".to_vec()), 5, 0, None, false, false, 0).expect("write");
    fs.mkdir(ctx(), ROOT_ID, &c("newdir"), 0o755, 0, Extensions::default()).expect("mkdir");
    fs.unlink(ctx(), ROOT_ID, &c("link")).expect("unlink");
    fs.release(ctx(), hello, 0, h, false, false, None).expect("release");
    assert_ne!(snapshot(t.path()), before);
    assert_eq!(fs::read(t.path().join("hello")).expect("read"), b"HELLO world");
    assert!(t.path().join("newdir").is_dir());
    assert!(!t.path().join("link").exists());
}

/// The passthrough's own readdirplus looks `..` up, which in the share's
/// root is the host directory above the share; the wrapper's does not.
#[test]
fn readdirplus_never_reaches_above_the_share() {
    let t = tree();
    let fs = mounted(t.path());
    let (dh, _) = fs.opendir(ctx(), ROOT_ID, libc::O_RDONLY as u32).expect("opendir");
    let dh = dh.expect("handle");
    let mut seen = BTreeMap::new();
    fs.readdirplus_for_each(ctx(), ROOT_ID, dh, 4096, 0, &mut |e: DirEntry, entry: Entry| {
        seen.insert(String::from_utf8_lossy(e.name).trim_end_matches('\0').to_string(), entry.inode);
        Ok(1)
    })
    .expect("readdirplus");
    assert_eq!(seen.get(".."), Some(&0), "{seen:?}");
    assert_eq!(seen.get("."), Some(&0), "{seen:?}");
    for name in ["hello", "sub", "link"] {
        let ino = *seen.get(name).expect(name);
        assert_ne!(ino, 0, "{name}");
        let (st, _) = fs.getattr(ctx(), ino, None).expect("getattr");
        assert_eq!(st.st_ino, fs::symlink_metadata(t.path().join(name)).expect("meta").ino(), "{name}");
    }
    fs.releasedir(ctx(), ROOT_ID, 0, dh).expect("releasedir");

    // The bare passthrough hands out the parent of the share.
    let cfg = Config { root_dir: t.path().to_str().expect("utf-8").into(), ..Config::default() };
    let bare = PassthroughFs::new(cfg).expect("passthrough");
    init_with(|| {
        bare.init(FsOptions::empty()).expect("init");
    });
    let (dh, _) = bare.opendir(ctx(), ROOT_ID, libc::O_RDONLY as u32).expect("opendir");
    let dh = dh.expect("handle");
    let mut parent = None;
    bare.readdirplus(ctx(), ROOT_ID, dh, 4096, 0, |e: DirEntry, entry: Entry| {
        if e.name == b".." {
            parent = Some(entry.attr.st_ino);
        }
        Ok(1)
    })
    .expect("readdirplus");
    let above = fs::metadata(t.path().parent().expect("parent")).expect("meta").ino();
    assert_eq!(parent, Some(above), "the bare passthrough's behaviour changed; revisit the wrapper");
}

#[test]
fn open_flags_are_classified() {
    for ok in [libc::O_RDONLY, libc::O_RDONLY | libc::O_DIRECTORY, libc::O_RDONLY | libc::O_NOATIME | libc::O_NONBLOCK]
    {
        assert!(open_flags_read_only(ok as u32), "{ok:#o}");
    }
    for bad in [libc::O_WRONLY, libc::O_RDWR, libc::O_RDONLY | libc::O_TRUNC, libc::O_APPEND, libc::O_TMPFILE] {
        assert!(!open_flags_read_only(bad as u32), "{bad:#o}");
    }
}

#[test]
fn a_non_utf8_directory_is_refused() {
    let p = PathBuf::from(std::ffi::OsStr::from_bytes(b"/tmp/not-\xff-utf8"));
    for mode in [ShareMode::ReadOnly, ShareMode::Writable] {
        let e = ShareFs::new(&p, mode).expect_err("refused");
        assert!(matches!(e, ShareFsError::NotUtf8(_)));
        assert!(e.to_string().contains("not valid UTF-8"), "{e}");
    }
    let e = ShareFs::writable(Path::new("/tmp/nul\0byte")).expect_err("refused");
    assert!(matches!(e, ShareFsError::Nul(_)), "{e}");
}

/// A share inside a directory of its own, so that what lies above the share
/// is a temporary directory the test can inspect.
fn nested() -> (tempfile::TempDir, PathBuf) {
    let outer = tempfile::tempdir().expect("tempdir");
    let share = outer.path().join("share");
    fs::create_dir(&share).expect("share");
    fs::write(share.join("hello"), "hello world").expect("hello");
    fs::write(outer.path().join("secret"), "outside").expect("secret");
    (outer, share)
}

/// What msb_krun's `fs(tag, path)` serves, initialised.
fn bare(dir: &Path) -> PassthroughFs {
    let cfg = Config { root_dir: dir.to_str().expect("utf-8").into(), ..Config::default() };
    let fs = PassthroughFs::new(cfg).expect("passthrough");
    init_with(|| {
        fs.init(FsOptions::empty()).expect("init");
    });
    fs
}

fn mounted_as(dir: &Path, mode: ShareMode) -> ShareFs {
    let fs = ShareFs::new(dir, mode).expect("share fs");
    assert_eq!(fs.mode(), mode);
    init_with(|| {
        fs.init(FsOptions::empty()).expect("init");
    });
    fs
}

/// The `..` entry's inode as a share's readdirplus of the root reports it.
fn dotdot_of_root(readdirplus: impl FnOnce(u64, &mut dyn FnMut(DirEntry, Entry) -> io::Result<usize>)) -> Option<u64> {
    let mut dotdot = None;
    readdirplus(ROOT_ID, &mut |e: DirEntry, entry: Entry| {
        if e.name == b".." {
            dotdot = Some(entry.inode);
        }
        Ok(1)
    });
    dotdot
}

/// The hole the wrapper closes: the bare passthrough resolves `..` and
/// `../name` against the share's root on the host, so a guest sending raw
/// FUSE requests gets the directory above the share, and through a writable
/// share writes there.
#[test]
fn the_bare_passthrough_escapes_the_share() {
    let (outer, share) = nested();
    let above = fs::metadata(outer.path()).expect("meta").ino();
    let fs = bare(&share);
    let ext = Extensions::default;

    // `lookup(ROOT, "..")` is the directory above the share ...
    let parent = fs.lookup(ctx(), ROOT_ID, &c("..")).expect("lookup ..");
    assert_eq!(parent.attr.st_ino, above, "the bare passthrough's behaviour changed; revisit the wrapper");
    // ... which the guest can then read and write through.
    let secret = fs.lookup(ctx(), parent.inode, &c("secret")).expect("a file outside the share");
    assert_eq!(secret.attr.st_size, 7);
    fs.mkdir(ctx(), parent.inode, &c("escaped"), 0o755, 0, ext()).expect("mkdir above the share");
    assert!(outer.path().join("escaped").is_dir());
    // A name with `/` gets there in one request.
    fs.mkdir(ctx(), ROOT_ID, &c("../escaped2"), 0o755, 0, ext()).expect("mkdir ../escaped2");
    assert!(outer.path().join("escaped2").is_dir());

    // readdirplus of the root registers the same inode.
    let (dh, _) = fs.opendir(ctx(), ROOT_ID, libc::O_RDONLY as u32).expect("opendir");
    let dh = dh.expect("handle");
    let dotdot = dotdot_of_root(|ino, add| {
        fs.readdirplus(ctx(), ino, dh, 4096, 0, add).expect("readdirplus");
    });
    assert_eq!(dotdot, Some(parent.inode), "readdirplus looked `..` up");
    fs.releasedir(ctx(), ROOT_ID, 0, dh).expect("releasedir");
}

/// The same requests through the wrapper, in both modes: `..` is never
/// resolved, every malformed name is refused, and nothing above (or in) the
/// share changes.
#[test]
fn the_wrapper_refuses_the_escape_in_both_modes() {
    for mode in [ShareMode::ReadOnly, ShareMode::Writable] {
        let (outer, share) = nested();
        let before = snapshot(outer.path());
        let fs = mounted_as(&share, mode);
        let ext = Extensions::default;
        // Writable shares refuse the name; read-only ones refuse the write.
        let want = match mode {
            ShareMode::Writable => libc::EINVAL,
            ShareMode::ReadOnly => libc::EROFS,
        };
        let hello = fs.lookup(ctx(), ROOT_ID, &c("hello")).expect("hello").inode;

        for name in ["..", ".", "../secret", "a/b", "/", ""] {
            assert_eq!(errno(fs.lookup(ctx(), ROOT_ID, &c(name))), libc::EINVAL, "{mode:?} lookup {name:?}");
        }
        for name in ["..", ".", "../escaped", "a/b", "/abs", ""] {
            let n = c(name);
            let m = format!("{mode:?} {name:?}");
            let r = fs.create(ctx(), ROOT_ID, &n, 0o644, false, libc::O_RDWR as u32, 0, ext());
            assert_eq!(errno(r), want, "create {m}");
            assert_eq!(errno(fs.mkdir(ctx(), ROOT_ID, &n, 0o755, 0, ext())), want, "mkdir {m}");
            let r = fs.mknod(ctx(), ROOT_ID, &n, libc::S_IFIFO | 0o644, 0, 0, ext());
            assert_eq!(errno(r), want, "mknod {m}");
            assert_eq!(errno(fs.symlink(ctx(), &c("hello"), ROOT_ID, &n, ext())), want, "symlink {m}");
            assert_eq!(errno(fs.link(ctx(), hello, ROOT_ID, &n)), want, "link {m}");
            assert_eq!(errno(fs.rename(ctx(), ROOT_ID, &n, ROOT_ID, &c("x"), 0)), want, "rename from {m}");
            assert_eq!(errno(fs.rename(ctx(), ROOT_ID, &c("hello"), ROOT_ID, &n, 0)), want, "rename to {m}");
            assert_eq!(errno(fs.unlink(ctx(), ROOT_ID, &n)), want, "unlink {m}");
            assert_eq!(errno(fs.rmdir(ctx(), ROOT_ID, &n)), want, "rmdir {m}");
        }

        // readdirplus of the root answers `..` without attributes.
        let (dh, _) = fs.opendir(ctx(), ROOT_ID, libc::O_RDONLY as u32).expect("opendir");
        let dh = dh.expect("handle");
        let dotdot = dotdot_of_root(|ino, add| {
            fs.readdirplus_for_each(ctx(), ino, dh, 4096, 0, add).expect("readdirplus");
        });
        assert_eq!(dotdot, Some(0), "{mode:?}");
        fs.releasedir(ctx(), ROOT_ID, 0, dh).expect("releasedir");

        fs.destroy();
        drop(fs);
        assert_eq!(snapshot(outer.path()), before, "{mode:?}: the directories changed");
    }
}

/// Writable shares delegate the ordinary work inside the share: files and
/// directories are created, written, renamed, linked and removed on the
/// host; `init` negotiates what the bare passthrough would; the exit-code
/// ioctl reaches the VM's exit-code cell.
#[test]
fn writable_mode_works_inside_the_share() {
    let t = tree();
    let root = t.path();
    let ext = Extensions::default;
    let fs = ShareFs::writable(root).expect("writable fs");
    assert_eq!(fs.mode(), ShareMode::Writable);
    let capable = FsOptions::WRITEBACK_CACHE | FsOptions::SUBMOUNTS | FsOptions::ASYNC_READ;
    let mut ours = None;
    init_with(|| ours = Some(fs.init(capable).expect("init")));
    let other = tempfile::tempdir().expect("tempdir");
    let bare_fs =
        PassthroughFs::new(Config { root_dir: other.path().to_str().expect("utf-8").into(), ..Config::default() })
            .expect("passthrough");
    let mut theirs = None;
    init_with(|| theirs = Some(bare_fs.init(capable).expect("init")));
    assert_eq!(ours, theirs, "init is delegated unchanged");

    // Create and write a file, read it back.
    let (new, h, _) =
        fs.create(ctx(), ROOT_ID, &c("new"), 0o640, false, libc::O_RDWR as u32, 0, ext()).expect("create");
    let h = h.expect("a handle");
    let mut data = Data(b"some data".to_vec());
    assert_eq!(fs.write(ctx(), new.inode, h, &mut data, 9, 0, None, false, false, 0).expect("write"), 9);
    let mut out = Collect::default();
    fs.read(ctx(), new.inode, h, &mut out, 64, 0, None, 0).expect("read");
    assert_eq!(out.0, b"some data");
    fs.fsync(ctx(), new.inode, false, h).expect("fsync");
    fs.release(ctx(), new.inode, 0, h, true, false, None).expect("release");
    assert_eq!(fs::read(root.join("new")).expect("host"), b"some data");
    assert_eq!(fs::metadata(root.join("new")).expect("meta").mode() & 0o777, 0o640);

    // Rewrite an existing file through a writable open.
    let hello = fs.lookup(ctx(), ROOT_ID, &c("hello")).expect("hello");
    fs.access(ctx(), hello.inode, libc::W_OK as u32).expect("access W_OK");
    let (hh, _) = fs.open(ctx(), hello.inode, false, libc::O_RDWR as u32).expect("open O_RDWR");
    let hh = hh.expect("handle");
    fs.write(ctx(), hello.inode, hh, &mut Data(b"HELLO".to_vec()), 5, 0, None, false, false, 0).expect("write");
    fs.release(ctx(), hello.inode, 0, hh, true, false, None).expect("release");
    assert_eq!(fs::read(root.join("hello")).expect("host"), b"HELLO world");

    // Directories, nodes, links, renames, attributes.
    let dir = fs.mkdir(ctx(), ROOT_ID, &c("dir"), 0o750, 0, ext()).expect("mkdir");
    assert!(root.join("dir").is_dir());
    fs.mknod(ctx(), ROOT_ID, &c("fifo"), libc::S_IFIFO | 0o644, 0, 0, ext()).expect("mknod");
    assert!(std::os::unix::fs::FileTypeExt::is_fifo(
        &fs::symlink_metadata(root.join("fifo")).expect("meta").file_type()
    ));
    fs.symlink(ctx(), &c("hello"), ROOT_ID, &c("sym"), ext()).expect("symlink");
    assert_eq!(fs::read_link(root.join("sym")).expect("readlink"), Path::new("hello"));
    fs.link(ctx(), new.inode, dir.inode, &c("hard")).expect("link");
    assert_eq!(fs::metadata(root.join("new")).expect("meta").nlink(), 2);
    fs.rename(ctx(), ROOT_ID, &c("new"), dir.inode, &c("moved"), 0).expect("rename");
    assert!(!root.join("new").exists());
    assert_eq!(fs::read(root.join("dir/moved")).expect("moved"), b"some data");
    // SAFETY: stat64 is plain data.
    let mut attr: stat64 = unsafe { std::mem::zeroed() };
    attr.st_size = 4;
    fs.setattr(ctx(), new.inode, attr, None, SetattrValid::SIZE).expect("truncate");
    assert_eq!(fs::read(root.join("dir/moved")).expect("moved"), b"some");

    // Removal.
    assert_eq!(errno(fs.rmdir(ctx(), ROOT_ID, &c("dir"))), libc::ENOTEMPTY);
    fs.unlink(ctx(), dir.inode, &c("hard")).expect("unlink hard");
    fs.unlink(ctx(), dir.inode, &c("moved")).expect("unlink moved");
    fs.unlink(ctx(), ROOT_ID, &c("sym")).expect("unlink sym");
    fs.unlink(ctx(), ROOT_ID, &c("fifo")).expect("unlink fifo");
    fs.rmdir(ctx(), ROOT_ID, &c("dir")).expect("rmdir");
    for gone in ["dir", "sym", "fifo", "new"] {
        assert!(fs::symlink_metadata(root.join(gone)).is_err(), "{gone}");
    }

    // The exit-code ioctl (what the guest's init sends on the boot share)
    // reaches the cell; root removal is off; fd export has no table.
    let exit_code = Arc::new(AtomicI32::new(i32::MAX));
    fs.ioctl(ctx(), ROOT_ID, 0, 0, 0x7602, 42, 0, 0, &exit_code).expect("exit-code ioctl");
    assert_eq!(exit_code.load(std::sync::atomic::Ordering::SeqCst), 42);
    assert_eq!(errno(fs.ioctl(ctx(), ROOT_ID, 0, 0, 0x7603, 0, 0, 0, &exit_code)), libc::EOPNOTSUPP);
    assert!(root.join("hello").exists(), "the share's directory is still there");
    assert_eq!(errno(fs.ioctl(ctx(), ROOT_ID, 0, 0, 0x8010_7601, 0, 0, 16, &exit_code)), libc::EOPNOTSUPP);
    for r in [fs.getlk(), fs.setlk(), fs.setlkw(), fs.bmap(), fs.poll(), fs.notify_reply()] {
        assert_eq!(errno(r), libc::ENOSYS);
    }
    fs.destroy();
}

/// The `io::Read` side of the write adapter copies what the transport holds.
#[test]
fn the_write_adapter_reads_into_memory() {
    let mut data = Data(b"abcdef".to_vec());
    let mut src = Source(&mut data);
    let mut buf = [0u8; 4];
    assert_eq!(io::Read::read(&mut src, &mut buf).expect("read"), 4);
    assert_eq!(&buf, b"abcd");
    let mut rest = Vec::new();
    io::Read::read_to_end(&mut src, &mut rest).expect("read to end");
    assert_eq!(rest, b"ef");
}

#[test]
fn plain_names_are_classified() {
    for ok in ["a", "hello.txt", "...", ".hidden", "..x", "x.."] {
        assert!(is_plain_name(ok.as_bytes()), "{ok}");
    }
    for bad in ["", ".", "..", "/", "a/b", "../x", "x/"] {
        assert!(!is_plain_name(bad.as_bytes()), "{bad}");
    }
}
