//! Building the default rootfs from Debian's `busybox-static` package.
//!
//! Invariants: the tree is built in a private temporary directory under the store and
//! appears under its final name by one atomic no-replace rename, complete with `image.json`;
//! an advisory lock makes concurrent builders wait for the first instead of downloading twice,
//! and the rename makes the outcome correct even without the lock.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Stdio};

use crate::error::{IoContext, RootfsError};
use crate::fsutil::{is_root, remove_tree};
use crate::{ImageConfig, Progress};

/// The package the default rootfs is made of.
pub(crate) const PACKAGE: &str = "busybox-static";

/// `PATH` of the default rootfs.
pub(crate) const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

fn hint(what: &str) -> RootfsError {
    RootfsError::AptMissing {
        hint: format!(
            "{what}; provide a root filesystem instead with `alcove rootfs import NAME FILE` or `--rootfs PATH`"
        ),
    }
}

fn last_line(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("no output")
        .trim()
        .to_string()
}

fn apt(args: &[&str], cwd: &Path) -> Result<std::process::Output, RootfsError> {
    Command::new("apt-get")
        .args(args)
        .current_dir(cwd)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                hint("apt-get is not installed")
            } else {
                hint(&format!("apt-get could not be run ({e})"))
            }
        })
}

/// Downloads the package's `.deb` into `dir` and returns its path.
pub(crate) fn download(dir: &Path, progress: &mut dyn FnMut(Progress)) -> Result<PathBuf, RootfsError> {
    progress(Progress::Step(format!("downloading {PACKAGE} with apt-get")));
    let mut out = apt(&["download", PACKAGE], dir)?;
    if !out.status.success() && is_root() {
        progress(Progress::Step("updating apt package lists".into()));
        let upd = apt(&["update"], dir)?;
        if !upd.status.success() {
            return Err(hint(&format!("`apt-get update` failed: {}", last_line(&upd.stderr))));
        }
        progress(Progress::Step(format!("downloading {PACKAGE} with apt-get")));
        out = apt(&["download", PACKAGE], dir)?;
    }
    if !out.status.success() {
        return Err(hint(&format!("`apt-get download {PACKAGE}` failed: {}", last_line(&out.stderr))));
    }
    let mut debs = Vec::new();
    for entry in fs::read_dir(dir).ctx(|| format!("listing {}", dir.display()))? {
        let entry = entry.ctx(|| format!("listing {}", dir.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(PACKAGE) && name.ends_with(".deb") {
            debs.push(entry.path());
        }
    }
    debs.sort();
    debs.pop().ok_or_else(|| hint(&format!("`apt-get download {PACKAGE}` produced no .deb file")))
}

/// The package version encoded in a `.deb` file name (`busybox-static_1%3a1.35.0-4_amd64.deb`).
pub(crate) fn version_of(deb: &Path) -> String {
    let name = deb.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let mut parts = name.trim_end_matches(".deb").split('_');
    let _pkg = parts.next();
    parts.next().unwrap_or("unknown").replace("%3a", ":")
}

fn mkdir(root: &Path, rel: &str, mode: u32) -> Result<(), RootfsError> {
    let p = root.join(rel);
    fs::DirBuilder::new().recursive(true).mode(0o755).create(&p).ctx(|| format!("creating {}", p.display()))?;
    fs::set_permissions(&p, fs::Permissions::from_mode(mode)).ctx(|| format!("setting the mode of {}", p.display()))
}

fn write(root: &Path, rel: &str, contents: &str, mode: u32) -> Result<(), RootfsError> {
    let p = root.join(rel);
    fs::write(&p, contents).ctx(|| format!("writing {}", p.display()))?;
    fs::set_permissions(&p, fs::Permissions::from_mode(mode)).ctx(|| format!("setting the mode of {}", p.display()))
}

/// The symlink target, relative to `rel`'s directory, that reaches `bin/busybox`.
fn link_to_busybox(rel: &Path) -> PathBuf {
    let depth = rel.components().count().saturating_sub(1);
    if rel.parent() == Some(Path::new("bin")) {
        return PathBuf::from("busybox");
    }
    let mut t = PathBuf::new();
    for _ in 0..depth {
        t.push("..");
    }
    t.join("bin/busybox")
}

/// Applet paths relative to the root, from `busybox --list-full` (or `--list`, into `bin/`).
fn applets(busybox: &Path) -> Result<Vec<PathBuf>, RootfsError> {
    let run = |arg: &str| {
        Command::new(busybox)
            .arg(arg)
            .stdin(Stdio::null())
            .output()
            .ctx(|| format!("running {} {arg}", busybox.display()))
    };
    let full = run("--list-full")?;
    let (text, prefix) = if full.status.success() && !full.stdout.is_empty() {
        (full.stdout, "")
    } else {
        let short = run("--list")?;
        if !short.status.success() {
            return Err(RootfsError::io("listing busybox applets", io::Error::other(last_line(&short.stderr))));
        }
        (short.stdout, "bin/")
    };
    let mut out = Vec::new();
    for line in String::from_utf8_lossy(&text).lines() {
        let line = line.trim().trim_start_matches('/');
        if line.is_empty() {
            continue;
        }
        let rel = PathBuf::from(format!("{prefix}{line}"));
        // Only plain relative paths of the form dir/.../name.
        if rel.components().all(|c| matches!(c, Component::Normal(_))) {
            out.push(rel);
        }
    }
    Ok(out)
}

/// Lays out the default tree in `root` from the unpacked package in `pkg`.
pub(crate) fn lay_out(pkg: &Path, root: &Path, progress: &mut dyn FnMut(Progress)) -> Result<ImageConfig, RootfsError> {
    progress(Progress::Step("laying out the default root filesystem".into()));
    let src = ["bin/busybox", "usr/bin/busybox"]
        .iter()
        .map(|r| pkg.join(r))
        .find(|p| fs::symlink_metadata(p).map(|m| m.is_file()).unwrap_or(false))
        .ok_or_else(|| hint(&format!("the {PACKAGE} package contains no bin/busybox")))?;

    for (rel, mode) in [
        ("bin", 0o755),
        ("sbin", 0o755),
        ("usr/bin", 0o755),
        ("usr/sbin", 0o755),
        ("etc", 0o755),
        ("root", 0o700),
        ("home/alcove", 0o755),
        ("tmp", 0o1777),
        ("var/tmp", 0o1777),
        ("proc", 0o555),
        ("sys", 0o555),
        ("dev", 0o755),
        ("run", 0o755),
    ] {
        mkdir(root, rel, mode)?;
    }
    if is_root() {
        let home = root.join("home/alcove");
        std::os::unix::fs::chown(&home, Some(1000), Some(1000))
            .ctx(|| format!("setting the owner of {}", home.display()))?;
    }

    let busybox = root.join("bin/busybox");
    fs::copy(&src, &busybox).ctx(|| format!("copying {}", src.display()))?;
    fs::set_permissions(&busybox, fs::Permissions::from_mode(0o755))
        .ctx(|| format!("setting the mode of {}", busybox.display()))?;

    progress(Progress::Step("installing busybox applet links".into()));
    let mut list = applets(&busybox)?;
    list.push(PathBuf::from("bin/sh"));
    for rel in list {
        if rel == Path::new("bin/busybox") {
            continue;
        }
        let path = root.join(&rel);
        if fs::symlink_metadata(&path).is_ok() {
            continue;
        }
        if let Some(parent) = path.parent() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(parent)
                .ctx(|| format!("creating {}", parent.display()))?;
        }
        std::os::unix::fs::symlink(link_to_busybox(&rel), &path).ctx(|| format!("linking {}", path.display()))?;
    }

    write(
        root,
        "etc/passwd",
        "root:x:0:0:root:/root:/bin/sh\n\
         alcove:x:1000:1000:alcove:/home/alcove:/bin/sh\n\
         nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
        0o644,
    )?;
    write(root, "etc/group", "root:x:0:\nalcove:x:1000:\nnogroup:x:65534:\n", 0o644)?;
    write(root, "etc/hostname", "alcove\n", 0o644)?;
    write(root, "etc/hosts", "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n", 0o644)?;
    write(root, "etc/profile", &format!("export PATH={DEFAULT_PATH}\n"), 0o644)?;

    Ok(ImageConfig {
        env: vec![("PATH".to_string(), DEFAULT_PATH.to_string())],
        cmd: vec!["/bin/sh".to_string()],
        entrypoint: Vec::new(),
        workdir: None,
        user: None,
    })
}

/// Removes the scratch directories of a build.
pub(crate) fn cleanup(dirs: &[&Path]) {
    for d in dirs {
        let _ = remove_tree(d);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busybox_link_targets() {
        assert_eq!(link_to_busybox(Path::new("bin/ls")), PathBuf::from("busybox"));
        assert_eq!(link_to_busybox(Path::new("usr/bin/env")), PathBuf::from("../../bin/busybox"));
        assert_eq!(link_to_busybox(Path::new("sbin/ifconfig")), PathBuf::from("../bin/busybox"));
        assert_eq!(link_to_busybox(Path::new("linuxrc")), PathBuf::from("bin/busybox"));
    }

    #[test]
    fn versions_from_file_names() {
        assert_eq!(
            version_of(Path::new("/x/busybox-static_1%3a1.35.0-4+deb12u1+b1_amd64.deb")),
            "1:1.35.0-4+deb12u1+b1"
        );
    }
}
