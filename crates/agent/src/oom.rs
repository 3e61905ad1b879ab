//! OOM: resetting commands' `oom_score_adj`, and best-effort detection of
//! OOM kills.
//!
//! Protection: the host may protect the agent from the OOM killer
//! (`oom_score_adj` -1000 on PID 1). A child inherits that value, which
//! would make every command unkillable too: with no memory limit the host's
//! OOM killer would pick host processes instead, and with one the cgroup's
//! OOM killer would find no victim. So whenever the agent's own value is
//! negative, every command resets its own to 0 between fork and exec
//! ([`crate::spawn`]), and a command whose reset fails is not started.
//! Raising the value needs no privilege, so the reset cannot fail for lack
//! of one.
//!
//! Detection:
//! Method: the agent reads an `oom_kill` counter when a command starts and
//! again when it ends. A command is reported as OOM-killed when it died of
//! SIGKILL and the counter grew in between. The counter is taken from, in
//! order: the agent's memory cgroup (v2 `memory.events`, v1
//! `memory.oom_control`, located through /proc/self/cgroup under
//! /sys/fs/cgroup), else the kernel-wide `oom_kill` of /proc/vmstat (exact in
//! a VM, where the kernel is the sandbox's own). The jail backend shows the
//! jail's own memory cgroup read-only at that path, so in a jail the count
//! is the jail's alone; /proc/vmstat there is only a fallback for jails
//! without a memory cgroup (rootless), where it can blame a concurrent OOM
//! kill elsewhere on the host.

use std::ffi::CString;
use std::path::{Path, PathBuf};

/// The agent's own OOM score adjustment.
pub const OWN_SCORE_ADJ: &str = "/proc/self/oom_score_adj";

/// Parses the text of an `oom_score_adj` file.
pub fn parse_score_adj(text: &str) -> Option<i32> {
    text.trim().parse().ok()
}

/// The file a new command must write `0` to (its own `oom_score_adj`, as
/// seen from the child), given the agent's own value: only a negative
/// (protected) value is reset; an unknown one (no /proc) is left alone.
pub fn reset_target_for(own_score_adj: Option<i32>) -> Option<CString> {
    match own_score_adj {
        Some(v) if v < 0 => Some(CString::new(OWN_SCORE_ADJ).expect("no NUL")),
        _ => None,
    }
}

/// [`reset_target_for`] the agent's current value.
pub fn child_reset_target() -> Option<CString> {
    reset_target_for(std::fs::read_to_string(OWN_SCORE_ADJ).ok().as_deref().and_then(parse_score_adj))
}

/// Reads `oom_kill N` from the text of a cgroup or vmstat file.
pub fn parse_oom_kill(text: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let mut parts = l.split_whitespace();
        (parts.next() == Some("oom_kill")).then(|| parts.next()?.parse().ok())?
    })
}

/// Candidate counter files for the cgroup memberships in `proc_cgroup`
/// (the text of /proc/self/cgroup), rooted at `cgroup_root`.
pub fn counter_files(proc_cgroup: &str, cgroup_root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for line in proc_cgroup.lines() {
        let mut f = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        let rel = path.trim_start_matches('/');
        if controllers.split(',').any(|c| c == "memory") {
            out.push(cgroup_root.join("memory").join(rel).join("memory.oom_control"));
        } else if controllers.is_empty() {
            out.push(cgroup_root.join(rel).join("memory.events"));
            out.push(cgroup_root.join("unified").join(rel).join("memory.events"));
        }
    }
    out
}

/// Finds the file to read the counter from, if any.
pub fn find_counter() -> Option<PathBuf> {
    let proc_cgroup = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    counter_files(&proc_cgroup, Path::new("/sys/fs/cgroup"))
        .into_iter()
        .chain(std::iter::once(PathBuf::from("/proc/vmstat")))
        .find(|p| std::fs::read_to_string(p).ok().as_deref().and_then(parse_oom_kill).is_some())
}

/// Reads the counter at `path`.
pub fn read_counter(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok().as_deref().and_then(parse_oom_kill)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_protected_agent_resets_its_commands() {
        assert_eq!(parse_score_adj("-1000\n"), Some(-1000));
        assert_eq!(parse_score_adj("junk"), None);
        assert_eq!(reset_target_for(Some(-1000)).as_deref(), Some(c"/proc/self/oom_score_adj"));
        assert_eq!(reset_target_for(Some(-1)).as_deref(), Some(c"/proc/self/oom_score_adj"));
        assert_eq!(reset_target_for(Some(0)), None);
        assert_eq!(reset_target_for(Some(500)), None);
        assert_eq!(reset_target_for(None), None);
    }

    #[test]
    fn counters_parse() {
        assert_eq!(parse_oom_kill("low 0\nhigh 0\nmax 3\noom 2\noom_kill 2\n"), Some(2));
        assert_eq!(parse_oom_kill("oom_kill_disable 0\nunder_oom 0\noom_kill 7\n"), Some(7));
        assert_eq!(parse_oom_kill("nr_free_pages 1\n"), None);
    }

    #[test]
    fn cgroup_paths_follow_proc_self_cgroup() {
        let text = "4:memory:/sbx/one\n3:cpu,cpuacct:/sbx/one\n0::/sbx/one\n";
        let files = counter_files(text, Path::new("/cg"));
        assert_eq!(
            files,
            vec![
                PathBuf::from("/cg/memory/sbx/one/memory.oom_control"),
                PathBuf::from("/cg/sbx/one/memory.events"),
                PathBuf::from("/cg/unified/sbx/one/memory.events"),
            ]
        );
    }
}
