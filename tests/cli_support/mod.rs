//! Shared helpers of the CLI tests: one private `$ALCOVE_HOME` and runtime
//! directory per test (short paths under /tmp), the `alcove` binary run with
//! a hard timeout, JSON views of `ps` and `inspect`, and cleanup of every
//! sandbox a test leaves behind.
#![allow(dead_code)]

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The alcove binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_alcove")
}

/// Fails loudly when not root: jail sandboxes need it (CI runs as root).
pub fn require_root() {
    alcove_testkit::require_root("the CLI tests start jail sandboxes");
}

/// A rootfs directory built once and shared by the tests that pass
/// `--rootfs PATH` (saves building the default rootfs in every home).
pub fn shared_rootfs() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        let store = alcove_rootfs::RootfsStore::new("/tmp/alcv-test-rootfs");
        store.ensure_default(&mut |_| {}).expect("build the shared default rootfs").root
    })
}

/// What a finished `alcove` invocation did.
#[derive(Debug)]
pub struct Out {
    /// Exit code (-1 when killed by a signal).
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Out {
    /// Asserts exit 125 with exactly one `alcove: …` line on stderr that
    /// contains `needle`, and nothing on stdout.
    pub fn assert_error(&self, needle: &str) {
        assert_eq!(self.code, 125, "expected exit 125: {self:?}");
        let lines: Vec<&str> = self.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "expected one error line: {self:?}");
        assert!(lines[0].starts_with("alcove: "), "error line without prefix: {self:?}");
        assert!(lines[0].contains(needle), "error line lacks {needle:?}: {self:?}");
        assert!(!self.stderr.contains("panicked") && !self.stderr.contains("backtrace"), "{self:?}");
    }
}

/// One private alcove installation.
pub struct Alcove {
    _dir: tempfile::TempDir,
    /// `$ALCOVE_HOME`.
    pub home: PathBuf,
    /// `$ALCOVE_RUNTIME_DIR`.
    pub runtime: PathBuf,
    /// Extra environment of every command (see [`Alcove::with_env`]).
    env: Vec<(String, String)>,
}

impl Alcove {
    /// A fresh home and runtime directory.
    pub fn new() -> Alcove {
        require_root();
        let dir = tempfile::Builder::new().prefix("alcv-").tempdir_in("/tmp").expect("temp dir");
        let home = dir.path().join("h");
        let runtime = dir.path().join("r");
        Alcove { _dir: dir, home, runtime, env: Vec::new() }
    }

    /// The same installation with `key=value` in every command's
    /// environment (the sandbox processes it starts inherit it).
    pub fn with_env(mut self, key: &str, value: &str) -> Alcove {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// `alcove ARGS` with this installation's environment.
    pub fn cmd<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> Command {
        let mut c = Command::new(bin());
        c.args(args)
            .env("ALCOVE_HOME", &self.home)
            .env("ALCOVE_RUNTIME_DIR", &self.runtime)
            .env("NO_COLOR", "1")
            .env_remove("ALCOVE_LOG");
        for (k, v) in &self.env {
            c.env(k, v);
        }
        c
    }

    /// Runs `alcove ARGS` with no stdin and a 60 s limit.
    pub fn run<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> Out {
        self.run_with(self.cmd(args), None)
    }

    /// Runs `alcove ARGS` with `input` on stdin.
    pub fn run_input<S: AsRef<std::ffi::OsStr>>(&self, args: &[S], input: &[u8]) -> Out {
        self.run_with(self.cmd(args), Some(input))
    }

    fn run_with(&self, mut cmd: Command, input: Option<&[u8]>) -> Out {
        cmd.stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn alcove");
        if let Some(data) = input {
            let mut stdin = child.stdin.take().expect("stdin");
            let data = data.to_vec();
            std::thread::spawn(move || {
                use std::io::Write;
                let _ = stdin.write_all(&data);
            });
        }
        let pid = child.id();
        let watchdog = std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(60);
            while Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
                // SAFETY: signal 0 only checks existence.
                if unsafe { libc::kill(pid as i32, 0) } != 0 {
                    return false;
                }
            }
            // SAFETY: kills the hung child we spawned.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            true
        });
        let out = child.wait_with_output().expect("wait for alcove");
        drop(watchdog);
        Out {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Runs and asserts exit 0; returns stdout.
    pub fn ok<S: AsRef<std::ffi::OsStr> + std::fmt::Debug>(&self, args: &[S]) -> String {
        let out = self.run(args);
        assert_eq!(out.code, 0, "alcove {args:?} failed: {out:?}");
        out.stdout
    }

    /// `ps -a --json`, parsed.
    pub fn ps(&self) -> Vec<Value> {
        let text = self.ok(&["ps", "-a", "--json"]);
        match serde_json::from_str(&text).expect("ps --json is JSON") {
            Value::Array(a) => a,
            other => panic!("ps --json is not an array: {other}"),
        }
    }

    /// The `ps -a --json` entry of `name`.
    pub fn ps_entry(&self, name: &str) -> Option<Value> {
        self.ps().into_iter().find(|s| s["name"] == name)
    }

    /// `inspect NAME --json`, parsed.
    pub fn inspect(&self, name: &str) -> Value {
        let text = self.ok(&["inspect", name, "--json"]);
        serde_json::from_str(&text).expect("inspect --json is JSON")
    }

    /// The sandbox status shown by `ps -a --json`.
    pub fn status(&self, name: &str) -> String {
        self.ps_entry(name).map(|e| e["status"].as_str().unwrap_or("").to_string()).unwrap_or_default()
    }

    /// Polls `ps` until `name` has `status` (panics after `timeout`).
    pub fn wait_status(&self, name: &str, status: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(e) = self.ps_entry(name) {
                if e["status"] == status {
                    return e;
                }
            }
            assert!(Instant::now() < deadline, "{name} never reached {status}: {:?}", self.ps_entry(name));
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `--rootfs PATH` of the shared rootfs.
    pub fn rootfs_arg(&self) -> String {
        shared_rootfs().display().to_string()
    }
}

impl Drop for Alcove {
    fn drop(&mut self) {
        // Leave no sandbox process behind, whatever the test did.
        let out = self.run(&["ps", "-a", "--json"]);
        if let Ok(Value::Array(list)) = serde_json::from_str::<Value>(&out.stdout) {
            let names: Vec<String> = list.iter().filter_map(|s| s["name"].as_str().map(str::to_string)).collect();
            if !names.is_empty() {
                let mut args = vec!["rm".to_string(), "-f".to_string()];
                args.extend(names);
                let _ = self.run(&args);
            }
        }
    }
}

/// Whether any process's command line contains `needle`.
pub fn any_cmdline_contains(needle: &str) -> bool {
    let Ok(rd) = std::fs::read_dir("/proc") else { return false };
    for e in rd.filter_map(Result::ok) {
        let p = e.path().join("cmdline");
        if let Ok(data) = std::fs::read(&p) {
            if String::from_utf8_lossy(&data).contains(needle) {
                return true;
            }
        }
    }
    false
}
