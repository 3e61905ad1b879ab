//! Real microVM launches with the real libkrunfw.
//!
//! A libkrun VM ends its process with `_exit`, so every boot runs in a child
//! process: the test re-executes this test binary to run one of the
//! `child_*` functions (ignored in normal runs), with a timeout, and checks
//! what the child printed and how it exited.
//!
//! - On every host: `boot_attempt_reports_through_the_exit_observer` and
//!   `force_stop_ends_the_vm_through_the_exit_observer`. On a kvm_pvm host
//!   (no vmx/svm) the guest kernel dies with `KVM_EXIT_INTERNAL_ERROR` after
//!   ~13 s of emulation; the exit observer must see that failure.
//! - On hosts with vmx/svm only (they print "skipped: no vmx/svm"
//!   elsewhere): the agent reaches `Ready` over the `agent` console port,
//!   runs a command, and its exit code arrives through the virtio-fs ioctl;
//!   the same from a disk-image root; and guest root, after remounting a
//!   read-only share read-write, still cannot write it or the rootfs share
//!   (the VMM's read-only backend refuses). They use the static agent this
//!   build embeds (`alcove_agent_bin::agent_path`).
//!
//! libkrunfw is installed once per target dir by `install_libkrunfw`; when
//! pip cannot fetch it the tests print why and skip.

use alcove_backend::{ExitObserver, GuestBackend, GuestSpec, MountSpec};
use alcove_krun::{KrunBackend, KrunConfig, KrunRoot};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const ENV_DIR: &str = "ALCOVE_KRUN_TEST_DIR";
const ENV_KRUNFW: &str = "ALCOVE_KRUN_TEST_KRUNFW";
const ENV_AGENT: &str = "ALCOVE_KRUN_TEST_AGENT";
const TIMEOUT: Duration = Duration::from_secs(60);

fn has_hw_virt() -> bool {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let flags = alcove_hostprobe::parse::cpu_flags(&cpuinfo);
    flags.iter().any(|f| f == "vmx" || f == "svm")
}

/// The real libkrunfw, installed under the target dir; `None` (with a
/// printed reason) when pip cannot fetch it.
fn real_krunfw() -> Option<PathBuf> {
    static INSTALL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = INSTALL.lock().unwrap_or_else(|p| p.into_inner());
    let home = Path::new(env!("CARGO_TARGET_TMPDIR")).join("alcove-home");
    match alcove_hostprobe::install_libkrunfw(&home, &mut |m| println!("libkrunfw: {m}")) {
        Ok(p) => Some(p),
        Err(alcove_hostprobe::KrunfwError::Install(why)) => {
            println!("skipped: pip could not fetch libkrunfw: {why}");
            None
        }
        Err(e) => panic!("libkrunfw install failed: {e}"),
    }
}

/// The static agent this build embeds (crates/agent-bin), installed on
/// first use.
fn find_agent() -> PathBuf {
    alcove_agent_bin::agent_path().expect("the embedded static agent installs")
}

struct ChildRun {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    elapsed: Duration,
}

/// Runs `child_<mode>` of this binary in a child process.
fn run_child(mode: &str, dir: &Path, krunfw: &Path, agent: Option<&Path>) -> ChildRun {
    let exe = std::env::current_exe().expect("current exe");
    let out = dir.join("child.out");
    let err = dir.join("child.err");
    let mut cmd = Command::new(exe);
    cmd.args(["--ignored", "--exact", &format!("child_{mode}"), "--nocapture", "--test-threads=1"])
        .env(ENV_DIR, dir)
        .env(ENV_KRUNFW, krunfw)
        .stdin(Stdio::null())
        .stdout(fs::File::create(&out).expect("out"))
        .stderr(fs::File::create(&err).expect("err"));
    if let Some(a) = agent {
        cmd.env(ENV_AGENT, a);
    }
    let start = Instant::now();
    let mut child = cmd.spawn().expect("spawn child");
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break Some(st);
        }
        if start.elapsed() > TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let run = ChildRun {
        code: status.and_then(|s| s.code()),
        stdout: fs::read_to_string(&out).unwrap_or_default(),
        stderr: fs::read_to_string(&err).unwrap_or_default(),
        elapsed: start.elapsed(),
    };
    println!(
        "child_{mode}: exit {:?} after {:.1} s\n--- stdout ---\n{}\n--- stderr (tail) ---\n{}",
        run.code,
        run.elapsed.as_secs_f64(),
        run.stdout,
        tail(&run.stderr, 30)
    );
    assert!(status.is_some(), "child_{mode} did not finish within {TIMEOUT:?}");
    run
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The `OBSERVER code=N ...` line.
fn observer_line(stdout: &str) -> &str {
    let lines: Vec<&str> = stdout.lines().filter(|l| l.starts_with("OBSERVER ")).collect();
    assert_eq!(lines.len(), 1, "the exit observer must be called exactly once:\n{stdout}");
    lines[0]
}

fn tiny_rootfs(dir: &Path) -> PathBuf {
    let root = dir.join("rootfs");
    fs::create_dir_all(root.join("etc")).expect("rootfs");
    fs::write(root.join("etc/hostname"), "tiny\n").expect("hostname");
    root
}

#[test]
fn boot_attempt_reports_through_the_exit_observer() {
    let Some(krunfw) = real_krunfw() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    tiny_rootfs(dir.path());
    let run = run_child("boot_attempt", dir.path(), &krunfw, None);
    assert!(run.stdout.contains("LAUNCHED"), "launch failed");
    let line = observer_line(&run.stdout);
    let guest_log = dir.path().join("sandbox/logs/guest.log");
    assert!(guest_log.exists(), "the guest console output file was not created");
    if has_hw_virt() {
        // The placeholder init cannot run: the guest stops without a report.
        assert!(!line.contains("code=0 "), "{line}");
        assert!(line.contains("before the guest reported") || line.contains("without the guest reporting"), "{line}");
    } else {
        // kvm_pvm: the libkrunfw kernel dies in early boot.
        assert!(line.starts_with("OBSERVER code=1 "), "{line}");
        assert!(line.contains("before the guest reported an exit code"), "{line}");
        assert!(
            run.stderr.contains("KVM_EXIT_INTERNAL_ERROR"),
            "libkrun did not log the internal error:\n{}",
            tail(&run.stderr, 30)
        );
        assert_eq!(run.code, Some(1), "libkrun _exits with the VMM's code");
    }
    assert!(!run.stdout.contains("RUNNER RETURNED"));
}

#[test]
fn force_stop_ends_the_vm_through_the_exit_observer() {
    let Some(krunfw) = real_krunfw() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    tiny_rootfs(dir.path());
    let run = run_child("force_stop", dir.path(), &krunfw, None);
    assert!(run.stdout.contains("FORCE_STOP"), "force_stop was not called");
    let line = observer_line(&run.stdout);
    assert!(line.starts_with("OBSERVER code=0 "), "{line}");
    assert!(line.contains("host stopped the microVM"), "{line}");
    assert_eq!(run.code, Some(0));
    assert!(run.elapsed < Duration::from_secs(10), "force_stop took {:?}", run.elapsed);
}

/// What a test that boots a microVM needs: a host with vmx/svm, the real
/// libkrunfw and the static agent. `None` (after saying why) elsewhere.
fn booting_host() -> Option<(PathBuf, PathBuf)> {
    if !has_hw_virt() {
        println!("skipped: no vmx/svm in /proc/cpuinfo: microVMs cannot boot on this host");
        return None;
    }
    let krunfw = real_krunfw()?;
    Some((krunfw, find_agent()))
}

#[test]
fn agent_ready_exec_and_exit_code_over_the_console_port() {
    let Some((krunfw, agent)) = booting_host() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let run = run_child("serve", dir.path(), &krunfw, Some(&agent));
    assert!(run.stdout.contains("READY protocol_version=1"), "no Ready from the agent");
    assert!(run.stdout.contains("EXEC code=Some(3) out=\"hello-from-vm\\n\""), "exec failed");
    let line = observer_line(&run.stdout);
    assert!(line.starts_with("OBSERVER code=0 ") && line.ends_with("detail=None"), "{line}");
}

#[test]
fn agent_boots_from_a_disk_image_root() {
    let Some((krunfw, agent)) = booting_host() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let content = dir.path().join("disk-content");
    fs::create_dir_all(&content).expect("content");
    fs::write(content.join("marker"), "disk-root").expect("marker");
    let st = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(&content)
        .arg(dir.path().join("root.img"))
        .arg("32M")
        .status()
        .expect("mkfs.ext4 (e2fsprogs) is needed for the disk-root test");
    assert!(st.success(), "mkfs.ext4 failed");
    let run = run_child("serve_disk", dir.path(), &krunfw, Some(&agent));
    assert!(run.stdout.contains("READY protocol_version=1"), "no Ready from the agent");
    assert!(run.stdout.contains("STAT size=9"), "the disk root's marker is not visible");
    let line = observer_line(&run.stdout);
    assert!(line.starts_with("OBSERVER code=0 ") && line.ends_with("detail=None"), "{line}");
}

/// Left in the host's `/` (the rootfs of the `serve*` children) only if the
/// VMM let the guest write its rootfs share.
const ROOTFS_PROBE: &str = "/alcove-rofs-probe";

/// What the guest tries as root: remount the read-only mount and the rootfs
/// share read-write, then write to them. Each attempt prints its outcome.
const WRITE_ATTEMPTS: &str = "\
mount -o remount,rw /ro && echo RO_REMOUNTED_RW
if echo changed > /ro/keep 2>/dev/null; then echo RO_OVERWRITE_DONE; else echo RO_OVERWRITE_REFUSED; fi
if echo new > /ro/new 2>/dev/null; then echo RO_CREATE_DONE; else echo RO_CREATE_REFUSED; fi
if rm /ro/keep 2>/dev/null; then echo RO_RM_DONE; else echo RO_RM_REFUSED; fi
mkdir -p /tmp/alcove-lower
if mount -t virtiofs rootfs /tmp/alcove-lower; then
  mount -o remount,rw /tmp/alcove-lower && echo ROOT_REMOUNTED_RW
  if touch /tmp/alcove-lower/alcove-rofs-probe 2>/dev/null; then echo ROOT_WRITE_DONE; else echo ROOT_WRITE_REFUSED; fi
else
  echo ROOT_MOUNT_FAILED
fi
exit 0
";

#[test]
fn guest_root_cannot_write_read_only_shares() {
    let Some((krunfw, agent)) = booting_host() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let share = dir.path().join("ro-share");
    fs::create_dir_all(&share).expect("share");
    fs::write(share.join("keep"), "original").expect("keep");
    assert!(!Path::new(ROOTFS_PROBE).exists(), "{ROOTFS_PROBE} exists before the test; remove it");
    let run = run_child("serve_ro", dir.path(), &krunfw, Some(&agent));
    let probe_written = Path::new(ROOTFS_PROBE).exists();
    if probe_written {
        let _ = fs::remove_file(ROOTFS_PROBE);
    }
    assert!(run.stdout.contains("READY protocol_version=1"), "no Ready from the agent");
    assert!(run.stdout.contains("EXEC code=Some(0)"), "the write attempts did not run");
    // Guest root got past its own read-only mount ...
    assert!(run.stdout.contains("RO_REMOUNTED_RW"), "the guest could not remount /ro read-write");
    assert!(!run.stdout.contains("ROOT_MOUNT_FAILED"), "the guest could not mount the rootfs share to test it");
    // ... and the VMM still refused every write.
    for refused in ["RO_OVERWRITE_REFUSED", "RO_CREATE_REFUSED", "RO_RM_REFUSED", "ROOT_WRITE_REFUSED"] {
        assert!(run.stdout.contains(refused), "{refused} missing: the guest wrote a read-only share");
    }
    assert!(!probe_written, "the guest created {ROOTFS_PROBE} through the rootfs share");
    let mut names: Vec<_> = fs::read_dir(&share).expect("ls").map(|e| e.expect("e").file_name()).collect();
    names.sort();
    assert_eq!(names, vec![std::ffi::OsString::from("keep")], "the read-only share changed");
    assert_eq!(fs::read(share.join("keep")).expect("keep"), b"original");
    let line = observer_line(&run.stdout);
    assert!(line.starts_with("OBSERVER code=0 ") && line.ends_with("detail=None"), "{line}");
}

// ---- children -------------------------------------------------------------

struct StderrLog;

impl log::Log for StderrLog {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= log::Level::Info
    }
    fn log(&self, r: &log::Record) {
        if self.enabled(r.metadata()) {
            eprintln!("[{} {}] {}", r.level(), r.target(), r.args());
        }
    }
    fn flush(&self) {}
}

static LOGGER: StderrLog = StderrLog;

fn child_env(name: &str) -> PathBuf {
    PathBuf::from(std::env::var_os(name).unwrap_or_else(|| panic!("{name} is set by the parent test")))
}

fn child_main(mode: &str) {
    let _ = log::set_logger(&LOGGER).map(|()| log::set_max_level(log::LevelFilter::Info));
    let dir = child_env(ENV_DIR);
    let krunfw = child_env(ENV_KRUNFW);
    let serving = mode.starts_with("serve");
    let agent = if serving {
        child_env(ENV_AGENT)
    } else {
        // Never executed: without vmx/svm the kernel dies before init, and
        // with them a placeholder init is what the test expects to fail.
        std::env::current_exe().expect("exe")
    };
    let (rootfs, root) = match mode {
        "serve" | "serve_ro" => (Some(PathBuf::from("/")), KrunRoot::Directory { path: None }),
        "serve_disk" => (
            None,
            KrunRoot::Disk { path: dir.join("root.img"), format: Some("raw".into()), fstype: Some("ext4".into()) },
        ),
        _ => (Some(dir.join("rootfs")), KrunRoot::Directory { path: None }),
    };
    let spec = GuestSpec {
        name: "boot-test".into(),
        sandbox_dir: dir.join("sandbox"),
        guest_log: dir.join("sandbox/logs/guest.log"),
        rootfs,
        agent_binary: Some(agent),
        cpus: Some(1),
        memory_mib: Some(256),
        mounts: if mode == "serve_ro" {
            vec![MountSpec { host: dir.join("ro-share"), guest: "/ro".into(), readonly: true }]
        } else {
            Vec::new()
        },
        ..GuestSpec::default()
    };
    let config = KrunConfig { libkrunfw: Some(krunfw), root, volumes: Vec::new() };
    let launched = Box::new(KrunBackend::new(config)).launch(&spec).expect("launch");
    println!("LAUNCHED");
    let start = Instant::now();
    let channel = launched.agent_channel;
    let mut _keep = None;
    match mode {
        "force_stop" => {
            let control = launched.control.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(500));
                println!("FORCE_STOP");
                control.force_stop();
            });
            _keep = Some(channel);
        }
        "serve" | "serve_disk" | "serve_ro" => {
            let request = match mode {
                "serve_disk" => Request::StatMarker,
                "serve_ro" => Request::Exec(WRITE_ATTEMPTS),
                _ => Request::Exec("echo hello-from-vm; exit 3"),
            };
            std::thread::spawn(move || drive_agent(channel, request));
        }
        _ => _keep = Some(channel),
    }
    launched.runner.run(ExitObserver::new(move |e| {
        println!(
            "OBSERVER code={} after_ms={} detail={:?}",
            e.code.unwrap_or(-1),
            start.elapsed().as_millis(),
            e.detail
        );
        let _ = std::io::stdout().flush();
    }));
    println!("RUNNER RETURNED");
    let _ = std::io::stdout().flush();
    std::process::exit(3);
}

/// The one request a serving child sends.
enum Request {
    /// `/bin/sh -c SCRIPT`.
    Exec(&'static str),
    /// Stat `/marker`.
    StatMarker,
}

/// Speaks the protocol to the agent: Ready, one request, Shutdown.
fn drive_agent(mut sock: std::os::unix::net::UnixStream, request: Request) {
    use alcove_protocol::frame::{Flags, Frame};
    use alcove_protocol::message::{ExecRequest, FsReply, FsRequest, Message};
    let next = |sock: &mut std::os::unix::net::UnixStream| -> Frame {
        loop {
            let f = Frame::read_from(sock).expect("read").expect("agent closed the channel");
            let m = f.decode_body().expect("decode");
            if !matches!(m, Message::Heartbeat { .. }) {
                return f;
            }
        }
    };
    let ready = alcove_protocol::handshake::check_ready(&next(&mut sock)).expect("Ready first");
    println!("READY protocol_version={}", ready.protocol_version);
    let request = match request {
        Request::StatMarker => Message::FsRequest(FsRequest::Stat { path: "/marker".into() }),
        Request::Exec(script) => Message::ExecRequest(ExecRequest {
            argv: vec!["/bin/sh".into(), "-c".into(), script.into()],
            ..ExecRequest::default()
        }),
    };
    Frame::message(1, Flags::SESSION_START, &request).expect("encode").write_to(&mut sock).expect("send");
    let mut out = Vec::new();
    loop {
        let f = next(&mut sock);
        match f.decode_body().expect("decode") {
            Message::ExecStdout { data } => out.extend_from_slice(&data),
            Message::ExecExited(st) => {
                println!("EXEC code={:?} out={:?}", st.code, String::from_utf8_lossy(&out));
                break;
            }
            Message::FsResponse(Ok(FsReply::Stat(st))) => {
                println!("STAT size={}", st.size);
                break;
            }
            Message::ExecFailed(e) => panic!("exec failed: {e:?}"),
            Message::FsResponse(Err(e)) => panic!("stat failed: {e:?}"),
            _ => {}
        }
    }
    let _ = std::io::stdout().flush();
    Frame::message(0, Flags::SHUTDOWN, &Message::Shutdown { grace_ms: 1000 })
        .expect("encode")
        .write_to(&mut sock)
        .expect("send shutdown");
    // Keep the channel open until the VM ends the process.
    loop {
        if Frame::read_from(&mut sock).ok().flatten().is_none() {
            std::thread::park();
        }
    }
}

#[test]
#[ignore = "runs as a subprocess of boot_attempt_reports_through_the_exit_observer"]
fn child_boot_attempt() {
    child_main("boot_attempt");
}

#[test]
#[ignore = "runs as a subprocess of force_stop_ends_the_vm_through_the_exit_observer"]
fn child_force_stop() {
    child_main("force_stop");
}

#[test]
#[ignore = "runs as a subprocess of agent_ready_exec_and_exit_code_over_the_console_port"]
fn child_serve() {
    child_main("serve");
}

#[test]
#[ignore = "runs as a subprocess of agent_boots_from_a_disk_image_root"]
fn child_serve_disk() {
    child_main("serve_disk");
}

#[test]
#[ignore = "runs as a subprocess of guest_root_cannot_write_read_only_shares"]
fn child_serve_ro() {
    child_main("serve_ro");
}
