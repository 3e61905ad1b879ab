//! Start-up: command line, configuration, guest set-up, channel, then the
//! server; and the way out (exit in a jail, exit-code report and power-off in
//! a VM).
//!
//! Invariants: the agent is non-dumpable before it reads its configuration
//! (see [`sys::forbid_ptrace`]), so no guest process can attach to it or
//! take its descriptors. PID-1 duties (mounts, hostname, signalling every process at
//! shutdown) only happen when the agent really is PID 1 and `--no-pid1` is
//! not given; otherwise the agent refuses to start rather than touch the
//! host's mounts. With `--no-pid1` it becomes a child subreaper so orphans of
//! its commands are still reaped by it.

use crate::cli::{self, Command, ConfigSource, Options};
use crate::mounts;
use crate::server::{Server, ServerConfig};
use crate::spawn::Defaults;
use crate::sys::{self, Fd};
use crate::vm;
use alcove_protocol::agent_config::{AgentConfig, AgentMode};
use alcove_protocol::BootTimings;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The shortest heartbeat period the agent accepts (a config asking for
/// less would only burn the guest's CPU).
const MIN_HEARTBEAT_MS: u32 = 100;

macro_rules! log {
    ($($arg:tt)*) => { $crate::logging::log(format_args!($($arg)*)) };
}

/// The fd of the agent channel in a jail.
pub const JAIL_CHANNEL_FD: i32 = 3;

/// Start time of the calling process, in microseconds of CLOCK_BOOTTIME,
/// from the text of /proc/self/stat (field 22, in clock ticks).
pub fn parse_start_us(stat: &str, ticks_per_sec: u64) -> Option<u64> {
    let after = &stat[stat.rfind(')')? + 1..];
    // Fields after the command: state is field 3, starttime is field 22.
    let ticks: u64 = after.split_whitespace().nth(19)?.parse().ok()?;
    Some(ticks.saturating_mul(1_000_000) / ticks_per_sec.max(1))
}

fn process_start_us() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    parse_start_us(&stat, if hz > 0 { hz as u64 } else { 100 })
}

/// Makes sure fds 0, 1 and 2 are open, so no pipe of the agent ever gets one
/// of those numbers.
fn ensure_stdio() {
    for fd in 0..3 {
        // SAFETY: F_GETFD on any number is harmless.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } >= 0 {
            continue;
        }
        // SAFETY: opening constant paths; the lowest free fd is `fd`.
        unsafe {
            if libc::open(c"/dev/null".as_ptr(), libc::O_RDWR) < 0 {
                libc::open(c"/".as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY);
            }
        }
    }
}

fn read_config(src: &ConfigSource) -> Result<AgentConfig, String> {
    let bytes = match src {
        ConfigSource::Fd(fd) => {
            let fd = Fd::new(*fd);
            sys::read_to_end(fd.raw())
                .map_err(|e| format!("cannot read the configuration from fd {}: {e}", fd.raw()))?
        }
        ConfigSource::Path(p) => std::fs::read(p).map_err(|e| format!("cannot read the configuration {p}: {e}"))?,
    };
    AgentConfig::from_json(&bytes).map_err(|e| format!("the configuration is not valid JSON for AgentConfig: {e}"))
}

/// Runs the agent; returns the process exit code (in a VM as PID 1 it
/// powers off instead of returning).
pub fn main_with_args(args: Vec<String>) -> i32 {
    crate::logging::init();
    let t0 = sys::clock_us(libc::CLOCK_BOOTTIME);
    let opts = match cli::parse(args) {
        Ok(Command::Run(o)) => o,
        Ok(Command::Version) => {
            println!("alcove-agent {} (protocol {})", env!("CARGO_PKG_VERSION"), alcove_protocol::PROTOCOL_VERSION);
            return 0;
        }
        Ok(Command::Help) => {
            println!("{}", cli::USAGE);
            return 0;
        }
        Err(e) => {
            eprintln!("alcove-agent: {e}\n{}", cli::USAGE);
            return 2;
        }
    };
    // Signals: SIGCHLD/SIGTERM/SIGINT go to a signalfd; blocked before any
    // thread exists so every thread inherits the mask.
    let set = match sys::block_signals(&[libc::SIGCHLD, libc::SIGTERM, libc::SIGINT]) {
        Ok(s) => s,
        Err(e) => {
            log!("fatal: cannot block signals: {e}");
            return 1;
        }
    };
    // SAFETY: setting dispositions and the umask has no memory preconditions.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
        libc::umask(0);
    }
    ensure_stdio();
    // Guest processes run as the same user (root) beside the agent: none may
    // ptrace it or take its channel with pidfd_getfd.
    if let Err(e) = sys::forbid_ptrace() {
        log!("fatal: cannot make the agent non-dumpable: {e}");
        return 1;
    }
    // Inherited descriptors (the channel, the config pipe, anything the
    // launcher left open) must never reach commands.
    sys::cloexec_from(3);
    let config = match read_config(&opts.config) {
        Ok(c) => c,
        Err(e) => return fatal(&e, &opts, None),
    };
    // SAFETY: getpid has no preconditions.
    let is_pid1 = unsafe { libc::getpid() } == 1;
    if !opts.no_pid1 && !is_pid1 {
        log!("fatal: alcove-agent must run as PID 1 of its guest (use --no-pid1 to run it as a plain process)");
        return 1;
    }
    let pid1 = !opts.no_pid1;
    log!("starting ({:?} mode, pid1: {pid1})", config.mode);
    let mut boot_root = None;
    if pid1 {
        match config.mode {
            AgentMode::Jail => jail_setup(&config),
            AgentMode::Vm => match vm_setup(&config) {
                Ok(fd) => boot_root = Some(fd),
                Err(e) => return fatal(&e, &opts, None),
            },
        }
    } else {
        // SAFETY: prctl with integer arguments.
        if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
            log!("warning: cannot become a child subreaper: {}", std::io::Error::last_os_error());
        }
    }
    let mounts_done = sys::clock_us(libc::CLOCK_BOOTTIME);
    let mut channel_is_port = opts.channel_is_port;
    let chan = match (opts.channel_fd, config.mode) {
        (Some(fd), _) => open_fd_channel(fd),
        (None, AgentMode::Jail) => open_fd_channel(JAIL_CHANNEL_FD),
        (None, AgentMode::Vm) => {
            channel_is_port = true;
            vm::open_agent_port().map_err(|e| format!("cannot open the agent channel: {e}"))
        }
    };
    let chan = match chan {
        Ok(c) => c,
        Err(e) => return fatal(&e, &opts, boot_root.as_ref()),
    };
    let sigfd = match sys::signalfd(&set) {
        Ok(f) => f,
        Err(e) => return fatal(&format!("cannot create a signalfd: {e}"), &opts, boot_root.as_ref()),
    };
    // Microseconds since the guest's clock started: kernel boot in a VM,
    // this process's creation (the namespaces' birth) otherwise.
    let base = match (pid1, config.mode) {
        (true, AgentMode::Vm) => 0,
        _ => process_start_us().unwrap_or(t0).min(t0),
    };
    let defaults = Defaults {
        env: config.env.clone(),
        workdir: config.workdir.clone(),
        user: config.user.clone(),
        hostname: config.hostname.clone(),
    };
    let heartbeat = Duration::from_millis(u64::from(
        config.heartbeat_ms.unwrap_or(alcove_protocol::agent_config::DEFAULT_HEARTBEAT_MS).max(MIN_HEARTBEAT_MS),
    ));
    let server_cfg = ServerConfig { defaults, root: PathBuf::from("/"), pid1, heartbeat, channel_is_port };
    let server = match Server::new(server_cfg, chan, sigfd) {
        Ok(s) => s,
        Err(e) => return fatal(&format!("cannot start serving: {e}"), &opts, boot_root.as_ref()),
    };
    let ready_us = sys::clock_us(libc::CLOCK_BOOTTIME);
    let timings =
        BootTimings { agent_start_us: t0 - base, mounts_done_us: mounts_done - base, ready_us: ready_us - base };
    let outcome = server.run(timings);
    if let Some(root) = &boot_root {
        log!("stopping ({outcome:?}); syncing and powering off");
        vm::report_exit_code(root, 0);
        // Syncs first: the guest's page cache dies with the VM.
        vm::power_off();
    }
    if matches!(config.mode, AgentMode::Vm) {
        log!("stopping ({outcome:?}); syncing");
        // A VM guest not run as init (tests): still flush its page cache.
        // SAFETY: sync has no preconditions.
        unsafe { libc::sync() };
    } else {
        // A jail writes through the host's own page cache, which outlives
        // the jail: nothing is lost when PID 1 exits, so no sync here (as no
        // container runtime syncs at a stop). A syncfs(2) of the overlay
        // reached the whole host filesystem under it and cost 0.6 ms on a
        // quiet machine but up to 80 ms while a build was writing, on the
        // critical path of every `alcove run`.
        log!("stopping ({outcome:?})");
    }
    0
}

/// Takes an inherited channel fd, checking that it is open.
fn open_fd_channel(fd: i32) -> Result<Fd, String> {
    // SAFETY: F_GETFD on any number is harmless.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(format!("the agent channel fd {fd} is not open ({})", std::io::Error::last_os_error()));
    }
    Ok(Fd::new(fd))
}

fn jail_setup(config: &AgentConfig) {
    if !Path::new("/proc/self").exists() {
        mounts::run_best_effort(&[
            mounts::Step::Mkdir("/proc".into()),
            mounts::Step::Mount {
                source: "proc".into(),
                target: "/proc".into(),
                fstype: "proc".into(),
                flags: mounts::flags::NOSUID | mounts::flags::NODEV | mounts::flags::NOEXEC,
                data: None,
            },
        ]);
    }
    mounts::run_best_effort(&mounts::base_plan(&mounts::mounted_points(), false));
    mounts::setup_ptmx();
    mounts::set_hostname(&config.hostname);
}

fn vm_setup(config: &AgentConfig) -> Result<Fd, String> {
    let Some(boot) = &config.vm else {
        return Err("VM mode needs the \"vm\" section of the configuration".into());
    };
    let root = vm::open_boot_root().map_err(|e| format!("cannot open the boot root: {e}"))?;
    vm::assemble_root(boot).map_err(|e| format!("cannot assemble the root filesystem: {e}"))?;
    mounts::run_best_effort(&mounts::base_plan(&mounts::mounted_points(), true));
    // Before the channel opens: no command can run on a half-made link.
    if let Some(net) = &boot.network {
        crate::net::configure(net).map_err(|e| format!("cannot configure the network: {e}"))?;
        log!("network: {} {}/{} via {}, MTU {}", net.interface, net.address_v4, net.prefix_v4, net.gateway_v4, net.mtu);
    }
    vm::console_stdio();
    mounts::setup_ptmx();
    mounts::set_hostname(&config.hostname);
    Ok(root)
}

/// Logs a fatal start-up error and ends the agent (exit code 1; in a VM
/// reported to the VMM before powering off).
fn fatal(msg: &str, opts: &Options, boot_root: Option<&Fd>) -> i32 {
    log!("fatal: {msg}");
    if !opts.no_pid1 && (boot_root.is_some() || is_vm_guest()) {
        let opened;
        let root = match boot_root {
            Some(r) => Some(r),
            None => {
                opened = vm::open_boot_root().ok();
                opened.as_ref()
            }
        };
        if let Some(r) = root {
            vm::report_exit_code(r, 1);
        }
        vm::power_off();
    }
    1
}

/// What the agent does after an internal panic: in a VM as PID 1 it reports
/// exit code 70 and powers off (returning from init would panic the guest
/// kernel); otherwise it returns 70 for the process exit.
pub fn after_panic() -> i32 {
    const INTERNAL_ERROR: i32 = 70;
    log!("fatal: internal error (panic); stopping the guest");
    // SAFETY: getpid has no preconditions.
    if unsafe { libc::getpid() } == 1 && is_vm_guest() {
        if let Ok(root) = vm::open_boot_root() {
            vm::report_exit_code(&root, INTERNAL_ERROR);
        }
        vm::power_off();
    }
    INTERNAL_ERROR
}

/// Whether we run inside a VM (the boot root is virtio-fs).
fn is_vm_guest() -> bool {
    const VIRTIOFS_MAGIC: i64 = 0x6573_5546;
    // SAFETY: statfs is plain data.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid path and struct.
    let rc = unsafe { libc::statfs(c"/".as_ptr(), &mut st) };
    rc == 0 && st.f_type as i64 == VIRTIOFS_MAGIC
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_parses_despite_odd_command_names() {
        let fields: Vec<String> = (3..=30).map(|n| if n == 22 { "12345".to_string() } else { n.to_string() }).collect();
        let stat = format!("77 (a) b (c) {}", fields.join(" "));
        assert_eq!(parse_start_us(&stat, 100), Some(123_450_000));
        assert_eq!(parse_start_us("garbage", 100), None);
        let own = process_start_us().expect("own start time");
        assert!(own <= sys::clock_us(libc::CLOCK_BOOTTIME));
    }
}
