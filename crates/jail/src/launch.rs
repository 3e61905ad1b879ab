//! One launch of a jail: the host-side preparation, the clone, the id maps,
//! the host's mounts and the go message (see the crate documentation for
//! the order and the reasons).
//!
//! Over 600 lines on purpose: one launch, in the order it happens.
//!
//! Invariants:
//! - nothing irreversible happens before [`crate::validate`] passed;
//! - until the go message, the child has done nothing visible; every
//!   failure after the clone kills and reaps it, removes its cgroup and
//!   leaves no mount behind (all mounts are detached or in its namespace);
//! - a private uid range that cannot be used (no idmapped mounts here) is
//!   reported as [`Started::Idmap`], and the caller launches again without
//!   a user namespace.

use crate::cgroup::Cgroup;
use crate::child::{self, ChildPlan, MountSource, Step, VolumePlan, MOUNT_FIRST_VOLUME};
use crate::mounts::{self, MountError, OverlaySpec, UpperDirs};
use crate::validate::{cstring, overlay_safe, parents, pipe, Checked};
use crate::{disk, idmap, is_root, policy, Isolation, JailOptions, JailProcess};
use alcove_backend::guest_log::{log_pipe, GUEST_LOG_LIMITS};
use alcove_backend::{BackendError, GuestNetwork, GuestSpec, NetworkDevice};
use alcove_protocol::agent_config::{AgentConfig, AgentMode};
use std::ffi::CString;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Mutex;

/// How a launch ended.
pub(crate) enum Started {
    /// Running (with the host end of its network link, if asked for).
    Ok(UnixStream, JailProcess, Option<NetworkDevice>),
    /// The private uid range could not be used here; why.
    Idmap(String),
    /// Any other failure.
    Err(BackendError),
}

impl From<BackendError> for Started {
    fn from(e: BackendError) -> Started {
        Started::Err(e)
    }
}

macro_rules! tri {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(e) => return Started::from(e),
        }
    };
}

/// The record of how the sandbox in `sandbox_dir` was isolated last.
pub(crate) fn record_path(sandbox_dir: &Path) -> PathBuf {
    sandbox_dir.join("isolation")
}

/// The isolation a launch asks for: a private range (claimed), the
/// caller's single id, or none.
pub(crate) fn decide(options: &JailOptions, spec: &GuestSpec) -> Result<Isolation, BackendError> {
    use crate::UserNamespace::*;
    // SAFETY: getuid/getgid have no preconditions.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let private = match options.user_namespace {
        Never => {
            let reason = format!("turned off: {}=off or the backend's options", crate::USERNS_ENV);
            return Ok(Isolation::HostRoot { reason });
        }
        Caller => return Ok(Isolation::Caller { uid, gid }),
        Auto if !is_root() => return Ok(Isolation::Caller { uid, gid }),
        Auto | Private => true,
    };
    debug_assert!(private);
    if !is_root() {
        return Err(BackendError::Unsupported {
            backend: "jail",
            reason: "a private uid range needs alcove to run as root".into(),
        });
    }
    private_dir(&spec.sandbox_dir)?;
    let owner = fs::canonicalize(&spec.sandbox_dir)
        .map_err(|e| BackendError::io(format!("resolving {}", spec.sandbox_dir.display()), e))?;
    let registry = match idmap::Registry::open(&idmap::registry_dir()) {
        Ok(r) => r,
        Err(e) => return Ok(Isolation::HostRoot { reason: e.to_string() }),
    };
    // A restart: the range recorded in the sandbox directory, still ours.
    let recorded = fs::read_to_string(record_path(&spec.sandbox_dir)).ok().and_then(|r| Isolation::from_record(&r));
    if let Some(Isolation::Private { base, .. }) = recorded {
        if registry.holds(base, &owner) {
            return Ok(Isolation::Private { base, count: idmap::RANGE_SIZE });
        }
    }
    match registry.claim(&owner) {
        Ok(base) => Ok(Isolation::Private { base, count: idmap::RANGE_SIZE }),
        Err(e @ idmap::IdmapError::Exhausted { .. }) => Err(BackendError::Setup(e.to_string())),
        Err(e) => Ok(Isolation::HostRoot { reason: e.to_string() }),
    }
}

/// Starts the jail with `isolation`.
pub(crate) fn start(options: &JailOptions, spec: &GuestSpec, checked: &Checked, isolation: &Isolation) -> Started {
    let host_mounts = !matches!(isolation, Isolation::Caller { .. });
    let host_root = matches!(isolation, Isolation::HostRoot { .. });
    let policy = tri!(policy::seccomp_policy(options.keep_sys_admin).map_err(|e| BackendError::Setup(e.to_string())));
    let drop_caps = policy::dropped_capabilities(options.keep_sys_admin, host_root);

    // ---- host-side preparation (all reversible or harmless) ----
    let upper = spec.sandbox_dir.join("upper");
    let work = spec.sandbox_dir.join("work");
    let merged = spec.sandbox_dir.join("merged");
    // The sandbox directory (and any missing parent) is owner-only whatever
    // the umask: what the guest writes is under it.
    tri!(private_dir(&spec.sandbox_dir));
    for dir in [&upper, &work, &merged] {
        tri!(fs::create_dir_all(dir).map_err(|e| BackendError::io(format!("creating {}", dir.display()), e)));
    }
    // Absolute paths for the overlay options and the child's chdir.
    let absolute =
        |p: &Path| fs::canonicalize(p).map_err(|e| BackendError::io(format!("resolving {}", p.display()), e));
    let (upper, work, merged) = (tri!(absolute(&upper)), tri!(absolute(&work)), tri!(absolute(&merged)));
    tri!(overlay_safe("sandbox directory", &merged));
    if let Some(parent) = spec.guest_log.parent() {
        if !parent.as_os_str().is_empty() {
            tri!(private_dir(parent));
        }
    }
    // The guest writes its log into a pipe, never a host file: a host
    // thread copies it into the bounded, rotating guest.log.
    let (log, log_pump) = tri!(log_pipe(&spec.guest_log, GUEST_LOG_LIMITS)
        .map_err(|e| BackendError::io(format!("opening the guest log {}", spec.guest_log.display()), e)));
    let devnull = tri!(File::open("/dev/null").map_err(|e| BackendError::io("opening /dev/null", e)));

    // The writable layer: on the sandbox's disk image when it has a limit.
    let disk = match spec.disk_mib {
        None => None,
        Some(_) if !host_mounts => {
            return Started::Err(BackendError::InvalidConfig(
                "a disk limit needs alcove to run as root (it mounts a per-sandbox filesystem image)".into(),
            ))
        }
        Some(mib) => Some(tri!(disk::open(&spec.sandbox_dir, mib).map_err(|e| BackendError::Setup(e.to_string())))),
    };
    if let Isolation::Private { base, .. } = isolation {
        let upper_path = disk.as_ref().map_or_else(|| upper.clone(), |d| d.upper_path());
        tri!(idmap::own_upper(&upper_path, *base).map_err(|e| BackendError::Setup(e.to_string())));
    }

    let hostname = options.hostname.as_deref().unwrap_or(&spec.name);
    let config = AgentConfig {
        hostname: hostname.to_string(),
        mode: AgentMode::Jail,
        env: spec.env.clone(),
        workdir: spec.workdir.clone(),
        user: spec.user.clone(),
        vm: None,
        heartbeat_ms: spec.heartbeat.map(|d| d.as_millis().clamp(1, u32::MAX as u128) as u32),
    }
    .to_json();
    let (config_r, config_w) = tri!(pipe());
    if config.len() > 60 * 1024 {
        // SAFETY: fcntl on our own pipe fd.
        let rc = unsafe { libc::fcntl(config_w.as_raw_fd(), libc::F_SETPIPE_SZ, config.len() as libc::c_int) };
        if rc < 0 || (rc as usize) < config.len() {
            return Started::Err(BackendError::InvalidConfig(format!(
                "the agent configuration ({} bytes) is too large",
                config.len()
            )));
        }
    }
    tri!(File::from(config_w).write_all(&config).map_err(|e| BackendError::io("writing the agent configuration", e)));

    let (host_channel, guest_channel) =
        tri!(alcove_backend::console::channel().map_err(|e| BackendError::io("creating the agent channel", e)));
    let (sync_host, sync_child) =
        tri!(UnixStream::pair().map_err(|e| BackendError::io("creating the jail's sync socket", e)));
    let (err_r, err_w) = tri!(pipe());

    // ---- the plan for the child: every allocation happens here ----
    let mut volume_names = Vec::new();
    let mut volumes = Vec::new();
    for v in &checked.volumes {
        volume_names.push(format!("{} at {}", v.host.display(), v.guest));
        let mut chain = parents(&v.guest);
        if v.is_dir {
            chain.push(v.guest.clone());
        }
        let mkdirs =
            tri!(chain.iter().map(|d| cstring("mount guest path", d.as_bytes())).collect::<Result<Vec<_>, _>>());
        volumes.push(VolumePlan {
            target: tri!(cstring("mount guest path", v.guest.as_bytes())),
            mkdirs,
            is_dir: v.is_dir,
            optional: v.optional,
        });
    }
    let source = if host_mounts { MountSource::Host } else { tri!(child_mount_source(spec, checked, &upper, &work)) };
    let n_mounts = MOUNT_FIRST_VOLUME + volumes.len();
    // SAFETY: CMSG_SPACE only computes a size.
    let cmsg_len = if host_mounts { (unsafe { libc::CMSG_SPACE((n_mounts * 4) as u32) }) as usize } else { 0 };
    let argv_strings =
        options.init_argv.clone().unwrap_or_else(|| vec!["alcove-agent".into(), "--config-fd".into(), "4".into()]);
    let argv_storage =
        tri!(argv_strings.iter().map(|a| cstring("init argument", a.as_bytes())).collect::<Result<Vec<_>, _>>());
    let mut argv: Vec<*const libc::c_char> = argv_storage.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let envp_storage =
        vec![c"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_owned(), c"HOME=/".to_owned()];
    let mut envp: Vec<*const libc::c_char> = envp_storage.iter().map(|a| a.as_ptr()).collect();
    envp.push(std::ptr::null());
    let tmpfs = |mib: u64| CString::new(format!("mode=1777,size={}k", mib * 1024)).expect("no NUL");
    let mut plan = ChildPlan {
        hostname: tri!(cstring("hostname", hostname.as_bytes())),
        merged: tri!(cstring("sandbox directory", merged.as_os_str().as_bytes())),
        source,
        volumes,
        mounts: vec![-1; n_mounts],
        cmsg: vec![0; cmsg_len],
        become_root: matches!(isolation, Isolation::Private { .. }),
        tmp_opts: tmpfs(crate::limits::tmp_mib(spec)),
        shm_opts: tmpfs(crate::limits::shm_mib(spec)),
        cgroup_view: None,
        cgroup_join: Vec::new(),
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
        fd_sync: sync_child.as_raw_fd(),
        close_fds: vec![host_channel.as_raw_fd(), sync_host.as_raw_fd(), err_r.as_raw_fd()],
    };

    // ---- cgroup (limits in place before the child can run) ----
    let cgroup = match Cgroup::create(&spec.name, options.cgroup_parent.as_deref(), &checked.limits) {
        Ok(c) => Some(c),
        Err(e) if !is_root() && !checked.limits_asked => {
            tracing::warn!(error = %e, "jail runs without cgroup limits (no access to the cgroup tree)");
            None
        }
        Err(e) if !is_root() => {
            return Started::Err(BackendError::InvalidConfig(format!(
                "the limits asked for cannot be applied: {e} (a rootless jail needs a delegated cgroup)"
            )))
        }
        Err(e) => return Started::Err(BackendError::Setup(format!("setting up the jail's cgroup: {e}"))),
    };
    if let Some((source, v2)) = cgroup.as_ref().and_then(|c| c.memory_dir()) {
        plan.cgroup_view =
            Some(child::CgroupView { source: tri!(cstring("memory cgroup path", source.as_os_str().as_bytes())), v2 });
    }
    let join_files = cgroup.as_ref().map(|c| c.self_join_files()).unwrap_or_default();
    let join_names: Vec<String> = join_files.iter().map(|p| p.display().to_string()).collect();
    plan.cgroup_join = tri!(join_files
        .iter()
        .map(|p| cstring("cgroup path", p.as_os_str().as_bytes()))
        .collect::<Result<Vec<_>, _>>());

    let mut flags =
        libc::CLONE_NEWPID | libc::CLONE_NEWNS | libc::CLONE_NEWUTS | libc::CLONE_NEWIPC | libc::CLONE_NEWNET;
    if !matches!(isolation, Isolation::HostRoot { .. }) {
        flags |= libc::CLONE_NEWUSER;
    }
    // SAFETY: the plan is complete; in the child clone_child never returns.
    let pid = match unsafe { child::clone_child(flags as libc::c_long, &mut plan) } {
        Ok(pid) => pid,
        Err(e) => return Started::Err(BackendError::io("creating the jail's first process", e)),
    };
    // Parent: drop the child's ends.
    drop((guest_channel, config_r, sync_child, err_w, log, devnull));

    let abort = |cgroup: &Option<Cgroup>| {
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
    };
    macro_rules! or_abort {
        ($e:expr) => {
            match $e {
                Ok(v) => v,
                Err(e) => {
                    abort(&cgroup);
                    return Started::from(e);
                }
            }
        };
    }

    // SAFETY: pidfd_open on our own child.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as RawFd;
    if pidfd < 0 {
        let e = std::io::Error::last_os_error();
        abort(&cgroup);
        return Started::Err(BackendError::io("opening a pidfd for the jail", e));
    }
    // SAFETY: fresh fd owned by us.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };

    or_abort!(write_id_maps(pid, isolation));
    // The guest's eth0, created and configured by the host inside the
    // jail's network namespace before the child may run: no guest process
    // ever needs CAP_NET_ADMIN for it.
    let network_device = match &spec.network {
        Some(link) => Some(or_abort!(network_link(pid, link))),
        None => None,
    };
    // Detached mounts whose last close would wait out an RCU grace period
    // (see `mounts`): kept until the jail's clean-up.
    let mut held: Vec<OwnedFd> = Vec::new();
    let sent = if host_mounts {
        let userns = match isolation {
            Isolation::Private { .. } => Some(or_abort!(File::open(format!("/proc/{pid}/ns/user"))
                .map(OwnedFd::from)
                .map_err(|e| BackendError::io("opening the jail's user namespace", e)))),
            _ => None,
        };
        let upper_dirs = match &disk {
            Some(d) => UpperDirs::Fds {
                upper: or_abort!(d.upper.try_clone().map_err(|e| BackendError::io("duplicating a descriptor", e))),
                work: or_abort!(d.work.try_clone().map_err(|e| BackendError::io("duplicating a descriptor", e))),
            },
            None => UpperDirs::Paths { upper: upper.clone(), work: work.clone() },
        };
        match host_side_mounts(checked, &upper_dirs, spec.ephemeral, userns.as_ref()) {
            Ok((fds, layers)) => {
                held.extend(layers);
                fds
            }
            Err(MountError::Idmap { path, source }) => {
                abort(&cgroup);
                return Started::Idmap(format!("idmapped mounts do not work here ({}: {source})", path.display()));
            }
            Err(e) => {
                abort(&cgroup);
                return Started::Err(BackendError::Setup(format!("preparing the jail's mounts: {e}")));
            }
        }
    } else {
        Vec::new()
    };
    if let Some(d) = disk {
        held.push(d.into_mount());
    }
    if let Some(c) = &cgroup {
        // The child has joined the v1 directories itself.
        or_abort!(c.add_v2(pid).map_err(|e| BackendError::Setup(format!("placing the jail in its cgroup: {e}"))));
    }
    if let Err(e) = fs::write(format!("/proc/{pid}/oom_score_adj"), "-1000") {
        tracing::debug!(error = %e, "could not protect the jail's PID 1 from the OOM killer");
    }
    or_abort!(send_go(&sync_host, &sent).map_err(|e| BackendError::io("starting the jail", e)));
    drop(sent);

    // Wait for exec (EOF) or a failure report; the sync socket stays open
    // until then, as the child's proof that the host is alive.
    let mut report = Vec::new();
    or_abort!(File::from(err_r)
        .read_to_end(&mut report)
        .map_err(|e| BackendError::io("waiting for the jail to start", e)));
    drop(sync_host);
    if !report.is_empty() {
        let msg = describe_failure(&report, &volume_names, &join_names);
        abort(&cgroup);
        return Started::Err(BackendError::Setup(msg));
    }
    drop(plan);
    // 0600 like every file of the home, whatever the umask.
    let record = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(record_path(&spec.sandbox_dir))
        .and_then(|mut f| f.write_all(format!("{isolation}\n").as_bytes()));
    if let Err(e) = record {
        tracing::debug!(error = %e, "could not record the jail's isolation");
    }
    Started::Ok(
        host_channel,
        JailProcess {
            pid,
            pidfd,
            cgroup,
            merged,
            isolation: isolation.clone(),
            guest_log: Mutex::new(Some(log_pump)),
            held_mounts: Mutex::new(held),
            done: AtomicBool::new(false),
        },
        network_device,
    )
}

/// Creates the jail's TAP inside its network namespace and configures it
/// there (address, prefix, MAC, default route, MTU).
fn network_link(pid: libc::pid_t, link: &GuestNetwork) -> Result<NetworkDevice, BackendError> {
    let config = alcove_net::device::LinkConfig {
        name: link.interface.clone(),
        mtu: link.mtu,
        mac: link.mac,
        address_v4: link.address_v4,
        prefix_v4: link.prefix_v4,
        gateway_v4: link.gateway_v4,
    };
    let netns = PathBuf::from(format!("/proc/{pid}/ns/net"));
    let tap = alcove_net::device::TapDevice::create_configured_in_netns(&netns, &config)
        .map_err(|e| BackendError::io(format!("creating the jail's {}", link.interface), e))?;
    let (fd, name) = tap.into_parts();
    Ok(NetworkDevice::Tap { fd, name })
}

/// Creates `dir` and any missing parent, 0700 whatever the umask.
fn private_dir(dir: &Path) -> Result<(), BackendError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| BackendError::io(format!("creating {}", dir.display()), e))
}

/// The probe behind [`crate::probe_isolation`].
pub(crate) fn probe_idmapped_overlay(scratch: &Path) -> Result<(), String> {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    let dir = scratch.join(format!(".alcove-idmap-probe-{}-{nanos}", std::process::id()));
    let result = probe_in(&dir);
    let _ = fs::remove_dir_all(&dir);
    result
}

fn probe_in(dir: &Path) -> Result<(), String> {
    let (lower, upper, work) = (dir.join("lower"), dir.join("upper"), dir.join("work"));
    for d in [&lower, &upper, &work] {
        fs::create_dir_all(d).map_err(|e| format!("creating {}: {e}", d.display()))?;
    }
    let (wait_r, wait_w) = pipe().map_err(|e| e.to_string())?;
    // A process in a fresh user namespace that only waits for the pipe to
    // close: safe to clone from a multi-threaded process.
    // SAFETY: raw clone without a new stack behaves like fork; the child
    // makes two system calls and _exits.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone,
            (libc::CLONE_NEWUSER | libc::SIGCHLD) as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    if pid < 0 {
        return Err(format!("creating a user namespace: {}", std::io::Error::last_os_error()));
    }
    if pid == 0 {
        let mut b = 0u8;
        // SAFETY: close and read on inherited pipe ends, then _exit.
        unsafe {
            libc::close(wait_w.as_raw_fd());
            libc::read(wait_r.as_raw_fd(), (&mut b as *mut u8).cast(), 1);
            libc::_exit(0);
        }
    }
    let pid = pid as libc::pid_t;
    drop(wait_r);
    let isolation = Isolation::Private { base: idmap::POOL_START, count: 1 };
    let result = write_id_maps(pid, &isolation)
        .map_err(|e| e.to_string())
        .and_then(|()| {
            File::open(format!("/proc/{pid}/ns/user"))
                .map(OwnedFd::from)
                .map_err(|e| format!("opening the user namespace: {e}"))
        })
        .and_then(|ns| {
            let lowers = [lower.clone()];
            let upper = UpperDirs::Paths { upper: upper.clone(), work: work.clone() };
            mounts::overlay(&OverlaySpec { lowers: &lowers, upper: &upper, volatile: false }, Some(&ns))
                .map(drop)
                .map_err(|e| match e {
                    MountError::Idmap { source, .. } => source.to_string(),
                    other => other.to_string(),
                })
        });
    drop(wait_w);
    // SAFETY: reaping our own child.
    unsafe {
        let mut status = 0;
        while libc::waitpid(pid, &mut status, 0) < 0 && *libc::__errno_location() == libc::EINTR {}
    }
    result
}

/// The rootless child's own overlay options and sources.
fn child_mount_source(
    spec: &GuestSpec,
    checked: &Checked,
    upper: &Path,
    work: &Path,
) -> Result<MountSource, BackendError> {
    let mut opts = b"lowerdir=".to_vec();
    let lowers: Vec<&[u8]> = checked.lowers.iter().map(|p| p.as_os_str().as_bytes()).collect();
    opts.extend_from_slice(&lowers.join(&b':'));
    opts.extend_from_slice(b",upperdir=");
    opts.extend_from_slice(upper.as_os_str().as_bytes());
    opts.extend_from_slice(b",workdir=");
    opts.extend_from_slice(work.as_os_str().as_bytes());
    // An ephemeral layer is mounted `volatile` (Linux 5.10+): overlayfs
    // then skips the sync of the whole upper filesystem it otherwise does
    // at unmount. The kernel leaves work/work/incompat/volatile behind,
    // which refuses a second mount of the same layer: fine for a layer
    // that is deleted after its one run.
    let overlay_fallback = if spec.ephemeral {
        let plain = opts.clone();
        opts.extend_from_slice(b",volatile");
        Some(cstring("overlay options", &plain)?)
    } else {
        None
    };
    Ok(MountSource::Child {
        overlay_opts: cstring("overlay options", &opts)?,
        overlay_fallback,
        agent_source: cstring("agent binary path", checked.agent.as_os_str().as_bytes())?,
        volume_sources: checked
            .volumes
            .iter()
            .map(|v| cstring("mount host path", v.host.as_os_str().as_bytes()))
            .collect::<Result<Vec<_>, _>>()?,
        volume_readonly: checked.volumes.iter().map(|v| v.readonly).collect(),
    })
}

/// The detached overlay, agent and volumes, in the child's order, and the
/// overlay's idmapped lower layers (to be closed later).
fn host_side_mounts(
    checked: &Checked,
    upper: &UpperDirs,
    volatile: bool,
    userns: Option<&OwnedFd>,
) -> Result<(Vec<OwnedFd>, Vec<OwnedFd>), MountError> {
    let mut fds = Vec::with_capacity(MOUNT_FIRST_VOLUME + checked.volumes.len());
    let overlay = mounts::overlay(&OverlaySpec { lowers: &checked.lowers, upper, volatile }, userns)?;
    fds.push(overlay.mount);
    fds.push(mounts::bind(&checked.agent, true, false, userns)?);
    for v in &checked.volumes {
        fds.push(mounts::bind(&v.host, v.readonly, true, userns)?);
    }
    Ok((fds, overlay.layers))
}

/// The go byte, with the mounts as `SCM_RIGHTS` when there are any.
fn send_go(sync: &UnixStream, fds: &[OwnedFd]) -> std::io::Result<()> {
    let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let bytes = std::mem::size_of_val(raw.as_slice());
    // SAFETY: CMSG_SPACE only computes a size.
    let mut control = vec![0u8; if raw.is_empty() { 0 } else { (unsafe { libc::CMSG_SPACE(bytes as u32) }) as usize }];
    let mut go = *b"G";
    let mut iov = libc::iovec { iov_base: go.as_mut_ptr().cast(), iov_len: 1 };
    // SAFETY: msghdr is plain data; the pointers set below outlive the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !raw.is_empty() {
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = control.len() as _;
        // SAFETY: the control buffer has room for one header and `bytes` of data.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(bytes as u32) as _;
            std::ptr::copy_nonoverlapping(raw.as_ptr().cast::<u8>(), libc::CMSG_DATA(cmsg), bytes);
        }
    }
    loop {
        // SAFETY: sendmsg with the message built above.
        let n = unsafe { libc::sendmsg(sync.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
        if n == 1 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

pub(crate) fn describe_failure(report: &[u8], volume_names: &[String], cgroup_names: &[String]) -> String {
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

/// Writes the jail's uid and gid maps: the private range, or the caller's
/// single id (then `setgroups` is denied, as an unprivileged writer must).
fn write_id_maps(pid: libc::pid_t, isolation: &Isolation) -> Result<(), BackendError> {
    let w = |file: &str, content: String| {
        let path = format!("/proc/{pid}/{file}");
        fs::write(&path, content).map_err(|e| BackendError::io(format!("writing {path}"), e))
    };
    match isolation {
        Isolation::HostRoot { .. } => Ok(()),
        Isolation::Private { base, count } => {
            w("uid_map", format!("0 {base} {count}"))?;
            w("gid_map", format!("0 {base} {count}"))
        }
        Isolation::Caller { uid, gid } => {
            if Path::new(&format!("/proc/{pid}/setgroups")).exists() {
                w("setgroups", "deny".into())?;
            }
            w("uid_map", format!("0 {uid} 1"))?;
            w("gid_map", format!("0 {gid} 1"))
        }
    }
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
}
