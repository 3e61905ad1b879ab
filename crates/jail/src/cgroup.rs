//! Cgroup placement, limits, usage and clean-up for one jail, on cgroup v1,
//! v2 or a mix of both.
//!
//! Over 600 lines on purpose: v1, v2 and mixed hierarchies share every
//! operation (place, limit, sample, remove); split by version, each operation
//! would be split in two.
//!
//! Detection: `/proc/self/mountinfo` lists the cgroup mounts; a v1 mount's
//! super options name its controllers, a v2 mount's root `cgroup.controllers`
//! lists the controllers it owns (a controller bound to a v1 hierarchy is
//! never listed there). Each controller the jail uses (`memory`, `cpu`,
//! `cpuacct`, `pids`, `blkio`/`io`, `devices`, `freezer`) is taken from the
//! hierarchy that has it; a hierarchy with no wanted controller is not
//! touched. The freezer is v1's `freezer` hierarchy, else the cgroup2 mount
//! (where freezing is a core file of every cgroup, `cgroup.freeze`, listed
//! in no `cgroup.controllers`).
//!
//! Placement: the jail's cgroup is `<mount>/<parent>/<leaf>` in every
//! hierarchy used, where `<parent>` is by default the sandbox process's own
//! cgroup in that hierarchy (from `/proc/self/cgroup`) followed by `alcove`
//! (so the jail stays inside whatever accounting encloses the sandbox
//! process), or [`crate::JailOptions::cgroup_parent`] when set. `<leaf>` is
//! `<name>-<pid>-<counter>`, unique per launch.
//!
//! Over 600 lines: one concern, cgroup v1 and v2 placement, limits, usage
//! and clean-up side by side, whose parts share the hierarchy detection.
//!
//! Invariants:
//! - Limits are written before the jail's first process joins, so no
//!   process of the jail ever runs unlimited.
//! - [`Cgroup::destroy`] kills whatever is still inside, removes the leaf
//!   directories and then the `alcove` parent when it has become empty; it
//!   is idempotent.
//! - Every kill ([`Cgroup::kill_all`], [`remove_leftovers`]) signals first,
//!   then thaws the freezer: a frozen v1 task dies only once thawed, and
//!   thawing after the SIGKILL lets no paused code run again.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Why a cgroup operation failed.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// A needed controller is mounted nowhere usable.
    #[error("the {controller} cgroup controller is not available on this host ({why})")]
    MissingController {
        /// Controller name.
        controller: &'static str,
        /// What was looked at.
        why: String,
    },
    /// Reading or writing a cgroup file failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// The operation.
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> CgroupError + 'a {
    move |source| CgroupError::Io { what, path: path.to_path_buf(), source }
}

/// A controller the jail uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Controller {
    /// Memory limit and usage.
    Memory,
    /// CPU quota (v1 `cpu`; v2 `cpu` also gives usage).
    Cpu,
    /// CPU usage on v1.
    Cpuacct,
    /// Process count limit.
    Pids,
    /// Block I/O usage (v1 `blkio`, v2 `io`).
    Io,
    /// Device access allow-list (v1 only).
    Devices,
    /// Pause and resume (v1 `freezer`; v2 `cgroup.freeze`, in every cgroup).
    Freezer,
}

impl Controller {
    fn v1_name(self) -> &'static str {
        match self {
            Controller::Memory => "memory",
            Controller::Cpu => "cpu",
            Controller::Cpuacct => "cpuacct",
            Controller::Pids => "pids",
            Controller::Io => "blkio",
            Controller::Devices => "devices",
            Controller::Freezer => "freezer",
        }
    }

    fn v2_name(self) -> Option<&'static str> {
        match self {
            Controller::Memory => Some("memory"),
            Controller::Cpu | Controller::Cpuacct => Some("cpu"),
            Controller::Pids => Some("pids"),
            Controller::Io => Some("io"),
            Controller::Devices | Controller::Freezer => None,
        }
    }

    const ALL: [Controller; 7] = [
        Controller::Memory,
        Controller::Cpu,
        Controller::Cpuacct,
        Controller::Pids,
        Controller::Io,
        Controller::Devices,
        Controller::Freezer,
    ];
}

/// A cgroup hierarchy on this host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hierarchy {
    /// Mount point.
    pub mount: PathBuf,
    /// Root of the mount within the hierarchy (`/` unless in a cgroup ns).
    pub mount_root: String,
    /// `true` for cgroup2.
    pub v2: bool,
    /// Controller names (v1: from the mount options; v2: `cgroup.controllers`).
    pub controllers: Vec<String>,
    /// The calling process's cgroup in this hierarchy.
    pub own_path: String,
}

/// Starts, on a thread of its own, a no-op cgroup attach when the jail will
/// use the cgroup2 hierarchy: this process is written into the cgroup2
/// cgroup it is already in. The jail joins its v1 cgroups itself without the
/// kernel's global threadgroup lock (see [`Cgroup::self_join_files`]), but
/// its cgroup2 placement is a `cgroup.procs` write by the sandbox process,
/// and the first such write after a quiet spell waits out an RCU grace
/// period (milliseconds; BENCHMARKS.md); paying it here, in parallel with the sandbox
/// process's start-up, mostly takes it off the jail's critical path (the
/// lock stays fast for a while after a write). Best effort: errors are
/// ignored and nothing changes membership; on hosts where
/// the jail uses v1 only the thread writes nothing.
pub fn prewarm_attach() {
    // On a thread from the start: even reading the hierarchies stays off
    // the sandbox process's start-up.
    let spawned = std::thread::Builder::new().name("alcove-cgroup-warm".into()).spawn(|| {
        let Ok(list) = hierarchies() else { return };
        let Some(v2) = plan_hierarchies(&list).into_iter().map(|(h, _)| h).find(|h| h.v2) else { return };
        let own = v2.own_path.strip_prefix(v2.mount_root.trim_end_matches('/')).unwrap_or(&v2.own_path);
        let procs = v2.mount.join(own.trim_start_matches('/')).join("cgroup.procs");
        let _ = std::fs::write(&procs, std::process::id().to_string());
    });
    if let Err(e) = spawned {
        tracing::debug!(error = %e, "no cgroup pre-warm thread");
    }
}

/// Which hierarchy serves each controller a jail uses: v1 first (a
/// controller on a v1 hierarchy is never available on v2 anyway).
fn plan_hierarchies(hierarchies: &[Hierarchy]) -> Vec<(&Hierarchy, Vec<Controller>)> {
    let mut plan: Vec<(&Hierarchy, Vec<Controller>)> = Vec::new();
    for controller in Controller::ALL {
        let found = hierarchies
            .iter()
            .find(|h| !h.v2 && h.controllers.iter().any(|c| c == controller.v1_name()))
            .or_else(|| {
                if controller == Controller::Freezer {
                    // A core interface of cgroup2, not a controller.
                    return hierarchies.iter().find(|h| h.v2);
                }
                let v2 = controller.v2_name()?;
                hierarchies.iter().find(|h| h.v2 && h.controllers.iter().any(|c| c == v2))
            });
        if let Some(h) = found {
            match plan.iter_mut().find(|(p, _)| p.mount == h.mount) {
                Some((_, list)) => list.push(controller),
                None => plan.push((h, vec![controller])),
            }
        }
    }
    plan
}

/// The hierarchy that serves `controller` (the one [`Cgroup::create`] uses).
pub fn hierarchy_for(hierarchies: &[Hierarchy], controller: Controller) -> Option<&Hierarchy> {
    plan_hierarchies(hierarchies).into_iter().find(|(_, list)| list.contains(&controller)).map(|(h, _)| h)
}

/// The parent of a jail's cgroup in `h`, relative to the mount: `parent`,
/// else the calling process's own cgroup followed by `alcove`.
fn relative_parent(h: &Hierarchy, parent: Option<&str>) -> String {
    match parent {
        Some(p) => p.trim_matches('/').to_string(),
        None => {
            let own = h.own_path.strip_prefix(h.mount_root.trim_end_matches('/')).unwrap_or(&h.own_path);
            let own = own.trim_matches('/');
            if own.is_empty() {
                "alcove".to_string()
            } else {
                format!("{own}/alcove")
            }
        }
    }
}

/// The directory in which a jail's cgroup would be created in `h`.
pub fn parent_dir(h: &Hierarchy, parent: Option<&str>) -> PathBuf {
    h.mount.join(relative_parent(h, parent))
}

/// Removes the cgroups left behind by a jail whose sandbox process died
/// without cleaning up (killed with SIGKILL): the leaves [`leftovers`]
/// finds. Any process still inside is killed first. Best effort; returns
/// how many cgroups were removed.
pub fn remove_leftovers(name: &str, pid: u32, configured_parent: Option<&str>) -> usize {
    let mut removed = 0;
    let mut parents = Vec::new();
    for dir in leftovers(name, pid, configured_parent) {
        for _ in 0..50 {
            for p in read(&dir.join("cgroup.procs")).unwrap_or_default().lines() {
                if let Ok(p) = p.trim().parse::<libc::pid_t>() {
                    // SAFETY: kill has no memory-safety preconditions.
                    unsafe { libc::kill(p, libc::SIGKILL) };
                }
            }
            // A paused jail's tasks die only once thawed.
            crate::freezer::thaw_if_any(&dir);
            if std::fs::remove_dir(&dir).is_ok() {
                removed += 1;
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        if let Some(parent) = dir.parent() {
            parents.push(parent.to_path_buf());
        }
    }
    // The shared parent goes once empty, as after a normal exit.
    for parent in parents {
        let _ = std::fs::remove_dir(&parent);
    }
    removed
}

/// How long the clean-up after a dead sandbox process waits for its jail's
/// cgroups to empty: a cgroup cannot be removed until its last task is
/// reaped, which the host's init does in its own time (≈ 1.5 s on the
/// project's machine).
pub const RELEASE_WAIT: Duration = Duration::from_secs(5);

/// [`remove_leftovers`] until [`leftovers`] finds none, for up to `wait`;
/// true once none is left.
pub fn remove_leftovers_within(name: &str, pid: u32, configured_parent: Option<&str>, wait: Duration) -> bool {
    let deadline = Instant::now() + wait;
    loop {
        remove_leftovers(name, pid, configured_parent);
        if leftovers(name, pid, configured_parent).is_empty() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The cgroups a jail of sandbox `name` started by the sandbox process
/// `pid` left behind: the leaves `…/alcove/<name>-<pid>-<n>` in every
/// hierarchy, looked for under the calling process's own cgroup (where the
/// sandbox process it started put them), under the hierarchy's root, and
/// under `configured_parent` (the jail's [`crate::JailOptions::cgroup_parent`])
/// when it had one. A leaf stays until its last task is reaped, which the
/// host's init may do only after a while.
pub fn leftovers(name: &str, pid: u32, configured_parent: Option<&str>) -> Vec<PathBuf> {
    let Ok(list) = hierarchies() else { return Vec::new() };
    let prefix = format!("{name}-{pid}-");
    let mut found = Vec::new();
    for h in &list {
        let own = h.own_path.strip_prefix(h.mount_root.trim_end_matches('/')).unwrap_or(&h.own_path);
        let own = own.trim_matches('/');
        let mut parents = vec![h.mount.join("alcove")];
        if !own.is_empty() {
            parents.push(h.mount.join(own).join("alcove"));
        }
        if configured_parent.is_some() {
            parents.push(parent_dir(h, configured_parent));
        }
        for parent in parents {
            let Ok(entries) = std::fs::read_dir(&parent) else { continue };
            for entry in entries.flatten() {
                let file_name = entry.file_name();
                let Some(rest) = file_name.to_str().and_then(|n| n.strip_prefix(&prefix)) else { continue };
                if rest.is_empty() || !rest.bytes().all(|b| b.is_ascii_digit()) {
                    continue;
                }
                found.push(entry.path());
            }
        }
    }
    found
}

/// The cgroup hierarchies of this host, as seen by the calling process.
pub fn hierarchies() -> Result<Vec<Hierarchy>, CgroupError> {
    let mountinfo_path = Path::new("/proc/self/mountinfo");
    let mountinfo = fs::read_to_string(mountinfo_path).map_err(io_err("reading", mountinfo_path))?;
    let cgroup_path = Path::new("/proc/self/cgroup");
    let own = fs::read_to_string(cgroup_path).map_err(io_err("reading", cgroup_path))?;
    Ok(parse_hierarchies(&mountinfo, &own, |mount| {
        fs::read_to_string(mount.join("cgroup.controllers")).unwrap_or_default()
    }))
}

fn parse_hierarchies(mountinfo: &str, own: &str, v2_controllers: impl Fn(&Path) -> String) -> Vec<Hierarchy> {
    let mut out: Vec<Hierarchy> = Vec::new();
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let left: Vec<&str> = left.split(' ').collect();
        let right: Vec<&str> = right.split(' ').collect();
        if left.len() < 5 || right.len() < 3 {
            continue;
        }
        let (mount_root, mount) = (left[3], unescape_mountinfo(left[4]));
        let (fstype, options) = (right[0], right[2]);
        let mount = PathBuf::from(mount);
        if out.iter().any(|h| h.mount == mount) {
            continue;
        }
        match fstype {
            "cgroup" => {
                let controllers: Vec<String> = options
                    .split(',')
                    .filter(|o| Controller::ALL.iter().any(|c| c.v1_name() == *o))
                    .map(str::to_string)
                    .collect();
                if controllers.is_empty() {
                    continue;
                }
                let own_path = own
                    .lines()
                    .filter_map(|l| {
                        let mut parts = l.splitn(3, ':');
                        let (_, ctrls, path) = (parts.next()?, parts.next()?, parts.next()?);
                        ctrls.split(',').any(|c| controllers.iter().any(|x| x == c)).then(|| path.to_string())
                    })
                    .next()
                    .unwrap_or_else(|| "/".to_string());
                out.push(Hierarchy { mount, mount_root: mount_root.to_string(), v2: false, controllers, own_path });
            }
            "cgroup2" => {
                let controllers: Vec<String> = v2_controllers(&mount).split_whitespace().map(str::to_string).collect();
                let own_path = own.lines().find_map(|l| l.strip_prefix("0::")).unwrap_or("/").to_string();
                out.push(Hierarchy { mount, mount_root: mount_root.to_string(), v2: true, controllers, own_path });
            }
            _ => {}
        }
    }
    out
}

fn unescape_mountinfo(s: &str) -> String {
    // mountinfo escapes space, tab, newline and backslash as \ooo.
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            if let Some(v) = std::str::from_utf8(&bytes[i + 1..i + 4]).ok().and_then(|o| u8::from_str_radix(o, 8).ok())
            {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Limits to apply to a jail's cgroup.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    /// Memory limit, bytes (swap use is disabled too where possible).
    pub memory_bytes: Option<u64>,
    /// CPU quota in whole CPUs.
    pub cpus: Option<u32>,
    /// Process limit.
    pub pids: Option<u64>,
}

/// One directory of the jail's cgroup (one per hierarchy used).
#[derive(Debug)]
struct Dir {
    path: PathBuf,
    /// Whether this is the cgroup2 hierarchy.
    v2: bool,
    controllers: Vec<Controller>,
}

/// The cgroup of one jail.
#[derive(Debug)]
pub struct Cgroup {
    dirs: Vec<Dir>,
    destroyed: Mutex<bool>,
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

const CPU_PERIOD_US: u64 = 100_000;

/// Device numbers a jail may use when the v1 devices controller is there:
/// the nodes of its /dev plus pseudo-terminals.
const ALLOWED_DEVICES: &[&str] = &[
    "c 1:3 rwm",   // null
    "c 1:5 rwm",   // zero
    "c 1:7 rwm",   // full
    "c 1:8 rwm",   // random
    "c 1:9 rwm",   // urandom
    "c 5:0 rwm",   // tty
    "c 5:2 rwm",   // ptmx
    "c 136:* rwm", // pts
];

impl Cgroup {
    /// Creates the jail's cgroup in every hierarchy that has a controller it
    /// uses and writes `limits`. A limit whose controller is missing is an
    /// error; a missing usage-only controller is not.
    pub fn create(name: &str, parent: Option<&str>, limits: &Limits) -> Result<Cgroup, CgroupError> {
        Self::create_in(&hierarchies()?, name, parent, limits)
    }

    fn create_in(
        hierarchies: &[Hierarchy],
        name: &str,
        parent: Option<&str>,
        limits: &Limits,
    ) -> Result<Cgroup, CgroupError> {
        let leaf = format!("{name}-{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed));
        let plan = plan_hierarchies(hierarchies);
        let has = |c: Controller| plan.iter().any(|(_, list)| list.contains(&c));
        for (wanted, controller, name) in [
            (limits.memory_bytes.is_some(), Controller::Memory, "memory"),
            (limits.cpus.is_some(), Controller::Cpu, "cpu"),
            (limits.pids.is_some(), Controller::Pids, "pids"),
        ] {
            if wanted && !has(controller) {
                return Err(CgroupError::MissingController {
                    controller: name,
                    why: "no cgroup v1 hierarchy nor the cgroup2 mount offers it".into(),
                });
            }
        }

        let mut cgroup = Cgroup { dirs: Vec::new(), destroyed: Mutex::new(false) };
        for (h, controllers) in plan {
            let rel_parent = relative_parent(h, parent);
            let parent_dir = h.mount.join(&rel_parent);
            let path = parent_dir.join(&leaf);
            if h.v2 {
                enable_v2_controllers(&h.mount, &rel_parent, &controllers)?;
            }
            make_leaf(&parent_dir, &path)?;
            // Registered at once so a later failure cleans it up.
            cgroup.dirs.push(Dir { path, v2: h.v2, controllers });
        }
        if let Err(e) = cgroup.apply(limits) {
            cgroup.destroy();
            return Err(e);
        }
        Ok(cgroup)
    }

    fn dir_for(&self, c: Controller) -> Option<&Dir> {
        self.dirs.iter().find(|d| d.controllers.contains(&c))
    }

    /// The host directory of the memory controller's cgroup and whether it
    /// is on cgroup2.
    pub fn memory_dir(&self) -> Option<(PathBuf, bool)> {
        let dir = self.dir_for(Controller::Memory)?;
        Some((dir.path.clone(), dir.v2))
    }

    /// The host directory of the freezer and its interface, when the jail
    /// has one.
    pub fn freezer(&self) -> Option<(PathBuf, crate::freezer::Interface)> {
        let dir = self.dir_for(Controller::Freezer)?;
        let interface = if dir.v2 { crate::freezer::Interface::V2 } else { crate::freezer::Interface::V1 };
        Some((dir.path.clone(), interface))
    }

    /// The directories of this cgroup, one per hierarchy used.
    pub fn paths(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|d| d.path.clone()).collect()
    }

    fn apply(&self, limits: &Limits) -> Result<(), CgroupError> {
        if let (Some(bytes), Some(dir)) = (limits.memory_bytes, self.dir_for(Controller::Memory)) {
            if dir.v2 {
                write(&dir.path.join("memory.max"), &bytes.to_string())?;
                let swap = dir.path.join("memory.swap.max");
                if swap.exists() {
                    write(&swap, "0")?;
                }
            } else {
                write(&dir.path.join("memory.limit_in_bytes"), &bytes.to_string())?;
                let memsw = dir.path.join("memory.memsw.limit_in_bytes");
                if memsw.exists() {
                    write(&memsw, &bytes.to_string())?;
                }
                let swappiness = dir.path.join("memory.swappiness");
                if swappiness.exists() {
                    // Not fatal: some kernels refuse it under a parent with
                    // use_hierarchy; memsw above is what really bounds swap.
                    let _ = fs::write(&swappiness, "0");
                }
            }
        }
        if let (Some(cpus), Some(dir)) = (limits.cpus, self.dir_for(Controller::Cpu)) {
            let quota = u64::from(cpus) * CPU_PERIOD_US;
            if dir.v2 {
                write(&dir.path.join("cpu.max"), &format!("{quota} {CPU_PERIOD_US}"))?;
            } else {
                write(&dir.path.join("cpu.cfs_period_us"), &CPU_PERIOD_US.to_string())?;
                write(&dir.path.join("cpu.cfs_quota_us"), &quota.to_string())?;
            }
        }
        if let (Some(pids), Some(dir)) = (limits.pids, self.dir_for(Controller::Pids)) {
            write(&dir.path.join("pids.max"), &pids.to_string())?;
        }
        if let Some(dir) = self.dir_for(Controller::Devices) {
            write(&dir.path.join("devices.deny"), "a")?;
            for rule in ALLOWED_DEVICES {
                write(&dir.path.join("devices.allow"), rule)?;
            }
        }
        Ok(())
    }

    /// The `tasks` files of the cgroup v1 directories. A single-threaded
    /// process joins them by writing `0` (itself) to each: the kernel moves
    /// one thread without taking its global threadgroup lock, so no RCU grace
    /// period is waited for (a `cgroup.procs` write by another process waits
    /// 5–20 ms for one after a quiet spell on this kind of host).
    pub fn self_join_files(&self) -> Vec<PathBuf> {
        self.dirs.iter().filter(|d| !d.v2).map(|d| d.path.join("tasks")).collect()
    }

    /// Moves process `pid` (all its threads) into the cgroup2 directory, if
    /// any: the placement a process that joined [`Cgroup::self_join_files`]
    /// still needs.
    pub fn add_v2(&self, pid: libc::pid_t) -> Result<(), CgroupError> {
        for dir in self.dirs.iter().filter(|d| d.v2) {
            write(&dir.path.join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }

    /// Processes currently in the cgroup.
    pub fn pids(&self) -> Vec<libc::pid_t> {
        let mut all: Vec<libc::pid_t> = Vec::new();
        for dir in &self.dirs {
            if let Ok(text) = fs::read_to_string(dir.path.join("cgroup.procs")) {
                for pid in text.lines().filter_map(|l| l.trim().parse().ok()) {
                    if !all.contains(&pid) {
                        all.push(pid);
                    }
                }
            }
        }
        all
    }

    /// SIGKILLs every process in the cgroup (v2: `cgroup.kill` where
    /// present), then thaws it: a paused jail dies too.
    pub fn kill_all(&self) {
        for dir in &self.dirs {
            if dir.v2 {
                let kill = dir.path.join("cgroup.kill");
                if kill.exists() && fs::write(&kill, "1").is_ok() {
                    continue;
                }
            }
        }
        for pid in self.pids() {
            // SAFETY: kill(2) with a pid read from the cgroup; a stale pid
            // at worst gets ESRCH.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        if let Some((dir, interface)) = self.freezer() {
            let _ = crate::freezer::thaw(&dir, interface);
        }
    }

    /// Kills what is left, removes the leaf directories, then the shared
    /// `alcove` parents where empty. Waits up to 2 s for the kernel to let
    /// go of dying processes. Idempotent.
    pub fn destroy(&self) {
        let mut destroyed = match self.destroyed.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if *destroyed {
            return;
        }
        *destroyed = true;
        let deadline = Instant::now() + Duration::from_secs(2);
        for dir in &self.dirs {
            loop {
                match fs::remove_dir(&dir.path) {
                    Ok(()) => break,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                    Err(e) => {
                        if Instant::now() >= deadline {
                            tracing::warn!(path = %dir.path.display(), error = %e, "could not remove the jail's cgroup");
                            break;
                        }
                        self.kill_all();
                        std::thread::sleep(Duration::from_millis(10));
                    }
                }
            }
            if let Some(parent) = dir.path.parent() {
                if parent.file_name().is_some_and(|n| n == "alcove") {
                    // Fails harmlessly while other jails live there.
                    let _ = fs::remove_dir(parent);
                }
            }
        }
    }

    /// Resource usage read from the cgroup files; `None` once destroyed or
    /// when no usage file can be read.
    pub fn usage(&self) -> Option<alcove_backend::GuestUsage> {
        let mut usage = alcove_backend::GuestUsage::default();
        let mut any = false;
        if let Some(dir) = self.dir_for(Controller::Cpuacct).or_else(|| self.dir_for(Controller::Cpu)) {
            if dir.v2 {
                if let Some(v) = read(&dir.path.join("cpu.stat")).and_then(|t| keyed(&t, "usage_usec")) {
                    usage.cpu_usec = v;
                    any = true;
                }
            } else if let Some(ns) = read(&dir.path.join("cpuacct.usage")).and_then(|t| t.trim().parse::<u64>().ok()) {
                usage.cpu_usec = ns / 1000;
                any = true;
            }
        }
        if let Some(dir) = self.dir_for(Controller::Memory) {
            let file = if dir.v2 { "memory.current" } else { "memory.usage_in_bytes" };
            if let Some(v) = read(&dir.path.join(file)).and_then(|t| t.trim().parse::<u64>().ok()) {
                usage.memory_bytes = v;
                any = true;
            }
        }
        if let Some(dir) = self.dir_for(Controller::Io) {
            if dir.v2 {
                if let Some(text) = read(&dir.path.join("io.stat")) {
                    let (r, w) = parse_io_stat(&text);
                    usage.io_read_bytes = r;
                    usage.io_write_bytes = w;
                    any = true;
                }
            } else if let Some(text) = read(&dir.path.join("blkio.throttle.io_service_bytes")) {
                let (r, w) = parse_blkio(&text);
                usage.io_read_bytes = r;
                usage.io_write_bytes = w;
                any = true;
            }
        }
        any.then_some(usage)
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        self.destroy();
    }
}

fn make_leaf(parent_dir: &Path, path: &Path) -> Result<(), CgroupError> {
    // A concurrent destroy may remove an empty shared parent between our
    // create_dir_all and mkdir: retry a few times.
    let mut attempts = 0;
    loop {
        fs::create_dir_all(parent_dir).map_err(io_err("creating cgroup", parent_dir))?;
        match fs::create_dir(path) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound && attempts < 5 => attempts += 1,
            Err(e) => return Err(CgroupError::Io { what: "creating cgroup", path: path.to_path_buf(), source: e }),
        }
    }
}

fn enable_v2_controllers(mount: &Path, rel_parent: &str, controllers: &[Controller]) -> Result<(), CgroupError> {
    let mut names: Vec<&str> = controllers.iter().filter_map(|c| c.v2_name()).collect();
    names.dedup();
    let line = names.iter().map(|n| format!("+{n}")).collect::<Vec<_>>().join(" ");
    if line.is_empty() {
        return Ok(());
    }
    // Every level from the mount root down to the parent must delegate.
    let mut dir = mount.to_path_buf();
    let mut levels = vec![dir.clone()];
    for part in rel_parent.split('/').filter(|p| !p.is_empty()) {
        dir = dir.join(part);
        levels.push(dir.clone());
    }
    for level in levels {
        fs::create_dir_all(&level).map_err(io_err("creating cgroup", &level))?;
        let control = level.join("cgroup.subtree_control");
        let current = fs::read_to_string(&control).unwrap_or_default();
        if names.iter().all(|n| current.split_whitespace().any(|c| c == *n)) {
            continue;
        }
        write(&control, &line)?;
    }
    Ok(())
}

fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    fs::write(path, value).map_err(io_err("writing", path))
}

fn read(path: &Path) -> Option<String> {
    fs::read_to_string(path).ok()
}

fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// Sums `Read` and `Write` over devices in `blkio.throttle.io_service_bytes`.
fn parse_blkio(text: &str) -> (u64, u64) {
    let (mut r, mut w) = (0u64, 0u64);
    for line in text.lines() {
        let parts: Vec<&str> = line.split_whitespace().collect();
        if let [_, op, value] = parts.as_slice() {
            let v: u64 = value.parse().unwrap_or(0);
            match *op {
                "Read" => r = r.saturating_add(v),
                "Write" => w = w.saturating_add(v),
                _ => {}
            }
        }
    }
    (r, w)
}

/// Sums `rbytes=` and `wbytes=` over devices in `io.stat`.
fn parse_io_stat(text: &str) -> (u64, u64) {
    let (mut r, mut w) = (0u64, 0u64);
    for field in text.split_whitespace() {
        if let Some(v) = field.strip_prefix("rbytes=") {
            r = r.saturating_add(v.parse().unwrap_or(0));
        } else if let Some(v) = field.strip_prefix("wbytes=") {
            w = w.saturating_add(v.parse().unwrap_or(0));
        }
    }
    (r, w)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
    const OWN: &str = "9:name=systemd:/\n8:pids:/\n4:memory:/outer/abc\n2:cpuacct:/\n1:cpu:/\n0::/\n";

    #[test]
    fn parses_mixed_hierarchies() {
        let hs = parse_hierarchies(MOUNTINFO, OWN, |_| "hugetlb\n".to_string());
        let names: Vec<_> = hs.iter().map(|h| h.mount.display().to_string()).collect();
        assert_eq!(
            names,
            [
                "/sys/fs/cgroup/cpu",
                "/sys/fs/cgroup/cpuacct",
                "/sys/fs/cgroup/memory",
                "/sys/fs/cgroup/pids",
                "/sys/fs/cgroup/unified"
            ]
        );
        let mem = hs.iter().find(|h| h.controllers == ["memory"]).expect("memory");
        assert_eq!(mem.own_path, "/outer/abc");
        let v2 = hs.iter().find(|h| h.v2).expect("v2");
        assert_eq!(v2.controllers, ["hugetlb"]);
    }

    #[test]
    fn v2_only_host_uses_the_unified_mount() {
        let mi = "41 31 0:38 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        let hs = parse_hierarchies(mi, "0::/user.slice/x\n", |_| "cpu io memory pids\n".to_string());
        assert_eq!(hs.len(), 1);
        assert!(hs[0].v2);
        assert_eq!(hs[0].own_path, "/user.slice/x");
        assert_eq!(hs[0].controllers, ["cpu", "io", "memory", "pids"]);
    }

    #[test]
    fn the_freezer_is_v1s_when_mounted_else_the_cgroup2_mount() {
        let with_v1 =
            format!("{MOUNTINFO}37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer\n");
        let hs = parse_hierarchies(&with_v1, OWN, |_| "hugetlb\n".to_string());
        let freezer = hierarchy_for(&hs, Controller::Freezer).expect("a freezer");
        assert_eq!(freezer.mount, PathBuf::from("/sys/fs/cgroup/freezer"));
        // No v1 freezer: cgroup2's core cgroup.freeze, listed in no controllers file.
        let hs = parse_hierarchies(MOUNTINFO, OWN, |_| "hugetlb\n".to_string());
        let freezer = hierarchy_for(&hs, Controller::Freezer).expect("a freezer");
        assert!(freezer.v2);
        let hs =
            parse_hierarchies("32 31 0:29 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n", OWN, |_| String::new());
        assert_eq!(hierarchy_for(&hs, Controller::Freezer), None);
    }

    #[test]
    fn missing_controller_for_a_limit_is_an_error() {
        let hs = parse_hierarchies(MOUNTINFO, OWN, |_| "hugetlb\n".to_string());
        let only_cpu: Vec<Hierarchy> = hs.into_iter().filter(|h| h.controllers == ["cpu"]).collect();
        let err = Cgroup::create_in(
            &only_cpu,
            "x",
            Some("nowhere"),
            &Limits { memory_bytes: Some(1 << 20), ..Limits::default() },
        )
        .expect_err("no memory controller");
        assert!(err.to_string().contains("memory cgroup controller is not available"), "{err}");
    }

    #[test]
    fn parses_usage_files() {
        let blkio = "8:0 Read 4096\n8:0 Write 8192\n8:0 Total 12288\n8:16 Read 1\nTotal 12289\n";
        assert_eq!(parse_blkio(blkio), (4097, 8192));
        let io = "8:0 rbytes=100 wbytes=200 rios=1 wios=2\n8:16 rbytes=1 wbytes=2\n";
        assert_eq!(parse_io_stat(io), (101, 202));
        assert_eq!(keyed("usage_usec 123\nuser_usec 100\n", "usage_usec"), Some(123));
        assert_eq!(unescape_mountinfo("/a\\040b"), "/a b");
    }
}
