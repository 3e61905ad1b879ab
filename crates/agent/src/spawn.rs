//! Starting commands: request validation, environment, user, rlimits, PTYs,
//! and the fork/exec with an error pipe that classifies failures.
//!
//! Over 600 lines on purpose: the path from request to `exec` is one
//! sequence whose order is part of its safety; split, it would no longer read
//! top-down.
//!
//! Invariants:
//! - Everything that allocates or reads files ([`prepare`]) happens before
//!   `fork`; the child only makes async-signal-safe system calls.
//! - The child reports a failure as 5 bytes on a close-on-exec pipe: the
//!   [`Stage`] it failed at and the errno. End of file without bytes means
//!   `execve` succeeded.
//! - Every command gets its own session and process group (`setsid`), so
//!   signals go to `-pid`.
//! - No command keeps the agent's OOM protection: when the agent's own
//!   `oom_score_adj` is negative, the child writes 0 to its own before it
//!   drops privileges and execs, and a failed write is a failed start
//!   ([`Stage::OomReset`]; see [`crate::oom`]).

use crate::sys::{self, Fd};
use crate::users::{self, Identity};
use alcove_protocol::{ExecRequest, Rlimit, SpawnError, SpawnErrorKind, TtySize};
use std::ffi::CString;
use std::io;
use std::os::fd::RawFd;
use std::path::Path;

/// `PATH` of every command unless the sandbox or the request sets one.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Capacity asked for a command's stdout pipe (the default is 64 KiB).
const OUTPUT_PIPE_BYTES: usize = 1024 * 1024;

/// Sandbox-wide defaults for commands (from `AgentConfig`).
#[derive(Clone, Debug, Default)]
pub struct Defaults {
    /// Default environment.
    pub env: Vec<(String, String)>,
    /// Default working directory.
    pub workdir: Option<String>,
    /// Default user.
    pub user: Option<String>,
    /// The hostname, exported as `HOSTNAME`.
    pub hostname: String,
}

/// Where the child failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Stage {
    /// `setsid`.
    Setsid = 1,
    /// Making the PTY the controlling terminal.
    Tty = 2,
    /// Wiring stdin/stdout/stderr.
    Stdio = 3,
    /// `setrlimit`.
    Rlimit = 4,
    /// `setgroups`.
    Groups = 5,
    /// `setgid`.
    Gid = 6,
    /// `setuid`.
    Uid = 7,
    /// `chdir`.
    Chdir = 8,
    /// `execve`.
    Exec = 9,
    /// Resetting `oom_score_adj` to 0.
    OomReset = 10,
}

impl Stage {
    fn from_u8(b: u8) -> Option<Stage> {
        Some(match b {
            1 => Stage::Setsid,
            2 => Stage::Tty,
            3 => Stage::Stdio,
            4 => Stage::Rlimit,
            5 => Stage::Groups,
            6 => Stage::Gid,
            7 => Stage::Uid,
            8 => Stage::Chdir,
            9 => Stage::Exec,
            10 => Stage::OomReset,
            _ => return None,
        })
    }
}

fn err(kind: SpawnErrorKind, message: impl Into<String>) -> SpawnError {
    SpawnError { kind, message: message.into() }
}

/// Maps a child failure to a spawn error.
pub fn classify(stage: Stage, errno: i32, prepared: &Prepared) -> SpawnError {
    let os = io::Error::from_raw_os_error(errno);
    let prog = &prepared.argv0;
    match stage {
        Stage::Exec => {
            let kind = match errno {
                libc::ENOENT | libc::ENOTDIR => SpawnErrorKind::NotFound,
                libc::EACCES | libc::EPERM => SpawnErrorKind::PermissionDenied,
                libc::ENOEXEC | libc::ELIBBAD | libc::EINVAL => SpawnErrorKind::NotExecutable,
                libc::E2BIG => SpawnErrorKind::InvalidRequest,
                _ => SpawnErrorKind::Other,
            };
            let what = match kind {
                SpawnErrorKind::NotFound if !prog.contains('/') => {
                    return err(kind, format!("command {prog:?} not found in PATH"));
                }
                SpawnErrorKind::NotFound => "not found",
                SpawnErrorKind::PermissionDenied => "permission denied",
                SpawnErrorKind::NotExecutable => "not an executable this system can run",
                _ => "cannot execute",
            };
            err(kind, format!("{prog}: {what} ({os})"))
        }
        Stage::Chdir => err(SpawnErrorKind::BadCwd, format!("working directory {}: {os}", prepared.cwd_text)),
        Stage::Groups | Stage::Gid | Stage::Uid => err(
            SpawnErrorKind::UserSetupFailed,
            format!(
                "cannot switch to user {} (uid {}, gid {}): {os}",
                prepared.identity.name, prepared.identity.uid, prepared.identity.gid
            ),
        ),
        Stage::Rlimit => err(SpawnErrorKind::ResourceSetupFailed, format!("cannot apply resource limits: {os}")),
        Stage::OomReset => err(
            SpawnErrorKind::ResourceSetupFailed,
            format!("cannot reset the command's OOM score adjustment to 0 (the agent's is negative): {os}"),
        ),
        Stage::Setsid | Stage::Tty | Stage::Stdio => {
            err(SpawnErrorKind::ResourceSetupFailed, format!("cannot set up the command's terminal or stdio: {os}"))
        }
    }
}

/// Maps an rlimit name to its resource number.
pub fn rlimit_resource(name: &str) -> Option<libc::__rlimit_resource_t> {
    Some(match name {
        "nofile" => libc::RLIMIT_NOFILE,
        "nproc" => libc::RLIMIT_NPROC,
        "as" => libc::RLIMIT_AS,
        "cpu" => libc::RLIMIT_CPU,
        "fsize" => libc::RLIMIT_FSIZE,
        "stack" => libc::RLIMIT_STACK,
        "core" => libc::RLIMIT_CORE,
        "memlock" => libc::RLIMIT_MEMLOCK,
        "data" => libc::RLIMIT_DATA,
        "rss" => libc::RLIMIT_RSS,
        "locks" => libc::RLIMIT_LOCKS,
        "sigpending" => libc::RLIMIT_SIGPENDING,
        "msgqueue" => libc::RLIMIT_MSGQUEUE,
        "nice" => libc::RLIMIT_NICE,
        "rtprio" => libc::RLIMIT_RTPRIO,
        _ => return None,
    })
}

fn rlim_value(v: u64) -> libc::rlim_t {
    if v == u64::MAX {
        libc::RLIM_INFINITY
    } else {
        v as libc::rlim_t
    }
}

/// Validates rlimits against the limits the agent itself has: an unknown
/// name or soft above hard is an invalid request; a hard limit above the
/// current one (which could only fail without CAP_SYS_RESOURCE) is refused
/// rather than clamped.
pub fn check_rlimits(
    limits: &[Rlimit],
    current_hard: impl Fn(libc::__rlimit_resource_t) -> u64,
) -> Result<Vec<(libc::__rlimit_resource_t, libc::rlimit)>, SpawnError> {
    let mut out = Vec::new();
    for l in limits {
        let Some(res) = rlimit_resource(&l.resource) else {
            return Err(err(SpawnErrorKind::InvalidRequest, format!("unknown rlimit {:?}", l.resource)));
        };
        if l.soft > l.hard {
            return Err(err(
                SpawnErrorKind::InvalidRequest,
                format!("rlimit {}: soft limit {} is above the hard limit {}", l.resource, l.soft, l.hard),
            ));
        }
        let max = current_hard(res);
        if l.hard > max {
            let shown = if max == u64::MAX { "unlimited".to_string() } else { max.to_string() };
            return Err(err(
                SpawnErrorKind::ResourceSetupFailed,
                format!("rlimit {}: hard limit {} is above the sandbox's hard limit {shown}", l.resource, l.hard),
            ));
        }
        out.push((res, libc::rlimit { rlim_cur: rlim_value(l.soft), rlim_max: rlim_value(l.hard) }));
    }
    Ok(out)
}

/// The agent's own hard limit for `res` (`u64::MAX` = unlimited).
pub fn current_hard_limit(res: libc::__rlimit_resource_t) -> u64 {
    let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: r is a valid rlimit.
    if unsafe { libc::getrlimit(res, &mut r) } != 0 {
        return u64::MAX;
    }
    if r.rlim_max == libc::RLIM_INFINITY {
        u64::MAX
    } else {
        r.rlim_max
    }
}

/// Sets `key=value` in `env`, replacing an earlier value of the key.
fn upsert(env: &mut Vec<(String, String)>, key: &str, value: &str) {
    match env.iter_mut().find(|(k, _)| k == key) {
        Some(slot) => slot.1 = value.to_string(),
        None => env.push((key.to_string(), value.to_string())),
    }
}

/// Builds a command's environment: base variables, then the sandbox
/// defaults, then the request's (later entries win).
pub fn build_env(defaults: &Defaults, identity: &Identity, req: &ExecRequest) -> Vec<(String, String)> {
    let mut env = Vec::new();
    upsert(&mut env, "PATH", DEFAULT_PATH);
    upsert(&mut env, "HOME", &identity.home);
    upsert(&mut env, "USER", &identity.name);
    upsert(&mut env, "LOGNAME", &identity.name);
    if !defaults.hostname.is_empty() {
        upsert(&mut env, "HOSTNAME", &defaults.hostname);
    }
    if req.tty.is_some() {
        upsert(&mut env, "TERM", "xterm-256color");
    }
    for (k, v) in defaults.env.iter().chain(req.env.iter()) {
        upsert(&mut env, k, v);
    }
    env
}

/// Candidate paths for `argv0`, in `PATH` order.
pub fn exec_candidates(argv0: &str, path: &str) -> Vec<String> {
    if argv0.contains('/') {
        return vec![argv0.to_string()];
    }
    path.split(':')
        .map(|dir| if dir.is_empty() { "." } else { dir })
        .map(|dir| format!("{}/{argv0}", dir.trim_end_matches('/')))
        .collect()
}

/// A request turned into what the child needs, allocated before `fork`.
#[derive(Debug)]
pub struct Prepared {
    /// `argv[0]` as requested.
    pub argv0: String,
    /// Working directory as text (for messages).
    pub cwd_text: String,
    /// The user to run as.
    pub identity: Identity,
    /// The final environment.
    pub env: Vec<(String, String)>,
    candidates: Vec<CString>,
    argv: Vec<CString>,
    envp: Vec<CString>,
    cwd: CString,
    rlimits: Vec<(libc::__rlimit_resource_t, libc::rlimit)>,
    tty: Option<TtySize>,
    stdin: bool,
    /// The child's own `oom_score_adj` file to write 0 to, when the agent is
    /// protected from the OOM killer.
    oom_reset: Option<CString>,
}

fn cstr(s: &str, what: &str) -> Result<CString, SpawnError> {
    CString::new(s).map_err(|_| err(SpawnErrorKind::InvalidRequest, format!("{what} {s:?} contains a NUL byte")))
}

/// Validates a request and resolves everything the child will need.
pub fn prepare(req: &ExecRequest, defaults: &Defaults, root: &Path) -> Result<Prepared, SpawnError> {
    let Some(argv0) = req.argv.first() else {
        return Err(err(SpawnErrorKind::InvalidRequest, "the command line is empty"));
    };
    if argv0.is_empty() {
        return Err(err(SpawnErrorKind::InvalidRequest, "the program name is empty"));
    }
    for (k, _) in defaults.env.iter().chain(req.env.iter()) {
        if k.is_empty() || k.contains('=') {
            return Err(err(SpawnErrorKind::InvalidRequest, format!("environment variable name {k:?} is invalid")));
        }
    }
    let rlimits = check_rlimits(&req.rlimits, current_hard_limit)?;
    let user_spec = req.user.as_deref().or(defaults.user.as_deref());
    let identity = match user_spec {
        Some(spec) => users::resolve(spec, root).map_err(|e| err(SpawnErrorKind::UserSetupFailed, e.to_string()))?,
        None => {
            // SAFETY: geteuid has no preconditions.
            let uid = unsafe { libc::geteuid() };
            users::resolve(&uid.to_string(), root).unwrap_or_else(|_| Identity::root())
        }
    };
    if let Some(c) = req.cwd.as_deref() {
        if !c.starts_with('/') {
            return Err(err(SpawnErrorKind::BadCwd, format!("working directory {c:?} is not an absolute path")));
        }
    }
    let env = build_env(defaults, &identity, req);
    let cwd_text = match req.cwd.as_deref().or(defaults.workdir.as_deref()) {
        Some(c) => c.to_string(),
        None if Path::new(&identity.home).is_dir() => identity.home.clone(),
        None => "/".to_string(),
    };
    let path = env.iter().find(|(k, _)| k == "PATH").map(|(_, v)| v.as_str()).unwrap_or(DEFAULT_PATH);
    let candidates =
        exec_candidates(argv0, path).iter().map(|c| cstr(c, "program path")).collect::<Result<Vec<_>, _>>()?;
    let argv = req.argv.iter().map(|a| cstr(a, "argument")).collect::<Result<Vec<_>, _>>()?;
    let envp =
        env.iter().map(|(k, v)| cstr(&format!("{k}={v}"), "environment entry")).collect::<Result<Vec<_>, _>>()?;
    Ok(Prepared {
        argv0: argv0.clone(),
        cwd: cstr(&cwd_text, "working directory")?,
        cwd_text,
        identity,
        env,
        candidates,
        argv,
        envp,
        rlimits,
        tty: req.tty,
        stdin: req.stdin,
        oom_reset: crate::oom::child_reset_target(),
    })
}

/// The parent's ends of a started command's stdio.
#[derive(Debug)]
pub enum ChildIo {
    /// Pipes; `stdin` is `None` when the command reads /dev/null.
    Pipes {
        /// Write end of stdin.
        stdin: Option<Fd>,
        /// Read end of stdout.
        stdout: Fd,
        /// Read end of stderr.
        stderr: Fd,
    },
    /// A PTY master: read for output, write for input.
    Pty {
        /// The master side.
        master: Fd,
    },
}

/// A started command.
#[derive(Debug)]
pub struct Child {
    /// Its pid (and process group id).
    pub pid: libc::pid_t,
    /// Its stdio.
    pub io: ChildIo,
}

/// Opens a PTY pair `(master, slave)` of the given size.
pub fn open_pty(size: TtySize) -> io::Result<(Fd, Fd)> {
    // SAFETY: posix_openpt returns a new fd or -1.
    let master = Fd::new(sys::check(unsafe { libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC) })?);
    // SAFETY: master is a PTY master fd.
    sys::check(unsafe { libc::grantpt(master.raw()) })?;
    // SAFETY: as above.
    sys::check(unsafe { libc::unlockpt(master.raw()) })?;
    let mut name = [0 as libc::c_char; 128];
    // SAFETY: name is valid for its length.
    let rc = unsafe { libc::ptsname_r(master.raw(), name.as_mut_ptr(), name.len()) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    // SAFETY: ptsname_r wrote a NUL-terminated path.
    let slave =
        Fd::new(sys::check(unsafe { libc::open(name.as_ptr(), libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC) })?);
    set_winsize(master.raw(), size)?;
    Ok((master, slave))
}

/// Sets a PTY's window size (the kernel sends SIGWINCH to its foreground group).
pub fn set_winsize(fd: RawFd, size: TtySize) -> io::Result<()> {
    let ws = libc::winsize { ws_row: size.rows, ws_col: size.cols, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: ws is a valid winsize.
    sys::check(unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &ws) }).map(|_| ())
}

fn setup_failed(what: &str, e: io::Error) -> SpawnError {
    err(SpawnErrorKind::ResourceSetupFailed, format!("cannot create the command's {what}: {e}"))
}

/// Starts a prepared command.
pub fn spawn(p: &Prepared) -> Result<Child, SpawnError> {
    // Parent ends, child ends (to dup onto 0, 1, 2).
    let (parent_io, child_fds): (ChildIo, [Fd; 3]) = match p.tty {
        Some(size) => {
            let (master, slave) = open_pty(size).map_err(|e| setup_failed("terminal", e))?;
            // SAFETY: dup of a valid fd.
            let s1 = Fd::new(
                sys::check(unsafe { libc::fcntl(slave.raw(), libc::F_DUPFD_CLOEXEC, 3) })
                    .map_err(|e| setup_failed("terminal", e))?,
            );
            // SAFETY: as above.
            let s2 = Fd::new(
                sys::check(unsafe { libc::fcntl(slave.raw(), libc::F_DUPFD_CLOEXEC, 3) })
                    .map_err(|e| setup_failed("terminal", e))?,
            );
            sys::set_nonblocking(master.raw(), true).map_err(|e| setup_failed("terminal", e))?;
            (ChildIo::Pty { master }, [slave, s1, s2])
        }
        None => {
            let (in_r, in_w) = if p.stdin {
                let (r, w) = sys::pipe().map_err(|e| setup_failed("stdin pipe", e))?;
                sys::set_nonblocking(w.raw(), true).map_err(|e| setup_failed("stdin pipe", e))?;
                (r, Some(w))
            } else {
                // SAFETY: opening a constant path.
                let fd = sys::check(unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) })
                    .map_err(|e| setup_failed("stdin (/dev/null)", e))?;
                (Fd::new(fd), None)
            };
            let (out_r, out_w) = sys::pipe().map_err(|e| setup_failed("stdout pipe", e))?;
            let (err_r, err_w) = sys::pipe().map_err(|e| setup_failed("stderr pipe", e))?;
            sys::set_nonblocking(out_r.raw(), true).map_err(|e| setup_failed("stdout pipe", e))?;
            sys::set_nonblocking(err_r.raw(), true).map_err(|e| setup_failed("stderr pipe", e))?;
            // Room for a fast writer to run ahead while the agent batches
            // its output into large frames (see server/output.rs, OUTPUT_COALESCE).
            sys::grow_pipe(out_r.raw(), OUTPUT_PIPE_BYTES);
            (ChildIo::Pipes { stdin: in_w, stdout: out_r, stderr: err_r }, [in_r, out_w, err_w])
        }
    };
    let (err_r, err_w) = sys::pipe().map_err(|e| setup_failed("error pipe", e))?;

    // Pointer arrays, built before fork.
    let mut argv: Vec<*const libc::c_char> = p.argv.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let mut envp: Vec<*const libc::c_char> = p.envp.iter().map(|a| a.as_ptr()).collect();
    envp.push(std::ptr::null());
    let candidates: Vec<*const libc::c_char> = p.candidates.iter().map(|c| c.as_ptr()).collect();
    let groups: Vec<libc::gid_t> = p.identity.groups.clone();
    // SAFETY: geteuid has no preconditions.
    let am_root = unsafe { libc::geteuid() } == 0;
    let ctx = ChildCtx {
        child_fds: [child_fds[0].raw(), child_fds[1].raw(), child_fds[2].raw()],
        tty: p.tty.is_some(),
        rlimits: &p.rlimits,
        groups: &groups,
        uid: p.identity.uid,
        gid: p.identity.gid,
        switch_user: am_root,
        cwd: p.cwd.as_ptr(),
        candidates: &candidates,
        argv: argv.as_ptr(),
        envp: envp.as_ptr(),
        err_fd: err_w.raw(),
        oom_reset: p.oom_reset.as_ref().map(|c| c.as_ptr()),
    };

    // SAFETY: fork has no preconditions; the child only calls
    // async-signal-safe functions in `child_main` and never returns.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(setup_failed("process", io::Error::last_os_error()));
    }
    if pid == 0 {
        child_main(&ctx);
    }
    drop(err_w);
    drop(child_fds);
    let mut report = [0u8; 5];
    let mut got = 0;
    while got < report.len() {
        match sys::read(err_r.raw(), &mut report[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(_) => break,
        }
    }
    if got == 0 {
        return Ok(Child { pid, io: parent_io });
    }
    // The child failed before exec; it has exited (or is about to). Reap it
    // here so it never shows up as an unknown zombie.
    let mut status = 0;
    loop {
        // SAFETY: status is a valid int.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r >= 0 || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            break;
        }
    }
    if got < report.len() {
        return Err(err(SpawnErrorKind::Other, "the command's process ended during setup without a report"));
    }
    let errno = i32::from_ne_bytes([report[1], report[2], report[3], report[4]]);
    match Stage::from_u8(report[0]) {
        Some(stage) => Err(classify(stage, errno, p)),
        None => Err(err(SpawnErrorKind::Other, "the command's process sent an unreadable setup report")),
    }
}

struct ChildCtx<'a> {
    child_fds: [RawFd; 3],
    tty: bool,
    rlimits: &'a [(libc::__rlimit_resource_t, libc::rlimit)],
    groups: &'a [libc::gid_t],
    uid: u32,
    gid: u32,
    switch_user: bool,
    cwd: *const libc::c_char,
    candidates: &'a [*const libc::c_char],
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
    err_fd: RawFd,
    oom_reset: Option<*const libc::c_char>,
}

fn errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO)
}

/// Reports `stage`/errno on the error pipe and exits. Never returns.
fn child_fail(ctx: &ChildCtx<'_>, stage: Stage, e: i32) -> ! {
    let b = e.to_ne_bytes();
    let msg = [stage as u8, b[0], b[1], b[2], b[3]];
    // SAFETY: async-signal-safe write and _exit.
    unsafe {
        libc::write(ctx.err_fd, msg.as_ptr().cast(), msg.len());
        libc::_exit(127);
    }
}

/// The forked child: only raw, async-signal-safe system calls.
fn child_main(ctx: &ChildCtx<'_>) -> ! {
    // SAFETY: each call below is async-signal-safe and uses memory prepared
    // before fork.
    unsafe {
        // Default signal state: nothing blocked, nothing ignored.
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
        for sig in 1..32 {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::signal(sig, libc::SIG_DFL);
            }
        }
        if libc::setsid() < 0 {
            child_fail(ctx, Stage::Setsid, errno());
        }
        if ctx.tty && libc::ioctl(ctx.child_fds[0], libc::TIOCSCTTY, 0) < 0 {
            child_fail(ctx, Stage::Tty, errno());
        }
        for (target, &fd) in ctx.child_fds.iter().enumerate() {
            if libc::dup2(fd, target as libc::c_int) < 0 {
                child_fail(ctx, Stage::Stdio, errno());
            }
        }
        libc::umask(0o022);
        if let Some(path) = ctx.oom_reset {
            // Still root here: the file is the child's own either way.
            let fd = libc::open(path, libc::O_WRONLY | libc::O_TRUNC | libc::O_CLOEXEC);
            if fd < 0 || libc::write(fd, c"0".as_ptr().cast(), 1) != 1 {
                child_fail(ctx, Stage::OomReset, errno());
            }
            libc::close(fd);
        }
        for (res, lim) in ctx.rlimits {
            if libc::setrlimit(*res, lim) < 0 {
                child_fail(ctx, Stage::Rlimit, errno());
            }
        }
        if ctx.switch_user {
            // Raw syscalls: the child is single-threaded, so the per-thread
            // credentials are the process's.
            if libc::syscall(libc::SYS_setgroups, ctx.groups.len(), ctx.groups.as_ptr()) < 0 {
                child_fail(ctx, Stage::Groups, errno());
            }
            if libc::syscall(libc::SYS_setgid, ctx.gid) < 0 {
                child_fail(ctx, Stage::Gid, errno());
            }
            if libc::syscall(libc::SYS_setuid, ctx.uid) < 0 {
                child_fail(ctx, Stage::Uid, errno());
            }
        } else if libc::geteuid() != ctx.uid {
            child_fail(ctx, Stage::Uid, libc::EPERM);
        }
        if libc::chdir(ctx.cwd) < 0 {
            child_fail(ctx, Stage::Chdir, errno());
        }
        let mut saw_eacces = false;
        let mut last = libc::ENOENT;
        for &cand in ctx.candidates {
            libc::execve(cand, ctx.argv, ctx.envp);
            last = errno();
            match last {
                libc::ENOENT | libc::ENOTDIR => {}
                libc::EACCES => saw_eacces = true,
                _ => break,
            }
        }
        if saw_eacces && (last == libc::ENOENT || last == libc::ENOTDIR) {
            last = libc::EACCES;
        }
        child_fail(ctx, Stage::Exec, last);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_lookup_candidates() {
        assert_eq!(exec_candidates("/bin/ls", "/x"), vec!["/bin/ls"]);
        assert_eq!(exec_candidates("./run", "/x"), vec!["./run"]);
        assert_eq!(exec_candidates("ls", "/usr/bin:/bin/::/opt"), vec!["/usr/bin/ls", "/bin/ls", "./ls", "/opt/ls"]);
    }

    #[test]
    fn env_layers_override_in_order() {
        let defaults = Defaults {
            env: vec![("A".into(), "sandbox".into()), ("PATH".into(), "/sbx".into())],
            hostname: "box".into(),
            ..Defaults::default()
        };
        let req = ExecRequest {
            env: vec![("A".into(), "request".into()), ("B".into(), "1".into())],
            tty: Some(TtySize { rows: 1, cols: 1 }),
            ..ExecRequest::default()
        };
        let env = build_env(&defaults, &Identity::root(), &req);
        let get = |k: &str| env.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str());
        assert_eq!(get("A"), Some("request"));
        assert_eq!(get("B"), Some("1"));
        assert_eq!(get("PATH"), Some("/sbx"));
        assert_eq!(get("HOME"), Some("/root"));
        assert_eq!(get("USER"), Some("root"));
        assert_eq!(get("HOSTNAME"), Some("box"));
        assert_eq!(get("TERM"), Some("xterm-256color"));
        assert_eq!(env.iter().filter(|(k, _)| k == "A").count(), 1);
    }

    #[test]
    fn rlimits_are_validated_not_clamped() {
        let hard = |_res| 20_000u64;
        let ok = check_rlimits(&[Rlimit { resource: "nofile".into(), soft: 100, hard: 200 }], hard).expect("valid");
        assert_eq!(ok[0].0, libc::RLIMIT_NOFILE);
        assert_eq!((ok[0].1.rlim_cur, ok[0].1.rlim_max), (100, 200));
        let e = check_rlimits(&[Rlimit { resource: "nofile".into(), soft: 100, hard: 30_000 }], hard)
            .expect_err("above hard");
        assert_eq!(e.kind, SpawnErrorKind::ResourceSetupFailed);
        assert!(e.message.contains("30000") && e.message.contains("20000"), "{}", e.message);
        let e = check_rlimits(&[Rlimit { resource: "bogus".into(), soft: 1, hard: 1 }], hard).expect_err("unknown");
        assert_eq!(e.kind, SpawnErrorKind::InvalidRequest);
        let e = check_rlimits(&[Rlimit { resource: "cpu".into(), soft: 5, hard: 1 }], hard).expect_err("soft > hard");
        assert_eq!(e.kind, SpawnErrorKind::InvalidRequest);
        let inf = check_rlimits(&[Rlimit { resource: "core".into(), soft: u64::MAX, hard: u64::MAX }], |_| u64::MAX)
            .expect("inf");
        assert_eq!(inf[0].1.rlim_max, libc::RLIM_INFINITY);
    }

    #[test]
    fn failures_are_classified_by_stage_and_errno() {
        let req = ExecRequest { argv: vec!["prog".into()], ..ExecRequest::default() };
        let p = prepare(&req, &Defaults::default(), Path::new("/")).expect("prepares");
        assert_eq!(classify(Stage::Exec, libc::ENOENT, &p).kind, SpawnErrorKind::NotFound);
        assert_eq!(classify(Stage::Exec, libc::EACCES, &p).kind, SpawnErrorKind::PermissionDenied);
        assert_eq!(classify(Stage::Exec, libc::ENOEXEC, &p).kind, SpawnErrorKind::NotExecutable);
        assert_eq!(classify(Stage::Chdir, libc::ENOENT, &p).kind, SpawnErrorKind::BadCwd);
        assert_eq!(classify(Stage::Uid, libc::EPERM, &p).kind, SpawnErrorKind::UserSetupFailed);
        assert_eq!(classify(Stage::Rlimit, libc::EPERM, &p).kind, SpawnErrorKind::ResourceSetupFailed);
        assert!(classify(Stage::Exec, libc::ENOENT, &p).message.contains("\"prog\" not found"));
    }

    fn wait(pid: libc::pid_t) -> i32 {
        let mut status = 0;
        // SAFETY: our own child; status is a valid int.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        status
    }

    /// The agent cannot make its own score negative here (no
    /// CAP_SYS_RESOURCE), so the reset is observed on a stand-in file: the
    /// child writes 0 to whatever `oom_reset` names, before exec.
    #[test]
    fn a_protected_agent_starts_commands_at_oom_score_adj_zero() {
        let d = tempfile::tempdir().expect("tempdir");
        let adj = d.path().join("oom_score_adj");
        std::fs::write(&adj, "-1000").expect("write");
        let req = ExecRequest { argv: vec!["/bin/true".into()], ..ExecRequest::default() };
        let mut p = prepare(&req, &Defaults::default(), Path::new("/")).expect("prepares");
        p.oom_reset = Some(CString::new(adj.as_os_str().as_encoded_bytes()).expect("path"));
        let child = spawn(&p).expect("spawns");
        assert_eq!(wait(child.pid), 0);
        assert_eq!(std::fs::read_to_string(&adj).expect("read"), "0");

        // A reset that cannot be done is a failed start, never a protected command.
        p.oom_reset =
            Some(CString::new(d.path().join("missing/oom_score_adj").as_os_str().as_encoded_bytes()).expect("path"));
        let e = spawn(&p).expect_err("refused");
        assert_eq!(e.kind, SpawnErrorKind::ResourceSetupFailed);
        assert!(e.message.contains("OOM score"), "{}", e.message);
    }

    #[test]
    fn commands_of_an_unprotected_agent_inherit_its_score() {
        // This test process is not protected (its value is >= 0 here), so
        // nothing is reset.
        let own = std::fs::read_to_string(crate::oom::OWN_SCORE_ADJ).expect("proc");
        let own = crate::oom::parse_score_adj(&own).expect("number");
        let req = ExecRequest { argv: vec!["/bin/true".into()], ..ExecRequest::default() };
        let p = prepare(&req, &Defaults::default(), Path::new("/")).expect("prepares");
        assert_eq!(p.oom_reset.is_some(), own < 0);
    }

    #[test]
    fn invalid_requests_are_refused_before_fork() {
        let d = Defaults::default();
        let root = Path::new("/");
        assert_eq!(prepare(&ExecRequest::default(), &d, root).expect_err("empty").kind, SpawnErrorKind::InvalidRequest);
        let bad_env =
            ExecRequest { argv: vec!["x".into()], env: vec![("A=B".into(), "1".into())], ..ExecRequest::default() };
        assert_eq!(prepare(&bad_env, &d, root).expect_err("bad env").kind, SpawnErrorKind::InvalidRequest);
        let nul = ExecRequest { argv: vec!["x".into(), "a\0b".into()], ..ExecRequest::default() };
        assert_eq!(prepare(&nul, &d, root).expect_err("nul").kind, SpawnErrorKind::InvalidRequest);
    }
}
