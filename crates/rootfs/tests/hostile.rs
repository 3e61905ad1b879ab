//! Hostile archives: each is refused with a `Hostile` error naming the entry, nothing is
//! written outside the root, and nothing is left in the store.

mod common;

use std::fs;
use std::path::Path;

use alcove_rootfs::{RootfsError, RootfsStore};
use common::*;

/// Imports `tar` (plain and as the layer of an OCI archive) and checks that it is refused
/// because of `entry`, leaving the store empty.
fn assert_refused(entries: &[E], entry: &str, why_contains: &str) {
    let home = tempfile::tempdir().unwrap();
    let store = RootfsStore::new(home.path());
    let tarball = tar_bytes(entries);

    let plain = home.path().join("plain.tar");
    fs::write(&plain, &tarball).unwrap();
    let oci = home.path().join("oci.tar");
    write_oci_archive(&oci, &[layer1(), tarball]);
    let docker = home.path().join("docker.tar");
    write_docker_archive(&docker, &[tar_bytes(entries)]);

    for file in [&plain, &oci, &docker] {
        let err = store.import("evil", file, &mut |_| {}).unwrap_err();
        match &err {
            RootfsError::Hostile { entry: e, why } => {
                assert_eq!(e, entry, "{}: {err}", file.display());
                assert!(why.contains(why_contains), "{}: {err}", file.display());
            }
            other => panic!("{}: expected Hostile, got {other:?}", file.display()),
        }
        let msg = err.to_string();
        assert!(msg.contains(entry) && !msg.contains('\n'), "{msg}");
        assert!(
            listing(&home.path().join("rootfs")).is_empty(),
            "{} left {:?}",
            file.display(),
            listing(&home.path().join("rootfs"))
        );
        assert!(store.list().unwrap().is_empty());
    }
}

/// A directory next to the store that hostile archives try to write into.
fn victim() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    fs::write(d.path().join("precious"), b"untouched").unwrap();
    d
}

fn assert_victim_intact(v: &Path) {
    assert_eq!(listing(v), vec!["precious"]);
    assert_eq!(fs::read(v.join("precious")).unwrap(), b"untouched");
}

#[test]
fn absolute_path() {
    let v = victim();
    let target = format!("{}/pwned", v.path().display());
    assert_refused(&[E::File("ok", b"fine", 0o644), E::File(&target, b"x", 0o644)], &target, "absolute");
    assert_victim_intact(v.path());
}

#[test]
fn dotdot_component() {
    assert_refused(
        &[E::Dir("a/", 0o755), E::File("a/../../../../tmp/alcove-pwned", b"x", 0o644)],
        "a/../../../../tmp/alcove-pwned",
        "`..`",
    );
    assert!(!Path::new("/tmp/alcove-pwned").exists());
}

#[test]
fn relative_symlink_escape() {
    assert_refused(
        &[E::Dir("etc/", 0o755), E::Symlink("etc/evil", "../../../../../tmp")],
        "etc/evil",
        "escapes the root",
    );
}

#[test]
fn write_through_absolute_symlink() {
    // The symlink itself is allowed (absolute targets resolve inside the guest), but writing
    // through it must be refused and must not touch the host directory it points to.
    let v = victim();
    let link_target = v.path().display().to_string();
    assert_refused(
        &[E::Symlink("escape", &link_target), E::File("escape/pwned", b"x", 0o644)],
        "escape/pwned",
        "symlink",
    );
    assert_victim_intact(v.path());
}

#[test]
fn overwrite_through_final_symlink_is_a_replacement() {
    // A later entry at the same path as a symlink replaces the link; it never writes into the
    // link's target.
    let v = victim();
    let target = format!("{}/precious", v.path().display());
    let home = tempfile::tempdir().unwrap();
    let file = home.path().join("t.tar");
    fs::write(&file, tar_bytes(&[E::Symlink("f", &target), E::File("f", b"overwritten?", 0o644)])).unwrap();
    let info = RootfsStore::new(home.path()).import("ok", &file, &mut |_| {}).unwrap();
    assert_eq!(fs::read(info.root.join("f")).unwrap(), b"overwritten?");
    assert!(!fs::symlink_metadata(info.root.join("f")).unwrap().file_type().is_symlink());
    assert_victim_intact(v.path());
}

#[test]
fn hardlink_escape() {
    assert_refused(&[E::Hardlink("passwd", "../../../../etc/passwd")], "passwd", "`..`");
    assert_refused(&[E::Hardlink("passwd", "/etc/passwd")], "passwd", "absolute");
    // Through an (allowed) absolute symlink to a host directory.
    let v = victim();
    let dir = v.path().display().to_string();
    assert_refused(&[E::Symlink("hostdir", &dir), E::Hardlink("stolen", "hostdir/precious")], "stolen", "symlink");
    assert_victim_intact(v.path());
    // To something that is not in the archive.
    assert_refused(&[E::Hardlink("ghost", "not/there")], "ghost", "not an earlier file");
}

#[test]
fn fifos_are_refused() {
    assert_refused(&[E::Fifo("pipe")], "pipe", "fifo");
}

/// A tree made by debootstrap carries `/dev/null`, `/dev/zero`, …: they are skipped (never
/// created on the host) with one summary line, and the rest of the tree is imported.
#[test]
fn device_nodes_are_skipped_with_one_summary_line() {
    let entries = [
        E::Dir("bin/", 0o755),
        E::File("bin/sh", b"#!fake shell", 0o755),
        E::Dir("dev/", 0o755),
        E::Char("dev/null"),
        E::Char("dev/zero"),
        E::Dir("dev/pts/", 0o755),
        E::Char("dev/pts/ptmx"),
        E::Block("sda"),
    ];
    let home = tempfile::tempdir().unwrap();
    let store = RootfsStore::new(home.path());
    let plain = home.path().join("plain.tar");
    fs::write(&plain, tar_bytes(&entries)).unwrap();
    let oci = home.path().join("oci.tar");
    write_oci_archive(&oci, &[layer1(), tar_bytes(&entries)]);
    for (name, file) in [("plain", &plain), ("oci", &oci)] {
        let mut notices = Vec::new();
        let info = store
            .import(name, file, &mut |p| {
                if let alcove_rootfs::Progress::Notice(n) = p {
                    notices.push(n)
                }
            })
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            notices,
            vec!["skipped 4 device nodes in /, /dev, /dev/pts (a sandbox gets its own /dev)".to_string()],
            "{name}"
        );
        assert_eq!(fs::read(info.root.join("bin/sh")).unwrap(), b"#!fake shell", "{name}");
        assert!(info.root.join("dev/pts").is_dir(), "{name}");
        for node in ["dev/null", "dev/zero", "dev/pts/ptmx", "sda"] {
            assert!(fs::symlink_metadata(info.root.join(node)).is_err(), "{name}: {node} was created");
        }
    }
}

/// No setuid or setgid file is left where other host users could run it.
#[test]
fn setuid_and_setgid_bits_are_cleared() {
    use std::os::unix::fs::PermissionsExt;
    let home = tempfile::tempdir().unwrap();
    let store = RootfsStore::new(home.path());
    let file = home.path().join("suid.tar");
    let entries = [
        E::File("su", b"x", 0o4755),
        E::File("wall", b"x", 0o2755),
        E::Dir("tmp/", 0o1777),
        E::Hardlink("su-again", "su"),
    ];
    fs::write(&file, tar_bytes(&entries)).unwrap();
    let info = store.import("suid", &file, &mut |_| {}).unwrap();
    let mode = |p: &str| fs::symlink_metadata(info.root.join(p)).unwrap().permissions().mode() & 0o7777;
    assert_eq!((mode("su"), mode("wall"), mode("su-again")), (0o755, 0o755, 0o755));
    // The sticky bit of a shared directory is not a privilege: kept.
    assert_eq!(mode("tmp"), 0o1777);
}

#[test]
fn whiteout_escape_in_layer() {
    let v = victim();
    // A whiteout with `..` is refused before anything is deleted.
    let home = tempfile::tempdir().unwrap();
    let oci = home.path().join("oci.tar");
    write_oci_archive(&oci, &[layer1(), tar_bytes(&[E::File("../../.wh.precious", b"", 0o644)])]);
    let err = RootfsStore::new(home.path()).import("evil", &oci, &mut |_| {}).unwrap_err();
    assert!(matches!(err, RootfsError::Hostile { .. }), "{err}");
    // A whiteout through an absolute symlink in a lower layer is refused too.
    let oci2 = home.path().join("oci2.tar");
    let lower = tar_bytes(&[E::Symlink("host", &v.path().display().to_string())]);
    write_oci_archive(&oci2, &[lower, tar_bytes(&[E::File("host/.wh.precious", b"", 0o644)])]);
    let err = RootfsStore::new(home.path()).import("evil", &oci2, &mut |_| {}).unwrap_err();
    assert!(matches!(err, RootfsError::Hostile { ref entry, .. } if entry == "host/.wh.precious"), "{err}");
    assert!(listing(&home.path().join("rootfs")).is_empty());
    assert_victim_intact(v.path());
}

#[test]
fn outer_archive_symlinked_blob_is_not_read() {
    // An OCI archive whose manifest blob is a symlink to a host file must not read it.
    let home = tempfile::tempdir().unwrap();
    let digest = "a".repeat(64);
    let index = format!(
        r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:{digest}","size":1}}]}}"#
    );
    let mut b = tar::Builder::new(Vec::new());
    for (p, d) in [("oci-layout", r#"{"imageLayoutVersion":"1.0.0"}"#), ("index.json", index.as_str())] {
        let mut h = tar::Header::new_ustar();
        h.set_size(d.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, p, d.as_bytes()).unwrap();
    }
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_size(0);
    b.append_link(&mut h, format!("blobs/sha256/{digest}"), "/etc/passwd").unwrap();
    let file = home.path().join("x.tar");
    fs::write(&file, b.into_inner().unwrap()).unwrap();
    let err = RootfsStore::new(home.path()).import("x", &file, &mut |_| {}).unwrap_err();
    assert!(matches!(err, RootfsError::Malformed(_)), "{err}");
    assert!(err.to_string().contains("symlink"), "{err}");
    assert!(listing(&home.path().join("rootfs")).is_empty());
}
