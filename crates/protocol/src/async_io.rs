//! Frame I/O over tokio streams.

use crate::frame::{parse_header, Frame, FrameError, HEADER_LEN};
use std::io;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Reads one frame. `Ok(None)` at a clean end of stream between frames.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> io::Result<Option<Frame>> {
    let mut head = [0u8; HEADER_LEN];
    let mut got = 0;
    while got < HEADER_LEN {
        let n = r.read(&mut head[got..]).await?;
        if n == 0 {
            if got == 0 {
                return Ok(None);
            }
            return Err(invalid(FrameError::Truncated(got)));
        }
        got += n;
        // Check the length as soon as it is known, so a bad peer is refused
        // without waiting for bytes it may never send.
        if (4..HEADER_LEN).contains(&got) {
            parse_header(&head[..4]).map_err(invalid)?;
        }
    }
    let header = parse_header(&head).map_err(invalid)?.ok_or_else(|| invalid(FrameError::Truncated(got)))?;
    let mut body = vec![0u8; header.body_len()];
    if let Err(e) = r.read_exact(&mut body).await {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            return Err(invalid(FrameError::Truncated(HEADER_LEN)));
        }
        return Err(e);
    }
    Ok(Some(Frame { id: header.id, flags: header.flags, body }))
}

/// Writes one frame (header and body) without flushing.
pub async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, frame: &Frame) -> io::Result<()> {
    let head = Frame::header(frame.id, frame.flags, frame.body.len()).map_err(invalid)?;
    w.write_all(&head).await?;
    w.write_all(&frame.body).await
}

fn invalid(e: FrameError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}
