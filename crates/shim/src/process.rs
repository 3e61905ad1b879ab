//! One process of a task: the main command (containerd's init) or an exec,
//! run as an alcove exec session in the task's sandbox.
//!
//! Invariants:
//! - A process moves Created → Running → Exited, never back; `start` is
//!   accepted once.
//! - Its exit is recorded exactly once, after its last output has been
//!   written to the FIFOs (so a reader that saw EOF and then asks for the
//!   status sees it), and then reported to the `on_exit` callback.
//! - The exit code is containerd's: the command's code, or 128 + signal
//!   when a signal ended it.

use crate::io::{feed_stdin, OutputFifos};
use alcove_client::{Client, ExecEvent, ExecInput, ExecOptions};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;
use tokio::sync::watch;

/// How a process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exit {
    /// containerd's exit status.
    pub code: u32,
    /// Whether the kernel's OOM killer ended it.
    pub oom_killed: bool,
    /// When it was observed.
    pub at: SystemTime,
}

/// The FIFO paths containerd gave for a process (empty: none).
#[derive(Clone, Debug, Default)]
pub struct Stdio {
    /// stdin FIFO.
    pub stdin: String,
    /// stdout FIFO.
    pub stdout: String,
    /// stderr FIFO.
    pub stderr: String,
}

/// Where a process is.
#[derive(Clone)]
pub enum Phase {
    /// Set up, not started.
    Created,
    /// Running.
    Running {
        /// Its stdin and signals.
        input: ExecInput,
    },
    /// Ended.
    Exited(Exit),
}

/// Why a process cannot do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// Start was asked of a process that is not Created.
    #[error("process {0} has already been started")]
    AlreadyStarted(String),
    /// A signal was asked of a process that is not running.
    #[error("process {0} is not running")]
    NotRunning(String),
    /// The stdio FIFOs could not be opened.
    #[error("process {id}: opening its stdio: {source}")]
    Stdio {
        /// The process.
        id: String,
        /// The error.
        source: std::io::Error,
    },
    /// The sandbox refused or failed the command.
    #[error("process {id}: {source}")]
    Client {
        /// The process.
        id: String,
        /// The error.
        source: alcove_client::ClientError,
    },
}

/// One process of a task.
pub struct Process {
    /// containerd's id for it (the container id for the init process).
    pub id: String,
    /// What it runs (stdin is set from [`Stdio`] at start).
    pub options: ExecOptions,
    /// Its FIFOs.
    pub stdio: Stdio,
    phase: Mutex<Phase>,
    exited: watch::Sender<Option<Exit>>,
    /// Set by CloseIO: the stdin FIFO's feeder stops.
    stdin_closed: Arc<AtomicBool>,
}

impl Process {
    /// A process not yet started.
    pub fn new(id: String, options: ExecOptions, stdio: Stdio) -> Process {
        Process {
            id,
            options,
            stdio,
            phase: Mutex::new(Phase::Created),
            exited: watch::channel(None).0,
            stdin_closed: Arc::default(),
        }
    }

    /// Where it is now.
    pub fn phase(&self) -> Phase {
        self.phase.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Starts it in the sandbox behind `client`; returns its guest pid.
    /// `on_exit` is called once, when it has ended and its output is
    /// written.
    pub async fn start(
        self: &std::sync::Arc<Self>,
        client: &Client,
        on_exit: impl FnOnce(Exit) + Send + 'static,
    ) -> Result<u32, ProcessError> {
        if !matches!(self.phase(), Phase::Created) {
            return Err(ProcessError::AlreadyStarted(self.id.clone()));
        }
        let stdio_err = |source| ProcessError::Stdio { id: self.id.clone(), source };
        let mut fifos = OutputFifos::open(&self.stdio.stdout, &self.stdio.stderr).map_err(stdio_err)?;
        let mut options = self.options.clone();
        options.stdin = !self.stdio.stdin.is_empty();
        let session =
            client.exec(options).await.map_err(|source| ProcessError::Client { id: self.id.clone(), source })?;
        let guest_pid = session.pid();
        let (input, mut output) = session.split();
        {
            let mut phase = self.phase.lock().unwrap_or_else(|p| p.into_inner());
            *phase = Phase::Running { input: input.clone() };
        }
        if !self.stdio.stdin.is_empty() {
            let (path, closed) = (self.stdio.stdin.clone(), self.stdin_closed.clone());
            feed_stdin(path, input, closed, tokio::runtime::Handle::current()).map_err(stdio_err)?;
        }
        let this = self.clone();
        tokio::spawn(async move {
            // A session that ends without an exit status (the sandbox went
            // away) counts as killed.
            let mut code = 128 + libc::SIGKILL as u32;
            let mut oom_killed = false;
            while let Some(event) = output.next_event().await {
                match event {
                    Ok(ExecEvent::Stdout(b)) => fifos.stdout(&b).await,
                    Ok(ExecEvent::Stderr(b)) => fifos.stderr(&b).await,
                    Ok(ExecEvent::Exited(status)) => {
                        code = exit_code(status.code, status.signal);
                        oom_killed = status.oom_killed;
                        break;
                    }
                    Ok(ExecEvent::Started { .. }) => {}
                    Err(_) => break,
                }
            }
            drop(fifos);
            let exit = Exit { code, oom_killed, at: SystemTime::now() };
            this.finish(exit);
            on_exit(exit);
        });
        Ok(guest_pid)
    }

    /// Records that it ended without having run (a kill before start, or
    /// the sandbox's end).
    pub fn finish(&self, exit: Exit) {
        let mut phase = self.phase.lock().unwrap_or_else(|p| p.into_inner());
        if !matches!(*phase, Phase::Exited(_)) {
            *phase = Phase::Exited(exit);
            self.exited.send_replace(Some(exit));
        }
    }

    /// Sends `signal` to it.
    pub fn signal(&self, signal: u32) -> Result<(), ProcessError> {
        match self.phase() {
            Phase::Running { input, .. } => {
                input.signal(signal as i32).map_err(|source| ProcessError::Client { id: self.id.clone(), source })
            }
            _ => Err(ProcessError::NotRunning(self.id.clone())),
        }
    }

    /// Closes its stdin (containerd's CloseIO): the command reads EOF,
    /// whatever the stdin FIFO still holds open. Idempotent.
    pub fn close_stdin(&self) -> Result<(), ProcessError> {
        match self.phase() {
            // Its stdin is /dev/null already.
            Phase::Running { .. } if self.stdio.stdin.is_empty() => Ok(()),
            Phase::Running { input } => {
                self.stdin_closed.store(true, Ordering::SeqCst);
                input.close_stdin().map_err(|source| ProcessError::Client { id: self.id.clone(), source })
            }
            _ => Err(ProcessError::NotRunning(self.id.clone())),
        }
    }

    /// Resizes its terminal.
    pub fn resize(&self, rows: u16, cols: u16) -> Result<(), ProcessError> {
        match self.phase() {
            Phase::Running { input } => {
                input.resize(rows, cols).map_err(|source| ProcessError::Client { id: self.id.clone(), source })
            }
            _ => Err(ProcessError::NotRunning(self.id.clone())),
        }
    }

    /// Waits until it has ended.
    pub async fn wait(&self) -> Exit {
        let mut rx = self.exited.subscribe();
        loop {
            if let Some(exit) = *rx.borrow_and_update() {
                return exit;
            }
            if rx.changed().await.is_err() {
                // The sender lives in `self`, which outlives this borrow.
                unreachable!("the exit channel's sender is owned by the process");
            }
        }
    }
}

/// containerd's exit status of a command that exited with `code` or was
/// ended by `signal`.
pub fn exit_code(code: Option<i32>, signal: Option<i32>) -> u32 {
    match (code, signal) {
        (_, Some(sig)) => 128 + sig as u32,
        (Some(code), None) => code as u32 & 0xff,
        (None, None) => 255,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_shells_convention() {
        assert_eq!(exit_code(Some(0), None), 0);
        assert_eq!(exit_code(Some(3), None), 3);
        assert_eq!(exit_code(None, Some(9)), 137);
        assert_eq!(exit_code(None, Some(15)), 143);
    }

    #[tokio::test]
    async fn the_exit_is_recorded_once_and_wakes_waiters() {
        let p = std::sync::Arc::new(Process::new("x".into(), ExecOptions::new(["true"]), Stdio::default()));
        let waiter = tokio::spawn({
            let p = p.clone();
            async move { p.wait().await }
        });
        let first = Exit { code: 137, oom_killed: false, at: SystemTime::UNIX_EPOCH };
        p.finish(first);
        p.finish(Exit { code: 0, oom_killed: false, at: SystemTime::now() });
        assert_eq!(waiter.await.expect("joins"), first);
        assert!(matches!(p.phase(), Phase::Exited(e) if e == first));
        assert!(matches!(p.signal(9), Err(ProcessError::NotRunning(_))));
    }
}
