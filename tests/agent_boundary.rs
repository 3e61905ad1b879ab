//! The agent's own boundary in a real jail, through the real CLI: guest
//! processes (root, like the agent) cannot ptrace it, take its channel with
//! `pidfd_getfd` or read its memory-backed /proc files, and they do not
//! inherit its protection from the OOM killer. Needs root and a C compiler
//! (`cc`; installed with apt-get when missing) for the static helper in
//! `tests/helpers/take_over_agent.c`.

mod cli_support;

use cli_support::Alcove;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

fn have_cc() -> bool {
    Command::new("cc").arg("--version").output().is_ok_and(|o| o.status.success())
}

/// The helper, built static once per test binary run.
fn take_over_helper() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        if !have_cc() {
            let update = Command::new("apt-get").args(["-qq", "update"]).status().expect("apt-get update");
            assert!(update.success(), "apt-get update failed");
            let install = Command::new("apt-get")
                .args(["-qq", "install", "-y", "gcc", "libc6-dev"])
                .env("DEBIAN_FRONTEND", "noninteractive")
                .status()
                .expect("apt-get install");
            assert!(install.success(), "cannot install a C compiler");
        }
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/helpers/take_over_agent.c");
        let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("take-over-agent");
        let built = Command::new("cc").args(["-static", "-O1", "-o"]).arg(&out).arg(&src).output().expect("cc runs");
        assert!(built.status.success(), "cc failed: {}", String::from_utf8_lossy(&built.stderr));
        out
    })
}

/// `what → errno` (0 = it worked) from the helper's output.
fn attempts(text: &str) -> HashMap<String, i32> {
    text.lines()
        .filter_map(|l| {
            let (what, code) = l.rsplit_once(' ')?;
            Some((what.to_string(), code.parse().ok()?))
        })
        .collect()
}

#[test]
fn guest_processes_cannot_ptrace_the_agent_or_take_its_channel() {
    let helper = take_over_helper();
    let a = Alcove::new();
    a.ok(&["create", "box", "--rootfs", &a.rootfs_arg()]);
    a.ok(&["cp", helper.to_str().expect("utf8"), "box:/take-over"]);
    let out = a.ok(&["exec", "box", "--", "/take-over"]);
    let got = attempts(&out);
    // The same attempts work against an ordinary process of the guest, so
    // the refusals below are the agent's own doing.
    for what in ["control_ptrace_attach", "control_pidfd_getfd", "control_environ"] {
        assert_eq!(got.get(what), Some(&0), "{what} should work on a plain process: {out}");
    }
    assert_eq!(got.get("agent_ptrace_attach"), Some(&libc::EPERM), "{out}");
    assert_eq!(got.get("agent_pidfd_getfd"), Some(&libc::EPERM), "{out}");
    assert_eq!(got.get("agent_environ"), Some(&libc::EACCES), "{out}");
    // And the agent still serves.
    assert_eq!(a.ok(&["exec", "box", "--", "echo", "still here"]), "still here\n");
    a.ok(&["rm", "-f", "box"]);
}

/// The host sets the agent's `oom_score_adj` to -1000 where it may (it
/// needs CAP_SYS_RESOURCE, which this project's machines withhold, so
/// there the agent stays at 0 and the reset itself is proven by the spawn
/// unit test): a command must never inherit a negative value.
#[test]
fn commands_never_inherit_the_agents_oom_protection() {
    let a = Alcove::new();
    a.ok(&["create", "box", "--rootfs", &a.rootfs_arg()]);
    let out = a.ok(&["exec", "box", "--", "sh", "-c", "cat /proc/1/oom_score_adj /proc/$$/oom_score_adj"]);
    let values: Vec<i32> = out.lines().map(|l| l.trim().parse().expect("a number")).collect();
    let [agent, command] = values[..] else { panic!("two values expected: {out:?}") };
    assert!(command >= 0, "the command inherited oom_score_adj {command} (agent: {agent})");
    if agent <= 0 {
        assert_eq!(command, 0, "agent {agent}");
    }
    a.ok(&["rm", "-f", "box"]);
}
