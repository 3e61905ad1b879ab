//! The guest's name files: `/etc/hosts`, `/etc/hostname` and, when the
//! guest has a network link, `/etc/resolv.conf`, as docker and podman
//! provide them.
//!
//! Each file is kept on the host in `sandbox_dir/etc/` and bound read-write
//! over the guest's path (a file volume), so the base rootfs is never
//! written and a rootfs's stale copy (debootstrap copies the build host's
//! resolv.conf) is hidden.
//!
//! Invariants:
//! - A guest's own edit is never overwritten: next to each file alcove
//!   keeps what it last wrote (`.NAME.alcove`); a start rewrites the file
//!   only when it is absent or still exactly that.
//! - A user volume over the same path (or over `/etc`) wins: the file is
//!   then not bound at all.
//! - Best effort where the guest's /etc cannot take a mount point (a
//!   rootless jail over a rootfs the caller does not own): the file is
//!   then not bound, and the jail starts as before.
//! - The files are 0644 (every guest user reads them) in the 0700
//!   `sandbox_dir/etc`; alcove's copies are 0600. Both are replaced by
//!   rename, so a half-written file is never seen.
//! - As with docker, a bound file cannot be replaced by rename or removed
//!   inside the guest (`sed -i`, `rm`: EBUSY); writing it in place works.

use crate::validate::Volume;
use alcove_backend::names::render_as;
use alcove_backend::{BackendError, GuestSpec};
use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

/// Writes the name files of a jail named `hostname` under
/// `sandbox_dir/etc/` (see the module docs for when a file is left alone)
/// and returns them as file volumes, skipping any path a user volume
/// already covers.
pub(crate) fn prepare(spec: &GuestSpec, hostname: &str, user_volumes: &[Volume]) -> Result<Vec<Volume>, BackendError> {
    let dir = spec.sandbox_dir.join("etc");
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(|e| BackendError::io(format!("creating {}", dir.display()), e))?;
    let mut volumes = Vec::new();
    for (guest, content) in render_as(spec, hostname) {
        let covered = user_volumes.iter().any(|v| guest == v.guest || guest.starts_with(&format!("{}/", v.guest)));
        if covered {
            continue;
        }
        let file_name = guest.rsplit('/').next().unwrap_or(guest);
        let host = dir.join(file_name);
        refresh(&host, &dir.join(format!(".{file_name}.alcove")), &content)
            .map_err(|e| BackendError::io(format!("writing {}", host.display()), e))?;
        volumes.push(Volume { host, guest: guest.to_string(), is_dir: false, readonly: false, optional: true });
    }
    Ok(volumes)
}

/// Writes `content` to `path` unless the file there differs from what
/// alcove last wrote (kept in `last`): that is the guest's edit.
fn refresh(path: &Path, last: &Path, content: &str) -> std::io::Result<()> {
    let current = match fs::read(path) {
        Ok(c) => Some(c),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e),
    };
    if let Some(current) = &current {
        let ours = fs::read(last).ok();
        if ours.as_deref() != Some(current.as_slice()) {
            return Ok(());
        }
        if current == content.as_bytes() {
            return Ok(());
        }
    }
    // The copy is alcove's alone; the file itself is read by every guest user.
    write_replacing(last, content, 0o600)?;
    write_replacing(path, content, 0o644)
}

fn write_replacing(path: &Path, content: &str, mode: u32) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = fs::OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(&tmp)?;
    f.write_all(content.as_bytes())?;
    drop(f);
    fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_edit_is_kept_and_an_untouched_file_follows_the_settings() {
        let dir = tempfile::tempdir().unwrap();
        let (path, last) = (dir.path().join("hosts"), dir.path().join(".hosts.alcove"));
        refresh(&path, &last, "one\n").unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "one\n");
        refresh(&path, &last, "two\n").unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "two\n", "an untouched file follows the settings");
        fs::write(&path, "mine\n").unwrap();
        refresh(&path, &last, "three\n").unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "mine\n", "the guest's edit was overwritten");
        fs::remove_file(&path).unwrap();
        refresh(&path, &last, "four\n").unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "four\n");
    }
}
