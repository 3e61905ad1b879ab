//! What the records say after `run`: a sandbox that fails to start is kept
//! with its failed run (as docker keeps a container that failed to start),
//! unless `--rm`; and a run records how its command ended.

mod cli_support;

use cli_support::Alcove;

#[test]
fn a_named_sandbox_that_fails_to_start_is_kept_with_its_failed_run() {
    let a = Alcove::new();
    let rootfs = a.rootfs_arg();
    // The sandbox process cannot bind its socket (its runtime directory is
    // under a regular file): it fails before it records a run.
    std::fs::create_dir_all(&a.home).expect("home");
    let blocker = a.home.join("blocker");
    std::fs::write(&blocker, "not a directory").expect("file");
    let mut cmd = a.cmd(&["run", "--name", "nosock", "--rootfs", &rootfs, "--", "true"]);
    cmd.env("ALCOVE_RUNTIME_DIR", blocker.join("rt"));
    let out = cmd.output().expect("runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!((out.status.code(), stderr.lines().count()), (Some(125), 1), "{stderr}");
    assert!(stderr.contains("failed to start"), "{stderr}");
    let i = a.inspect("nosock");
    let run = &i["runs"][0];
    assert_eq!(run["status"], "Terminated", "{i}");
    assert_eq!(run["reason"], "InternalError", "{i}");
    assert!(run["detail"].as_str().is_some_and(|d| d.contains("blocker/rt")), "{i}");
    assert!(i["guest_log"].as_str().is_some_and(|p| p.ends_with("sandboxes/nosock/logs/guest.log")), "{i}");
    assert_eq!(a.ps_entry("nosock").expect("listed")["status"], "Stopped");
    // Once fixed, the same sandbox starts.
    a.ok(&["start", "nosock"]);
    assert_eq!(a.ok(&["exec", "nosock", "--", "echo", "up"]), "up\n");
    a.ok(&["rm", "-f", "nosock"]);

    // With --rm nothing is kept.
    let mut cmd = a.cmd(&["run", "--rm", "--name", "gone", "--rootfs", &rootfs, "--", "true"]);
    cmd.env("ALCOVE_RUNTIME_DIR", blocker.join("rt"));
    assert_eq!(cmd.output().expect("runs").status.code(), Some(125));
    assert!(a.ps_entry("gone").is_none());
    assert!(!a.home.join("sandboxes/gone").exists());
}

#[test]
fn a_guest_that_cannot_boot_is_kept_with_its_reason_and_guest_log() {
    let a = Alcove::new();
    let rootfs = a.rootfs_arg();
    let (auto, _) = alcove_hostprobe::probe().auto_backend();
    if auto == alcove_hostprobe::Backend::Krun {
        // microVMs boot here: there is no failure to keep.
        return;
    }
    let out = a.run(&["run", "--name", "vm", "--backend", "krun", "--rootfs", &rootfs, "--", "true"]);
    out.assert_error("failed to start");
    let i = a.inspect("vm");
    let run = &i["runs"][0];
    assert_eq!(run["status"], "Terminated", "{i}");
    assert!(run["reason"].as_str().is_some_and(|r| r != "Crashed"), "{i}");
    assert!(run["detail"].as_str().is_some_and(|d| !d.is_empty()), "{i}");
    let log = i["guest_log"].as_str().expect("guest log path");
    assert!(log.ends_with("sandboxes/vm/logs/guest.log"), "{i}");
    let human = a.ok(&["inspect", "vm"]);
    assert!(human.contains("guest.log"), "{human}");
}

#[test]
fn a_run_records_how_its_command_ended() {
    let a = Alcove::new();
    let rootfs = a.rootfs_arg();
    let out = a.run(&["run", "--name", "three", "--rootfs", &rootfs, "--", "sh", "-c", "exit 3"]);
    assert_eq!(out.code, 3, "{out:?}");
    let e = a.ps_entry("three").expect("listed");
    assert_eq!(e["last_run"]["reason"], "Failed", "{e}");
    assert_eq!(e["last_run"]["exit_code"], 3, "{e}");
    let i = a.inspect("three");
    assert_eq!((i["runs"][0]["reason"].as_str(), i["runs"][0]["exit_code"].as_i64()), (Some("Failed"), Some(3)));
    assert!(a.ok(&["ps", "-a"]).contains("Failed (exit 3)"));

    a.ok(&["run", "--name", "zero", "--rootfs", &rootfs, "--", "true"]);
    let e = a.ps_entry("zero").expect("listed");
    assert_eq!((e["last_run"]["reason"].as_str(), e["last_run"]["exit_code"].as_i64()), (Some("Completed"), Some(0)));

    let out = a.run(&["run", "--name", "killed", "--rootfs", &rootfs, "--", "sh", "-c", "kill -TERM $$"]);
    assert_eq!(out.code, 128 + 15, "{out:?}");
    let e = a.ps_entry("killed").expect("listed");
    assert_eq!(e["last_run"]["reason"], "Failed", "{e}");
    assert_eq!(e["last_run"]["exit_signal"], 15, "{e}");
}

/// The host pids of the children of `pid` (every thread's list).
fn children_of(pid: u64) -> Vec<i32> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("tasks of the sandbox process");
    let mut found = Vec::new();
    for task in tasks.filter_map(Result::ok) {
        let list = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
        found.extend(list.split_whitespace().filter_map(|p| p.parse::<i32>().ok()));
    }
    found
}

#[test]
fn a_jail_killed_by_sigkill_is_recorded_as_signal_9() {
    let a = Alcove::new();
    let rootfs = a.rootfs_arg();
    a.ok(&["create", "k9", "--backend", "jail", "--rootfs", &rootfs]);
    let sandbox_pid = a.inspect("k9")["runs"][0]["pid"].as_u64().expect("the run's pid");
    // The jail's PID 1 (the agent) is the sandbox process's only child.
    let init = children_of(sandbox_pid);
    assert_eq!(init.len(), 1, "children of the sandbox process: {init:?}");
    // SAFETY: kill has no memory-safety preconditions; the pid is our sandbox's child.
    assert_eq!(unsafe { libc::kill(init[0], libc::SIGKILL) }, 0);
    let e = a.wait_status("k9", "Stopped", std::time::Duration::from_secs(30));
    let run = &a.inspect("k9")["runs"][0];
    assert_eq!(run["reason"], "Failed", "{e}\n{run}");
    assert_eq!(run["exit_signal"], 9, "{run}");
    assert_eq!(run["exit_code"], serde_json::Value::Null, "{run}");
    assert!(a.ok(&["ps", "-a"]).contains("signal 9"), "{}", a.ok(&["ps", "-a"]));
    a.ok(&["rm", "-f", "k9"]);
}
