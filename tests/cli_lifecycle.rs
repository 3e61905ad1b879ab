//! The lifecycle of named jail sandboxes through the CLI: create, exec, cp,
//! stop/start with the writable layer kept, touch, kill, rm, the policies
//! (idle timeout, max duration), the reaper, and what ps/inspect/logs/
//! metrics show.

mod cli_support;

use cli_support::Alcove;
use std::time::{Duration, Instant};

#[test]
fn create_exec_cp_stop_start_kill_rm() {
    let a = Alcove::new();
    let rootfs = a.rootfs_arg();
    assert_eq!(a.ok(&["create", "box", "--rootfs", &rootfs]), "box\n");
    let e = a.ps_entry("box").expect("listed");
    assert_eq!(e["status"], "Running");
    assert_eq!(e["backend"], "jail");
    // Plain `ps` lists running sandboxes in a table.
    let table = a.ok(&["ps"]);
    assert!(table.starts_with("NAME"), "{table}");
    assert!(table.lines().any(|l| l.starts_with("box ") && l.contains("Running")), "{table}");

    // exec: exit code, stdin, env, workdir.
    assert_eq!(a.run(&["exec", "box", "--", "sh", "-c", "exit 42"]).code, 42);
    let out = a.run_input(&["exec", "-i", "box", "--", "cat"], b"hi\n");
    assert_eq!((out.code, out.stdout.as_str()), (0, "hi\n"), "{out:?}");
    let out = a.ok(&["exec", "-e", "A=1", "-w", "/etc", "box", "--", "sh", "-c", "echo $A; pwd"]);
    assert_eq!(out, "1\n/etc\n");
    assert_eq!(a.run(&["exec", "box", "--", "no-such-cmd"]).code, 127);
    let out = a.run(&["exec", "--timeout", "0.5", "box", "--", "sleep", "30"]);
    assert_eq!(out.code, 137, "{out:?}");

    // cp both ways, byte-identical, files and directories.
    let tmp = tempfile::tempdir_in("/tmp").expect("tmp");
    let data: Vec<u8> = (0..700_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let src = tmp.path().join("blob.bin");
    std::fs::write(&src, &data).expect("write blob");
    a.ok(&["cp", src.to_str().expect("utf8"), "box:/root/blob.bin"]);
    assert_eq!(a.ok(&["exec", "box", "--", "sh", "-c", "wc -c < /root/blob.bin"]).trim(), "700000");
    let back = tmp.path().join("back.bin");
    a.ok(&["cp", "box:/root/blob.bin", back.to_str().expect("utf8")]);
    assert_eq!(std::fs::read(&back).expect("read back"), data);
    let tree = tmp.path().join("tree");
    std::fs::create_dir_all(tree.join("sub")).expect("mkdir");
    std::fs::write(tree.join("sub/a.txt"), "A").expect("write");
    a.ok(&["cp", tree.to_str().expect("utf8"), "box:/root/"]);
    assert_eq!(a.ok(&["exec", "box", "--", "cat", "/root/tree/sub/a.txt"]), "A");
    let out_dir = tmp.path().join("out");
    std::fs::create_dir(&out_dir).expect("mkdir");
    a.ok(&["cp", "box:/root/tree", out_dir.to_str().expect("utf8")]);
    assert_eq!(std::fs::read_to_string(out_dir.join("tree/sub/a.txt")).expect("copied tree"), "A");
    a.run(&["cp", "box:/no/such/file", back.to_str().expect("utf8")]).assert_error("no/such/file");

    // A file written, then stop, then start: the file is there.
    a.ok(&["exec", "box", "--", "sh", "-c", "echo persisted > /root/state.txt"]);
    assert_eq!(a.ok(&["stop", "box"]), "box\n");
    let e = a.ps_entry("box").expect("listed");
    assert_eq!((e["status"].as_str(), e["last_run"]["reason"].as_str()), (Some("Stopped"), Some("ShutdownRequested")));
    // A stopped sandbox is not in plain `ps`, and cannot exec.
    assert!(!a.ok(&["ps"]).contains("box"));
    a.run(&["exec", "box", "--", "true"]).assert_error("not running");
    assert_eq!(a.ok(&["start", "box"]), "box\n");
    assert_eq!(a.status("box"), "Running");
    assert_eq!(a.ok(&["exec", "box", "--", "cat", "/root/state.txt"]), "persisted\n");

    // inspect --json: config, status and every run with its reason.
    let i = a.inspect("box");
    assert_eq!(i["status"], "Running");
    assert_eq!(i["config"]["backend"], "jail");
    let runs = i["runs"].as_array().expect("runs");
    assert_eq!(runs.len(), 2);
    assert_eq!(runs[0]["status"], "Running");
    assert_eq!(runs[1]["reason"], "ShutdownRequested");
    assert!(runs[1]["terminated_at_ms"].as_i64().is_some());
    let human = a.ok(&["inspect", "box"]);
    assert!(human.contains("Status:") && human.contains("ShutdownRequested"), "{human}");

    // logs of both sources.
    let guest = a.ok(&["logs", "box"]);
    assert!(!guest.is_empty(), "the guest log is empty");
    let runtime = a.ok(&["logs", "--source", "runtime", "box"]);
    assert!(runtime.contains("agent ready"), "{runtime}");

    // metrics: a sample appears within a few seconds.
    let deadline = Instant::now() + Duration::from_secs(5);
    let m = loop {
        let v: serde_json::Value = serde_json::from_str(&a.ok(&["metrics", "box", "--json"])).expect("metrics JSON");
        if !v["latest"].is_null() {
            break v;
        }
        assert!(Instant::now() < deadline, "no metrics sample: {v}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(m["latest"]["memory_bytes"].as_u64().unwrap_or(0) > 0, "{m}");
    assert!(a.ok(&["metrics", "box"]).contains("MEMORY"));

    // logs -f follows until the sandbox stops.
    let follower = a
        .cmd(&["logs", "-f", "--source", "runtime", "box"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn logs -f");

    // touch works on a running sandbox.
    assert_eq!(a.ok(&["touch", "box"]), "box\n");

    // rm refuses a running sandbox; kill forces it off; rm removes it.
    a.run(&["rm", "box"]).assert_error("is running");
    assert_eq!(a.ok(&["kill", "box"]), "box\n");
    let followed = follower.wait_with_output().expect("logs -f ends when the sandbox stops");
    assert!(followed.status.success(), "{followed:?}");
    let text = String::from_utf8_lossy(&followed.stdout);
    assert!(text.contains("agent ready") && text.contains("finalising"), "{text}");
    let e = a.ps_entry("box").expect("listed");
    assert_eq!((e["status"].as_str(), e["last_run"]["reason"].as_str()), (Some("Stopped"), Some("Signal")));
    a.ok(&["rm", "box"]);
    assert!(a.ps_entry("box").is_none());
    assert!(!a.home.join("sandboxes/box").exists());

    // rm -f of a running sandbox.
    a.ok(&["create", "box2", "--rootfs", &rootfs]);
    a.ok(&["rm", "-f", "box2"]);
    assert!(a.ps().is_empty());
}

#[test]
fn policies_and_the_reaper_show_in_ps_and_inspect() {
    let a = Alcove::new();
    let rootfs = a.rootfs_arg();
    a.ok(&["create", "idle", "--rootfs", &rootfs, "--idle-timeout", "1"]);
    a.ok(&["create", "maxd", "--rootfs", &rootfs, "--max-duration", "1.5"]);
    a.ok(&["create", "touched", "--rootfs", &rootfs, "--idle-timeout", "1.5"]);
    a.ok(&["create", "crash", "--rootfs", &rootfs]);

    // kill -9 of a sandbox process: the next ps reports Crashed.
    let pid = a.ps_entry("crash").expect("listed")["pid"].as_u64().expect("pid") as i32;
    // SAFETY: kills the sandbox process this test created.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z")) {
        assert!(Instant::now() < deadline, "the sandbox process did not die");
        std::thread::sleep(Duration::from_millis(20));
    }
    let e = a.ps_entry("crash").expect("listed");
    assert_eq!((e["status"].as_str(), e["last_run"]["reason"].as_str()), (Some("Crashed"), Some("Crashed")), "{e}");
    // The reaper also removed the cgroups the killed process left behind.
    let leftovers = std::process::Command::new("find")
        .args(["/sys/fs/cgroup", "-type", "d", "-name", &format!("crash-{pid}-*")])
        .output()
        .expect("find runs");
    assert_eq!(String::from_utf8_lossy(&leftovers.stdout), "", "cgroups left behind by the crashed sandbox");

    // touch keeps "touched" alive past its idle timeout.
    let until = Instant::now() + Duration::from_millis(2500);
    while Instant::now() < until {
        a.ok(&["touch", "touched"]);
        std::thread::sleep(Duration::from_millis(400));
    }
    assert_eq!(a.status("touched"), "Running");

    let e = a.wait_status("idle", "Stopped", Duration::from_secs(10));
    assert_eq!(e["last_run"]["reason"], "IdleTimeout", "{e}");
    let e = a.wait_status("maxd", "Stopped", Duration::from_secs(10));
    assert_eq!(e["last_run"]["reason"], "MaxDurationExceeded", "{e}");
    let i = a.inspect("maxd");
    assert_eq!(i["runs"][0]["reason"], "MaxDurationExceeded");
    assert_eq!(i["config"]["policy"]["max_duration"], 1500);
    let i = a.inspect("crash");
    assert_eq!((i["status"].as_str(), i["runs"][0]["reason"].as_str()), (Some("Crashed"), Some("Crashed")));

    // A sandbox stopped by its idle timeout starts again cleanly, and a
    // crashed one too.
    a.ok(&["start", "idle", "crash"]);
    assert_eq!(a.ok(&["exec", "idle", "--", "echo", "again"]), "again\n");
    assert_eq!(a.ok(&["exec", "crash", "--", "echo", "again"]), "again\n");
    assert_eq!(a.inspect("idle")["runs"].as_array().map(Vec::len), Some(2));
    a.ok(&["stop", "--timeout", "2", "idle", "crash", "touched"]);
    for n in ["idle", "crash", "touched"] {
        assert_eq!(a.status(n), "Stopped", "{n}");
    }
}

#[test]
fn stop_forces_commands_that_ignore_sigterm_after_the_timeout() {
    let a = Alcove::new();
    let rootfs = a.rootfs_arg();
    a.ok(&[
        "run",
        "-d",
        "--name",
        "stubborn",
        "--rootfs",
        &rootfs,
        "--",
        "sh",
        "-c",
        "trap '' TERM; echo ready > /tmp/ready; while :; do sleep 1; done",
    ]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while a.run(&["exec", "stubborn", "--", "cat", "/tmp/ready"]).code != 0 {
        assert!(Instant::now() < deadline, "the detached command never started");
        std::thread::sleep(Duration::from_millis(100));
    }
    let started = Instant::now();
    assert_eq!(a.ok(&["stop", "--timeout", "1", "stubborn"]), "stubborn\n");
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(8), "stop took {took:?}");
    let e = a.ps_entry("stubborn").expect("listed");
    assert_eq!(e["status"], "Stopped", "{e}");
    // The detached command's output went to its log.
    let log = std::fs::read_to_string(a.home.join("sandboxes/stubborn/logs/command.log")).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut log = log;
    while !log.contains("exited with code") {
        assert!(Instant::now() < deadline, "supervisor never recorded the end: {log:?}");
        std::thread::sleep(Duration::from_millis(100));
        log = std::fs::read_to_string(a.home.join("sandboxes/stubborn/logs/command.log")).unwrap_or_default();
    }
}

/// The cgroup directories named `NAME-*` anywhere under /sys/fs/cgroup.
fn cgroups_of(name: &str) -> Vec<String> {
    let out = std::process::Command::new("find")
        .args(["/sys/fs/cgroup", "-type", "d", "-name", &format!("{name}-*")])
        .output()
        .expect("find runs");
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect()
}

/// Removes the test's own cgroup directories (`alcove-test-PID` under each
/// hierarchy, deepest first) when dropped, also after a failed assertion.
struct TestCgroups(String);

impl Drop for TestCgroups {
    fn drop(&mut self) {
        let out = std::process::Command::new("find")
            .args(["/sys/fs/cgroup", "-depth", "-type", "d", "-path", &format!("*/{}*", self.0)])
            .output()
            .expect("find runs");
        for dir in String::from_utf8_lossy(&out.stdout).lines() {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

#[test]
fn the_reaper_removes_a_dead_jails_cgroups_under_its_configured_parent() {
    let _cleanup = TestCgroups(format!("alcove-test-{}", std::process::id()));
    let a = Alcove::new();
    let rootfs = a.rootfs_arg();
    a.ok(&["create", "cgp", "--backend", "jail", "--rootfs", &rootfs]);
    a.ok(&["stop", "cgp"]);
    // The sandbox's jail options name a cgroup parent of their own.
    let parent = format!("alcove-test-{}/custom", std::process::id());
    let config_path = a.home.join("sandboxes/cgp/config.json");
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&config_path).expect("config")).expect("JSON");
    config["jail"]["cgroup_parent"] = serde_json::Value::String(parent.clone());
    std::fs::write(&config_path, serde_json::to_vec(&config).expect("JSON")).expect("written");
    a.ok(&["start", "cgp"]);
    let placed = cgroups_of("cgp");
    assert!(!placed.is_empty() && placed.iter().all(|d| d.contains(&parent)), "{placed:?}");

    // The sandbox process dies without its clean-up; its jail dies with it
    // (PDEATHSIG), leaving the cgroups behind for the next CLI call.
    let pid = a.inspect("cgp")["runs"][0]["pid"].as_i64().expect("pid") as i32;
    // SAFETY: kill has no memory-safety preconditions; the pid is our sandbox process.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z")) {
        assert!(Instant::now() < deadline, "the sandbox process {pid} did not end");
        std::thread::sleep(Duration::from_millis(10));
    }
    let e = a.ps_entry("cgp").expect("listed");
    assert_eq!(e["last_run"]["reason"], "Crashed", "{e}");
    assert_eq!(cgroups_of("cgp"), Vec::<String>::new(), "cgroups left under {parent}");
    a.ok(&["rm", "-f", "cgp"]);
}
