//! The content-addressed image cache under `$ALCOVE_HOME/images/`:
//!
//! ```text
//! images/.lock                    held by every pull and prune (one at a time per home)
//! images/.tmp-<what>-<pid>-<n>/   work in progress; removed on error, pruned once its pid is dead
//! images/layers/<algo>-<hex>/     one unpacked layer: root/ (OCI whiteouts kept as `.wh.*` files), size
//! images/by-digest/<algo>-<hex>/  one image (by manifest digest): root/ (merged), image.json
//! images/refs/<escaped ref>       the manifest digest a reference was last pulled as
//! ```
//!
//! Invariants:
//! - Every layer and image directory is either absent or complete: it is built under a
//!   `.tmp-*` directory and moved into place by one no-replace rename. An interrupted pull
//!   leaves only `.tmp-*` directories, which nothing reads and the next pull removes.
//! - A layer is downloaded and unpacked once, whichever images use it. An image's `root/` is
//!   assembled from its cached layers with hard links (no file data is copied; directories are
//!   made anew), applying each layer's whiteouts to the layers below it.
//! - Assembly never follows a symlink: every directory written into is checked to be a real
//!   directory with `lstat`, and the tree being assembled is private to this process.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{IoContext, RootfsError};
use crate::fsutil::{is_root, make_temp_dir, remove_tree, rename_noreplace, FileLock};
use crate::ImageConfig;

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_MARKER: &str = ".wh..wh..opq";
const AUFS_META_PREFIX: &str = ".wh..wh.";

/// The metadata of a pulled image (`image.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ImageRecord {
    /// The manifest digest.
    pub(crate) digest: String,
    /// Layer digests, lowest first.
    pub(crate) layers: Vec<String>,
    /// The runtime defaults from the image config.
    pub(crate) config: ImageConfig,
    /// When it was assembled, in ms since the epoch.
    pub(crate) created_at_ms: i64,
}

/// Paths of the cache of one `$ALCOVE_HOME`.
#[derive(Debug, Clone)]
pub(crate) struct Cache {
    pub(crate) dir: PathBuf,
}

/// `sha256:abc` → `sha256-abc`, refusing anything that is not a plain digest.
pub(crate) fn digest_dir_name(digest: &str) -> Option<String> {
    let (algo, hex) = digest.split_once(':')?;
    let ok = matches!(algo, "sha256" | "sha512") && hex.len() >= 32 && hex.bytes().all(|b| b.is_ascii_hexdigit());
    ok.then(|| format!("{algo}-{}", hex.to_ascii_lowercase()))
}

/// A reference as one file name: every byte outside `[A-Za-z0-9._-]` becomes `%XX`.
fn escape_ref(reference: &str) -> String {
    let mut out = String::new();
    for b in reference.bytes() {
        if b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn unescape_ref(name: &str) -> Option<String> {
    let bytes = name.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

impl Cache {
    pub(crate) fn new(home: &Path) -> Cache {
        Cache { dir: home.join("images") }
    }

    pub(crate) fn layer_dir(&self, digest: &str) -> Option<PathBuf> {
        digest_dir_name(digest).map(|n| self.dir.join("layers").join(n))
    }

    pub(crate) fn image_dir(&self, digest: &str) -> Option<PathBuf> {
        digest_dir_name(digest).map(|n| self.dir.join("by-digest").join(n))
    }

    /// Creates the cache directories, takes the cache lock and removes what dead pulls left.
    pub(crate) fn open_locked(&self) -> Result<FileLock, RootfsError> {
        for d in [self.dir.clone(), self.dir.join("layers"), self.dir.join("by-digest"), self.dir.join("refs")] {
            fs::create_dir_all(&d).ctx(|| format!("creating {}", d.display()))?;
        }
        // Owner-only like the rest of $ALCOVE_HOME; the trees inside stay 0755 for the guests.
        fs::set_permissions(&self.dir, fs::Permissions::from_mode(0o700))
            .ctx(|| format!("setting the mode of {}", self.dir.display()))?;
        let lock_path = self.dir.join(".lock");
        let lock = FileLock::acquire(&lock_path).ctx(|| format!("locking {}", lock_path.display()))?;
        crate::fsutil::prune_stale_temps(&self.dir);
        Ok(lock)
    }

    pub(crate) fn temp_dir(&self, what: &str) -> Result<PathBuf, RootfsError> {
        make_temp_dir(&self.dir, what).ctx(|| format!("creating a directory in {}", self.dir.display()))
    }

    /// The image recorded under a manifest digest, if complete.
    pub(crate) fn image(&self, digest: &str) -> Option<(PathBuf, ImageRecord)> {
        let dir = self.image_dir(digest)?;
        let bytes = fs::read(dir.join("image.json")).ok()?;
        let record: ImageRecord = serde_json::from_slice(&bytes).ok()?;
        Some((dir.join("root"), record))
    }

    /// The manifest digest `reference` was last pulled as.
    pub(crate) fn ref_digest(&self, reference: &str) -> Option<String> {
        let text = fs::read_to_string(self.dir.join("refs").join(escape_ref(reference))).ok()?;
        let digest = text.trim().to_string();
        digest_dir_name(&digest).map(|_| digest)
    }

    /// Records that `reference` names the image `digest` (atomically replacing any older record).
    pub(crate) fn set_ref(&self, reference: &str, digest: &str) -> Result<(), RootfsError> {
        let refs = self.dir.join("refs");
        let name = escape_ref(reference);
        let tmp = refs.join(format!(".tmp-{name}-{}", std::process::id()));
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .ctx(|| format!("writing {}", tmp.display()))?;
        io::Write::write_all(&mut file, format!("{digest}\n").as_bytes())
            .ctx(|| format!("writing {}", tmp.display()))?;
        fs::rename(&tmp, refs.join(&name)).ctx(|| format!("recording {reference}"))
    }

    /// Every recorded reference and the digest it names.
    pub(crate) fn refs(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let Ok(rd) = fs::read_dir(self.dir.join("refs")) else { return out };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            if let (Some(r), Some(d)) = (unescape_ref(&name), self.ref_digest(&unescape_ref(&name).unwrap_or_default()))
            {
                out.push((r, d));
            }
        }
        out.sort();
        out
    }

    /// Every complete image, by manifest digest.
    pub(crate) fn images(&self) -> Vec<(PathBuf, ImageRecord)> {
        let mut out = Vec::new();
        let Ok(rd) = fs::read_dir(self.dir.join("by-digest")) else { return out };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some((algo, hex)) = name.split_once('-') {
                if let Some(img) = self.image(&format!("{algo}:{hex}")) {
                    out.push(img);
                }
            }
        }
        out.sort_by(|a, b| a.1.digest.cmp(&b.1.digest));
        out
    }

    /// The unpacked size of a cached layer (0 if unknown).
    pub(crate) fn layer_size(&self, digest: &str) -> u64 {
        self.layer_dir(digest)
            .and_then(|d| fs::read_to_string(d.join("size")).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Removes images whose root `in_use` says no sandbox uses, their references, and then
    /// every layer no remaining image needs. Returns (images removed, layers removed).
    pub(crate) fn prune(&self, in_use: &dyn Fn(&Path) -> bool) -> Result<(usize, usize), RootfsError> {
        let _lock = self.open_locked()?;
        let mut kept_layers = BTreeSet::new();
        let mut removed_images = 0;
        for (root, record) in self.images() {
            if in_use(&root) {
                kept_layers.extend(record.layers.iter().cloned());
                continue;
            }
            for (reference, digest) in self.refs() {
                if digest == record.digest {
                    let _ = fs::remove_file(self.dir.join("refs").join(escape_ref(&reference)));
                }
            }
            if let Some(dir) = self.image_dir(&record.digest) {
                self.remove_atomically(&dir)?;
                removed_images += 1;
            }
        }
        let mut removed_layers = 0;
        if let Ok(rd) = fs::read_dir(self.dir.join("layers")) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let Some((algo, hex)) = name.split_once('-') else { continue };
                if !kept_layers.contains(&format!("{algo}:{hex}")) {
                    self.remove_atomically(&e.path())?;
                    removed_layers += 1;
                }
            }
        }
        Ok((removed_images, removed_layers))
    }

    /// Renames `dir` into a temp directory first, so that it disappears at once.
    fn remove_atomically(&self, dir: &Path) -> Result<(), RootfsError> {
        let trash = self.temp_dir("remove")?;
        fs::rename(dir, trash.join("x")).ctx(|| format!("removing {}", dir.display()))?;
        remove_tree(&trash).ctx(|| format!("removing {}", dir.display()))
    }

    /// Moves a finished temp directory to `dest`. `Ok(false)`: `dest` appeared meanwhile (ours
    /// is discarded).
    pub(crate) fn publish(&self, tmp: &Path, dest: &Path) -> Result<bool, RootfsError> {
        fs::set_permissions(tmp, fs::Permissions::from_mode(0o755))
            .ctx(|| format!("setting the mode of {}", tmp.display()))?;
        let moved = rename_noreplace(tmp, dest).ctx(|| format!("moving {} into place", dest.display()))?;
        if !moved {
            let _ = remove_tree(tmp);
        }
        Ok(moved)
    }
}

/// Directory metadata applied once assembly is over, deepest first.
struct DirMeta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
}

/// Assembles an image root from unpacked layers (lowest first) by hard links.
pub(crate) struct Assembler {
    root: PathBuf,
    as_root: bool,
    dirs: BTreeMap<PathBuf, DirMeta>,
}

fn is_real_dir(p: &Path) -> bool {
    fs::symlink_metadata(p).map(|m| m.is_dir()).unwrap_or(false)
}

fn remove_any(p: &Path) -> io::Result<()> {
    match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => remove_tree(p),
        Ok(_) => fs::remove_file(p),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

impl Assembler {
    /// Assembles into `root`, an existing directory private to this process.
    pub(crate) fn new(root: &Path) -> Assembler {
        Assembler { root: root.to_path_buf(), as_root: is_root(), dirs: BTreeMap::new() }
    }

    /// Applies one unpacked layer: its whiteouts first, then its entries.
    pub(crate) fn apply(&mut self, layer_root: &Path) -> Result<(), RootfsError> {
        self.whiteouts(layer_root, Path::new(""))
            .ctx(|| format!("applying the whiteouts of {}", layer_root.display()))?;
        self.entries(layer_root, Path::new("")).ctx(|| format!("assembling {}", layer_root.display()))
    }

    fn whiteouts(&mut self, layer: &Path, rel: &Path) -> io::Result<()> {
        let merged = self.root.join(rel);
        // Below a path that is not a real directory in the tree, lower layers have nothing.
        if !is_real_dir(&merged) {
            return Ok(());
        }
        for entry in fs::read_dir(layer.join(rel))? {
            let entry = entry?;
            let name = entry.file_name();
            let name_str = name.to_string_lossy();
            if name_str == OPAQUE_MARKER {
                for lower in fs::read_dir(&merged)? {
                    remove_any(&lower?.path())?;
                }
            } else if name_str.starts_with(AUFS_META_PREFIX) {
                continue;
            } else if let Some(target) = name_str.strip_prefix(WHITEOUT_PREFIX) {
                if !target.is_empty() && target != "." && target != ".." {
                    remove_any(&merged.join(target))?;
                }
            } else if entry.file_type()?.is_dir() {
                self.whiteouts(layer, &rel.join(&name))?;
            }
        }
        Ok(())
    }

    fn entries(&mut self, layer: &Path, rel: &Path) -> io::Result<()> {
        for entry in fs::read_dir(layer.join(rel))? {
            let entry = entry?;
            let name = entry.file_name();
            if name.to_string_lossy().starts_with(WHITEOUT_PREFIX) {
                continue;
            }
            let src = entry.path();
            let rel_child = rel.join(&name);
            let dst = self.root.join(&rel_child);
            let meta = fs::symlink_metadata(&src)?;
            if meta.is_dir() {
                if !is_real_dir(&dst) {
                    remove_any(&dst)?;
                    fs::create_dir(&dst)?;
                    fs::set_permissions(&dst, fs::Permissions::from_mode(0o700))?;
                }
                self.dirs.insert(
                    rel_child.clone(),
                    DirMeta { mode: meta.mode() & 0o7777, uid: meta.uid(), gid: meta.gid(), mtime: meta.mtime() },
                );
                self.entries(layer, &rel_child)?;
            } else {
                remove_any(&dst)?;
                if let Err(e) = fs::hard_link(&src, &dst) {
                    // Another filesystem or too many links: copy instead.
                    if meta.file_type().is_symlink() {
                        std::os::unix::fs::symlink(fs::read_link(&src)?, &dst)?;
                    } else if meta.is_file() {
                        fs::copy(&src, &dst)?;
                    } else {
                        return Err(e);
                    }
                }
            }
        }
        Ok(())
    }

    /// Applies directory modes, owners and mtimes, deepest first.
    pub(crate) fn finish(self) -> Result<(), RootfsError> {
        for (rel, m) in self.dirs.iter().rev() {
            let path = self.root.join(rel);
            if !is_real_dir(&path) {
                continue;
            }
            if self.as_root {
                std::os::unix::fs::lchown(&path, Some(m.uid), Some(m.gid))
                    .ctx(|| format!("chown {}", path.display()))?;
            }
            fs::set_permissions(&path, fs::Permissions::from_mode(m.mode))
                .ctx(|| format!("chmod {}", path.display()))?;
            let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(m.mtime.max(0) as u64);
            if let Ok(f) = fs::File::open(&path) {
                let _ = f.set_modified(t);
            }
        }
        fs::set_permissions(&self.root, fs::Permissions::from_mode(0o755))
            .ctx(|| format!("chmod {}", self.root.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refs_escape_roundtrip() {
        for r in ["127.0.0.1:5000/x:1", "docker.io/library/busybox@sha256:ab", "a%b"] {
            let e = escape_ref(r);
            assert!(!e.contains('/') && !e.contains(':'));
            assert_eq!(unescape_ref(&e).as_deref(), Some(r));
        }
        assert_eq!(digest_dir_name("sha256:../x"), None);
        assert_eq!(digest_dir_name(&format!("sha256:{}", "A".repeat(64))), Some(format!("sha256-{}", "a".repeat(64))));
    }

    #[test]
    fn assembly_applies_whiteouts_and_links() {
        let dir = tempfile::tempdir().unwrap();
        let (l1, l2, root) = (dir.path().join("l1"), dir.path().join("l2"), dir.path().join("root"));
        for d in [&l1, &l2, &root] {
            fs::create_dir(d).unwrap();
        }
        fs::create_dir_all(l1.join("etc/keep")).unwrap();
        fs::write(l1.join("etc/gone"), "x").unwrap();
        fs::write(l1.join("etc/keep/old"), "old").unwrap();
        fs::write(l1.join("bin"), "file").unwrap();
        fs::create_dir_all(l2.join("etc/keep")).unwrap();
        fs::write(l2.join("etc/.wh.gone"), "").unwrap();
        fs::write(l2.join("etc/keep/.wh..wh..opq"), "").unwrap();
        fs::write(l2.join("etc/keep/new"), "new").unwrap();
        std::os::unix::fs::symlink("/usr/bin", l2.join("bin")).unwrap();
        let mut a = Assembler::new(&root);
        a.apply(&l1).unwrap();
        a.apply(&l2).unwrap();
        a.finish().unwrap();
        assert!(!root.join("etc/gone").exists());
        assert!(!root.join("etc/keep/old").exists());
        assert!(!root.join("etc/.wh.gone").exists());
        assert_eq!(fs::read_to_string(root.join("etc/keep/new")).unwrap(), "new");
        assert_eq!(fs::read_link(root.join("bin")).unwrap(), Path::new("/usr/bin"));
        // Files are shared with the layer, not copied.
        assert_eq!(
            fs::metadata(root.join("etc/keep/new")).unwrap().ino(),
            fs::metadata(l2.join("etc/keep/new")).unwrap().ino()
        );
    }
}
