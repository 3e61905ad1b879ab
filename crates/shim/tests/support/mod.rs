//! A containerd of the test's own: installed from Debian when missing,
//! started with a private root, state directory and socket under a
//! temporary directory, with this build's shim first on its `PATH` and the
//! sandboxes' alcove home and runtime directory beside them. Dropping it
//! stops containerd (by its pid) and unmounts what it left.

pub mod oci;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

/// The shim binary under test.
pub fn shim_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_containerd-shim-alcove-v2"))
}

/// Fails loudly when not root: containerd and jail sandboxes need it.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "the containerd tests must run as root");
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH").map(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file())).unwrap_or(false)
}

/// Installs Debian's containerd (which brings `ctr`) when missing.
pub fn ensure_containerd() {
    if on_path("containerd") && on_path("ctr") {
        return;
    }
    let update = Command::new("apt-get").args(["update", "-qq"]).status().expect("run apt-get update");
    assert!(update.success(), "apt-get update failed");
    let install = Command::new("apt-get")
        .args(["install", "-y", "-qq", "containerd"])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .expect("run apt-get install");
    assert!(install.success(), "apt-get install containerd failed");
}

/// Builds the `alcove` executable the shim's sandboxes run (beside the
/// shim, where the embedding API looks for it).
pub fn ensure_alcove_binary() {
    let cargo = option_env!("CARGO").unwrap_or("cargo");
    let status = Command::new(cargo)
        .args(["build", "-q", "-p", "alcove", "--bin", "alcove"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .expect("run cargo build");
    assert!(status.success(), "building the alcove binary failed");
    let beside = shim_binary().with_file_name("alcove");
    assert!(beside.is_file(), "{} was not built", beside.display());
}

/// A running private containerd.
pub struct Containerd {
    pub dir: PathBuf,
    pub socket: PathBuf,
    child: Child,
}

impl Containerd {
    /// Starts containerd in `dir` and returns once it serves.
    pub fn start(dir: &Path) -> Containerd {
        let socket = dir.join("c.sock");
        let shim_dir = shim_binary().parent().expect("shim directory").to_path_buf();
        let path = format!("{}:{}", shim_dir.display(), std::env::var("PATH").unwrap_or_default());
        // An empty config: no system configuration is read.
        std::fs::write(dir.join("config.toml"), "version = 2\n").expect("write config");
        let log = std::fs::File::create(dir.join("containerd.log")).expect("log file");
        let mut child = Command::new("containerd")
            .arg("--config")
            .arg(dir.join("config.toml"))
            .arg("--root")
            .arg(dir.join("root"))
            .arg("--state")
            .arg(dir.join("state"))
            .arg("--address")
            .arg(&socket)
            // containerd looks for shims in its working directory first.
            .current_dir(dir)
            .env("PATH", path)
            .env("ALCOVE_HOME", dir.join("alcove"))
            .env("ALCOVE_RUNTIME_DIR", dir.join("run"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start containerd");
        // Ready when it says so; its log goes on into the file.
        let stderr = child.stderr.take().expect("stderr");
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut log = log;
            let mut ready = Some(ready_tx);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = writeln!(log, "{line}");
                if line.contains("containerd successfully booted") {
                    if let Some(tx) = ready.take() {
                        let _ = tx.send(());
                    }
                }
            }
        });
        let booted = ready_rx.recv_timeout(std::time::Duration::from_secs(60));
        let containerd = Containerd { dir: dir.to_path_buf(), socket, child };
        assert!(booted.is_ok(), "containerd did not boot: {}", containerd.log());
        containerd
    }

    /// Runs `ctr` against this containerd.
    pub fn ctr(&self, args: &[&str]) -> Output {
        Command::new("ctr")
            .arg("--address")
            .arg(&self.socket)
            .args(args)
            // Not containerd's directory: ctr looks for nothing there, but a
            // shim named like ours must never be found beside it either.
            .current_dir("/")
            .stdin(Stdio::null())
            .output()
            .expect("run ctr")
    }

    /// Starts `ctr` against this containerd with its stdout piped.
    pub fn spawn_ctr(&self, args: &[&str]) -> Child {
        Command::new("ctr")
            .arg("--address")
            .arg(&self.socket)
            .args(args)
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start ctr")
    }

    /// Runs the `alcove` CLI on the sandboxes' home.
    pub fn alcove(&self, args: &[&str]) -> Output {
        Command::new(shim_binary().with_file_name("alcove"))
            .args(args)
            .env("ALCOVE_HOME", self.dir.join("alcove"))
            .env("ALCOVE_RUNTIME_DIR", self.dir.join("run"))
            .output()
            .expect("run alcove")
    }

    /// containerd's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default()
    }

    /// Pids of the processes running this build's shim.
    pub fn shim_processes() -> Vec<u32> {
        let shim = shim_binary();
        let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
        entries
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|exe| exe == shim))
            .collect()
    }

    /// Mount points at or under `dir`.
    pub fn mounts_under(dir: &Path) -> Vec<String> {
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let prefix = dir.display().to_string();
        mounts
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|m| m.starts_with(&prefix))
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the containerd this test started.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
        // Snapshots containerd left mounted (only after a failure).
        let mut mounts = Containerd::mounts_under(&self.dir);
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in mounts {
            if let Ok(c) = std::ffi::CString::new(m) {
                // SAFETY: a NUL-terminated path.
                unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
            }
        }
    }
}
