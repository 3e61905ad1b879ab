//! The standalone sandbox process (`alcove sandbox --config FILE`) as a real
//! process: the pid line, log files, signals, and bad input.

#[path = "common/process.rs"]
mod process;

use alcove::store::{RunStatus, SandboxStatus, Store, TerminationReason};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(15);

struct Proc {
    dir: tempfile::TempDir,
    child: Child,
    pid: u32,
}

fn write_config(dir: &Path, extra: serde_json::Value) -> PathBuf {
    let mut cfg = serde_json::json!({
        "name": "sp1",
        "home": dir.join("home"),
        "backend": "mock",
        "socket_path": dir.join("run/sp1.sock"),
        "mock": { "heartbeat_interval_ms": 50 },
        "policy": { "drain_timeout": 2000, "shutdown_grace": 100, "metrics_interval": 0 }
    });
    if let (Some(obj), Some(more)) = (cfg.as_object_mut(), extra.as_object()) {
        for (k, v) in more {
            obj.insert(k.clone(), v.clone());
        }
    }
    let path = dir.join("config.json");
    std::fs::write(&path, serde_json::to_vec(&cfg).expect("json")).expect("config written");
    path
}

fn spawn(extra: serde_json::Value) -> Proc {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path(), extra);
    let child = process::spawn_sandbox_file(&config);
    let pid = child.id();
    Proc { dir, child, pid }
}

impl Proc {
    fn socket(&self) -> PathBuf {
        self.dir.path().join("run/sp1.sock")
    }

    fn store(&self) -> Store {
        Store::open(&self.dir.path().join("home/alcove.db")).expect("db")
    }

    fn wait_for_socket(&self) {
        let deadline = Instant::now() + WAIT;
        while std::os::unix::net::UnixStream::connect(self.socket()).is_err() {
            assert!(Instant::now() < deadline, "agent.sock never appeared");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn wait_exit(&mut self) -> i32 {
        process::wait_exit(&mut self.child, WAIT)
    }
}

#[test]
fn sigterm_stops_gracefully_with_reason_signal() {
    let mut p = spawn(serde_json::json!({}));
    p.wait_for_socket();
    // SAFETY: sending a signal to our own child.
    assert_eq!(unsafe { libc::kill(p.pid as i32, libc::SIGTERM) }, 0);
    assert_eq!(p.wait_exit(), 0);
    let run = p.store().latest_run("sp1").expect("query").expect("run");
    assert_eq!(run.status, RunStatus::Terminated);
    assert_eq!(run.reason, Some(TerminationReason::Signal));
    assert_eq!(run.pid, p.pid);
    assert_eq!(p.store().sandbox("sp1").expect("query").expect("row").status, SandboxStatus::Stopped);
    assert!(!p.socket().exists());
    // Logs went to files under the sandbox's log dir.
    let logs = p.dir.path().join("home/sandboxes/sp1/logs");
    let names: Vec<String> = std::fs::read_dir(&logs)
        .expect("log dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    let runtime = names.iter().find(|n| n.starts_with("runtime") && n.ends_with(".log")).expect("runtime log");
    let text = std::fs::read_to_string(logs.join(runtime)).expect("readable");
    assert!(text.contains("finalising"), "runtime log lacks the finalisation: {text}");
}

#[test]
fn agent_sock_accepts_as_soon_as_the_pid_line_is_out() {
    // `spawn` has read the pid line: a client connects at once, without the
    // retry the CLI used to need, and the process leads its own session.
    let mut p = spawn(serde_json::json!({}));
    std::os::unix::net::UnixStream::connect(p.socket()).expect("agent.sock is bound before the pid line");
    // SAFETY: getsid only reads the session id of our own child.
    let sid = unsafe { libc::getsid(p.pid as i32) };
    assert_eq!(sid, p.pid as i32, "the sandbox process is not a session leader");
    // SAFETY: sending a signal to our own child.
    assert_eq!(unsafe { libc::kill(p.pid as i32, libc::SIGTERM) }, 0);
    assert_eq!(p.wait_exit(), 0);
}

#[test]
fn sigusr1_forces_the_guest_off() {
    let mut p = spawn(serde_json::json!({ "mock": { "heartbeat_interval_ms": 50, "hang_on_shutdown": true } }));
    p.wait_for_socket();
    // SAFETY: sending a signal to our own child.
    assert_eq!(unsafe { libc::kill(p.pid as i32, libc::SIGUSR1) }, 0);
    let t = Instant::now();
    assert_eq!(p.wait_exit(), 0);
    assert!(t.elapsed() < Duration::from_millis(1500), "a forced stop waited for the drain timeout");
    let run = p.store().latest_run("sp1").expect("query").expect("run");
    assert_eq!(run.reason, Some(TerminationReason::Signal));
    assert_eq!(run.exit_code, Some(137));
}

#[test]
fn a_crashing_guest_is_recorded_as_failed() {
    let mut p = spawn(serde_json::json!({ "mock": { "crash_after_ms": 100, "crash_code": 42 } }));
    assert_eq!(p.wait_exit(), 0);
    let run = p.store().latest_run("sp1").expect("query").expect("run");
    assert_eq!(run.reason, Some(TerminationReason::Failed));
    assert_eq!(run.exit_code, Some(42));
}

#[test]
fn a_dead_parent_takes_the_sandbox_with_it() {
    let mut parent = Command::new("sleep").arg("600").spawn().expect("parent stand-in");
    let mut p = spawn(serde_json::json!({ "parent_pid": parent.id() }));
    p.wait_for_socket();
    parent.kill().expect("kills");
    parent.wait().expect("reaped");
    assert_eq!(p.wait_exit(), 0);
    let run = p.store().latest_run("sp1").expect("query").expect("run");
    assert_eq!(run.reason, Some(TerminationReason::Signal));
    assert!(run.detail.unwrap_or_default().contains("attached client"));
}

fn run_bad(config: &Path) -> (i32, String) {
    let out =
        Command::new(env!("CARGO_BIN_EXE_alcove")).args(["sandbox", "--config"]).arg(config).output().expect("runs");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.code().unwrap_or(-1), stderr)
}

fn assert_one_line_error(code: i32, stderr: &str, needle: &str) {
    assert_ne!(code, 0);
    assert_eq!(stderr.trim_end().lines().count(), 1, "not one line: {stderr:?}");
    assert!(stderr.contains(needle), "{needle:?} not in {stderr:?}");
}

#[test]
fn a_missing_config_file_is_one_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (code, err) = run_bad(&dir.path().join("nope.json"));
    assert_one_line_error(code, &err, "cannot read config file");
}

#[test]
fn a_malformed_config_is_one_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("c.json");
    std::fs::write(&path, b"{ not json").expect("written");
    let (code, err) = run_bad(&path);
    assert_one_line_error(code, &err, "is invalid");
}

#[test]
fn an_unknown_backend_is_one_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_config(dir.path(), serde_json::json!({ "backend": "qemu" }));
    let (code, err) = run_bad(&path);
    assert_one_line_error(code, &err, "unknown variant `qemu`");
}

#[test]
fn a_database_that_is_not_alcoves_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_config(dir.path(), serde_json::json!({}));
    let db = dir.path().join("home/alcove.db");
    std::fs::create_dir_all(db.parent().expect("dir")).expect("dir");
    std::fs::write(&db, vec![0x42u8; 4096]).expect("junk");
    let (code, err) = run_bad(&path);
    assert_one_line_error(code, &err, "is not an alcove database");
    assert_eq!(std::fs::read(&db).expect("still there"), vec![0x42u8; 4096], "a foreign file was modified");
}

#[test]
fn a_backend_failure_after_the_run_row_is_finalised_internal_error() {
    let mut p = spawn(serde_json::json!({ "mock": { "fail_launch": "cannot create guest: test" } }));
    assert_eq!(p.wait_exit(), 1, "alcove's own failure must not exit 0");
    let run = p.store().latest_run("sp1").expect("query").expect("run");
    assert_eq!(run.status, RunStatus::Terminated);
    assert_eq!(run.reason, Some(TerminationReason::InternalError));
    assert!(run.detail.unwrap_or_default().contains("cannot create guest: test"));
}
