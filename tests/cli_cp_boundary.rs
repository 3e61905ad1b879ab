//! `alcove cp` at the host boundary, through the real CLI and a real jail:
//! whatever the guest does to the tree being copied out, nothing is written
//! outside the destination directory, an existing host symlink is replaced
//! rather than followed, and set-id and sticky bits never reach the host. A
//! copy into the sandbox resolves its guest path inside the guest only.

mod cli_support;

use cli_support::Alcove;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

fn utf8(p: &Path) -> &str {
    p.to_str().expect("utf8 path")
}

/// Hole 1 of issue #11, replayed: the guest makes `/p/l` a symlink to an
/// absolute host path, the first copy recreates that symlink on the host,
/// the guest swaps `l` for a directory holding a file, and a second copy of
/// `/p` into the same host directory must not write through the symlink.
#[test]
fn a_second_copy_out_never_writes_through_a_symlink_the_first_one_made() {
    let a = Alcove::new();
    a.ok(&["create", "box", "--rootfs", &a.rootfs_arg()]);
    let tmp = tempfile::tempdir_in("/tmp").expect("tmp");
    let dest = tmp.path().join("dest");
    let victim = tmp.path().join("victim");
    std::fs::create_dir(&dest).expect("mkdir dest");
    std::fs::create_dir(&victim).expect("mkdir victim");

    let script = format!("mkdir -p /p && ln -s {} /p/l && echo keep > /p/k", utf8(&victim));
    a.ok(&["exec", "box", "--", "sh", "-c", &script]);
    a.ok(&["cp", "box:/p", utf8(&dest)]);
    // Symlinks are recreated as they are (their target is only text).
    assert_eq!(std::fs::read_link(dest.join("p/l")).expect("symlink recreated"), victim);
    assert_eq!(std::fs::read_to_string(dest.join("p/k")).expect("file"), "keep\n");

    a.ok(&["exec", "box", "--", "sh", "-c", "rm /p/l && mkdir /p/l && echo pwned > /p/l/f"]);
    let out = a.run(&["cp", "box:/p", utf8(&dest)]);
    assert!(!victim.join("f").exists(), "the copy wrote through the host symlink into {}", victim.display());
    assert_eq!(out.code, 0, "{out:?}");
    let l = std::fs::symlink_metadata(dest.join("p/l")).expect("l");
    assert!(l.is_dir(), "the symlink was replaced by the guest's directory");
    assert_eq!(std::fs::read_to_string(dest.join("p/l/f")).expect("f"), "pwned\n");

    // The same with the symlink at the top: `cp box:/p/l DEST/p` names an
    // existing symlink as the destination of a directory.
    std::fs::remove_dir_all(dest.join("p/l")).expect("rm");
    std::os::unix::fs::symlink(&victim, dest.join("p/l")).expect("symlink");
    a.ok(&["cp", "box:/p/l", utf8(&dest.join("p/l"))]);
    assert!(!victim.join("f").exists(), "the copy followed the destination symlink");
    assert!(std::fs::symlink_metadata(dest.join("p/l")).expect("l").is_dir());
    a.ok(&["rm", "-f", "box"]);
}

#[test]
fn set_id_and_sticky_bits_chosen_by_the_guest_are_cleared_on_the_host() {
    let a = Alcove::new();
    a.ok(&["create", "box", "--rootfs", &a.rootfs_arg()]);
    let tmp = tempfile::tempdir_in("/tmp").expect("tmp");
    let script = "mkdir -p /s/d && echo x > /s/suid && chmod 6755 /s/suid && chmod 3777 /s/d \
                  && echo y > /s/d/g && chmod 2711 /s/d/g && chmod 1755 /s";
    a.ok(&["exec", "box", "--", "sh", "-c", script]);
    // The guest really holds those bits (the test is not vacuous).
    let modes = a.ok(&["exec", "box", "--", "stat", "-c", "%a", "/s/suid", "/s/d", "/s/d/g", "/s"]);
    assert_eq!(modes, "6755\n3777\n2711\n1755\n");
    a.ok(&["cp", "box:/s", utf8(tmp.path())]);
    let mode = |rel: &str| std::fs::symlink_metadata(tmp.path().join(rel)).expect(rel).mode() & 0o7777;
    assert_eq!(mode("s/suid"), 0o755);
    assert_eq!(mode("s/d"), 0o777);
    assert_eq!(mode("s/d/g"), 0o711);
    assert_eq!(mode("s"), 0o755);
    // A single file too.
    let one = tmp.path().join("one");
    a.ok(&["cp", "box:/s/suid", utf8(&one)]);
    assert_eq!(std::fs::metadata(&one).expect("one").permissions().mode() & 0o7777, 0o755);
    a.ok(&["rm", "-f", "box"]);
}

/// `cp` into a sandbox: the guest path is resolved by the agent inside the
/// guest, so a guest symlink naming a host directory leads nowhere on the
/// host.
#[test]
fn a_copy_in_resolves_guest_symlinks_inside_the_guest() {
    let a = Alcove::new();
    a.ok(&["create", "box", "--rootfs", &a.rootfs_arg()]);
    let tmp = tempfile::tempdir_in("/tmp").expect("tmp");
    let host_dir = tmp.path().join("host-only");
    std::fs::create_dir(&host_dir).expect("mkdir");
    let src = tmp.path().join("f");
    std::fs::write(&src, "in\n").expect("write");
    let script = format!("ln -s {} /in && mkdir -p /g && ln -s /g /gl", utf8(&host_dir));
    a.ok(&["exec", "box", "--", "sh", "-c", &script]);
    let out = a.run(&["cp", utf8(&src), "box:/in/f"]);
    assert_ne!(out.code, 0, "the guest has no {}: {out:?}", host_dir.display());
    assert!(!host_dir.join("f").exists(), "the copy in resolved the guest's symlink on the host");
    // Through a symlink that exists in the guest: lands in the guest.
    a.ok(&["cp", utf8(&src), "box:/gl/f"]);
    assert_eq!(a.ok(&["exec", "box", "--", "cat", "/g/f"]), "in\n");
    a.ok(&["rm", "-f", "box"]);
}
