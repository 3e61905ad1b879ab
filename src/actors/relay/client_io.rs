//! The relay's client side: accepting on agent.sock and one task per
//! client (its reader and its writer). These tasks hold no routing state:
//! they turn socket traffic into [`RelayEvent`]s for the actor and write
//! what the actor queues for them.
//!
//! - *accept*: hands each connection to the actor, which gives it a slot
//!   (or refuses it) and spawns [`serve_client`];
//! - *serve_client*: waits for the agent's `Ready` (released by Lifecycle
//!   once the sandbox is recorded Running), writes `[id_start][id_end]` and
//!   the `Ready` frame, then runs the reader and the writer until either
//!   ends, and reports the client gone;
//! - *reader*: reads frames while the client's share of the queue towards
//!   the guest has room (backpressure on that client alone), charges each
//!   to that share and sends it to the actor; it stops at the next frame
//!   once the actor has dropped the client;
//! - *writer*: writes the items queued for the client — a large frame in
//!   one vectored write past its buffer, an FD frame with its descriptor —
//!   and reports each as written, which is what earns the session's
//!   credit. When the actor closes the client's queue the writer delivers
//!   what is queued and ends.

use super::flow::{GuestBudget, RelayCounters, ToGuest};
use super::route_table::{ClientKey, ToClient, Written};
use super::RelayEvent;
use alcove_protocol::async_io::{read_frame, write_frame, write_frame_direct};
use alcove_protocol::{fdpass, Flags, Frame, INITIAL_WINDOW};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::rc::Rc;
use std::sync::Arc;
use tokio::io::{AsyncWriteExt, BufWriter};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, watch};

/// Frames with a body this large go to a client's socket directly (header
/// and body in one vectored write) instead of being copied into the write
/// buffer first.
const DIRECT_WRITE_MIN: usize = 32 * 1024;

/// Send buffer asked for on client sockets (the kernel doubles it, up to
/// `net.core.wmem_max`): a window of output fits, so a burst leaves without
/// waiting for the client to be scheduled.
const CLIENT_SNDBUF: libc::c_int = INITIAL_WINDOW as libc::c_int;

/// Takes connections on agent.sock until the relay closes.
pub(super) async fn accept_loop(
    listener: UnixListener,
    events: mpsc::Sender<RelayEvent>,
    mut closing: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = closing.wait_for(|c| *c) => return,
        };
        let event = match accepted {
            Ok((stream, _)) => {
                grow_sndbuf(&stream);
                RelayEvent::Accepted(stream)
            }
            Err(e) => RelayEvent::AcceptFailed(e),
        };
        if events.send(event).await.is_err() {
            return;
        }
    }
}

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

/// What one client's task is given by the actor.
pub(super) struct ClientTask {
    pub(super) key: ClientKey,
    /// The items the actor queues for this client.
    pub(super) queue: mpsc::UnboundedReceiver<ToClient>,
    /// The actor's end of `queue`, weakly: gone once the actor has dropped
    /// the client.
    pub(super) kept: mpsc::WeakUnboundedSender<ToClient>,
    pub(super) ready: watch::Receiver<Option<Frame>>,
    pub(super) closing: watch::Receiver<bool>,
    pub(super) events: mpsc::Sender<RelayEvent>,
    pub(super) counters: Arc<RelayCounters>,
}

/// Serves one client until its connection ends or the actor drops it.
pub(super) async fn serve_client(stream: UnixStream, task: ClientTask) {
    let ClientTask { key, queue, kept, mut ready, mut closing, events, counters } = task;
    // Clients that connect before the agent is ready wait here.
    let ready_frame = tokio::select! {
        r = ready.wait_for(|f| f.is_some()) => r.ok().and_then(|f| f.clone()),
        _ = closing.wait_for(|c| *c) => None,
    };
    let why = match ready_frame {
        None => "the sandbox stopped before the agent was ready".to_string(),
        Some(ready_frame) => {
            let (read, write) = stream.into_split();
            let budget = Rc::new(GuestBudget::new(counters));
            tokio::select! {
                why = client_writer(write, key, ready_frame, queue, events.clone()) => why,
                why = client_reader(read, key, kept, budget, events.clone()) => why,
            }
        }
    };
    let _ = events.send(RelayEvent::ClientGone(key, why)).await;
}

async fn client_writer(
    write: OwnedWriteHalf,
    key: ClientKey,
    ready_frame: Frame,
    mut queue: mpsc::UnboundedReceiver<ToClient>,
    events: mpsc::Sender<RelayEvent>,
) -> String {
    let mut w = BufWriter::with_capacity(256 * 1024, write);
    let hello = async {
        w.write_all(&key.range().encode()).await?;
        write_frame(&mut w, &ready_frame).await?;
        w.flush().await
    };
    if let Err(e) = hello.await {
        return format!("handshake failed: {e}");
    }
    while let Some(ToClient { frame, fd }) = queue.recv().await {
        let written = match fd {
            Some(fd) => match w.flush().await {
                Ok(()) => write_with_fd(w.get_ref(), &frame, fd).await,
                Err(e) => Err(e),
            },
            None if frame.flags.contains(Flags::FD) => {
                Err(io::Error::other("an FD frame was queued without its descriptor"))
            }
            None if frame.body.len() >= DIRECT_WRITE_MIN => {
                // What is buffered goes first; the large frame skips the buffer.
                match w.flush().await {
                    Ok(()) => write_frame_direct(w.get_mut(), &frame).await,
                    Err(e) => Err(e),
                }
            }
            None => write_frame(&mut w, &frame).await,
        };
        if let Err(e) = written {
            return format!("write failed: {e}");
        }
        if queue.is_empty() {
            if let Err(e) = w.flush().await {
                return format!("write failed: {e}");
            }
        }
        if events.send(RelayEvent::ClientWrote(key, Written::of(&frame))).await.is_err() {
            return "the relay is gone".to_string();
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
    key: ClientKey,
    kept: mpsc::WeakUnboundedSender<ToClient>,
    budget: Rc<GuestBudget>,
    events: mpsc::Sender<RelayEvent>,
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
        if kept.strong_count() == 0 {
            return "the client was dropped".to_string();
        }
        if events.send(RelayEvent::ClientFrame(key, ToGuest::charged(frame, &budget))).await.is_err() {
            return "the relay is gone".to_string();
        }
    }
}
