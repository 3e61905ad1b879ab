//! The embedding API (`alcove::Sandbox::builder`) through the example
//! program `examples/embed.rs`, whose code this test runs: the sandbox it
//! starts is the CLI's (listed by `alcove ps`, reachable by `alcove exec`),
//! it pauses and resumes, bad settings and names fail with one line before
//! anything starts, and
//! removing it leaves no process and no record.

mod cli_support;
#[path = "../examples/embed.rs"]
#[allow(dead_code)]
mod example;

use alcove::{Backend, EmbedError, Sandbox};
use cli_support::{require_root, shared_rootfs};
use std::process::Command;

fn alcove(home: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(cli_support::bin())
        .args(args)
        .env("ALCOVE_HOME", home)
        .env("NO_COLOR", "1")
        .output()
        .expect("run alcove")
}

fn process_alive(pid: u32) -> bool {
    // Zombies count as gone: the embedding API reaps its children.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| s.rsplit(')').next().is_some_and(|rest| !rest.trim_start().starts_with('Z')))
        .unwrap_or(false)
}

/// Kills a sandbox process a failed assertion would leave behind.
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if process_alive(self.0) {
            // SAFETY: kill(2) on the sandbox process this test started.
            unsafe { libc::kill(self.0 as i32, libc::SIGKILL) };
        }
    }
}

#[test]
fn the_example_starts_a_sandbox_the_cli_sees_and_removes_it() {
    require_root();
    let dir = tempfile::Builder::new().prefix("alcv-embed-").tempdir_in("/tmp").expect("temp dir");
    let home = dir.path().join("h");
    // The same runtime directory for this process, its sandbox processes
    // and the CLI runs below (the only test of this binary sets it).
    std::env::set_var("ALCOVE_RUNTIME_DIR", dir.path().join("r"));
    std::env::set_var("ALCOVE_BIN", cli_support::bin());
    let rootfs = shared_rootfs().to_string_lossy().to_string();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");

    let builder = Sandbox::builder("embedded").home(&home).backend(Backend::Jail).rootfs(rootfs.clone());
    // The embedding API's futures are Send: a host may spawn them.
    let (sandbox, seen) = rt
        .block_on(async { tokio::spawn(example::start_and_use(builder)).await.expect("joins") })
        .expect("the example runs");
    let _guard = KillOnDrop(sandbox.pid());
    assert_eq!(seen.kernel, "Linux");
    assert_eq!(seen.file, b"hello from the host\n");
    assert!(seen.listed);
    assert!(process_alive(sandbox.pid()), "the sandbox process runs");

    // The CLI sees it and can use it.
    let ps = alcove(&home, &["ps", "--json"]);
    let list: serde_json::Value = serde_json::from_slice(&ps.stdout).expect("ps --json");
    let entry = list.as_array().expect("array").iter().find(|e| e["name"] == "embedded").cloned().expect("listed");
    assert_eq!(entry["status"], "Running", "{entry}");
    assert_eq!(entry["pid"], sandbox.pid(), "{entry}");
    assert_eq!(entry["backend"], "jail", "{entry}");
    let exec = alcove(&home, &["exec", "embedded", "--", "cat", "/tmp/hello.txt"]);
    assert_eq!(exec.stdout, b"hello from the host\n", "{exec:?}");

    // A second handle connects by name; a second start of the name is refused.
    let again = rt.block_on(Sandbox::connect(Some(&home), "embedded")).expect("connects");
    assert_eq!(again.pid(), sandbox.pid());
    let twice = rt.block_on(Sandbox::builder("embedded").home(&home).rootfs(rootfs.clone()).start());
    assert!(matches!(twice, Err(EmbedError::AlreadyExists(_))), "{:?}", twice.err());
    let info = sandbox.info().expect("info");
    assert_eq!(info.pid, Some(sandbox.pid()));

    // Pause and resume, as the CLI's: the record follows, repeats are refused.
    rt.block_on(sandbox.pause()).expect("pauses");
    assert_eq!(sandbox.info().expect("info").status, alcove::store::SandboxStatus::Paused);
    let twice = rt.block_on(sandbox.pause()).expect_err("refused");
    assert_eq!(twice.to_string(), "the sandbox is already paused");
    rt.block_on(sandbox.resume()).expect("resumes");
    assert_eq!(sandbox.info().expect("info").status, alcove::store::SandboxStatus::Running);

    // Removal: no process, no record, and the name is unknown afterwards.
    rt.block_on(sandbox.remove()).expect("removes");
    assert!(!process_alive(sandbox.pid()), "the sandbox process is gone");
    let ps = alcove(&home, &["ps", "--all", "--json"]);
    let list: serde_json::Value = serde_json::from_slice(&ps.stdout).expect("ps --json");
    assert_eq!(list, serde_json::json!([]));
    let gone = rt.block_on(Sandbox::connect(Some(&home), "embedded"));
    assert!(matches!(gone, Err(EmbedError::NotFound(_))), "{:?}", gone.err());

    // Bad input: one line, nothing recorded.
    let bad = rt.block_on(Sandbox::builder("bad name").home(&home).start()).err().expect("refused");
    assert!(bad.to_string().contains("invalid") || bad.to_string().contains("name"), "{bad}");
    let bad = rt.block_on(Sandbox::builder("badhost").home(&home).hostname("a_b").start()).err().expect("refused");
    assert_eq!(bad.to_string(), "hostname \"a_b\" may contain only letters, digits, '-' and '.'");
    let bad = rt.block_on(Sandbox::builder("small").home(&home).memory_mib(1).start()).err().expect("refused");
    assert_eq!(bad.to_string(), "memory must be between 16 and 16777216 MiB, not 1");
    let missing = rt
        .block_on(Sandbox::builder("nofs").home(&home).backend(Backend::Jail).rootfs("/nonexistent/rootfs").start())
        .err()
        .expect("refused");
    assert_eq!(missing.to_string().lines().count(), 1, "{missing}");
    let ps = alcove(&home, &["ps", "--all", "--json"]);
    let list: serde_json::Value = serde_json::from_slice(&ps.stdout).expect("ps --json");
    assert_eq!(list, serde_json::json!([]), "nothing recorded for refused starts");
}
