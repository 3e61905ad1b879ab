//! The jail's first process between `clone` and `exec`.
//!
//! Invariants:
//! - Everything the child needs is prepared by the parent in a
//!   [`ChildPlan`] before `clone`: paths as C strings, argv/envp arrays, the
//!   seccomp programs and the capability list. The child only makes system
//!   calls — it never allocates, takes a lock or touches Rust's stdio, so it
//!   is safe to clone from a multi-threaded process.
//! - The child does nothing visible until the parent sends the go byte on
//!   the sync pipe (after writing the user-namespace maps and placing the
//!   child in its cgroup), and exits quietly if the parent goes away first.
//! - Every mount is made inside the child's own mount namespace, which was
//!   made recursively private first: nothing propagates to the host and
//!   everything vanishes with the namespace.
//! - Any failure is reported on the error pipe as `(step, item, errno)` and
//!   ends the child with status 127; a successful `execve` closes the pipe
//!   (close-on-exec), which is how the parent learns that set-up is done.

use std::ffi::{CStr, CString};
use std::os::raw::{c_char, c_int, c_long, c_uint, c_ulong, c_void};
use std::ptr;

/// One extra host directory or file mounted into the jail.
pub(crate) struct VolumePlan {
    /// Host path (resolved by the parent).
    pub source: CString,
    /// Absolute guest path.
    pub target: CString,
    /// Guest directories to create first, outermost first.
    pub mkdirs: Vec<CString>,
    /// The source is a directory (else a file: an empty file is the mount point).
    pub is_dir: bool,
    /// Mount read-only.
    pub readonly: bool,
}

/// The jail's own memory cgroup, shown read-only at the path the agent
/// derives from /proc/self/cgroup, so that it counts OOM kills of this jail
/// only (never a kill elsewhere on the host).
pub(crate) struct CgroupView {
    /// The host directory of the jail's memory cgroup.
    pub source: CString,
    /// Directories to create in the tmpfs at `sys/fs/cgroup`, outermost
    /// first; the last one is the mount point.
    pub mkdirs: Vec<CString>,
}

/// Everything the child needs, prepared before `clone`.
pub(crate) struct ChildPlan {
    pub hostname: CString,
    pub merged: CString,
    pub overlay_opts: CString,
    /// Options to retry with when the kernel refuses `overlay_opts` (it
    /// predates `volatile`).
    pub overlay_fallback: Option<CString>,
    pub agent_source: CString,
    pub volumes: Vec<VolumePlan>,
    /// Set when the jail has a memory cgroup.
    pub cgroup_view: Option<CgroupView>,
    /// cgroup v1 `tasks` files the child joins itself, before anything else
    /// (see [`crate::cgroup::Cgroup::self_join_files`]).
    pub cgroup_join: Vec<CString>,
    /// Filled by the child with the detached mount of each volume.
    pub volume_fds: Vec<c_int>,
    /// Owns the strings `argv` points into.
    #[allow(dead_code)]
    pub argv_storage: Vec<CString>,
    pub argv: Vec<*const c_char>,
    /// Owns the strings `envp` points into.
    #[allow(dead_code)]
    pub envp_storage: Vec<CString>,
    pub envp: Vec<*const c_char>,
    pub seccomp: Vec<Vec<libc::sock_filter>>,
    pub drop_caps: Vec<c_int>,
    /// Parent's fds, as inherited.
    pub fd_channel: c_int,
    pub fd_config: c_int,
    pub fd_log: c_int,
    pub fd_null: c_int,
    pub fd_err_w: c_int,
    pub fd_sync_r: c_int,
    /// Fds of the parent side that the child closes at once.
    pub close_fds: Vec<c_int>,
}

/// Where the agent binary appears inside the jail.
pub const AGENT_PATH: &str = "/.alcove/agent";
const AGENT_PATH_C: &CStr = c"/.alcove/agent";

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
}

impl Step {
    const ALL: [Step; 31] = [
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
            Step::WaitGo => "waiting for the host".into(),
            Step::Signals => "resetting signal handlers".into(),
            Step::MakePrivate => "making the mount namespace private".into(),
            Step::Hostname => "setting the hostname".into(),
            Step::Overlay => "mounting the overlay root (upper/ and work/ must be on one filesystem that supports overlayfs upper layers)".into(),
            Step::EnterRoot => "entering the new root".into(),
            Step::SystemDir => format!("preparing /{} in the root filesystem (it must be a directory or absent)", sys_name()),
            Step::DevTmpfs => "mounting the /dev tmpfs".into(),
            Step::DevNode => format!("bind-mounting /dev/{}", DEVICES.get(item as usize).map(|d| d.to_str().unwrap_or("?")).unwrap_or("?")),
            Step::DevLink => "creating /dev symlinks".into(),
            Step::DevPts => "mounting /dev/pts".into(),
            Step::DevShm => "mounting /dev/shm".into(),
            Step::Proc => "mounting /proc".into(),
            Step::ProcMask => "masking sensitive /proc entries".into(),
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
        }
    }
}

/// Single-component directories of the new root that the jail mounts on.
pub(crate) const SYSTEM_DIRS: [&CStr; 5] = [c"dev", c"proc", c"sys", c"tmp", c".alcove"];
/// Their names for messages.
pub(crate) const SYSTEM_DIR_NAMES: [&str; 5] = ["dev", "proc", "sys", "tmp", ".alcove"];

const DEVICES: [&CStr; 6] = [c"null", c"zero", c"full", c"random", c"urandom", c"tty"];
const HOST_DEVICES: [&CStr; 6] =
    [c"/dev/null", c"/dev/zero", c"/dev/full", c"/dev/random", c"/dev/urandom", c"/dev/tty"];
const JAIL_DEVICES: [&CStr; 6] = [c"dev/null", c"dev/zero", c"dev/full", c"dev/random", c"dev/urandom", c"dev/tty"];
const DEV_LINKS: [(&CStr, &CStr); 5] = [
    (c"/proc/self/fd", c"dev/fd"),
    (c"/proc/self/fd/0", c"dev/stdin"),
    (c"/proc/self/fd/1", c"dev/stdout"),
    (c"/proc/self/fd/2", c"dev/stderr"),
    (c"pts/ptmx", c"dev/ptmx"),
];
/// /proc entries made read-only (bound onto themselves).
const PROC_READONLY: [&CStr; 5] = [c"proc/sys", c"proc/sysrq-trigger", c"proc/irq", c"proc/bus", c"proc/fs"];
/// /proc entries hidden behind /dev/null.
const PROC_MASKED: [&CStr; 4] = [c"proc/kcore", c"proc/keys", c"proc/timer_list", c"proc/latency_stats"];

const OPEN_TREE_CLONE: c_uint = 1;
const AT_RECURSIVE: c_uint = 0x8000;
const MOVE_MOUNT_F_EMPTY_PATH: c_uint = 0x4;
const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_NODEV: u64 = 0x4;
const CLOSE_RANGE_CLOEXEC: c_uint = 1 << 2;
const RELOCATE_BASE: c_int = 100;

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: c_int,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

fn errno() -> c_int {
    // SAFETY: __errno_location returns the calling thread's errno slot.
    unsafe { *libc::__errno_location() }
}

/// Reports a failure and ends the child.
fn fail(err_fd: c_int, step: Step, item: u32, errno: c_int) -> ! {
    let mut buf = [0u8; 12];
    buf[0..4].copy_from_slice(&(step as u32).to_ne_bytes());
    buf[4..8].copy_from_slice(&item.to_ne_bytes());
    buf[8..12].copy_from_slice(&errno.to_ne_bytes());
    // SAFETY: plain write of a stack buffer, then _exit.
    unsafe {
        libc::write(err_fd, buf.as_ptr().cast(), buf.len());
        libc::_exit(127)
    }
}

/// `check(rc)`: on a negative return, report `step` with errno.
macro_rules! check {
    ($err:expr, $step:expr, $item:expr, $rc:expr) => {{
        let rc = $rc;
        if rc < 0 {
            fail($err, $step, $item as u32, errno());
        }
        rc
    }};
}

unsafe fn mount(
    src: *const c_char,
    target: &CStr,
    fstype: *const c_char,
    flags: c_ulong,
    data: *const c_char,
) -> c_int {
    libc::mount(src, target.as_ptr(), fstype, flags, data as *const c_void)
}

fn null() -> *const c_char {
    ptr::null()
}

/// Creates `path` as a directory if absent; fails if it is something else
/// (a symlink is not followed: it could point out of the root).
unsafe fn ensure_dir(path: &CStr) -> Result<(), c_int> {
    let mut st: libc::stat = std::mem::zeroed();
    if libc::lstat(path.as_ptr(), &mut st) == 0 {
        if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
            return Ok(());
        }
        return Err(libc::ENOTDIR);
    }
    let e = errno();
    if e != libc::ENOENT {
        return Err(e);
    }
    if libc::mkdir(path.as_ptr(), 0o755) < 0 && errno() != libc::EEXIST {
        return Err(errno());
    }
    Ok(())
}

/// Creates an empty file at `path` if nothing is there.
unsafe fn ensure_file(path: &CStr, mode: libc::mode_t) -> Result<(), c_int> {
    let mut st: libc::stat = std::mem::zeroed();
    if libc::lstat(path.as_ptr(), &mut st) == 0 {
        return if st.st_mode & libc::S_IFMT == libc::S_IFDIR { Err(libc::EISDIR) } else { Ok(()) };
    }
    let fd = libc::open(
        path.as_ptr(),
        libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY | libc::O_CLOEXEC | libc::O_NOFOLLOW,
        mode,
    );
    if fd < 0 {
        return Err(errno());
    }
    libc::close(fd);
    Ok(())
}

/// Runs in the child after `clone`: sets the jail up and execs the init
/// program. Never returns.
///
/// # Safety
/// Must be called only in the freshly cloned child, with a plan prepared
/// by the parent.
pub(crate) unsafe fn child_main(plan: &mut ChildPlan) -> ! {
    // --- file descriptors: move ours out of the way of 0..=4 ------------
    let err = libc::fcntl(plan.fd_err_w, libc::F_DUPFD_CLOEXEC, RELOCATE_BASE);
    if err < 0 {
        // No way to report: the error pipe itself is unusable.
        libc::_exit(126);
    }
    let channel = check!(err, Step::Relocate, 0, libc::fcntl(plan.fd_channel, libc::F_DUPFD_CLOEXEC, RELOCATE_BASE));
    let config = check!(err, Step::Relocate, 1, libc::fcntl(plan.fd_config, libc::F_DUPFD_CLOEXEC, RELOCATE_BASE));
    let log = check!(err, Step::Relocate, 2, libc::fcntl(plan.fd_log, libc::F_DUPFD_CLOEXEC, RELOCATE_BASE));
    let devnull = check!(err, Step::Relocate, 3, libc::fcntl(plan.fd_null, libc::F_DUPFD_CLOEXEC, RELOCATE_BASE));
    let sync = check!(err, Step::Relocate, 4, libc::fcntl(plan.fd_sync_r, libc::F_DUPFD_CLOEXEC, RELOCATE_BASE));
    for fd in plan.close_fds.iter() {
        libc::close(*fd);
    }
    for fd in [plan.fd_err_w, plan.fd_channel, plan.fd_config, plan.fd_log, plan.fd_null, plan.fd_sync_r] {
        libc::close(fd);
    }

    // --- signals: nothing inherited from the sandbox process -------------
    let mut set: libc::sigset_t = std::mem::zeroed();
    libc::sigemptyset(&mut set);
    check!(err, Step::Signals, 0, libc::sigprocmask(libc::SIG_SETMASK, &set, ptr::null_mut()));
    for sig in 1..=libc::SIGRTMAX() {
        if sig != libc::SIGKILL && sig != libc::SIGSTOP {
            libc::signal(sig, libc::SIG_DFL);
        }
    }
    // The jail dies with the thread that launched it.
    check!(err, Step::Signals, 1, libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as c_ulong, 0, 0, 0));

    // --- cgroup v1: join as this (only) thread -----------------------------
    // Writing "0" to `tasks` moves the calling thread without the kernel's
    // global threadgroup lock, whose first writer after a quiet spell waits
    // out an RCU grace period (5–20 ms measured, where this write takes
    // 0.1–0.4 ms). Done before any set-up, so the limits hold from here on.
    for (i, path) in plan.cgroup_join.iter().enumerate() {
        let fd = check!(err, Step::JoinCgroup, i, libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC));
        check!(err, Step::JoinCgroup, i, libc::write(fd, b"0".as_ptr().cast(), 1));
        libc::close(fd);
    }

    // --- wait for the host: maps written, cgroup2 joined ------------------
    let mut go = 0u8;
    loop {
        let n = libc::read(sync, (&mut go as *mut u8).cast(), 1);
        if n == 1 && go == b'G' {
            break;
        }
        if n < 0 && errno() == libc::EINTR {
            continue;
        }
        // The host gave up or died: leave without a trace.
        libc::_exit(1);
    }
    libc::close(sync);

    // --- mount namespace ---------------------------------------------------
    check!(err, Step::MakePrivate, 0, mount(null(), c"/", null(), libc::MS_REC | libc::MS_PRIVATE, null()));
    check!(err, Step::Hostname, 0, libc::sethostname(plan.hostname.as_ptr(), plan.hostname.as_bytes().len()));
    let mut rc = mount(c"overlay".as_ptr(), &plan.merged, c"overlay".as_ptr(), 0, plan.overlay_opts.as_ptr());
    if let (true, libc::EINVAL, Some(plain)) = (rc < 0, errno(), &plan.overlay_fallback) {
        rc = mount(c"overlay".as_ptr(), &plan.merged, c"overlay".as_ptr(), 0, plain.as_ptr());
    }
    check!(err, Step::Overlay, 0, rc);
    check!(err, Step::EnterRoot, 0, libc::chdir(plan.merged.as_ptr()));
    // From here on, relative paths are inside the new root.
    for (i, dir) in SYSTEM_DIRS.iter().enumerate() {
        if let Err(e) = ensure_dir(dir) {
            fail(err, Step::SystemDir, i as u32, e);
        }
    }

    // /dev: a small tmpfs with the host's harmless device nodes bound in.
    check!(
        err,
        Step::DevTmpfs,
        0,
        mount(
            c"tmpfs".as_ptr(),
            c"dev",
            c"tmpfs".as_ptr(),
            libc::MS_NOSUID | libc::MS_NOEXEC,
            c"mode=755,size=65536".as_ptr()
        )
    );
    for i in 0..DEVICES.len() {
        if let Err(e) = ensure_file(JAIL_DEVICES[i], 0o666) {
            fail(err, Step::DevNode, i as u32, e);
        }
        check!(err, Step::DevNode, i, mount(HOST_DEVICES[i].as_ptr(), JAIL_DEVICES[i], null(), libc::MS_BIND, null()));
    }
    for (target, link) in DEV_LINKS {
        check!(err, Step::DevLink, 0, libc::symlink(target.as_ptr(), link.as_ptr()));
    }
    for dir in [c"dev/pts", c"dev/shm"] {
        if let Err(e) = ensure_dir(dir) {
            fail(err, Step::DevLink, 1, e);
        }
    }
    check!(
        err,
        Step::DevPts,
        0,
        mount(
            c"devpts".as_ptr(),
            c"dev/pts",
            c"devpts".as_ptr(),
            libc::MS_NOSUID | libc::MS_NOEXEC,
            c"newinstance,ptmxmode=0666,mode=0620".as_ptr()
        )
    );
    check!(
        err,
        Step::DevShm,
        0,
        mount(c"shm".as_ptr(), c"dev/shm", c"tmpfs".as_ptr(), libc::MS_NOSUID | libc::MS_NODEV, c"mode=1777".as_ptr())
    );

    // /proc of the new pid namespace, with the host-wide knobs read-only or hidden.
    let proc_flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    check!(err, Step::Proc, 0, mount(c"proc".as_ptr(), c"proc", c"proc".as_ptr(), proc_flags, null()));
    for (i, path) in PROC_READONLY.iter().enumerate() {
        if mount(path.as_ptr(), path, null(), libc::MS_BIND | libc::MS_REC, null()) < 0 {
            if errno() == libc::ENOENT {
                continue;
            }
            fail(err, Step::ProcMask, i as u32, errno());
        }
        check!(
            err,
            Step::ProcMask,
            i,
            mount(null(), path, null(), libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | proc_flags, null())
        );
    }
    for (i, path) in PROC_MASKED.iter().enumerate() {
        if mount(c"dev/null".as_ptr(), path, null(), libc::MS_BIND, null()) < 0 && errno() != libc::ENOENT {
            fail(err, Step::ProcMask, (PROC_READONLY.len() + i) as u32, errno());
        }
    }
    check!(
        err,
        Step::Sys,
        0,
        mount(c"sysfs".as_ptr(), c"sys", c"sysfs".as_ptr(), libc::MS_RDONLY | proc_flags, null())
    );
    if let Some(view) = &plan.cgroup_view {
        check!(
            err,
            Step::CgroupView,
            0,
            mount(c"cgroup".as_ptr(), c"sys/fs/cgroup", c"tmpfs".as_ptr(), proc_flags, c"mode=755,size=16k".as_ptr())
        );
        for dir in view.mkdirs.iter() {
            if libc::mkdir(dir.as_ptr(), 0o755) < 0 && errno() != libc::EEXIST {
                fail(err, Step::CgroupView, 1, errno());
            }
        }
        if let Some(target) = view.mkdirs.last() {
            let fd = check!(err, Step::CgroupView, 2, open_tree(view.source.as_ptr(), 0));
            check!(err, Step::CgroupView, 3, set_attrs(fd, MOUNT_ATTR_RDONLY | MOUNT_ATTR_NODEV, false));
            check!(err, Step::CgroupView, 4, move_mount(fd, target));
            libc::close(fd);
        }
        check!(
            err,
            Step::CgroupView,
            5,
            mount(null(), c"sys/fs/cgroup", null(), libc::MS_REMOUNT | libc::MS_RDONLY | proc_flags, null())
        );
    }
    check!(
        err,
        Step::Tmp,
        0,
        mount(c"tmpfs".as_ptr(), c"tmp", c"tmpfs".as_ptr(), libc::MS_NOSUID | libc::MS_NODEV, c"mode=1777".as_ptr())
    );

    // /.alcove/agent: the host's agent binary, read-only, on a read-only tmpfs.
    check!(
        err,
        Step::AgentDir,
        0,
        mount(
            c"alcove".as_ptr(),
            c".alcove",
            c"tmpfs".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV,
            c"mode=755,size=16k".as_ptr()
        )
    );
    if let Err(e) = ensure_file(c".alcove/agent", 0o755) {
        fail(err, Step::AgentDir, 1, e);
    }
    let agent_fd = check!(err, Step::AgentBind, 0, open_tree(plan.agent_source.as_ptr(), 0));
    check!(err, Step::AgentBind, 1, set_attrs(agent_fd, MOUNT_ATTR_RDONLY | MOUNT_ATTR_NODEV, false));
    check!(err, Step::AgentBind, 2, move_mount(agent_fd, c".alcove/agent"));
    libc::close(agent_fd);
    check!(
        err,
        Step::AgentDir,
        2,
        mount(
            null(),
            c".alcove",
            null(),
            libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV,
            null()
        )
    );

    // Extra volumes: detached copies of the host paths, taken before the
    // host's tree goes away, attached after the pivot so that guest paths
    // (and any symlinks in them) resolve inside the jail only.
    for i in 0..plan.volumes.len() {
        let v = &plan.volumes[i];
        let fd = check!(err, Step::VolumeOpen, i, open_tree(v.source.as_ptr(), AT_RECURSIVE));
        if v.readonly {
            check!(err, Step::VolumeOpen, i, set_attrs(fd, MOUNT_ATTR_RDONLY, true));
        }
        plan.volume_fds[i] = fd;
    }

    check!(err, Step::PivotRoot, 0, libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) as c_int);
    check!(err, Step::PivotRoot, 1, libc::umount2(c".".as_ptr(), libc::MNT_DETACH));
    check!(err, Step::PivotRoot, 2, libc::chdir(c"/".as_ptr()));

    for i in 0..plan.volumes.len() {
        let v = &plan.volumes[i];
        for dir in v.mkdirs.iter() {
            if libc::mkdir(dir.as_ptr(), 0o755) < 0 && errno() != libc::EEXIST {
                fail(err, Step::VolumeTarget, i as u32, errno());
            }
        }
        if !v.is_dir {
            if let Err(e) = ensure_file(&v.target, 0o644) {
                fail(err, Step::VolumeTarget, i as u32, e);
            }
        }
        check!(err, Step::VolumeMount, i, move_mount(plan.volume_fds[i], &v.target));
        libc::close(plan.volume_fds[i]);
    }

    // --- network: only loopback, up ----------------------------------------
    if let Err(e) = loopback_up() {
        fail(err, Step::Loopback, 0, e);
    }

    // --- privileges ----------------------------------------------------------
    for cap in plan.drop_caps.iter() {
        if libc::prctl(libc::PR_CAPBSET_DROP, *cap as c_ulong, 0, 0, 0) < 0 && errno() != libc::EINVAL {
            fail(err, Step::Capabilities, *cap as u32, errno());
        }
    }
    check!(
        err,
        Step::Capabilities,
        100,
        libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL as c_ulong, 0, 0, 0)
    );
    let mut header = CapHeader { version: LINUX_CAPABILITY_VERSION_3, pid: 0 };
    let mut data = [CapData { effective: 0, permitted: 0, inheritable: 0 }; 2];
    check!(err, Step::Capabilities, 101, libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) as c_int);
    for d in data.iter_mut() {
        d.inheritable = 0;
    }
    check!(err, Step::Capabilities, 102, libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) as c_int);
    check!(err, Step::NoNewPrivs, 0, libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0));
    for (i, program) in plan.seccomp.iter().enumerate() {
        let prog = libc::sock_fprog { len: program.len() as u16, filter: program.as_ptr() as *mut libc::sock_filter };
        check!(
            err,
            Step::Seccomp,
            i,
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                0 as c_ulong,
                &prog as *const libc::sock_fprog
            ) as c_int
        );
    }

    // --- the agent's fds: 0 null, 1+2 log, 3 channel, 4 config --------------
    check!(err, Step::Fds, 0, libc::dup2(devnull, 0));
    check!(err, Step::Fds, 1, libc::dup2(log, 1));
    check!(err, Step::Fds, 2, libc::dup2(log, 2));
    check!(err, Step::Fds, 3, libc::dup2(channel, 3));
    check!(err, Step::Fds, 4, libc::dup2(config, 4));
    check!(
        err,
        Step::Fds,
        5,
        libc::syscall(libc::SYS_close_range, 5 as c_uint, c_uint::MAX, CLOSE_RANGE_CLOEXEC) as c_int
    );

    libc::execve(AGENT_PATH_C.as_ptr(), plan.argv.as_ptr(), plan.envp.as_ptr());
    fail(err, Step::Exec, 0, errno())
}

unsafe fn open_tree(path: *const c_char, extra: c_uint) -> c_int {
    libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, path, OPEN_TREE_CLONE | libc::O_CLOEXEC as c_uint | extra)
        as c_int
}

unsafe fn move_mount(fd: c_int, target: &CStr) -> c_int {
    libc::syscall(libc::SYS_move_mount, fd, c"".as_ptr(), libc::AT_FDCWD, target.as_ptr(), MOVE_MOUNT_F_EMPTY_PATH)
        as c_int
}

unsafe fn set_attrs(fd: c_int, attrs: u64, recursive: bool) -> c_int {
    let attr = MountAttr { attr_set: attrs, attr_clr: 0, propagation: 0, userns_fd: 0 };
    let flags = libc::AT_EMPTY_PATH as c_uint | if recursive { AT_RECURSIVE } else { 0 };
    libc::syscall(
        libc::SYS_mount_setattr,
        fd,
        c"".as_ptr(),
        flags,
        &attr as *const MountAttr,
        std::mem::size_of::<MountAttr>(),
    ) as c_int
}

/// `ip link set lo up` through the classic interface ioctls.
unsafe fn loopback_up() -> Result<(), c_int> {
    let sock = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
    if sock < 0 {
        return Err(errno());
    }
    let mut req: libc::ifreq = std::mem::zeroed();
    for (i, b) in b"lo\0".iter().enumerate() {
        req.ifr_name[i] = *b as c_char;
    }
    if libc::ioctl(sock, libc::SIOCGIFFLAGS as _, &mut req) < 0 {
        let e = errno();
        libc::close(sock);
        return Err(e);
    }
    req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    let rc = libc::ioctl(sock, libc::SIOCSIFFLAGS as _, &mut req);
    let e = errno();
    libc::close(sock);
    if rc < 0 {
        return Err(e);
    }
    Ok(())
}

/// Clones the jail's first process with the given namespace flags. Returns
/// the child's pid in the parent; the child runs [`child_main`].
///
/// # Safety
/// `plan` must be fully prepared; the caller must not rely on anything
/// after this call in the child (it never returns there).
pub(crate) unsafe fn clone_child(flags: c_long, plan: &mut ChildPlan) -> Result<libc::pid_t, std::io::Error> {
    // A raw clone with no new stack behaves like fork: the child continues
    // here on a copy of our stack.
    let rc =
        libc::syscall(libc::SYS_clone, (flags | libc::SIGCHLD as c_long) as c_ulong, 0usize, 0usize, 0usize, 0usize);
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if rc == 0 {
        child_main(plan);
    }
    Ok(rc as libc::pid_t)
}
