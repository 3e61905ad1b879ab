//! `alcove pause` / `alcove resume` end to end on jail sandboxes: a paused
//! sandbox's processes are frozen (the kernel says so, and a counter makes
//! no progress while an equal counter on the host does), ps and inspect
//! show Paused, resume lets it go on, refusals are one line, and stop, kill
//! and rm -f of a paused sandbox end it and leave no cgroup.

mod cli_support;

use cli_support::Alcove;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The sandbox process's host pid, from `ps`.
fn sandbox_pid(a: &Alcove, name: &str) -> u64 {
    a.ps_entry(name).expect("listed")["pid"].as_u64().expect("a running sandbox has a pid")
}

/// The jail's cgroup directories (`NAME-PID-N` in every hierarchy).
fn cgroups_of(name: &str, pid: u64) -> Vec<PathBuf> {
    let out = Command::new("find")
        .args(["/sys/fs/cgroup", "-type", "d", "-name", &format!("{name}-{pid}-*")])
        .output()
        .expect("find runs");
    String::from_utf8_lossy(&out.stdout).lines().map(PathBuf::from).collect()
}

/// The jail's freezer cgroup: v1 `freezer.state`, else v2 `cgroup.freeze`.
fn freezer_of(name: &str, pid: u64) -> PathBuf {
    let dirs = cgroups_of(name, pid);
    dirs.iter()
        .find(|d| d.join("freezer.state").exists())
        .or_else(|| dirs.iter().find(|d| d.join("cgroup.freeze").exists()))
        .cloned()
        .unwrap_or_else(|| panic!("no freezer cgroup among {dirs:?}"))
}

/// The kernel's word that every task of the freezer cgroup is frozen: the
/// cgroup's state, and each task's.
fn assert_frozen(freezer: &Path) {
    let tasks = std::fs::read_to_string(freezer.join("cgroup.procs")).expect("cgroup.procs");
    let tasks: Vec<&str> = tasks.lines().collect();
    assert!(!tasks.is_empty(), "the jail's cgroup holds its processes");
    if freezer.join("freezer.state").exists() {
        let state = std::fs::read_to_string(freezer.join("freezer.state")).expect("freezer.state");
        assert_eq!(state.trim(), "FROZEN");
        for pid in tasks {
            // A frozen task shows as D, whether the freezer parked it in
            // `__refrigerator` or froze it in its sleep.
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
            let state = stat[stat.rfind(')').expect("name") + 1..].trim_start().chars().next();
            assert_eq!(state, Some('D'), "task {pid} of the paused jail is not frozen: {stat}");
        }
    } else {
        let events = std::fs::read_to_string(freezer.join("cgroup.events")).expect("cgroup.events");
        assert!(events.lines().any(|l| l == "frozen 1"), "{events}");
    }
}

/// A counter in the guest: appends a line per step to /root/count, which
/// the host reads in the sandbox's writable layer. Its size is its progress.
struct Counter {
    exec: Child,
    file: PathBuf,
}

impl Counter {
    fn start(a: &Alcove, name: &str) -> Counter {
        let exec = a
            .cmd(&["exec", name, "--", "sh", "-c", "while :; do echo x >> /root/count; done"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the counter");
        let file = a.home.join("sandboxes").join(name).join("upper/root/count");
        let counter = Counter { exec, file };
        counter.wait_past(0);
        counter
    }

    fn progress(&self) -> u64 {
        std::fs::metadata(&self.file).map(|m| m.len()).unwrap_or(0)
    }

    /// Waits until the counter is past `value` (bounded: 30 s).
    fn wait_past(&self, value: u64) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let now = self.progress();
            if now > value {
                return now;
            }
            assert!(Instant::now() < deadline, "the counter never got past {value}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Counter {
    fn drop(&mut self) {
        let _ = self.exec.kill();
        let _ = self.exec.wait();
    }
}

/// The window: the same loop on the host makes `steps` steps (it ends when
/// done — an event, not a guess at how long is long enough).
fn host_counter_runs(steps: u32) {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("count");
    let script = format!("i=0; while [ $i -lt {steps} ]; do i=$((i+1)); echo x >> {}; done", file.display());
    let status = Command::new("sh").args(["-c", &script]).status().expect("host counter");
    assert!(status.success());
    assert_eq!(std::fs::metadata(&file).expect("host count").len(), u64::from(steps) * 2);
}

#[test]
fn a_paused_sandbox_makes_no_progress_until_resumed() {
    let a = Alcove::new();
    let rootfs = a.rootfs_arg();
    a.ok(&["create", "frz", "--rootfs", &rootfs]);
    let pid = sandbox_pid(&a, "frz");
    let counter = Counter::start(&a, "frz");

    assert_eq!(a.ok(&["pause", "frz"]), "frz\n");
    assert_frozen(&freezer_of("frz", pid));
    assert_eq!(a.status("frz"), "Paused");
    assert_eq!(a.inspect("frz")["status"], "Paused");
    let table = a.ok(&["ps"]);
    assert!(table.lines().any(|l| l.starts_with("frz ") && l.contains("Paused")), "{table}");

    let before = counter.progress();
    host_counter_runs(20_000);
    assert_eq!(counter.progress(), before, "the paused counter moved while the host's made 20000 steps");
    assert_frozen(&freezer_of("frz", pid));

    // A paused sandbox takes no new command: one line, not a hang.
    a.run(&["exec", "frz", "--", "true"]).assert_error("the sandbox is paused");
    // Pausing twice is refused in one line and changes nothing.
    a.run(&["pause", "frz"]).assert_error("cannot pause sandbox frz: the sandbox is already paused");
    assert_eq!(a.status("frz"), "Paused");

    assert_eq!(a.ok(&["resume", "frz"]), "frz\n");
    assert_eq!(a.status("frz"), "Running");
    counter.wait_past(before);
    a.run(&["resume", "frz"]).assert_error("cannot resume sandbox frz: the sandbox is not paused");
    // The guest answers commands again.
    assert_eq!(a.ok(&["exec", "frz", "--", "echo", "back"]), "back\n");

    // Stop of a paused sandbox: graceful (it is thawed first), recorded, no cgroup left.
    a.ok(&["pause", "frz"]);
    assert_eq!(a.ok(&["stop", "frz"]), "frz\n");
    let e = a.ps_entry("frz").expect("listed");
    assert_eq!((e["status"].as_str(), e["last_run"]["reason"].as_str()), (Some("Stopped"), Some("ShutdownRequested")));
    assert_eq!(cgroups_of("frz", pid), Vec::<PathBuf>::new(), "cgroups left by the stopped paused sandbox");
    drop(counter);

    // A stopped sandbox cannot be paused or resumed.
    a.run(&["pause", "frz"]).assert_error("cannot pause sandbox frz: it is stopped, not running");
    a.run(&["resume", "frz"]).assert_error("cannot resume sandbox frz: it is stopped, not running");
    a.run(&["pause", "nosuch"]).assert_error("nosuch");
}

#[test]
fn kill_and_rm_f_end_a_paused_sandbox_and_leave_no_cgroup() {
    let a = Alcove::new();
    let rootfs = a.rootfs_arg();
    a.ok(&["create", "frzk", "--rootfs", &rootfs]);
    a.ok(&["create", "frzr", "--rootfs", &rootfs]);
    let (kpid, rpid) = (sandbox_pid(&a, "frzk"), sandbox_pid(&a, "frzr"));
    assert_eq!(a.ok(&["pause", "frzk", "frzr"]), "frzk\nfrzr\n");
    assert_frozen(&freezer_of("frzk", kpid));
    assert_frozen(&freezer_of("frzr", rpid));

    assert_eq!(a.ok(&["kill", "frzk"]), "frzk\n");
    let e = a.ps_entry("frzk").expect("listed");
    assert_eq!(e["status"], "Stopped", "{e}");
    assert_eq!(e["last_run"]["reason"], "Signal", "{e}");
    assert_eq!(cgroups_of("frzk", kpid), Vec::<PathBuf>::new());

    assert_eq!(a.ok(&["rm", "-f", "frzr"]), "frzr\n");
    assert!(a.ps_entry("frzr").is_none());
    assert_eq!(cgroups_of("frzr", rpid), Vec::<PathBuf>::new());
}

#[test]
fn a_paused_sandbox_whose_process_is_killed_is_reaped_and_its_frozen_jail_removed() {
    let a = Alcove::new();
    let rootfs = a.rootfs_arg();
    a.ok(&["create", "frzc", "--rootfs", &rootfs]);
    let pid = sandbox_pid(&a, "frzc");
    a.ok(&["pause", "frzc"]);
    let freezer = freezer_of("frzc", pid);
    assert_frozen(&freezer);
    // SAFETY: kills the sandbox process this test created.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0);
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z")) {
        assert!(Instant::now() < deadline, "the sandbox process did not die");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The jail's processes stay frozen (a frozen task cannot die) until the
    // reaper's clean-up kills and thaws them.
    assert_frozen(&freezer);
    let e = a.ps_entry("frzc").expect("listed");
    assert_eq!((e["status"].as_str(), e["last_run"]["reason"].as_str()), (Some("Crashed"), Some("Crashed")), "{e}");
    assert_eq!(cgroups_of("frzc", pid), Vec::<PathBuf>::new(), "the frozen jail's cgroups were left behind");
}
