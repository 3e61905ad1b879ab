//! Safe extraction of (possibly hostile) tar streams into a directory, with OCI/docker layer
//! semantics.
//!
//! Invariants, which hold for any archive content:
//! - Nothing is ever created, modified or removed outside the extraction root. Entry paths
//!   must be relative and free of `..`; every parent component of an entry must be a real
//!   directory inside the root (a symlink or a file as a parent refuses the entry), and the
//!   final component is opened with `O_NOFOLLOW`/`O_EXCL` after removing whatever was there.
//!   No symlink is ever followed while extracting. The root directory is private to the
//!   importing process, so these `lstat` checks cannot race with anyone.
//! - Refused: absolute paths, `..` components, relative symlinks whose target climbs above the
//!   root (resolved against the entry's directory), hard links whose target is absolute,
//!   contains `..`, or does not already exist in the tree, and fifos. Absolute symlink
//!   targets are allowed: they are resolved inside the guest, and this crate never follows
//!   them.
//! - Character and block devices are skipped, never created, and counted per directory
//!   ([`Extractor::skipped_devices`]): trees made by debootstrap carry `/dev/null` and the
//!   like, and the sandbox mounts its own `/dev` anyway.
//! - No file of the tree is setuid or setgid on the host: those bits are cleared on regular
//!   files (other users of the host could otherwise run a setuid-root binary from the store;
//!   inside the sandbox `no_new_privs` makes them useless anyway). Other modes (sticky
//!   included) and symlinks are preserved; ownership and mtimes are preserved when running as
//!   root (mtimes always). Directory metadata is applied last,
//!   deepest first, so read-only directories do not block their own contents.
//! - Layer mode: `.wh.NAME` deletes `NAME` from lower layers and `.wh..wh..opq` empties its
//!   directory of lower-layer contents. Whiteouts are applied in a first pass over the layer,
//!   so entries of the same layer are never removed by them whatever their order.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::error::{IoContext, RootfsError};
use crate::fsutil::is_root;

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_MARKER: &str = ".wh..wh..opq";
const AUFS_META_PREFIX: &str = ".wh..wh.";
/// Setuid and setgid, cleared on every regular file extracted.
const SETID_BITS: u32 = 0o6000;

#[derive(Debug, Clone, Copy)]
struct Meta {
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: u64,
}

/// Extracts tar streams into one root directory; see the module docs for the guarantees.
pub(crate) struct Extractor {
    root: PathBuf,
    as_root: bool,
    dirs: BTreeMap<PathBuf, Meta>,
    skipped_devices: BTreeMap<PathBuf, usize>,
}

/// A cleaned, relative entry path: its normal components only.
type Rel = Vec<OsString>;

fn lossy(raw: &[u8]) -> String {
    String::from_utf8_lossy(raw).into_owned()
}

/// Splits an archive path into normal components, refusing absolute paths and `..`.
fn clean(raw: &[u8], what: &str) -> Result<Rel, String> {
    if raw.first() == Some(&b'/') {
        return Err(format!("{what} is an absolute path"));
    }
    let mut out = Vec::new();
    for c in Path::new(OsStr::from_bytes(raw)).components() {
        match c {
            Component::Normal(n) => out.push(n.to_os_string()),
            Component::CurDir => {}
            Component::ParentDir => return Err(format!("{what} contains a `..` component")),
            Component::RootDir | Component::Prefix(_) => return Err(format!("{what} is an absolute path")),
        }
    }
    Ok(out)
}

fn join(rel: &[OsString]) -> PathBuf {
    rel.iter().collect()
}

fn to_time(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

impl Extractor {
    /// An extractor writing into `root`, which must exist and be private to this process.
    pub(crate) fn new(root: &Path) -> Extractor {
        Extractor {
            root: root.to_path_buf(),
            as_root: is_root(),
            dirs: BTreeMap::new(),
            skipped_devices: BTreeMap::new(),
        }
    }

    /// The device nodes skipped so far, as one line for the user (`None` if there were none):
    /// how many, and in which directories.
    pub(crate) fn skipped_devices(&self) -> Option<String> {
        let total: usize = self.skipped_devices.values().sum();
        if total == 0 {
            return None;
        }
        let dirs: Vec<String> = self.skipped_devices.keys().map(|d| format!("/{}", d.display())).collect();
        let noun = if total == 1 { "device node" } else { "device nodes" };
        Some(format!("skipped {total} {noun} in {} (a sandbox gets its own /dev)", dirs.join(", ")))
    }

    /// Checks that every component of `parents` below the root is a real directory, creating
    /// missing ones when `create`. Returns `Ok(false)` when one is missing and not created.
    fn check_parents(&self, parents: &[OsString], create: bool, entry: &str) -> Result<bool, RootfsError> {
        let mut p = self.root.clone();
        for (i, c) in parents.iter().enumerate() {
            p.push(c);
            match fs::symlink_metadata(&p) {
                Ok(m) if m.is_dir() => {}
                Ok(m) if m.file_type().is_symlink() => {
                    return Err(RootfsError::hostile(
                        entry,
                        format!(
                            "its parent {:?} is a symlink, and writing through it could escape the root",
                            join(&parents[..=i])
                        ),
                    ))
                }
                Ok(_) => {
                    return Err(RootfsError::hostile(
                        entry,
                        format!("its parent {:?} is not a directory", join(&parents[..=i])),
                    ))
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    if !create {
                        return Ok(false);
                    }
                    fs::DirBuilder::new()
                        .mode(0o755)
                        .create(&p)
                        .ctx(|| format!("creating directory {}", p.display()))?;
                }
                Err(e) => return Err(RootfsError::io(format!("inspecting {}", p.display()), e)),
            }
        }
        Ok(true)
    }

    /// Removes whatever is at `path` (never following a symlink), except a directory when
    /// `keep_dir`. Returns true when a directory was kept.
    fn clear(&self, path: &Path, keep_dir: bool) -> Result<bool, RootfsError> {
        match fs::symlink_metadata(path) {
            Ok(m) if m.is_dir() => {
                if keep_dir {
                    return Ok(true);
                }
                crate::fsutil::remove_tree(path).ctx(|| format!("removing {}", path.display()))?;
            }
            Ok(_) => fs::remove_file(path).ctx(|| format!("removing {}", path.display()))?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(RootfsError::io(format!("inspecting {}", path.display()), e)),
        }
        Ok(false)
    }

    /// First pass over a layer: applies its whiteouts to what lower layers extracted.
    pub(crate) fn apply_whiteouts<R: Read>(&mut self, layer: R, tick: &mut dyn FnMut()) -> Result<(), RootfsError> {
        let mut archive = tar::Archive::new(layer);
        for entry in archive.entries().ctx(|| "reading layer".to_string())? {
            let entry = entry.ctx(|| "reading layer entry".to_string())?;
            let raw = entry.path_bytes().into_owned();
            tick();
            let name = lossy(&raw);
            let rel = clean(&raw, "the path").map_err(|why| RootfsError::hostile(&name, why))?;
            let Some((last, parent)) = rel.split_last() else {
                continue;
            };
            let last = last.as_bytes();
            if last == OPAQUE_MARKER.as_bytes() {
                if !self.check_parents(&rel[..rel.len() - 1], false, &name)? {
                    continue;
                }
                let dir = self.root.join(join(parent));
                let rd = fs::read_dir(&dir).ctx(|| format!("listing {}", dir.display()))?;
                for child in rd {
                    let child = child.ctx(|| format!("listing {}", dir.display()))?;
                    self.clear(&child.path(), false)?;
                }
            } else if last.starts_with(AUFS_META_PREFIX.as_bytes()) {
                continue;
            } else if let Some(target) = last.strip_prefix(WHITEOUT_PREFIX.as_bytes()) {
                if target.is_empty() || target == b"." || target == b".." {
                    return Err(RootfsError::hostile(&name, "the whiteout names no file"));
                }
                if !self.check_parents(parent, false, &name)? {
                    continue;
                }
                let path = self.root.join(join(parent)).join(OsStr::from_bytes(target));
                self.clear(&path, false)?;
            }
        }
        Ok(())
    }

    /// Extracts every entry of `archive`. With `layered`, whiteout entries are skipped (they
    /// are handled by [`Extractor::apply_whiteouts`]); without, they are ordinary files.
    pub(crate) fn extract<R: Read>(
        &mut self,
        archive: R,
        layered: bool,
        tick: &mut dyn FnMut(),
    ) -> Result<(), RootfsError> {
        let mut archive = tar::Archive::new(archive);
        for entry in archive.entries().ctx(|| "reading archive".to_string())? {
            let mut entry = entry.ctx(|| "reading archive entry".to_string())?;
            self.extract_one(&mut entry, layered)?;
            tick();
        }
        Ok(())
    }

    fn extract_one<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>, layered: bool) -> Result<(), RootfsError> {
        use tar::EntryType as T;
        let raw = entry.path_bytes().into_owned();
        let name = lossy(&raw);
        let kind = entry.header().entry_type();
        if matches!(kind, T::XGlobalHeader | T::XHeader | T::GNULongName | T::GNULongLink) {
            return Ok(());
        }
        let rel = clean(&raw, "the path").map_err(|why| RootfsError::hostile(&name, why))?;
        if layered {
            if let Some(last) = rel.last() {
                if last.as_bytes().starts_with(WHITEOUT_PREFIX.as_bytes()) {
                    return Ok(());
                }
            }
        }
        let header = entry.header();
        let meta = Meta {
            mode: header.mode().unwrap_or(0o644) & 0o7777,
            uid: header.uid().unwrap_or(0),
            gid: header.gid().unwrap_or(0),
            mtime: header.mtime().unwrap_or(0),
        };
        match kind {
            T::Char | T::Block => {
                let dir = rel.split_last().map(|(_, parents)| join(parents)).unwrap_or_default();
                *self.skipped_devices.entry(dir).or_default() += 1;
                return Ok(());
            }
            T::Fifo => return Err(RootfsError::hostile(&name, "fifos are not allowed in a root filesystem")),
            T::Regular | T::Continuous | T::GNUSparse | T::Directory | T::Symlink | T::Link => {}
            other => {
                return Err(RootfsError::hostile(
                    &name,
                    format!("unsupported tar entry type {:?}", other.as_byte() as char),
                ))
            }
        }
        if rel.is_empty() {
            // The archive's "./": only a directory entry makes sense, and it describes the root.
            if kind == T::Directory {
                self.dirs.insert(PathBuf::new(), meta);
                return Ok(());
            }
            return Err(RootfsError::hostile(&name, "a non-directory entry names the root"));
        }
        let (_, parents) = rel.split_last().expect("rel is not empty");
        self.check_parents(parents, true, &name)?;
        let rel_path = join(&rel);
        let path = self.root.join(&rel_path);

        match kind {
            T::Directory => {
                if !self.clear(&path, true)? {
                    fs::DirBuilder::new()
                        .mode(0o755)
                        .create(&path)
                        .ctx(|| format!("creating directory {}", path.display()))?;
                }
                self.dirs.insert(rel_path, meta);
            }
            T::Symlink => {
                let target = entry.link_name_bytes().map(|t| t.into_owned()).unwrap_or_default();
                self.check_symlink_target(&name, parents, &target)?;
                self.clear(&path, false)?;
                std::os::unix::fs::symlink(OsStr::from_bytes(&target), &path)
                    .ctx(|| format!("creating symlink {}", path.display()))?;
                if self.as_root {
                    std::os::unix::fs::lchown(&path, Some(meta.uid as u32), Some(meta.gid as u32))
                        .ctx(|| format!("setting the owner of {}", path.display()))?;
                }
                set_symlink_mtime(&path, meta.mtime);
            }
            T::Link => {
                let target = entry.link_name_bytes().map(|t| t.into_owned()).unwrap_or_default();
                let trel = clean(&target, "the hard link target").map_err(|why| RootfsError::hostile(&name, why))?;
                if trel.is_empty() {
                    return Err(RootfsError::hostile(&name, "the hard link target is empty"));
                }
                let missing = || {
                    RootfsError::hostile(
                        &name,
                        format!("the hard link target {:?} is not an earlier file of the archive", lossy(&target)),
                    )
                };
                if !self.check_parents(&trel[..trel.len() - 1], false, &name)? {
                    return Err(missing());
                }
                let tpath = self.root.join(join(&trel));
                match fs::symlink_metadata(&tpath) {
                    Ok(m) if !m.is_dir() => {}
                    _ => return Err(missing()),
                }
                if tpath == path {
                    return Ok(());
                }
                self.clear(&path, false)?;
                fs::hard_link(&tpath, &path).ctx(|| format!("creating hard link {}", path.display()))?;
            }
            _ => {
                self.clear(&path, false)?;
                let mut file = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                    .open(&path)
                    .ctx(|| format!("creating {}", path.display()))?;
                io::copy(entry, &mut file).ctx(|| format!("extracting {name}"))?;
                if self.as_root {
                    std::os::unix::fs::fchown(&file, Some(meta.uid as u32), Some(meta.gid as u32))
                        .ctx(|| format!("setting the owner of {}", path.display()))?;
                }
                file.set_permissions(fs::Permissions::from_mode(meta.mode & !SETID_BITS))
                    .ctx(|| format!("setting the mode of {}", path.display()))?;
                let t = to_time(meta.mtime);
                file.set_times(fs::FileTimes::new().set_accessed(t).set_modified(t))
                    .ctx(|| format!("setting the times of {}", path.display()))?;
            }
        }
        Ok(())
    }

    fn check_symlink_target(&self, name: &str, parents: &[OsString], target: &[u8]) -> Result<(), RootfsError> {
        if target.is_empty() {
            return Err(RootfsError::hostile(name, "the symlink target is empty"));
        }
        if target.contains(&0) {
            return Err(RootfsError::hostile(name, "the symlink target contains a NUL byte"));
        }
        if target[0] == b'/' {
            // Resolved inside the guest; never followed here.
            return Ok(());
        }
        let mut depth = parents.len() as i64;
        for c in Path::new(OsStr::from_bytes(target)).components() {
            match c {
                Component::ParentDir => {
                    depth -= 1;
                    if depth < 0 {
                        return Err(RootfsError::hostile(
                            name,
                            format!("the symlink target {:?} escapes the root", lossy(target)),
                        ));
                    }
                }
                Component::Normal(_) => depth += 1,
                _ => {}
            }
        }
        Ok(())
    }

    /// Applies directory metadata, deepest first. Call once, after the last layer.
    pub(crate) fn finish(self) -> Result<(), RootfsError> {
        for (rel, meta) in self.dirs.iter().rev() {
            let parts: Rel = rel.iter().map(|c| c.to_os_string()).collect();
            // A later layer may have removed the directory or replaced a parent by a symlink.
            if !parts.is_empty() {
                match self.check_parents(&parts[..parts.len() - 1], false, "") {
                    Ok(true) => {}
                    _ => continue,
                }
            }
            let path = self.root.join(rel);
            let dir = match fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(&path)
            {
                Ok(d) => d,
                Err(_) => continue, // gone or no longer a directory
            };
            if self.as_root {
                std::os::unix::fs::fchown(&dir, Some(meta.uid as u32), Some(meta.gid as u32))
                    .ctx(|| format!("setting the owner of {}", path.display()))?;
            }
            dir.set_permissions(fs::Permissions::from_mode(meta.mode))
                .ctx(|| format!("setting the mode of {}", path.display()))?;
            let t = to_time(meta.mtime);
            // Some filesystems refuse times on directories opened read-only; not fatal.
            let _ = dir.set_times(fs::FileTimes::new().set_accessed(t).set_modified(t));
        }
        Ok(())
    }
}

fn set_symlink_mtime(path: &Path, mtime: u64) {
    use std::ffi::CString;
    let Ok(c) = CString::new(path.as_os_str().as_bytes()) else {
        return;
    };
    let ts = libc::timespec { tv_sec: mtime as libc::time_t, tv_nsec: 0 };
    let times = [ts, ts];
    // SAFETY: valid NUL-terminated path and a two-element timespec array; best effort.
    unsafe {
        libc::utimensat(libc::AT_FDCWD, c.as_ptr(), times.as_ptr(), libc::AT_SYMLINK_NOFOLLOW);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_paths() {
        assert_eq!(clean(b"./a//b/./c", "p").unwrap(), vec!["a", "b", "c"]);
        assert!(clean(b"./", "p").unwrap().is_empty());
        assert!(clean(b"/etc/passwd", "p").unwrap_err().contains("absolute"));
        assert!(clean(b"a/../../b", "p").unwrap_err().contains(".."));
        assert!(clean(b"..", "p").is_err());
        // A name merely containing dots is fine.
        assert_eq!(clean(b"a/..b/c..", "p").unwrap(), vec!["a", "..b", "c.."]);
    }
}
