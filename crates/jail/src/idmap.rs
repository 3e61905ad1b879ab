//! Host uid/gid ranges for the jails' private user namespaces.
//!
//! When alcove runs as root, every sandbox's guest ids `0..RANGE_SIZE` map
//! to a host range of its own, `base..base+RANGE_SIZE`, taken from alcove's
//! pool ([`POOL_START`]..[`POOL_END`], the top of the range systemd assigns
//! to containers) — in the manner of `systemd-nspawn --private-users=pick`
//! and `podman --userns=auto`.
//!
//! The registry ([`registry_dir`], root only, mode 0700) is host-global and
//! persistent: one file per range, named by its base, holding the canonical
//! path of the sandbox directory that owns it. Invariants:
//! - a range is never handed to a second sandbox while its owner directory
//!   exists (allocation happens under an exclusive `flock` of `.lock`);
//! - an entry whose owner directory is gone is reclaimable (temporary homes
//!   of tests, removed sandboxes), so ranges do not leak;
//! - a sandbox keeps its range across stop/start: the files of its writable
//!   layer carry host ids of that range. The sandbox directory records the
//!   range too ([`Isolation`](crate::Isolation)'s record), which makes the
//!   next start's look-up one file read; entries are not synced (see
//!   [`Registry::claim`] for why a lost one is harmless);
//! - ranges that overlap a uid or gid of `/etc/passwd`/`/etc/group` or a
//!   subordinate range of `/etc/subuid`/`/etc/subgid` are never used.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Ids per sandbox (guest uids and gids `0..RANGE_SIZE`).
pub const RANGE_SIZE: u32 = 65536;
/// First host id of alcove's pool.
pub const POOL_START: u32 = 0x6000_0000;
/// End (exclusive) of alcove's pool; systemd's container range ends here.
pub const POOL_END: u32 = 0x6FFF_0000;
/// The host-global registry.
pub const REGISTRY_DIR: &str = "/var/lib/alcove/userns";

/// The registry directory.
pub fn registry_dir() -> PathBuf {
    PathBuf::from(REGISTRY_DIR)
}

/// Why no range could be had.
#[derive(Debug, thiserror::Error)]
pub enum IdmapError {
    /// A registry file could not be read or written.
    #[error("uid range registry {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Every range of the pool is held.
    #[error("no free uid range is left in alcove's pool ({POOL_START}..{POOL_END}): {held} sandboxes hold one")]
    Exhausted {
        /// Ranges held.
        held: usize,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> IdmapError + '_ {
    move |source| IdmapError::Io { path: path.to_path_buf(), source }
}

/// The registry of ranges.
#[derive(Clone, Debug)]
pub struct Registry {
    dir: PathBuf,
}

impl Registry {
    /// The registry at `dir`, created (0700) if absent.
    pub fn open(dir: &Path) -> Result<Registry, IdmapError> {
        match fs::DirBuilder::new().recursive(true).mode(0o700).create(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(IdmapError::Io { path: dir.to_path_buf(), source: e }),
        }
        let meta = fs::metadata(dir).map_err(io_err(dir))?;
        if meta.permissions().mode() & 0o077 != 0 {
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io_err(dir))?;
        }
        Ok(Registry { dir: dir.to_path_buf() })
    }

    fn entry(&self, base: u32) -> PathBuf {
        self.dir.join(base.to_string())
    }

    /// The owner recorded for the range at `base`, if any.
    pub fn holder(&self, base: u32) -> Option<PathBuf> {
        let text = fs::read_to_string(self.entry(base)).ok()?;
        Some(PathBuf::from(text.trim_end_matches('\n')))
    }

    /// Whether `owner` holds the range at `base` (the fast path of a
    /// restart: one read, no lock; nobody reclaims an entry whose owner
    /// directory exists).
    pub fn holds(&self, base: u32, owner: &Path) -> bool {
        in_pool(base) && self.holder(base).as_deref() == Some(owner)
    }

    /// Claims a range for `owner` (a canonical sandbox directory): the one
    /// it already holds, else a free or reclaimable one.
    ///
    /// The entry is written atomically (rename) but not synced: an entry a
    /// crash takes back costs nothing but a shift. The range guards running
    /// jails from each other, and a stopped sandbox's layer is unreachable
    /// in its 0700 directory; its next start claims again and
    /// [`own_upper`] moves the layer into whatever range it gets. (Two
    /// `fsync`s here are paid on every creation, more under I/O load.)
    pub fn claim(&self, owner: &Path) -> Result<u32, IdmapError> {
        let lock_path = self.dir.join(".lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .map_err(io_err(&lock_path))?;
        // SAFETY: flock on an fd we own; released when `lock` is closed.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(IdmapError::Io { path: lock_path, source: io::Error::last_os_error() });
        }
        let reserved = reserved_ranges();
        let slots = (POOL_END - POOL_START) / RANGE_SIZE;
        let start = fnv1a(owner.as_os_str().as_encoded_bytes()) % slots;
        let mut held = 0;
        for i in 0..slots {
            let base = POOL_START + ((start + i) % slots) * RANGE_SIZE;
            if overlaps(&reserved, base) {
                continue;
            }
            let free = match self.holder(base) {
                None => true,
                Some(h) if h == owner => return Ok(base),
                // The owner's directory is gone: reclaim.
                Some(h) => !h.exists(),
            };
            if !free {
                held += 1;
                continue;
            }
            self.write_entry(base, owner)?;
            return Ok(base);
        }
        Err(IdmapError::Exhausted { held })
    }

    fn write_entry(&self, base: u32, owner: &Path) -> Result<(), IdmapError> {
        let tmp = self.dir.join(format!(".{base}.tmp"));
        let mut f =
            OpenOptions::new().create(true).truncate(true).write(true).mode(0o600).open(&tmp).map_err(io_err(&tmp))?;
        let mut line = owner.as_os_str().as_encoded_bytes().to_vec();
        line.push(b'\n');
        f.write_all(&line).map_err(io_err(&tmp))?;
        let entry = self.entry(base);
        fs::rename(&tmp, &entry).map_err(io_err(&entry))
    }
}

fn in_pool(base: u32) -> bool {
    (POOL_START..POOL_END).contains(&base) && (base - POOL_START).is_multiple_of(RANGE_SIZE)
}

fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5u32, |h, b| (h ^ u32::from(*b)).wrapping_mul(0x0100_0193))
}

/// Host ids already spoken for: users and groups, subordinate ranges.
fn reserved_ranges() -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    for file in ["/etc/subuid", "/etc/subgid"] {
        out.extend(parse_subid(&fs::read_to_string(file).unwrap_or_default()));
    }
    for file in ["/etc/passwd", "/etc/group"] {
        for id in parse_ids(&fs::read_to_string(file).unwrap_or_default()) {
            out.push((id, id + 1));
        }
    }
    out
}

fn overlaps(reserved: &[(u64, u64)], base: u32) -> bool {
    let (lo, hi) = (u64::from(base), u64::from(base) + u64::from(RANGE_SIZE));
    reserved.iter().any(|(a, b)| *a < hi && lo < *b)
}

/// `name:start:count` lines of /etc/subuid and /etc/subgid.
fn parse_subid(text: &str) -> Vec<(u64, u64)> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.trim().split(':');
            let (_, start, count) = (f.next()?, f.next()?.parse::<u64>().ok()?, f.next()?.parse::<u64>().ok()?);
            Some((start, start.saturating_add(count)))
        })
        .collect()
}

/// The third field (the id) of /etc/passwd and /etc/group lines.
fn parse_ids(text: &str) -> Vec<u64> {
    text.lines().filter_map(|l| l.split(':').nth(2)?.parse().ok()).collect()
}

/// Makes the writable layer `upper` belong to the range at `base`: its root
/// directory becomes the guest's root. A layer written under another
/// mapping (guest root was host root before alcove mapped it, or the
/// sandbox had another range) is shifted entry by entry, ids
/// `old..old+RANGE_SIZE` to `base..`, without following symlinks.
pub fn own_upper(upper: &Path, base: u32) -> Result<(), IdmapError> {
    let meta = fs::symlink_metadata(upper).map_err(io_err(upper))?;
    let old = meta.uid();
    if old == base && meta.gid() == base {
        return Ok(());
    }
    if old == 0 || in_pool(old) {
        shift_tree(upper, old, base)?;
    }
    lchown(upper, base, base)
}

fn shift_tree(dir: &Path, old: u32, base: u32) -> Result<(), IdmapError> {
    let shift = |id: u32| if (old..old.saturating_add(RANGE_SIZE)).contains(&id) { base + (id - old) } else { id };
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let path = entry.path();
        let meta = fs::symlink_metadata(&path).map_err(io_err(&path))?;
        if meta.is_dir() {
            shift_tree(&path, old, base)?;
        }
        let mode = meta.mode();
        lchown(&path, shift(meta.uid()), shift(meta.gid()))?;
        // chown clears set-id bits of regular files: put back what was there.
        if meta.is_file() && mode & 0o6000 != 0 {
            fs::set_permissions(&path, fs::Permissions::from_mode(mode & 0o7777)).map_err(io_err(&path))?;
        }
    }
    Ok(())
}

fn lchown(path: &Path, uid: u32, gid: u32) -> Result<(), IdmapError> {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid)).map_err(io_err(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(dir: &tempfile::TempDir, name: &str) -> PathBuf {
        let p = dir.path().join(name);
        fs::create_dir_all(&p).expect("mkdir");
        p
    }

    #[test]
    fn claims_are_distinct_kept_and_reclaimed() {
        let owners = tempfile::tempdir().expect("tempdir");
        let reg_dir = tempfile::tempdir().expect("tempdir");
        let reg = Registry::open(&reg_dir.path().join("userns")).expect("open");
        let a = owner(&owners, "a");
        let b = owner(&owners, "b");
        let ra = reg.claim(&a).expect("claim a");
        let rb = reg.claim(&b).expect("claim b");
        assert_ne!(ra, rb);
        assert!(in_pool(ra) && in_pool(rb), "{ra} {rb}");
        assert!(ra.abs_diff(rb) >= RANGE_SIZE);
        // The same owner gets the same range, by look-up or by claim.
        assert_eq!(reg.claim(&a).expect("again"), ra);
        assert!(reg.holds(ra, &a));
        assert!(!reg.holds(ra, &b));
        assert_eq!(reg.holder(ra).as_deref(), Some(a.as_path()));
        // b's range is never handed out while b exists.
        for i in 0..40 {
            let c = owner(&owners, &format!("c{i}"));
            let r = reg.claim(&c).expect("claim");
            assert_ne!(r, rb, "b's range was handed out while b exists");
            assert_ne!(r, ra, "a's range was handed out while a exists");
        }
        let mode = fs::metadata(reg_dir.path().join("userns")).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }

    #[test]
    fn a_taken_slot_is_skipped() {
        let owners = tempfile::tempdir().expect("tempdir");
        let reg_dir = tempfile::tempdir().expect("tempdir");
        let reg = Registry::open(reg_dir.path()).expect("open");
        let a = owner(&owners, "same-start");
        // Someone else (alive) holds the slot a would hash to.
        let slots = (POOL_END - POOL_START) / RANGE_SIZE;
        let first = POOL_START + (fnv1a(a.as_os_str().as_encoded_bytes()) % slots) * RANGE_SIZE;
        let other = owner(&owners, "other");
        fs::write(reg.entry(first), format!("{}\n", other.display())).expect("write");
        let got = reg.claim(&a).expect("claim");
        assert_ne!(got, first);
        assert_eq!(reg.holder(first).as_deref(), Some(other.as_path()));
        // Once the holder's directory is gone, its range is reclaimed.
        let b = owner(&owners, "b");
        let first_b = POOL_START + (fnv1a(b.as_os_str().as_encoded_bytes()) % slots) * RANGE_SIZE;
        let gone = owners.path().join("gone");
        fs::write(reg.entry(first_b), format!("{}\n", gone.display())).expect("write");
        assert_eq!(reg.claim(&b).expect("claim"), first_b);
        assert_eq!(reg.holder(first_b).as_deref(), Some(b.as_path()));
    }

    #[test]
    fn reserved_ids_are_parsed_and_avoided() {
        assert_eq!(
            parse_subid("alice:100000:65536\n\nbad\nbob:1610612736:10\n"),
            [(100000, 165536), (1_610_612_736, 1_610_612_746)]
        );
        assert_eq!(parse_ids("root:x:0:0::/root:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n"), [0, 65534]);
        let reserved = vec![(u64::from(POOL_START) + 5, u64::from(POOL_START) + 6)];
        assert!(overlaps(&reserved, POOL_START));
        assert!(!overlaps(&reserved, POOL_START + RANGE_SIZE));
    }

    #[test]
    fn an_upper_layer_is_shifted_into_its_range() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return; // chown needs root; the jail tests run as root.
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let upper = dir.path().join("upper");
        fs::create_dir_all(upper.join("etc")).expect("mkdir");
        fs::write(upper.join("etc/f"), "x").expect("write");
        lchown(&upper.join("etc/f"), 1000, 1000).expect("chown");
        std::os::unix::fs::symlink("/nowhere", upper.join("link")).expect("symlink");
        own_upper(&upper, POOL_START).expect("own");
        let m = |p: &str| fs::symlink_metadata(upper.join(p)).expect("meta");
        assert_eq!((m("").uid(), m("").gid()), (POOL_START, POOL_START));
        assert_eq!(m("etc").uid(), POOL_START);
        assert_eq!((m("etc/f").uid(), m("etc/f").gid()), (POOL_START + 1000, POOL_START + 1000));
        assert_eq!(m("link").uid(), POOL_START);
        // And from one range to another.
        own_upper(&upper, POOL_START + RANGE_SIZE).expect("move");
        assert_eq!(m("etc/f").uid(), POOL_START + RANGE_SIZE + 1000);
    }
}
