//! Turning a [`KrunConfig`] and a [`GuestSpec`] into a checked [`VmPlan`],
//! and writing the per-sandbox boot share ("trampoline").
//!
//! Invariants:
//! - [`plan`] is pure apart from reading files: every check that can fail
//!   (libkrunfw, disk formats and images, vCPUs, memory, directories, the
//!   agent binary, mounts, volume ids) runs here, before the boot share is
//!   written or any VM object exists.
//! - The guest boots from the trampoline (`<sandbox_dir>/boot`, virtio-fs
//!   `/dev/root`), which holds only a private copy of the agent and its
//!   config. The user's root filesystem is a separate share (or a read-only
//!   disk) that alcove never writes; the guest's changes go to
//!   `<sandbox_dir>/upper-vm` through the `upper` share.
//! - The `rootfs` share and every read-only mount are planned `read_only`:
//!   the seam serves them through [`crate::sharefs::ShareFs`] in read-only
//!   mode, so the VMM refuses writes even if guest root remounts them
//!   read-write. Every other share (the trampoline, `upper`, read-write
//!   mounts) goes through the same wrapper in writable mode, which keeps
//!   the guest inside the shared directory. Share directories must be valid
//!   UTF-8 (the passthrough takes them as strings and would otherwise serve
//!   a lossily converted path).
//! - The agent is copied, never hard-linked: guest root can write to the
//!   trampoline through virtio-fs, and a hard link would let it alter the
//!   shared host binary other sandboxes run.
//! - A guest with a network gets one virtio-net device (the guest's MAC,
//!   [`NetPlan`]) and the agent configures its `eth0` from
//!   `VmBoot::network` before any command runs. Its MTU is at most
//!   [`MAX_VM_MTU`]: msb_krun's virtio-net negotiates neither offloads nor
//!   mergeable receive buffers, so the guest's driver posts 1518-byte
//!   buffers and drops any longer frame.
//! - Command environment travels in the agent's JSON config (mode 0600), not
//!   on the kernel command line, which the guest can read in /proc/cmdline,
//!   is length-limited and cannot carry quotes or control bytes.

use crate::config::{DiskFormat, KrunConfig, KrunRoot, KrunVolume};
use alcove_backend::{BackendError, GuestNetwork, GuestSpec};
use alcove_protocol::agent_config::{AgentConfig, AgentMode, NameFile, VmBoot, VmMount, VmNetwork, VmRoot, VmVolume};
use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// virtio-fs tag of the user's root directory.
pub const ROOTFS_TAG: &str = "rootfs";
/// virtio-fs tag of the writable layer directory.
pub const UPPER_TAG: &str = "upper";
/// Name of the agent's virtio-console port.
pub const AGENT_PORT: &str = "agent";
/// Block id of a disk-image root.
pub const ROOT_DISK_ID: &str = "root";
/// The agent inside the trampoline; the kernel's `init=`.
pub const AGENT_GUEST_PATH: &str = "/alcove-agent";
/// The agent's config inside the trampoline.
pub const CONFIG_GUEST_PATH: &str = "/.alcove/agent.json";
/// The trampoline directory under the sandbox dir.
pub const BOOT_DIR: &str = "boot";
/// The writable layer directory under the sandbox dir.
pub const UPPER_DIR: &str = "upper-vm";
/// Default vCPUs.
pub const DEFAULT_CPUS: u32 = 1;
/// Default memory, MiB.
pub const DEFAULT_MEMORY_MIB: u64 = 512;
/// Longest block id the guest can see (virtio-blk serial).
pub const MAX_DISK_ID: usize = 20;

/// Largest link MTU of a microVM (see the module docs).
pub const MAX_VM_MTU: u32 = 1500;

/// The host limits the plan is checked against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostLimits {
    /// Online CPUs.
    pub cpus: usize,
    /// Total memory, MiB.
    pub memory_mib: u64,
}

impl HostLimits {
    /// This host's limits.
    pub fn current() -> HostLimits {
        HostLimits {
            cpus: alcove_hostprobe::host_cpus(),
            memory_mib: alcove_hostprobe::host_memory_mib().unwrap_or(u64::MAX),
        }
    }
}

/// A virtio-fs share.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SharePlan {
    /// Tag the guest mounts by.
    pub tag: String,
    /// Host directory.
    pub host: PathBuf,
    /// Served in [`ShareMode::ReadOnly`](crate::sharefs::ShareMode): the
    /// VMM refuses every write, whatever the guest mounts it as. Otherwise
    /// [`ShareMode::Writable`](crate::sharefs::ShareMode).
    pub read_only: bool,
}

/// A virtio-blk device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskPlan {
    /// Block id.
    pub id: String,
    /// Image file.
    pub path: PathBuf,
    /// Image format.
    pub format: DiskFormat,
    /// Attached read-only (enforced by the VMM).
    pub read_only: bool,
}

/// The guest's init.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecPlan {
    /// Executable inside the trampoline (also the kernel's `init=`).
    pub path: String,
    /// Its arguments.
    pub args: Vec<String>,
    /// Working directory of init.
    pub workdir: String,
}

/// The guest's virtio-net device; its backend is the network engine's
/// adapter, made at launch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetPlan {
    /// The guest's MAC address (the device's config space).
    pub mac: [u8; 6],
}

/// Everything the VM is built from, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmPlan {
    /// vCPUs.
    pub vcpus: u8,
    /// Memory, MiB.
    pub memory_mib: usize,
    /// libkrunfw.
    pub krunfw: PathBuf,
    /// Kernel `init=`.
    pub init_path: String,
    /// The trampoline, shared as the guest's `/dev/root`.
    pub boot_dir: PathBuf,
    /// Other virtio-fs shares, in attach order.
    pub shares: Vec<SharePlan>,
    /// virtio-blk devices, in attach order.
    pub disks: Vec<DiskPlan>,
    /// Guest console output file.
    pub console_output: PathBuf,
    /// Name of the agent's console port.
    pub agent_port: String,
    /// init.
    pub exec: ExecPlan,
    /// The agent binary copied into the trampoline.
    pub agent_source: PathBuf,
    /// The agent's config written into the trampoline.
    pub agent_config: AgentConfig,
    /// The writable layer directory (created at launch).
    pub upper_dir: PathBuf,
    /// The network device; `None`: no network (loopback only).
    pub net: Option<NetPlan>,
}

fn invalid(msg: String) -> BackendError {
    BackendError::InvalidConfig(msg)
}

/// Finds and validates libkrunfw (the configured path first).
pub fn resolve_krunfw(config: &KrunConfig) -> Result<PathBuf, BackendError> {
    let unsupported =
        |e: alcove_hostprobe::KrunfwError| BackendError::Unsupported { backend: "krun", reason: e.to_string() };
    let path = alcove_hostprobe::locate_libkrunfw(config.libkrunfw.as_deref()).map_err(unsupported)?;
    alcove_hostprobe::validate_libkrunfw(&path).map_err(unsupported)?;
    Ok(path)
}

/// Checks everything and returns the plan: libkrunfw first, then
/// [`plan_with_krunfw`].
pub fn plan(config: &KrunConfig, spec: &GuestSpec, host: &HostLimits) -> Result<VmPlan, BackendError> {
    let krunfw = resolve_krunfw(config)?;
    plan_with_krunfw(config, spec, host, krunfw)
}

/// Checks everything but libkrunfw, which the caller has validated.
pub fn plan_with_krunfw(
    config: &KrunConfig,
    spec: &GuestSpec,
    host: &HostLimits,
    krunfw: PathBuf,
) -> Result<VmPlan, BackendError> {
    // Disks: formats known, images present and of the declared format.
    let mut disks = Vec::new();
    let root = match &config.root {
        KrunRoot::Disk { path, format, fstype } => {
            let format = check_disk("root disk", path, format.as_deref())?;
            disks.push(DiskPlan { id: ROOT_DISK_ID.into(), path: path.clone(), format, read_only: true });
            VmRoot::Block { device_id: ROOT_DISK_ID.into(), fstype: fstype.clone() }
        }
        KrunRoot::Directory { .. } => VmRoot::VirtioFs { tag: ROOTFS_TAG.into() },
    };
    let mut volumes = Vec::new();
    for v in &config.volumes {
        check_volume(v, &disks)?;
        let format = check_disk(&format!("volume {:?}", v.id), &v.path, v.format.as_deref())?;
        if format == DiskFormat::Vmdk && !v.readonly {
            return Err(invalid(format!(
                "volume {:?}: VMDK images can only be attached read-only (set readonly)",
                v.id
            )));
        }
        disks.push(DiskPlan { id: v.id.clone(), path: v.path.clone(), format, read_only: v.readonly });
        volumes.push(VmVolume { device_id: v.id.clone(), guest_path: v.guest_path.clone(), readonly: v.readonly });
    }

    // Machine size.
    let cpus = spec.cpus.unwrap_or(DEFAULT_CPUS);
    if cpus == 0 {
        return Err(invalid("cpus must be at least 1".into()));
    }
    if cpus as usize > host.cpus {
        return Err(invalid(format!("{cpus} vCPUs requested but this host has {} CPUs", host.cpus)));
    }
    let vcpus = u8::try_from(cpus).map_err(|_| invalid(format!("{cpus} vCPUs is more than libkrun's limit of 255")))?;
    let memory = spec.memory_mib.unwrap_or(DEFAULT_MEMORY_MIB);
    if memory == 0 {
        return Err(invalid("memory must be at least 1 MiB".into()));
    }
    if memory > host.memory_mib {
        return Err(invalid(format!("{memory} MiB of memory requested but this host has {} MiB", host.memory_mib)));
    }
    let memory_mib = usize::try_from(memory).map_err(|_| invalid(format!("{memory} MiB does not fit this host")))?;

    // Shares: the root directory, the writable layer, the mounts.
    let mut shares = Vec::new();
    if let KrunRoot::Directory { path } = &config.root {
        let dir = path
            .clone()
            .or_else(|| spec.rootfs.clone())
            .ok_or_else(|| invalid("no root filesystem: set the sandbox rootfs or a krun root disk".into()))?;
        if !dir.is_dir() {
            return Err(invalid(format!("root filesystem {} is not a directory", dir.display())));
        }
        shares.push(SharePlan { tag: ROOTFS_TAG.into(), host: dir, read_only: true });
    }
    let upper_dir = spec.sandbox_dir.join(UPPER_DIR);
    shares.push(SharePlan { tag: UPPER_TAG.into(), host: upper_dir.clone(), read_only: false });
    let mut mounts = Vec::new();
    for (i, m) in spec.mounts.iter().enumerate() {
        if !m.guest.starts_with('/') {
            return Err(invalid(format!("mount target {:?} is not an absolute path", m.guest)));
        }
        if !m.host.is_dir() {
            return Err(invalid(format!(
                "mount source {} is not a directory (virtio-fs shares directories)",
                m.host.display()
            )));
        }
        let tag = format!("mnt{i}");
        shares.push(SharePlan { tag: tag.clone(), host: m.host.clone(), read_only: m.readonly });
        mounts.push(VmMount { tag, guest_path: m.guest.clone(), readonly: m.readonly });
    }

    // The agent.
    let agent_source = spec
        .agent_binary
        .clone()
        .ok_or_else(|| invalid("no agent binary given: the krun backend needs the static alcove-agent".into()))?;
    if !agent_source.is_file() {
        return Err(invalid(format!("agent binary {} does not exist", agent_source.display())));
    }
    if spec.sandbox_dir.as_os_str().is_empty() {
        return Err(invalid("the sandbox directory is not set".into()));
    }
    let boot_dir = spec.sandbox_dir.join(BOOT_DIR);
    for dir in shares.iter().map(|s| &s.host).chain([&boot_dir]) {
        if dir.to_str().is_none() {
            return Err(invalid(format!("virtio-fs share directory {} is not valid UTF-8", dir.display())));
        }
    }

    let network = spec.network.as_ref().map(check_network).transpose()?;

    let agent_config = AgentConfig {
        hostname: spec.name.clone(),
        mode: AgentMode::Vm,
        env: spec.env.clone(),
        workdir: spec.workdir.clone(),
        user: spec.user.clone(),
        vm: Some(VmBoot {
            root,
            upper_tag: Some(UPPER_TAG.into()),
            mounts,
            volumes,
            name_files: alcove_backend::names::render(spec)
                .into_iter()
                .map(|(path, content)| NameFile { path: path.into(), content })
                .collect(),
            network,
        }),
        heartbeat_ms: spec.heartbeat.map(|d| d.as_millis().clamp(1, u32::MAX as u128) as u32),
    };
    Ok(VmPlan {
        vcpus,
        memory_mib,
        krunfw,
        init_path: AGENT_GUEST_PATH.into(),
        boot_dir,
        shares,
        disks,
        console_output: spec.guest_log.clone(),
        agent_port: AGENT_PORT.into(),
        exec: ExecPlan {
            path: AGENT_GUEST_PATH.into(),
            args: vec!["--config".into(), CONFIG_GUEST_PATH.into()],
            workdir: "/".into(),
        },
        agent_source,
        agent_config,
        upper_dir,
        net: spec.network.as_ref().map(|n| NetPlan { mac: n.mac }),
    })
}

/// Checks the guest's link as the agent will ([`alcove_link`]) and against
/// the VM's MTU limit; returns what the agent configures.
fn check_network(net: &GuestNetwork) -> Result<VmNetwork, BackendError> {
    let bad = |e: alcove_link::LinkError| invalid(format!("network: {e}"));
    alcove_link::check_name(&net.interface).map_err(bad)?;
    alcove_link::check_mtu(net.mtu).map_err(bad)?;
    if net.mtu > MAX_VM_MTU {
        return Err(invalid(format!(
            "network: MTU {} is larger than a microVM's link carries ({MAX_VM_MTU})",
            net.mtu
        )));
    }
    alcove_link::check_ipv4(net.address_v4, net.prefix_v4, net.gateway_v4).map_err(bad)?;
    alcove_link::check_ipv6(net.address_v6, net.prefix_v6, net.gateway_v6).map_err(bad)?;
    if net.mac[0] & 1 == 1 || net.mac == [0; 6] {
        return Err(invalid(format!("network: MAC address {:02x?} is not a unicast address", net.mac)));
    }
    Ok(VmNetwork {
        interface: net.interface.clone(),
        mtu: net.mtu,
        address_v4: net.address_v4,
        prefix_v4: net.prefix_v4,
        gateway_v4: net.gateway_v4,
        address_v6: net.address_v6,
        prefix_v6: net.prefix_v6,
        gateway_v6: net.gateway_v6,
    })
}

fn check_volume(v: &KrunVolume, earlier: &[DiskPlan]) -> Result<(), BackendError> {
    let ok_chars = v.id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if v.id.is_empty() || v.id.len() > MAX_DISK_ID || !ok_chars {
        return Err(invalid(format!(
            "volume id {:?} must be 1 to {MAX_DISK_ID} characters of letters, digits, '-' or '_'",
            v.id
        )));
    }
    if earlier.iter().any(|d| d.id == v.id) {
        return Err(invalid(format!("volume id {:?} is used twice (\"root\" is reserved)", v.id)));
    }
    if !v.guest_path.starts_with('/') {
        return Err(invalid(format!("volume {:?}: guest path {:?} is not absolute", v.id, v.guest_path)));
    }
    Ok(())
}

/// Checks a disk image: the declared format is known, the file exists and
/// its header agrees with the format. Returns the format to attach with.
fn check_disk(what: &str, path: &Path, declared: Option<&str>) -> Result<DiskFormat, BackendError> {
    let declared = match declared {
        Some(s) => Some(
            DiskFormat::parse(s)
                .ok_or_else(|| invalid(format!("{what}: unknown disk format {s:?} (expected raw, qcow2 or vmdk)")))?,
        ),
        None => None,
    };
    let meta = fs::metadata(path)
        .map_err(|e| invalid(format!("{what}: disk image {} cannot be read: {e}", path.display())))?;
    if !meta.is_file() {
        return Err(invalid(format!("{what}: disk image {} is not a file", path.display())));
    }
    let mut head = [0u8; 32];
    let n = File::open(path)
        .and_then(|mut f| f.read(&mut head))
        .map_err(|e| invalid(format!("{what}: disk image {} cannot be read: {e}", path.display())))?;
    let sniffed = DiskFormat::sniff(&head[..n]);
    match declared {
        None => Ok(sniffed),
        Some(d) if d == sniffed => Ok(d),
        Some(d) => Err(invalid(format!("{what}: {} is declared {d} but its header says {sniffed}", path.display()))),
    }
}

/// Writes the trampoline (agent copy, `.alcove/agent.json`, mount points)
/// and creates the writable layer directory and the guest log's directory.
pub fn write_boot_share(plan: &VmPlan) -> Result<(), BackendError> {
    let io = |what: &str, p: &Path, e: std::io::Error| BackendError::io(format!("{what} {}", p.display()), e);
    let boot = &plan.boot_dir;
    // The sandbox directory (and any missing parent under the home) is the
    // owner's alone; what is inside the boot share is seen by the guest.
    if let Some(sandbox_dir) = boot.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(sandbox_dir)
            .map_err(|e| io("cannot create", sandbox_dir, e))?;
    }
    let mut dirs = fs::DirBuilder::new();
    dirs.recursive(true).mode(0o755);
    for d in ["dev", "proc", "sys", "tmp", "run", "mnt"] {
        let p = boot.join(d);
        dirs.create(&p).map_err(|e| io("cannot create", &p, e))?;
    }
    let alcove = boot.join(".alcove");
    fs::DirBuilder::new().recursive(true).mode(0o700).create(&alcove).map_err(|e| io("cannot create", &alcove, e))?;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(&plan.upper_dir)
        .map_err(|e| io("cannot create", &plan.upper_dir, e))?;
    if let Some(parent) = plan.console_output.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::DirBuilder::new().recursive(true).mode(0o700).create(parent).map_err(|e| io("cannot create", parent, e))?;
    }

    // The agent: a private copy, replaced atomically.
    let agent = boot.join(AGENT_GUEST_PATH.trim_start_matches('/'));
    let agent_tmp = boot.join(".alcove-agent.tmp");
    let _ = fs::remove_file(&agent_tmp);
    fs::copy(&plan.agent_source, &agent_tmp).map_err(|e| io("cannot copy the agent to", &agent_tmp, e))?;
    fs::set_permissions(&agent_tmp, fs::Permissions::from_mode(0o755))
        .map_err(|e| io("cannot chmod", &agent_tmp, e))?;
    fs::rename(&agent_tmp, &agent).map_err(|e| io("cannot install", &agent, e))?;

    // The config: 0600, replaced atomically.
    let cfg = boot.join(CONFIG_GUEST_PATH.trim_start_matches('/'));
    let cfg_tmp = alcove.join("agent.json.tmp");
    let _ = fs::remove_file(&cfg_tmp);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&cfg_tmp)
        .map_err(|e| io("cannot create", &cfg_tmp, e))?;
    f.write_all(&plan.agent_config.to_json())
        .and_then(|_| f.sync_all())
        .map_err(|e| io("cannot write", &cfg_tmp, e))?;
    fs::rename(&cfg_tmp, &cfg).map_err(|e| io("cannot install", &cfg, e))?;
    Ok(())
}
