//! The relay's guest side: the one reader and the one writer of the agent
//! channel.
//!
//! - *reader*: reads guest frames without decoding them (a
//!   [`FrameReader`] reads a large body straight into its frame, so an
//!   output byte is copied only from the agent's socket into its frame and
//!   from there into the client's), takes the descriptor an FD frame
//!   carries and checks it is a pipe's read end, and sends both to the
//!   actor as one event. Its channel to the actor holds
//!   [`GUEST_FRAMES_IN_FLIGHT`] frames, so a guest that sends faster than
//!   the relay routes waits on its socket instead of growing host memory;
//! - *writer*: credit owed to the agent first (a [`CreditLedger`] that never
//!   makes anyone wait), then the client frames and the relay's own in the
//!   order the actor queued them; each client frame stays charged to its
//!   client's budget until written (see [`ToGuest`]).
//!
//! Nothing the reader does waits on the writing side, so a guest that
//! answers stdin with credit from its reading thread cannot deadlock the
//! relay.

use super::flow::{CreditLedger, ToGuest};
use super::route_table::Descriptor;
use super::RelayEvent;
use alcove_protocol::async_io::{write_frame, FrameReader};
use alcove_protocol::fdpass::{self, FdReadHalf};
use alcove_protocol::{Flags, Frame, Message};
use std::io;
use std::os::fd::AsFd;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use tokio::io::{AsyncWriteExt, BufWriter};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::UnixStream;
use tokio::sync::{mpsc, watch};

/// Guest frames read and not yet routed, at most.
pub(super) const GUEST_FRAMES_IN_FLIGHT: usize = 4;

/// Reads the agent channel until it closes or breaks framing, or until the
/// relay is closing and nothing more is readable, then says so (after every
/// frame it read).
pub(super) async fn guest_reader(
    read: FrameReader<FdReadHalf>,
    events: mpsc::Sender<RelayEvent>,
    closing: watch::Receiver<bool>,
) {
    read_guest(read, &events, closing).await;
    let _ = events.send(RelayEvent::GuestReaderGone).await;
}

async fn read_guest(
    mut read: FrameReader<FdReadHalf>,
    events: &mpsc::Sender<RelayEvent>,
    mut closing: watch::Receiver<bool>,
) {
    loop {
        // Between frames (nothing buffered) is where waiting is safe to
        // give up: a frame half read would be lost.
        if read.buffered() == 0 && !wait_readable(read.get_ref().stream(), &mut closing).await {
            tracing::debug!("the relay is closing and the agent channel has nothing more");
            return;
        }
        let frame = match read.read_frame().await {
            Ok(Some(f)) => f,
            Ok(None) => {
                tracing::debug!("the agent channel closed");
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "the agent channel broke framing");
                let _ = events.send(RelayEvent::GuestBroken(e.to_string())).await;
                return;
            }
        };
        let descriptor = if frame.flags.contains(Flags::FD) {
            match read.get_mut().take_fd() {
                Some(fd) if fdpass::is_pipe_read_end(fd.as_fd()) => Descriptor::Pipe(fd),
                Some(_) => Descriptor::NotAPipe,
                None => Descriptor::None,
            }
        } else {
            Descriptor::None
        };
        if events.send(RelayEvent::GuestFrame(frame, descriptor)).await.is_err() {
            return;
        }
    }
}

/// Waits until the channel has bytes or its end to read; false once the
/// relay is closing and it has neither right now: what the guest wrote
/// before it ended (a channel whose far end a VMM keeps open never ends) has
/// all been read.
async fn wait_readable(stream: &UnixStream, closing: &mut watch::Receiver<bool>) -> bool {
    if !*closing.borrow() {
        tokio::select! {
            biased;
            // An error is the read's to report.
            _ = stream.readable() => return true,
            _ = closing.wait_for(|c| *c) => {}
        }
    }
    readable_now(stream)
}

/// Whether a read would return at once (data, end of stream or an error).
fn readable_now(stream: &UnixStream) -> bool {
    let mut fds = [libc::pollfd { fd: stream.as_raw_fd(), events: libc::POLLIN | libc::POLLRDHUP, revents: 0 }];
    // SAFETY: one valid pollfd, a zero timeout.
    let n = unsafe { libc::poll(fds.as_mut_ptr(), 1, 0) };
    n != 0
}

/// The one writer of the agent channel: owed credit first, then queued
/// frames in order. Tells the actor when it ends.
pub(super) async fn guest_writer(
    write: OwnedWriteHalf,
    mut queue: mpsc::UnboundedReceiver<ToGuest>,
    credits: Rc<CreditLedger>,
    events: mpsc::Sender<RelayEvent>,
) {
    let mut w = BufWriter::with_capacity(256 * 1024, write);
    let result: io::Result<()> = async {
        loop {
            for (id, bytes) in credits.take() {
                if let Ok(frame) = Frame::message(id, Flags::NONE, &Message::Credit { bytes }) {
                    write_frame(&mut w, &frame).await?;
                }
            }
            let next = match queue.try_recv() {
                Ok(next) => next,
                Err(mpsc::error::TryRecvError::Disconnected) => return w.flush().await,
                Err(mpsc::error::TryRecvError::Empty) => {
                    w.flush().await?;
                    tokio::select! {
                        biased;
                        _ = credits.added() => continue,
                        next = queue.recv() => match next {
                            Some(next) => next,
                            None => return Ok(()),
                        },
                    }
                }
            };
            // Written or not, dropping `next` gives its bytes back.
            write_frame(&mut w, &next.frame).await?;
        }
    }
    .await;
    if let Err(e) = result {
        tracing::warn!(error = %e, "writing to the agent channel failed");
    }
    // Frames never written give their bytes back as they are dropped, so
    // no client reader waits for a writer that is gone.
    queue.close();
    while queue.try_recv().is_ok() {}
    let _ = events.send(RelayEvent::GuestWriterGone).await;
}
