//! The Relay actor: agent.sock, client slots, frame routing, sessions,
//! flow control and activity.
//!
//! Runs on the actor thread. Its I/O runs as local tasks on the same
//! single-threaded runtime and shares one `RefCell`'d routing table with the
//! actor, so routing needs no locks:
//!
//! - *accept*: takes connections on agent.sock (0600, in a 0700 directory),
//!   gives each a free slot of [`MAX_CLIENTS`] and a disjoint id range (the
//!   slot's block of ids, at the slot's next *generation*: see
//!   [`slot_range`]), waits
//!   for the agent's `Ready` (released by Lifecycle once the sandbox is
//!   recorded Running), then writes `[id_start][id_end]` and the cached
//!   `Ready` frame;
//! - *client reader* (one per client): checks every frame's id against the
//!   client's range (a client that leaves it, or sends garbage, is dropped:
//!   only that client), registers sessions on SESSION_START, handles control
//!   frames (`Touch`, the SHUTDOWN flag) and forwards the rest to the guest;
//! - *client writer* (one per client): writes the frames routed to it and
//!   returns `Credit` to the agent as they leave, so the agent's per-session
//!   window bounds what is queued for a client, and a client that stops
//!   reading stalls only its own sessions; large frames skip its write
//!   buffer (header and body leave in one vectored write);
//! - *guest reader*: routes guest frames by id without decoding them, except
//!   control frames (`Ready`, `Heartbeat`); a [`FrameReader`] reads large
//!   bodies straight into the frame, so an output byte is copied only from
//!   the agent's socket into its frame and from there into the client's;
//! - *guest writer*: the one writer of the agent channel: credit owed to
//!   the agent first (a [`CreditLedger`] that never makes anyone wait), then
//!   the queue of client frames, each charged to its client's budget until
//!   written, so a client's reader waits (backpressure on that client alone)
//!   rather than queue without limit. See [`crate::actors::flow`] for the
//!   bounds.
//!
//! A client's disconnect ends its sessions in the guest: exec sessions by
//! SIGKILL, file sessions by `SessionAborted` (an upload cut short is
//! discarded, not completed). A session whose client is gone no longer
//! counts as activity, and its ids are never handed to the slot's next
//! holder, even while a hostile guest leaves it open.
//!
//! Invariants: every guest frame either reaches its client's queue or belongs
//! to a session whose client is gone (it is then credited back and counted as
//! discarded); no queue is unbounded — a client's queue is bounded in bytes
//! by one flow-control window per open session (see `ClientQueue`), and a
//! queue beyond that means a broken peer: that client is disconnected with a
//! log line, never silently truncated. Nothing the guest reader or a client
//! writer does waits on the agent channel's writing side.

use crate::actors::flow::{
    CreditLedger, GuestBudget, RelayCounters, ToGuest, CLIENT_QUEUE_SLACK, MAX_SESSIONS_PER_CLIENT,
};
use crate::actors::lifecycle::Lifecycle;
use crate::actors::peer_log::PeerWarnings;
use crate::clock::Clock;
use crate::messages::{
    Activity, AttachGuest, CloseRelay, GetActivity, OpenToClients, RemoveSocket, SendShutdown, Terminate, Touch,
};
use crate::store::TerminationReason;
use actix::prelude::*;
use alcove_protocol::async_io::{read_frame, write_frame, write_frame_direct, FrameReader};
use alcove_protocol::fdpass::{self, FdReadHalf};
use alcove_protocol::{Flags, Frame, Handshake, Message, CONTROL_ID, INITIAL_WINDOW};
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use tokio::io::{AsyncWriteExt, BufWriter};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, watch};

/// Most clients connected at once.
pub const MAX_CLIENTS: usize = 128;
/// Credit is returned in batches of this many bytes per session.
const CREDIT_BATCH: u32 = INITIAL_WINDOW / 8;
/// Frames with a body this large go to a client's socket directly (header
/// and body in one vectored write) instead of being copied into the write
/// buffer first.
const DIRECT_WRITE_MIN: usize = 32 * 1024;

/// Why agent.sock could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// The socket's directory is unusable.
    #[error("socket directory {path} is unusable: {reason}")]
    SocketDir {
        /// The directory.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Binding failed.
    #[error("cannot listen on {path}: {source}")]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
}

/// Creates agent.sock: the directory 0700 (created if missing, refused if
/// another user owns it), the socket 0600. A stale socket file is replaced.
pub fn bind_socket(path: &Path) -> Result<std::os::unix::net::UnixListener, RelayError> {
    let dir = path.parent().ok_or_else(|| RelayError::SocketDir {
        path: path.to_path_buf(),
        reason: "the socket path has no directory".into(),
    })?;
    let dir_err = |reason: String| RelayError::SocketDir { path: dir.to_path_buf(), reason };
    if !dir.exists() {
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(|e| dir_err(e.to_string()))?;
    }
    let meta = std::fs::metadata(dir).map_err(|e| dir_err(e.to_string()))?;
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    if meta.uid() != euid {
        return Err(dir_err(format!("it is owned by uid {}, not by this user", meta.uid())));
    }
    if meta.mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(|e| dir_err(e.to_string()))?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(source) => return Err(RelayError::Bind { path: path.to_path_buf(), source }),
    }
    let listener = std::os::unix::net::UnixListener::bind(path)
        .map_err(|source| RelayError::Bind { path: path.to_path_buf(), source })?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|source| RelayError::Bind { path: path.to_path_buf(), source })?;
    listener.set_nonblocking(true).map_err(|source| RelayError::Bind { path: path.to_path_buf(), source })?;
    Ok(listener)
}

/// Generations a slot cycles through before its ids repeat.
const SLOT_GENERATIONS: u64 = 16;
/// Ids per client: a slot's block of 2^24 ids, shared by its generations.
const IDS_PER_CLIENT: u32 = (1 << 24) / SLOT_GENERATIONS as u32;

/// The id range of slot `k` at `generation`: slot `k` owns the block
/// `(k+1) << 24` (2^24 ids, none of them 0), and each generation of the
/// slot (each new client in it) gets the next 1/16 of that block, so a
/// client never gets the ids of the slot's previous holder — whose sessions
/// may still be ending in the guest. A generation whose range still has a
/// live session is skipped (see `Core::lease_slot`).
fn slot_range(k: usize, generation: u64) -> Handshake {
    let block = ((k as u32) + 1) << 24;
    let start = block + (generation % SLOT_GENERATIONS) as u32 * IDS_PER_CLIENT;
    Handshake { id_start: start, id_end: start + (IDS_PER_CLIENT - 1) }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SessionKind {
    Exec,
    Fs,
}

struct Route {
    /// `(slot, generation)` of the owning client; `None` once it is gone.
    owner: Option<(usize, u64)>,
    kind: SessionKind,
}

impl Route {
    /// Whether a client still waits on this session (only those count as
    /// activity: a session left by a gone client is ending, or broken).
    fn is_owned(&self) -> bool {
        self.owner.is_some()
    }
}

struct ClientSlot {
    generation: u64,
    tx: mpsc::UnboundedSender<Frame>,
    queue: Rc<ClientQueue>,
}

/// Accounting of what is queued towards one client. The agent sends at most
/// `INITIAL_WINDOW` un-credited bytes per session and the relay credits only
/// what it has written to the client, so a well-behaved peer never queues
/// more than one window per open session; the queue is bounded by that in
/// bytes (not in frames, so many small frames are as fine as a few large).
#[derive(Default)]
struct ClientQueue {
    /// Wire bytes queued and not yet written to the client.
    bytes: Cell<usize>,
    /// Sessions of this client whose final frame has not been written yet.
    open_sessions: Cell<usize>,
    /// The descriptors of queued FD frames, in queue order (a frame and its
    /// descriptor are queued together).
    fds: RefCell<VecDeque<OwnedFd>>,
}

impl ClientQueue {
    fn limit(&self) -> usize {
        self.open_sessions.get().max(1) * INITIAL_WINDOW as usize + CLIENT_QUEUE_SLACK
    }
}

/// State shared by the actor and its tasks.
struct Core {
    clock: Arc<dyn Clock>,
    lifecycle: Addr<Lifecycle>,
    ready: watch::Sender<Option<Frame>>,
    /// The agent's `Ready`, until clients may have it.
    pending_ready: Option<Frame>,
    ready_at: Option<std::time::Duration>,
    last_heartbeat: Option<std::time::Duration>,
    last_activity: std::time::Duration,
    slots: Vec<Option<ClientSlot>>,
    /// The generation each slot's next client gets (see [`slot_range`]).
    slot_generations: Vec<u64>,
    sessions: HashMap<u32, Route>,
    guest_tx: Option<mpsc::UnboundedSender<ToGuest>>,
    /// Credit owed to the agent (see [`CreditLedger`]).
    credits: Rc<CreditLedger>,
    counters: Arc<RelayCounters>,
    closing: watch::Sender<bool>,
    discarded_frames: u64,
    /// Warnings a peer causes, rate-limited.
    warnings: PeerWarnings,
}

impl Core {
    fn touch(&mut self) {
        self.last_activity = self.clock.now();
    }

    /// Owes the agent `bytes` of credit on session `id`, if the relay knows
    /// that session (a guest cannot grow the ledger with made-up ids).
    fn owe_credit(&self, id: u32, bytes: u32) {
        if self.sessions.contains_key(&id) {
            self.credits.owe(id, bytes);
        }
    }

    /// Queues one of the relay's own frames for the guest.
    fn to_guest(&self, frame: Frame) {
        if let Some(tx) = &self.guest_tx {
            let _ = tx.send(ToGuest::own(frame));
        }
    }

    fn live(&self, slot: usize, generation: u64) -> bool {
        self.slots.get(slot).and_then(|s| s.as_ref()).is_some_and(|s| s.generation == generation)
    }

    /// Sessions a client still waits on.
    fn open_sessions(&self) -> usize {
        self.sessions.values().filter(|r| r.is_owned()).count()
    }

    /// A free slot and a generation of it whose id range holds no session
    /// (a gone client's session may still be open in the guest); `None`
    /// when every slot is taken or has no such generation.
    fn lease_slot(&mut self) -> Option<(usize, u64)> {
        for k in 0..self.slots.len() {
            if self.slots[k].is_some() {
                continue;
            }
            for _ in 0..SLOT_GENERATIONS {
                let generation = self.slot_generations[k];
                self.slot_generations[k] += 1;
                let range = slot_range(k, generation);
                if !self.sessions.keys().any(|id| range.contains(*id)) {
                    return Some((k, generation));
                }
            }
        }
        None
    }
}

type Shared = Rc<RefCell<Core>>;

/// Owns agent.sock and routes frames.
pub struct Relay {
    core: Shared,
    listener: Option<std::os::unix::net::UnixListener>,
    socket_path: PathBuf,
    closed: bool,
}

impl Relay {
    /// A relay for an already bound socket (see [`bind_socket`]), keeping
    /// its figures in `counters`.
    pub fn new(
        listener: std::os::unix::net::UnixListener,
        socket_path: PathBuf,
        clock: Arc<dyn Clock>,
        lifecycle: Addr<Lifecycle>,
        counters: Arc<RelayCounters>,
    ) -> Relay {
        let now = clock.now();
        let core = Core {
            clock: clock.clone(),
            lifecycle,
            ready: watch::channel(None).0,
            pending_ready: None,
            ready_at: None,
            last_heartbeat: None,
            last_activity: now,
            slots: (0..MAX_CLIENTS).map(|_| None).collect(),
            slot_generations: vec![0; MAX_CLIENTS],
            sessions: HashMap::new(),
            guest_tx: None,
            credits: Rc::new(CreditLedger::default()),
            counters,
            closing: watch::channel(false).0,
            discarded_frames: 0,
            warnings: PeerWarnings::new(clock.clone()),
        };
        Relay { core: Rc::new(RefCell::new(core)), listener: Some(listener), socket_path, closed: false }
    }
}

impl Actor for Relay {
    type Context = Context<Self>;

    fn started(&mut self, _ctx: &mut Self::Context) {
        let Some(std_listener) = self.listener.take() else {
            return;
        };
        match UnixListener::from_std(std_listener) {
            Ok(listener) => {
                actix::spawn(accept_loop(listener, self.core.clone()));
            }
            Err(e) => {
                let core = self.core.borrow();
                core.lifecycle.do_send(Terminate::new(
                    TerminationReason::InternalError,
                    format!("cannot serve {}: {e}", self.socket_path.display()),
                ));
            }
        }
    }
}

impl Handler<AttachGuest> for Relay {
    type Result = ();

    fn handle(&mut self, msg: AttachGuest, _: &mut Self::Context) {
        let stream = msg.channel.set_nonblocking(true).and_then(|()| UnixStream::from_std(msg.channel));
        let stream = match stream {
            Ok(s) => s,
            Err(e) => {
                self.core.borrow().lifecycle.do_send(Terminate::new(
                    TerminationReason::InternalError,
                    format!("cannot use the agent channel: {e}"),
                ));
                return;
            }
        };
        let (read, write) = stream.into_split();
        // Unbounded in frames, bounded in bytes: each client's frames by its
        // budget, the relay's own by the sessions they end.
        let (tx, rx) = mpsc::unbounded_channel();
        let (credits, counters) = {
            let mut core = self.core.borrow_mut();
            core.guest_tx = Some(tx);
            (core.credits.clone(), core.counters.clone())
        };
        actix::spawn(guest_writer(write, rx, credits, counters));
        actix::spawn(guest_reader(FrameReader::new(FdReadHalf::new(read), 256 * 1024), self.core.clone()));
    }
}

impl Handler<OpenToClients> for Relay {
    type Result = ();

    fn handle(&mut self, _: OpenToClients, _: &mut Self::Context) {
        let mut core = self.core.borrow_mut();
        if let Some(frame) = core.pending_ready.take() {
            core.ready.send_replace(Some(frame));
        }
    }
}

impl Handler<GetActivity> for Relay {
    type Result = MessageResult<GetActivity>;

    fn handle(&mut self, _: GetActivity, _: &mut Self::Context) -> Self::Result {
        let core = self.core.borrow();
        MessageResult(Activity {
            ready_at: core.ready_at,
            last_heartbeat: core.last_heartbeat,
            last_activity: core.last_activity,
            open_sessions: core.open_sessions(),
        })
    }
}

impl Handler<Touch> for Relay {
    type Result = ();

    fn handle(&mut self, _: Touch, _: &mut Self::Context) {
        self.core.borrow_mut().touch();
    }
}

impl Handler<SendShutdown> for Relay {
    type Result = ResponseFuture<bool>;

    fn handle(&mut self, msg: SendShutdown, _: &mut Self::Context) -> Self::Result {
        let tx = self.core.borrow().guest_tx.clone();
        let grace_ms = u32::try_from(msg.grace.as_millis()).unwrap_or(u32::MAX);
        Box::pin(async move {
            let Some(tx) = tx else {
                return false;
            };
            let Ok(frame) = Frame::message(CONTROL_ID, Flags::SHUTDOWN, &Message::Shutdown { grace_ms }) else {
                return false;
            };
            tx.send(ToGuest::own(frame)).is_ok()
        })
    }
}

impl Handler<CloseRelay> for Relay {
    type Result = ();

    fn handle(&mut self, _: CloseRelay, _: &mut Self::Context) {
        if self.closed {
            return;
        }
        self.closed = true;
        let mut core = self.core.borrow_mut();
        // Sessions still open get a final frame so their clients do not hang.
        let open: Vec<(u32, Option<(usize, u64)>)> = core.sessions.drain().map(|(id, r)| (id, r.owner)).collect();
        for (id, owner) in open {
            let Some((slot, generation)) = owner else {
                continue;
            };
            if !core.live(slot, generation) {
                continue;
            }
            let reason = "the sandbox stopped before the session ended".to_string();
            if let (Some(Some(client)), Ok(frame)) =
                (core.slots.get(slot), Frame::message(id, Flags::TERMINAL, &Message::SessionAborted { reason }))
            {
                client.queue.bytes.set(client.queue.bytes.get() + frame.wire_len());
                let _ = client.tx.send(frame);
            }
        }
        // Dropping the queues lets each client writer drain and close.
        for slot in core.slots.iter_mut() {
            *slot = None;
        }
        core.closing.send_replace(true);
        core.warnings.flush();
        if core.discarded_frames > 0 {
            tracing::info!(
                frames = core.discarded_frames,
                "frames for sessions of disconnected clients were discarded"
            );
        }
    }
}

impl Handler<RemoveSocket> for Relay {
    type Result = ();

    fn handle(&mut self, _: RemoveSocket, _: &mut Self::Context) {
        remove_socket(&self.socket_path);
    }
}

/// Removes agent.sock (a missing file is fine).
pub fn remove_socket(path: &Path) {
    if let Err(e) = std::fs::remove_file(path) {
        if e.kind() != io::ErrorKind::NotFound {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove agent.sock");
        }
    }
}

async fn accept_loop(listener: UnixListener, core: Shared) {
    let mut closing = core.borrow().closing.subscribe();
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = closing.wait_for(|c| *c) => return,
        };
        let stream = match accepted {
            Ok((s, _)) => {
                grow_sndbuf(&s);
                s
            }
            Err(e) => {
                core.borrow_mut()
                    .warnings
                    .warn("accept failed", || tracing::warn!(error = %e, "accept on agent.sock failed"));
                continue;
            }
        };
        let slot = {
            let mut c = core.borrow_mut();
            match c.lease_slot() {
                Some((k, generation)) => {
                    let (tx, rx) = mpsc::unbounded_channel();
                    let queue = Rc::new(ClientQueue::default());
                    c.slots[k] = Some(ClientSlot { generation, tx, queue: queue.clone() });
                    c.touch();
                    Some((k, generation, rx, queue))
                }
                None => None,
            }
        };
        match slot {
            Some((k, generation, rx, queue)) => {
                actix::spawn(serve_client(stream, k, generation, rx, queue, core.clone()));
            }
            None => {
                let mut c = core.borrow_mut();
                c.warnings.warn("client refused", || {
                    tracing::warn!("refused a client: all {MAX_CLIENTS} client slots are in use")
                });
            }
        }
    }
}

/// Send buffer asked for on client sockets (the kernel doubles it, up to
/// `net.core.wmem_max`): a window of output fits, so a burst leaves without
/// waiting for the client to be scheduled.
const CLIENT_SNDBUF: libc::c_int = INITIAL_WINDOW as libc::c_int;

/// Best effort: the default stays if the kernel refuses.
fn grow_sndbuf(stream: &UnixStream) {
    use std::os::fd::AsRawFd;
    // SAFETY: SO_SNDBUF takes an int, passed by pointer with its size, on a
    // socket this function borrows.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&CLIENT_SNDBUF as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

async fn serve_client(
    stream: UnixStream,
    slot: usize,
    generation: u64,
    rx: mpsc::UnboundedReceiver<Frame>,
    queue: Rc<ClientQueue>,
    core: Shared,
) {
    let (read, write) = stream.into_split();
    let range = slot_range(slot, generation);
    let budget = Rc::new(GuestBudget::default());
    let (mut ready, mut closing) = {
        let c = core.borrow();
        (c.ready.subscribe(), c.closing.subscribe())
    };
    // Clients that connect before the agent is ready wait here.
    let ready_frame = tokio::select! {
        r = ready.wait_for(|f| f.is_some()) => r.ok().and_then(|f| f.clone()),
        _ = closing.wait_for(|c| *c) => None,
    };
    let Some(ready_frame) = ready_frame else {
        disconnect(&core, slot, generation, "the sandbox stopped before the agent was ready");
        return;
    };
    // When the relay closes it drops the client's queue; the writer then
    // delivers what is queued (final frames of aborted sessions) and ends.
    let writer = client_writer(write, range, ready_frame, rx, queue.clone(), core.clone());
    let reader = client_reader(read, range, (slot, generation), queue, budget, core.clone());
    let why = tokio::select! {
        why = writer => why,
        why = reader => why,
    };
    disconnect(&core, slot, generation, &why);
}

/// Frees the slot and ends the client's open sessions in the guest: exec
/// sessions by SIGKILL, file sessions by `SessionAborted` (the agent drops
/// a half-written file). Their routes stay until the guest's final frame,
/// no longer counted as activity.
fn disconnect(core: &Shared, slot: usize, generation: u64, why: &str) {
    let mut c = core.borrow_mut();
    if !c.live(slot, generation) {
        return;
    }
    c.slots[slot] = None;
    c.touch();
    let mut ends = Vec::new();
    for (id, route) in c.sessions.iter_mut() {
        if route.owner != Some((slot, generation)) {
            continue;
        }
        route.owner = None;
        let end = match route.kind {
            SessionKind::Exec => Message::ExecSignal { signal: libc::SIGKILL },
            SessionKind::Fs => Message::SessionAborted { reason: "the client disconnected".into() },
        };
        if let Ok(frame) = Frame::message(*id, Flags::NONE, &end) {
            ends.push(frame);
        }
    }
    let ended = ends.len();
    for frame in ends {
        c.to_guest(frame);
    }
    tracing::debug!(slot, why, ended_sessions = ended, "client disconnected");
}

async fn client_writer(
    write: OwnedWriteHalf,
    range: Handshake,
    ready_frame: Frame,
    mut rx: mpsc::UnboundedReceiver<Frame>,
    queue: Rc<ClientQueue>,
    core: Shared,
) -> String {
    let mut w = BufWriter::with_capacity(256 * 1024, write);
    let hello = async {
        w.write_all(&range.encode()).await?;
        write_frame(&mut w, &ready_frame).await?;
        w.flush().await
    };
    if let Err(e) = hello.await {
        return format!("handshake failed: {e}");
    }
    let mut owed: HashMap<u32, u32> = HashMap::new();
    while let Some(frame) = rx.recv().await {
        let written = if frame.flags.contains(Flags::FD) {
            let fd = queue.fds.borrow_mut().pop_front();
            match (fd, w.flush().await) {
                (Some(fd), Ok(())) => write_with_fd(w.get_ref(), &frame, fd).await,
                (None, _) => Err(io::Error::other("an FD frame was queued without its descriptor")),
                (_, Err(e)) => Err(e),
            }
        } else if frame.body.len() >= DIRECT_WRITE_MIN {
            // What is buffered goes first; the large frame skips the buffer.
            match w.flush().await {
                Ok(()) => write_frame_direct(w.get_mut(), &frame).await,
                Err(e) => Err(e),
            }
        } else {
            write_frame(&mut w, &frame).await
        };
        if let Err(e) = written {
            return format!("write failed: {e}");
        }
        queue.bytes.set(queue.bytes.get().saturating_sub(frame.wire_len()));
        if rx.is_empty() {
            if let Err(e) = w.flush().await {
                return format!("write failed: {e}");
            }
        }
        if frame.id == CONTROL_ID {
            continue;
        }
        if frame.flags.contains(Flags::TERMINAL) {
            owed.remove(&frame.id);
            queue.open_sessions.set(queue.open_sessions.get().saturating_sub(1));
            continue;
        }
        let due = owed.entry(frame.id).or_insert(0);
        *due = due.saturating_add(frame.wire_len() as u32);
        if *due >= CREDIT_BATCH {
            let bytes = std::mem::take(due);
            core.borrow().owe_credit(frame.id, bytes);
        }
    }
    "the relay closed the client".to_string()
}

/// Writes `frame` (flag FD) with `fd` attached to its first byte.
async fn write_with_fd(write: &OwnedWriteHalf, frame: &Frame, fd: OwnedFd) -> io::Result<()> {
    let mut bytes = Vec::with_capacity(frame.wire_len());
    frame.encode_into(&mut bytes).map_err(io::Error::other)?;
    fdpass::send_with_fd(write.as_ref(), &bytes, fd.as_fd()).await
    // `fd` closes here: the client holds its own copy now.
}

async fn client_reader(
    mut read: OwnedReadHalf,
    range: Handshake,
    (slot, generation): (usize, u64),
    queue: Rc<ClientQueue>,
    budget: Rc<GuestBudget>,
    core: Shared,
) -> String {
    loop {
        // Nothing more is read from a client whose frames fill its share of
        // the queue towards the guest.
        budget.wait_for_room().await;
        let frame = match read_frame(&mut read).await {
            Ok(Some(f)) => f,
            Ok(None) => return "the client closed the connection".to_string(),
            Err(e) => return format!("dropped: unreadable frame: {e}"),
        };
        if !core.borrow().live(slot, generation) {
            return "the client was dropped".to_string();
        }
        core.borrow_mut().touch();
        if frame.flags.contains(Flags::FD) {
            // A client's descriptors never reach the guest.
            return "dropped: clients may not send descriptors".to_string();
        }
        if frame.id == CONTROL_ID {
            if frame.flags.contains(Flags::SHUTDOWN) {
                let c = core.borrow();
                c.lifecycle.do_send(Terminate::new(
                    TerminationReason::ShutdownRequested,
                    "a client asked the sandbox to stop",
                ));
                continue;
            }
            match frame.decode_body() {
                Ok(Message::Touch) => continue,
                _ => return "dropped: unexpected control frame".to_string(),
            }
        }
        if !range.contains(frame.id) {
            return format!(
                "dropped: session id {} is outside the client's range {}..={}",
                frame.id, range.id_start, range.id_end
            );
        }
        if frame.flags.contains(Flags::SESSION_START) {
            let kind = match frame.decode_body() {
                Ok(Message::ExecRequest(_)) => SessionKind::Exec,
                Ok(Message::FsRequest(_)) => SessionKind::Fs,
                _ => return format!("dropped: session {} did not start with a request", frame.id),
            };
            let mut c = core.borrow_mut();
            if c.sessions.contains_key(&frame.id) {
                return format!("dropped: session id {} is already in use", frame.id);
            }
            if queue.open_sessions.get() >= MAX_SESSIONS_PER_CLIENT {
                drop(c);
                if refuse_session(&core, slot, &queue, frame.id).is_err() {
                    return "the relay closed the client".to_string();
                }
                continue;
            }
            c.sessions.insert(frame.id, Route { owner: Some((slot, generation)), kind });
            queue.open_sessions.set(queue.open_sessions.get() + 1);
            if kind == SessionKind::Exec {
                crate::kill_point!("sandbox-during-exec");
            }
        }
        let c = core.borrow();
        let Some(tx) = &c.guest_tx else {
            return "dropped: the guest is not attached".to_string();
        };
        if tx.send(ToGuest::charged(frame, &budget, &c.counters)).is_err() {
            return "the guest channel closed".to_string();
        }
    }
}

/// Answers a session the client may not open (it has
/// [`MAX_SESSIONS_PER_CLIENT`] open) with a terminal `SessionAborted`; the
/// request never reaches the guest. Err when the client's writer is gone.
fn refuse_session(core: &Shared, slot: usize, queue: &ClientQueue, id: u32) -> Result<(), ()> {
    let c = core.borrow();
    c.counters.session_refused();
    let reason = format!("too many sessions: a client may have {MAX_SESSIONS_PER_CLIENT} open at once");
    let frame = Frame::message(id, Flags::TERMINAL, &Message::SessionAborted { reason }).map_err(|_| ())?;
    let Some(Some(client)) = c.slots.get(slot) else {
        return Err(());
    };
    // Counted as open until its terminal frame is written, like any session.
    queue.open_sessions.set(queue.open_sessions.get() + 1);
    queue.bytes.set(queue.bytes.get() + frame.wire_len());
    client.tx.send(frame).map_err(|_| ())
}

/// The one writer of the agent channel: owed credit first, then client
/// frames in arrival order, each released from its client's budget once
/// written.
async fn guest_writer(
    write: OwnedWriteHalf,
    mut rx: mpsc::UnboundedReceiver<ToGuest>,
    credits: Rc<CreditLedger>,
    counters: Arc<RelayCounters>,
) {
    let mut w = BufWriter::with_capacity(256 * 1024, write);
    let result: io::Result<()> = async {
        loop {
            for (id, bytes) in credits.take() {
                if let Ok(frame) = Frame::message(id, Flags::NONE, &Message::Credit { bytes }) {
                    write_frame(&mut w, &frame).await?;
                }
            }
            let mut next = match rx.try_recv() {
                Ok(next) => next,
                Err(mpsc::error::TryRecvError::Disconnected) => return w.flush().await,
                Err(mpsc::error::TryRecvError::Empty) => {
                    w.flush().await?;
                    tokio::select! {
                        biased;
                        _ = credits.added() => continue,
                        next = rx.recv() => match next {
                            Some(next) => next,
                            None => return Ok(()),
                        },
                    }
                }
            };
            let written = write_frame(&mut w, &next.frame).await;
            next.release(&counters);
            written?;
        }
    }
    .await;
    if let Err(e) = result {
        tracing::warn!(error = %e, "writing to the agent channel failed");
    }
    // Frames never written still give their bytes back, so no client reader
    // waits for a writer that is gone.
    rx.close();
    while let Ok(mut next) = rx.try_recv() {
        next.release(&counters);
    }
}

async fn guest_reader(mut read: FrameReader<FdReadHalf>, core: Shared) {
    loop {
        let frame = match read.read_frame().await {
            Ok(Some(f)) => f,
            Ok(None) => {
                tracing::debug!("the agent channel closed");
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "the agent channel broke framing");
                let c = core.borrow();
                c.lifecycle.do_send(Terminate::new(
                    TerminationReason::AgentUnresponsive,
                    format!("the agent sent an unreadable frame: {e}"),
                ));
                return;
            }
        };
        let fd = if frame.flags.contains(Flags::FD) { guest_fd(&mut read, &frame, &core) } else { None };
        if frame.id == CONTROL_ID {
            control_from_guest(&core, frame);
            continue;
        }
        if frame.flags.contains(Flags::FD) && fd.is_none() {
            // Without its descriptor the frame would tell the client a lie;
            // its window bytes go back to the agent.
            core.borrow().owe_credit(frame.id, frame.wire_len() as u32);
            continue;
        }
        route_from_guest(&core, frame, fd);
    }
}

/// The descriptor that came with `frame` (flag FD), if it is what the
/// protocol allows a guest to hand out: the read end of a pipe.
fn guest_fd(read: &mut FrameReader<FdReadHalf>, frame: &Frame, core: &Shared) -> Option<OwnedFd> {
    let fd = read.get_mut().take_fd();
    let session = frame.id;
    match fd {
        Some(fd) if fdpass::is_pipe_read_end(fd.as_fd()) => Some(fd),
        Some(_) => {
            core.borrow_mut().warnings.warn("bad descriptor", || {
                tracing::warn!(session, "the agent sent a descriptor that is not a pipe's read end; dropped")
            });
            None
        }
        None => {
            core.borrow_mut().warnings.warn("missing descriptor", || {
                tracing::warn!(session, "the agent sent an FD frame without a descriptor; dropped")
            });
            None
        }
    }
}

fn control_from_guest(core: &Shared, frame: Frame) {
    match frame.decode_body() {
        Ok(Message::Ready(ready)) => {
            let mut c = core.borrow_mut();
            if c.ready_at.is_some() {
                return;
            }
            let now = c.clock.now();
            c.ready_at = Some(now);
            c.last_heartbeat = Some(now);
            c.last_activity = now;
            if let Err(e) = alcove_protocol::handshake::check_version(ready.clone()) {
                c.lifecycle.do_send(Terminate::new(TerminationReason::InternalError, e.to_string()));
                return;
            }
            // Clients get this frame once Lifecycle has recorded Running.
            c.pending_ready = Some(frame);
            c.lifecycle.do_send(crate::messages::AgentReady { ready });
        }
        Ok(Message::Heartbeat { .. }) => {
            let mut c = core.borrow_mut();
            c.last_heartbeat = Some(c.clock.now());
        }
        Ok(other) => tracing::debug!(?other, "ignored control message from the agent"),
        Err(e) => {
            core.borrow_mut()
                .warnings
                .warn("bad control frame", || tracing::warn!(error = %e, "undecodable control frame from the agent"));
        }
    }
}

fn route_from_guest(core: &Shared, frame: Frame, fd: Option<OwnedFd>) {
    let id = frame.id;
    let terminal = frame.flags.contains(Flags::TERMINAL);
    let wire = frame.wire_len() as u32;
    let target = {
        let mut c = core.borrow_mut();
        let owner = c.sessions.get(&id).map(|r| r.owner);
        match owner {
            Some(Some((slot, generation))) if c.live(slot, generation) => {
                c.slots[slot].as_ref().map(|s| (slot, generation, s.tx.clone(), s.queue.clone()))
            }
            Some(_) => {
                c.discarded_frames += 1;
                if !terminal {
                    // Nobody will read this frame; credit it so the agent
                    // can finish the (already killed) session instead of
                    // waiting forever.
                    c.owe_credit(id, wire);
                }
                None
            }
            None => {
                // Not a session: nothing to credit.
                c.discarded_frames += 1;
                None
            }
        }
    };
    if terminal {
        let mut c = core.borrow_mut();
        if c.sessions.remove(&id).is_some() {
            c.touch();
        }
    }
    if let Some((slot, generation, tx, queue)) = target {
        let queued = queue.bytes.get() + wire as usize;
        let why = if queued > queue.limit() {
            Some("dropped: its queue exceeded what flow control allows")
        } else {
            if let Some(fd) = fd {
                queue.fds.borrow_mut().push_back(fd);
            }
            match tx.send(frame) {
                Ok(()) => {
                    queue.bytes.set(queued);
                    core.borrow().counters.client_queued(queued);
                    None
                }
                Err(_) => Some("dropped: its writer stopped"),
            }
        };
        if let Some(why) = why {
            let mut c = core.borrow_mut();
            c.counters.client_over_queue();
            c.warnings.warn("client over its queue", || {
                tracing::warn!(slot, session = id, queued, why, "disconnecting client")
            });
            drop(c);
            disconnect(core, slot, generation, why);
            // The frame that did not fit is the disconnected client's
            // last: credit it like any frame of a gone client.
            if !terminal {
                core.borrow().owe_credit(id, wire);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_ranges_are_disjoint_and_skip_the_control_id() {
        let mut prev_end = 0;
        for k in 0..MAX_CLIENTS {
            for generation in 0..SLOT_GENERATIONS {
                let r = slot_range(k, generation);
                assert!(r.id_start > prev_end, "slot {k} generation {generation}");
                assert!(r.id_end > r.id_start);
                assert!(!r.contains(CONTROL_ID));
                prev_end = r.id_end;
            }
        }
        // Generations cycle within the slot's block.
        assert_eq!(slot_range(3, SLOT_GENERATIONS + 2), slot_range(3, 2));
    }

    #[test]
    fn socket_is_private() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("run/x.sock");
        let _l = bind_socket(&path).expect("binds");
        let mode = std::fs::metadata(&path).expect("socket").mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dmode = std::fs::metadata(path.parent().expect("dir")).expect("dir").mode() & 0o777;
        assert_eq!(dmode, 0o700);
        // A stale socket is replaced.
        let _l2 = bind_socket(&path).expect("rebinds");
    }
}
