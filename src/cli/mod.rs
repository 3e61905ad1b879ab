//! The `alcove` command-line interface.
//!
//! Docker-like habits: `run`, `create`, `exec`, `stop`, `start`, `kill`,
//! `rm`, `touch`, `ps`, `inspect`, `logs`, `metrics`, `cp`, `doctor`,
//! `rootfs`, `net`, `port`. The CLI talks to sandboxes only through `alcove-client` (and a
//! networked sandbox's live network control socket, `crate::net_control`) and to
//! records only through `alcove-store`; it never reaches into actors.
//!
//! Invariants:
//! - Every failure is printed as one line on stderr (`alcove: …`) and exits
//!   125, except a command's own exit code (passed through) and spawn
//!   failures (126 cannot invoke, 127 not found).
//! - Every command that reads sandbox state reaps first (see [`state`]).
//! - Sandbox configuration (env values included) reaches the sandbox process
//!   only through its 0600 config file, never through argv.
//! - The terminal is restored on every exit path of `-t` sessions: the raw
//!   mode guard is dropped before [`main`] returns, and no code path calls
//!   `process::exit` while it is held.

pub mod args;
pub mod commands;
pub mod cp;
pub mod doctor;
pub mod error;
pub mod launch;
pub mod net;
pub mod output;
pub mod pull;
pub mod rootfs;
pub mod session;
pub mod show;
pub mod state;

use args::{Cli, Command};
use clap::Parser;
use error::{CliError, EXIT_ALCOVE};

/// Runs the CLI with this process's arguments; returns the exit code.
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return clap_failure(e),
    };
    crate::failpoint::install();
    if let Command::Sandbox(a) = cli.command {
        // The sandbox process: no runtime of ours, it builds its own threads.
        return crate::standalone::run(&a.config);
    }
    install_panic_hook();
    // One thread: a command drives one connection, and every hand-off
    // between worker threads is a cross-CPU wake-up (measured: `exec true`
    // 3.9 → 3.2 ms). What may block runs on threads of its own: stdin
    // (`session`), a handed-over stdout pipe (`alcove_client::sink`).
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            output::error_line(&format!("cannot start the async runtime: {e}"));
            return EXIT_ALCOVE;
        }
    };
    let command = cli.command;
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| runtime.block_on(dispatch(command))));
    let result = match result {
        Ok(r) => r,
        // The hook has printed the line.
        Err(_) => {
            runtime.shutdown_background();
            return EXIT_ALCOVE;
        }
    };
    // Blocking readers (stdin) must not hold the exit.
    runtime.shutdown_background();
    match result {
        Ok(code) => code,
        Err(e) => {
            output::error_line(&e.to_string());
            e.exit_code()
        }
    }
}

async fn dispatch(cmd: Command) -> Result<i32, CliError> {
    match cmd {
        Command::Run(a) => commands::run(a).await,
        Command::Create(a) => commands::create(a).await,
        Command::Exec(a) => commands::exec(a).await,
        Command::Stop(a) => commands::stop(a).await,
        Command::Start(a) => commands::start(a).await,
        Command::Kill(a) => commands::kill(a).await,
        Command::Rm(a) => commands::rm(a).await,
        Command::Touch(a) => commands::touch(a).await,
        Command::Pause(a) => commands::pause(a, true).await,
        Command::Resume(a) => commands::pause(a, false).await,
        Command::Ps(a) => show::ps(a),
        Command::Inspect(a) => show::inspect(a),
        Command::Logs(a) => show::logs(a).await,
        Command::Metrics(a) => show::metrics(a),
        Command::Cp(a) => cp::cp(a).await,
        Command::Doctor(a) => doctor::doctor(a),
        Command::Rootfs(c) => rootfs::rootfs(c),
        Command::Net(c) => net::command(c),
        Command::Port(c) => net::port(c),
        Command::Secret(c) => net::secret(c),
        Command::Supervise(a) => commands::supervise(a).await,
        Command::Sandbox(_) => Err(CliError::msg("the sandbox process cannot run inside the CLI runtime")),
    }
}

/// A bug must still look like every other failure: one line, no backtrace.
/// (Unwinding still runs, so a raw terminal is restored by its guard.)
fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let what = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        let at = info.location().map(|l| format!(" at {}:{}", l.file(), l.line())).unwrap_or_default();
        output::error_line(&format!("internal error: {}{at}", error::one_line(&what)));
    }));
}

/// Prints a clap error: help and version as clap renders them (exit 0),
/// anything else as one line (exit 125).
fn clap_failure(e: clap::Error) -> i32 {
    use clap::error::ErrorKind;
    match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            let _ = e.print();
            0
        }
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand | ErrorKind::MissingSubcommand => {
            let _ = e.print();
            EXIT_ALCOVE
        }
        _ => {
            let rendered = e.render().to_string();
            let first = rendered.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("invalid arguments");
            let first = first.strip_prefix("error: ").unwrap_or(first);
            output::error_line(&format!("{first} (see `alcove --help`)"));
            EXIT_ALCOVE
        }
    }
}
