//! A task's resource usage in containerd's format (cgroups v1 `Metrics`,
//! what `ctr task metrics` and the CRI's stats decode), read from the
//! files of the sandbox's jail cgroups.
//!
//! Invariants:
//! - Only the jail's own cgroup directories are read (v1: one per
//!   hierarchy; v2: one), so the figures are the sandbox's and nothing
//!   else's.
//! - A file that is missing or unreadable leaves its figure at zero (a
//!   hierarchy without that controller); nothing is made up.
//! - A limit of `max` (none) is reported as 0, as containerd reports "no
//!   limit".

use containerd_shim::protos::cgroups::metrics::{CPUStat, CPUUsage, MemoryEntry, MemoryStat, Metrics, PidsStat};
use std::path::{Path, PathBuf};

fn number(dir: &Path, file: &str) -> Option<u64> {
    let text = std::fs::read_to_string(dir.join(file)).ok()?;
    match text.trim() {
        "max" => Some(0),
        n => n.parse().ok(),
    }
}

fn keyed(dir: &Path, file: &str, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(dir.join(file)).ok()?;
    text.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
}

/// The metrics of the cgroup directories `dirs` (v1 or v2).
pub fn read(dirs: &[PathBuf]) -> Metrics {
    let mut memory = MemoryEntry::new();
    let mut cpu = CPUUsage::new();
    let mut pids = PidsStat::new();
    for dir in dirs {
        // cgroup v1
        if let Some(u) = number(dir, "memory.usage_in_bytes") {
            memory.usage = u;
            memory.limit = number(dir, "memory.limit_in_bytes").unwrap_or(0);
            memory.max = number(dir, "memory.max_usage_in_bytes").unwrap_or(0);
            memory.failcnt = number(dir, "memory.failcnt").unwrap_or(0);
        }
        if let Some(t) = number(dir, "cpuacct.usage") {
            cpu.total = t;
            cpu.user = number(dir, "cpuacct.usage_user").unwrap_or(0);
            cpu.kernel = number(dir, "cpuacct.usage_sys").unwrap_or(0);
        }
        // cgroup v2
        if let Some(u) = number(dir, "memory.current") {
            memory.usage = u;
            memory.limit = number(dir, "memory.max").unwrap_or(0);
            memory.max = number(dir, "memory.peak").unwrap_or(0);
        }
        if let Some(usec) = keyed(dir, "cpu.stat", "usage_usec") {
            cpu.total = usec * 1000;
            cpu.user = keyed(dir, "cpu.stat", "user_usec").unwrap_or(0) * 1000;
            cpu.kernel = keyed(dir, "cpu.stat", "system_usec").unwrap_or(0) * 1000;
        }
        // both
        if let Some(c) = number(dir, "pids.current") {
            pids.current = c;
            pids.limit = number(dir, "pids.max").unwrap_or(0);
        }
    }
    let mut metrics = Metrics::new();
    metrics.memory = Some(MemoryStat { usage: Some(memory).into(), ..Default::default() }).into();
    metrics.cpu = Some(CPUStat { usage: Some(cpu).into(), ..Default::default() }).into();
    metrics.pids = Some(pids).into();
    metrics
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir_with(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("temp dir");
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).expect("write");
        }
        dir
    }

    #[test]
    fn v1_hierarchies_are_read_one_controller_each() {
        let memory = dir_with(&[
            ("memory.usage_in_bytes", "1048576\n"),
            ("memory.limit_in_bytes", "67108864\n"),
            ("memory.max_usage_in_bytes", "2097152\n"),
            ("memory.failcnt", "3\n"),
        ]);
        let cpuacct = dir_with(&[("cpuacct.usage", "5000\n"), ("cpuacct.usage_user", "3000\n")]);
        let pids = dir_with(&[("pids.current", "2\n"), ("pids.max", "max\n")]);
        let m = read(&[memory.path().into(), cpuacct.path().into(), pids.path().into()]);
        let mem = m.memory.usage.as_ref().expect("memory");
        assert_eq!((mem.usage, mem.limit, mem.max, mem.failcnt), (1048576, 67108864, 2097152, 3));
        let cpu = m.cpu.usage.as_ref().expect("cpu");
        assert_eq!((cpu.total, cpu.user, cpu.kernel), (5000, 3000, 0));
        assert_eq!((m.pids.current, m.pids.limit), (2, 0));
    }

    #[test]
    fn a_v2_cgroup_is_read_from_one_directory() {
        let dir = dir_with(&[
            ("memory.current", "4096\n"),
            ("memory.max", "max\n"),
            ("cpu.stat", "usage_usec 7\nuser_usec 5\nsystem_usec 2\n"),
            ("pids.current", "4\n"),
            ("pids.max", "64\n"),
        ]);
        let m = read(&[dir.path().into()]);
        let mem = m.memory.usage.as_ref().expect("memory");
        assert_eq!((mem.usage, mem.limit), (4096, 0));
        let cpu = m.cpu.usage.as_ref().expect("cpu");
        assert_eq!((cpu.total, cpu.user, cpu.kernel), (7000, 5000, 2000));
        assert_eq!((m.pids.current, m.pids.limit), (4, 64));
    }

    #[test]
    fn nothing_readable_is_all_zero() {
        let m = read(&[PathBuf::from("/nonexistent/cgroup")]);
        assert_eq!(m.pids.current, 0);
        assert_eq!(m.memory.usage.as_ref().expect("memory").usage, 0);
    }
}
