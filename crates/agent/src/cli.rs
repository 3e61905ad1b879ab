//! Command-line parsing.
//!
//! ```text
//! alcove-agent --config-fd N   [--channel-fd N] [--no-pid1] [--channel-is-port]   (jail)
//! alcove-agent --config PATH   [--channel-fd N] [--no-pid1] [--channel-is-port]   (vm)
//! alcove-agent --version | --help
//! ```
//! Exactly one of `--config-fd` and `--config` is required. The channel is fd
//! 3 in a jail, the virtio-console port named `agent` in a VM, or the fd given
//! by `--channel-fd`. `--no-pid1` runs as an ordinary process (tests): no
//! mounts, no hostname, no pivot; the agent becomes a child subreaper so it
//! still reaps orphans. `--channel-is-port` treats end of file on the channel
//! as "host not connected yet" (how a virtio-console port reports it)
//! instead of "host gone"; it is implied when the channel is the VM's port.

/// Where the configuration comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigSource {
    /// An inherited fd to read to its end.
    Fd(i32),
    /// A JSON file.
    Path(String),
}

/// Parsed options.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// The configuration's source.
    pub config: ConfigSource,
    /// Overrides the channel.
    pub channel_fd: Option<i32>,
    /// Not PID 1 (tests).
    pub no_pid1: bool,
    /// Treat the channel as a virtio-console port (EOF = not connected yet),
    /// whatever the mode; implied in VM mode without `--channel-fd`.
    pub channel_is_port: bool,
}

/// What the command line asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Run the agent.
    Run(Options),
    /// Print the version.
    Version,
    /// Print usage.
    Help,
}

/// Usage text.
pub const USAGE: &str =
    "usage: alcove-agent (--config-fd N | --config PATH) [--channel-fd N] [--no-pid1] [--channel-is-port]\n       alcove-agent --version";

/// Why the command line was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CliError {
    /// An option needs a value.
    #[error("option {0} needs a value")]
    MissingValue(String),
    /// A value is not a file descriptor number.
    #[error("option {0} expects a file descriptor number, got {1:?}")]
    BadFd(String, String),
    /// Unknown argument.
    #[error("unknown argument {0:?}")]
    Unknown(String),
    /// Neither or both config options.
    #[error("exactly one of --config-fd and --config is required")]
    NoConfig,
}

fn fd_value(opt: &str, v: Option<String>) -> Result<i32, CliError> {
    let v = v.ok_or_else(|| CliError::MissingValue(opt.to_string()))?;
    v.parse::<i32>().ok().filter(|n| *n >= 0).ok_or_else(|| CliError::BadFd(opt.to_string(), v))
}

/// Parses the arguments after the program name.
pub fn parse<I: IntoIterator<Item = String>>(args: I) -> Result<Command, CliError> {
    let mut it = args.into_iter();
    let mut config = None;
    let mut channel_fd = None;
    let mut no_pid1 = false;
    let mut channel_is_port = false;
    while let Some(a) = it.next() {
        match a.as_str() {
            "--version" | "-V" => return Ok(Command::Version),
            "--help" | "-h" => return Ok(Command::Help),
            "--config-fd" => {
                if config.is_some() {
                    return Err(CliError::NoConfig);
                }
                config = Some(ConfigSource::Fd(fd_value(&a, it.next())?));
            }
            "--config" => {
                if config.is_some() {
                    return Err(CliError::NoConfig);
                }
                let v = it.next().ok_or_else(|| CliError::MissingValue(a.clone()))?;
                config = Some(ConfigSource::Path(v));
            }
            "--channel-fd" => channel_fd = Some(fd_value(&a, it.next())?),
            "--no-pid1" => no_pid1 = true,
            "--channel-is-port" => channel_is_port = true,
            _ => return Err(CliError::Unknown(a)),
        }
    }
    let config = config.ok_or(CliError::NoConfig)?;
    Ok(Command::Run(Options { config, channel_fd, no_pid1, channel_is_port }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn jail_and_vm_forms_parse() {
        assert_eq!(
            parse(args("--config-fd 4")),
            Ok(Command::Run(Options {
                config: ConfigSource::Fd(4),
                channel_fd: None,
                no_pid1: false,
                channel_is_port: false
            }))
        );
        assert_eq!(
            parse(args("--config /.alcove/agent.json --channel-fd 7 --no-pid1 --channel-is-port")),
            Ok(Command::Run(Options {
                config: ConfigSource::Path("/.alcove/agent.json".into()),
                channel_fd: Some(7),
                no_pid1: true,
                channel_is_port: true
            }))
        );
        assert_eq!(parse(args("--version")), Ok(Command::Version));
    }

    #[test]
    fn bad_command_lines_are_refused() {
        assert_eq!(parse(args("")), Err(CliError::NoConfig));
        assert_eq!(parse(args("--config-fd")), Err(CliError::MissingValue("--config-fd".into())));
        assert_eq!(parse(args("--config-fd x")), Err(CliError::BadFd("--config-fd".into(), "x".into())));
        assert_eq!(parse(args("--config-fd 4 --config /x")), Err(CliError::NoConfig));
        assert_eq!(parse(args("--bogus")), Err(CliError::Unknown("--bogus".into())));
    }
}
