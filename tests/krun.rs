//! The krun backend through the real sandbox process. On this project's
//! machines (/dev/kvm is kvm_pvm, no vmx/svm) the libkrunfw guest kernel
//! cannot boot: these tests show that the failure, and a SIGTERM during the
//! boot, are finalised correctly. Tests that need a booting microVM live in
//! crates/krun/tests/boot.rs and switch on by themselves where vmx/svm exist.

#[path = "common/process.rs"]
mod process;

use alcove::store::{RunStatus, SandboxStatus, Store, TerminationReason};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// A failed boot takes ~8-13 s of emulation here; finalisation must follow
/// within this bound.
const BOUND: Duration = Duration::from_secs(60);

fn has_hw_virt() -> bool {
    std::fs::read_to_string("/proc/cpuinfo").map(|c| c.contains(" vmx") || c.contains(" svm")).unwrap_or(false)
}

/// libkrunfw from the pinned PyPI wheel, installed once into a shared cache.
fn krunfw() -> Option<PathBuf> {
    static LIB: OnceLock<Option<PathBuf>> = OnceLock::new();
    LIB.get_or_init(|| {
        let home = Path::new(env!("CARGO_TARGET_TMPDIR")).join("krunfw-home");
        match alcove_hostprobe::install_libkrunfw(&home, &mut |_| {}) {
            Ok(p) => Some(p),
            Err(e) => panic!("libkrunfw could not be installed (PyPI wheel microsandbox==0.7.11): {e}"),
        }
    })
    .clone()
}

fn rootfs() -> PathBuf {
    process::default_rootfs()
}

struct Run {
    _dir: tempfile::TempDir,
    db: PathBuf,
    socket: PathBuf,
    child: std::process::Child,
}

fn start(name: &str) -> Run {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("run/k.sock");
    let cfg = serde_json::json!({
        "name": name,
        "home": dir.path().join("home"),
        "backend": "krun",
        "socket_path": socket,
        "krun": { "libkrunfw": krunfw() },
        "guest": { "rootfs": rootfs(), "memory_mib": 256, "cpus": 1 },
        "policy": { "metrics_interval": 0 }
    });
    let child = process::spawn_sandbox(dir.path(), &cfg);
    let db = dir.path().join("home/alcove.db");
    Run { _dir: dir, db, socket, child }
}

impl Run {
    fn wait_within(&mut self, bound: Duration) {
        process::wait_exit(&mut self.child, bound);
    }

    fn final_run(&self, name: &str) -> alcove::store::RunRecord {
        let store = Store::open(&self.db).expect("db");
        assert_eq!(store.sandbox(name).expect("query").expect("row").status, SandboxStatus::Stopped);
        assert!(!self.socket.exists(), "agent.sock left behind");
        let run = store.latest_run(name).expect("query").expect("run");
        assert_eq!(run.status, RunStatus::Terminated);
        run
    }
}

#[test]
fn a_guest_that_cannot_boot_is_finalised_as_failed() {
    if has_hw_virt() {
        println!("skipped: this host has vmx/svm, so the guest boots; see crates/krun/tests/boot.rs");
        return;
    }
    let mut run = start("krun-noboot");
    run.wait_within(BOUND);
    let rec = run.final_run("krun-noboot");
    assert_eq!(rec.reason, Some(TerminationReason::Failed), "{rec:?}");
    assert!(rec.exit_code.is_some_and(|c| c != 0), "{rec:?}");
}

#[test]
fn sigterm_during_boot_is_finalised_as_signal() {
    let mut run = start("krun-sigterm");
    std::thread::sleep(Duration::from_millis(1500));
    // SAFETY: signalling our own child.
    assert_eq!(unsafe { libc::kill(run.child.id() as i32, libc::SIGTERM) }, 0);
    run.wait_within(BOUND);
    let rec = run.final_run("krun-sigterm");
    assert_eq!(rec.reason, Some(TerminationReason::Signal), "{rec:?}");
}

#[test]
fn a_wrong_libkrunfw_is_refused_before_any_vm_exists() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = serde_json::json!({
        "name": "krun-badlib",
        "home": dir.path().join("home"),
        "backend": "krun",
        "socket_path": dir.path().join("run/k.sock"),
        "krun": { "libkrunfw": "/bin/ls" },
        "guest": { "rootfs": rootfs() },
    });
    let path = dir.path().join("config.json");
    std::fs::write(&path, serde_json::to_vec(&cfg).expect("json")).expect("written");
    let t = Instant::now();
    let status = Command::new(env!("CARGO_BIN_EXE_alcove"))
        .args(["sandbox", "--config"])
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("runs");
    assert!(t.elapsed() < Duration::from_secs(10));
    assert_eq!(status.code(), Some(1), "a refused configuration is alcove's failure");
    let store = Store::open(&dir.path().join("home/alcove.db")).expect("db");
    let rec = store.latest_run("krun-badlib").expect("query").expect("run");
    assert_eq!(rec.reason, Some(TerminationReason::InternalError));
    assert!(rec.detail.unwrap_or_default().contains("/bin/ls"));
    assert!(!dir.path().join("home/sandboxes/krun-badlib/boot/alcove-agent").exists(), "a VM was prepared");
}
