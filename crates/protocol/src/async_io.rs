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
    // Filled straight into spare capacity: no zeroing of up to 4 MiB per
    // frame on the stream path, and `take` keeps the next frame's bytes in
    // the reader.
    let len = header.body_len();
    let mut body = Vec::with_capacity(len);
    let mut limited = (&mut *r).take(len as u64);
    while body.len() < len {
        if limited.read_buf(&mut body).await? == 0 {
            return Err(invalid(FrameError::Truncated(HEADER_LEN + body.len())));
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Flags;
    use tokio::io::AsyncWriteExt;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
    }

    #[test]
    fn frames_round_trip_through_small_pieces_and_leave_the_next_frame_alone() {
        runtime().block_on(async {
            let frames: Vec<Frame> =
                (0..5u32).map(|i| Frame::new(i, Flags::NONE, (0..(i * 40_000)).map(|b| b as u8).collect())).collect();
            let mut wire = Vec::new();
            for f in &frames {
                f.encode_into(&mut wire).expect("encodes");
            }
            let (mut tx, mut rx) = tokio::io::duplex(777);
            let writer = tokio::spawn(async move {
                for piece in wire.chunks(1000) {
                    tx.write_all(piece).await.expect("writes");
                }
            });
            for f in &frames {
                assert_eq!(read_frame(&mut rx).await.expect("reads").as_ref(), Some(f));
            }
            writer.await.expect("writer");
            assert_eq!(read_frame(&mut rx).await.expect("clean end"), None);
        });
    }

    #[test]
    fn truncation_and_bad_lengths_are_errors() {
        runtime().block_on(async {
            let bytes = Frame::new(1, Flags::NONE, vec![9; 100]).encode().expect("encodes");
            let mut cut = &bytes[..bytes.len() - 1];
            let err = read_frame(&mut cut).await.expect_err("truncated");
            assert_eq!(err.kind(), io::ErrorKind::InvalidData);
            // A too-short length is refused after 4 bytes, without waiting
            // for a header that may never come.
            let (mut tx, mut rx) = tokio::io::duplex(64);
            tx.write_all(&[0, 0, 0, 1, 9]).await.expect("writes");
            let err = read_frame(&mut rx).await.expect_err("refused");
            assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        });
    }
}
