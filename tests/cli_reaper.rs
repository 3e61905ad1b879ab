//! The reaper every CLI runs: it judges liveness by facts that cannot drift
//! (a process's start tick, the sandbox's lock), and it removes an `--rm`
//! sandbox only when nobody that may still read or remove it is alive.
//! Sandboxes here use the mock backend: what is tested is the CLI and the
//! sandbox process, not a guest.

mod cli_support;

use cli_support::Alcove;
use std::path::Path;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(20);

fn db(a: &Alcove) -> rusqlite::Connection {
    let c = rusqlite::Connection::open(a.home.join("alcove.db")).expect("db opens");
    c.busy_timeout(Duration::from_secs(10)).expect("busy timeout");
    c
}

/// The start time of `pid` in clock ticks since boot (`/proc/PID/stat` field 22).
fn start_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let rest = stat.rsplit_once(')').expect("comm").1;
    rest.split_whitespace().nth(19).expect("field 22").parse().expect("ticks")
}

/// Waits until `pid` is gone (or a zombie of another parent).
fn wait_gone(pid: u32) {
    let deadline = Instant::now() + WAIT;
    while std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z")) {
        assert!(Instant::now() < deadline, "process {pid} did not end");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn sandbox_rows(a: &Alcove, name: &str) -> i64 {
    db(a).query_row("SELECT count(*) FROM sandbox WHERE name = ?1", [name], |r| r.get(0)).expect("query")
}

#[test]
fn a_wall_clock_step_does_not_make_a_live_run_look_dead() {
    let a = Alcove::new();
    a.ok(&["create", "clocky", "--backend", "mock"]);
    // Inject a clock offset: as if the wall clock had stepped forward by ten
    // seconds (NTP, a VM resume) since the run started.
    let moved = db(&a)
        .execute("UPDATE run SET started_at_ms = started_at_ms - 10000 WHERE status = 'Running'", [])
        .expect("update");
    assert_eq!(moved, 1);
    let e = a.ps_entry("clocky").expect("listed");
    assert_eq!(e["status"], "Running", "a live run was judged dead after a clock step: {e}");
    assert!(e["last_run"]["reason"].is_null(), "{e}");
    assert_eq!(a.ok(&["exec", "clocky", "--", "echo", "alive"]), "alive\n");
    a.ok(&["rm", "-f", "clocky"]);
}

#[test]
fn a_reused_pid_does_not_keep_a_dead_run_alive() {
    let a = Alcove::new();
    a.ok(&["create", "reused", "--backend", "mock"]);
    let pid = a.ps_entry("reused").expect("listed")["pid"].as_u64().expect("pid") as u32;
    // SAFETY: kills the sandbox process this test created.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0);
    wait_gone(pid);
    // A process started after the crash takes the pid, as happens when pids
    // wrap; moments after the run began, so no wall-clock slack tells them apart.
    let mut reuser = std::process::Command::new("sleep").arg("1000").spawn().expect("spawn sleep");
    db(&a).execute("UPDATE run SET pid = ?1 WHERE status = 'Running'", [reuser.id()]).expect("update");
    let e = a.ps_entry("reused").expect("listed");
    reuser.kill().expect("kill");
    reuser.wait().expect("reap");
    assert_eq!((e["status"].as_str(), e["last_run"]["reason"].as_str()), (Some("Crashed"), Some("Crashed")), "{e}");
}

/// Rewrites `sandboxes/NAME/cli.json` to mark the sandbox `--rm`, owned by
/// `owner` (a pid and its start tick).
fn mark_auto_remove(a: &Alcove, name: &str, owner: u32) {
    let path = a.home.join("sandboxes").join(name).join("cli.json");
    let mut meta: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).expect("cli.json")).expect("json");
    meta["auto_remove"] = true.into();
    meta["owner"] = serde_json::json!({ "pid": owner, "start_ticks": start_ticks(owner) });
    std::fs::write(&path, serde_json::to_vec(&meta).expect("json")).expect("write cli.json");
}

#[test]
fn a_finished_rm_sandbox_stays_while_its_owner_may_still_read_it() {
    let a = Alcove::new();
    a.ok(&["create", "owned", "--backend", "mock"]);
    a.ok(&["stop", "owned"]);
    // Its owner (the CLI that will read the outcome and remove it) is alive.
    let mut owner = std::process::Command::new("sleep").arg("1000").spawn().expect("spawn sleep");
    mark_auto_remove(&a, "owned", owner.id());
    let e = a.ps_entry("owned").expect("a bystander removed a sandbox whose owner is alive");
    assert_eq!(e["last_run"]["reason"], "ShutdownRequested");
    assert!(Path::new(&a.home.join("sandboxes/owned")).exists());
    // Once the owner is gone (it could not remove it), a bystander may.
    owner.kill().expect("kill");
    owner.wait().expect("reap");
    assert!(a.ps_entry("owned").is_none(), "a finished --rm sandbox without owner was kept");
    assert_eq!(sandbox_rows(&a, "owned"), 0);
    assert!(!a.home.join("sandboxes/owned").exists());
}

#[test]
fn an_rm_sandbox_whose_cli_died_is_removed_by_its_own_process() {
    let a = Alcove::new();
    let mut cli = a
        .cmd(&["run", "--rm", "--name", "orphan", "--backend", "mock", "--", "sleep", "1000000"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn run");
    // Running once the command's session is open: the sandbox is listed Running.
    let e = a.wait_status("orphan", "Running", WAIT);
    let sandbox_pid = e["pid"].as_u64().expect("pid") as u32;
    cli.kill().expect("kill -9 the attached CLI");
    cli.wait().expect("reap");
    wait_gone(sandbox_pid);
    // Removed by the sandbox process itself, before any other CLI looked:
    // read the database directly, without a reaper.
    assert_eq!(sandbox_rows(&a, "orphan"), 0, "the orphaned --rm sandbox was left for a bystander");
    assert!(!a.home.join("sandboxes/orphan").exists());
}

/// Watches `path` for opens (inotify `IN_OPEN`).
struct OpenWatch(std::fs::File);

impl OpenWatch {
    fn new(path: &Path) -> OpenWatch {
        use std::os::fd::FromRawFd;
        use std::os::unix::ffi::OsStrExt;
        // SAFETY: plain syscalls; the descriptor is owned by the File at once.
        let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC) };
        assert!(fd >= 0, "inotify_init1: {}", std::io::Error::last_os_error());
        let watch = OpenWatch(unsafe { std::fs::File::from_raw_fd(fd) });
        let c = std::ffi::CString::new(path.as_os_str().as_bytes()).expect("path");
        // SAFETY: valid descriptor and NUL-terminated path.
        assert!(unsafe { libc::inotify_add_watch(fd, c.as_ptr(), libc::IN_OPEN) } >= 0);
        watch
    }

    /// Blocks until the file is opened.
    fn wait_open(&mut self) {
        use std::io::Read;
        let mut buf = [0u8; 4096];
        let n = self.0.read(&mut buf).expect("inotify read");
        assert!(n > 0);
    }
}

#[test]
fn a_dead_run_whose_lock_is_released_a_moment_later_is_still_reaped() {
    // A killed sandbox process's leader shows as a zombie while its other
    // threads are still exiting and still hold the sandbox's lock; the
    // next ps must not report that dead run as Running.
    let a = Alcove::new();
    a.ok(&["create", "dying", "--backend", "mock"]);
    let pid = a.ps_entry("dying").expect("listed")["pid"].as_u64().expect("pid") as u32;
    let lock_path = a.home.join("sandboxes/dying/lock");
    // SAFETY: kills the sandbox process this test created.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0);
    wait_gone(pid);
    // Stand in for threads still exiting: take the lock (once the real
    // process has let go of it) and hold it until ps has first tried it.
    let held = std::fs::File::open(&lock_path).expect("lock file");
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a descriptor this test owns.
    assert_eq!(unsafe { libc::flock(held.as_raw_fd(), libc::LOCK_EX) }, 0);
    let mut watch = OpenWatch::new(&lock_path);
    let ps = a.cmd(&["ps", "-a", "--json"]).stdout(std::process::Stdio::piped()).spawn().expect("ps starts");
    watch.wait_open();
    drop(held);
    let out = ps.wait_with_output().expect("ps ends");
    assert!(out.status.success());
    let list: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("json");
    let e = list.iter().find(|e| e["name"] == "dying").expect("listed");
    assert_eq!((e["status"].as_str(), e["last_run"]["reason"].as_str()), (Some("Crashed"), Some("Crashed")), "{e}");
}

#[test]
fn a_command_that_names_a_sandbox_reaps_only_that_one() {
    // Its cost must not grow with the number of sandboxes: `inspect B`
    // leaves A's dead run to whoever looks at A (or `ps`).
    let a = Alcove::new();
    a.ok(&["create", "dead", "--backend", "mock"]);
    a.ok(&["create", "other", "--backend", "mock"]);
    let pid = a.ps_entry("dead").expect("listed")["pid"].as_u64().expect("pid") as u32;
    // SAFETY: kills the sandbox process this test created.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0);
    wait_gone(pid);
    let status = |name: &str| -> String {
        db(&a)
            .query_row(
                "SELECT r.status FROM run r JOIN sandbox s ON s.id = r.sandbox_id WHERE s.name = ?1 \
                 ORDER BY r.id DESC LIMIT 1",
                [name],
                |r| r.get(0),
            )
            .expect("run row")
    };
    a.ok(&["inspect", "other", "--json"]);
    a.ok(&["exec", "other", "--", "echo", "hi"]);
    assert_eq!(status("dead"), "Running", "a command about another sandbox reaped this one");
    let e = a.inspect("dead");
    assert_eq!(e["status"], "Crashed", "{e}");
    assert_eq!(status("dead"), "Terminated");
    a.ok(&["rm", "-f", "dead", "other"]);
}
