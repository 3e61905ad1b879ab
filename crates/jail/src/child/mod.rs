//! The jail's first process between `clone` and `exec`.
//!
//! Over 600 lines on purpose: one straight-line function whose order is the
//! security argument (below), with its helpers.
//!
//! Invariants:
//! - Everything the child needs is prepared by the parent in a
//!   [`ChildPlan`] before `clone`: paths as C strings, argv/envp arrays, the
//!   seccomp programs, the capability list and the buffer that receives the
//!   host's mounts. The child only makes system calls — it never allocates,
//!   takes a lock or touches Rust's stdio, so it is safe to clone from a
//!   multi-threaded process.
//! - The child does nothing visible until the parent sends the go byte on
//!   the sync socket (after writing the user-namespace maps, placing the
//!   child in its cgroup and, when root, preparing the overlay, agent and
//!   volume mounts, which come with it), and exits quietly if the parent
//!   goes away first.
//! - Every mount is made or attached inside the child's own mount
//!   namespace, which was made recursively private first: nothing
//!   propagates to the host and everything vanishes with the namespace.
//!   Every guest-writable or host-provided mount is `nosuid,nodev`; only
//!   the bound device nodes and devpts allow devices.
//! - With a private uid range the child becomes the namespace's root
//!   (host uid = the range's base) right after it entered the overlay, so
//!   every file it creates belongs to the range; until then it resolves
//!   host paths as host uid 0 without capabilities on the host.
//! - Any failure is reported on the error pipe as `(step, item, errno)` and
//!   ends the child with status 127; a successful `execve` closes the pipe
//!   (close-on-exec), which is how the parent learns that set-up is done.
//!
//! One straight-line function ([`child_main`]) on purpose: the order of
//! its steps is the security argument, read top to bottom (hence the
//! length of this file).

mod step;

pub(crate) use step::Step;

use crate::sys::{
    move_mount, open_tree, set_attrs, AT_RECURSIVE, MOUNT_ATTR_NODEV, MOUNT_ATTR_NOSUID, MOUNT_ATTR_RDONLY,
};
use std::ffi::{CStr, CString};
use std::os::raw::{c_char, c_int, c_long, c_uint, c_ulong, c_void};
use std::ptr;

/// One extra host directory or file mounted into the jail.
pub(crate) struct VolumePlan {
    /// Absolute guest path.
    pub target: CString,
    /// Guest directories to create first, outermost first.
    pub mkdirs: Vec<CString>,
    /// The source is a directory (else a file: an empty file is the mount point).
    pub is_dir: bool,
    /// When the mount point cannot be made, skip the volume instead of failing.
    pub optional: bool,
}

/// The jail's own memory cgroup, shown read-only where the agent looks for
/// it through /proc/self/cgroup (`/` in the jail's cgroup namespace), so
/// that it counts OOM kills of this jail only.
pub(crate) struct CgroupView {
    /// The host directory of the jail's memory cgroup.
    pub source: CString,
    /// cgroup2: the directory itself is shown at /sys/fs/cgroup; v1: at
    /// /sys/fs/cgroup/memory, on a small read-only tmpfs.
    pub v2: bool,
}

/// Where the root, the agent and the volumes come from.
pub(crate) enum MountSource {
    /// The host sends them, detached, with the go byte: the overlay, the
    /// agent, then each volume (root-run jails).
    Host,
    /// The child makes them (rootless: the caller cannot clone mounts).
    Child {
        overlay_opts: CString,
        /// Options to retry with when the kernel refuses `overlay_opts`
        /// (it predates `volatile`).
        overlay_fallback: Option<CString>,
        agent_source: CString,
        /// Host paths of the volumes (resolved by the parent).
        volume_sources: Vec<CString>,
        /// Which volumes are read-only.
        volume_readonly: Vec<bool>,
    },
}

/// Index of the overlay in [`ChildPlan::mounts`].
const MOUNT_OVERLAY: usize = 0;
/// Index of the agent in [`ChildPlan::mounts`].
const MOUNT_AGENT: usize = 1;
/// Index of the first volume in [`ChildPlan::mounts`].
pub(crate) const MOUNT_FIRST_VOLUME: usize = 2;

/// Everything the child needs, prepared before `clone`.
pub(crate) struct ChildPlan {
    pub hostname: CString,
    pub merged: CString,
    pub source: MountSource,
    pub volumes: Vec<VolumePlan>,
    /// Detached mounts: overlay, agent, volumes (see [`MOUNT_FIRST_VOLUME`]),
    /// filled from the go message or by the child.
    pub mounts: Vec<c_int>,
    /// Receives the go message's `SCM_RIGHTS` (sized for `mounts`).
    pub cmsg: Vec<u8>,
    /// Become root of the user namespace (a private uid range).
    pub become_root: bool,
    /// tmpfs options of /tmp and /dev/shm (mode and size).
    pub tmp_opts: CString,
    pub shm_opts: CString,
    /// Set when the jail has a memory cgroup.
    pub cgroup_view: Option<CgroupView>,
    /// cgroup v1 `tasks` files the child joins itself, before anything else
    /// (see [`crate::cgroup::Cgroup::self_join_files`]).
    pub cgroup_join: Vec<CString>,
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
    pub fd_sync: c_int,
    /// Fds of the parent side that the child closes at once.
    pub close_fds: Vec<c_int>,
}

/// Where the agent binary appears inside the jail.
pub const AGENT_PATH: &str = "/.alcove/agent";
const AGENT_PATH_C: &CStr = c"/.alcove/agent";

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
/// /proc entries made read-only (bound onto themselves), as runc does.
const PROC_READONLY: [&CStr; 5] = [c"proc/sys", c"proc/sysrq-trigger", c"proc/irq", c"proc/bus", c"proc/fs"];
/// Files hidden behind /dev/null (runc's masked files).
const MASKED_FILES: [&CStr; 6] =
    [c"proc/kcore", c"proc/keys", c"proc/timer_list", c"proc/timer_stats", c"proc/latency_stats", c"proc/sched_debug"];
/// Directories hidden under an empty read-only tmpfs (runc's masked
/// directories).
const MASKED_DIRS: [&CStr; 5] =
    [c"proc/acpi", c"proc/asound", c"proc/scsi", c"sys/firmware", c"sys/devices/virtual/powercap"];
/// Their names for messages.
pub(crate) const MASKED_DIR_NAMES: [&str; 5] =
    ["proc/acpi", "proc/asound", "proc/scsi", "sys/firmware", "sys/devices/virtual/powercap"];

const CLOSE_RANGE_CLOEXEC: c_uint = 1 << 2;
const RELOCATE_BASE: c_int = 100;

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

/// Receives the go byte and the host's mounts on `sync`. Returns false if
/// the host went away instead.
unsafe fn receive_go(err: c_int, sync: c_int, plan: &mut ChildPlan) -> bool {
    loop {
        let mut go = 0u8;
        let mut iov = libc::iovec { iov_base: (&mut go as *mut u8).cast::<c_void>(), iov_len: 1 };
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        if !plan.cmsg.is_empty() {
            msg.msg_control = plan.cmsg.as_mut_ptr().cast::<c_void>();
            msg.msg_controllen = plan.cmsg.len() as _;
        }
        let n = libc::recvmsg(sync, &mut msg, libc::MSG_CMSG_CLOEXEC);
        if n < 0 && errno() == libc::EINTR {
            continue;
        }
        if n != 1 || go != b'G' {
            return false;
        }
        if msg.msg_flags & libc::MSG_CTRUNC != 0 {
            fail(err, Step::WaitGo, 0, libc::EMSGSIZE);
        }
        let expected = if matches!(plan.source, MountSource::Host) { plan.mounts.len() } else { 0 };
        let mut got = 0;
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let bytes = (*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                let data = libc::CMSG_DATA(cmsg).cast::<c_int>();
                for i in 0..bytes / std::mem::size_of::<c_int>() {
                    let fd = ptr::read_unaligned(data.add(i));
                    if got < plan.mounts.len() {
                        plan.mounts[got] = fd;
                    } else {
                        libc::close(fd);
                    }
                    got += 1;
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
        if got != expected {
            fail(err, Step::WaitGo, 1, libc::EPROTO);
        }
        return true;
    }
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
    let sync = check!(err, Step::Relocate, 4, libc::fcntl(plan.fd_sync, libc::F_DUPFD_CLOEXEC, RELOCATE_BASE));
    for fd in plan.close_fds.iter() {
        libc::close(*fd);
    }
    for fd in [plan.fd_err_w, plan.fd_channel, plan.fd_config, plan.fd_log, plan.fd_null, plan.fd_sync] {
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

    // --- wait for the host: maps written, cgroup2 joined, mounts made -----
    if !receive_go(err, sync, plan) {
        // The host gave up or died: leave without a trace.
        libc::_exit(1);
    }

    // --- mount namespace and the overlay root --------------------------------
    check!(err, Step::MakePrivate, 0, mount(null(), c"/", null(), libc::MS_REC | libc::MS_PRIVATE, null()));
    match &plan.source {
        MountSource::Host => {
            check!(err, Step::Overlay, 0, move_mount(plan.mounts[MOUNT_OVERLAY], &plan.merged));
            libc::close(plan.mounts[MOUNT_OVERLAY]);
        }
        MountSource::Child { overlay_opts, overlay_fallback, .. } => {
            let flags = libc::MS_NOSUID | libc::MS_NODEV;
            let mut rc = mount(c"overlay".as_ptr(), &plan.merged, c"overlay".as_ptr(), flags, overlay_opts.as_ptr());
            if let (true, libc::EINVAL, Some(plain)) = (rc < 0, errno(), overlay_fallback) {
                rc = mount(c"overlay".as_ptr(), &plan.merged, c"overlay".as_ptr(), flags, plain.as_ptr());
            }
            check!(err, Step::Overlay, 1, rc);
        }
    }
    check!(err, Step::EnterRoot, 0, libc::chdir(plan.merged.as_ptr()));
    // From here on, relative paths are inside the new root.

    // --- user namespace: become its root (the range's base on the host) ---
    if plan.become_root {
        // Raw system calls: glibc's wrappers broadcast the change to every
        // thread it believes exists, copied from the multi-threaded host
        // process, and would wait for them forever.
        check!(err, Step::BecomeRoot, 0, libc::syscall(libc::SYS_setresgid, 0, 0, 0) as c_int);
        check!(err, Step::BecomeRoot, 1, libc::syscall(libc::SYS_setgroups, 0, ptr::null::<libc::gid_t>()) as c_int);
        check!(err, Step::BecomeRoot, 2, libc::syscall(libc::SYS_setresuid, 0, 0, 0) as c_int);
        // Changing ids cleared the parent-death signal: set it again, then
        // make sure the host did not die in between (it holds its end of
        // the sync socket open until this process execs).
        check!(err, Step::BecomeRoot, 3, libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as c_ulong, 0, 0, 0));
        let mut pfd = libc::pollfd { fd: sync, events: libc::POLLIN, revents: 0 };
        if libc::poll(&mut pfd, 1, 0) != 0 {
            libc::_exit(1);
        }
    }
    // --- a cgroup namespace rooted at the jail's cgroup, joined above ------
    check!(err, Step::CgroupNamespace, 0, libc::unshare(libc::CLONE_NEWCGROUP));
    check!(err, Step::Hostname, 0, libc::sethostname(plan.hostname.as_ptr(), plan.hostname.as_bytes().len()));

    for (i, dir) in SYSTEM_DIRS.iter().enumerate() {
        if let Err(e) = ensure_dir(dir) {
            fail(err, Step::SystemDir, i as u32, e);
        }
    }

    // /dev: a small tmpfs (nodev itself) with the host's harmless device
    // nodes bound in (each bind keeps its source's flags).
    let nodev = libc::MS_NOSUID | libc::MS_NODEV;
    check!(
        err,
        Step::DevTmpfs,
        0,
        mount(c"tmpfs".as_ptr(), c"dev", c"tmpfs".as_ptr(), nodev | libc::MS_NOEXEC, c"mode=755,size=64k".as_ptr())
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
    check!(err, Step::DevShm, 0, mount(c"shm".as_ptr(), c"dev/shm", c"tmpfs".as_ptr(), nodev, plan.shm_opts.as_ptr()));

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
    for (i, path) in MASKED_FILES.iter().enumerate() {
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
    for (i, dir) in MASKED_DIRS.iter().enumerate() {
        let rc = mount(
            c"masked".as_ptr(),
            dir,
            c"tmpfs".as_ptr(),
            libc::MS_RDONLY | proc_flags,
            c"size=4k,mode=555".as_ptr(),
        );
        if rc < 0 && errno() != libc::ENOENT {
            fail(err, Step::MaskDir, i as u32, errno());
        }
    }
    if let Some(view) = &plan.cgroup_view {
        let fd = check!(err, Step::CgroupView, 0, open_tree(view.source.as_ptr(), 0));
        check!(
            err,
            Step::CgroupView,
            1,
            set_attrs(fd, MOUNT_ATTR_RDONLY | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOSUID, false, -1)
        );
        if view.v2 {
            check!(err, Step::CgroupView, 2, move_mount(fd, c"sys/fs/cgroup"));
        } else {
            check!(
                err,
                Step::CgroupView,
                3,
                mount(
                    c"cgroup".as_ptr(),
                    c"sys/fs/cgroup",
                    c"tmpfs".as_ptr(),
                    proc_flags,
                    c"mode=755,size=16k".as_ptr()
                )
            );
            if libc::mkdir(c"sys/fs/cgroup/memory".as_ptr(), 0o755) < 0 && errno() != libc::EEXIST {
                fail(err, Step::CgroupView, 4, errno());
            }
            check!(err, Step::CgroupView, 5, move_mount(fd, c"sys/fs/cgroup/memory"));
            check!(
                err,
                Step::CgroupView,
                6,
                mount(null(), c"sys/fs/cgroup", null(), libc::MS_REMOUNT | libc::MS_RDONLY | proc_flags, null())
            );
        }
        libc::close(fd);
    }
    check!(err, Step::Tmp, 0, mount(c"tmpfs".as_ptr(), c"tmp", c"tmpfs".as_ptr(), nodev, plan.tmp_opts.as_ptr()));

    // /.alcove/agent: the host's agent binary, read-only, on a read-only tmpfs.
    check!(
        err,
        Step::AgentDir,
        0,
        mount(c"alcove".as_ptr(), c".alcove", c"tmpfs".as_ptr(), nodev, c"mode=755,size=16k".as_ptr())
    );
    if let Err(e) = ensure_file(c".alcove/agent", 0o755) {
        fail(err, Step::AgentDir, 1, e);
    }
    if let MountSource::Child { agent_source, volume_sources, volume_readonly, .. } = &plan.source {
        let fd = check!(err, Step::AgentBind, 0, open_tree(agent_source.as_ptr(), 0));
        check!(
            err,
            Step::AgentBind,
            1,
            set_attrs(fd, MOUNT_ATTR_RDONLY | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOSUID, false, -1)
        );
        plan.mounts[MOUNT_AGENT] = fd;
        // Extra volumes: detached copies of the host paths, taken before
        // the host's tree goes away (the host takes them itself when root).
        for (i, source) in volume_sources.iter().enumerate() {
            let fd = check!(err, Step::VolumeOpen, i, open_tree(source.as_ptr(), AT_RECURSIVE));
            let ro = if volume_readonly[i] { MOUNT_ATTR_RDONLY } else { 0 };
            check!(err, Step::VolumeOpen, i, set_attrs(fd, MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | ro, true, -1));
            plan.mounts[MOUNT_FIRST_VOLUME + i] = fd;
        }
    }
    check!(err, Step::AgentBind, 2, move_mount(plan.mounts[MOUNT_AGENT], c".alcove/agent"));
    libc::close(plan.mounts[MOUNT_AGENT]);
    check!(
        err,
        Step::AgentDir,
        2,
        mount(null(), c".alcove", null(), libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | nodev, null())
    );

    check!(err, Step::PivotRoot, 0, libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) as c_int);
    check!(err, Step::PivotRoot, 1, libc::umount2(c".".as_ptr(), libc::MNT_DETACH));
    check!(err, Step::PivotRoot, 2, libc::chdir(c"/".as_ptr()));

    // Volumes are attached after the pivot, so that guest paths (and any
    // symlinks in them) resolve inside the jail only.
    for i in 0..plan.volumes.len() {
        let v = &plan.volumes[i];
        let fd = plan.mounts[MOUNT_FIRST_VOLUME + i];
        let mut target_error = 0;
        for dir in v.mkdirs.iter() {
            if libc::mkdir(dir.as_ptr(), 0o755) < 0 && errno() != libc::EEXIST {
                target_error = errno();
                break;
            }
        }
        if target_error == 0 && !v.is_dir {
            if let Err(e) = ensure_file(&v.target, 0o644) {
                target_error = e;
            }
        }
        if target_error != 0 {
            if v.optional {
                libc::close(fd);
                continue;
            }
            fail(err, Step::VolumeTarget, i as u32, target_error);
        }
        check!(err, Step::VolumeMount, i, move_mount(fd, &v.target));
        libc::close(fd);
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
