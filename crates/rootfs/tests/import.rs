//! Imports of real archives generated in the tests: plain tar, tar.gz, OCI layout, docker-save.

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use alcove_rootfs::{ImageConfig, Progress, RootfsError, RootfsStore};
use common::*;

fn rootfs_tar() -> Vec<u8> {
    tar_bytes(&[
        E::Dir("./", 0o755),
        E::Dir("./bin/", 0o755),
        E::File("./bin/busybox", b"\x7fELF not really", 0o755),
        E::Symlink("./bin/sh", "busybox"),
        E::Symlink("./bin/abs", "/bin/busybox"),
        E::Hardlink("./bin/hard", "./bin/busybox"),
        E::Dir("./etc/", 0o755),
        E::File("./etc/hostname", b"box\n", 0o644),
        E::File("./etc/shadow", b"root:*:1::::::\n", 0o600),
        E::Dir("./tmp/", 0o1777),
        E::Dir("./ro/", 0o555),
        E::File("./ro/inside", b"x", 0o444),
        E::File("./usr/bin/implied-parents", b"y", 0o755),
    ])
}

fn check_rootfs_tree(root: &Path) {
    assert_eq!(fs::read(root.join("etc/hostname")).unwrap(), b"box\n");
    let mode = |p: &str| fs::symlink_metadata(root.join(p)).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode("etc/shadow"), 0o600);
    assert_eq!(mode("bin/busybox"), 0o755);
    assert_eq!(mode("tmp"), 0o1777);
    assert_eq!(mode("ro"), 0o555);
    assert_eq!(mode("ro/inside"), 0o444);
    assert_eq!(fs::read_link(root.join("bin/sh")).unwrap(), Path::new("busybox"));
    assert_eq!(fs::read_link(root.join("bin/abs")).unwrap(), Path::new("/bin/busybox"));
    let a = fs::metadata(root.join("bin/busybox")).unwrap();
    let b = fs::metadata(root.join("bin/hard")).unwrap();
    assert_eq!((a.dev(), a.ino()), (b.dev(), b.ino()), "hard link preserved");
    assert_eq!(fs::read(root.join("usr/bin/implied-parents")).unwrap(), b"y");
    assert_eq!(a.mtime(), 1_700_000_000);
    alcove_rootfs::require_shell(root).unwrap();
}

#[test]
fn plain_tar_import() {
    let home = tempfile::tempdir().unwrap();
    let file = home.path().join("root.tar");
    fs::write(&file, rootfs_tar()).unwrap();
    let store = RootfsStore::new(home.path());
    let mut steps = Vec::new();
    let mut bytes_seen = false;
    let info = store
        .import("plain", &file, &mut |p| match p {
            Progress::Step(s) => steps.push(s),
            Progress::Bytes { done, total } => {
                bytes_seen = true;
                assert!(total.is_some_and(|t| done <= t));
            }
            Progress::Notice(n) => panic!("no notice expected for a tree without devices: {n}"),
            Progress::Layer { digest, .. } => panic!("an import downloads no layer: {digest}"),
        })
        .unwrap();
    assert!(!steps.is_empty() && bytes_seen, "progress reported: {steps:?}");
    assert_eq!(info.name, "plain");
    assert_eq!(info.root, home.path().join("rootfs/plain/root"));
    assert!(info.source.starts_with("tar:") && info.source.ends_with("root.tar"));
    assert_eq!(info.image, ImageConfig::default());
    // busybox (15) + hostname (4) + shadow (15) + inside (1) + implied (1) + symlinks (7 + 12)
    assert_eq!(info.size_bytes, 15 + 4 + 15 + 1 + 1 + 7 + 12);
    assert!(info.created_at_ms > 1_600_000_000_000);
    check_rootfs_tree(&info.root);
    assert!(home.path().join("rootfs/plain/image.json").is_file());

    // Resolve by name gives the same thing.
    let r = store.resolve("plain").unwrap();
    assert_eq!(r.root, info.root);
    // Only the rootfs itself remains in the store.
    assert_eq!(listing(&home.path().join("rootfs")), vec!["plain"]);
}

#[test]
fn gzip_tar_import() {
    let home = tempfile::tempdir().unwrap();
    let file = home.path().join("root.tar.gz");
    fs::write(&file, gzip(&rootfs_tar())).unwrap();
    let store = RootfsStore::new(home.path());
    let info = store.import("gz", &file, &mut |_| {}).unwrap();
    check_rootfs_tree(&info.root);
}

fn check_layered(root: &Path) {
    // Layer 1 content that survives.
    assert_eq!(fs::read(root.join("etc/os-release")).unwrap(), b"ID=test\n");
    assert_eq!(fs::read(root.join("bin/sh")).unwrap(), b"#!fake shell");
    // Whiteouts.
    assert!(fs::symlink_metadata(root.join("etc/doomed")).is_err(), "whited-out file removed");
    assert!(fs::symlink_metadata(root.join("gone-dir")).is_err(), "whited-out dir removed");
    assert!(fs::symlink_metadata(root.join("etc/.wh.doomed")).is_err(), "marker not extracted");
    assert!(fs::symlink_metadata(root.join(".wh.gone-dir")).is_err());
    // Opaque dir: lower contents gone, same-layer content kept, marker not extracted.
    assert_eq!(listing(&root.join("opaque")), vec!["upper"]);
    assert_eq!(fs::metadata(root.join("opaque/upper")).unwrap().permissions().mode() & 0o7777, 0o600);
    // Replacement in the upper layer; its setuid bit is not kept on the host.
    assert_eq!(fs::read(root.join("replaced")).unwrap(), b"new");
    assert_eq!(fs::metadata(root.join("replaced")).unwrap().permissions().mode() & 0o7777, 0o0755);
    assert_eq!(fs::read(root.join("etc/added")).unwrap(), b"added");
    assert_eq!(fs::read_link(root.join("bin/busybox-link")).unwrap(), Path::new("/bin/sh"));
    // No staging leftovers in the root.
    assert!(!root.join("blobs").exists() && !root.join("index.json").exists());
}

fn expected_config() -> ImageConfig {
    ImageConfig {
        env: vec![("PATH".into(), "/usr/bin:/bin".into()), ("GREETING".into(), "hello=world".into())],
        cmd: vec!["/bin/app".into(), "--serve".into()],
        entrypoint: vec!["/entry.sh".into()],
        workdir: Some("/srv".into()),
        user: Some("1000:1000".into()),
    }
}

#[test]
fn oci_archive_import_with_whiteouts_and_opaque_dir() {
    let home = tempfile::tempdir().unwrap();
    let file = home.path().join("img.oci.tar");
    write_oci_archive(&file, &[layer1(), layer2()]);
    let store = RootfsStore::new(home.path());
    let mut steps = Vec::new();
    let info = store
        .import("oci", &file, &mut |p| {
            if let Progress::Step(s) = p {
                steps.push(s)
            }
        })
        .unwrap();
    assert!(steps.iter().any(|s| s.contains("layer 2/2")), "{steps:?}");
    assert!(info.source.starts_with("oci-archive:"), "{}", info.source);
    assert_eq!(info.image, expected_config());
    check_layered(&info.root);
    // The config survives a reload from image.json.
    let again = RootfsStore::new(home.path()).resolve("oci").unwrap();
    assert_eq!(again.image, expected_config());
    assert_eq!(listing(&home.path().join("rootfs")), vec!["oci"]);
}

#[test]
fn oci_archive_gzip_outer_and_bad_digest() {
    let home = tempfile::tempdir().unwrap();
    let good = home.path().join("img.tar");
    write_oci_archive(&good, &[layer1(), layer2()]);
    // The whole archive gzip-compressed is still recognised.
    let gz = home.path().join("img.tar.gz");
    fs::write(&gz, gzip(&fs::read(&good).unwrap())).unwrap();
    let store = RootfsStore::new(home.path());
    let info = store.import("ocigz", &gz, &mut |_| {}).unwrap();
    check_layered(&info.root);

    // A corrupted layer blob is refused by its digest and leaves nothing behind.
    let stage = tempfile::tempdir().unwrap();
    let mut ar = tar::Archive::new(fs::File::open(&good).unwrap());
    ar.unpack(stage.path()).unwrap();
    let blobs = stage.path().join("blobs/sha256");
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    for name in ["oci-layout", "index.json"] {
        files.push((name.into(), fs::read(stage.path().join(name)).unwrap()));
    }
    let mut corrupted = false;
    for e in fs::read_dir(&blobs).unwrap() {
        let e = e.unwrap();
        let mut data = fs::read(e.path()).unwrap();
        // The plain (second) layer is a tar: corrupt one byte of its content.
        if !corrupted && data.len() > 1024 && data[257..262] == *b"ustar" {
            data[600] ^= 0xff;
            corrupted = true;
        }
        files.push((format!("blobs/sha256/{}", e.file_name().to_string_lossy()), data));
    }
    assert!(corrupted);
    let bad = home.path().join("bad.tar");
    fs::write(&bad, outer_tar(&files)).unwrap();
    let err = store.import("bad", &bad, &mut |_| {}).unwrap_err();
    assert!(matches!(err, RootfsError::Malformed(_)), "{err}");
    assert!(err.to_string().contains("does not match its digest"), "{err}");
    assert_eq!(listing(&home.path().join("rootfs")), vec!["ocigz"]);
}

#[test]
fn docker_save_import() {
    let home = tempfile::tempdir().unwrap();
    let file = home.path().join("img.docker.tar");
    write_docker_archive(&file, &[layer1(), layer2()]);
    let store = RootfsStore::new(home.path());
    let info = store.import("dock", &file, &mut |_| {}).unwrap();
    assert!(info.source.starts_with("docker-archive:"), "{}", info.source);
    assert_eq!(info.image, expected_config());
    check_layered(&info.root);
}

#[test]
fn unknown_format_and_missing_file() {
    let home = tempfile::tempdir().unwrap();
    let store = RootfsStore::new(home.path());
    let file = home.path().join("notes.txt");
    fs::write(&file, "just some text, not an archive at all".repeat(40)).unwrap();
    let err = store.import("x", &file, &mut |_| {}).unwrap_err();
    assert!(matches!(err, RootfsError::UnknownFormat(_)), "{err}");
    assert!(!err.to_string().contains('\n'));
    let gz = home.path().join("notes.gz");
    fs::write(&gz, gzip(b"plain text inside gzip")).unwrap();
    assert!(matches!(store.import("x", &gz, &mut |_| {}), Err(RootfsError::UnknownFormat(_))));
    let err = store.import("x", &home.path().join("missing.tar"), &mut |_| {}).unwrap_err();
    assert!(matches!(err, RootfsError::Io { .. }), "{err}");
    assert!(err.to_string().contains("missing.tar"), "{err}");
    assert!(listing(&home.path().join("rootfs")).is_empty());
}

#[test]
fn duplicate_list_remove() {
    let home = tempfile::tempdir().unwrap();
    let file = home.path().join("root.tar");
    fs::write(&file, rootfs_tar()).unwrap();
    let store = RootfsStore::new(home.path());
    assert!(store.list().unwrap().is_empty(), "no store dir yet is an empty list");
    store.import("b-second", &file, &mut |_| {}).unwrap();
    store.import("a-first", &file, &mut |_| {}).unwrap();
    let err = store.import("a-first", &file, &mut |_| {}).unwrap_err();
    assert!(matches!(err, RootfsError::AlreadyExists(ref n) if n == "a-first"), "{err}");

    // A stray directory without metadata and a temp dir are not listed.
    fs::create_dir_all(home.path().join("rootfs/half")).unwrap();
    let names: Vec<String> = store.list().unwrap().into_iter().map(|i| i.name).collect();
    assert_eq!(names, vec!["a-first", "b-second"]);

    store.remove("a-first").unwrap();
    let names: Vec<String> = store.list().unwrap().into_iter().map(|i| i.name).collect();
    assert_eq!(names, vec!["b-second"]);
    assert!(!home.path().join("rootfs/a-first").exists());
    assert!(matches!(store.remove("a-first"), Err(RootfsError::NotFound(_))));
    assert!(matches!(store.resolve("a-first"), Err(RootfsError::NotFound(_))));
    // The name is free again.
    store.import("a-first", &file, &mut |_| {}).unwrap();
    assert_eq!(listing(&home.path().join("rootfs")), vec!["a-first", "b-second", "half"]);
}

#[test]
fn name_validation() {
    let home = tempfile::tempdir().unwrap();
    let file = home.path().join("root.tar");
    fs::write(&file, rootfs_tar()).unwrap();
    let store = RootfsStore::new(home.path());
    for bad in ["", "-rf", "..", "a/b", "with space", "x".repeat(64).as_str(), "ünï"] {
        let err = store.import(bad, &file, &mut |_| {}).unwrap_err();
        assert!(matches!(err, RootfsError::InvalidName { .. }), "{bad:?}: {err}");
        assert!(matches!(store.remove(bad), Err(RootfsError::InvalidName { .. }) | Err(RootfsError::NotFound(_))));
    }
    store.import(&"x".repeat(63), &file, &mut |_| {}).unwrap();
    store.import("Ubuntu_22.04-lts", &file, &mut |_| {}).unwrap();
}

#[test]
fn resolve_paths() {
    let home = tempfile::tempdir().unwrap();
    let store = RootfsStore::new(home.path());
    let dir = home.path().join("mytree");
    fs::create_dir(&dir).unwrap();
    let r = store.resolve(dir.to_str().unwrap()).unwrap();
    assert_eq!(r.root, fs::canonicalize(&dir).unwrap());
    assert_eq!(r.image, ImageConfig::default());

    let file = home.path().join("afile");
    fs::write(&file, b"x").unwrap();
    assert!(matches!(store.resolve(file.to_str().unwrap()), Err(RootfsError::NotADirectory(_))));
    assert!(matches!(store.resolve(home.path().join("nope").to_str().unwrap()), Err(RootfsError::NotFound(_))));
    assert!(matches!(store.resolve("./definitely-not-here"), Err(RootfsError::NotFound(_))));
    assert!(matches!(store.resolve("nosuchname"), Err(RootfsError::NotFound(_))));
    assert!(matches!(store.resolve("bad name"), Err(RootfsError::InvalidName { .. })));

    // require_shell: missing, dangling, and an absolute symlink resolved inside the root.
    assert!(matches!(alcove_rootfs::require_shell(&dir), Err(RootfsError::NoShell(_))));
    fs::create_dir_all(dir.join("bin")).unwrap();
    std::os::unix::fs::symlink("/bin/busybox", dir.join("bin/sh")).unwrap();
    assert!(
        matches!(alcove_rootfs::require_shell(&dir), Err(RootfsError::NoShell(_))),
        "an absolute link must resolve inside the root, not to the host's /bin/busybox"
    );
    fs::write(dir.join("bin/busybox"), b"x").unwrap();
    alcove_rootfs::require_shell(&dir).unwrap();
}
