//! Running one command in a sandbox with the local terminal attached.
//!
//! - Output chunks are written to stdout/stderr as they arrive.
//! - With `-i`, stdin is read on a dedicated thread (so a blocked read never
//!   holds up the exit) and streamed with EOF at its end.
//! - With `-t`, the local terminal (if stdin is one) is put in raw mode for
//!   the session, so Ctrl-C and Ctrl-\ reach the sandboxed process as bytes
//!   on its PTY; the window size is sent at start and on every SIGWINCH. The
//!   [`RawTerminal`] guard restores the terminal when dropped, which happens
//!   on every return path, on unwinding, and before the signal-triggered
//!   exit paths below.
//! - Without a terminal, SIGINT, SIGTERM, SIGHUP and SIGQUIT received by the
//!   CLI are forwarded to the command; the third SIGINT gives up (exit 130).
//!
//! The exit code follows docker: the command's code, 128+N for a signal,
//! 126/127 for spawn failures, 125 for alcove failures.

use super::error::{CliError, CliResult};
use alcove_client::{Client, ExecEvent, ExecOptions, ExecOutput, ExitStatus, OutputSink, TtySize};
use std::io::{IsTerminal, Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

/// What to attach.
pub struct Attach {
    /// Stream stdin.
    pub stdin: bool,
    /// Use a PTY.
    pub tty: bool,
    /// Where output goes (None = this process's stdout/stderr).
    pub output: Option<std::fs::File>,
}

/// The local terminal in raw mode; restored on drop.
pub struct RawTerminal {
    fd: i32,
    saved: libc::termios,
}

impl RawTerminal {
    /// Puts `fd` in raw mode if it is a terminal.
    pub fn enable(fd: i32) -> Option<RawTerminal> {
        // SAFETY: isatty and tcgetattr only read the fd's state into the termios we own.
        unsafe {
            if libc::isatty(fd) != 1 {
                return None;
            }
            let mut saved: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(fd, &mut saved) != 0 {
                return None;
            }
            let mut raw = saved;
            libc::cfmakeraw(&mut raw);
            if libc::tcsetattr(fd, libc::TCSANOW, &raw) != 0 {
                return None;
            }
            Some(RawTerminal { fd, saved })
        }
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        // SAFETY: restores the attributes saved from the same fd.
        unsafe {
            libc::tcsetattr(self.fd, libc::TCSADRAIN, &self.saved);
        }
    }
}

/// The size of the terminal on `fd`, if it is one.
pub fn terminal_size(fd: i32) -> Option<TtySize> {
    // SAFETY: TIOCGWINSZ fills the winsize we own.
    unsafe {
        let mut ws: libc::winsize = std::mem::zeroed();
        if libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) == 0 && ws.ws_row > 0 && ws.ws_col > 0 {
            Some(TtySize { rows: ws.ws_row, cols: ws.ws_col })
        } else {
            None
        }
    }
}

/// The best known size of the local terminal (stdin, stdout or stderr), or 24x80.
fn local_size() -> TtySize {
    [0, 1, 2].into_iter().find_map(terminal_size).unwrap_or(TtySize { rows: 24, cols: 80 })
}

/// How an attached command ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CommandEnd {
    /// The exit code to leave with (docker's: the command's, 128+N for a
    /// signal).
    pub code: i32,
    /// The command's status as the guest reported it; `None` when the CLI
    /// gave up first (a third Ctrl-C).
    pub status: Option<ExitStatus>,
}

/// Runs `opts` on `client` with the local terminal attached; returns how
/// the command ended.
pub async fn run_attached(client: &Client, mut opts: ExecOptions, attach: Attach) -> CliResult<CommandEnd> {
    opts.stdin = attach.stdin;
    if attach.tty {
        opts.tty = Some(local_size());
    }
    let raw = if attach.tty && attach.output.is_none() && std::io::stdin().is_terminal() {
        RawTerminal::enable(std::io::stdin().as_raw_fd())
    } else {
        None
    };
    let result = drive(client, opts, &attach, raw.is_some()).await;
    drop(raw);
    result
}

/// Capacity asked for a pipe on stdout: 1 MiB, the default
/// `/proc/sys/fs/pipe-max-size`, so unprivileged callers get it too.
const STDOUT_PIPE_BYTES: libc::c_int = 1024 * 1024;

/// Grows stdout to [`STDOUT_PIPE_BYTES`] when it is a smaller pipe. With the
/// default 64 KiB pipe every 128 KiB output frame needs two wake-ups of the
/// reader, which capped `alcove exec … | reader` well below the socket's
/// speed (as it caps `crun exec`; BENCHMARKS.md). Best effort: a refusal (pipe quota) changes nothing.
fn grow_stdout_pipe() {
    // SAFETY: fstat fills a local stat; F_GETPIPE_SZ/F_SETPIPE_SZ only read or
    // change the capacity of the pipe on fd 1, never its contents.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        if libc::fstat(1, &mut st) != 0 || st.st_mode & libc::S_IFMT != libc::S_IFIFO {
            return;
        }
        let size = libc::fcntl(1, libc::F_GETPIPE_SZ);
        if (0..STDOUT_PIPE_BYTES).contains(&size) {
            libc::fcntl(1, libc::F_SETPIPE_SZ, STDOUT_PIPE_BYTES);
        }
    }
}

/// A sink for the command's stdout when the CLI's stdout is a pipe: the
/// connection's reader then splices output from the socket into it, and no
/// byte of it passes through this process's memory (see
/// [`alcove_client::OutputSink`]). Terminals and files keep the event path.
fn stdout_pipe_sink() -> Option<OutputSink> {
    let _ = std::io::stdout().flush();
    let fd = std::io::stdout().as_fd().try_clone_to_owned().ok()?;
    OutputSink::for_pipe(fd)
}

async fn drive(client: &Client, mut opts: ExecOptions, attach: &Attach, raw: bool) -> CliResult<CommandEnd> {
    if attach.output.is_none() {
        grow_stdout_pipe();
        if !attach.tty {
            opts.stdout_sink = stdout_pipe_sink();
        }
    }
    let session = client.exec(opts).await?;
    let (input, output) = session.split();
    // Output is written by a task of the runtime's workers: the connection's
    // reader task (a worker too) hands it each chunk without waking another
    // thread, which was a futex wake-up and two context switches per chunk.
    let out_file = attach.output.as_ref().and_then(|f| f.try_clone().ok());
    let mut pump = AbortOnDrop(tokio::spawn(pump_output(output, out_file)));

    let mut stdin_rx = if attach.stdin { Some(spawn_stdin_reader()) } else { None };
    let mut winch = if attach.tty { signal(SignalKind::window_change()).ok() } else { None };
    let mut sigint = signal(SignalKind::interrupt()).map_err(sig_err)?;
    let mut sigterm = signal(SignalKind::terminate()).map_err(sig_err)?;
    let mut sighup = signal(SignalKind::hangup()).map_err(sig_err)?;
    let mut sigquit = signal(SignalKind::quit()).map_err(sig_err)?;
    let mut interrupts = 0;

    loop {
        tokio::select! {
            done = &mut pump.0 => {
                return done.unwrap_or_else(|e| Err(CliError::msg(format!("writing the output failed: {e}"))));
            }
            chunk = recv_opt(&mut stdin_rx) => match chunk {
                Some(data) => {
                    if input.write_stdin(&data).await.is_err() {
                        stdin_rx = None;
                    }
                }
                None => {
                    let _ = input.close_stdin();
                    stdin_rx = None;
                }
            },
            _ = recv_sig(&mut winch) => {
                let s = local_size();
                let _ = input.resize(s.rows, s.cols);
            }
            _ = sigint.recv() => {
                interrupts += 1;
                if interrupts >= 3 && !raw {
                    return Ok(CommandEnd { code: 130, status: None });
                }
                let _ = input.signal(libc::SIGINT);
            }
            _ = sigterm.recv() => { let _ = input.signal(libc::SIGTERM); }
            _ = sighup.recv() => { let _ = input.signal(libc::SIGHUP); }
            _ = sigquit.recv() => { let _ = input.signal(libc::SIGQUIT); }
        }
    }
}

/// A task aborted when its handle is dropped (on every return path).
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Writes a command's output as it arrives; returns how the command ended.
async fn pump_output(mut output: ExecOutput, mut file: Option<std::fs::File>) -> CliResult<CommandEnd> {
    loop {
        match output.next_event().await {
            None => return Err(CliError::msg("the session ended without an exit status")),
            Some(Err(e)) => return Err(e.into()),
            Some(Ok(ExecEvent::Started { .. })) => {}
            Some(Ok(ExecEvent::Stdout(d))) => write_out(&mut file, &d, false),
            Some(Ok(ExecEvent::Stderr(d))) => write_out(&mut file, &d, true),
            Some(Ok(ExecEvent::Exited(status))) => {
                if status.oom_killed {
                    super::output::error_line(
                        "the command was killed by the out-of-memory killer (the sandbox's memory limit)",
                    );
                }
                let code = match (status.code, status.signal) {
                    (Some(c), _) => c,
                    (None, Some(s)) => 128 + s,
                    (None, None) => super::error::EXIT_ALCOVE,
                };
                return Ok(CommandEnd { code, status: Some(status) });
            }
        }
    }
}

fn write_out(file: &mut Option<std::fs::File>, data: &[u8], err: bool) {
    if let Some(f) = file.as_mut() {
        let _ = f.write_all(data);
    } else if err {
        let mut e = std::io::stderr().lock();
        let _ = e.write_all(data);
        let _ = e.flush();
    } else {
        // Straight to fd 1: stdout's LineWriter would scan every chunk for a
        // newline (memrchr over up to 128 KiB per frame). Anything printed
        // through it before goes out first.
        let _ = std::io::stdout().flush();
        use std::os::fd::FromRawFd;
        // SAFETY: fd 1 stays open for the life of the process; ManuallyDrop keeps it open.
        let mut o = std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(1) });
        let _ = o.write_all(data);
    }
}

fn sig_err(e: std::io::Error) -> CliError {
    CliError::msg(format!("cannot install signal handlers: {e}"))
}

async fn recv_opt(rx: &mut Option<mpsc::Receiver<Vec<u8>>>) -> Option<Vec<u8>> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn recv_sig(s: &mut Option<tokio::signal::unix::Signal>) -> Option<()> {
    match s {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}

/// Reads stdin on its own thread; the channel closes at EOF or on error.
fn spawn_stdin_reader() -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel(8);
    let spawned = std::thread::Builder::new().name("alcove-stdin".into()).spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if tx.blocking_send(buf[..n].to_vec()).is_err() {
                        break;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
    });
    if spawned.is_err() {
        // No reader: the command sees EOF at once.
        let (_tx, rx) = mpsc::channel(1);
        return rx;
    }
    rx
}
