//! Faults around a running jail sandbox, through the real CLI: a client
//! killed mid-upload.

mod cli_support;

use cli_support::Alcove;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(30);

/// Temporary files of uploads in progress in `dir` (the agent writes
/// `.NAME.alcove-tmp-…` and renames it when the upload is complete).
fn uploads_in_progress(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .map(|d| d.filter_map(Result::ok).filter(|e| e.file_name().to_string_lossy().contains(".alcove-tmp-")).count())
        .unwrap_or(0)
}

#[test]
fn a_killed_upload_leaves_the_sandbox_usable_and_idle() {
    let a = Alcove::new();
    a.ok(&["create", "up", "--rootfs", &a.rootfs_arg(), "--idle-timeout", "3"]);
    a.ok(&["exec", "up", "--", "mkdir", "-p", "/root/in"]);
    // A big sparse file: the upload runs for seconds.
    let tmp = tempfile::tempdir_in("/tmp").expect("tmp");
    let big = tmp.path().join("big");
    std::fs::File::create(&big).and_then(|f| f.set_len(8 << 30)).expect("sparse file");
    let mut cp = a
        .cmd(&["cp", big.to_str().expect("utf8"), "up:/root/in/x"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn cp");
    // Killed once the upload is under way (its temporary file exists).
    let upper = a.home.join("sandboxes/up/upper/root/in");
    let deadline = Instant::now() + WAIT;
    while uploads_in_progress(&upper) == 0 {
        assert!(cp.try_wait().expect("wait").is_none(), "cp ended before it was killed");
        assert!(Instant::now() < deadline, "the upload never started");
        std::thread::sleep(Duration::from_millis(5));
    }
    cp.kill().expect("kill -9 cp");
    cp.wait().expect("reap cp");
    // Later copies work, and the cut-short upload is discarded, not completed.
    let small = tmp.path().join("small");
    std::fs::write(&small, "small\n").expect("write");
    for k in 0..3 {
        let out = a.run(&["cp", small.to_str().expect("utf8"), &format!("up:/root/in/s{k}")]);
        assert_eq!((out.code, out.stderr.as_str()), (0, ""), "cp {k} after the interrupted one: {out:?}");
    }
    assert_eq!(a.ok(&["exec", "up", "--", "cat", "/root/in/s2"]), "small\n");
    let deadline = Instant::now() + WAIT;
    while uploads_in_progress(&upper) > 0 {
        assert!(Instant::now() < deadline, "the interrupted upload's temporary file stayed");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!upper.join("x").exists(), "a cut-short upload was completed");
    // Nothing keeps the sandbox busy: its idle timeout (3 s) fires.
    let e = a.wait_status("up", "Stopped", WAIT);
    assert_eq!(e["last_run"]["reason"], "IdleTimeout", "{e}");
}
