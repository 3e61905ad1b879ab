//! A VM's name files (`/etc/hosts`, `/etc/hostname`, `/etc/resolv.conf`),
//! written by the agent into the assembled root before it pivots there.
//!
//! Invariants:
//! - Written through the overlay, so they land in the writable layer and
//!   the base rootfs is never touched; a base copy is hidden.
//! - A guest's own edit is kept: alcove's last written copy of each file is
//!   kept outside the guest's root (`<rw>/.alcove-names/NAME`), and a file
//!   in the upper layer that differs from it (or a deletion, a whiteout) is
//!   the guest's and is left alone.
//! - Only single files directly under `/etc` are written; any other path
//!   from the configuration is refused.

use alcove_protocol::agent_config::NameFile;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Writes `files` into `root` (the merged view) unless the guest's upper
/// layer `upper` holds its own edit; `keep` is where alcove's last copies
/// live. Returns the paths written.
pub fn install(files: &[NameFile], root: &Path, upper: &Path, keep: &Path) -> io::Result<Vec<String>> {
    let mut written = Vec::new();
    for file in files {
        let Some(name) = file.path.strip_prefix("/etc/").filter(|n| !n.is_empty() && !n.contains('/') && *n != "..")
        else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("name file {:?} is not under /etc", file.path),
            ));
        };
        let last = keep.join(name);
        let in_upper = upper.join("etc").join(name);
        if fs::symlink_metadata(&in_upper).is_ok() {
            let theirs = fs::read(&in_upper).ok();
            if theirs.is_none() || theirs != fs::read(&last).ok() {
                continue;
            }
        }
        fs::create_dir_all(keep)?;
        let etc = root.join("etc");
        fs::create_dir_all(&etc)?;
        replace(&etc.join(name), &file.content)?;
        replace(&last, &file.content)?;
        written.push(file.path.clone());
    }
    Ok(written)
}

fn replace(path: &Path, content: &str) -> io::Result<()> {
    let tmp = path.with_extension("alcove-tmp");
    let mut f = fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o644).open(&tmp)?;
    f.write_all(content.as_bytes())?;
    drop(f);
    fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, content: &str) -> NameFile {
        NameFile { path: path.into(), content: content.into() }
    }

    /// Without an overlay, the root and its upper layer are one directory.
    #[test]
    fn files_are_written_and_an_edit_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (root, keep) = (dir.path().join("root"), dir.path().join("keep"));
        let hosts = root.join("etc/hosts");
        let files = [file("/etc/hosts", "one\n"), file("/etc/hostname", "box\n")];
        assert_eq!(install(&files, &root, &root, &keep).unwrap(), ["/etc/hosts", "/etc/hostname"]);
        assert_eq!(fs::read_to_string(&hosts).unwrap(), "one\n");
        assert_eq!(fs::read_to_string(root.join("etc/hostname")).unwrap(), "box\n");

        // Untouched: follows the new settings.
        install(&[file("/etc/hosts", "two\n")], &root, &root, &keep).unwrap();
        assert_eq!(fs::read_to_string(&hosts).unwrap(), "two\n");
        // Edited by the guest: kept.
        fs::write(&hosts, "mine\n").unwrap();
        assert!(install(&[file("/etc/hosts", "three\n")], &root, &root, &keep).unwrap().is_empty());
        assert_eq!(fs::read_to_string(&hosts).unwrap(), "mine\n");
    }

    #[test]
    fn a_base_copy_is_replaced_but_only_through_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let (root, upper, keep) = (dir.path().join("root"), dir.path().join("upper"), dir.path().join("keep"));
        fs::create_dir_all(root.join("etc")).unwrap();
        fs::create_dir_all(&upper).unwrap();
        // A stale copy visible in the root but absent from the upper layer
        // (it comes from the base): replaced.
        fs::write(root.join("etc/resolv.conf"), "nameserver 192.0.2.53\n").unwrap();
        install(&[file("/etc/resolv.conf", "nameserver 10.0.2.1\n")], &root, &upper, &keep).unwrap();
        assert_eq!(fs::read_to_string(root.join("etc/resolv.conf")).unwrap(), "nameserver 10.0.2.1\n");
    }

    #[test]
    fn paths_outside_etc_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        for bad in ["/etc/../root/x", "/tmp/hosts", "/etc/", "/etc/a/b"] {
            assert!(install(&[file(bad, "x")], dir.path(), dir.path(), dir.path()).is_err(), "{bad}");
        }
    }
}
