//! The `jail` backend: runs the guest agent as PID 1 of a set of new Linux
//! namespaces, in an overlay of the sandbox's root filesystem, under cgroup
//! limits, a seccomp filter and a reduced capability set.
//!
//! Over 600 lines on purpose: the backend, its options, the runner and the
//! control handle all act on one `JailProcess`; the launch's own steps
//! live in `launch.rs` and `child/`.
//!
//! # API
//!
//! [`JailBackend::new`] with [`JailOptions`]; [`GuestBackend::launch`] (type
//! erased) or [`JailBackend::spawn`] (concrete [`Jail`]: the agent channel,
//! a [`JailRunner`] whose [`JailRunner::wait`] reaps PID 1 and cleans up,
//! and a [`JailControl`] with `force_stop`, `usage`, `pause`, `resume`,
//! `pid`, `cgroup_paths` and `isolation`). [`JailOptions::init_argv`] runs any init program in
//! place of the agent (tests use busybox). [`check`] is the pre-flight of a
//! spec's limits, [`limits::fill_defaults`] the limits that hold by
//! default, [`probe_isolation`] what `alcove doctor` reports.
//!
//! # Isolation ([`Isolation`], recorded in `sandbox_dir/isolation`)
//!
//! - **Private uid range** (alcove runs as root, the default): a user
//!   namespace mapping guest ids `0..65536` to a host range of the sandbox's
//!   own ([`idmap`]: allocated in a host-global registry, kept across
//!   stop/start, reclaimed once the sandbox directory is gone). Every
//!   capability the guest keeps counts only inside that namespace. The
//!   lower layers, the agent and the volumes are idmapped mounts, so they
//!   show their host owners; the writable layer's files belong to the
//!   range on the host.
//! - **Caller** (alcove is not root): a user namespace mapping the caller's
//!   uid and gid to root, nothing else.
//! - **Host root** (root, where idmapped mounts do not work, or
//!   [`UserNamespace::Never`]): no user namespace; guest root is host root,
//!   so `CAP_SETFCAP` is dropped as well.
//!
//! # What `launch` builds
//!
//! 1. **Validation** (before anything irreversible, as one-line
//!    [`BackendError::InvalidConfig`] errors): name usable as a hostname;
//!    rootfs present and a directory; agent binary present, a file,
//!    executable; every mount's host path present and its guest path
//!    absolute, without `..`, not `/` and not under `/proc`, `/sys`, `/dev`
//!    or `/.alcove`; limits within bounds ([`limits`]); 1 ≤ cpus ≤ the
//!    host's online CPUs; overlay paths free of `,` `:` `\`.
//! 2. **Host side**: `sandbox_dir` (0700 whatever the umask) with `upper/`,
//!    `work/` and `merged/` (the first two persist across stop/start); with
//!    a disk limit, the sandbox's ext4 image ([`disk`]) holds `upper/` and
//!    `work/` instead; the guest log: a pipe whose read end a host thread
//!    copies into the bounded, rotating `guest.log` (see
//!    [`alcove_backend::guest_log`]; the guest never holds a host file);
//!    the cgroup with its limits (see
//!    [`cgroup`]); the agent channel; a pipe already holding the JSON
//!    [`alcove_protocol::agent_config::AgentConfig`]; the uid range.
//! 3. **Clone** with new pid, mount, uts, ipc and net namespaces (plus the
//!    user namespace); the host writes the id maps, places the child in its
//!    cgroup2 directory and — when root — builds the overlay (the host
//!    mounts it, detached, over idmapped lower layers), the agent's and the
//!    volumes' mounts ([`mounts`]), and sends them with the go byte.
//! 4. **The child** ([`child`]): joins its v1 cgroups, waits for the go
//!    byte, makes every mount private, attaches (or, rootless, mounts) the
//!    overlay on `merged/` and enters it, becomes the namespace's root,
//!    enters a new cgroup namespace (its /proc/self/cgroup shows `/`), sets
//!    the hostname, and in the new root mounts `/dev` (a `nodev` tmpfs with
//!    the host's `null`, `zero`, `full`, `random`, `urandom`, `tty`
//!    bind-mounted, links, devpts, a sized `/dev/shm`), `/proc` with
//!    `sys`, `sysrq-trigger`, `irq`, `bus`, `fs` read-only and runc's
//!    masked files and directories hidden, `/sys` read-only with its masked
//!    directories, the jail's memory cgroup read-only, a sized `/tmp`, the
//!    agent read-only at `/.alcove/agent`; pivots, detaches the old root,
//!    attaches the volumes, brings `lo` up, drops privileges (below), puts
//!    `/dev/null` on fd 0, the guest log pipe on 1 and 2, the agent channel on
//!    3 and the config pipe on 4, and execs `/.alcove/agent --config-fd 4`.
//!
//! Every guest-writable or host-provided mount (the overlay root, volumes,
//! `/tmp`, `/dev/shm`, `/dev`, `/.alcove`) is `nosuid,nodev`; only the
//! bound device nodes and devpts allow devices. The agent therefore finds
//! /proc, /sys, /dev/pts, /dev/shm and /tmp already mounted and the
//! hostname already set; it treats those as done.
//!
//! # Privilege policy
//!
//! - **Capabilities**: the bounding set keeps only [`policy::KEPT_CAPABILITIES`]
//!   (`CAP_SETFCAP` too in a user namespace); `CAP_NET_ADMIN`,
//!   `CAP_SYS_BOOT`, `CAP_SYS_ADMIN` (unless
//!   [`JailOptions::keep_sys_admin`]), `CAP_MKNOD`, `CAP_SYS_MODULE`,
//!   `CAP_SYS_RAWIO`, `CAP_SYS_PTRACE`, `CAP_SYS_TIME`,
//!   `CAP_DAC_READ_SEARCH` and the rest are gone for every process of the
//!   jail; ambient and inheritable sets are cleared.
//! - **no_new_privs** is set: nothing in the jail can gain privileges by
//!   executing a set-uid/set-gid or file-capability binary.
//! - **seccomp** ([`policy`]): see [`policy::seccomp_policy`]; among others
//!   `mknod` of devices, the mount API (without `CAP_SYS_ADMIN`), `setns`,
//!   `unshare`, new user namespaces, `bpf`, `keyctl`, `userfaultfd`,
//!   `io_uring_*` and `open_by_handle_at` are refused.
//! - **cgroup**: memory (swap disabled), CPU quota, pids (default
//!   [`DEFAULT_PIDS_LIMIT`]), and on v1 a device allow-list.
//! - **OOM**: the jail's cgroup OOM killer picks the largest process. The
//!   host also tries to set the agent's `oom_score_adj` to -1000 (needs
//!   `CAP_SYS_RESOURCE`; skipped where withheld).
//! - **Lifetime**: the child has `PR_SET_PDEATHSIG=SIGKILL` (set again
//!   after it changed ids), so the jail dies with the *thread* that called
//!   [`GuestBackend::launch`]. Killing PID 1 ends the whole pid namespace; the
//!   runner then reports the exit and removes the cgroup, and the mount
//!   namespace vanishes with its last process, leaving no mount behind.
//!
//! Rootless jails (not root) without a delegated cgroup run without cgroup
//! limits when none was asked for; a limit asked for that cannot be applied
//! refuses the launch.
#![warn(missing_docs)]

pub mod cgroup;
mod child;
pub mod disk;
pub mod freezer;
pub mod idmap;
mod launch;
pub mod limits;
pub mod mounts;
pub mod names;
pub mod policy;
mod sys;
mod validate;

use alcove_backend::{
    BackendError, ExitObserver, GuestBackend, GuestControl, GuestExit, GuestRunner, GuestSpec, GuestUsage, Launched,
};
use cgroup::Cgroup;
use std::fmt;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use child::AGENT_PATH;
pub use limits::{check, DEFAULT_PIDS_LIMIT, MIN_MEMORY_MIB, MIN_PIDS_LIMIT};
pub use validate::check_hostname;
pub use validate::MAX_VOLUMES;

/// How long clean-up waits for the guest log's last bytes once the jail has
/// ended (its writers are gone then, so this is only a bound).
const GUEST_LOG_DRAIN: Duration = Duration::from_secs(2);

/// Whether and how to put the jail in a new user namespace. Written
/// lowercase in a sandbox's configuration (`"never"`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UserNamespace {
    /// Root: a private uid range (falling back to none where idmapped
    /// mounts do not work); not root: the caller mapped to root.
    #[default]
    Auto,
    /// A private uid range, falling back like `Auto` (root only).
    Private,
    /// The caller's uid and gid mapped to root, nothing else.
    Caller,
    /// Never (launch fails when not root).
    Never,
}

/// Environment variable that turns a root-run jail's user namespace off:
/// `off` gives every jail the fallback mode ([`Isolation::HostRoot`],
/// shown by `alcove inspect`), `auto` (or unset) the default. A switch for
/// diagnosis and for measuring what the namespace costs
/// (`bench/compare --only run` runs both); nothing sets it by default.
pub const USERNS_ENV: &str = "ALCOVE_JAIL_USERNS";

/// How the jail backend behaves; part of a sandbox's configuration (its
/// `jail` settings), so a sandbox runs with the options it was created with.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
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
    /// The jail's hostname (UTS namespace, `/etc/hostname`, `/etc/hosts`,
    /// `$HOSTNAME`); `None`: the sandbox name. Checked by
    /// [`check_hostname`].
    pub hostname: Option<String>,
}

impl JailOptions {
    /// The default options, with the user-namespace mode read from
    /// [`USERNS_ENV`]. An unknown value is a one-line error.
    pub fn from_env() -> Result<JailOptions, BackendError> {
        let user_namespace = match std::env::var_os(USERNS_ENV) {
            None => UserNamespace::Auto,
            Some(v) if v == "auto" || v.is_empty() => UserNamespace::Auto,
            Some(v) if v == "off" => UserNamespace::Never,
            Some(v) => {
                return Err(BackendError::InvalidConfig(format!(
                    "{USERNS_ENV}={} is not understood (auto or off)",
                    v.to_string_lossy()
                )))
            }
        };
        Ok(JailOptions { user_namespace, ..JailOptions::default() })
    }
}

/// How a jail's ids relate to the host's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Isolation {
    /// Guest ids `0..count` are host ids `base..base+count`.
    Private {
        /// First host id.
        base: u32,
        /// Number of ids.
        count: u32,
    },
    /// Guest root is the (unprivileged) caller; no other id exists.
    Caller {
        /// The caller's uid.
        uid: u32,
        /// The caller's gid.
        gid: u32,
    },
    /// No user namespace: guest root is the host's root.
    HostRoot {
        /// Why (idmapped mounts unavailable, or turned off).
        reason: String,
    },
}

const PRIVATE_RECORD: &str = "private user namespace: guest ids 0-";

impl fmt::Display for Isolation {
    /// One line, also the record in `sandbox_dir/isolation` that `alcove
    /// inspect` shows.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Isolation::Private { base, count } => write!(
                f,
                "{PRIVATE_RECORD}{} are host ids {base}-{}",
                count - 1,
                u64::from(*base) + u64::from(*count) - 1
            ),
            Isolation::Caller { uid, gid } => {
                write!(f, "rootless user namespace: guest root is host uid {uid} (gid {gid}), no other ids")
            }
            Isolation::HostRoot { reason } => write!(
                f,
                "no user namespace ({reason}): guest root is host root; CAP_NET_ADMIN, CAP_SYS_BOOT and CAP_SETFCAP dropped"
            ),
        }
    }
}

impl Isolation {
    /// Reads a private range back from its record line (other kinds carry
    /// nothing a launch reuses).
    pub fn from_record(line: &str) -> Option<Isolation> {
        let rest = line.trim_end().strip_prefix(PRIVATE_RECORD)?;
        let (last, range) = rest.split_once(" are host ids ")?;
        let count = last.parse::<u32>().ok()?.checked_add(1)?;
        let (base, end) = range.split_once('-')?;
        let base: u32 = base.parse().ok()?;
        let end: u64 = end.parse().ok()?;
        (end == u64::from(base) + u64::from(count) - 1).then_some(Isolation::Private { base, count })
    }
}

/// The isolation line recorded in `sandbox_dir` by the sandbox's last
/// jail launch (what `alcove inspect` shows), if any.
pub fn recorded_isolation(sandbox_dir: &std::path::Path) -> Option<String> {
    let text = std::fs::read_to_string(launch::record_path(sandbox_dir)).ok()?;
    text.lines().next().map(str::to_string).filter(|l| !l.is_empty())
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

/// A running jail, with concrete handle types (what [`GuestBackend::launch`]
/// returns, before type erasure).
pub struct Jail {
    /// Host end of the agent channel (the jail's fd 3).
    pub agent_channel: std::os::unix::net::UnixStream,
    /// Waits for PID 1; kills the jail if dropped without being run.
    pub runner: JailRunner,
    /// Ends the jail, reads usage.
    pub control: Arc<JailControl>,
    /// The host end of the jail's `eth0` when the spec asked for a network.
    pub network_device: Option<alcove_backend::NetworkDevice>,
}

impl GuestBackend for JailBackend {
    fn launch(self: Box<Self>, spec: &GuestSpec) -> Result<Launched, BackendError> {
        let jail = self.spawn(spec)?;
        Ok(Launched {
            agent_channel: jail.agent_channel,
            runner: Box::new(jail.runner),
            control: jail.control,
            network_device: jail.network_device,
        })
    }

    /// The cgroups of a jail whose sandbox process died, under its
    /// configured parent too ([`cgroup::remove_leftovers_within`]).
    fn remove_leftovers(&self, sandbox: &str, pid: u32) -> bool {
        let parent = self.options.cgroup_parent.as_deref();
        cgroup::remove_leftovers_within(sandbox, pid, parent, cgroup::RELEASE_WAIT)
    }
}

impl JailBackend {
    /// Validates `spec` and starts the jail (what `launch` does).
    pub fn spawn(&self, spec: &GuestSpec) -> Result<Jail, BackendError> {
        JailBackend::check_host(&self.options)?;
        let mut checked = validate::validate(spec)?;
        let hostname = self.options.hostname.as_deref().unwrap_or(&spec.name);
        check_hostname(hostname).map_err(BackendError::InvalidConfig)?;
        let name_files = names::prepare(spec, hostname, &checked.volumes)?;
        checked.volumes.extend(name_files);
        let isolation = launch::decide(&self.options, spec)?;
        let started = match launch::start(&self.options, spec, &checked, &isolation) {
            launch::Started::Idmap(reason) => {
                tracing::warn!(%reason, "the jail runs without a user namespace");
                launch::start(&self.options, spec, &checked, &Isolation::HostRoot { reason })
            }
            other => other,
        };
        let (agent_channel, shared, network_device) = match started {
            launch::Started::Ok(channel, shared, network_device) => (channel, Arc::new(shared), network_device),
            launch::Started::Idmap(reason) => return Err(BackendError::Setup(reason)),
            launch::Started::Err(e) => return Err(e),
        };
        Ok(Jail {
            agent_channel,
            runner: JailRunner { shared: shared.clone(), ran: false },
            control: Arc::new(JailControl { shared }),
            network_device,
        })
    }
}

/// What `alcove doctor` reports about jail isolation on this host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IsolationProbe {
    /// Idmapped lower layers under a host-built overlay work here.
    pub idmapped_mounts: bool,
    /// What a root-run jail gets, and why.
    pub detail: String,
}

/// Tries, in a throw-away user namespace and a temporary directory under
/// `scratch` (best on the filesystem of alcove's home), exactly what a
/// root-run jail needs: an idmapped clone of a directory as the lower layer
/// of an overlay built with the new mount API. Leaves nothing behind (the
/// mounts are never attached; the directory is removed).
pub fn probe_isolation(scratch: &std::path::Path) -> IsolationProbe {
    if !is_root() {
        return IsolationProbe {
            idmapped_mounts: false,
            detail: "not root: a rootless jail maps only the caller's uid to root".into(),
        };
    }
    match launch::probe_idmapped_overlay(scratch) {
        Ok(()) => IsolationProbe {
            idmapped_mounts: true,
            detail: format!(
                "yes: each jail gets a private uid range of {} ids from {}..{}",
                idmap::RANGE_SIZE,
                idmap::POOL_START,
                idmap::POOL_END
            ),
        },
        Err(why) => IsolationProbe {
            idmapped_mounts: false,
            detail: format!(
                "no ({why}): jails run without a user namespace, with CAP_NET_ADMIN, CAP_SYS_BOOT and CAP_SETFCAP dropped"
            ),
        },
    }
}

/// The jail's PID 1 and what it holds, shared by the runner and the control handle.
pub(crate) struct JailProcess {
    pid: libc::pid_t,
    pidfd: OwnedFd,
    cgroup: Option<Cgroup>,
    merged: PathBuf,
    isolation: Isolation,
    /// Detached mounts the jail's overlay was built from (idmapped lower
    /// layers, the disk image): closed at clean-up, where the RCU grace
    /// period their unmount waits for delays no launch.
    held_mounts: Mutex<Vec<OwnedFd>>,
    /// Copies the guest's log pipe into guest.log; finished at clean-up.
    guest_log: Mutex<Option<alcove_backend::guest_log::LogPump>>,
    /// Set once PID 1 has been reaped.
    done: AtomicBool,
}

impl JailProcess {
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

    /// Reaps PID 1 (after which [`JailProcess::done`] holds and nothing reads the
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
            break GuestExit::exited(255).with_detail(format!("waiting for the jail's PID 1 failed: {e}"));
        };
        self.done.store(true, Ordering::SeqCst);
        exit
    }

    fn cleanup(&self) {
        if let Some(c) = &self.cgroup {
            c.destroy();
        }
        self.held_mounts.lock().unwrap_or_else(|p| p.into_inner()).clear();
        // Every writer of the log pipe died with the pid namespace: what they
        // wrote is in guest.log before the run is over.
        let pump = self.guest_log.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(pump) = pump {
            if !pump.finish(GUEST_LOG_DRAIN) {
                tracing::warn!("the guest log pipe is still open after the jail ended; not waiting for it");
            }
        }
        // The mount point was only ever used inside the jail's namespace.
        let _ = std::fs::remove_dir(&self.merged);
    }
}

fn decode_status(status: libc::c_int) -> GuestExit {
    if libc::WIFEXITED(status) {
        GuestExit::exited(libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        GuestExit::killed(libc::WTERMSIG(status))
    } else {
        GuestExit::exited(255).with_detail(format!("unexpected wait status {status:#x}"))
    }
}

/// Waits for the jail's PID 1 on the calling thread.
pub struct JailRunner {
    shared: Arc<JailProcess>,
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
    /// meanwhile on a second thread: the cgroup's `rmdir`s and
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
    shared: Arc<JailProcess>,
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

    /// How the jail's ids relate to the host's.
    pub fn isolation(&self) -> &Isolation {
        &self.shared.isolation
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

    fn pause(&self) -> Result<(), String> {
        let (dir, interface) = self.freezer()?;
        freezer::freeze(&dir, interface, freezer::FREEZE_BUDGET).map_err(|e| e.to_string())
    }

    fn resume(&self) -> Result<(), String> {
        let (dir, interface) = self.freezer()?;
        freezer::thaw(&dir, interface).map_err(|e| e.to_string())
    }
}

impl JailControl {
    /// The jail's freezer, while PID 1 lives.
    fn freezer(&self) -> Result<(PathBuf, freezer::Interface), String> {
        if self.shared.done.load(Ordering::SeqCst) {
            return Err("the sandbox has ended".into());
        }
        let cgroup = self.shared.cgroup.as_ref();
        cgroup.and_then(Cgroup::freezer).ok_or_else(|| freezer::FreezeError::NoFreezer.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_wait_status() {
        assert_eq!(decode_status(3 << 8), GuestExit::exited(3));
        assert_eq!(decode_status(9), GuestExit::killed(9));
    }

    #[test]
    fn isolation_records_read_back() {
        let private = Isolation::Private { base: idmap::POOL_START, count: idmap::RANGE_SIZE };
        assert_eq!(Isolation::from_record(&format!("{private}\n")), Some(private));
        let host = Isolation::HostRoot { reason: "x".into() };
        assert!(host.to_string().contains("CAP_NET_ADMIN"));
        assert_eq!(Isolation::from_record(&host.to_string()), None);
        assert_eq!(Isolation::from_record("private user namespace: guest ids 0-65535 are host ids 5-9"), None);
    }
}
