//! The set-up steps of the jail's first process, as reported on the error
//! pipe, and their descriptions for the host's one-line error.

use super::{AGENT_PATH, DEVICES, MASKED_DIR_NAMES};

/// A set-up step, as reported on the error pipe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub(crate) enum Step {
    Relocate = 1,
    WaitGo,
    Signals,
    MakePrivate,
    Hostname,
    Overlay,
    EnterRoot,
    SystemDir,
    DevTmpfs,
    DevNode,
    DevLink,
    DevPts,
    DevShm,
    Proc,
    ProcMask,
    Sys,
    CgroupView,
    Tmp,
    AgentDir,
    AgentBind,
    VolumeOpen,
    PivotRoot,
    VolumeTarget,
    VolumeMount,
    Loopback,
    Capabilities,
    NoNewPrivs,
    Seccomp,
    Fds,
    Exec,
    JoinCgroup,
    BecomeRoot,
    CgroupNamespace,
    MaskDir,
}

impl Step {
    const ALL: [Step; 34] = [
        Step::Relocate,
        Step::WaitGo,
        Step::Signals,
        Step::MakePrivate,
        Step::Hostname,
        Step::Overlay,
        Step::EnterRoot,
        Step::SystemDir,
        Step::DevTmpfs,
        Step::DevNode,
        Step::DevLink,
        Step::DevPts,
        Step::DevShm,
        Step::Proc,
        Step::ProcMask,
        Step::Sys,
        Step::CgroupView,
        Step::Tmp,
        Step::AgentDir,
        Step::AgentBind,
        Step::VolumeOpen,
        Step::PivotRoot,
        Step::VolumeTarget,
        Step::VolumeMount,
        Step::Loopback,
        Step::Capabilities,
        Step::NoNewPrivs,
        Step::Seccomp,
        Step::Fds,
        Step::Exec,
        Step::JoinCgroup,
        Step::BecomeRoot,
        Step::CgroupNamespace,
        Step::MaskDir,
    ];

    pub fn from_u32(v: u32) -> Option<Step> {
        Step::ALL.iter().copied().find(|s| *s as u32 == v)
    }

    /// What the child was doing, for the error message.
    pub fn describe(self, item: u32, plan_items: &[String], sys_items: &[&str], cgroup_items: &[String]) -> String {
        let item_name = |list: &[String]| list.get(item as usize).cloned().unwrap_or_else(|| format!("#{item}"));
        let sys_name = || sys_items.get(item as usize).map(|s| s.to_string()).unwrap_or_else(|| format!("#{item}"));
        match self {
            Step::Relocate => "arranging file descriptors".into(),
            Step::WaitGo => "receiving the host's go and mounts".into(),
            Step::Signals => "resetting signal handlers".into(),
            Step::MakePrivate => "making the mount namespace private".into(),
            Step::Hostname => "setting the hostname".into(),
            Step::Overlay => "mounting the overlay root (upper/ and work/ must be on one filesystem that supports overlayfs upper layers, and the sandbox directory reachable by root)".into(),
            Step::EnterRoot => "entering the new root".into(),
            Step::SystemDir => format!("preparing /{} in the root filesystem (it must be a directory or absent)", sys_name()),
            Step::DevTmpfs => "mounting the /dev tmpfs".into(),
            Step::DevNode => format!("bind-mounting /dev/{}", DEVICES.get(item as usize).map(|d| d.to_str().unwrap_or("?")).unwrap_or("?")),
            Step::DevLink => "creating /dev symlinks".into(),
            Step::DevPts => "mounting /dev/pts".into(),
            Step::DevShm => "mounting /dev/shm".into(),
            Step::Proc => "mounting /proc".into(),
            Step::ProcMask => "making /proc entries read-only or hidden".into(),
            Step::Sys => "mounting /sys read-only".into(),
            Step::CgroupView => "showing the jail's memory cgroup read-only under /sys/fs/cgroup".into(),
            Step::Tmp => "mounting /tmp".into(),
            Step::AgentDir => "mounting /.alcove".into(),
            Step::AgentBind => "bind-mounting the agent binary".into(),
            Step::VolumeOpen => format!("opening mount source {}", item_name(plan_items)),
            Step::PivotRoot => "pivoting into the new root".into(),
            Step::VolumeTarget => format!("creating the mount point for {}", item_name(plan_items)),
            Step::VolumeMount => format!("mounting {}", item_name(plan_items)),
            Step::Loopback => "bringing up the loopback interface".into(),
            Step::Capabilities => "dropping capabilities".into(),
            Step::NoNewPrivs => "setting no_new_privs".into(),
            Step::Seccomp => "installing the seccomp filter".into(),
            Step::Fds => "arranging the agent's file descriptors".into(),
            Step::Exec => format!("executing the init program ({AGENT_PATH})"),
            Step::JoinCgroup => format!("joining the jail's cgroup (writing to {})", item_name(cgroup_items)),
            Step::BecomeRoot => "becoming root of the jail's user namespace".into(),
            Step::CgroupNamespace => "entering a new cgroup namespace".into(),
            Step::MaskDir => format!(
                "masking /{}",
                MASKED_DIR_NAMES.get(item as usize).copied().unwrap_or("?")
            ),
        }
    }
}
