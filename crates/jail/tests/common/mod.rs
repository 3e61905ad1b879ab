//! Shared fixture of the jail tests: a busybox rootfs and a sandbox dir.
#![allow(dead_code)]

use alcove_backend::GuestSpec;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

pub const BUSYBOX: &str = "/bin/busybox";

pub fn require_root() {
    alcove_testkit::require_root("the jail tests create namespaces, mounts and cgroups");
    assert!(
        Path::new(BUSYBOX).exists(),
        "{BUSYBOX} is missing: install the static busybox (apt-get install busybox-static)"
    );
}

pub struct Fixture {
    pub dir: tempfile::TempDir,
}

impl Fixture {
    /// A base rootfs with busybox and its applets, plus a sandbox dir.
    pub fn new() -> Fixture {
        require_root();
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("rootfs");
        for d in ["bin", "etc", "proc", "sys", "dev", "tmp", "root"] {
            std::fs::create_dir_all(root.join(d)).expect("mkdir");
        }
        std::fs::copy(BUSYBOX, root.join("bin/busybox")).expect("copy busybox");
        let list = std::process::Command::new(BUSYBOX).arg("--list").output().expect("busybox --list");
        for applet in String::from_utf8_lossy(&list.stdout).lines() {
            if applet != "busybox" {
                let _ = symlink("busybox", root.join("bin").join(applet));
            }
        }
        std::fs::write(root.join("etc/base.txt"), "from the base\n").expect("write");
        Fixture { dir }
    }

    pub fn rootfs(&self) -> PathBuf {
        self.dir.path().join("rootfs")
    }

    pub fn sandbox_dir(&self) -> PathBuf {
        self.dir.path().join("sandbox")
    }

    pub fn spec(&self, name: &str) -> GuestSpec {
        GuestSpec {
            name: name.to_string(),
            sandbox_dir: self.sandbox_dir(),
            guest_log: self.sandbox_dir().join("logs/guest.log"),
            rootfs: Some(self.rootfs()),
            agent_binary: Some(PathBuf::from(BUSYBOX)),
            ..GuestSpec::default()
        }
    }

    pub fn guest_log(&self) -> String {
        std::fs::read_to_string(self.sandbox_dir().join("logs/guest.log")).unwrap_or_default()
    }
}
