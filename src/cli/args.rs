//! The command-line surface, declared with clap.
//!
//! Values that clap can check on its own (numbers, enums) are parsed here so
//! a bad value is refused before anything happens; values that need the
//! filesystem (volumes, rootfs) are checked by the commands.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::time::Duration;

/// alcove: run commands in isolated sandboxes.
#[derive(Debug, Parser)]
#[command(name = "alcove", version, about, disable_help_subcommand = true)]
pub struct Cli {
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// Every `alcove` command.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a sandbox, run a command in it and stream its output.
    Run(RunArgs),
    /// Create a sandbox and start it in the background.
    Create(CreateArgs),
    /// Run a command in a running sandbox.
    Exec(ExecArgs),
    /// Stop sandboxes gracefully (then by force after the timeout).
    Stop(StopArgs),
    /// Start stopped sandboxes again, with their writable layer intact.
    Start(NamesArgs),
    /// Force sandboxes off at once.
    Kill(NamesArgs),
    /// Remove sandboxes (their records and their writable layer).
    Rm(RmArgs),
    /// Mark sandboxes as active (resets their idle timeout).
    Touch(NamesArgs),
    /// Pause running sandboxes: freeze every process in them.
    ///
    /// The guest's processes make no progress until `alcove resume` (the
    /// cgroup freezer; jail backend). While paused, a sandbox is neither
    /// idle nor unresponsive: its idle timeout and heartbeat deadline do not
    /// fire, and both restart at resume. Its max duration keeps counting
    /// (a wall-clock bound). A paused sandbox takes no new `exec` or `cp`
    /// (refused at once); `stop`, `kill` and `rm -f` work on it. `ps` shows
    /// it as Paused.
    Pause(NamesArgs),
    /// Resume paused sandboxes (see `alcove pause`).
    Resume(NamesArgs),
    /// List sandboxes.
    Ps(PsArgs),
    /// Show a sandbox's configuration, status and runs.
    Inspect(InspectArgs),
    /// Show a sandbox's logs.
    Logs(LogsArgs),
    /// Show a sandbox's resource usage.
    Metrics(MetricsArgs),
    /// Copy files between the host and a sandbox (`NAME:/path` on either side).
    Cp(CpArgs),
    /// Check what this host supports.
    Doctor(DoctorArgs),
    /// Manage root filesystems.
    #[command(subcommand)]
    Rootfs(RootfsCommand),
    /// Inspect and change a sandbox's network.
    #[command(subcommand)]
    Net(super::net::NetCommand),
    /// Published ports of a running sandbox.
    #[command(subcommand)]
    Port(super::net::PortCommand),
    /// Secrets of a running sandbox.
    #[command(subcommand)]
    Secret(super::net::SecretCommand),
    /// The sandbox process itself (started by the other commands).
    #[command(hide = true)]
    Sandbox(SandboxArgs),
    /// Runs a detached `run -d` command to its end (started by `run -d`).
    #[command(hide = true, name = "__supervise")]
    Supervise(SuperviseArgs),
}

/// Backend choice on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BackendArg {
    /// krun where microVMs can boot, else jail.
    Auto,
    /// Linux-namespace jail.
    Jail,
    /// libkrun microVM.
    Krun,
    /// In-process scripted guest (tests only).
    #[value(hide = true)]
    Mock,
}

/// Options shared by `run` and `create`.
#[derive(Clone, Debug, Args)]
pub struct SandboxOpts {
    /// Remove the sandbox when it stops.
    #[arg(long)]
    pub rm: bool,
    /// Root filesystem: the name of an imported rootfs, a directory path, or an image
    /// reference (`name:tag`, `host/name[:tag][@digest]`), pulled on first use.
    #[arg(long, value_name = "NAME|PATH|REF", default_value = "default")]
    pub rootfs: String,
    /// Registry options, for a `--rootfs` that is an image reference.
    #[command(flatten)]
    pub registry: RegistryOpts,
    /// Guest backend.
    #[arg(long, value_enum, default_value = "auto")]
    pub backend: BackendArg,
    /// CPU limit.
    #[arg(long, value_name = "N", allow_hyphen_values = true, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub cpus: Option<u32>,
    /// Memory limit in MiB (jail default: 1024).
    #[arg(long, value_name = "MIB", allow_hyphen_values = true, value_parser = clap::value_parser!(u64).range(16..=16_777_216))]
    pub memory: Option<u64>,
    /// Process limit (jail default: 4096).
    #[arg(long, value_name = "N", allow_hyphen_values = true, value_parser = clap::value_parser!(u64).range(8..=4_194_304))]
    pub pids: Option<u64>,
    /// Size of /dev/shm in MiB (jail default: 64).
    #[arg(long = "shm-size", value_name = "MIB", allow_hyphen_values = true, value_parser = clap::value_parser!(u64).range(1..=16_777_216))]
    pub shm_size: Option<u64>,
    /// Size of /tmp in MiB (jail default: half the memory limit).
    #[arg(long = "tmp-size", value_name = "MIB", allow_hyphen_values = true, value_parser = clap::value_parser!(u64).range(1..=16_777_216))]
    pub tmp_size: Option<u64>,
    /// Limit of the writable layer in MiB (jail, root: a per-sandbox filesystem image).
    #[arg(long, value_name = "MIB", allow_hyphen_values = true, value_parser = clap::value_parser!(u64).range(16..=16_777_216))]
    pub disk: Option<u64>,
    /// Stop after this many seconds without activity.
    #[arg(long, value_name = "SECS", allow_hyphen_values = true, value_parser = parse_secs)]
    pub idle_timeout: Option<Duration>,
    /// Stop this many seconds after start.
    #[arg(long, value_name = "SECS", allow_hyphen_values = true, value_parser = parse_secs)]
    pub max_duration: Option<Duration>,
    /// Environment variable for commands (`K=V`, or `K` to copy it from here).
    #[arg(short = 'e', long = "env", value_name = "K=V", value_parser = parse_env)]
    pub env: Vec<(String, String)>,
    /// Bind mount `HOST:GUEST[:ro]`.
    #[arg(short = 'v', long = "volume", value_name = "HOST:GUEST[:ro]")]
    pub volume: Vec<String>,
    /// Working directory for commands.
    #[arg(short = 'w', long, value_name = "DIR")]
    pub workdir: Option<String>,
    /// User for commands (name or uid, optionally `:group`).
    #[arg(short = 'u', long, value_name = "USER")]
    pub user: Option<String>,
    /// The guest's hostname (UTS, /etc/hostname, /etc/hosts, $HOSTNAME;
    /// jail backend). Default: the sandbox name.
    #[arg(long, value_name = "NAME", value_parser = parse_hostname)]
    pub hostname: Option<String>,
    /// Network options.
    #[command(flatten)]
    pub net: super::net::NetOpts,
}

/// `alcove run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Sandbox name (`[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}`); generated when absent.
    #[arg(long)]
    pub name: Option<String>,
    /// Sandbox options.
    #[command(flatten)]
    pub opts: SandboxOpts,
    /// Run in the background and print the sandbox name.
    #[arg(short = 'd', long)]
    pub detach: bool,
    /// Keep stdin open and stream it to the command.
    #[arg(short = 'i', long)]
    pub interactive: bool,
    /// Run the command on a terminal.
    #[arg(short = 't', long)]
    pub tty: bool,
    /// The command and its arguments.
    #[arg(required = true, trailing_var_arg = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// `alcove create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Sandbox name.
    #[arg(value_name = "NAME")]
    pub name: String,
    /// Sandbox options.
    #[command(flatten)]
    pub opts: SandboxOpts,
}

/// `alcove exec`.
#[derive(Debug, Args)]
pub struct ExecArgs {
    /// Keep stdin open and stream it to the command.
    #[arg(short = 'i', long)]
    pub interactive: bool,
    /// Run the command on a terminal.
    #[arg(short = 't', long)]
    pub tty: bool,
    /// Environment variable (`K=V`, or `K` to copy it from here).
    #[arg(short = 'e', long = "env", value_name = "K=V", value_parser = parse_env)]
    pub env: Vec<(String, String)>,
    /// Working directory.
    #[arg(short = 'w', long, value_name = "DIR")]
    pub workdir: Option<String>,
    /// User (name or uid, optionally `:group`).
    #[arg(short = 'u', long, value_name = "USER")]
    pub user: Option<String>,
    /// Kill the command after this many seconds.
    #[arg(long, value_name = "SECS", allow_hyphen_values = true, value_parser = parse_secs)]
    pub timeout: Option<Duration>,
    /// The sandbox.
    #[arg(value_name = "NAME")]
    pub name: String,
    /// The command and its arguments.
    #[arg(required = true, trailing_var_arg = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// `alcove stop`.
#[derive(Debug, Args)]
pub struct StopArgs {
    /// Seconds to wait for a graceful stop before forcing it.
    #[arg(short = 't', long, value_name = "SECS", allow_hyphen_values = true, value_parser = parse_secs_or_zero, default_value = "10")]
    pub timeout: Duration,
    /// The sandboxes.
    #[arg(required = true, value_name = "NAME")]
    pub names: Vec<String>,
}

/// Commands taking only sandbox names.
#[derive(Debug, Args)]
pub struct NamesArgs {
    /// The sandboxes.
    #[arg(required = true, value_name = "NAME")]
    pub names: Vec<String>,
}

/// `alcove rm`.
#[derive(Debug, Args)]
pub struct RmArgs {
    /// Kill running sandboxes first.
    #[arg(short = 'f', long)]
    pub force: bool,
    /// The sandboxes.
    #[arg(required = true, value_name = "NAME")]
    pub names: Vec<String>,
}

/// `alcove ps`.
#[derive(Debug, Args)]
pub struct PsArgs {
    /// Show every sandbox, not only running ones.
    #[arg(short = 'a', long)]
    pub all: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `alcove inspect`.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// The sandbox.
    #[arg(value_name = "NAME")]
    pub name: String,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Which log `alcove logs` shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogSource {
    /// The sandbox process's own log.
    Runtime,
    /// The guest's console and agent log.
    Guest,
}

/// `alcove logs`.
#[derive(Debug, Args)]
pub struct LogsArgs {
    /// The sandbox.
    #[arg(value_name = "NAME")]
    pub name: String,
    /// Which log.
    #[arg(long, value_enum, default_value = "guest")]
    pub source: LogSource,
    /// Keep printing new lines until the sandbox stops.
    #[arg(short = 'f', long)]
    pub follow: bool,
}

/// `alcove metrics`.
#[derive(Debug, Args)]
pub struct MetricsArgs {
    /// The sandbox.
    #[arg(value_name = "NAME")]
    pub name: String,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `alcove cp`.
#[derive(Debug, Args)]
pub struct CpArgs {
    /// Source: a host path or `NAME:/path`.
    #[arg(value_name = "SRC")]
    pub src: String,
    /// Destination: a host path or `NAME:/path`.
    #[arg(value_name = "DST")]
    pub dst: String,
}

/// `alcove doctor`.
#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `alcove rootfs …`.
#[derive(Debug, Subcommand)]
pub enum RootfsCommand {
    /// Import a tar, OCI image layout or docker-save archive as a rootfs.
    Import {
        /// The rootfs name.
        #[arg(value_name = "NAME")]
        name: String,
        /// The archive.
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// Pull an image from a registry into the image cache.
    Pull {
        /// The image reference: `name[:tag][@digest]`, e.g. `busybox:1.36` or `127.0.0.1:5000/x:1`.
        #[arg(value_name = "REF")]
        reference: String,
        /// No progress display.
        #[arg(long, short)]
        quiet: bool,
        /// Print one JSON event per line.
        #[arg(long)]
        json: bool,
        /// Registry options.
        #[command(flatten)]
        registry: RegistryOpts,
    },
    /// Remove pulled images (and their layers) that no sandbox uses.
    Prune,
    /// List root filesystems.
    #[command(alias = "list")]
    Ls {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove root filesystems.
    Rm {
        /// The rootfs names.
        #[arg(required = true, value_name = "NAME")]
        names: Vec<String>,
    },
}

/// How to reach image registries (`rootfs pull`, and `run`/`create` with `--rootfs REF`).
#[derive(Clone, Debug, Default, Args)]
pub struct RegistryOpts {
    /// Allow plain HTTP to this registry (`host` or `host:port`); registries on the loopback
    /// always may. Repeatable.
    #[arg(long = "insecure-registry", value_name = "HOST")]
    pub insecure_registries: Vec<String>,
    /// Credentials file in `~/.docker/config.json` format (default: that file).
    #[arg(long = "registry-auth", value_name = "FILE")]
    pub auth_file: Option<PathBuf>,
}

/// `alcove sandbox --config FILE|-`.
#[derive(Debug, Args)]
pub struct SandboxArgs {
    /// The 0600 config file, or `-` to read it from stdin (how the CLI
    /// passes it: the process starts before the configuration is ready).
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
}

/// `alcove __supervise NAME`.
#[derive(Debug, Args)]
pub struct SuperviseArgs {
    /// The sandbox.
    pub name: String,
}

/// Parses a positive number of seconds (decimals allowed).
pub fn parse_secs(s: &str) -> Result<Duration, String> {
    let d = parse_secs_or_zero(s)?;
    if d.is_zero() {
        return Err("must be above zero".into());
    }
    Ok(d)
}

/// Parses a number of seconds (decimals allowed, zero accepted).
pub fn parse_secs_or_zero(s: &str) -> Result<Duration, String> {
    let v: f64 = s.trim().parse().map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !v.is_finite() || v < 0.0 {
        return Err(format!("{s:?} is not a non-negative number of seconds"));
    }
    if v > 10.0 * 365.0 * 86400.0 {
        return Err(format!("{s:?} seconds is too long"));
    }
    Ok(Duration::from_secs_f64(v))
}

/// Checks a `--hostname` value.
pub fn parse_hostname(s: &str) -> Result<String, String> {
    crate::backends::check_hostname(s).map(|()| s.to_string())
}

/// Parses `K=V`; a bare `K` takes its value from this process's environment.
pub fn parse_env(s: &str) -> Result<(String, String), String> {
    let (k, v) = match s.split_once('=') {
        Some((k, v)) => (k.to_string(), Some(v.to_string())),
        None => (s.to_string(), None),
    };
    if k.is_empty() {
        return Err(format!("{s:?} has no variable name (expected K=V)"));
    }
    if k.contains('\0') || v.as_deref().is_some_and(|v| v.contains('\0')) {
        return Err("environment variables cannot contain NUL bytes".into());
    }
    let v = match v {
        Some(v) => v,
        None => std::env::var(&k).map_err(|_| format!("{k} is not set here (expected K=V)"))?,
    };
    Ok((k, v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn seconds_accept_decimals_and_refuse_garbage() {
        assert_eq!(parse_secs("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_secs("2"), Ok(Duration::from_secs(2)));
        assert!(parse_secs("0").is_err());
        assert!(parse_secs("-1").is_err());
        assert!(parse_secs("abc").is_err());
        assert!(parse_secs("inf").is_err());
        assert_eq!(parse_secs_or_zero("0"), Ok(Duration::ZERO));
    }

    #[test]
    fn env_values_keep_equals_signs() {
        assert_eq!(parse_env("A=b=c"), Ok(("A".into(), "b=c".into())));
        assert_eq!(parse_env("A="), Ok(("A".into(), String::new())));
        assert!(parse_env("=x").is_err());
        assert!(parse_env("ALCOVE_SURELY_UNSET_VARIABLE").is_err());
    }

    #[test]
    fn run_takes_everything_after_the_command_verbatim() {
        let cli = Cli::try_parse_from(["alcove", "run", "--rm", "-e", "A=1", "sh", "-c", "exit 3"]).expect("parses");
        let Command::Run(run) = cli.command else { panic!("not run") };
        assert_eq!(run.command, ["sh", "-c", "exit 3"]);
        assert!(run.opts.rm);
        let cli = Cli::try_parse_from(["alcove", "exec", "-i", "box", "--", "cat", "-n"]).expect("parses");
        let Command::Exec(exec) = cli.command else { panic!("not exec") };
        assert_eq!((exec.name.as_str(), exec.command.as_slice()), ("box", &["cat".to_string(), "-n".into()][..]));
        assert!(exec.interactive);
    }
}
