//! The connection: handshake, frame routing and sending.
//!
//! Invariants:
//! - Session ids are allocated only inside the range granted by the relay,
//!   never 0, and an id is not reused while its session is open (until the
//!   guest's TERMINAL frame, or the connection's end). Allocation starts after
//!   the most recently used id, so a just-closed id is reused last.
//! - One reader task owns the read half. It routes every session frame to
//!   that session's unbounded channel and never waits on a consumer, so a
//!   slow session never stalls another one, and the relay (which credits the
//!   guest as it hands frames to this socket) keeps every session moving. A
//!   consumer that stops reading its session's events buffers them in memory.
//! - `Credit` frames from the agent never reach a session's channel: they
//!   refill that session's send window ([`Window`]), a semaphore holding at
//!   most [`INITIAL_WINDOW`] permits, one per wire byte of credited frames.
//! - One writer task owns the write half and writes whole frames from an
//!   unbounded queue, so frames never interleave and enqueueing is
//!   synchronous and cancel-safe. The queue stays bounded in practice: data
//!   frames wait for window first, control frames are one per caller action.
//! - When the connection ends (end of stream, a read or write error, or an
//!   invalid frame) every session channel is closed and every window is
//!   closed, so every waiter sees [`ClientError::Disconnected`].

use crate::exec::{ExecOptions, ExecSession};
use crate::sink::{OutputSink, PipeDrain};
use crate::ClientError;
use alcove_protocol::async_io::{write_frame, FrameReader, Incoming};
use alcove_protocol::codec::DataKind;
use alcove_protocol::fdpass::{self, FdReadHalf};
use alcove_protocol::frame::Header;
use alcove_protocol::handshake::check_ready;
use alcove_protocol::{
    Flags, Frame, Handshake, Message, Ready, SandboxRequest, CONTROL_ID, HANDSHAKE_LEN, HEADER_LEN, INITIAL_WINDOW,
};
use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::io::{AsyncWriteExt, BufWriter};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::UnixStream;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinHandle;

/// Read buffer of the connection (the bulk of large frames bypasses it).
const READ_BUFFER: usize = 64 * 1024;
/// Write buffer of the connection.
const WRITE_BUFFER: usize = 64 * 1024;

/// A connection to one sandbox's agent.sock. Cheap to clone; every clone and
/// every session share the connection, which closes when the last of them is
/// dropped.
#[derive(Clone)]
pub struct Client {
    pub(crate) conn: Arc<Connection>,
}

pub(crate) struct Connection {
    router: Arc<Router>,
    out: mpsc::UnboundedSender<Frame>,
    handshake: Handshake,
    ready: Ready,
    reader: JoinHandle<()>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// Routing state shared by the reader task and the senders.
struct Router {
    state: Mutex<RouterState>,
    closed: watch::Sender<bool>,
    range: Handshake,
}

struct RouterState {
    open: bool,
    sessions: HashMap<u32, Slot>,
    last: u32,
}

struct Slot {
    events: mpsc::UnboundedSender<Message>,
    window: Arc<Window>,
    /// Where this session's stdout is written instead of `events`.
    stdout: Option<OutputSink>,
    /// The thread moving the handed-over stdout pipe into `stdout`.
    drain: Option<PipeDrain>,
}

/// Send window of one session in the client → guest direction.
pub(crate) struct Window {
    sem: Arc<Semaphore>,
}

impl Window {
    fn new() -> Window {
        Window { sem: Arc::new(Semaphore::new(INITIAL_WINDOW as usize)) }
    }

    fn credit(&self, bytes: u32) {
        let room = (INITIAL_WINDOW as usize).saturating_sub(self.sem.available_permits());
        self.sem.add_permits((bytes as usize).min(room));
    }

    fn close(&self) {
        self.sem.close();
    }
}

impl Router {
    fn lock(&self) -> MutexGuard<'_, RouterState> {
        // A poisoned lock only means a panic elsewhere; the map is still valid.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn allocate(
        &self,
        stdout: Option<OutputSink>,
    ) -> Result<(u32, mpsc::UnboundedReceiver<Message>, Arc<Window>), ClientError> {
        let mut st = self.lock();
        if !st.open {
            return Err(ClientError::Disconnected);
        }
        let (start, end) = (self.range.id_start, self.range.id_end);
        let size = u64::from(end - start) + 1;
        let mut candidate = st.last;
        for _ in 0..size {
            candidate = if candidate >= end || candidate < start { start } else { candidate + 1 };
            if let Entry::Vacant(slot) = st.sessions.entry(candidate) {
                let (tx, rx) = mpsc::unbounded_channel();
                let window = Arc::new(Window::new());
                slot.insert(Slot { events: tx, window: window.clone(), stdout, drain: None });
                st.last = candidate;
                return Ok((candidate, rx, window));
            }
        }
        Err(ClientError::NoFreeIds(size))
    }

    fn release(&self, id: u32) {
        if let Some(slot) = self.lock().sessions.remove(&id) {
            slot.window.close();
        }
    }

    fn is_open(&self) -> bool {
        self.lock().open
    }

    /// The stdout sink of session `id`, if it has one.
    fn stdout_sink(&self, id: u32) -> Option<OutputSink> {
        self.lock().sessions.get(&id).and_then(|s| s.stdout.clone())
    }

    /// Routes one frame; `fd` is the descriptor that came with it (flag FD).
    fn route(&self, incoming: Incoming, fd: Option<OwnedFd>) -> Result<(), ClientError> {
        let (id, flags, msg) = match incoming {
            // Ready re-sent, heartbeats or anything else on the control id:
            // nothing for sessions.
            Incoming::Frame(frame) if frame.id == CONTROL_ID => return Ok(()),
            Incoming::Data { id, .. } if id == CONTROL_ID => return Ok(()),
            Incoming::Frame(frame) => {
                let msg = frame.decode_body().map_err(|e| ClientError::Unexpected(e.to_string()))?;
                (frame.id, frame.flags, msg)
            }
            // A large data message: its payload was read into its own buffer
            // and is passed on as it is.
            Incoming::Data { id, flags, kind, data, .. } => (id, flags, kind.into_message(data)),
        };
        let mut st = self.lock();
        if let Message::Credit { bytes } = msg {
            if let Some(slot) = st.sessions.get(&id) {
                slot.window.credit(bytes);
            }
            return Ok(());
        }
        if let Message::ExecStdoutPipe = msg {
            // Taken only by a session with a sink, and only a pipe's read
            // end; anything else is closed here.
            if let (Some(slot), Some(fd)) = (st.sessions.get_mut(&id), fd) {
                if let (Some(sink), true) = (&slot.stdout, fdpass::is_pipe_read_end(fd.as_fd())) {
                    match sink.drain_pipe(fd) {
                        Ok(drain) => slot.drain = Some(drain),
                        // The output cannot be delivered: say so rather than
                        // let the command end on a closed pipe unexplained.
                        Err(e) => {
                            let reason = format!("cannot copy the command's stdout: {e}");
                            let _ = slot.events.send(Message::SessionAborted { reason });
                        }
                    }
                }
            }
            return Ok(());
        }
        if flags.contains(Flags::TERMINAL) || matches!(msg, Message::SessionAborted { .. }) {
            if let Some(mut slot) = st.sessions.remove(&id) {
                slot.window.close();
                match slot.drain.take() {
                    // The end is told once the pipe's output is all in the sink.
                    Some(drain) => {
                        tokio::spawn(async move {
                            drain.finished().await;
                            let _ = slot.events.send(msg);
                        });
                    }
                    None => {
                        let _ = slot.events.send(msg);
                    }
                }
            }
        } else if let Some(slot) = st.sessions.get(&id) {
            // The receiver may be gone (the session handle was dropped);
            // the id stays reserved until the guest closes the session.
            let _ = slot.events.send(msg);
        }
        Ok(())
    }

    fn shut(&self) {
        let mut st = self.lock();
        st.open = false;
        for (_, slot) in st.sessions.drain() {
            slot.window.close();
        }
        drop(st);
        self.closed.send_replace(true);
    }
}

/// A session's handle on the connection: its id, its window and the sender.
pub(crate) struct SessionLink {
    pub(crate) id: u32,
    conn: Arc<Connection>,
    window: Arc<Window>,
}

impl SessionLink {
    /// Enqueues a frame that does not use window (requests, EOF, control).
    pub(crate) fn send(&self, flags: Flags, msg: &Message) -> Result<(), ClientError> {
        let frame = Frame::message(self.id, flags, msg).map_err(|e| ClientError::Encode(e.to_string()))?;
        self.enqueue(frame)
    }

    /// Enqueues `frame` if this session is still open. The check and the
    /// enqueue happen under the router lock, so a frame of a finished session
    /// can never be queued after the request of a new session reusing its id.
    fn enqueue(&self, frame: Frame) -> Result<(), ClientError> {
        let st = self.conn.router.lock();
        if !st.open {
            return Err(ClientError::Disconnected);
        }
        match st.sessions.get(&self.id) {
            Some(slot) if Arc::ptr_eq(&slot.window, &self.window) => {
                self.conn.out.send(frame).map_err(|_| ClientError::Disconnected)
            }
            _ => Err(ClientError::SessionClosed),
        }
    }

    /// Sends a data frame once the window has room for its wire bytes.
    /// Fails with [`ClientError::SessionClosed`] once the guest has ended the
    /// session, or [`ClientError::Disconnected`].
    pub(crate) async fn send_data(&self, msg: &Message) -> Result<(), ClientError> {
        let frame = Frame::message(self.id, Flags::NONE, msg).map_err(|e| ClientError::Encode(e.to_string()))?;
        // A frame of at most MAX_CHUNK data is far below INITIAL_WINDOW, so it
        // always fits in a fully credited window.
        let need = u32::try_from(frame.wire_len()).map_err(|_| ClientError::Encode("frame too large".into()))?;
        match self.window.sem.acquire_many(need).await {
            Ok(permit) => permit.forget(),
            Err(_) => return Err(self.closed_error()),
        }
        self.enqueue(frame)
    }

    /// The error for a closed session: disconnected or ended.
    pub(crate) fn closed_error(&self) -> ClientError {
        if self.conn.router.is_open() {
            ClientError::SessionClosed
        } else {
            ClientError::Disconnected
        }
    }
}

impl Connection {
    fn send(&self, id: u32, flags: Flags, msg: &Message) -> Result<(), ClientError> {
        let frame = Frame::message(id, flags, msg).map_err(|e| ClientError::Encode(e.to_string()))?;
        let st = self.router.lock();
        if !st.open {
            return Err(ClientError::Disconnected);
        }
        self.out.send(frame).map_err(|_| ClientError::Disconnected)
    }
}

impl Client {
    /// Connects to the running sandbox `name` of [`crate::paths::alcove_home`].
    pub async fn connect(name: &str) -> Result<Client, ClientError> {
        let path = crate::paths::socket_path(&crate::paths::alcove_home(), name)?;
        match Client::connect_path(&path).await {
            Err(ClientError::NoListener { path }) => Err(ClientError::NotRunning { name: name.to_string(), path }),
            other => other,
        }
    }

    /// Connects to the agent socket at `path` and completes the handshake:
    /// the id range, then the agent's `Ready` of a matching protocol version.
    ///
    /// Nothing is sent before the socket is trusted: its directory must be
    /// the caller's or root's with mode 0700
    /// ([`crate::paths::check_socket_dir`]) and the listening process must
    /// run as the caller or root (`SO_PEERCRED`), else
    /// [`ClientError::UntrustedSocketDir`] / [`ClientError::UntrustedPeer`].
    pub async fn connect_path(path: &Path) -> Result<Client, ClientError> {
        let no_listener = || ClientError::NoListener { path: path.to_path_buf() };
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        if !crate::paths::check_socket_dir(dir)? {
            return Err(no_listener());
        }
        let stream = UnixStream::connect(path).await.map_err(|source| match source.kind() {
            io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => no_listener(),
            _ => ClientError::Connect { path: path.to_path_buf(), source },
        })?;
        let peer = stream.peer_cred().map_err(|source| ClientError::Connect { path: path.to_path_buf(), source })?;
        if !crate::paths::trusted_peer(peer.uid()) {
            return Err(ClientError::UntrustedPeer { path: path.to_path_buf(), uid: peer.uid() });
        }
        Client::from_stream(stream).await
    }

    /// Completes the handshake on an already connected stream.
    pub async fn from_stream(stream: UnixStream) -> Result<Client, ClientError> {
        let (rd, wr) = stream.into_split();
        // Buffered: many small frames come in one read(2), while the bulk of
        // a large output chunk is read straight into its own buffer.
        let mut rd = FrameReader::new(FdReadHalf::new(rd), READ_BUFFER);
        let mut range = [0u8; HANDSHAKE_LEN];
        rd.read_exact(&mut range).await.map_err(handshake_io)?;
        let handshake = Handshake::decode(range)?;
        let frame = rd.read_frame().await.map_err(handshake_io)?.ok_or(ClientError::HandshakeClosed)?;
        let ready = check_ready(&frame)?;

        let (closed, _) = watch::channel(false);
        let router = Arc::new(Router {
            state: Mutex::new(RouterState { open: true, sessions: HashMap::new(), last: handshake.id_end }),
            closed,
            range: handshake,
        });
        let (out, out_rx) = mpsc::unbounded_channel();
        tokio::spawn(write_loop(wr, out_rx, router.clone()));
        let reader = tokio::spawn(read_loop(rd, router.clone()));
        Ok(Client { conn: Arc::new(Connection { router, out, handshake, ready, reader }) })
    }

    /// The agent's `Ready` message received in the handshake.
    pub fn ready(&self) -> &Ready {
        &self.conn.ready
    }

    /// The session id range granted by the relay.
    pub fn id_range(&self) -> Handshake {
        self.conn.handshake
    }

    /// Whether the connection is still up.
    pub fn is_connected(&self) -> bool {
        self.conn.router.is_open()
    }

    /// Waits until the connection has ended.
    pub async fn closed(&self) {
        let mut rx = self.conn.router.closed.subscribe();
        // The sender lives in the router, which this client keeps alive.
        let _ = rx.wait_for(|closed| *closed).await;
    }

    /// Marks activity for the sandbox's idle timeout.
    pub fn touch(&self) -> Result<(), ClientError> {
        self.conn.send(CONTROL_ID, Flags::NONE, &Message::Touch)
    }

    /// Asks the sandbox to stop (SIGTERM to every command, `grace_ms`, then
    /// SIGKILL, sync, power off) and waits until it closes the connection.
    pub async fn shutdown(&self, grace_ms: u32) -> Result<(), ClientError> {
        self.conn.send(CONTROL_ID, Flags::SHUTDOWN, &Message::Shutdown { grace_ms })?;
        self.closed().await;
        Ok(())
    }

    /// Pauses the sandbox: every process of its guest is frozen once this
    /// returns `Ok` (see the sandbox's clock rules in docs/ARCHITECTURE.md).
    pub async fn pause(&self) -> Result<(), ClientError> {
        self.sandbox_request(SandboxRequest::Pause).await
    }

    /// Resumes a paused sandbox.
    pub async fn resume(&self) -> Result<(), ClientError> {
        self.sandbox_request(SandboxRequest::Resume).await
    }

    /// One request to the sandbox process (not the guest), answered by one
    /// `SandboxReply` that closes its session.
    async fn sandbox_request(&self, request: SandboxRequest) -> Result<(), ClientError> {
        let (_link, mut rx) = self.open_session(&Message::SandboxRequest(request), None)?;
        match rx.recv().await {
            Some(Message::SandboxReply(Ok(()))) => Ok(()),
            Some(Message::SandboxReply(Err(why))) => Err(ClientError::Refused(why)),
            Some(Message::SessionAborted { reason }) => Err(ClientError::Aborted(reason)),
            Some(other) => Err(ClientError::Unexpected(format!("{other:?}"))),
            None => Err(ClientError::Disconnected),
        }
    }

    /// Runs a command; see [`ExecSession`].
    pub async fn exec(&self, opts: ExecOptions) -> Result<ExecSession, ClientError> {
        ExecSession::start(self, opts).await
    }

    /// Opens a session: allocates an id and sends `request` with
    /// SESSION_START.
    pub(crate) fn open_session(
        &self,
        request: &Message,
        stdout: Option<OutputSink>,
    ) -> Result<(Arc<SessionLink>, mpsc::UnboundedReceiver<Message>), ClientError> {
        let frame = Frame::message(0, Flags::SESSION_START, request).map_err(|e| ClientError::Encode(e.to_string()))?;
        let (id, rx, window) = self.conn.router.allocate(stdout)?;
        let link = Arc::new(SessionLink { id, conn: self.conn.clone(), window });
        if let Err(e) = link.enqueue(Frame { id, ..frame }) {
            self.conn.router.release(id);
            return Err(e);
        }
        Ok((link, rx))
    }
}

/// Writes a `len`-byte stdout payload, whose prefix was just read, to `sink`:
/// what is buffered by copy, the rest spliced from the socket (or read and
/// copied when the sink cannot take spliced data).
async fn deliver(rd: &mut FrameReader<FdReadHalf>, sink: &OutputSink, len: usize) -> io::Result<()> {
    let buffered = rd.take_buffered(len);
    let mut left = len - buffered.len();
    sink.write_all(buffered);
    while left > 0 {
        match sink.splice_from(rd.get_ref().stream(), left).await? {
            Some(n) => left -= n.min(left),
            None => {
                let data = rd.read_payload(left).await?;
                sink.write_all(&data);
                left = 0;
            }
        }
    }
    Ok(())
}

fn handshake_io(e: io::Error) -> ClientError {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        ClientError::HandshakeClosed
    } else {
        ClientError::Disconnected
    }
}

async fn read_loop(mut rd: FrameReader<FdReadHalf>, router: Arc<Router>) {
    while let Ok(Some(header)) = rd.read_header().await {
        // A descriptor comes with its frame's first byte: it is queued now.
        let fd = if header.flags.contains(Flags::FD) { rd.get_mut().take_fd() } else { None };
        match read_frame_after(&mut rd, &router, header).await {
            Ok(Some(incoming)) => {
                if router.route(incoming, fd).is_err() {
                    break;
                }
            }
            Ok(None) => {}
            Err(_) => break,
        }
    }
    router.shut();
}

/// Reads the rest of the frame `header` announced: an [`Incoming`] to route,
/// or `None` when it was stdout of a session with a sink, already written
/// there (in frame order: see crate::sink).
async fn read_frame_after(
    rd: &mut FrameReader<FdReadHalf>,
    router: &Router,
    header: Header,
) -> io::Result<Option<Incoming>> {
    let sink = if header.id == CONTROL_ID { None } else { router.stdout_sink(header.id) };
    if let Some(sink) = sink {
        match rd.read_data_prefix(&header).await? {
            Some((DataKind::ExecStdout, len)) => {
                deliver(rd, &sink, len).await?;
                return Ok(None);
            }
            Some((kind, len)) => {
                let data = rd.read_payload(len).await?;
                let (id, flags, wire_len) = (header.id, header.flags, HEADER_LEN + header.body_len());
                return Ok(Some(Incoming::Data { id, flags, kind, data, wire_len }));
            }
            None => {}
        }
    }
    rd.read_incoming_body(header).await.map(Some)
}

async fn write_loop(wr: OwnedWriteHalf, mut queue: mpsc::UnboundedReceiver<Frame>, router: Arc<Router>) {
    // Frames queued together leave in one write(2); the buffer is flushed
    // whenever the queue runs empty, so nothing waits in it.
    let mut wr = BufWriter::with_capacity(WRITE_BUFFER, wr);
    while let Some(frame) = queue.recv().await {
        let mut sent = write_frame(&mut wr, &frame).await;
        if sent.is_ok() && queue.is_empty() {
            sent = wr.flush().await;
        }
        if sent.is_err() {
            router.shut();
            return;
        }
    }
    // Every sender is gone: the client was dropped. Dropping `wr` shuts the
    // write direction down, which tells the relay we are done.
}
