//! Kill -9 at every step: with the `failpoints` feature, `ALCOVE_KILL_AT=NAME`
//! makes the CLI or the sandbox process SIGKILL itself when it reaches kill
//! point NAME (see `src/failpoint.rs`). After each, the next CLI call must
//! leave no run Running, no socket, no cgroup, no mount and no process
//! behind, and the sandbox must start again.
//!
//! `cargo test --features failpoints --test kill_points` (root: jail sandboxes).

mod cli_support;

use cli_support::Alcove;
use std::path::Path;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(30);

/// `alcove ARGS` with kill point `point` armed in it and in any sandbox
/// process it starts.
fn run_armed(a: &Alcove, point: &str, args: &[&str]) -> cli_support::Out {
    let mut cmd = a.cmd(args);
    cmd.env("ALCOVE_KILL_AT", point);
    let out = cmd.output().expect("runs");
    cli_support::Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Pids of processes started for this installation (their environment
/// names its `$ALCOVE_HOME`), and of any process in one of its cgroups.
fn leftover_processes(home: &Path, name: &str) -> Vec<String> {
    let needle = format!("ALCOVE_HOME={}", home.display());
    let cgroup = format!("/alcove/{name}-");
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").expect("proc").filter_map(Result::ok) {
        let pid = e.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) || pid == std::process::id().to_string() {
            continue;
        }
        let environ = std::fs::read(e.path().join("environ")).unwrap_or_default();
        let in_env = environ.split(|b| *b == 0).any(|v| v == needle.as_bytes());
        let in_cgroup = std::fs::read_to_string(e.path().join("cgroup")).unwrap_or_default().contains(&cgroup);
        let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        let zombie = stat.rsplit_once(')').is_some_and(|(_, r)| r.trim_start().starts_with('Z'));
        if (in_env || in_cgroup) && !zombie {
            let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            found.push(format!("{pid}: {}", String::from_utf8_lossy(&cmdline).replace('\0', " ")));
        }
    }
    found
}

fn leftover_cgroups(name: &str) -> String {
    let out = std::process::Command::new("find")
        .args(["/sys/fs/cgroup", "-type", "d", "-name", &format!("{name}-*")])
        .output()
        .expect("find runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// What must hold after the next CLI call, whatever was killed where.
fn assert_nothing_left(a: &Alcove, name: &str, point: &str) {
    // The next CLI call.
    let list = a.ps();
    if let Some(e) = list.iter().find(|e| e["name"] == name) {
        assert_ne!(e["last_run"]["status"], "Running", "{point}: a run left Running: {e}");
        let status = e["status"].as_str().unwrap_or("");
        assert!(["Stopped", "Crashed"].contains(&status), "{point}: status {status}: {e}");
    }
    let sockets: Vec<_> = std::fs::read_dir(&a.runtime)
        .map(|d| d.filter_map(Result::ok).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(sockets.is_empty(), "{point}: left in the runtime directory: {sockets:?}");
    assert_eq!(leftover_cgroups(name), "", "{point}: cgroups left behind");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let home = a.home.display().to_string();
    assert!(!mounts.lines().any(|l| l.contains(&home)), "{point}: a mount under the home is left");
    // The killed process's jail dies with it (PDEATHSIG); give it the time
    // an exit takes, then nothing may be left.
    let deadline = Instant::now() + WAIT;
    loop {
        let left = leftover_processes(&a.home, name);
        if left.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "{point}: processes left: {left:#?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The sandbox process of `name` really died at `point`: it never logged
/// its orderly exit, and the run says so.
fn assert_killed(a: &Alcove, name: &str, point: &str) {
    let logs = a.home.join("sandboxes").join(name).join("logs");
    let mut log = String::new();
    for e in std::fs::read_dir(&logs).expect("log dir").filter_map(Result::ok) {
        let file = e.file_name().to_string_lossy().into_owned();
        if file.starts_with("runtime") && file.ends_with(".log") {
            log.push_str(&std::fs::read_to_string(e.path()).unwrap_or_default());
        }
    }
    assert!(!log.contains("sandbox process exiting"), "{point}: the sandbox process was not killed:\n{log}");
    let reason = a.ps_entry(name).map(|e| e["last_run"]["reason"].as_str().unwrap_or("").to_string());
    let want = if point == "sandbox-after-run-end" { "ShutdownRequested" } else { "Crashed" };
    assert_eq!(reason.as_deref(), Some(want), "{point}");
}

/// The sandbox starts again (or, if the kill left no sandbox, is created
/// again) and runs a command.
fn assert_starts_again(a: &Alcove, name: &str, point: &str) {
    if a.ps_entry(name).is_some() {
        let out = a.run(&["start", name]);
        assert_eq!((out.code, out.stderr.as_str()), (0, ""), "{point}: start after the kill: {out:?}");
    } else {
        a.ok(&["create", name, "--rootfs", &a.rootfs_arg()]);
    }
    assert_eq!(a.ok(&["exec", name, "--", "echo", "again"]), "again\n", "{point}");
    a.ok(&["rm", "-f", name]);
    assert_nothing_left(a, name, point);
}

#[test]
fn the_cli_killed_while_creating() {
    let a = Alcove::new();
    let rootfs = a.rootfs_arg();
    for point in ["cli-before-sandbox-row", "cli-after-sandbox-row", "cli-after-ready"] {
        let out = run_armed(&a, point, &["create", "kp", "--rootfs", &rootfs]);
        assert_eq!(out.code, -1, "{point}: the CLI was not killed: {out:?}");
        assert_nothing_left_unless_running(&a, "kp", point);
        assert_starts_again(&a, "kp", point);
    }
}

/// After `cli-after-ready` the sandbox itself is fine and runs on: only a
/// created sandbox that runs is allowed to run.
fn assert_nothing_left_unless_running(a: &Alcove, name: &str, point: &str) {
    if a.status(name) == "Running" {
        assert_eq!(point, "cli-after-ready", "a half-created sandbox runs");
        assert_eq!(a.ok(&["exec", name, "--", "echo", "fine"]), "fine\n");
        a.ok(&["stop", name]);
    }
    assert_nothing_left(a, name, point);
}

#[test]
fn an_attached_run_whose_cli_is_killed_leaves_nothing() {
    let a = Alcove::new();
    let rootfs = a.rootfs_arg();
    let out = run_armed(&a, "cli-after-ready", &["run", "--rm", "--name", "kr", "--rootfs", &rootfs, "--", "true"]);
    assert_eq!(out.code, -1, "the CLI was not killed: {out:?}");
    // Its sandbox process stops and removes the sandbox by itself.
    let deadline = Instant::now() + WAIT;
    while a.ps_entry("kr").is_some() {
        assert!(Instant::now() < deadline, "the orphaned --rm sandbox stayed: {:?}", a.ps_entry("kr"));
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_nothing_left(&a, "kr", "cli-after-ready (run --rm)");
}

#[test]
fn the_sandbox_process_killed_at_every_step() {
    let a = Alcove::new();
    let rootfs = a.rootfs_arg();
    // Killed while starting: `create` fails with one line.
    for point in ["sandbox-before-running", "sandbox-after-ready"] {
        let out = run_armed(&a, point, &["create", "ks", "--rootfs", &rootfs]);
        if out.code != 0 {
            assert_eq!((out.code, out.stderr.lines().count()), (125, 1), "{point}: {out:?}");
        }
        assert_nothing_left(&a, "ks", point);
        assert_killed(&a, "ks", point);
        assert_starts_again(&a, "ks", point);
    }
    // Killed later: armed at create, reached by the next command.

    let steps: [(&str, &[&str]); 4] = [
        ("sandbox-during-exec", &["exec", "ks", "--", "echo", "never"]),
        ("sandbox-during-stop", &["stop", "ks"]),
        ("sandbox-during-finalisation", &["stop", "ks"]),
        ("sandbox-after-run-end", &["stop", "ks"]),
    ];
    for (point, args) in steps {
        let out = run_armed(&a, point, &["create", "ks", "--rootfs", &rootfs]);
        assert_eq!(out.code, 0, "{point}: create: {out:?}");
        let out = a.run(args);
        assert!(out.stderr.lines().count() <= 1, "{point}: {out:?}");
        assert_nothing_left(&a, "ks", point);
        assert_killed(&a, "ks", point);
        assert_starts_again(&a, "ks", point);
    }
}
