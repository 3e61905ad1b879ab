//! Frame I/O over tokio streams.
//!
//! [`FrameReader`] is the reader for streams that carry bulk data: it buffers
//! small frames (many per `read(2)`) but reads the bulk of a large body
//! straight into the body's own buffer, so each payload byte is copied once
//! (kernel to its final `Vec`), and with [`FrameReader::read_incoming`] the
//! payload of a data message is handed over without decoding (copying) it.
//! [`write_frame_direct`] is the matching writer for large frames.

use crate::codec::{parse_data_prefix, BodyPrefix, DataKind, DATA_BODY_PREFIX_MAX};
use crate::frame::{parse_header, Flags, Frame, FrameError, Header, HEADER_LEN};
use std::io;
use std::io::IoSlice;
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

/// Writes one frame unbuffered: header and body in one vectored write where
/// the writer supports it, so a large body is not copied into a buffer
/// first. Callers with a buffered writer flush it and pass the inner writer.
pub async fn write_frame_direct<W: AsyncWrite + Unpin>(w: &mut W, frame: &Frame) -> io::Result<()> {
    let head = Frame::header(frame.id, frame.flags, frame.body.len()).map_err(invalid)?;
    let total = head.len() + frame.body.len();
    let mut sent = 0;
    while sent < total {
        let n = if sent < head.len() {
            w.write_vectored(&[IoSlice::new(&head[sent..]), IoSlice::new(&frame.body)]).await?
        } else {
            w.write(&frame.body[sent - head.len()..]).await?
        };
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        sent += n;
    }
    Ok(())
}

/// A frame as [`FrameReader::read_incoming`] returns it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Incoming {
    /// Any frame, body undecoded.
    Frame(Frame),
    /// A large data message, recognised from its first bytes; `data` is its
    /// payload, never copied through the codec.
    Data {
        /// Session id.
        id: u32,
        /// Routing flags.
        flags: Flags,
        /// Which data message.
        kind: DataKind,
        /// The payload.
        data: Vec<u8>,
        /// Wire bytes of the whole frame (for flow control).
        wire_len: usize,
    },
}

/// Bodies at least this large are read (past what is already buffered)
/// straight into their own buffer.
const DIRECT_MIN: usize = 16 * 1024;
/// After a large frame the next refill asks for at most this much, so little
/// of a following large body passes through the buffer.
const SMALL_FILL: usize = 4096;

/// A buffering frame reader that owns its buffer; see the module docs.
#[derive(Debug)]
pub struct FrameReader<R> {
    inner: R,
    buf: Vec<u8>,
    pos: usize,
    end: usize,
    /// The last frame was large: refill with [`SMALL_FILL`].
    small_fill: bool,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// A reader with a buffer of `capacity` bytes (at least 4 KiB).
    pub fn new(inner: R, capacity: usize) -> FrameReader<R> {
        FrameReader { inner, buf: vec![0; capacity.max(SMALL_FILL)], pos: 0, end: 0, small_fill: false }
    }

    /// The underlying reader.
    pub fn get_ref(&self) -> &R {
        &self.inner
    }

    /// The underlying reader, mutably (not for reading: bytes read from it
    /// directly would be lost to the framing).
    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    /// Bytes buffered and not yet returned.
    pub fn buffered(&self) -> usize {
        self.end - self.pos
    }

    /// Reads until at least `want` bytes (at most the buffer's size) are
    /// buffered; false if the stream ended first.
    async fn fill(&mut self, want: usize) -> io::Result<bool> {
        debug_assert!(want <= self.buf.len());
        if self.pos == self.end {
            self.pos = 0;
            self.end = 0;
        } else if self.buf.len() - self.pos < want {
            self.buf.copy_within(self.pos..self.end, 0);
            self.end -= self.pos;
            self.pos = 0;
        }
        while self.end - self.pos < want {
            let limit = if self.small_fill { (self.end + SMALL_FILL).min(self.buf.len()) } else { self.buf.len() };
            let limit = limit.max(self.pos + want);
            let n = self.inner.read(&mut self.buf[self.end..limit]).await?;
            if n == 0 {
                return Ok(false);
            }
            self.end += n;
        }
        Ok(true)
    }

    /// Reads exactly `out.len()` bytes (for a handshake before the frames).
    pub async fn read_exact(&mut self, out: &mut [u8]) -> io::Result<()> {
        let mut done = 0;
        while done < out.len() {
            if self.pos == self.end && !self.fill(1).await? {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            let k = (self.end - self.pos).min(out.len() - done);
            out[done..done + k].copy_from_slice(&self.buf[self.pos..self.pos + k]);
            self.pos += k;
            done += k;
        }
        Ok(())
    }

    /// Reads the next frame's header and leaves its body unread (continue
    /// with [`FrameReader::read_body`]). `Ok(None)` at a clean end of stream.
    pub async fn read_header(&mut self) -> io::Result<Option<Header>> {
        if self.pos == self.end && !self.fill(1).await? {
            return Ok(None);
        }
        if self.end - self.pos < 4 && !self.fill(4).await? {
            return Err(invalid(FrameError::Truncated(self.end - self.pos)));
        }
        // Refuse a bad length before waiting for the rest of the header.
        parse_header(&self.buf[self.pos..self.pos + 4]).map_err(invalid)?;
        if !self.fill(HEADER_LEN).await? {
            return Err(invalid(FrameError::Truncated(self.end - self.pos)));
        }
        let header = parse_header(&self.buf[self.pos..self.end])
            .map_err(invalid)?
            .ok_or_else(|| invalid(FrameError::Truncated(self.end - self.pos)))?;
        self.pos += HEADER_LEN;
        Ok(Some(header))
    }

    /// Reads `len` bytes into `out` (appending): the buffered part copied,
    /// the rest read directly when large. `done` counts the frame's bytes
    /// already consumed, for truncation errors.
    async fn payload(&mut self, out: &mut Vec<u8>, len: usize, done: usize) -> io::Result<()> {
        let target = out.len() + len;
        let k = (self.end - self.pos).min(len);
        out.extend_from_slice(&self.buf[self.pos..self.pos + k]);
        self.pos += k;
        let rest = target - out.len();
        if rest >= DIRECT_MIN || rest > self.buf.len() {
            let mut limited = (&mut self.inner).take(rest as u64);
            while out.len() < target {
                if limited.read_buf(out).await? == 0 {
                    return Err(invalid(FrameError::Truncated(done + len - (target - out.len()))));
                }
            }
        } else if rest > 0 {
            if !self.fill(rest).await? {
                return Err(invalid(FrameError::Truncated(done + len - rest + (self.end - self.pos))));
            }
            out.extend_from_slice(&self.buf[self.pos..self.pos + rest]);
            self.pos += rest;
        }
        self.small_fill = len >= DIRECT_MIN;
        Ok(())
    }

    /// Reads the body of the frame whose header [`FrameReader::read_header`]
    /// returned.
    pub async fn read_body(&mut self, header: Header) -> io::Result<Frame> {
        let len = header.body_len();
        let mut body = Vec::with_capacity(len);
        self.payload(&mut body, len, HEADER_LEN).await?;
        Ok(Frame { id: header.id, flags: header.flags, body })
    }

    /// Reads one frame. `Ok(None)` at a clean end of stream between frames.
    pub async fn read_frame(&mut self) -> io::Result<Option<Frame>> {
        let Some(header) = self.read_header().await? else { return Ok(None) };
        self.read_body(header).await.map(Some)
    }

    /// Reads one frame, handing over the payload of a large data message
    /// without decoding it. `Ok(None)` at a clean end of stream.
    pub async fn read_incoming(&mut self) -> io::Result<Option<Incoming>> {
        let Some(header) = self.read_header().await? else { return Ok(None) };
        self.read_incoming_body(header).await.map(Some)
    }

    /// If the body of the frame whose header was just read is a data message,
    /// consumes its tag and length and returns its kind and payload length
    /// (the payload is next: [`FrameReader::take_buffered`], then the
    /// underlying reader, or [`FrameReader::read_payload`]). Otherwise
    /// consumes nothing and returns `None`.
    pub async fn read_data_prefix(&mut self, header: &Header) -> io::Result<Option<(DataKind, usize)>> {
        let len = header.body_len();
        let want = len.min(DATA_BODY_PREFIX_MAX);
        if want == 0 {
            return Ok(None);
        }
        if !self.fill(want).await? {
            return Err(invalid(FrameError::Truncated(HEADER_LEN + self.end - self.pos)));
        }
        let peek = &self.buf[self.pos..self.pos + want];
        match parse_data_prefix(peek) {
            BodyPrefix::Data { kind, offset, len: data_len } if offset as u64 + data_len == len as u64 => {
                self.pos += offset;
                Ok(Some((kind, len - offset)))
            }
            _ => Ok(None),
        }
    }

    /// Up to `max` bytes already buffered, consumed. A caller that reads the
    /// rest of a payload from the underlying reader itself takes these first;
    /// the next refill then asks for little, as after any large frame.
    pub fn take_buffered(&mut self, max: usize) -> &[u8] {
        let k = (self.end - self.pos).min(max);
        let start = self.pos;
        self.pos += k;
        self.small_fill = true;
        &self.buf[start..start + k]
    }

    /// Reads `len` payload bytes (after [`FrameReader::read_data_prefix`]).
    pub async fn read_payload(&mut self, len: usize) -> io::Result<Vec<u8>> {
        let mut data = Vec::with_capacity(len);
        self.payload(&mut data, len, HEADER_LEN).await?;
        Ok(data)
    }

    /// The rest of [`FrameReader::read_incoming`] once the header is read.
    pub async fn read_incoming_body(&mut self, header: Header) -> io::Result<Incoming> {
        if header.body_len() >= DIRECT_MIN {
            if let Some((kind, len)) = self.read_data_prefix(&header).await? {
                let data = self.read_payload(len).await?;
                let (id, flags, wire_len) = (header.id, header.flags, HEADER_LEN + header.body_len());
                return Ok(Incoming::Data { id, flags, kind, data, wire_len });
            }
        }
        let len = header.body_len();
        let mut body = Vec::with_capacity(len);
        self.payload(&mut body, len, HEADER_LEN).await?;
        Ok(Incoming::Frame(Frame { id: header.id, flags: header.flags, body }))
    }
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

    fn mixed_frames() -> Vec<Frame> {
        use crate::message::{Message, MAX_CHUNK};
        let mut frames = Vec::new();
        for (i, len) in [0usize, 5, 100, 16 * 1024 - 1, 16 * 1024, 70_000, MAX_CHUNK, 3, 200_000, 1].iter().enumerate()
        {
            let data: Vec<u8> = (0..*len).map(|b| (b * 7 + i) as u8).collect();
            let msg = match i % 3 {
                0 => Message::ExecStdout { data: data.clone() },
                1 => Message::ExecStderr { data: data.clone() },
                _ => Message::FsData { data: data.clone() },
            };
            frames.push(Frame::message(i as u32 + 1, Flags::NONE, &msg).expect("encodes"));
            // A raw body that is not a message, of the same size.
            frames.push(Frame::new(1000 + i as u32, Flags::TERMINAL, data));
            frames.push(Frame::message(7, Flags::NONE, &Message::Credit { bytes: i as u32 }).expect("encodes"));
        }
        frames
    }

    /// Feeds `wire` through a duplex pipe in `piece`-byte writes.
    fn feed(wire: Vec<u8>, piece: usize) -> (tokio::io::DuplexStream, tokio::task::JoinHandle<()>) {
        let (mut tx, rx) = tokio::io::duplex(piece.max(64) * 2);
        let writer = tokio::spawn(async move {
            for p in wire.chunks(piece) {
                tx.write_all(p).await.expect("writes");
            }
        });
        (rx, writer)
    }

    #[test]
    fn frame_reader_returns_every_frame_whatever_the_pieces() {
        runtime().block_on(async {
            let frames = mixed_frames();
            let mut wire = b"HANDSHK!".to_vec();
            for f in &frames {
                f.encode_into(&mut wire).expect("encodes");
            }
            for piece in [1usize, 13, 4096, 65_536, 1 << 20] {
                let (rx, writer) = feed(wire.clone(), piece);
                let mut r = FrameReader::new(rx, 64 * 1024);
                let mut hs = [0u8; 8];
                r.read_exact(&mut hs).await.expect("handshake bytes");
                assert_eq!(&hs, b"HANDSHK!");
                for f in &frames {
                    assert_eq!(r.read_frame().await.expect("reads").as_ref(), Some(f), "piece {piece}");
                }
                assert_eq!(r.read_frame().await.expect("clean end"), None);
                writer.await.expect("writer");
            }
        });
    }

    #[test]
    fn frame_reader_hands_over_large_data_payloads_undecoded() {
        use crate::message::Message;
        runtime().block_on(async {
            let frames = mixed_frames();
            let mut wire = Vec::new();
            for f in &frames {
                f.encode_into(&mut wire).expect("encodes");
            }
            for piece in [7usize, 4096, 1 << 20] {
                let (rx, writer) = feed(wire.clone(), piece);
                let mut r = FrameReader::new(rx, 64 * 1024);
                let mut split = 0;
                for f in &frames {
                    match r.read_incoming().await.expect("reads").expect("a frame") {
                        Incoming::Frame(got) => assert_eq!(&got, f),
                        Incoming::Data { id, flags, kind, data, wire_len } => {
                            split += 1;
                            assert!(f.body.len() >= DIRECT_MIN, "only large frames are split");
                            assert_eq!((id, flags, wire_len), (f.id, f.flags, f.wire_len()));
                            assert_eq!(kind.into_message(data), f.decode_body().expect("a message"));
                        }
                    }
                }
                // Every data message with a body of DIRECT_MIN bytes or more
                // (five of them), and nothing else.
                let large_data = frames
                    .iter()
                    .filter(|f| {
                        f.body.len() >= DIRECT_MIN && !matches!(f.decode_body(), Ok(Message::Credit { .. }) | Err(_))
                    })
                    .count();
                assert_eq!((split, large_data), (5, 5), "piece {piece}");
                assert_eq!(r.read_incoming().await.expect("clean end"), None);
                writer.await.expect("writer");
            }
        });
    }

    #[test]
    fn frame_reader_reports_truncation_and_bad_lengths() {
        runtime().block_on(async {
            for len in [100usize, 100_000] {
                let bytes = Frame::new(1, Flags::NONE, vec![9; len]).encode().expect("encodes");
                for cut in [1, 5, 9, 20, bytes.len() - 1] {
                    let mut r = FrameReader::new(&bytes[..cut], 4096);
                    let err = r.read_frame().await.expect_err("truncated");
                    assert_eq!(err.kind(), io::ErrorKind::InvalidData, "len {len} cut {cut}");
                }
            }
            let (mut tx, rx) = tokio::io::duplex(64);
            tx.write_all(&[0, 0, 0, 1, 9]).await.expect("writes");
            let mut r = FrameReader::new(rx, 4096);
            assert_eq!(r.read_frame().await.expect_err("refused").kind(), io::ErrorKind::InvalidData);
        });
    }

    #[test]
    fn direct_writes_produce_the_encoded_frame() {
        runtime().block_on(async {
            let frames = mixed_frames();
            let (mut tx, mut rx) = tokio::io::duplex(1000);
            let expect = frames.clone();
            let writer = tokio::spawn(async move {
                for f in &expect {
                    write_frame_direct(&mut tx, f).await.expect("writes");
                }
            });
            for f in &frames {
                assert_eq!(read_frame(&mut rx).await.expect("reads").as_ref(), Some(f));
            }
            writer.await.expect("writer");
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
