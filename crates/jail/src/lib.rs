//! The `jail` backend: runs the guest agent as PID 1 of a set of new Linux
//! namespaces, in an overlay of the sandbox's root filesystem, under cgroup
//! limits, a seccomp filter and a reduced capability set.
//!
//! # API
//!
//! [`JailBackend::new`] with [`JailOptions`]; [`VmBackend::launch`] (type
//! erased) or [`JailBackend::spawn`] (concrete [`Jail`]: the agent channel,
//! a [`JailRunner`] whose [`JailRunner::wait`] reaps PID 1 and cleans up,
//! and a [`JailControl`] with `force_stop`, `usage`, `pid` and
//! `cgroup_paths`). [`JailOptions::init_argv`] runs any init program in
//! place of the agent (tests use busybox).
//!
//! # What `launch` builds
//!
//! 1. **Validation** (before anything irreversible, as one-line
//!    [`BackendError::InvalidConfig`] errors): name usable as a hostname;
//!    rootfs present and a directory; agent binary present, a file,
//!    executable; every mount's host path present and its guest path
//!    absolute, without `..`, not `/` and not under `/proc`, `/sys`, `/dev`
//!    or `/.alcove`; memory ≥ 16 MiB; 1 ≤ cpus ≤ the host's online CPUs;
//!    pids ≥ 8; overlay paths free of `,` `:` `\`.
//! 2. **Host side**: `upper/`, `work/` and `merged/` under `sandbox_dir`
//!    (the first two persist across stop/start, so a restart keeps what the
//!    guest wrote); the guest log: a pipe whose read end a host thread copies
//!    into the bounded, rotating `guest.log` (see
//!    [`alcove_backend::guest_log`]; the guest never holds a host file); the
//!    cgroup with its
//!    limits (see [`cgroup`]); the agent channel
//!    ([`alcove_backend::console::channel`]); a pipe already holding the
//!    JSON [`alcove_protocol::agent_config::AgentConfig`].
//! 3. **The child** (`clone` with new pid, mount, uts, ipc and net
//!    namespaces, plus a user namespace mapping the caller to root when not
//!    root): waits until the host has placed it in the cgroup, makes every
//!    mount private, sets the hostname, mounts the overlay
//!    (`lowerdir=rootfs`, never written; `upperdir=upper`, `workdir=work`)
//!    on `merged/`, and in it: `/dev` as a tmpfs with the host's `null`,
//!    `zero`, `full`, `random`, `urandom`, `tty` bind-mounted (no mknod),
//!    `fd`/`stdin`/`stdout`/`stderr` links, `ptmx → pts/ptmx`, `/dev/pts`
//!    (devpts `newinstance,ptmxmode=0666`), `/dev/shm` (tmpfs); `/proc` of
//!    the new pid namespace with `sys`, `sysrq-trigger`, `irq`, `bus`, `fs`
//!    read-only and `kcore`, `keys`, `timer_list`, `latency_stats` hidden
//!    behind `/dev/null`; `/sys` read-only; `/tmp` (tmpfs); the agent binary
//!    read-only at `/.alcove/agent` on a read-only tmpfs (nothing is copied
//!    into the rootfs). Then it pivots into `merged/` and detaches the old
//!    root, attaches the extra volumes (taken as detached mount trees before
//!    the pivot, so guest paths resolve inside the jail only; read-only
//!    volumes are recursively read-only), brings `lo` up (the network
//!    namespace has nothing else), drops privileges (below), puts
//!    `/dev/null` on fd 0, the guest log on fds 1 and 2, the agent channel
//!    on fd 3 and the config pipe on fd 4, marks every other fd
//!    close-on-exec and executes `/.alcove/agent --config-fd 4` with an
//!    environment of only `PATH` and `HOME`.
//!
//! The agent therefore finds /proc, /sys, /dev/pts, /dev/shm and /tmp
//! already mounted and the hostname already set; it must treat those as
//! done (the contract says "where not yet mounted") because by default it
//! lacks `CAP_SYS_ADMIN` to do them again.
//!
//! # Privilege policy
//!
//! - **Capabilities**: the bounding set keeps only `CAP_CHOWN`,
//!   `CAP_DAC_OVERRIDE`, `CAP_FOWNER`, `CAP_FSETID`, `CAP_KILL`,
//!   `CAP_SETGID`, `CAP_SETUID`, `CAP_SETPCAP`, `CAP_NET_BIND_SERVICE`,
//!   `CAP_NET_ADMIN` and `CAP_NET_RAW` (both scoped to the jail's own
//!   network namespace), `CAP_SYS_CHROOT`, `CAP_SYS_BOOT` (a `reboot()` in a
//!   pid namespace only ends that namespace; `kexec_*` is refused by
//!   seccomp), `CAP_AUDIT_WRITE` and `CAP_SETFCAP`; ambient and inheritable
//!   sets are cleared. `CAP_SYS_ADMIN` is dropped unless
//!   [`JailOptions::keep_sys_admin`]: the jail's mounts are all made by the
//!   backend, and a root process holding it could mount a fresh procfs and
//!   write host-wide knobs. `CAP_MKNOD`, `CAP_SYS_MODULE`, `CAP_SYS_RAWIO`,
//!   `CAP_SYS_PTRACE`, `CAP_SYS_TIME`, `CAP_DAC_READ_SEARCH` and the rest are
//!   gone for every process of the jail.
//! - **no_new_privs** is set: nothing in the jail can gain privileges by
//!   executing a set-uid/set-gid or file-capability binary (`su`, `sudo`,
//!   `ping` grant nothing). It does not stop root from calling
//!   `setuid`/`setgid`, so the agent can still run commands as other users;
//!   it is also what a seccomp filter needs regardless of capabilities.
//! - **seccomp** ([`policy`]): an i386 (`int 0x80`) system call kills the
//!   process; x32 system calls, `kexec_load`, `kexec_file_load`,
//!   `init_module`, `finit_module`, `delete_module`, `bpf`,
//!   `perf_event_open`, `add_key`, `keyctl`, `request_key`, `swapon`,
//!   `swapoff`, `acct`, `settimeofday`, `clock_settime`, `clock_adjtime`,
//!   `adjtimex`, `open_by_handle_at`, `name_to_handle_at`, `userfaultfd`,
//!   `iopl`, `ioperm`, `quotactl`, `lookup_dcookie`, `vhangup`,
//!   `io_uring_*`, `setns`, `unshare` and `clone(CLONE_NEWUSER)` return
//!   `EPERM`; `clone3` returns `ENOSYS` (libc falls back to `clone`);
//!   without `CAP_SYS_ADMIN` also `mount`, `umount2`, `pivot_root`,
//!   `open_tree`, `move_mount`, `fsopen`, `fsconfig`, `fsmount`, `fspick`,
//!   `mount_setattr`. `reboot` and `ptrace` (confined to the jail's pid
//!   namespace) stay allowed. The filter is installed by the backend before
//!   `exec`, so it binds the agent and everything it spawns.
//! - **cgroup**: memory (swap disabled: `memory.memsw.limit_in_bytes` on v1,
//!   `memory.swap.max=0` on v2), CPU quota (`cpus × 100 ms` per 100 ms),
//!   pids (default [`DEFAULT_PIDS_LIMIT`]), and on v1 a device allow-list
//!   (`null zero full random urandom tty ptmx pts`).
//! - **OOM**: the jail's cgroup OOM killer picks the largest process, which
//!   is a command rather than the small agent. The host also tries to set
//!   the agent's `oom_score_adj` to -1000; that needs `CAP_SYS_RESOURCE`,
//!   which some hosts (this project's CI) withhold, in which case it is
//!   skipped (logged at debug).
//! - **Lifetime**: the child has `PR_SET_PDEATHSIG=SIGKILL`, so the jail
//!   dies with the *thread* that called [`VmBackend::launch`] (call it from
//!   the thread that stays, i.e. the main thread). Killing PID 1 ends the
//!   whole pid namespace; the runner then reports the exit and removes the
//!   cgroup (in parallel, returning when both are done), and the mount
//!   namespace vanishes with its last process, leaving no mount behind on
//!   the host.
//!
//! # User namespaces
//!
//! When not root ([`UserNamespace::Auto`]) the child also gets a user
//! namespace mapping the caller's uid/gid to 0 (single-id maps, `setgroups`
//! denied). Cgroups are then best effort: without write access to the
//! cgroup tree the jail runs without limits and [`GuestControl::usage`]
//! returns `None`.
#![warn(missing_docs)]

pub mod cgroup;
mod child;
pub mod policy;

use alcove_backend::guest_log::{log_pipe, LogPump, GUEST_LOG_LIMITS};
use alcove_backend::{
    BackendError, ExitObserver, GuestControl, GuestExit, GuestRunner, GuestSpec, GuestUsage, Launched, VmBackend,
};
use alcove_protocol::agent_config::{AgentConfig, AgentMode};
use cgroup::{Cgroup, Limits};
use child::{ChildPlan, Step, VolumePlan};
use std::ffi::CString;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use child::AGENT_PATH;

/// How long clean-up waits for the guest log's last bytes once the jail has
/// ended (its writers are gone then, so this is only a bound).
const GUEST_LOG_DRAIN: Duration = Duration::from_secs(2);

/// Process limit used when the spec sets none.
pub const DEFAULT_PIDS_LIMIT: u64 = 4096;
/// Smallest memory limit accepted, MiB.
pub const MIN_MEMORY_MIB: u64 = 16;
/// Smallest process limit accepted.
pub const MIN_PIDS_LIMIT: u64 = 8;

/// Whether to put the jail in a new user namespace.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum UserNamespace {
    /// Only when not running as root.
    #[default]
    Auto,
    /// Never (launch fails when not root).
    Never,
    /// Always, mapping the caller to root inside.
    Always,
}

/// How the jail backend behaves.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JailOptions {
    /// User-namespace use.
    pub user_namespace: UserNamespace,
    /// Cgroup parent, relative to each hierarchy's root (e.g. `test/alcove`).
    /// `None`: the sandbox process's own cgroup followed by `alcove`.
    pub cgroup_parent: Option<String>,
    /// Replaces the init's argv (`argv[0]` included; the program is always
    /// the spec's agent binary, seen at [`AGENT_PATH`]). `None`:
    /// `alcove-agent --config-fd 4`. Lets tests run any init, e.g. busybox.
    pub init_argv: Option<Vec<String>>,
    /// Keep `CAP_SYS_ADMIN` (and allow the mount system calls) in the jail.
    pub keep_sys_admin: bool,
}

/// The jail backend.
#[derive(Clone, Debug, Default)]
pub struct JailBackend {
    options: JailOptions,
}

impl JailBackend {
    /// A backend with these options.
    pub fn new(options: JailOptions) -> JailBackend {
        JailBackend { options }
    }

    /// Whether this process can run jails with these options (root, or user
    /// namespaces allowed).
    pub fn check_host(options: &JailOptions) -> Result<(), BackendError> {
        let root = is_root();
        match options.user_namespace {
            UserNamespace::Never if !root => Err(BackendError::Unsupported {
                backend: "jail",
                reason: "not running as root and user namespaces are disabled".into(),
            }),
            _ => Ok(()),
        }
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn invalid(msg: impl Into<String>) -> BackendError {
    BackendError::InvalidConfig(msg.into())
}

/// A spec that passed validation, with paths resolved.
struct Checked {
    rootfs: PathBuf,
    agent: PathBuf,
    volumes: Vec<(PathBuf, String, bool, bool)>,
    limits: Limits,
}

fn host_cpus() -> u32 {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    if n < 1 {
        1
    } else {
        n as u32
    }
}

fn overlay_safe(what: &str, p: &Path) -> Result<(), BackendError> {
    let s = p.as_os_str().as_bytes();
    if s.iter().any(|b| matches!(b, b',' | b':' | b'\\' | b'\n' | 0)) {
        return Err(invalid(format!(
            "{what} path {} contains ',', ':' or '\\', which overlayfs options cannot carry",
            p.display()
        )));
    }
    Ok(())
}

fn validate(spec: &GuestSpec) -> Result<Checked, BackendError> {
    let name = &spec.name;
    if name.is_empty() || name.len() > 64 {
        return Err(invalid(format!("sandbox name {name:?} must be 1 to 64 bytes long (it becomes the hostname)")));
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')) {
        return Err(invalid(format!("sandbox name {name:?} may contain only letters, digits, '-', '_' and '.'")));
    }
    if spec.sandbox_dir.as_os_str().is_empty() {
        return Err(invalid("the sandbox directory is not set"));
    }
    if spec.guest_log.as_os_str().is_empty() {
        return Err(invalid("the guest log path is not set"));
    }
    let rootfs = spec.rootfs.as_ref().ok_or_else(|| invalid("the jail backend needs a root filesystem directory"))?;
    let meta = fs::metadata(rootfs).map_err(|e| invalid(format!("rootfs {} is not usable: {e}", rootfs.display())))?;
    if !meta.is_dir() {
        return Err(invalid(format!("rootfs {} is not a directory", rootfs.display())));
    }
    let rootfs = fs::canonicalize(rootfs).map_err(|e| invalid(format!("rootfs {}: {e}", rootfs.display())))?;
    overlay_safe("rootfs", &rootfs)?;
    overlay_safe("sandbox directory", &spec.sandbox_dir)?;

    let agent = spec.agent_binary.as_ref().ok_or_else(|| invalid("no agent binary given"))?;
    let meta =
        fs::metadata(agent).map_err(|e| invalid(format!("agent binary {} is not usable: {e}", agent.display())))?;
    if !meta.is_file() {
        return Err(invalid(format!("agent binary {} is not a regular file", agent.display())));
    }
    if meta.permissions().mode() & 0o111 == 0 {
        return Err(invalid(format!("agent binary {} is not executable", agent.display())));
    }
    let agent = fs::canonicalize(agent).map_err(|e| invalid(format!("agent binary {}: {e}", agent.display())))?;

    let mut volumes = Vec::new();
    for m in &spec.mounts {
        let guest = m.guest.as_str();
        if !guest.starts_with('/') {
            return Err(invalid(format!("mount guest path {guest:?} is not absolute")));
        }
        if guest.split('/').any(|c| c == ".." || c == ".") || guest.contains('\0') {
            return Err(invalid(format!("mount guest path {guest:?} must not contain '.' or '..' components")));
        }
        let norm = guest.trim_end_matches('/');
        if norm.is_empty() {
            return Err(invalid("a mount cannot replace the guest's root directory"));
        }
        for reserved in ["/proc", "/sys", "/dev", "/.alcove"] {
            if norm == reserved || norm.starts_with(&format!("{reserved}/")) {
                return Err(invalid(format!("mount guest path {guest:?} is under {reserved}, which the jail manages")));
            }
        }
        let meta = fs::metadata(&m.host)
            .map_err(|e| invalid(format!("mount host path {} is not usable: {e}", m.host.display())))?;
        let host =
            fs::canonicalize(&m.host).map_err(|e| invalid(format!("mount host path {}: {e}", m.host.display())))?;
        volumes.push((host, norm.to_string(), meta.is_dir(), m.readonly));
    }

    let memory_bytes = match spec.memory_mib {
        None => None,
        Some(m) if m < MIN_MEMORY_MIB => {
            return Err(invalid(format!("memory limit {m} MiB is below the minimum of {MIN_MEMORY_MIB} MiB")))
        }
        Some(m) if m > (1 << 30) => return Err(invalid(format!("memory limit {m} MiB is not a sane value"))),
        Some(m) => Some(m * 1024 * 1024),
    };
    let cpus = match spec.cpus {
        None => None,
        Some(0) => return Err(invalid("cpus must be at least 1")),
        Some(c) if c > host_cpus() => {
            return Err(invalid(format!("cpus {c} exceeds the {} CPUs of this host", host_cpus())))
        }
        Some(c) => Some(c),
    };
    let pids = match spec.pids_limit {
        None => DEFAULT_PIDS_LIMIT,
        Some(p) if p < MIN_PIDS_LIMIT => {
            return Err(invalid(format!("pids limit {p} is below the minimum of {MIN_PIDS_LIMIT}")))
        }
        Some(p) if p > 4_194_304 => return Err(invalid(format!("pids limit {p} is not a sane value"))),
        Some(p) => p,
    };
    Ok(Checked { rootfs, agent, volumes, limits: Limits { memory_bytes, cpus, pids: Some(pids) } })
}

fn cstring(what: &str, bytes: &[u8]) -> Result<CString, BackendError> {
    CString::new(bytes).map_err(|_| invalid(format!("{what} contains a NUL byte")))
}

fn pipe() -> Result<(OwnedFd, OwnedFd), BackendError> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two fds into the array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(BackendError::io("creating a pipe", std::io::Error::last_os_error()));
    }
    // SAFETY: both fds are fresh and owned by us.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Guest-path prefixes of `guest` (a normalised absolute path), outermost
/// first, excluding `guest` itself.
fn parents(guest: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut acc = String::new();
    let parts: Vec<&str> = guest.split('/').filter(|c| !c.is_empty()).collect();
    for part in parts.iter().take(parts.len().saturating_sub(1)) {
        acc.push('/');
        acc.push_str(part);
        out.push(acc.clone());
    }
    out
}

/// A running jail, with concrete handle types (what [`VmBackend::launch`]
/// returns, before type erasure).
pub struct Jail {
    /// Host end of the agent channel (the jail's fd 3).
    pub agent_channel: std::os::unix::net::UnixStream,
    /// Waits for PID 1; kills the jail if dropped without being run.
    pub runner: JailRunner,
    /// Ends the jail, reads usage.
    pub control: Arc<JailControl>,
}

impl VmBackend for JailBackend {
    fn kind(&self) -> &'static str {
        "jail"
    }

    fn launch(self: Box<Self>, spec: &GuestSpec) -> Result<Launched, BackendError> {
        let jail = self.spawn(spec)?;
        Ok(Launched { agent_channel: jail.agent_channel, runner: Box::new(jail.runner), control: jail.control })
    }
}

impl JailBackend {
    /// Validates `spec` and starts the jail (what `launch` does).
    pub fn spawn(&self, spec: &GuestSpec) -> Result<Jail, BackendError> {
        JailBackend::check_host(&self.options)?;
        let checked = validate(spec)?;
        let userns = match self.options.user_namespace {
            UserNamespace::Always => true,
            UserNamespace::Never => false,
            UserNamespace::Auto => !is_root(),
        };
        let policy =
            policy::seccomp_policy(self.options.keep_sys_admin).map_err(|e| BackendError::Setup(e.to_string()))?;
        let drop_caps = policy::dropped_capabilities(self.options.keep_sys_admin);

        // ---- host-side preparation (all reversible or harmless) ----
        let upper = spec.sandbox_dir.join("upper");
        let work = spec.sandbox_dir.join("work");
        let merged = spec.sandbox_dir.join("merged");
        // The sandbox directory (and any missing parent) is owner-only
        // whatever the umask: what the guest writes is under it.
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&spec.sandbox_dir)
            .map_err(|e| BackendError::io(format!("creating {}", spec.sandbox_dir.display()), e))?;
        for dir in [&upper, &work, &merged] {
            fs::create_dir_all(dir).map_err(|e| BackendError::io(format!("creating {}", dir.display()), e))?;
        }
        // Absolute paths for the overlay options and the child's chdir.
        let absolute =
            |p: &Path| fs::canonicalize(p).map_err(|e| BackendError::io(format!("resolving {}", p.display()), e));
        let (upper, work, merged) = (absolute(&upper)?, absolute(&work)?, absolute(&merged)?);
        overlay_safe("sandbox directory", &merged)?;
        if let Some(parent) = spec.guest_log.parent() {
            if !parent.as_os_str().is_empty() {
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(parent)
                    .map_err(|e| BackendError::io(format!("creating {}", parent.display()), e))?;
            }
        }
        // The guest writes its log into a pipe, never a host file: a host
        // thread copies it into the bounded, rotating guest.log.
        let (log, log_pump) = log_pipe(&spec.guest_log, GUEST_LOG_LIMITS)
            .map_err(|e| BackendError::io(format!("opening the guest log {}", spec.guest_log.display()), e))?;
        let devnull = File::open("/dev/null").map_err(|e| BackendError::io("opening /dev/null", e))?;

        let config = AgentConfig {
            hostname: spec.name.clone(),
            mode: AgentMode::Jail,
            env: spec.env.clone(),
            workdir: spec.workdir.clone(),
            user: spec.user.clone(),
            vm: None,
        }
        .to_json();
        let (config_r, config_w) = pipe()?;
        if config.len() > 60 * 1024 {
            // SAFETY: fcntl on our own pipe fd.
            let rc = unsafe { libc::fcntl(config_w.as_raw_fd(), libc::F_SETPIPE_SZ, config.len() as libc::c_int) };
            if rc < 0 || (rc as usize) < config.len() {
                return Err(invalid(format!("the agent configuration ({} bytes) is too large", config.len())));
            }
        }
        File::from(config_w).write_all(&config).map_err(|e| BackendError::io("writing the agent configuration", e))?;

        let (host_channel, guest_channel) =
            alcove_backend::console::channel().map_err(|e| BackendError::io("creating the agent channel", e))?;
        let (sync_r, sync_w) = pipe()?;
        let (err_r, err_w) = pipe()?;

        // ---- the plan for the child: every allocation happens here ----
        let lower = checked.rootfs.as_os_str().as_bytes();
        let mut opts = b"lowerdir=".to_vec();
        opts.extend_from_slice(lower);
        opts.extend_from_slice(b",upperdir=");
        opts.extend_from_slice(upper.as_os_str().as_bytes());
        opts.extend_from_slice(b",workdir=");
        opts.extend_from_slice(work.as_os_str().as_bytes());
        // An ephemeral layer is mounted `volatile` (Linux 5.10+): overlayfs
        // then skips the sync of the whole upper filesystem it otherwise does
        // at unmount, when the jail's mount namespace dies (measured: tens of
        // ms while the host disk is busy, on the critical path of every
        // `run --rm`). The kernel leaves work/work/incompat/volatile behind,
        // which refuses a second mount of the same layer: fine for a layer
        // that is deleted after its one run.
        let overlay_fallback = if spec.ephemeral {
            let plain = opts.clone();
            opts.extend_from_slice(b",volatile");
            Some(cstring("overlay options", &plain)?)
        } else {
            None
        };
        let mut volume_names = Vec::new();
        let mut volumes = Vec::new();
        for (host, guest, is_dir, readonly) in &checked.volumes {
            volume_names.push(format!("{} at {guest}", host.display()));
            let mut mkdirs = Vec::new();
            let chain = if *is_dir {
                let mut c = parents(guest);
                c.push(guest.clone());
                c
            } else {
                parents(guest)
            };
            for d in chain {
                mkdirs.push(cstring("mount guest path", d.as_bytes())?);
            }
            volumes.push(VolumePlan {
                source: cstring("mount host path", host.as_os_str().as_bytes())?,
                target: cstring("mount guest path", guest.as_bytes())?,
                mkdirs,
                is_dir: *is_dir,
                readonly: *readonly,
            });
        }
        let argv_strings = self
            .options
            .init_argv
            .clone()
            .unwrap_or_else(|| vec!["alcove-agent".into(), "--config-fd".into(), "4".into()]);
        let argv_storage =
            argv_strings.iter().map(|a| cstring("init argument", a.as_bytes())).collect::<Result<Vec<_>, _>>()?;
        let mut argv: Vec<*const libc::c_char> = argv_storage.iter().map(|a| a.as_ptr()).collect();
        argv.push(std::ptr::null());
        let envp_storage =
            vec![c"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_owned(), c"HOME=/".to_owned()];
        let mut envp: Vec<*const libc::c_char> = envp_storage.iter().map(|a| a.as_ptr()).collect();
        envp.push(std::ptr::null());
        let n_volumes = volumes.len();
        let mut plan = ChildPlan {
            hostname: cstring("sandbox name", spec.name.as_bytes())?,
            merged: cstring("sandbox directory", merged.as_os_str().as_bytes())?,
            overlay_opts: cstring("overlay options", &opts)?,
            overlay_fallback,
            agent_source: cstring("agent binary path", checked.agent.as_os_str().as_bytes())?,
            volumes,
            cgroup_view: None,
            cgroup_join: Vec::new(),
            volume_fds: vec![-1; n_volumes],
            argv_storage,
            argv,
            envp_storage,
            envp,
            seccomp: policy.programs,
            drop_caps,
            fd_channel: guest_channel.as_raw_fd(),
            fd_config: config_r.as_raw_fd(),
            fd_log: log.as_raw_fd(),
            fd_null: devnull.as_raw_fd(),
            fd_err_w: err_w.as_raw_fd(),
            fd_sync_r: sync_r.as_raw_fd(),
            close_fds: vec![host_channel.as_raw_fd(), sync_w.as_raw_fd(), err_r.as_raw_fd()],
        };

        // ---- cgroup (limits in place before the child can run) ----
        let cgroup = match Cgroup::create(&spec.name, self.options.cgroup_parent.as_deref(), &checked.limits) {
            Ok(c) => Some(c),
            Err(e) if userns && !is_root() => {
                tracing::warn!(error = %e, "jail runs without cgroup limits (no access to the cgroup tree)");
                None
            }
            Err(e) => return Err(BackendError::Setup(format!("setting up the jail's cgroup: {e}"))),
        };
        if let Some((source, shown)) = cgroup.as_ref().and_then(|c| c.memory_view()) {
            plan.cgroup_view = Some(cgroup_view_plan(&source, &shown)?);
        }
        let join_files = cgroup.as_ref().map(|c| c.self_join_files()).unwrap_or_default();
        let join_names: Vec<String> = join_files.iter().map(|p| p.display().to_string()).collect();
        plan.cgroup_join = join_files
            .iter()
            .map(|p| cstring("cgroup path", p.as_os_str().as_bytes()))
            .collect::<Result<Vec<_>, _>>()?;

        let mut flags =
            libc::CLONE_NEWPID | libc::CLONE_NEWNS | libc::CLONE_NEWUTS | libc::CLONE_NEWIPC | libc::CLONE_NEWNET;
        if userns {
            flags |= libc::CLONE_NEWUSER;
        }
        // SAFETY: the plan is complete; in the child clone_child never returns.
        let pid = unsafe { child::clone_child(flags as libc::c_long, &mut plan) }
            .map_err(|e| BackendError::io("creating the jail's first process", e))?;
        // Parent: drop the child's ends.
        drop(guest_channel);
        drop(config_r);
        drop(sync_r);
        drop(err_w);
        drop(log);
        drop(devnull);

        let abort = |msg: BackendError, cgroup: &Option<Cgroup>| -> BackendError {
            // SAFETY: pid is our unreaped child.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                let mut status = 0;
                while libc::waitpid(pid, &mut status, 0) < 0 && *libc::__errno_location() == libc::EINTR {}
            }
            if let Some(c) = cgroup {
                c.destroy();
            }
            let _ = fs::remove_dir(&merged);
            msg
        };

        // SAFETY: pidfd_open on our own child.
        let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as libc::c_int;
        if pidfd < 0 {
            let e = std::io::Error::last_os_error();
            return Err(abort(BackendError::io("opening a pidfd for the jail", e), &cgroup));
        }
        // SAFETY: fresh fd owned by us.
        let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };

        if userns {
            if let Err(e) = write_id_maps(pid) {
                return Err(abort(e, &cgroup));
            }
        }
        if let Some(c) = &cgroup {
            // The child has joined the v1 directories itself.
            if let Err(e) = c.add_v2(pid) {
                return Err(abort(BackendError::Setup(format!("placing the jail in its cgroup: {e}")), &cgroup));
            }
        }
        if let Err(e) = fs::write(format!("/proc/{pid}/oom_score_adj"), "-1000") {
            tracing::debug!(error = %e, "could not protect the jail's PID 1 from the OOM killer");
        }

        let mut sync_w = File::from(sync_w);
        if let Err(e) = sync_w.write_all(b"G") {
            return Err(abort(BackendError::io("starting the jail", e), &cgroup));
        }
        drop(sync_w);

        // Wait for exec (EOF) or a failure report.
        let mut report = Vec::new();
        if let Err(e) = File::from(err_r).read_to_end(&mut report) {
            return Err(abort(BackendError::io("waiting for the jail to start", e), &cgroup));
        }
        if !report.is_empty() {
            let msg = describe_failure(&report, &volume_names, &join_names);
            return Err(abort(BackendError::Setup(msg), &cgroup));
        }
        drop(plan);

        let guest_log = Mutex::new(Some(log_pump));
        let shared = Arc::new(Shared { pid, pidfd, cgroup, merged, guest_log, done: AtomicBool::new(false) });
        Ok(Jail {
            agent_channel: host_channel,
            runner: JailRunner { shared: shared.clone(), ran: false },
            control: Arc::new(JailControl { shared }),
        })
    }
}

fn describe_failure(report: &[u8], volume_names: &[String], cgroup_names: &[String]) -> String {
    if report.len() < 12 {
        return "the jail's first process failed during set-up".into();
    }
    let word = |i: usize| u32::from_ne_bytes([report[i], report[i + 1], report[i + 2], report[i + 3]]);
    let (step, item, errno) = (word(0), word(4), word(8) as i32);
    let what = Step::from_u32(step)
        .map(|s| s.describe(item, volume_names, &child::SYSTEM_DIR_NAMES, cgroup_names))
        .unwrap_or_else(|| format!("step {step}"));
    format!("jail set-up failed while {what}: {}", std::io::Error::from_raw_os_error(errno))
}

fn write_id_maps(pid: libc::pid_t) -> Result<(), BackendError> {
    // SAFETY: getuid/getgid have no preconditions.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let w = |file: &str, content: String| {
        let path = format!("/proc/{pid}/{file}");
        fs::write(&path, content).map_err(|e| BackendError::io(format!("writing {path}"), e))
    };
    if Path::new(&format!("/proc/{pid}/setgroups")).exists() {
        w("setgroups", "deny".into())?;
    }
    w("uid_map", format!("0 {uid} 1"))?;
    w("gid_map", format!("0 {gid} 1"))?;
    Ok(())
}

/// State shared by the runner and the control handle.
struct Shared {
    pid: libc::pid_t,
    pidfd: OwnedFd,
    cgroup: Option<Cgroup>,
    merged: PathBuf,
    /// Copies the guest's log pipe into guest.log; finished at clean-up.
    guest_log: Mutex<Option<LogPump>>,
    /// Set once PID 1 has been reaped.
    done: AtomicBool,
}

impl Shared {
    fn kill(&self) {
        if self.done.load(Ordering::SeqCst) {
            return;
        }
        // SAFETY: the pidfd refers to our child; after it is reaped the
        // call fails with ESRCH and never hits another process.
        unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.pidfd.as_raw_fd(),
                libc::SIGKILL,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            );
        }
        if let Some(c) = &self.cgroup {
            c.kill_all();
        }
    }

    /// Reaps PID 1 and cleans up. Returns how it ended.
    fn wait(&self) -> GuestExit {
        let exit = self.reap();
        self.cleanup();
        exit
    }

    /// Reaps PID 1 (after which [`Shared::done`] holds and nothing reads the
    /// cgroup any more). Returns how it ended.
    fn reap(&self) -> GuestExit {
        let mut status = 0;
        let exit = loop {
            // SAFETY: waitpid on our own child.
            let rc = unsafe { libc::waitpid(self.pid, &mut status, 0) };
            if rc == self.pid {
                break decode_status(status);
            }
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            break GuestExit { code: 255, detail: Some(format!("waiting for the jail's PID 1 failed: {e}")) };
        };
        self.done.store(true, Ordering::SeqCst);
        exit
    }

    fn cleanup(&self) {
        if let Some(c) = &self.cgroup {
            c.destroy();
        }
        // Every writer of the log pipe died with the pid namespace: what they
        // wrote is in guest.log before the run is over.
        let pump = self.guest_log.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(pump) = pump {
            if !pump.finish(GUEST_LOG_DRAIN) {
                tracing::warn!("the guest log pipe is still open after the jail ended; not waiting for it");
            }
        }
        // The mount point was only ever used inside the jail's namespace.
        let _ = fs::remove_dir(&self.merged);
    }
}

fn decode_status(status: libc::c_int) -> GuestExit {
    if libc::WIFEXITED(status) {
        GuestExit { code: libc::WEXITSTATUS(status), detail: None }
    } else if libc::WIFSIGNALED(status) {
        let sig = libc::WTERMSIG(status);
        GuestExit { code: 128 + sig, detail: Some(format!("killed by signal {sig}")) }
    } else {
        GuestExit { code: 255, detail: Some(format!("unexpected wait status {status:#x}")) }
    }
}

/// Waits for the jail's PID 1 on the calling thread.
pub struct JailRunner {
    shared: Arc<Shared>,
    ran: bool,
}

impl JailRunner {
    /// Blocks until PID 1 has exited, cleans up, and returns how it ended.
    pub fn wait(mut self) -> GuestExit {
        self.ran = true;
        self.shared.wait()
    }
}

impl GuestRunner for JailRunner {
    /// Reports the exit as soon as PID 1 is reaped, and removes the cgroup
    /// meanwhile on a second thread: the cgroup's `rmdir`s (0.3–1 ms) and
    /// the run's finalisation no longer wait for each other. The call still
    /// returns only when both are done.
    fn run(mut self: Box<Self>, observer: ExitObserver) {
        self.ran = true;
        let exit = self.shared.reap();
        let shared = &self.shared;
        std::thread::scope(|scope| {
            let cleaner = std::thread::Builder::new().name("alcove-jail-cleanup".into()).spawn_scoped(scope, || {
                shared.cleanup();
            });
            observer.guest_exited(exit);
            if cleaner.is_err() {
                shared.cleanup();
            }
        });
    }
}

impl Drop for JailRunner {
    fn drop(&mut self) {
        if !self.ran {
            // Never run: the jail must not outlive its handle.
            self.shared.kill();
            let _ = self.shared.wait();
        }
    }
}

/// Ends the jail and reads its usage, from any thread.
pub struct JailControl {
    shared: Arc<Shared>,
}

impl JailControl {
    /// The jail's PID 1 as seen from the host.
    pub fn pid(&self) -> libc::pid_t {
        self.shared.pid
    }

    /// The jail's cgroup directories (empty without cgroups).
    pub fn cgroup_paths(&self) -> Vec<PathBuf> {
        self.shared.cgroup.as_ref().map(|c| c.paths()).unwrap_or_default()
    }
}

impl GuestControl for JailControl {
    fn force_stop(&self) {
        self.shared.kill();
    }

    fn usage(&self) -> Option<GuestUsage> {
        if self.shared.done.load(Ordering::SeqCst) {
            return None;
        }
        self.shared.cgroup.as_ref()?.usage()
    }
}

/// Plans the read-only view of the jail's memory cgroup: `shown` is the path
/// under `/sys/fs/cgroup` at which the agent looks (see `alcove-agent`'s
/// oom module), relative, e.g. `memory/user.slice/alcove/box-1-0`.
fn cgroup_view_plan(source: &Path, shown: &Path) -> Result<child::CgroupView, BackendError> {
    let mut mkdirs = Vec::new();
    let mut dir = PathBuf::from("sys/fs/cgroup");
    for part in shown.components() {
        if let std::path::Component::Normal(p) = part {
            dir.push(p);
            mkdirs.push(cstring("cgroup view", dir.as_os_str().as_bytes())?);
        }
    }
    Ok(child::CgroupView { source: cstring("memory cgroup path", source.as_os_str().as_bytes())?, mkdirs })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_cgroup_join_names_the_file() {
        let mut report = Vec::new();
        for word in [Step::JoinCgroup as u32, 1, libc::EACCES as u32] {
            report.extend_from_slice(&word.to_ne_bytes());
        }
        let names = vec!["/sys/fs/cgroup/memory/a/tasks".to_string(), "/sys/fs/cgroup/pids/a/tasks".to_string()];
        let msg = describe_failure(&report, &[], &names);
        assert!(msg.contains("joining the jail's cgroup"), "{msg}");
        assert!(msg.contains("/sys/fs/cgroup/pids/a/tasks"), "{msg}");
        assert!(msg.contains("Permission denied"), "{msg}");
    }

    #[test]
    fn parents_of_guest_paths() {
        assert_eq!(parents("/a/b/c"), ["/a", "/a/b"]);
        assert!(parents("/a").is_empty());
    }

    #[test]
    fn decodes_wait_status() {
        assert_eq!(decode_status(3 << 8), GuestExit { code: 3, detail: None });
        assert_eq!(decode_status(9), GuestExit { code: 137, detail: Some("killed by signal 9".into()) });
    }
}
