//! Pure parsers for the `/proc` and `/sys` text files the probe reads.
//!
//! Every function takes the file's content as a string so it can be tested on
//! samples from other hosts; none of them touches the filesystem.

/// The CPU feature flags of the first processor in `/proc/cpuinfo`.
pub fn cpu_flags(cpuinfo: &str) -> Vec<String> {
    for line in cpuinfo.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        if key.trim() == "flags" {
            return value.split_whitespace().map(str::to_string).collect();
        }
    }
    Vec::new()
}

/// Module names listed in `/proc/modules` (first column of each line).
pub fn modules(proc_modules: &str) -> Vec<String> {
    proc_modules.lines().filter_map(|l| l.split_whitespace().next()).map(str::to_string).collect()
}

/// Whether `/proc/filesystems` lists `name` (with or without `nodev`).
pub fn has_filesystem(proc_filesystems: &str, name: &str) -> bool {
    proc_filesystems.lines().any(|l| l.split_whitespace().last() == Some(name))
}

/// One line of `/proc/self/mounts`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    /// Mount point.
    pub target: String,
    /// Filesystem type.
    pub fstype: String,
    /// Comma-separated options, split.
    pub options: Vec<String>,
}

/// Parses `/proc/self/mounts`. Octal escapes (`\040`) in paths are decoded.
pub fn mounts(proc_mounts: &str) -> Vec<Mount> {
    proc_mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let _source = f.next()?;
            let target = unescape_mount_path(f.next()?);
            let fstype = f.next()?.to_string();
            let options = f.next().unwrap_or("").split(',').map(str::to_string).collect();
            Some(Mount { target, fstype, options })
        })
        .collect()
}

fn unescape_mount_path(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            let oct = &bytes[i + 1..i + 4];
            if oct.iter().all(|b| (b'0'..=b'7').contains(b)) {
                let v = oct.iter().fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'));
                if let Ok(v) = u8::try_from(v) {
                    out.push(v);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Controller names known to the kernel from `/proc/cgroups` (enabled ones).
pub fn known_controllers(proc_cgroups: &str) -> Vec<String> {
    proc_cgroups
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            match f.as_slice() {
                [name, _hier, _num, enabled] if *enabled == "1" => Some(name.to_string()),
                _ => None,
            }
        })
        .collect()
}

/// cgroup v1 controllers that are mounted, each with its mount point, from
/// the mount table and the kernel's controller list. Named hierarchies
/// (`name=systemd`) carry no controller and are skipped.
pub fn cgroup_v1_controllers(mounts: &[Mount], known: &[String]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for m in mounts.iter().filter(|m| m.fstype == "cgroup") {
        for opt in &m.options {
            if known.iter().any(|k| k == opt) && !out.iter().any(|(c, _)| c == opt) {
                out.push((opt.clone(), m.target.clone()));
            }
        }
    }
    out
}

/// The first cgroup2 mount point.
pub fn cgroup_v2_mount(mounts: &[Mount]) -> Option<String> {
    mounts.iter().find(|m| m.fstype == "cgroup2").map(|m| m.target.clone())
}

/// A `Key:` field of `/proc/self/status`, trimmed.
pub fn status_field<'a>(status: &'a str, key: &str) -> Option<&'a str> {
    status.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k == key).then(|| v.trim())
    })
}

/// `MemTotal` of `/proc/meminfo` in MiB.
pub fn mem_total_mib(meminfo: &str) -> Option<u64> {
    let v = status_field(meminfo, "MemTotal")?;
    let kib: u64 = v.trim_end_matches("kB").trim().parse().ok()?;
    Some(kib / 1024)
}

/// Paths of `libkrunfw.so.5` in the output of `ldconfig -p`.
pub fn ldconfig_krunfw(ldconfig_p: &str) -> Vec<String> {
    ldconfig_p
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            let (lhs, path) = l.split_once("=>")?;
            let name = lhs.split_whitespace().next()?;
            (name == "libkrunfw.so.5" && lhs.contains("x86-64")).then(|| path.trim().to_string())
        })
        .collect()
}

/// The `X.Y.Z` version in a file name such as `libkrunfw.so.5.6.1`.
pub fn krunfw_version_from_name(name: &str) -> Option<String> {
    let rest = name.strip_prefix("libkrunfw.so.")?;
    let parts: Vec<&str> = rest.split('.').collect();
    if parts.len() >= 2 && parts.iter().all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())) {
        Some(rest.to_string())
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CPUINFO_PVM: &str = "processor\t: 0\nvendor_id\t: GenuineIntel\n\
flags\t\t: fpu vme de pse tsc msr hypervisor lahf_lm avx512f\nbugs\t\t: spectre_v1\n\n\
processor\t: 1\nflags\t\t: fpu vme\n";
    const CPUINFO_VMX: &str = "processor\t: 0\nflags\t\t: fpu vme vmx ept smx\n";
    const CPUINFO_SVM: &str = "processor : 0\nflags : fpu svm npt\n";

    #[test]
    fn cpu_flags_reads_the_first_processor() {
        let f = cpu_flags(CPUINFO_PVM);
        assert_eq!(f.len(), 9);
        assert!(f.contains(&"hypervisor".to_string()));
        assert!(!f.contains(&"vmx".to_string()));
        assert!(cpu_flags(CPUINFO_VMX).contains(&"vmx".to_string()));
        assert!(cpu_flags(CPUINFO_SVM).contains(&"svm".to_string()));
        assert!(cpu_flags("").is_empty());
    }

    #[test]
    fn modules_lists_first_columns() {
        let m = modules("kvm_pvm 94208 0 - Live 0x0000000000000000\nkvm 1130496 1 kvm_pvm, Live 0x0\n\n");
        assert_eq!(m, vec!["kvm_pvm".to_string(), "kvm".to_string()]);
    }

    #[test]
    fn filesystems_match_whole_names() {
        let fs = "nodev\tsysfs\nnodev\toverlay\n\text4\nnodev\tcgroup2\n";
        assert!(has_filesystem(fs, "overlay"));
        assert!(has_filesystem(fs, "ext4"));
        assert!(!has_filesystem(fs, "cgroup"));
        assert!(!has_filesystem(fs, "over"));
    }

    #[test]
    fn cgroup_controllers_from_mounts() {
        let mt = mounts(
            "tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0\n\
cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0\n\
cgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,relatime,cpu,cpuacct 0 0\n\
cgroup /sys/fs/cgroup/memory cgroup rw,nosuid,memory 0 0\n\
cgroup /sys/fs/cgroup/systemd cgroup rw,relatime,name=systemd 0 0\n\
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0\n",
        );
        let known = known_controllers(
            "#subsys_name\thierarchy\tnum_cgroups\tenabled\ncpu\t1\t1\t1\ncpuacct\t2\t1\t1\n\
memory\t4\t27\t1\nhugetlb\t0\t1\t1\nrdma\t0\t1\t0\n",
        );
        assert_eq!(known, vec!["cpu", "cpuacct", "memory", "hugetlb"]);
        let v1 = cgroup_v1_controllers(&mt, &known);
        assert_eq!(
            v1,
            vec![
                ("cpu".to_string(), "/sys/fs/cgroup/cpu".to_string()),
                ("cpuacct".to_string(), "/sys/fs/cgroup/cpu,cpuacct".to_string()),
                ("memory".to_string(), "/sys/fs/cgroup/memory".to_string()),
            ]
        );
        assert_eq!(cgroup_v2_mount(&mt).as_deref(), Some("/sys/fs/cgroup/unified"));
        assert_eq!(cgroup_v2_mount(&mt[..2]), None);
    }

    #[test]
    fn mount_paths_are_unescaped() {
        let mt = mounts("x /a\\040b ext4 rw 0 0\n");
        assert_eq!(mt[0].target, "/a b");
    }

    #[test]
    fn status_and_meminfo_fields() {
        let st = "Name:\tcat\nSeccomp:\t2\nSeccomp_filters:\t1\n";
        assert_eq!(status_field(st, "Seccomp"), Some("2"));
        assert_eq!(status_field(st, "NoSuch"), None);
        assert_eq!(mem_total_mib("MemTotal:       24684084 kB\nMemFree: 1 kB\n"), Some(24105));
        assert_eq!(mem_total_mib("MemFree: 1 kB\n"), None);
    }

    #[test]
    fn ldconfig_output_is_filtered() {
        let out = "3 libs found in cache `/etc/ld.so.cache'\n\
\tlibkrunfw.so.5 (libc6,x86-64) => /usr/lib64/libkrunfw.so.5\n\
\tlibkrunfw.so.5 (libc6) => /usr/lib/i386/libkrunfw.so.5\n\
\tlibkrun.so.1 (libc6,x86-64) => /usr/lib64/libkrun.so.1\n";
        assert_eq!(ldconfig_krunfw(out), vec!["/usr/lib64/libkrunfw.so.5".to_string()]);
    }

    #[test]
    fn versions_from_file_names() {
        assert_eq!(krunfw_version_from_name("libkrunfw.so.5.6.1").as_deref(), Some("5.6.1"));
        assert_eq!(krunfw_version_from_name("libkrunfw.so.5"), None);
        assert_eq!(krunfw_version_from_name("libkrunfw.so.5.x"), None);
        assert_eq!(krunfw_version_from_name("libfoo.so.5.6.1"), None);
    }
}
