//! Running commands.
//!
//! An exec session is one id: the client sends `ExecRequest`, the guest
//! answers `ExecStarted`, output chunks, then `ExecExited` (or `ExecFailed`
//! instead of everything). [`Client::exec`] returns once the command has
//! started (or failed to start, as [`ClientError::Spawn`]).
//!
//! Invariants:
//! - Stdin is sent in `ExecStdin` chunks of at most [`MAX_CHUNK`] bytes, each
//!   only once the session's window has room for its wire bytes, so at most
//!   [`alcove_protocol::INITIAL_WINDOW`] un-credited bytes are ever in flight.
//!   EOF, resize and signal frames use no window.
//! - The event stream yields `Started` first and ends after `Exited` or after
//!   its first error; nothing follows either.
//! - With a timeout, the deadline counts from the request. When it passes,
//!   the client sends SIGKILL and keeps reading until the guest reports the
//!   end of the session or [`KILL_GRACE`] passes, then yields
//!   [`ClientError::Timeout`]; output after the kill is discarded.
//! - Dropping a session handle sends nothing: the command keeps running and
//!   its id stays reserved until the guest ends it.

use crate::conn::SessionLink;
use crate::{Client, ClientError, OutputSink};
use alcove_protocol::{ExecRequest, ExitStatus, Flags, Message, Rlimit, TtySize, MAX_CHUNK};
use futures_core::Stream;
use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::AsyncWrite;
use tokio::sync::mpsc;
use tokio::time::Sleep;

/// How long a timed-out command may take to be reported gone after SIGKILL.
pub const KILL_GRACE: Duration = Duration::from_secs(2);

/// Linux SIGKILL.
const SIGKILL: i32 = 9;

/// What to run and how.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExecOptions {
    /// Program and arguments; `argv[0]` is looked up in `PATH` if it has no `/`.
    pub argv: Vec<String>,
    /// Environment added to the sandbox's defaults (later entries win).
    pub env: Vec<(String, String)>,
    /// Working directory; the user's home or `/` when absent.
    pub cwd: Option<String>,
    /// User name or uid, optionally `user:group`; root when absent.
    pub user: Option<String>,
    /// Run on a PTY of this size; pipes when absent.
    pub tty: Option<TtySize>,
    /// Whether stdin will be streamed; otherwise the command's stdin is
    /// /dev/null.
    pub stdin: bool,
    /// Resource limits applied before exec.
    pub rlimits: Vec<Rlimit>,
    /// Kill the command (SIGKILL) if it runs longer than this.
    pub timeout: Option<Duration>,
    /// Write stdout straight to this pipe instead of yielding
    /// [`ExecEvent::Stdout`] (see [`OutputSink`]).
    pub stdout_sink: Option<OutputSink>,
}

impl ExecOptions {
    /// Options running `argv` with every other setting at its default.
    pub fn new<I, S>(argv: I) -> ExecOptions
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        ExecOptions { argv: argv.into_iter().map(Into::into).collect(), ..ExecOptions::default() }
    }

    fn request(&self) -> ExecRequest {
        ExecRequest {
            argv: self.argv.clone(),
            env: self.env.clone(),
            cwd: self.cwd.clone(),
            user: self.user.clone(),
            tty: self.tty,
            stdin: self.stdin,
            rlimits: self.rlimits.clone(),
            // A sink can take the pipe itself (see crate::sink).
            stdout_pipe: self.stdout_sink.is_some(),
        }
    }
}

/// One event of a running command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExecEvent {
    /// The command is running with this pid (inside the guest).
    Started {
        /// Guest pid.
        pid: u32,
    },
    /// Bytes written to stdout (or the terminal, with a PTY).
    Stdout(Vec<u8>),
    /// Bytes written to stderr.
    Stderr(Vec<u8>),
    /// The command ended; the last event.
    Exited(ExitStatus),
}

/// Everything a command printed, and how it ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Output {
    /// All stdout bytes.
    pub stdout: Vec<u8>,
    /// All stderr bytes.
    pub stderr: Vec<u8>,
    /// How it ended.
    pub status: ExitStatus,
}

/// A running command: its input side ([`ExecInput`]) and its event stream
/// ([`ExecOutput`]). [`ExecSession::split`] separates them so they can be
/// driven from different tasks.
pub struct ExecSession {
    input: ExecInput,
    output: ExecOutput,
    pid: u32,
}

impl ExecSession {
    pub(crate) async fn start(client: &Client, opts: ExecOptions) -> Result<ExecSession, ClientError> {
        let (link, rx) = client.open_session(&Message::ExecRequest(opts.request()), opts.stdout_sink.clone())?;
        let mut output = ExecOutput {
            rx,
            first: None,
            link: link.clone(),
            timeout: opts.timeout,
            deadline: opts.timeout.map(|t| Box::pin(tokio::time::sleep(t))),
            phase: Phase::Running,
        };
        let pid = match output.next_event().await {
            Some(Ok(ExecEvent::Started { pid })) => pid,
            Some(Ok(other)) => {
                return Err(ClientError::Unexpected(format!("{other:?} before the command was reported started")))
            }
            Some(Err(e)) => return Err(e),
            None => return Err(ClientError::Unexpected("the session ended before the command started".into())),
        };
        output.first = Some(ExecEvent::Started { pid });
        Ok(ExecSession { input: ExecInput { link, stdin: opts.stdin }, output, pid })
    }

    /// The session id on the connection.
    pub fn id(&self) -> u32 {
        self.input.link.id
    }

    /// The command's pid inside the guest.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// A handle on the input side (clonable).
    pub fn input(&self) -> ExecInput {
        self.input.clone()
    }

    /// Sends bytes to the command's stdin, waiting for window as needed.
    pub async fn write_stdin(&self, data: &[u8]) -> Result<(), ClientError> {
        self.input.write_stdin(data).await
    }

    /// An [`AsyncWrite`] feeding the command's stdin; shutting it down
    /// closes stdin.
    pub fn stdin_writer(&self) -> StdinWriter {
        self.input.writer()
    }

    /// Closes the command's stdin (it reads EOF).
    pub fn close_stdin(&self) -> Result<(), ClientError> {
        self.input.close_stdin()
    }

    /// Resizes the command's terminal.
    pub fn resize(&self, rows: u16, cols: u16) -> Result<(), ClientError> {
        self.input.resize(rows, cols)
    }

    /// Sends a signal (Linux numbering) to the command's process group.
    pub fn signal(&self, signal: i32) -> Result<(), ClientError> {
        self.input.signal(signal)
    }

    /// The next event, `None` after the last one.
    pub async fn next_event(&mut self) -> Option<Result<ExecEvent, ClientError>> {
        self.output.next_event().await
    }

    /// Separates the input side from the event stream.
    pub fn split(self) -> (ExecInput, ExecOutput) {
        (self.input, self.output)
    }

    /// Collects the remaining output until the command ends.
    pub async fn output(self) -> Result<Output, ClientError> {
        self.output.collect().await
    }

    /// Waits for the command to end, discarding its output.
    pub async fn wait(mut self) -> Result<ExitStatus, ClientError> {
        while let Some(ev) = self.output.next_event().await {
            if let ExecEvent::Exited(status) = ev? {
                return Ok(status);
            }
        }
        Err(ClientError::Unexpected("the session ended without an exit status".into()))
    }
}

impl Stream for ExecSession {
    type Item = Result<ExecEvent, ClientError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().output.poll_event(cx)
    }
}

/// The input side of a command: stdin, terminal size and signals.
#[derive(Clone)]
pub struct ExecInput {
    link: Arc<SessionLink>,
    stdin: bool,
}

impl ExecInput {
    /// The session id on the connection.
    pub fn id(&self) -> u32 {
        self.link.id
    }

    /// Sends bytes to the command's stdin in chunks of at most
    /// [`MAX_CHUNK`], waiting for the agent's credit whenever the window is
    /// full. If cancelled, a prefix of whole chunks may have been sent.
    pub async fn write_stdin(&self, data: &[u8]) -> Result<(), ClientError> {
        if !self.stdin {
            return Err(ClientError::StdinNotRequested);
        }
        for chunk in data.chunks(MAX_CHUNK) {
            self.link.send_data(&Message::ExecStdin { data: chunk.to_vec() }).await?;
        }
        Ok(())
    }

    /// Closes the command's stdin (it reads EOF).
    pub fn close_stdin(&self) -> Result<(), ClientError> {
        if !self.stdin {
            return Err(ClientError::StdinNotRequested);
        }
        self.link.send(Flags::NONE, &Message::ExecStdinEof)
    }

    /// Resizes the command's terminal.
    pub fn resize(&self, rows: u16, cols: u16) -> Result<(), ClientError> {
        self.link.send(Flags::NONE, &Message::ExecResize(TtySize { rows, cols }))
    }

    /// Sends a signal (Linux numbering) to the command's process group.
    pub fn signal(&self, signal: i32) -> Result<(), ClientError> {
        self.link.send(Flags::NONE, &Message::ExecSignal { signal })
    }

    /// An [`AsyncWrite`] feeding stdin; shutting it down closes stdin.
    pub fn writer(&self) -> StdinWriter {
        StdinWriter { input: self.clone(), pending: None }
    }
}

type PendingWrite = Pin<Box<dyn Future<Output = Result<(), ClientError>> + Send>>;

/// Stdin of a command as an [`AsyncWrite`], for `tokio::io::copy` and
/// friends. Each write sends at most [`MAX_CHUNK`] bytes and completes once
/// they are queued on the connection (after waiting for window); `flush`
/// waits for a pending write; `shutdown` sends EOF.
pub struct StdinWriter {
    input: ExecInput,
    pending: Option<(PendingWrite, usize)>,
}

impl StdinWriter {
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let Some((fut, len)) = self.pending.as_mut() else {
            return Poll::Ready(Ok(0));
        };
        let len = *len;
        match fut.as_mut().poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(res) => {
                self.pending = None;
                Poll::Ready(res.map(|()| len).map_err(io::Error::from))
            }
        }
    }
}

impl AsyncWrite for StdinWriter {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.pending.is_none() {
            if buf.is_empty() {
                return Poll::Ready(Ok(0));
            }
            let len = buf.len().min(MAX_CHUNK);
            let data = buf[..len].to_vec();
            let input = this.input.clone();
            this.pending = Some((Box::pin(async move { input.write_stdin(&data).await }), len));
        }
        // A write left pending by an earlier call completes first; its
        // length is what that caller (repeating the call) is told.
        this.poll_pending(cx)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().poll_pending(cx).map_ok(|_| ())
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match this.poll_pending(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Ready(Ok(_)) => Poll::Ready(this.input.close_stdin().map_err(io::Error::from)),
        }
    }
}

enum Phase {
    Running,
    Killing,
    Done,
}

/// The event stream of a command (a [`Stream`] of [`ExecEvent`]s).
pub struct ExecOutput {
    rx: mpsc::UnboundedReceiver<Message>,
    first: Option<ExecEvent>,
    link: Arc<SessionLink>,
    timeout: Option<Duration>,
    deadline: Option<Pin<Box<Sleep>>>,
    phase: Phase,
}

impl ExecOutput {
    /// The session id on the connection.
    pub fn id(&self) -> u32 {
        self.link.id
    }

    /// The next event, `None` after the last one.
    pub async fn next_event(&mut self) -> Option<Result<ExecEvent, ClientError>> {
        poll_fn(|cx| self.poll_event(cx)).await
    }

    /// Collects the remaining output until the command ends.
    pub async fn collect(mut self) -> Result<Output, ClientError> {
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        while let Some(ev) = self.next_event().await {
            match ev? {
                ExecEvent::Started { .. } => {}
                ExecEvent::Stdout(d) => stdout.extend_from_slice(&d),
                ExecEvent::Stderr(d) => stderr.extend_from_slice(&d),
                ExecEvent::Exited(status) => return Ok(Output { stdout, stderr, status }),
            }
        }
        Err(ClientError::Unexpected("the session ended without an exit status".into()))
    }

    fn timed_out(&mut self) -> Poll<Option<Result<ExecEvent, ClientError>>> {
        self.phase = Phase::Done;
        Poll::Ready(Some(Err(ClientError::Timeout(self.timeout.unwrap_or_default()))))
    }

    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<ExecEvent, ClientError>>> {
        if let Some(ev) = self.first.take() {
            return Poll::Ready(Some(Ok(ev)));
        }
        loop {
            match self.phase {
                Phase::Done => return Poll::Ready(None),
                Phase::Running => {
                    match self.rx.poll_recv(cx) {
                        Poll::Ready(Some(msg)) => {
                            if let Some(item) = self.map(msg) {
                                return Poll::Ready(Some(item));
                            }
                            continue;
                        }
                        Poll::Ready(None) => {
                            self.phase = Phase::Done;
                            return Poll::Ready(Some(Err(ClientError::Disconnected)));
                        }
                        Poll::Pending => {}
                    }
                    let Some(deadline) = self.deadline.as_mut() else {
                        return Poll::Pending;
                    };
                    if deadline.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    // The session may have ended meanwhile; then there is
                    // nothing to kill and the error is moot.
                    let _ = self.link.send(Flags::NONE, &Message::ExecSignal { signal: SIGKILL });
                    self.deadline = Some(Box::pin(tokio::time::sleep(KILL_GRACE)));
                    self.phase = Phase::Killing;
                }
                Phase::Killing => {
                    loop {
                        match self.rx.poll_recv(cx) {
                            Poll::Ready(Some(msg)) if !is_final(&msg) => continue,
                            Poll::Ready(_) => return self.timed_out(),
                            Poll::Pending => break,
                        }
                    }
                    let grace_over = self.deadline.as_mut().is_none_or(|d| d.as_mut().poll(cx).is_ready());
                    if grace_over {
                        return self.timed_out();
                    }
                    return Poll::Pending;
                }
            }
        }
    }

    /// Maps one guest message to an event; `None` for messages to skip.
    fn map(&mut self, msg: Message) -> Option<Result<ExecEvent, ClientError>> {
        let item = match msg {
            Message::ExecStarted { pid } => Ok(ExecEvent::Started { pid }),
            Message::ExecStdout { data } => Ok(ExecEvent::Stdout(data)),
            Message::ExecStderr { data } => Ok(ExecEvent::Stderr(data)),
            Message::ExecExited(status) => Ok(ExecEvent::Exited(status)),
            Message::ExecFailed(e) => Err(ClientError::Spawn(e)),
            Message::SessionAborted { reason } => Err(ClientError::Aborted(reason)),
            other => {
                let name = format!("{other:?}");
                Err(ClientError::Unexpected(name.chars().take(80).collect()))
            }
        };
        if !matches!(item, Ok(ExecEvent::Started { .. } | ExecEvent::Stdout(_) | ExecEvent::Stderr(_))) {
            self.phase = Phase::Done;
        }
        Some(item)
    }
}

impl Stream for ExecOutput {
    type Item = Result<ExecEvent, ClientError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().poll_event(cx)
    }
}

fn is_final(msg: &Message) -> bool {
    matches!(msg, Message::ExecExited(_) | Message::ExecFailed(_) | Message::SessionAborted { .. })
}

impl Client {
    /// Runs a command to completion and collects its output. With
    /// `opts.stdin` set, stdin is closed at once.
    pub async fn exec_output(&self, opts: ExecOptions) -> Result<Output, ClientError> {
        let stdin = opts.stdin;
        let session = self.exec(opts).await?;
        if stdin {
            session.close_stdin()?;
        }
        session.output().await
    }

    /// Runs a command with `input` as its stdin (then EOF) and collects its
    /// output. Input and output flow concurrently, so a command may print
    /// while it reads.
    pub async fn exec_output_with_input(&self, mut opts: ExecOptions, input: &[u8]) -> Result<Output, ClientError> {
        opts.stdin = true;
        let (stdin, output) = self.exec(opts).await?.split();
        let feed = async {
            // A command that exits before reading everything ends the
            // session; the outcome is then the collected output's.
            if stdin.write_stdin(input).await.is_ok() {
                let _ = stdin.close_stdin();
            }
        };
        let collect = output.collect();
        tokio::pin!(feed, collect);
        let mut fed = false;
        loop {
            tokio::select! {
                out = &mut collect => return out,
                () = &mut feed, if !fed => fed = true,
            }
        }
    }
}
