//! Root filesystem management for alcove.
//!
//! Over 600 lines on purpose: the whole `RootfsStore` API (names, import,
//! list, remove, image defaults) in one place; extraction and the registry
//! live in their own modules.
//!
//! A rootfs named `NAME` lives in `$ALCOVE_HOME/rootfs/NAME/`: the tree in `root/` and its
//! metadata (image defaults, source, creation time, size) in `image.json`. Names follow
//! `[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}`.
//!
//! Invariants:
//! - A rootfs directory is either absent or complete: imports and the default build happen in
//!   a private `.tmp-*` directory under `rootfs/` and are moved into place with one atomic
//!   no-replace rename, `image.json` included. A failed import leaves nothing behind (its
//!   temporary directory is removed, and leftovers of crashed processes are pruned later).
//! - Imports treat archives as hostile: no entry is written outside the root, no symlink is
//!   followed while extracting, and device nodes, fifos, absolute paths, `..` components and
//!   escaping links are refused with [`RootfsError::Hostile`]. Absolute symlink targets are
//!   allowed (the guest resolves them inside its own root; nothing here follows them).
//! - The name `default` is built on first use from Debian's `busybox-static` package (see
//!   [`RootfsStore::ensure_default`]); a rootfs imported under that name replaces it.

#![warn(missing_docs)]

mod compress;
mod deb;
mod default;
mod error;
pub(crate) mod extract;
mod fsutil;
mod image;
pub mod registry;

use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use error::IoContext;
pub use error::RootfsError;
use extract::Extractor;
use fsutil::{make_temp_dir, now_ms, remove_tree, rename_noreplace, tree_size, FileLock};
pub use registry::{ImageInfo, PullOptions};

/// The name of the rootfs built on demand from busybox.
pub const DEFAULT_NAME: &str = "default";

/// File holding a rootfs's metadata, next to its `root/`.
pub const METADATA_FILE: &str = "image.json";

/// Runtime defaults an image carries (from an OCI/docker config, or the default rootfs).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ImageConfig {
    /// Environment variables, in image order.
    pub env: Vec<(String, String)>,
    /// Default command (arguments to the entrypoint, if any).
    pub cmd: Vec<String>,
    /// Entrypoint.
    pub entrypoint: Vec<String>,
    /// Working directory.
    pub workdir: Option<String>,
    /// User (`name`, `uid`, or `uid:gid`), as the image states it.
    pub user: Option<String>,
}

/// A root filesystem ready to be used by a backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedRootfs {
    /// The directory to use as the guest's `/`.
    pub root: PathBuf,
    /// The image's runtime defaults (empty for a plain directory).
    pub image: ImageConfig,
}

/// An imported (or the default) rootfs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootfsInfo {
    /// Its name.
    pub name: String,
    /// The directory to use as the guest's `/`.
    pub root: PathBuf,
    /// Where it came from, e.g. `oci-archive:/path/img.tar` or `debian:busybox-static 1:1.35.0-4`.
    pub source: String,
    /// Apparent size of its files in bytes (hard links counted once).
    pub size_bytes: u64,
    /// When it was created, in milliseconds since the Unix epoch.
    pub created_at_ms: i64,
    /// Its runtime defaults.
    pub image: ImageConfig,
}

/// Progress of a long operation, for display.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// A new step started.
    Step(String),
    /// Something the user should know about the result, once (e.g. entries skipped).
    Notice(String),
    /// The state of one image layer while pulling.
    Layer {
        /// The layer's digest (`sha256:…`).
        digest: String,
        /// What is happening to it.
        state: LayerState,
        /// Compressed bytes downloaded so far.
        done: u64,
        /// Its compressed size, as the manifest states it.
        total: u64,
    },
    /// Bytes of input processed in the current step.
    Bytes {
        /// Bytes done.
        done: u64,
        /// Total bytes, when known.
        total: Option<u64>,
    },
}

/// Where a layer is while pulling (see [`Progress::Layer`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerState {
    /// Already in the layer cache: nothing to download.
    Cached,
    /// Being downloaded.
    Downloading,
    /// Downloaded and verified, being unpacked into the cache.
    Unpacking,
    /// Unpacked into the cache.
    Done,
}

impl LayerState {
    /// A lowercase word for display and JSON events.
    pub fn word(self) -> &'static str {
        match self {
            LayerState::Cached => "cached",
            LayerState::Downloading => "downloading",
            LayerState::Unpacking => "unpacking",
            LayerState::Done => "done",
        }
    }
}

#[derive(Serialize, Deserialize)]
struct Metadata {
    name: String,
    source: String,
    created_at_ms: i64,
    size_bytes: u64,
    image: ImageConfig,
}

/// Checks a rootfs name against `[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}`.
pub fn validate_name(name: &str) -> Result<(), RootfsError> {
    let invalid = |why: &str| RootfsError::InvalidName { name: name.to_string(), why: why.to_string() };
    let first = name.bytes().next().ok_or_else(|| invalid("it is empty"))?;
    if name.len() > 63 {
        return Err(invalid("it is longer than 63 characters"));
    }
    if !first.is_ascii_alphanumeric() {
        return Err(invalid("it must start with a letter or a digit"));
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-') {
        return Err(invalid("only letters, digits, '_', '.' and '-' are allowed"));
    }
    Ok(())
}

/// Resolves `rel` inside `root` the way the guest would see it: symlinks are followed, but
/// absolute targets and `..` stay confined to `root`. Returns the host path of the final
/// non-symlink, or `None` when a component is missing or there are too many links.
pub fn resolve_in_root(root: &Path, rel: &Path) -> Option<PathBuf> {
    let mut todo: Vec<std::ffi::OsString> = Vec::new();
    push_components(&mut todo, rel);
    let mut cur: Vec<std::ffi::OsString> = Vec::new();
    let mut links = 0;
    while let Some(c) = todo.pop() {
        if c == ".." {
            cur.pop();
            continue;
        }
        let mut path: PathBuf = root.to_path_buf();
        path.extend(cur.iter());
        path.push(&c);
        let meta = fs::symlink_metadata(&path).ok()?;
        if meta.file_type().is_symlink() {
            links += 1;
            if links > 40 {
                return None;
            }
            let target = fs::read_link(&path).ok()?;
            if target.is_absolute() {
                cur.clear();
            }
            push_components(&mut todo, &target);
        } else {
            cur.push(c);
        }
    }
    let mut path = root.to_path_buf();
    path.extend(cur.iter());
    Some(path)
}

/// Pushes `p`'s components onto the stack so that the first one is popped first.
fn push_components(stack: &mut Vec<std::ffi::OsString>, p: &Path) {
    let comps: Vec<std::ffi::OsString> = p
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect();
    stack.extend(comps.into_iter().rev());
}

/// Checks that `root` has a `bin/sh` (following symlinks inside the root) that is a regular file.
pub fn require_shell(root: &Path) -> Result<(), RootfsError> {
    match resolve_in_root(root, Path::new("bin/sh")) {
        Some(p) if fs::metadata(&p).map(|m| m.is_file()).unwrap_or(false) => Ok(()),
        _ => Err(RootfsError::NoShell(root.to_path_buf())),
    }
}

/// Removes a temporary directory on drop unless disarmed.
struct TempGuard(Option<PathBuf>);

impl TempGuard {
    fn path(&self) -> &Path {
        self.0.as_deref().unwrap_or(Path::new(""))
    }
    fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for TempGuard {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = remove_tree(&p);
        }
    }
}

/// Counts bytes read through it into a shared counter (readable from another owner).
struct Counting<R> {
    inner: R,
    count: Arc<AtomicU64>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// Reports byte progress at most every 1 MiB, plus a final report.
struct ByteTicker<'a> {
    count: Arc<AtomicU64>,
    total: Option<u64>,
    last: u64,
    progress: &'a mut dyn FnMut(Progress),
}

impl ByteTicker<'_> {
    fn tick(&mut self) {
        let done = self.count.load(Ordering::Relaxed);
        if done >= self.last + (1 << 20) {
            self.last = done;
            (self.progress)(Progress::Bytes { done, total: self.total });
        }
    }
    fn done(&mut self) {
        let done = self.count.load(Ordering::Relaxed);
        (self.progress)(Progress::Bytes { done, total: self.total });
    }
}

/// A decompressed tar stream and how far its (compressed) file has been read.
struct TarStream {
    reader: Box<dyn Read + Send>,
    count: Arc<AtomicU64>,
    total: u64,
}

/// Opens `path` as a (possibly compressed) tar stream, counting compressed bytes read.
fn open_tar(path: &Path) -> Result<TarStream, RootfsError> {
    let file = fs::File::open(path).ctx(|| format!("opening {}", path.display()))?;
    let total = file.metadata().ctx(|| format!("inspecting {}", path.display()))?.len();
    let count = Arc::new(AtomicU64::new(0));
    let (_, mut reader) = compress::decompressed(Counting { inner: file, count: count.clone() })
        .ctx(|| format!("reading {}", path.display()))?;
    // Look at the first header to tell a tar from anything else.
    let mut head = vec![0u8; 512];
    let mut got = 0;
    while got < head.len() {
        match reader.read(&mut head[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                return Err(RootfsError::UnknownFormat(format!("{} cannot be read as an archive: {e}", path.display())))
            }
        }
    }
    head.truncate(got);
    if !looks_like_tar(&head) {
        return Err(RootfsError::UnknownFormat(format!(
            "{} is not a tar archive (plain, gzip, zstd or xz), an OCI image layout archive or a docker-save archive",
            path.display()
        )));
    }
    let reader: Box<dyn Read + Send> = Box::new(io::Cursor::new(head).chain(reader));
    Ok(TarStream { reader, count, total })
}

/// True for a block that is a valid tar header (ustar/GNU magic, or a correct checksum).
fn looks_like_tar(head: &[u8]) -> bool {
    if head.len() < 512 {
        return false;
    }
    if &head[257..262] == b"ustar" {
        return true;
    }
    let stored = std::str::from_utf8(&head[148..156])
        .ok()
        .map(|s| s.trim_matches(|c: char| c == '\0' || c == ' '))
        .and_then(|s| u32::from_str_radix(s, 8).ok());
    let Some(stored) = stored else { return false };
    let sum: u32 = head[..512]
        .iter()
        .enumerate()
        .map(|(i, &b)| if (148..156).contains(&i) { b' ' as u32 } else { b as u32 })
        .sum();
    sum == stored && head[..100].iter().any(|&b| b != 0)
}

impl RootfsStore {
    /// A store rooted at `alcove_home` (rootfs trees live in `alcove_home/rootfs/`).
    pub fn new(alcove_home: impl Into<PathBuf>) -> RootfsStore {
        RootfsStore { home: alcove_home.into() }
    }

    /// The directory holding every rootfs: `$ALCOVE_HOME/rootfs`.
    pub fn store_dir(&self) -> PathBuf {
        self.home.join("rootfs")
    }

    /// The directory of the rootfs `name` (whether or not it exists).
    pub fn dir_of(&self, name: &str) -> PathBuf {
        self.store_dir().join(name)
    }

    fn ensure_store(&self) -> Result<PathBuf, RootfsError> {
        let dir = self.store_dir();
        fs::create_dir_all(&dir).ctx(|| format!("creating {}", dir.display()))?;
        Ok(dir)
    }

    /// Resolves a `--rootfs` argument: a path (it contains `/` or starts with `.`) must be an
    /// existing directory; anything else is the name of an imported rootfs, and `default` is
    /// built on first use.
    /// An image reference (see [`registry::looks_like_reference`]) is used from the image
    /// cache, pulled first if needed.
    pub fn resolve(&self, name_or_path: &str) -> Result<ResolvedRootfs, RootfsError> {
        self.resolve_with(name_or_path, &PullOptions::default(), &mut |_| {})
    }

    /// [`RootfsStore::resolve`] for a name or a path only.
    fn resolve_local(&self, name_or_path: &str) -> Result<ResolvedRootfs, RootfsError> {
        if name_or_path.contains('/') || name_or_path.starts_with('.') {
            let path = Path::new(name_or_path);
            let meta = fs::metadata(path).map_err(|e| {
                if e.kind() == io::ErrorKind::NotFound {
                    RootfsError::NotFound(name_or_path.to_string())
                } else {
                    RootfsError::io(format!("inspecting {name_or_path}"), e)
                }
            })?;
            if !meta.is_dir() {
                return Err(RootfsError::NotADirectory(path.to_path_buf()));
            }
            let root = fs::canonicalize(path).ctx(|| format!("resolving {name_or_path}"))?;
            return Ok(ResolvedRootfs { root, image: ImageConfig::default() });
        }
        if name_or_path == DEFAULT_NAME {
            return self.ensure_default(&mut |_| {});
        }
        let info = self.info(name_or_path)?;
        Ok(ResolvedRootfs { root: info.root, image: info.image })
    }

    /// The rootfs `name`, if it exists.
    pub fn info(&self, name: &str) -> Result<RootfsInfo, RootfsError> {
        validate_name(name)?;
        let dir = self.dir_of(name);
        let meta_path = dir.join(METADATA_FILE);
        let bytes = match fs::read(&meta_path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(RootfsError::NotFound(name.to_string())),
            Err(e) => return Err(RootfsError::io(format!("reading {}", meta_path.display()), e)),
        };
        let meta: Metadata = serde_json::from_slice(&bytes).map_err(|e| {
            RootfsError::io(format!("reading {}", meta_path.display()), io::Error::new(io::ErrorKind::InvalidData, e))
        })?;
        Ok(RootfsInfo {
            name: name.to_string(),
            root: dir.join("root"),
            source: meta.source,
            size_bytes: meta.size_bytes,
            created_at_ms: meta.created_at_ms,
            image: meta.image,
        })
    }

    /// Returns the default rootfs, building it from Debian's `busybox-static` on first use.
    /// Cached (a second call only reads `image.json`) and safe when processes race.
    pub fn ensure_default(&self, progress: &mut dyn FnMut(Progress)) -> Result<ResolvedRootfs, RootfsError> {
        let resolved = |info: RootfsInfo| ResolvedRootfs { root: info.root, image: info.image };
        if let Ok(info) = self.info(DEFAULT_NAME) {
            return Ok(resolved(info));
        }
        let store = self.ensure_store()?;
        let lock_path = store.join(".default.lock");
        let _lock = FileLock::acquire(&lock_path).ctx(|| format!("locking {}", lock_path.display()))?;
        if let Ok(info) = self.info(DEFAULT_NAME) {
            return Ok(resolved(info));
        }
        fsutil::prune_stale_temps(&store);
        progress(Progress::Step(format!("building the default rootfs from Debian's {} package", default::PACKAGE)));
        let mut guard = TempGuard(Some(
            make_temp_dir(&store, "default").ctx(|| format!("creating a directory in {}", store.display()))?,
        ));
        let tmp = guard.path().to_path_buf();
        let download = tmp.join("download");
        let pkg = tmp.join("pkg");
        let root = tmp.join("root");
        for d in [&download, &pkg, &root] {
            fs::create_dir(d).ctx(|| format!("creating {}", d.display()))?;
        }
        let deb = default::download(&download, progress)?;
        let version = default::version_of(&deb);
        progress(Progress::Step(format!(
            "unpacking {}",
            deb.file_name().map(|n| n.to_string_lossy()).unwrap_or_default()
        )));
        deb::extract_deb(&deb, &pkg, progress)?;
        let image = default::lay_out(&pkg, &root, progress)?;
        default::cleanup(&[&download, &pkg]);
        fs::set_permissions(&root, fs::Permissions::from_mode(0o755))
            .ctx(|| format!("setting the mode of {}", root.display()))?;
        let info = self.finalize(&mut guard, DEFAULT_NAME, format!("debian:{} {version}", default::PACKAGE), image);
        match info {
            Ok(info) => {
                progress(Progress::Step("default rootfs ready".into()));
                Ok(resolved(info))
            }
            // Someone imported or built "default" meanwhile: use theirs.
            Err(RootfsError::AlreadyExists(_)) => self.info(DEFAULT_NAME).map(resolved),
            Err(e) => Err(e),
        }
    }

    /// Writes `image.json` into the guarded temp dir and renames it to `name`.
    fn finalize(
        &self,
        guard: &mut TempGuard,
        name: &str,
        source: String,
        image: ImageConfig,
    ) -> Result<RootfsInfo, RootfsError> {
        let tmp = guard.path().to_path_buf();
        let root = tmp.join("root");
        let size_bytes = tree_size(&root).ctx(|| format!("measuring {}", root.display()))?;
        let meta = Metadata { name: name.to_string(), source, created_at_ms: now_ms(), size_bytes, image };
        let json = serde_json::to_vec_pretty(&meta)
            .map_err(|e| RootfsError::io("encoding image.json", io::Error::other(e)))?;
        let meta_path = tmp.join(METADATA_FILE);
        fs::write(&meta_path, json).ctx(|| format!("writing {}", meta_path.display()))?;
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o755))
            .ctx(|| format!("setting the mode of {}", tmp.display()))?;
        let dest = self.dir_of(name);
        if !rename_noreplace(&tmp, &dest).ctx(|| format!("moving the rootfs to {}", dest.display()))? {
            return Err(RootfsError::AlreadyExists(name.to_string()));
        }
        guard.disarm();
        Ok(RootfsInfo {
            name: name.to_string(),
            root: dest.join("root"),
            source: meta.source,
            size_bytes,
            created_at_ms: meta.created_at_ms,
            image: meta.image,
        })
    }

    /// Imports `file` as the rootfs `name`. The format is detected from the content: a tar
    /// archive (plain, gzip, zstd or xz) holding a root filesystem, an OCI image layout archive
    /// (`index.json` + `blobs/`), or a `docker save` archive (`manifest.json` + layer tars).
    /// Atomic: on error nothing is left behind.
    pub fn import(
        &self,
        name: &str,
        file: &Path,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<RootfsInfo, RootfsError> {
        validate_name(name)?;
        if fs::symlink_metadata(self.dir_of(name)).is_ok() {
            return Err(RootfsError::AlreadyExists(name.to_string()));
        }
        let abs = fs::canonicalize(file).ctx(|| format!("opening {}", file.display()))?;
        let store = self.ensure_store()?;
        fsutil::prune_stale_temps(&store);
        let mut guard = TempGuard(Some(
            make_temp_dir(&store, "import").ctx(|| format!("creating a directory in {}", store.display()))?,
        ));
        let tmp = guard.path().to_path_buf();
        let unpacked = tmp.join("root");
        fs::create_dir(&unpacked).ctx(|| format!("creating {}", unpacked.display()))?;

        progress(Progress::Step(format!("unpacking {}", abs.display())));
        let TarStream { reader, count, total } = open_tar(&abs)?;
        let mut ex = Extractor::new(&unpacked);
        {
            let mut ticker = ByteTicker { count, total: Some(total), last: 0, progress };
            ex.extract(reader, false, &mut || ticker.tick())?;
            ticker.done();
        }

        let (source, image) = match image::detect(&unpacked)? {
            None => {
                if let Some(notice) = ex.skipped_devices() {
                    progress(Progress::Notice(notice));
                }
                ex.finish()?;
                (format!("tar:{}", abs.display()), ImageConfig::default())
            }
            Some(plan) => {
                drop(ex);
                let stage = tmp.join("stage");
                fs::rename(&unpacked, &stage).ctx(|| format!("moving {}", unpacked.display()))?;
                let plan = image::ImagePlan {
                    layers: plan.layers.iter().map(|l| stage.join(l.strip_prefix(&unpacked).unwrap_or(l))).collect(),
                    ..plan
                };
                let root = tmp.join("root");
                fs::create_dir(&root).ctx(|| format!("creating {}", root.display()))?;
                fs::set_permissions(&root, fs::Permissions::from_mode(0o755))
                    .ctx(|| format!("setting the mode of {}", root.display()))?;
                let mut ex = Extractor::new(&root);
                let n = plan.layers.len();
                for (i, layer) in plan.layers.iter().enumerate() {
                    progress(Progress::Step(format!("applying layer {}/{n}", i + 1)));
                    ex.apply_whiteouts(open_layer(layer)?.reader, &mut || {})?;
                    let TarStream { reader, count, total } = open_layer(layer)?;
                    let mut ticker = ByteTicker { count, total: Some(total), last: 0, progress };
                    ex.extract(reader, true, &mut || ticker.tick())?;
                    ticker.done();
                }
                if let Some(notice) = ex.skipped_devices() {
                    progress(Progress::Notice(notice));
                }
                ex.finish()?;
                remove_tree(&stage).ctx(|| format!("removing {}", stage.display()))?;
                (format!("{}:{}", plan.kind.label(), abs.display()), plan.config)
            }
        };
        progress(Progress::Step(format!("saving rootfs {name}")));
        self.finalize(&mut guard, name, source, image)
    }

    /// Every rootfs in the store, sorted by name. Directories without valid metadata are skipped.
    pub fn list(&self) -> Result<Vec<RootfsInfo>, RootfsError> {
        let dir = self.store_dir();
        let rd = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(RootfsError::io(format!("listing {}", dir.display()), e)),
        };
        let mut out = Vec::new();
        for entry in rd {
            let entry = entry.ctx(|| format!("listing {}", dir.display()))?;
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if validate_name(&name).is_err() {
                continue;
            }
            if let Ok(info) = self.info(&name) {
                out.push(info);
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Removes the rootfs `name`. It disappears atomically (renamed away, then deleted).
    pub fn remove(&self, name: &str) -> Result<(), RootfsError> {
        validate_name(name)?;
        let dir = self.dir_of(name);
        match fs::symlink_metadata(&dir) {
            Ok(m) if m.is_dir() => {}
            _ => return Err(RootfsError::NotFound(name.to_string())),
        }
        let store = self.store_dir();
        let trash = make_temp_dir(&store, "remove").ctx(|| format!("creating a directory in {}", store.display()))?;
        let target = trash.join(name);
        fs::rename(&dir, &target).map_err(|e| {
            let _ = fs::remove_dir(&trash);
            if e.kind() == io::ErrorKind::NotFound {
                RootfsError::NotFound(name.to_string())
            } else {
                RootfsError::io(format!("removing {}", dir.display()), e)
            }
        })?;
        remove_tree(&trash).ctx(|| format!("removing {}", dir.display()))
    }
}

fn open_layer(path: &Path) -> Result<TarStream, RootfsError> {
    open_tar(path).map_err(|e| match e {
        RootfsError::UnknownFormat(_) => RootfsError::Malformed(format!(
            "layer {} is not a tar archive",
            path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default()
        )),
        other => other,
    })
}

/// The store of root filesystems under `$ALCOVE_HOME/rootfs`.
#[derive(Debug, Clone)]
pub struct RootfsStore {
    home: PathBuf,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["a", "A1", "0", "ubuntu-22.04", "x_y.z-w", &"a".repeat(63)] {
            validate_name(ok).unwrap();
        }
        for bad in ["", ".hidden", "-x", "_x", "a/b", "a b", "é", &"a".repeat(64), ".."] {
            assert!(matches!(validate_name(bad), Err(RootfsError::InvalidName { .. })), "{bad:?} accepted");
        }
    }

    #[test]
    fn empty_tar_block_is_not_tar() {
        assert!(!looks_like_tar(&[0u8; 512]));
        assert!(!looks_like_tar(b"hello"));
    }
}
