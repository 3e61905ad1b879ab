//! What this host offers alcove, and which backend follows from it.
//!
//! [`probe`] reads `/dev/kvm`, `/proc` and `/sys` and returns a
//! [`HostReport`]; [`HostReport::auto_backend`] turns it into the choice of
//! `--backend auto` with a one-line reason; [`HostReport::render_human`] is
//! `alcove doctor`'s text. [`krunfw`] finds, checks and installs libkrunfw.
//!
//! Invariants: probing never changes the host (the only side effects are
//! opening and closing `/dev/kvm` and running `ldconfig -p`); every
//! parser lives in [`parse`] and works on text, so it is tested on samples
//! from hosts unlike this one. A field the probe cannot read is reported as
//! absent, never guessed.
#![warn(missing_docs)]

pub mod krunfw;
pub mod parse;

pub use krunfw::{alcove_home, install_libkrunfw, locate_libkrunfw, validate_libkrunfw, KrunfwError, KrunfwInfo};

use serde::Serialize;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

/// A backend `--backend auto` can pick.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// libkrun microVM.
    Krun,
    /// Namespace jail.
    Jail,
}

impl Backend {
    /// The config name.
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Krun => "krun",
            Backend::Jail => "jail",
        }
    }
}

/// `/dev/kvm`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct KvmReport {
    /// The device node exists.
    pub present: bool,
    /// It opens read-write for this process.
    pub accessible: bool,
    /// Why it does not, when it does not.
    pub error: Option<String>,
    /// Loaded KVM modules (`kvm_intel`, `kvm_amd`, `kvm_pvm`).
    pub modules: Vec<String>,
    /// The `kvm_pvm` software hypervisor is loaded.
    pub pvm: bool,
}

/// Hardware virtualisation flags of the CPU.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CpuReport {
    /// Intel VT-x.
    pub vmx: bool,
    /// AMD-V.
    pub svm: bool,
    /// The CPU runs under a hypervisor (`hypervisor` flag).
    pub hypervisor: bool,
    /// Online CPUs.
    pub count: usize,
}

/// libkrunfw.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct KrunfwReport {
    /// Where it was found.
    pub path: Option<PathBuf>,
    /// Library version (`5.6.1`), when known.
    pub version: Option<String>,
    /// The embedded guest kernel's version banner.
    pub kernel: Option<String>,
    /// Why it is missing or unusable.
    pub error: Option<String>,
}

impl KrunfwReport {
    /// Found and valid.
    pub fn usable(&self) -> bool {
        self.path.is_some() && self.error.is_none()
    }
}

/// Control groups.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CgroupReport {
    /// Mounted v1 controllers with their mount points.
    pub v1: Vec<(String, String)>,
    /// The cgroup2 mount point.
    pub v2_mount: Option<String>,
    /// Controllers available in the cgroup2 root.
    pub v2_controllers: Vec<String>,
}

/// Namespaces.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct NamespaceReport {
    /// Kinds in `/proc/self/ns`.
    pub kinds: Vec<String>,
    /// `kernel.unprivileged_userns_clone` where the kernel has that sysctl.
    pub unprivileged_userns_clone: Option<bool>,
    /// `user.max_user_namespaces`.
    pub max_user_namespaces: Option<u64>,
}

/// Seccomp.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SeccompReport {
    /// The kernel reports a seccomp mode for processes.
    pub supported: bool,
    /// This process's mode (0 none, 1 strict, 2 filter).
    pub mode: Option<u32>,
}

/// Whether jails get a private user namespace here (filled by the caller
/// from the jail backend's own probe, which tries idmapped mounts: the
/// probe here never mounts anything).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct IsolationReport {
    /// Idmapped mounts (under a host-built overlay) work here.
    pub idmapped_mounts: bool,
    /// What a root-run jail gets, and why.
    pub detail: String,
}

/// Everything [`probe`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct HostReport {
    /// `/dev/kvm`.
    pub kvm: KvmReport,
    /// CPU.
    pub cpu: CpuReport,
    /// Total memory, MiB.
    pub memory_mib: Option<u64>,
    /// libkrunfw.
    pub libkrunfw: KrunfwReport,
    /// cgroups.
    pub cgroups: CgroupReport,
    /// Namespaces.
    pub namespaces: NamespaceReport,
    /// overlayfs is in `/proc/filesystems`.
    pub overlayfs: bool,
    /// Seccomp.
    pub seccomp: SeccompReport,
    /// Running as uid 0.
    pub root: bool,
    /// Jail isolation, when the caller probed it.
    pub jail_isolation: Option<IsolationReport>,
}

/// Probes this host (libkrunfw located without an explicit path).
pub fn probe() -> HostReport {
    probe_with_krunfw(None)
}

/// Probes this host, looking for libkrunfw at `explicit` first.
pub fn probe_with_krunfw(explicit: Option<&Path>) -> HostReport {
    let read = |p: &str| fs::read_to_string(p).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    let flags = parse::cpu_flags(&cpuinfo);
    let has = |f: &str| flags.iter().any(|x| x == f);
    let mounts = parse::mounts(&read("/proc/self/mounts"));
    let known = parse::known_controllers(&read("/proc/cgroups"));
    let v2_mount = parse::cgroup_v2_mount(&mounts);
    let v2_controllers = v2_mount
        .as_ref()
        .map(|m| read(&format!("{m}/cgroup.controllers")).split_whitespace().map(str::to_string).collect())
        .unwrap_or_default();
    let status = read("/proc/self/status");
    let seccomp_mode = parse::status_field(&status, "Seccomp").and_then(|v| v.parse().ok());
    HostReport {
        kvm: probe_kvm(&read("/proc/modules")),
        cpu: CpuReport { vmx: has("vmx"), svm: has("svm"), hypervisor: has("hypervisor"), count: host_cpus() },
        memory_mib: parse::mem_total_mib(&read("/proc/meminfo")),
        libkrunfw: probe_krunfw(explicit),
        cgroups: CgroupReport { v1: parse::cgroup_v1_controllers(&mounts, &known), v2_mount, v2_controllers },
        namespaces: probe_namespaces(),
        overlayfs: parse::has_filesystem(&read("/proc/filesystems"), "overlay"),
        seccomp: SeccompReport { supported: seccomp_mode.is_some(), mode: seccomp_mode },
        // SAFETY: geteuid has no preconditions.
        root: unsafe { libc::geteuid() } == 0,
        jail_isolation: None,
    }
}

/// Online CPUs of this host.
pub fn host_cpus() -> usize {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    if n > 0 {
        n as usize
    } else {
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    }
}

/// Total memory of this host in MiB.
pub fn host_memory_mib() -> Option<u64> {
    parse::mem_total_mib(&fs::read_to_string("/proc/meminfo").ok()?)
}

fn probe_kvm(proc_modules: &str) -> KvmReport {
    let mut modules: Vec<String> = parse::modules(proc_modules).into_iter().filter(|m| m.starts_with("kvm_")).collect();
    for m in ["kvm_intel", "kvm_amd", "kvm_pvm"] {
        if Path::new("/sys/module").join(m).exists() && !modules.iter().any(|x| x == m) {
            modules.push(m.to_string());
        }
    }
    let pvm = modules.iter().any(|m| m == "kvm_pvm");
    let present = Path::new("/dev/kvm").exists();
    let (accessible, error) = if present {
        match fs::OpenOptions::new().read(true).write(true).open("/dev/kvm") {
            Ok(_) => (true, None),
            Err(e) => (false, Some(format!("cannot open /dev/kvm read-write: {e}"))),
        }
    } else {
        (false, Some("/dev/kvm does not exist".to_string()))
    };
    KvmReport { present, accessible, error, modules, pvm }
}

fn probe_krunfw(explicit: Option<&Path>) -> KrunfwReport {
    let path = match locate_libkrunfw(explicit) {
        Ok(p) => p,
        Err(e) => return KrunfwReport { error: Some(e.to_string()), ..Default::default() },
    };
    match validate_libkrunfw(&path) {
        Ok(info) => KrunfwReport {
            kernel: krunfw::kernel_banner(&info.resolved),
            version: info.version,
            path: Some(path),
            error: None,
        },
        Err(e) => KrunfwReport { path: Some(path), error: Some(e.to_string()), ..Default::default() },
    }
}

fn probe_namespaces() -> NamespaceReport {
    let mut kinds: Vec<String> = fs::read_dir("/proc/self/ns")
        .map(|d| d.filter_map(|e| e.ok()).filter_map(|e| e.file_name().into_string().ok()).collect())
        .unwrap_or_default();
    kinds.sort();
    let num = |p: &str| fs::read_to_string(p).ok().and_then(|s| s.trim().parse::<u64>().ok());
    NamespaceReport {
        kinds,
        unprivileged_userns_clone: num("/proc/sys/kernel/unprivileged_userns_clone").map(|v| v != 0),
        max_user_namespaces: num("/proc/sys/user/max_user_namespaces"),
    }
}

impl HostReport {
    /// Whether the host has hardware virtualisation (vmx or svm).
    pub fn hardware_virt(&self) -> bool {
        self.cpu.vmx || self.cpu.svm
    }

    /// The backend `--backend auto` uses here, and why.
    pub fn auto_backend(&self) -> (Backend, String) {
        if !self.kvm.present {
            return (Backend::Jail, "/dev/kvm does not exist: microVMs cannot run here".into());
        }
        if !self.kvm.accessible {
            let why = self.kvm.error.clone().unwrap_or_else(|| "/dev/kvm is not accessible".into());
            return (Backend::Jail, format!("{why}: microVMs cannot run here"));
        }
        if !self.hardware_virt() {
            let reason = if self.kvm.pvm {
                "/dev/kvm is kvm_pvm (software virtualisation without vmx/svm): the libkrunfw guest kernel cannot boot here"
                    .to_string()
            } else {
                "the CPU has no vmx/svm flag (no hardware virtualisation): the libkrunfw guest kernel cannot boot here"
                    .to_string()
            };
            return (Backend::Jail, reason);
        }
        if !self.libkrunfw.usable() {
            let why = self.libkrunfw.error.clone().unwrap_or_else(|| "libkrunfw not found".into());
            return (Backend::Jail, format!("no usable libkrunfw ({why})"));
        }
        let version = self.libkrunfw.version.as_deref().unwrap_or("unknown version");
        (
            Backend::Krun,
            format!(
                "/dev/kvm is usable, the CPU has {}, libkrunfw {version} found",
                if self.cpu.vmx { "vmx" } else { "svm" }
            ),
        )
    }

    /// A multi-line report for `alcove doctor`.
    pub fn render_human(&self) -> String {
        let yes = |b: bool| if b { "yes" } else { "no" };
        let mut s = String::new();
        let kvm = if self.kvm.accessible {
            "usable".to_string()
        } else {
            self.kvm.error.clone().unwrap_or_else(|| "not usable".into())
        };
        let _ = writeln!(s, "/dev/kvm           {kvm}");
        let modules = if self.kvm.modules.is_empty() { "none".to_string() } else { self.kvm.modules.join(", ") };
        let pvm = if self.kvm.pvm { " (kvm_pvm: software virtualisation)" } else { "" };
        let _ = writeln!(s, "kvm modules        {modules}{pvm}");
        let _ = writeln!(
            s,
            "cpu                {} CPUs, vmx: {}, svm: {}, under a hypervisor: {}",
            self.cpu.count,
            yes(self.cpu.vmx),
            yes(self.cpu.svm),
            yes(self.cpu.hypervisor)
        );
        let mem = self.memory_mib.map_or("unknown".to_string(), |m| format!("{m} MiB"));
        let _ = writeln!(s, "memory             {mem}");
        match (&self.libkrunfw.path, &self.libkrunfw.error) {
            (Some(p), None) => {
                let _ = writeln!(
                    s,
                    "libkrunfw          {} (version {}, kernel {})",
                    p.display(),
                    self.libkrunfw.version.as_deref().unwrap_or("unknown"),
                    self.libkrunfw.kernel.as_deref().unwrap_or("unknown")
                );
            }
            (_, Some(e)) => {
                let _ = writeln!(s, "libkrunfw          {e}");
            }
            (None, None) => {
                let _ = writeln!(s, "libkrunfw          not found");
            }
        }
        let v1: Vec<&str> = self.cgroups.v1.iter().map(|(c, _)| c.as_str()).collect();
        let _ = writeln!(s, "cgroup v1          {}", if v1.is_empty() { "none".to_string() } else { v1.join(", ") });
        let v2 = match &self.cgroups.v2_mount {
            Some(m) if self.cgroups.v2_controllers.is_empty() => format!("{m} (no controllers)"),
            Some(m) => format!("{m} ({})", self.cgroups.v2_controllers.join(", ")),
            None => "not mounted".to_string(),
        };
        let _ = writeln!(s, "cgroup v2          {v2}");
        let userns = match (self.namespaces.unprivileged_userns_clone, self.namespaces.max_user_namespaces) {
            (Some(false), _) | (_, Some(0)) => "unprivileged user namespaces disabled",
            _ => "unprivileged user namespaces allowed",
        };
        let _ = writeln!(s, "namespaces         {} ({userns})", self.namespaces.kinds.join(", "));
        let _ = writeln!(s, "overlayfs          {}", yes(self.overlayfs));
        let _ = writeln!(
            s,
            "seccomp            {}",
            if self.seccomp.supported { "supported" } else { "not reported by the kernel" }
        );
        let _ = writeln!(s, "running as root    {}", yes(self.root));
        if let Some(iso) = &self.jail_isolation {
            let _ = writeln!(s, "idmapped mounts    {}", iso.detail);
        }
        let (backend, reason) = self.auto_backend();
        let _ = writeln!(s, "auto backend       {} ({reason})", backend.as_str());
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn capable() -> HostReport {
        HostReport {
            kvm: KvmReport {
                present: true,
                accessible: true,
                error: None,
                modules: vec!["kvm_intel".into()],
                pvm: false,
            },
            cpu: CpuReport { vmx: true, svm: false, hypervisor: false, count: 8 },
            libkrunfw: KrunfwReport {
                path: Some("/x/libkrunfw.so.5".into()),
                version: Some("5.6.1".into()),
                kernel: None,
                error: None,
            },
            ..Default::default()
        }
    }

    #[test]
    fn auto_picks_krun_only_with_kvm_virt_flags_and_krunfw() {
        let r = capable();
        let (b, why) = r.auto_backend();
        assert_eq!(b, Backend::Krun, "{why}");
        assert!(why.contains("vmx") && why.contains("5.6.1"), "{why}");

        let mut svm = capable();
        svm.cpu = CpuReport { vmx: false, svm: true, ..svm.cpu };
        assert_eq!(svm.auto_backend().0, Backend::Krun);

        let mut no_dev = capable();
        no_dev.kvm.present = false;
        let (b, why) = no_dev.auto_backend();
        assert_eq!(b, Backend::Jail);
        assert!(why.contains("does not exist"), "{why}");

        let mut denied = capable();
        denied.kvm.accessible = false;
        denied.kvm.error = Some("cannot open /dev/kvm read-write: Permission denied".into());
        let (b, why) = denied.auto_backend();
        assert_eq!(b, Backend::Jail);
        assert!(why.contains("Permission denied"), "{why}");

        let mut pvm = capable();
        pvm.cpu.vmx = false;
        pvm.kvm.pvm = true;
        let (b, why) = pvm.auto_backend();
        assert_eq!(b, Backend::Jail);
        assert!(why.contains("kvm_pvm"), "{why}");

        let mut novirt = capable();
        novirt.cpu.vmx = false;
        let (b, why) = novirt.auto_backend();
        assert_eq!(b, Backend::Jail);
        assert!(why.contains("no vmx/svm"), "{why}");

        let mut nofw = capable();
        nofw.libkrunfw = KrunfwReport { error: Some("libkrunfw not found: looked".into()), ..Default::default() };
        let (b, why) = nofw.auto_backend();
        assert_eq!(b, Backend::Jail);
        assert!(why.contains("libkrunfw"), "{why}");
    }

    #[test]
    fn render_human_names_every_item_and_the_choice() {
        let mut report = capable();
        report.jail_isolation =
            Some(IsolationReport { idmapped_mounts: false, detail: "no (EINVAL): jails run without".into() });
        let text = report.render_human();
        for key in [
            "/dev/kvm",
            "kvm modules",
            "cpu",
            "memory",
            "libkrunfw",
            "cgroup v1",
            "cgroup v2",
            "namespaces",
            "overlayfs",
            "seccomp",
            "running as root",
            "idmapped mounts    no (",
            "auto backend       krun",
        ] {
            assert!(text.contains(key), "missing {key:?} in:\n{text}");
        }
    }

    /// The probe on this machine: the project's hosts expose /dev/kvm
    /// through kvm_pvm without vmx/svm, so auto must choose jail and say why.
    /// On a host with vmx/svm the test checks the opposite facts instead.
    #[test]
    fn probe_on_this_host() {
        let r = probe();
        let cpuinfo = fs::read_to_string("/proc/cpuinfo").expect("cpuinfo");
        let flags = parse::cpu_flags(&cpuinfo);
        assert_eq!(r.cpu.vmx, flags.iter().any(|f| f == "vmx"));
        assert_eq!(r.cpu.svm, flags.iter().any(|f| f == "svm"));
        assert!(r.cpu.count >= 1);
        assert!(r.memory_mib.unwrap_or(0) > 0);
        assert!(r.namespaces.kinds.iter().any(|k| k == "mnt"));
        assert!(r.seccomp.supported);
        let (backend, reason) = r.auto_backend();
        println!("{}", r.render_human());
        if Path::new("/sys/module/kvm_pvm").exists() && !r.hardware_virt() {
            assert!(r.kvm.pvm, "kvm_pvm is loaded but not reported");
            assert_eq!(backend, Backend::Jail);
            assert!(reason.contains("kvm_pvm"), "{reason}");
        } else if !r.hardware_virt() {
            assert_eq!(backend, Backend::Jail);
        }
        let json = serde_json::to_string(&r).expect("serialises");
        assert!(json.contains("\"kvm\""));
    }
}
