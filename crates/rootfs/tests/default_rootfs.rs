//! The default rootfs, really built from Debian's busybox-static with apt-get (needs the
//! Debian package registry, which this project's machines reach).

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::Command;
use std::time::{Duration, Instant};

use alcove_rootfs::{Progress, RootfsStore};

#[test]
fn default_rootfs_is_built_once_and_cached() {
    let home = tempfile::tempdir().unwrap();
    let store = RootfsStore::new(home.path());
    let mut steps = Vec::new();
    let r = store
        .ensure_default(&mut |p| {
            if let Progress::Step(s) = p {
                steps.push(s)
            }
        })
        .unwrap_or_else(|e| panic!("building the default rootfs: {e}"));
    assert!(steps.iter().any(|s| s.contains("busybox-static")), "{steps:?}");
    assert!(steps.len() >= 3, "{steps:?}");
    assert!(
        !steps.iter().any(|s| s.contains("dpkg-deb")),
        "the pure-Rust .deb reader must handle busybox-static: {steps:?}"
    );
    let root = &r.root;
    assert_eq!(root, &home.path().join("rootfs/default/root"));

    // busybox runs, directly and through the /bin/sh link.
    let out = Command::new(root.join("bin/busybox")).args(["echo", "ok"]).output().unwrap();
    assert!(out.status.success());
    assert_eq!(out.stdout, b"ok\n");
    let out = Command::new(root.join("bin/sh")).args(["-c", "echo ok"]).output().unwrap();
    assert_eq!(out.stdout, b"ok\n");
    alcove_rootfs::require_shell(root).unwrap();

    // Applet links for what busybox lists, relative so they work from the host too.
    let list = Command::new(root.join("bin/busybox")).arg("--list").output().unwrap();
    let applets: Vec<String> = String::from_utf8(list.stdout).unwrap().lines().map(str::to_string).collect();
    assert!(applets.len() > 100, "{} applets", applets.len());
    for a in &applets {
        let found =
            ["bin", "sbin", "usr/bin", "usr/sbin"].iter().any(|d| fs::symlink_metadata(root.join(d).join(a)).is_ok())
                || fs::symlink_metadata(root.join(a)).is_ok();
        assert!(found, "applet {a} has no link");
    }
    for link in ["bin/sh", "bin/ls", "usr/bin/env"] {
        let target = fs::canonicalize(root.join(link)).unwrap();
        assert_eq!(target, fs::canonicalize(root.join("bin/busybox")).unwrap(), "{link}");
    }

    // The minimal tree.
    let passwd = fs::read_to_string(root.join("etc/passwd")).unwrap();
    assert!(passwd.lines().any(|l| l.starts_with("root:x:0:0:")));
    assert!(passwd.lines().any(|l| l.starts_with("nobody:x:65534:")));
    assert!(passwd.lines().any(|l| l.starts_with("alcove:x:1000:1000:") && l.contains("/home/alcove")));
    let group = fs::read_to_string(root.join("etc/group")).unwrap();
    assert!(group.lines().any(|l| l.starts_with("alcove:x:1000:")));
    assert!(fs::read_to_string(root.join("etc/hosts")).unwrap().contains("localhost"));
    assert!(!fs::read_to_string(root.join("etc/hostname")).unwrap().trim().is_empty());
    for d in ["root", "home/alcove", "tmp", "proc", "sys", "dev", "run", "var/tmp", "usr/bin", "usr/sbin", "sbin"] {
        assert!(fs::symlink_metadata(root.join(d)).unwrap().is_dir(), "{d}");
    }
    let mode = |d: &str| fs::metadata(root.join(d)).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode("tmp"), 0o1777);
    assert_eq!(mode("var/tmp"), 0o1777);
    if unsafe { libc::geteuid() } == 0 {
        assert_eq!(fs::metadata(root.join("home/alcove")).unwrap().uid(), 1000);
    }
    assert_eq!(r.image.cmd, vec!["/bin/sh"]);
    assert!(r.image.env.iter().any(|(k, v)| k == "PATH" && v.contains("/bin")));

    let info = store.info("default").unwrap();
    assert!(info.source.contains("busybox-static"), "{}", info.source);
    assert!(info.size_bytes > 500_000, "{}", info.size_bytes);
    assert_eq!(store.list().unwrap().len(), 1);

    // Second call: no work (no progress, fast, same files).
    let before = fs::metadata(root.join("bin/busybox")).unwrap();
    let dir_before = fs::metadata(home.path().join("rootfs/default")).unwrap();
    let t = Instant::now();
    let mut calls = 0;
    let again = store.ensure_default(&mut |_| calls += 1).unwrap();
    assert!(t.elapsed() < Duration::from_millis(200), "{:?}", t.elapsed());
    assert_eq!(calls, 0);
    assert_eq!(again, r);
    let after = fs::metadata(root.join("bin/busybox")).unwrap();
    let dir_after = fs::metadata(home.path().join("rootfs/default")).unwrap();
    assert_eq!((before.ino(), before.mtime_nsec()), (after.ino(), after.mtime_nsec()));
    assert_eq!((dir_before.ino(), dir_before.mtime_nsec()), (dir_after.ino(), dir_after.mtime_nsec()));
    // resolve("default") goes through the same cache.
    assert_eq!(store.resolve("default").unwrap(), r);

    // Removing it and racing two builders yields one complete rootfs and no leftovers.
    store.remove("default").unwrap();
    let h = home.path().to_path_buf();
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let h = h.clone();
            std::thread::spawn(move || RootfsStore::new(h).ensure_default(&mut |_| {}))
        })
        .collect();
    let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap().unwrap()).collect();
    assert_eq!(results[0], results[1]);
    let out = Command::new(results[0].root.join("bin/busybox")).args(["echo", "ok"]).output().unwrap();
    assert_eq!(out.stdout, b"ok\n");
    let mut names: Vec<String> = fs::read_dir(home.path().join("rootfs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, vec![".default.lock", "default"]);
}
