//! The OCI bundle's `config.json`, read into what an alcove sandbox runs
//! with ([`TaskSpec`]), or refused.
//!
//! Pure: no file system access beyond the caller's bytes, so every rule
//! here is unit-tested.
//!
//! Invariants:
//! - Every field of the runtime spec is either honoured (it changes the
//!   sandbox or its main command), or accepted because alcove's jail already
//!   gives at least what it asks (below), or it
//!   refuses the bundle with a [`BundleError`] naming the field. No field is
//!   dropped silently: an unknown key anywhere we read is refused
//!   (`deny_unknown_fields`).
//! - Annotations under `io.alcove.` select alcove options; an unknown key or
//!   value there is refused. Other annotations are containerd's and the
//!   orchestrator's bookkeeping and are kept out of the sandbox.
//!
//! Accepted because the jail already gives them, in the form containerd's
//! default spec asks: `linux.maskedPaths`/`readonlyPaths` (the jail masks
//! /proc and /sys itself); `linux.namespaces` without a path (every sandbox
//! has its own); `process.capabilities` within containerd's default set;
//! `noNewPrivileges`; the default mounts (/proc, /dev, /dev/pts, /dev/shm,
//! /dev/mqueue, /sys, /sys/fs/cgroup, and /run, writable in the jail's
//! overlay); `linux.resources.devices` rules allowing only containerd's
//! default devices; `linux.cgroupsPath` (the sandbox has its own cgroup);
//! `cpu.shares` (a weight among siblings; a sandbox's cgroup has none).

use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// The prefix of annotations that select alcove options.
pub const ANNOTATION_PREFIX: &str = "io.alcove.";

/// Why a bundle is refused. Each message is one line naming the field.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BundleError {
    /// config.json is not a runtime spec this shim can read.
    #[error("config.json: {0}")]
    Malformed(String),
    /// A field asks for something alcove does not do.
    #[error("config.json: {field} is not supported by alcove: {why}")]
    Unsupported {
        /// The spec field.
        field: String,
        /// What alcove cannot do.
        why: String,
    },
    /// An `io.alcove.` annotation is unknown or has a bad value.
    #[error("annotation {key}: {why}")]
    Annotation {
        /// The annotation key.
        key: String,
        /// What is wrong.
        why: String,
    },
}

fn unsupported(field: impl Into<String>, why: impl Into<String>) -> BundleError {
    BundleError::Unsupported { field: field.into(), why: why.into() }
}

/// What the sandbox of one task runs with.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct TaskSpec {
    /// Root filesystem directory, relative to the bundle unless absolute.
    pub root_path: String,
    /// The main command.
    pub args: Vec<String>,
    /// Its environment, in order.
    pub env: Vec<(String, String)>,
    /// Its working directory.
    pub cwd: String,
    /// `uid:gid` of the main command.
    pub user: String,
    /// Its terminal's size, when it runs on one (`process.terminal`).
    pub terminal: Option<alcove_protocol::TtySize>,
    /// Resource limits of the main command (alcove's names: `nofile`, …).
    pub rlimits: Vec<alcove_protocol::Rlimit>,
    /// Memory limit in MiB.
    pub memory_mib: Option<u64>,
    /// CPU limit (whole CPUs, rounded up from quota/period).
    pub cpus: Option<u32>,
    /// Process limit.
    pub pids: Option<u64>,
    /// `io.alcove.network`: the network profile.
    pub network: Option<String>,
    /// `io.alcove.idle-timeout`: seconds without activity before a stop.
    pub idle_timeout: Option<Duration>,
    /// `hostname`: the sandbox's hostname (default: its name).
    pub hostname: Option<String>,
}

// Only the parts of the runtime spec this shim reads. Unknown keys are
// refused so that nothing is ignored silently.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Spec {
    #[allow(dead_code)]
    oci_version: String,
    process: Option<Process>,
    root: Option<Root>,
    #[serde(default)]
    hostname: String,
    #[serde(default)]
    domainname: String,
    #[serde(default)]
    mounts: Vec<Mount>,
    hooks: Option<serde_json::Value>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
    linux: Option<Linux>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Process {
    #[serde(default)]
    terminal: bool,
    console_size: Option<ConsoleSize>,
    user: User,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    env: Vec<String>,
    cwd: String,
    capabilities: Option<Capabilities>,
    #[serde(default)]
    rlimits: Vec<RlimitSpec>,
    #[allow(dead_code)]
    #[serde(default)]
    no_new_privileges: bool,
    #[serde(default)]
    apparmor_profile: String,
    oom_score_adj: Option<i32>,
    #[serde(default)]
    selinux_label: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConsoleSize {
    height: u16,
    width: u16,
}

/// The terminal size of a process whose spec gives none.
pub const DEFAULT_TERMINAL: alcove_protocol::TtySize = alcove_protocol::TtySize { rows: 24, cols: 80 };

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct User {
    uid: u32,
    gid: u32,
    umask: Option<u32>,
    #[serde(default)]
    additional_gids: Vec<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Capabilities {
    #[serde(default)]
    bounding: Vec<String>,
    #[serde(default)]
    effective: Vec<String>,
    #[serde(default)]
    inheritable: Vec<String>,
    #[serde(default)]
    permitted: Vec<String>,
    #[serde(default)]
    ambient: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RlimitSpec {
    #[serde(rename = "type")]
    kind: String,
    soft: u64,
    hard: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Root {
    path: String,
    #[serde(default)]
    readonly: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Mount {
    destination: String,
    #[serde(rename = "type", default)]
    kind: String,
    #[allow(dead_code)]
    #[serde(default)]
    source: String,
    #[allow(dead_code)]
    #[serde(default)]
    options: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Linux {
    #[serde(default)]
    uid_mappings: Vec<serde_json::Value>,
    #[serde(default)]
    gid_mappings: Vec<serde_json::Value>,
    #[serde(default)]
    sysctl: BTreeMap<String, String>,
    resources: Option<Resources>,
    #[allow(dead_code)]
    cgroups_path: Option<String>,
    #[serde(default)]
    namespaces: Vec<Namespace>,
    #[serde(default)]
    devices: Vec<serde_json::Value>,
    seccomp: Option<serde_json::Value>,
    #[allow(dead_code)]
    #[serde(default)]
    masked_paths: Vec<String>,
    #[allow(dead_code)]
    #[serde(default)]
    readonly_paths: Vec<String>,
    #[serde(default)]
    rootfs_propagation: String,
    #[serde(default)]
    mount_label: String,
    intel_rdt: Option<serde_json::Value>,
    personality: Option<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Namespace {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    path: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Resources {
    #[serde(default)]
    devices: Vec<DeviceRule>,
    memory: Option<Memory>,
    cpu: Option<Cpu>,
    pids: Option<Pids>,
    block_io: Option<serde_json::Value>,
    #[serde(default)]
    hugepage_limits: Vec<serde_json::Value>,
    network: Option<serde_json::Value>,
    #[serde(default)]
    rdma: BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    unified: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeviceRule {
    allow: bool,
    #[serde(rename = "type", default)]
    kind: Option<String>,
    major: Option<i64>,
    minor: Option<i64>,
    #[serde(default)]
    access: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Memory {
    limit: Option<i64>,
    reservation: Option<i64>,
    swap: Option<i64>,
    kernel: Option<i64>,
    kernel_tcp: Option<i64>,
    swappiness: Option<u64>,
    disable_oom_killer: Option<bool>,
    use_hierarchy: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Cpu {
    shares: Option<u64>,
    quota: Option<i64>,
    period: Option<u64>,
    realtime_runtime: Option<i64>,
    realtime_period: Option<u64>,
    #[serde(default)]
    cpus: String,
    #[serde(default)]
    mems: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Pids {
    limit: i64,
}

/// containerd's default capability set (`oci.WithDefaultSpec`); a bundle may
/// ask for these or fewer.
const DEFAULT_CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Mount destinations every alcove jail has already, as containerd's default
/// spec lists them (destination, type).
const DEFAULT_MOUNTS: &[(&str, &str)] = &[
    ("/proc", "proc"),
    ("/dev", "tmpfs"),
    ("/dev/pts", "devpts"),
    ("/dev/shm", "tmpfs"),
    ("/dev/mqueue", "mqueue"),
    ("/sys", "sysfs"),
    ("/sys/fs/cgroup", "cgroup"),
    ("/run", "tmpfs"),
];

/// Character devices (major, minor) containerd's default spec allows; the
/// jail's own device set is within these. `None` is a wildcard.
const DEFAULT_DEVICES: &[(i64, Option<i64>)] = &[
    (1, Some(3)),
    (1, Some(5)),
    (1, Some(7)),
    (1, Some(8)),
    (1, Some(9)),
    (5, Some(0)),
    (5, Some(1)),
    (5, Some(2)),
    (136, None),
    (10, Some(200)),
];

const NAMESPACES: &[&str] = &["pid", "network", "ipc", "uts", "mount", "cgroup", "user"];

/// Reads `config.json`'s bytes into a [`TaskSpec`], or refuses the bundle.
pub fn parse(config_json: &[u8]) -> Result<TaskSpec, BundleError> {
    let spec: Spec = serde_json::from_slice(config_json).map_err(|e| BundleError::Malformed(e.to_string()))?;
    let process = spec.process.ok_or_else(|| unsupported("process", "a task needs a process"))?;
    let root = spec.root.ok_or_else(|| unsupported("root", "a task needs a root filesystem"))?;
    if root.readonly {
        return Err(unsupported("root.readonly", "the root filesystem is always writable (an overlay)"));
    }
    if !spec.hostname.is_empty() {
        alcove_jail::check_hostname(&spec.hostname).map_err(BundleError::Malformed)?;
    }
    if !spec.domainname.is_empty() {
        return Err(unsupported("domainname", "the sandbox's domain name is its own"));
    }
    if spec.hooks.is_some() {
        return Err(unsupported("hooks", "hooks would run outside the sandbox"));
    }
    for m in &spec.mounts {
        if !DEFAULT_MOUNTS.contains(&(m.destination.as_str(), m.kind.as_str())) {
            return Err(unsupported(
                format!("mounts[{}]", m.destination),
                format!("a {:?} mount beyond the jail's own is not supported yet", m.kind),
            ));
        }
    }
    let hostname = Some(spec.hostname).filter(|h| !h.is_empty());
    let mut task = TaskSpec { root_path: root.path, hostname, ..TaskSpec::default() };
    read_process(process, &mut task)?;
    if let Some(linux) = spec.linux {
        read_linux(linux, &mut task)?;
    }
    read_annotations(&spec.annotations, &mut task)?;
    Ok(task)
}

/// Reads the OCI `process` object of an exec (containerd's
/// `ExecProcessRequest.spec`) into the process fields of a [`TaskSpec`],
/// with the same rules as the bundle's process.
pub fn parse_process(process_json: &[u8]) -> Result<TaskSpec, BundleError> {
    let process: Process =
        serde_json::from_slice(process_json).map_err(|e| BundleError::Malformed(format!("exec process: {e}")))?;
    let mut task = TaskSpec::default();
    read_process(process, &mut task)?;
    Ok(task)
}

fn read_process(p: Process, task: &mut TaskSpec) -> Result<(), BundleError> {
    if p.terminal {
        task.terminal = Some(
            p.console_size
                .map(|c| alcove_protocol::TtySize { rows: c.height, cols: c.width })
                .unwrap_or(DEFAULT_TERMINAL),
        );
    }
    if p.args.is_empty() {
        return Err(unsupported("process.args", "it is empty"));
    }
    if !p.cwd.starts_with('/') {
        return Err(unsupported("process.cwd", format!("{:?} is not absolute", p.cwd)));
    }
    if !p.apparmor_profile.is_empty() || !p.selinux_label.is_empty() {
        return Err(unsupported("process.apparmorProfile/selinuxLabel", "alcove applies its own confinement"));
    }
    if p.oom_score_adj.is_some() {
        return Err(unsupported("process.oomScoreAdj", "not supported yet"));
    }
    if p.user.umask.is_some() {
        return Err(unsupported("process.user.umask", "not supported yet"));
    }
    if let Some(g) = p.user.additional_gids.iter().find(|g| **g != p.user.gid && **g != 0) {
        return Err(unsupported(
            "process.user.additionalGids",
            format!("supplementary group {g} is not supported yet"),
        ));
    }
    if let Some(caps) = &p.capabilities {
        let all = [&caps.bounding, &caps.effective, &caps.inheritable, &caps.permitted, &caps.ambient];
        if let Some(extra) = all.iter().flat_map(|set| set.iter()).find(|c| !DEFAULT_CAPABILITIES.contains(&c.as_str()))
        {
            return Err(unsupported("process.capabilities", format!("{extra} is beyond what a sandbox may have")));
        }
    }
    for r in p.rlimits {
        let name = r.kind.strip_prefix("RLIMIT_").unwrap_or(&r.kind).to_ascii_lowercase();
        if !matches!(name.as_str(), "nofile" | "nproc" | "as" | "cpu" | "fsize" | "stack" | "core" | "memlock") {
            return Err(unsupported("process.rlimits", format!("{} is not supported", r.kind)));
        }
        if r.soft > r.hard {
            return Err(unsupported("process.rlimits", format!("{}: soft limit above the hard limit", r.kind)));
        }
        task.rlimits.push(alcove_protocol::Rlimit { resource: name, soft: r.soft, hard: r.hard });
    }
    for e in p.env {
        match e.split_once('=') {
            Some((k, v)) if !k.is_empty() => task.env.push((k.to_string(), v.to_string())),
            _ => return Err(unsupported("process.env", format!("{e:?} is not NAME=VALUE"))),
        }
    }
    task.args = p.args;
    task.cwd = p.cwd;
    task.user = format!("{}:{}", p.user.uid, p.user.gid);
    Ok(())
}

fn read_linux(l: Linux, task: &mut TaskSpec) -> Result<(), BundleError> {
    let refuse_if = |cond: bool, field: &str, why: &str| if cond { Err(unsupported(field, why)) } else { Ok(()) };
    refuse_if(!l.uid_mappings.is_empty() || !l.gid_mappings.is_empty(), "linux.uidMappings", "alcove maps ids itself")?;
    refuse_if(!l.sysctl.is_empty(), "linux.sysctl", "not supported yet")?;
    refuse_if(!l.devices.is_empty(), "linux.devices", "a sandbox gets no host devices")?;
    refuse_if(l.seccomp.is_some(), "linux.seccomp", "alcove applies its own seccomp filter")?;
    refuse_if(l.intel_rdt.is_some(), "linux.intelRdt", "not supported")?;
    refuse_if(l.personality.is_some(), "linux.personality", "not supported")?;
    refuse_if(!l.mount_label.is_empty(), "linux.mountLabel", "not supported")?;
    refuse_if(
        !matches!(l.rootfs_propagation.as_str(), "" | "private" | "rprivate"),
        "linux.rootfsPropagation",
        "the sandbox's mounts are always private",
    )?;
    for ns in &l.namespaces {
        if !NAMESPACES.contains(&ns.kind.as_str()) {
            return Err(unsupported("linux.namespaces", format!("unknown namespace {:?}", ns.kind)));
        }
        if !ns.path.is_empty() {
            return Err(unsupported(
                format!("linux.namespaces[{}].path", ns.kind),
                "joining another namespace is not supported yet",
            ));
        }
    }
    if let Some(r) = l.resources {
        read_resources(r, task)?;
    }
    Ok(())
}

fn read_resources(r: Resources, task: &mut TaskSpec) -> Result<(), BundleError> {
    for d in &r.devices {
        let char_or_all = matches!(d.kind.as_deref(), None | Some("a") | Some("c"));
        let allowed = !d.allow
            || (d.access == "m")
            || (char_or_all
                && d.major.is_some_and(|major| DEFAULT_DEVICES.iter().any(|(ma, mi)| *ma == major && *mi == d.minor)));
        if !allowed {
            return Err(unsupported(
                "linux.resources.devices",
                format!("device {:?} {:?}:{:?} is not allowed in a sandbox", d.kind, d.major, d.minor),
            ));
        }
    }
    if r.block_io.is_some() || !r.hugepage_limits.is_empty() || r.network.is_some() || !r.rdma.is_empty() {
        return Err(unsupported("linux.resources", "only memory, cpu and pids limits are supported"));
    }
    if !r.unified.is_empty() {
        return Err(unsupported("linux.resources.unified", "not supported yet"));
    }
    if let Some(m) = r.memory {
        let extra = m.reservation.is_some()
            || m.kernel.is_some()
            || m.kernel_tcp.is_some()
            || m.swappiness.is_some()
            || m.disable_oom_killer == Some(true);
        if extra {
            return Err(unsupported("linux.resources.memory", "only limit (and swap equal to it) is supported"));
        }
        if let Some(limit) = m.limit.filter(|l| *l > 0) {
            if m.swap.is_some_and(|s| s > 0 && s != limit) {
                return Err(unsupported("linux.resources.memory.swap", "swap beyond the memory limit"));
            }
            // alcove's limits are in MiB: round up so the limit is never tighter.
            task.memory_mib = Some((limit as u64).div_ceil(1024 * 1024));
        }
        let _ = m.use_hierarchy;
    }
    if let Some(c) = r.cpu {
        if c.realtime_runtime.is_some() || c.realtime_period.is_some() || !c.cpus.is_empty() || !c.mems.is_empty() {
            return Err(unsupported("linux.resources.cpu", "only quota/period is supported"));
        }
        if let (Some(quota), Some(period)) = (c.quota.filter(|q| *q > 0), c.period.filter(|p| *p > 0)) {
            task.cpus = Some(u32::try_from((quota as u64).div_ceil(period)).unwrap_or(u32::MAX));
        }
        // Shares are a relative weight between siblings; a sandbox has none.
        let _ = c.shares;
    }
    if let Some(p) = r.pids.filter(|p| p.limit > 0) {
        task.pids = Some(p.limit as u64);
    }
    Ok(())
}

fn read_annotations(annotations: &BTreeMap<String, String>, task: &mut TaskSpec) -> Result<(), BundleError> {
    for (key, value) in annotations {
        let Some(option) = key.strip_prefix(ANNOTATION_PREFIX) else { continue };
        let bad = |why: String| BundleError::Annotation { key: key.clone(), why };
        match option {
            "network" => {
                if !matches!(value.as_str(), "none" | "public" | "private" | "host" | "all") {
                    return Err(bad(format!("unknown network profile {value:?} (none, public, private, host, all)")));
                }
                task.network = Some(value.clone());
            }
            "idle-timeout" => {
                let secs: u64 = value
                    .parse()
                    .ok()
                    .filter(|s| *s > 0)
                    .ok_or_else(|| bad(format!("{value:?} is not a whole number of seconds above zero")))?;
                task.idle_timeout = Some(Duration::from_secs(secs));
            }
            "backend" => {
                if value != "jail" {
                    return Err(bad(format!("backend {value:?} is not supported by the shim yet (only jail)")));
                }
            }
            _ => return Err(bad("unknown alcove option (network, idle-timeout, backend)".into())),
        }
    }
    Ok(())
}

#[cfg(test)]
#[path = "bundle_tests.rs"]
mod tests;
