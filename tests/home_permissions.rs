//! `$ALCOVE_HOME` and everything alcove creates under it are owner-only
//! (directories 0700, files 0600; the agent binary 0755, see below) whoever
//! creates them — the CLI, the sandbox process, an embedding host — even
//! under a permissive umask. Every test here runs with umask 0 (set for the
//! whole test process, so no other test shares it). Root required for the
//! jail sandbox.

mod cli_support;

use cli_support::Alcove;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

fn permissive_umask() {
    // SAFETY: umask has no preconditions; every test of this binary wants 0.
    unsafe { libc::umask(0) };
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).expect("exists").permissions().mode() & 0o7777
}

/// Every path under `home` whose mode is not owner-only, skipping the
/// contents of the jail's overlay directories and of `etc/` (the name
/// files bound into the guest, 0644 for its users) — guest-facing, under a
/// 0700 sandbox directory that is checked.
fn not_private(home: &Path) -> Vec<String> {
    let mut bad = Vec::new();
    let mut stack = vec![home.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let m = mode(&dir);
        if m != 0o700 {
            bad.push(format!("{} {m:o}", dir.display()));
        }
        for e in std::fs::read_dir(&dir).expect("list") {
            let p = e.expect("entry").path();
            let md = std::fs::symlink_metadata(&p).expect("md");
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if md.is_dir() {
                if ["upper", "work", "merged", "boot", "upper-vm", "etc"].contains(&name) {
                    continue;
                }
                stack.push(p);
            } else if md.file_type().is_socket() || md.is_symlink() {
                continue;
            } else {
                let m = md.permissions().mode() & 0o7777;
                // The agent binary is executed by guest root through a
                // read-only bind mount, maybe as an unrelated uid (user
                // namespaces): 0755, under the 0700 bin/.
                let allowed = if name.starts_with("alcove-agent-") { 0o755 } else { 0o600 };
                if m != allowed {
                    bad.push(format!("{} {m:o}", p.display()));
                }
            }
        }
    }
    bad
}

use std::os::unix::fs::FileTypeExt;

#[test]
fn the_cli_and_the_sandbox_process_keep_the_home_private_under_umask_0() {
    permissive_umask();
    let a = Alcove::new();
    a.ok(&["create", "box", "--rootfs", &a.rootfs_arg()]);
    a.ok(&["exec", "box", "--", "true"]);
    a.ok(&["stop", "box"]);
    let logs = a.home.join("sandboxes/box/logs");
    for f in ["runtime.log", "runtime.stderr", "guest.log"] {
        assert!(logs.join(f).is_file(), "{f} exists");
    }
    assert!(a.home.join("bin").is_dir() && a.home.join("alcove.db").is_file());
    assert_eq!(mode(&a.home.join("sandboxes/box")), 0o700);
    assert_eq!(mode(&a.home.join("sandboxes/box/etc")), 0o700);
    assert_eq!(mode(&a.home.join("sandboxes/box/etc/.hosts.alcove")), 0o600);
    let bad = not_private(&a.home);
    assert!(bad.is_empty(), "not owner-only: {bad:#?}");
}

#[test]
fn an_embedding_host_creates_a_private_home() {
    permissive_umask();
    let dir = tempfile::tempdir().expect("tempdir");
    let home = dir.path().join("new/home");
    let opts = alcove::SandboxOptions::new("box1", home.join("alcove.db"), dir.path().join("run/box1.sock"));
    let handle = alcove::start(opts, Box::new(alcove_backend::mock::MockBackend::new(Default::default())))
        .expect("sandbox starts");
    handle.kill(alcove::store::TerminationReason::Signal, "test over");
    handle.wait_timeout(std::time::Duration::from_secs(20)).expect("ends");
    assert_eq!(mode(&dir.path().join("new")), 0o700, "missing parents too");
    let bad = not_private(&home);
    assert!(bad.is_empty(), "not owner-only: {bad:#?}");
    assert!(home.join("alcove.db").is_file());
}
