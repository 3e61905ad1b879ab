//! Guest filesystem set-up as data: a plan of [`Step`]s built by pure
//! functions from the configuration (unit-tested), then executed.
//!
//! Jail: the host has already pivoted into the root; the agent adds /proc,
//! /sys (read-only), /dev/pts (a new instance), /dev/shm and /tmp where they
//! are not mounted yet. VM: the agent first assembles the root (read-only
//! lower, overlay with a writable upper, extra shares and volumes) under a
//! tmpfs staging directory, pivots into it, then does the same base mounts
//! with a devtmpfs /dev.
//!
//! Invariant: base mounts are best effort (a failure is logged and the agent
//! still serves); root assembly in a VM is all-or-nothing.

use crate::sys;
use alcove_protocol::agent_config::{VmBoot, VmRoot};
use std::collections::HashSet;
use std::io;
use std::path::{Component, Path, PathBuf};

macro_rules! log {
    ($($arg:tt)*) => { $crate::logging::log(format_args!($($arg)*)) };
}

/// Why the filesystem could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// A path in the configuration is not absolute or escapes with `..`.
    #[error("guest path {0:?} must be absolute and must not contain '..'")]
    BadGuestPath(String),
    /// A block device with this id was not found.
    #[error("no block device with id {0:?} (looked in /dev/disk/by-id and /sys/block/*/serial)")]
    NoDevice(String),
    /// No filesystem type could mount a device.
    #[error("cannot mount {device} at {target}: no filesystem type worked ({tried})")]
    NoFsType {
        /// Device path.
        device: String,
        /// Mount point.
        target: String,
        /// The types tried.
        tried: String,
    },
    /// A system call failed.
    #[error("{what}: {source}")]
    Sys {
        /// The step.
        what: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

fn sys_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> MountError {
    let what = what.into();
    move |source| MountError::Sys { what, source }
}

/// Mount flags used by the plans.
pub mod flags {
    /// Read-only.
    pub const RDONLY: u64 = libc::MS_RDONLY;
    /// No setuid.
    pub const NOSUID: u64 = libc::MS_NOSUID;
    /// No device files.
    pub const NODEV: u64 = libc::MS_NODEV;
    /// No execution.
    pub const NOEXEC: u64 = libc::MS_NOEXEC;
    /// Bind mount.
    pub const BIND: u64 = libc::MS_BIND;
}

/// One action of a plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Create a directory and its parents if missing.
    Mkdir(String),
    /// Mount a filesystem.
    Mount {
        /// Source (device, tag or a dummy name).
        source: String,
        /// Mount point.
        target: String,
        /// Filesystem type.
        fstype: String,
        /// `MS_*` flags.
        flags: u64,
        /// Options string.
        data: Option<String>,
    },
    /// Mount the block device with this id (found at run time).
    MountBlock {
        /// Device id given to the VMM.
        device_id: String,
        /// Mount point.
        target: String,
        /// Filesystem type; probed when absent.
        fstype: Option<String>,
        /// Read-only.
        readonly: bool,
    },
}

fn mount(source: &str, target: &str, fstype: &str, flags: u64, data: Option<&str>) -> Step {
    Step::Mount {
        source: source.into(),
        target: target.into(),
        fstype: fstype.into(),
        flags,
        data: data.map(str::to_string),
    }
}

/// Parses /proc/self/mountinfo into the set of mount points.
pub fn parse_mountinfo(text: &str) -> HashSet<String> {
    text.lines().filter_map(|l| l.split(' ').nth(4)).map(unescape_octal).collect()
}

fn unescape_octal(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            let v = u32::from(b[i + 1] - b'0') * 64 + u32::from(b[i + 2] - b'0') * 8 + u32::from(b[i + 3] - b'0');
            out.push(v as u8);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The current mount points (empty if /proc is not mounted).
pub fn mounted_points() -> HashSet<String> {
    std::fs::read_to_string("/proc/self/mountinfo").map(|t| parse_mountinfo(&t)).unwrap_or_default()
}

/// The base mounts of a guest, skipping what is already mounted. `vm`
/// adds a devtmpfs /dev (a jail's /dev is prepared by the host).
pub fn base_plan(mounted: &HashSet<String>, vm: bool) -> Vec<Step> {
    use flags::*;
    let mut plan = Vec::new();
    let mut add = |target: &str, step: Step| {
        if !mounted.contains(target) {
            plan.push(Step::Mkdir(target.into()));
            plan.push(step);
        }
    };
    add("/proc", mount("proc", "/proc", "proc", NOSUID | NODEV | NOEXEC, None));
    add("/sys", mount("sysfs", "/sys", "sysfs", RDONLY | NOSUID | NODEV | NOEXEC, None));
    if vm {
        add("/dev", mount("devtmpfs", "/dev", "devtmpfs", NOSUID, Some("mode=0755")));
    }
    add(
        "/dev/pts",
        mount("devpts", "/dev/pts", "devpts", NOSUID | NOEXEC, Some("newinstance,ptmxmode=0666,mode=0620")),
    );
    add("/dev/shm", mount("shm", "/dev/shm", "tmpfs", NOSUID | NODEV, Some("mode=1777")));
    add("/tmp", mount("tmpfs", "/tmp", "tmpfs", NOSUID | NODEV, Some("mode=1777")));
    plan
}

/// Checks a guest path: absolute, no `..`.
pub fn check_guest_path(p: &str) -> Result<(), MountError> {
    let path = Path::new(p);
    if !path.is_absolute() || path.components().any(|c| c == Component::ParentDir) {
        return Err(MountError::BadGuestPath(p.to_string()));
    }
    Ok(())
}

/// Joins an absolute guest path under `root`.
pub fn under(root: &str, guest: &str) -> String {
    let rel = guest.trim_start_matches('/');
    if rel.is_empty() {
        root.to_string()
    } else {
        format!("{}/{rel}", root.trim_end_matches('/'))
    }
}

/// Paths of the staging area.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stage {
    /// The tmpfs holding everything.
    pub dir: String,
    /// Lower (read-only) layer.
    pub lower: String,
    /// Writable directory holding upper/ and work/.
    pub rw: String,
    /// The assembled root.
    pub root: String,
}

impl Stage {
    /// The staging layout under `dir`.
    pub fn new(dir: &str) -> Stage {
        let d = dir.trim_end_matches('/');
        Stage { dir: d.into(), lower: format!("{d}/lower"), rw: format!("{d}/rw"), root: format!("{d}/root") }
    }
}

/// How to assemble a VM's root under `stage` (before pivoting into
/// `stage.root`).
pub fn vm_root_plan(boot: &VmBoot, stage: &Stage) -> Result<Vec<Step>, MountError> {
    use flags::*;
    let mut plan = vec![
        Step::Mkdir(stage.dir.clone()),
        mount("alcove-stage", &stage.dir, "tmpfs", NOSUID | NODEV, Some("mode=0700")),
        Step::Mkdir(stage.lower.clone()),
        Step::Mkdir(stage.rw.clone()),
        Step::Mkdir(stage.root.clone()),
    ];
    match &boot.root {
        VmRoot::VirtioFs { tag } => plan.push(mount(tag, &stage.lower, "virtiofs", RDONLY, None)),
        VmRoot::Block { device_id, fstype } => plan.push(Step::MountBlock {
            device_id: device_id.clone(),
            target: stage.lower.clone(),
            fstype: fstype.clone(),
            readonly: true,
        }),
    }
    if let Some(tag) = &boot.upper_tag {
        plan.push(mount(tag, &stage.rw, "virtiofs", 0, None));
    }
    let (upper, work) = (format!("{}/upper", stage.rw), format!("{}/work", stage.rw));
    plan.push(Step::Mkdir(upper.clone()));
    plan.push(Step::Mkdir(work.clone()));
    let opts = format!("lowerdir={},upperdir={upper},workdir={work}", stage.lower);
    plan.push(mount("overlay", &stage.root, "overlay", 0, Some(&opts)));
    for m in &boot.mounts {
        check_guest_path(&m.guest_path)?;
        let target = under(&stage.root, &m.guest_path);
        plan.push(Step::Mkdir(target.clone()));
        plan.push(mount(&m.tag, &target, "virtiofs", if m.readonly { RDONLY } else { 0 }, None));
    }
    for v in &boot.volumes {
        check_guest_path(&v.guest_path)?;
        let target = under(&stage.root, &v.guest_path);
        plan.push(Step::Mkdir(target.clone()));
        plan.push(Step::MountBlock { device_id: v.device_id.clone(), target, fstype: None, readonly: v.readonly });
    }
    Ok(plan)
}

/// Filesystem types tried, in order, when a device's type is not given.
pub const PROBE_FSTYPES: &[&str] = &["ext4", "xfs", "btrfs", "erofs", "squashfs", "vfat"];

/// Finds the device node of a virtio-blk device by id: the udev link
/// `<dev>/disk/by-id/virtio-<id>`, else the `serial` attribute under
/// `<sys>/block/*/serial`.
pub fn find_block_device(device_id: &str, dev: &Path, sys: &Path) -> Option<PathBuf> {
    let link = dev.join("disk/by-id").join(format!("virtio-{device_id}"));
    if link.exists() {
        return Some(link);
    }
    let mut names: Vec<_> = std::fs::read_dir(sys.join("block")).ok()?.flatten().map(|e| e.file_name()).collect();
    names.sort();
    names.into_iter().find_map(|name| {
        let serial = std::fs::read_to_string(sys.join("block").join(&name).join("serial")).ok()?;
        (serial.trim_end_matches(['\n', '\0']).trim() == device_id).then(|| dev.join(&name))
    })
}

fn mkdir_p(path: &str) -> io::Result<()> {
    std::fs::create_dir_all(path)
}

/// Runs one step.
pub fn run_step(step: &Step) -> Result<(), MountError> {
    match step {
        Step::Mkdir(p) => mkdir_p(p).map_err(sys_err(format!("create {p}"))),
        Step::Mount { source, target, fstype, flags, data } => {
            let data_c = data.as_deref().map(sys::cstring).transpose().map_err(sys_err(format!("mount {target}")))?;
            sys::mount(
                &sys::cstring(source).map_err(sys_err("mount source"))?,
                &sys::cstring(target).map_err(sys_err("mount target"))?,
                &sys::cstring(fstype).map_err(sys_err("fstype"))?,
                *flags as libc::c_ulong,
                data_c.as_deref(),
            )
            .map_err(sys_err(format!("mount {fstype} {source} at {target}")))
        }
        Step::MountBlock { device_id, target, fstype, readonly } => {
            let dev = find_block_device(device_id, Path::new("/dev"), Path::new("/sys"))
                .ok_or_else(|| MountError::NoDevice(device_id.clone()))?;
            let dev_s = dev.to_string_lossy().into_owned();
            let flags = if *readonly { flags::RDONLY } else { 0 };
            let types: Vec<&str> = match fstype {
                Some(t) => vec![t.as_str()],
                None => PROBE_FSTYPES.to_vec(),
            };
            let mut last = None;
            for t in &types {
                match run_step(&mount(&dev_s, target, t, flags, None)) {
                    Ok(()) => return Ok(()),
                    Err(e) => last = Some(e),
                }
            }
            match (fstype, last) {
                (Some(_), Some(e)) => Err(e),
                _ => Err(MountError::NoFsType { device: dev_s, target: target.clone(), tried: types.join(", ") }),
            }
        }
    }
}

/// Runs a plan, stopping at the first failure.
pub fn run_all(plan: &[Step]) -> Result<(), MountError> {
    plan.iter().try_for_each(run_step)
}

/// Runs a plan, logging failures and going on (for a failed mount, its
/// preceding mkdir is harmless).
pub fn run_best_effort(plan: &[Step]) {
    for s in plan {
        if let Err(e) = run_step(s) {
            log!("warning: {e}");
        }
    }
}

/// Makes /dev/ptmx refer to this /dev/pts instance: a symlink when missing,
/// a bind mount over a device node.
pub fn setup_ptmx() {
    let ptmx = Path::new("/dev/ptmx");
    match std::fs::symlink_metadata(ptmx) {
        Ok(md) if md.file_type().is_symlink() => {}
        Ok(_) => {
            let step = mount("/dev/pts/ptmx", "/dev/ptmx", "none", flags::BIND, None);
            if let Err(e) = run_step(&step) {
                log!("warning: cannot bind /dev/pts/ptmx over /dev/ptmx: {e}");
            }
        }
        Err(_) => {
            if let Err(e) = std::os::unix::fs::symlink("pts/ptmx", ptmx) {
                log!("warning: cannot link /dev/ptmx: {e}");
            }
        }
    }
}

/// Makes every mount private, then pivots into `new_root` and detaches the
/// old root (no directory for it is needed).
pub fn pivot_into(new_root: &str) -> Result<(), MountError> {
    let none = c"none";
    sys::mount(none, c"/", none, libc::MS_REC | libc::MS_PRIVATE, None).map_err(sys_err("make / private"))?;
    let root_c = sys::cstring(new_root).map_err(sys_err("new root"))?;
    // SAFETY: valid C strings; plain syscalls.
    unsafe {
        sys::check(libc::chdir(root_c.as_ptr())).map_err(sys_err(format!("chdir {new_root}")))?;
        sys::check(libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) as libc::c_int)
            .map_err(sys_err("pivot_root"))?;
        sys::check(libc::umount2(c".".as_ptr(), libc::MNT_DETACH)).map_err(sys_err("detach the old root"))?;
        sys::check(libc::chdir(c"/".as_ptr())).map_err(sys_err("chdir /"))?;
    }
    Ok(())
}

/// The current hostname.
pub fn hostname() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: buf is valid for its length.
    if unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } != 0 {
        return None;
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    Some(String::from_utf8_lossy(&buf[..end]).into_owned())
}

/// Sets the hostname unless it is already right (a jail sets it before
/// dropping CAP_SYS_ADMIN); a failure is logged.
pub fn set_hostname(name: &str) {
    if name.is_empty() || hostname().as_deref() == Some(name) {
        return;
    }
    // SAFETY: name is valid for name.len() bytes.
    let rc = unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) };
    if rc != 0 {
        log!("warning: cannot set the hostname to {name:?}: {}", io::Error::last_os_error());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alcove_protocol::agent_config::{VmMount, VmVolume};

    #[test]
    fn setting_the_current_hostname_is_a_no_op() {
        let current = hostname().expect("hostname");
        // Works even without CAP_SYS_ADMIN because nothing changes.
        set_hostname(&current);
        assert_eq!(hostname().as_deref(), Some(current.as_str()));
    }

    #[test]
    fn mountinfo_parses_with_escapes() {
        let text = "22 1 0:21 / / rw,relatime - overlay overlay rw\n\
                    23 22 0:5 / /proc rw - proc proc rw\n\
                    24 22 0:6 / /my\\040dir rw - tmpfs tmpfs rw\n";
        let set = parse_mountinfo(text);
        assert!(set.contains("/") && set.contains("/proc") && set.contains("/my dir"));
        assert_eq!(set.len(), 3);
    }

    #[test]
    fn base_plan_skips_what_is_mounted() {
        let mounted: HashSet<String> = ["/", "/proc", "/tmp"].iter().map(|s| s.to_string()).collect();
        let plan = base_plan(&mounted, false);
        let targets: Vec<&str> = plan
            .iter()
            .filter_map(|s| match s {
                Step::Mount { target, .. } => Some(target.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(targets, vec!["/sys", "/dev/pts", "/dev/shm"]);
        let sys_step = plan.iter().find(|s| matches!(s, Step::Mount { target, .. } if target == "/sys")).expect("sys");
        let Step::Mount { flags: f, .. } = sys_step else { unreachable!() };
        assert_ne!(f & flags::RDONLY, 0, "/sys is read-only");
        let pts = plan.iter().find(|s| matches!(s, Step::Mount { target, .. } if target == "/dev/pts")).expect("pts");
        let Step::Mount { data, .. } = pts else { unreachable!() };
        assert!(data.as_deref().is_some_and(|d| d.contains("newinstance") && d.contains("ptmxmode=0666")));
        let vm_targets: Vec<String> = base_plan(&HashSet::new(), true)
            .into_iter()
            .filter_map(|s| match s {
                Step::Mount { target, fstype, .. } => Some(format!("{target}:{fstype}")),
                _ => None,
            })
            .collect();
        assert_eq!(
            vm_targets,
            vec!["/proc:proc", "/sys:sysfs", "/dev:devtmpfs", "/dev/pts:devpts", "/dev/shm:tmpfs", "/tmp:tmpfs"]
        );
    }

    #[test]
    fn vm_plan_builds_a_read_only_lower_and_an_overlay() {
        let boot = VmBoot {
            root: VmRoot::Block { device_id: "rootfs".into(), fstype: Some("ext4".into()) },
            upper_tag: Some("upper".into()),
            mounts: vec![VmMount { tag: "data".into(), guest_path: "/data".into(), readonly: true }],
            volumes: vec![VmVolume { device_id: "vol1".into(), guest_path: "/var/lib/db".into(), readonly: false }],
            name_files: vec![],
            network: None,
        };
        let st = Stage::new("/.alcove/stage");
        let plan = vm_root_plan(&boot, &st).expect("plan");
        assert!(plan.contains(&Step::MountBlock {
            device_id: "rootfs".into(),
            target: "/.alcove/stage/lower".into(),
            fstype: Some("ext4".into()),
            readonly: true
        }));
        let upper_idx = plan
            .iter()
            .position(|s| matches!(s, Step::Mount { source, fstype, .. } if source == "upper" && fstype == "virtiofs"))
            .expect("upper share");
        let overlay_idx =
            plan.iter().position(|s| matches!(s, Step::Mount { fstype, .. } if fstype == "overlay")).expect("overlay");
        assert!(upper_idx < overlay_idx, "the upper share is mounted before the overlay");
        let Step::Mount { data: Some(opts), target, .. } = &plan[overlay_idx] else { unreachable!() };
        assert_eq!(target, "/.alcove/stage/root");
        assert_eq!(
            opts,
            "lowerdir=/.alcove/stage/lower,upperdir=/.alcove/stage/rw/upper,workdir=/.alcove/stage/rw/work"
        );
        let data_idx = plan
            .iter()
            .position(|s| matches!(s, Step::Mount { source, target, flags: f, .. } if source == "data" && target == "/.alcove/stage/root/data" && f & flags::RDONLY != 0))
            .expect("data share");
        assert!(data_idx > overlay_idx, "extra mounts go inside the assembled root");
        assert!(plan.contains(&Step::MountBlock {
            device_id: "vol1".into(),
            target: "/.alcove/stage/root/var/lib/db".into(),
            fstype: None,
            readonly: false
        }));
    }

    #[test]
    fn vm_plan_with_tmpfs_upper_and_virtiofs_root() {
        let boot = VmBoot {
            root: VmRoot::VirtioFs { tag: "rootfs".into() },
            upper_tag: None,
            mounts: vec![],
            volumes: vec![],
            name_files: vec![],
            network: None,
        };
        let plan = vm_root_plan(&boot, &Stage::new("/s")).expect("plan");
        assert!(plan.contains(&mount("rootfs", "/s/lower", "virtiofs", flags::RDONLY, None)));
        // Without an upper share, upper/ and work/ live on the staging tmpfs.
        assert!(!plan.iter().any(|s| matches!(s, Step::Mount { target, .. } if target == "/s/rw")));
        assert!(plan.contains(&Step::Mkdir("/s/rw/upper".into())));
    }

    #[test]
    fn escaping_guest_paths_are_refused() {
        let boot = VmBoot {
            root: VmRoot::VirtioFs { tag: "r".into() },
            upper_tag: None,
            mounts: vec![VmMount { tag: "x".into(), guest_path: "/a/../../etc".into(), readonly: false }],
            volumes: vec![],
            name_files: vec![],
            network: None,
        };
        assert!(matches!(vm_root_plan(&boot, &Stage::new("/s")), Err(MountError::BadGuestPath(_))));
        assert_eq!(under("/s/root", "/"), "/s/root");
        assert_eq!(under("/s/root/", "/a/b"), "/s/root/a/b");
    }

    #[test]
    fn block_devices_are_found_by_serial() {
        let d = tempfile::tempdir().expect("tempdir");
        let sys = d.path().join("sys");
        let dev = d.path().join("dev");
        for (name, serial) in [("vda", "rootfs"), ("vdb", "vol1")] {
            std::fs::create_dir_all(sys.join("block").join(name)).expect("mkdir");
            std::fs::write(sys.join("block").join(name).join("serial"), format!("{serial}\n")).expect("serial");
        }
        assert_eq!(find_block_device("vol1", &dev, &sys), Some(dev.join("vdb")));
        assert_eq!(find_block_device("nope", &dev, &sys), None);
        std::fs::create_dir_all(dev.join("disk/by-id")).expect("mkdir");
        std::fs::write(dev.join("disk/by-id/virtio-nope"), b"").expect("link stand-in");
        assert_eq!(find_block_device("nope", &dev, &sys), Some(dev.join("disk/by-id/virtio-nope")));
    }
}
