//! `$ALCOVE_HOME` on a small tmpfs that fills up, then a database that
//! turns read-only (a read-only bind mount over it):
//! `run` and `create` fail with one clear line, a running sandbox keeps
//! running, the database is never corrupt, and once space returns the next
//! CLI call repairs the records.

mod cli_support;

use cli_support::Alcove;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A tmpfs mounted on `$ALCOVE_HOME`; on drop, every sandbox is removed
/// (while the home is still there) and the tmpfs unmounted.
struct SmallHome<'a> {
    a: &'a Alcove,
}

impl<'a> SmallHome<'a> {
    fn mount(a: &'a Alcove, size: &str) -> SmallHome<'a> {
        std::fs::create_dir_all(&a.home).expect("home dir");
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "tmpfs"])
            .arg(&a.home)
            .status()
            .expect("mount runs");
        assert!(st.success(), "cannot mount a tmpfs on {}", a.home.display());
        SmallHome { a }
    }

    /// Makes the database file read-only for whoever opens it from now on
    /// (the running sandbox keeps the descriptor it has).
    fn database_read_only(&self) {
        let db = self.a.home.join("alcove.db");
        let bind = Command::new("mount").arg("--bind").arg(&db).arg(&db).status();
        assert!(bind.expect("mount runs").success(), "bind mount");
        let ro = Command::new("mount").args(["-o", "remount,bind,ro"]).arg(&db).status();
        assert!(ro.expect("mount runs").success(), "read-only remount");
    }

    fn database_writable(&self) {
        let _ = Command::new("umount").arg(self.a.home.join("alcove.db")).status();
    }
}

impl Drop for SmallHome<'_> {
    fn drop(&mut self) {
        self.database_writable();
        let _ = std::fs::remove_file(filler(&self.a.home));
        let names: Vec<String> = self.a.ps().iter().filter_map(|s| s["name"].as_str().map(str::to_string)).collect();
        if !names.is_empty() {
            let mut args = vec!["rm".to_string(), "-f".to_string()];
            args.extend(names);
            let _ = self.a.run(&args);
        }
        let _ = Command::new("umount").arg("-l").arg(&self.a.home).status();
    }
}

fn filler(home: &Path) -> PathBuf {
    home.join("filler")
}

/// Writes until the filesystem says it is full.
fn fill(home: &Path) {
    let mut f = std::fs::File::create(filler(home)).expect("filler");
    let chunk = vec![0xa5u8; 64 * 1024];
    loop {
        match f.write_all(&chunk) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(e) => panic!("filling the tmpfs: {e}"),
        }
    }
    let _ = f.write_all(&chunk[..1]);
}

fn integrity(home: &Path) -> String {
    let c = rusqlite::Connection::open_with_flags(home.join("alcove.db"), rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .expect("db opens");
    c.query_row("PRAGMA integrity_check", [], |r| r.get(0)).expect("integrity_check")
}

#[test]
fn a_full_then_read_only_home_fails_clearly_and_heals() {
    let a = Alcove::new();
    let rootfs = a.rootfs_arg();
    let home = SmallHome::mount(&a, "16m");
    a.ok(&["create", "live", "--rootfs", &rootfs]);
    a.ok(&["create", "later", "--rootfs", &rootfs]);
    a.ok(&["create", "doomed", "--rootfs", &rootfs]);
    let doomed = a.ps_entry("doomed").expect("listed")["pid"].as_u64().expect("pid") as i32;

    fill(&a.home);
    // A sandbox process dies while the disk is full: nobody can record that
    // now, and no CLI call may fail because of it.
    // SAFETY: kills the sandbox process this test created.
    assert_eq!(unsafe { libc::kill(doomed, libc::SIGKILL) }, 0);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::fs::read_to_string(format!("/proc/{doomed}/stat")).is_ok_and(|s| !s.contains(") Z")) {
        assert!(std::time::Instant::now() < deadline, "the sandbox process did not die");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let out = a.run(&["ps", "-a"]);
    assert_eq!((out.code, out.stderr.as_str()), (0, ""), "ps on a full disk: {out:?}");
    // New sandboxes fail, each with one line that says why.
    for args in [
        vec!["run", "--rootfs", &rootfs, "--", "true"],
        vec!["run", "--name", "named", "--rootfs", &rootfs, "--", "true"],
        vec!["create", "newbox", "--rootfs", &rootfs],
    ] {
        let out = a.run(&args);
        out.assert_error("");
        assert!(
            out.stderr.contains("No space left on device") || out.stderr.contains("is full"),
            "{args:?}: the line does not say the disk is full: {out:?}"
        );
    }
    // The running sandbox keeps running, and answers.
    assert_eq!(a.ok(&["exec", "live", "--", "echo", "still"]), "still\n");
    assert_eq!(a.status("live"), "Running");
    // Its end cannot be recorded now; stopping still ends it.
    let out = a.run(&["stop", "later"]);
    assert!(out.stderr.lines().count() <= 1, "{out:?}");
    assert_eq!(integrity(&a.home), "ok");

    // Read-only: the same.
    std::fs::remove_file(filler(&a.home)).expect("room again");
    home.database_read_only();
    let out = a.run(&["create", "robox", "--rootfs", &rootfs]);
    out.assert_error("");
    assert!(out.stderr.contains("read-only"), "the line does not say the database is read-only: {out:?}");
    assert_eq!(a.ok(&["exec", "live", "--", "echo", "still"]), "still\n");
    let out = a.run(&["ps", "-a"]);
    assert_eq!((out.code, out.stderr.as_str()), (0, ""), "ps on a read-only database: {out:?}");

    // Space and write access return: the next CLI call repairs the records
    // (no run of a gone process left Running) and everything works again.
    home.database_writable();
    for e in a.ps() {
        if e["name"] == "live" {
            continue;
        }
        assert_ne!(e["last_run"]["status"], "Running", "{} left Running: {e}", e["name"]);
        assert!(["Stopped", "Crashed"].contains(&e["status"].as_str().unwrap_or("")), "{e}");
    }
    assert_eq!(integrity(&a.home), "ok");
    assert_eq!(a.ps_entry("doomed").expect("listed")["last_run"]["reason"], "Crashed");
    for name in ["named", "newbox", "later", "doomed"] {
        if a.ps_entry(name).is_some() {
            a.ok(&["start", name]);
            assert_eq!(a.ok(&["exec", name, "--", "echo", "back"]), "back\n", "{name}");
        }
    }
    assert_eq!(a.ok(&["run", "--rm", "--rootfs", &rootfs, "--", "echo", "fine"]), "fine\n");
    assert_eq!(a.ok(&["exec", "live", "--", "echo", "still"]), "still\n");
}
