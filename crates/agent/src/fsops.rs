//! File operations of `FsRequest`.
//!
//! One-shot operations (stat, list, mkdir, remove, rename, copy) are plain
//! functions returning `Result<FsReply, FsError>`; the server runs them on a
//! worker thread. Streaming reads and writes keep state in [`ReadStream`] and
//! [`WriteStream`], driven by the server's loop under flow control.
//!
//! Invariants: every path must be absolute; every error names the path it is
//! about; a write goes to a temporary file in the destination's directory and
//! is renamed over the destination only when the client sends `FsEnd`, so a
//! reader never sees a half-written file and an aborted write leaves the old
//! content in place.

use alcove_protocol::{DirEntry, FileKind, FileStat, FsError, FsErrorKind, FsReply, FsRequest};
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Maps an I/O error to the protocol's kinds.
pub fn kind_of(e: &io::Error) -> FsErrorKind {
    match e.raw_os_error() {
        Some(libc::ENOENT) => FsErrorKind::NotFound,
        Some(libc::EACCES) | Some(libc::EPERM) | Some(libc::EROFS) => FsErrorKind::PermissionDenied,
        Some(libc::EEXIST) => FsErrorKind::AlreadyExists,
        Some(libc::ENOTDIR) => FsErrorKind::NotADirectory,
        Some(libc::EISDIR) => FsErrorKind::IsADirectory,
        Some(libc::ENOTEMPTY) => FsErrorKind::DirectoryNotEmpty,
        Some(libc::EINVAL) | Some(libc::ENAMETOOLONG) => FsErrorKind::InvalidInput,
        _ => match e.kind() {
            io::ErrorKind::NotFound => FsErrorKind::NotFound,
            io::ErrorKind::PermissionDenied => FsErrorKind::PermissionDenied,
            io::ErrorKind::AlreadyExists => FsErrorKind::AlreadyExists,
            io::ErrorKind::InvalidInput => FsErrorKind::InvalidInput,
            _ => FsErrorKind::Other,
        },
    }
}

/// An error about `path` while doing `what`.
pub fn fs_err(what: &str, path: &Path, e: &io::Error) -> FsError {
    FsError { kind: kind_of(e), message: format!("{what} {}: {e}", path.display()) }
}

fn invalid(message: String) -> FsError {
    FsError { kind: FsErrorKind::InvalidInput, message }
}

/// Checks that a request path is absolute and has no NUL.
pub fn check_path(p: &str) -> Result<PathBuf, FsError> {
    if !p.starts_with('/') {
        return Err(invalid(format!("path {p:?} is not absolute")));
    }
    if p.contains('\0') {
        return Err(invalid(format!("path {p:?} contains a NUL byte")));
    }
    Ok(PathBuf::from(p))
}

/// Metadata in protocol form (not following a final symlink).
pub fn stat_path(path: &Path) -> io::Result<FileStat> {
    let md = fs::symlink_metadata(path)?;
    let ft = md.file_type();
    let kind = if ft.is_file() {
        FileKind::File
    } else if ft.is_dir() {
        FileKind::Dir
    } else if ft.is_symlink() {
        FileKind::Symlink
    } else {
        FileKind::Other
    };
    let link_target =
        if ft.is_symlink() { fs::read_link(path).ok().map(|t| t.to_string_lossy().into_owned()) } else { None };
    Ok(FileStat { kind, size: md.len(), mode: md.mode(), uid: md.uid(), gid: md.gid(), mtime: md.mtime(), link_target })
}

/// Runs a one-shot request. `Read` and `Write` are streams and are refused here.
pub fn run_oneshot(req: &FsRequest) -> Result<FsReply, FsError> {
    match req {
        FsRequest::Stat { path } => {
            let p = check_path(path)?;
            stat_path(&p).map(FsReply::Stat).map_err(|e| fs_err("stat", &p, &e))
        }
        FsRequest::List { path } => list(&check_path(path)?),
        FsRequest::Mkdir { path, parents, mode } => mkdir(&check_path(path)?, *parents, *mode),
        FsRequest::Remove { path, recursive } => remove(&check_path(path)?, *recursive),
        FsRequest::Rename { from, to } => {
            let (f, t) = (check_path(from)?, check_path(to)?);
            fs::rename(&f, &t).map(|_| FsReply::Done { bytes: 0 }).map_err(|e| FsError {
                kind: kind_of(&e),
                message: format!("rename {} to {}: {e}", f.display(), t.display()),
            })
        }
        FsRequest::Copy { from, to } => copy(&check_path(from)?, &check_path(to)?),
        FsRequest::Read { .. } | FsRequest::Write { .. } => {
            Err(invalid("read and write are streamed, not one-shot".into()))
        }
    }
}

fn list(p: &Path) -> Result<FsReply, FsError> {
    let rd = fs::read_dir(p).map_err(|e| fs_err("list", p, &e))?;
    let mut entries = Vec::new();
    for ent in rd {
        let ent = ent.map_err(|e| fs_err("list", p, &e))?;
        let path = ent.path();
        let stat = match stat_path(&path) {
            Ok(s) => s,
            // Removed between readdir and lstat: skip it.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(fs_err("stat", &path, &e)),
        };
        entries.push(DirEntry { name: ent.file_name().to_string_lossy().into_owned(), stat });
    }
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(FsReply::List(entries))
}

fn mkdir(p: &Path, parents: bool, mode: u32) -> Result<FsReply, FsError> {
    let mut b = fs::DirBuilder::new();
    b.recursive(parents).mode(mode & 0o7777);
    match b.create(p) {
        Ok(()) => {}
        Err(e) => return Err(fs_err("mkdir", p, &e)),
    }
    // `recursive` accepts an existing directory but also silently accepts
    // nothing else; make sure the result is a directory.
    match fs::metadata(p) {
        Ok(md) if md.is_dir() => Ok(FsReply::Done { bytes: 0 }),
        Ok(_) => Err(FsError {
            kind: FsErrorKind::AlreadyExists,
            message: format!("mkdir {}: a non-directory exists there", p.display()),
        }),
        Err(e) => Err(fs_err("mkdir", p, &e)),
    }
}

fn remove(p: &Path, recursive: bool) -> Result<FsReply, FsError> {
    let md = fs::symlink_metadata(p).map_err(|e| fs_err("remove", p, &e))?;
    let r = if md.is_dir() {
        if recursive {
            fs::remove_dir_all(p)
        } else {
            fs::remove_dir(p)
        }
    } else {
        fs::remove_file(p)
    };
    r.map(|_| FsReply::Done { bytes: 0 }).map_err(|e| fs_err("remove", p, &e))
}

fn copy(from: &Path, to: &Path) -> Result<FsReply, FsError> {
    let md = fs::symlink_metadata(from).map_err(|e| fs_err("copy", from, &e))?;
    if md.is_dir() {
        if to.starts_with(from) {
            return Err(invalid(format!("copy {} into itself ({})", from.display(), to.display())));
        }
        if fs::symlink_metadata(to).is_ok() {
            return Err(FsError {
                kind: FsErrorKind::AlreadyExists,
                message: format!("copy {} to {}: the destination exists", from.display(), to.display()),
            });
        }
        let mut bytes = 0;
        copy_tree(from, to, &mut bytes)?;
        Ok(FsReply::Done { bytes })
    } else {
        copy_entry(from, to, &md).map(|bytes| FsReply::Done { bytes })
    }
}

fn copy_entry(from: &Path, to: &Path, md: &fs::Metadata) -> Result<u64, FsError> {
    if md.file_type().is_symlink() {
        let target = fs::read_link(from).map_err(|e| fs_err("readlink", from, &e))?;
        std::os::unix::fs::symlink(&target, to).map_err(|e| fs_err("symlink", to, &e))?;
        Ok(0)
    } else if md.is_file() {
        fs::copy(from, to).map_err(|e| FsError {
            kind: kind_of(&e),
            message: format!("copy {} to {}: {e}", from.display(), to.display()),
        })
    } else {
        Err(FsError {
            kind: FsErrorKind::Other,
            message: format!("copy {}: not a regular file, directory or symlink", from.display()),
        })
    }
}

fn copy_tree(from: &Path, to: &Path, bytes: &mut u64) -> Result<(), FsError> {
    let md = fs::symlink_metadata(from).map_err(|e| fs_err("copy", from, &e))?;
    fs::DirBuilder::new().mode(md.mode() & 0o7777).create(to).map_err(|e| fs_err("mkdir", to, &e))?;
    for ent in fs::read_dir(from).map_err(|e| fs_err("list", from, &e))? {
        let ent = ent.map_err(|e| fs_err("list", from, &e))?;
        let (src, dst) = (ent.path(), to.join(ent.file_name()));
        let emd = fs::symlink_metadata(&src).map_err(|e| fs_err("stat", &src, &e))?;
        if emd.is_dir() {
            copy_tree(&src, &dst, bytes)?;
        } else {
            *bytes += copy_entry(&src, &dst, &emd)?;
        }
    }
    // The directory's mode again, in case umask or a read-only mode interfered.
    fs::set_permissions(to, fs::Permissions::from_mode(md.mode() & 0o7777)).map_err(|e| fs_err("chmod", to, &e))?;
    Ok(())
}

/// A file being streamed to the client.
#[derive(Debug)]
pub struct ReadStream {
    file: fs::File,
    path: PathBuf,
    /// Bytes read so far.
    pub bytes: u64,
    /// Whether end of file was reached.
    pub eof: bool,
}

impl ReadStream {
    /// Opens `path` for streaming; directories are refused.
    pub fn open(path: &str) -> Result<ReadStream, FsError> {
        let p = check_path(path)?;
        let file = fs::File::open(&p).map_err(|e| fs_err("read", &p, &e))?;
        let md = file.metadata().map_err(|e| fs_err("read", &p, &e))?;
        if md.is_dir() {
            return Err(FsError {
                kind: FsErrorKind::IsADirectory,
                message: format!("read {}: is a directory", p.display()),
            });
        }
        Ok(ReadStream { file, path: p, bytes: 0, eof: false })
    }

    /// Reads up to `max` bytes; an empty result means end of file.
    pub fn next_chunk(&mut self, max: usize) -> Result<Vec<u8>, FsError> {
        let mut buf = vec![0u8; max];
        let n = loop {
            match self.file.read(&mut buf) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(fs_err("read", &self.path, &e)),
            }
        };
        buf.truncate(n);
        self.bytes += n as u64;
        if n == 0 {
            self.eof = true;
        }
        Ok(buf)
    }
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A file being received from the client.
#[derive(Debug)]
pub struct WriteStream {
    file: Option<fs::File>,
    tmp: PathBuf,
    dest: PathBuf,
    /// Bytes written so far.
    pub bytes: u64,
}

impl WriteStream {
    /// Starts a write to `path`: checks the destination and creates the
    /// temporary file with the final mode (a new file gets `mode`, an
    /// existing one keeps its mode and owner).
    pub fn create(path: &str, mode: u32) -> Result<WriteStream, FsError> {
        let dest = check_path(path)?;
        // Write through a final symlink, like open(O_TRUNC) would.
        let dest = match fs::symlink_metadata(&dest) {
            Ok(md) if md.file_type().is_symlink() => fs::canonicalize(&dest).unwrap_or(dest),
            _ => dest,
        };
        let existing = match fs::metadata(&dest) {
            Ok(md) if md.is_dir() => {
                return Err(FsError {
                    kind: FsErrorKind::IsADirectory,
                    message: format!("write {}: is a directory", dest.display()),
                })
            }
            Ok(md) => Some(md),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(fs_err("write", &dest, &e)),
        };
        let (Some(parent), Some(name)) = (dest.parent(), dest.file_name()) else {
            return Err(invalid(format!("write {}: not a file path", dest.display())));
        };
        let tmp = parent.join(format!(
            ".{}.alcove-tmp-{}-{}",
            name.to_string_lossy(),
            std::process::id(),
            TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let final_mode = existing.as_ref().map(|m| m.mode()).unwrap_or(mode) & 0o7777;
        let file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| fs_err("write", &dest, &e))?;
        let mut ws = WriteStream { file: Some(file), tmp, dest, bytes: 0 };
        if let Some(f) = &ws.file {
            if let Some(md) = &existing {
                // Keep the owner of a replaced file; failures (not root) are not fatal.
                let _ = std::os::unix::fs::fchown(f, Some(md.uid()), Some(md.gid()));
            }
            if let Err(e) = f.set_permissions(fs::Permissions::from_mode(final_mode)) {
                let err = fs_err("chmod", &ws.dest, &e);
                ws.abort();
                return Err(err);
            }
        }
        Ok(ws)
    }

    /// Appends a chunk.
    pub fn write_chunk(&mut self, data: &[u8]) -> Result<(), FsError> {
        let Some(f) = self.file.as_mut() else {
            return Err(invalid(format!("write {}: the stream is closed", self.dest.display())));
        };
        f.write_all(data).map_err(|e| fs_err("write", &self.dest, &e))?;
        self.bytes += data.len() as u64;
        Ok(())
    }

    /// Renames the temporary file over the destination.
    pub fn finish(mut self) -> Result<u64, FsError> {
        let f = self.file.take();
        drop(f);
        match fs::rename(&self.tmp, &self.dest) {
            Ok(()) => {
                // Nothing left to clean up.
                self.tmp = PathBuf::new();
                Ok(self.bytes)
            }
            Err(e) => Err(fs_err("write", &self.dest, &e)),
        }
    }

    /// Drops the temporary file.
    pub fn abort(&mut self) {
        self.file = None;
        if !self.tmp.as_os_str().is_empty() {
            let _ = fs::remove_file(&self.tmp);
            self.tmp = PathBuf::new();
        }
    }
}

impl Drop for WriteStream {
    fn drop(&mut self) {
        self.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(dir: &Path, rel: &str) -> String {
        dir.join(rel).to_string_lossy().into_owned()
    }

    #[test]
    fn relative_paths_are_refused() {
        let e = run_oneshot(&FsRequest::Stat { path: "etc/passwd".into() }).expect_err("relative");
        assert_eq!(e.kind, FsErrorKind::InvalidInput);
        assert!(e.message.contains("etc/passwd"));
    }

    #[test]
    fn mkdir_list_stat_remove() {
        let d = tempfile::tempdir().expect("tempdir");
        let deep = p(d.path(), "a/b/c");
        assert_eq!(
            run_oneshot(&FsRequest::Mkdir { path: deep.clone(), parents: false, mode: 0o755 })
                .expect_err("no parents")
                .kind,
            FsErrorKind::NotFound
        );
        run_oneshot(&FsRequest::Mkdir { path: deep.clone(), parents: true, mode: 0o750 }).expect("mkdir -p");
        run_oneshot(&FsRequest::Mkdir { path: deep.clone(), parents: true, mode: 0o750 }).expect("mkdir -p twice");
        assert_eq!(
            run_oneshot(&FsRequest::Mkdir { path: deep.clone(), parents: false, mode: 0o750 })
                .expect_err("exists")
                .kind,
            FsErrorKind::AlreadyExists
        );
        fs::write(d.path().join("a/z.txt"), b"12345").expect("write");
        std::os::unix::fs::symlink("z.txt", d.path().join("a/link")).expect("symlink");
        let FsReply::List(entries) = run_oneshot(&FsRequest::List { path: p(d.path(), "a") }).expect("list") else {
            panic!("not a list")
        };
        let names: Vec<_> = entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, vec!["b", "link", "z.txt"]);
        assert_eq!(entries[1].stat.kind, FileKind::Symlink);
        assert_eq!(entries[1].stat.link_target.as_deref(), Some("z.txt"));
        assert_eq!((entries[2].stat.kind, entries[2].stat.size), (FileKind::File, 5));
        let FsReply::Stat(st) = run_oneshot(&FsRequest::Stat { path: deep.clone() }).expect("stat") else {
            panic!("not a stat")
        };
        assert_eq!((st.kind, st.mode & 0o777), (FileKind::Dir, 0o750));
        let e = run_oneshot(&FsRequest::Remove { path: p(d.path(), "a"), recursive: false }).expect_err("not empty");
        assert_eq!(e.kind, FsErrorKind::DirectoryNotEmpty);
        run_oneshot(&FsRequest::Remove { path: p(d.path(), "a"), recursive: true }).expect("rm -r");
        let e = run_oneshot(&FsRequest::Stat { path: p(d.path(), "a") }).expect_err("gone");
        assert_eq!(e.kind, FsErrorKind::NotFound);
        assert!(e.message.contains(&p(d.path(), "a")), "{}", e.message);
    }

    #[test]
    fn copy_and_rename_trees() {
        let d = tempfile::tempdir().expect("tempdir");
        fs::create_dir_all(d.path().join("src/sub")).expect("mkdir");
        fs::write(d.path().join("src/one"), b"111").expect("write");
        fs::write(d.path().join("src/sub/two"), b"2222").expect("write");
        std::os::unix::fs::symlink("one", d.path().join("src/ln")).expect("symlink");
        let r = run_oneshot(&FsRequest::Copy { from: p(d.path(), "src"), to: p(d.path(), "dst") }).expect("copy");
        assert_eq!(r, FsReply::Done { bytes: 7 });
        assert_eq!(fs::read(d.path().join("dst/sub/two")).expect("read"), b"2222");
        assert_eq!(fs::read_link(d.path().join("dst/ln")).expect("link"), Path::new("one"));
        let again =
            run_oneshot(&FsRequest::Copy { from: p(d.path(), "src"), to: p(d.path(), "dst") }).expect_err("exists");
        assert_eq!(again.kind, FsErrorKind::AlreadyExists);
        let into = run_oneshot(&FsRequest::Copy { from: p(d.path(), "src"), to: p(d.path(), "src/sub/x") })
            .expect_err("into itself");
        assert_eq!(into.kind, FsErrorKind::InvalidInput);
        run_oneshot(&FsRequest::Copy { from: p(d.path(), "src/one"), to: p(d.path(), "copy1") }).expect("file copy");
        run_oneshot(&FsRequest::Rename { from: p(d.path(), "copy1"), to: p(d.path(), "renamed") }).expect("rename");
        assert_eq!(fs::read(d.path().join("renamed")).expect("read"), b"111");
        assert!(!d.path().join("copy1").exists());
    }

    #[test]
    fn writes_are_atomic_and_keep_modes() {
        let d = tempfile::tempdir().expect("tempdir");
        let target = p(d.path(), "f");
        let mut w = WriteStream::create(&target, 0o640).expect("create");
        w.write_chunk(b"hello ").expect("chunk");
        w.write_chunk(b"world").expect("chunk");
        assert!(!d.path().join("f").exists(), "destination appears only at the end");
        assert_eq!(w.finish().expect("finish"), 11);
        assert_eq!(fs::read(d.path().join("f")).expect("read"), b"hello world");
        assert_eq!(fs::metadata(d.path().join("f")).expect("md").mode() & 0o777, 0o640);
        // An aborted rewrite keeps the old content and leaves no temp file.
        let mut w = WriteStream::create(&target, 0o600).expect("create");
        w.write_chunk(b"partial").expect("chunk");
        drop(w);
        assert_eq!(fs::read(d.path().join("f")).expect("read"), b"hello world");
        assert_eq!(fs::read_dir(d.path()).expect("dir").count(), 1);
        // A rewrite keeps the existing mode.
        let w = WriteStream::create(&target, 0o600).expect("create");
        w.finish().expect("finish");
        assert_eq!(fs::metadata(d.path().join("f")).expect("md").mode() & 0o777, 0o640);
        assert_eq!(WriteStream::create(&p(d.path(), ""), 0o600).expect_err("dir").kind, FsErrorKind::IsADirectory);
        assert_eq!(
            WriteStream::create(&p(d.path(), "no/such"), 0o600).expect_err("no parent").kind,
            FsErrorKind::NotFound
        );
    }

    #[test]
    fn reads_stream_in_chunks() {
        let d = tempfile::tempdir().expect("tempdir");
        fs::write(d.path().join("f"), vec![7u8; 10]).expect("write");
        let mut r = ReadStream::open(&p(d.path(), "f")).expect("open");
        assert_eq!(r.next_chunk(4).expect("chunk").len(), 4);
        assert_eq!(r.next_chunk(100).expect("chunk").len(), 6);
        assert!(r.next_chunk(100).expect("eof").is_empty());
        assert!(r.eof);
        assert_eq!(r.bytes, 10);
        assert_eq!(ReadStream::open(&p(d.path(), "")).expect_err("dir").kind, FsErrorKind::IsADirectory);
    }
}
