//! Frames: the unit of transport.
//!
//! Layout: `[len u32 BE][id u32 BE][flags u8][body]`. `len` counts
//! `id + flags + body`, so it is at least 5 and at most [`MAX_FRAME_LEN`].
//! Decoding never panics: short input asks for more bytes, malformed input is a
//! [`FrameError`].

use std::io::{self, Read, Write};

/// Bytes before the body: length, id and flags.
pub const HEADER_LEN: usize = 9;
/// Largest accepted value of the length field (id + flags + body), 4 MiB.
pub const MAX_FRAME_LEN: usize = 4 * 1024 * 1024;
/// Largest body that fits in one frame.
pub const MAX_BODY_LEN: usize = MAX_FRAME_LEN - 5;
/// Smallest legal value of the length field: an id and flags, no body.
const MIN_FRAME_LEN: u32 = 5;

/// Routing flags carried outside the body.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Flags(u8);

impl Flags {
    /// No flag set.
    pub const NONE: Flags = Flags(0);
    /// The last frame of a session in this direction; the session closes.
    pub const TERMINAL: Flags = Flags(0b001);
    /// The first frame of a session (a request opening it).
    pub const SESSION_START: Flags = Flags(0b010);
    /// Asks the sandbox to stop gracefully.
    pub const SHUTDOWN: Flags = Flags(0b100);
    /// One file descriptor travels with this frame: sent with `SCM_RIGHTS`
    /// on the frame's first byte, so only over a Unix socket (see
    /// `fdpass`). Its message says what the descriptor is.
    pub const FD: Flags = Flags(0b1000);
    const ALL: u8 = 0b1111;

    /// Builds flags from a raw byte, refusing unknown bits.
    pub fn from_bits(bits: u8) -> Result<Flags, FrameError> {
        if bits & !Self::ALL != 0 {
            return Err(FrameError::UnknownFlags(bits));
        }
        Ok(Flags(bits))
    }

    /// The raw byte.
    pub fn bits(self) -> u8 {
        self.0
    }

    /// Whether every bit of `other` is set in `self`.
    pub fn contains(self, other: Flags) -> bool {
        self.0 & other.0 == other.0
    }
}

impl std::ops::BitOr for Flags {
    type Output = Flags;
    fn bitor(self, rhs: Flags) -> Flags {
        Flags(self.0 | rhs.0)
    }
}

/// Why bytes could not be read as a frame.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    /// The length field is below the 5 bytes of id and flags.
    #[error("frame length {0} is shorter than the 5-byte id and flags")]
    TooShort(u32),
    /// The length field exceeds [`MAX_FRAME_LEN`].
    #[error("frame length {0} exceeds the 4 MiB limit")]
    TooLarge(u32),
    /// The flags byte has bits this version does not know.
    #[error("frame flags {0:#04x} contain unknown bits")]
    UnknownFlags(u8),
    /// The stream ended in the middle of a frame.
    #[error("the stream ended inside a frame ({0} bytes of it were read)")]
    Truncated(usize),
}

/// One frame: a session id, routing flags and an opaque body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// Session id, or [`crate::CONTROL_ID`].
    pub id: u32,
    /// Routing flags.
    pub flags: Flags,
    /// The encoded message.
    pub body: Vec<u8>,
}

impl Frame {
    /// A frame with the given parts.
    pub fn new(id: u32, flags: Flags, body: Vec<u8>) -> Frame {
        Frame { id, flags, body }
    }

    /// Total bytes on the wire.
    pub fn wire_len(&self) -> usize {
        HEADER_LEN + self.body.len()
    }

    /// Appends the wire form to `out`.
    ///
    /// # Panics
    /// Never: a body above [`MAX_BODY_LEN`] is a programming error reported as
    /// [`FrameError::TooLarge`] by [`Frame::encode`] instead.
    pub fn encode_into(&self, out: &mut Vec<u8>) -> Result<(), FrameError> {
        let len = check_body_len(self.body.len())?;
        out.reserve(HEADER_LEN + self.body.len());
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&self.id.to_be_bytes());
        out.push(self.flags.bits());
        out.extend_from_slice(&self.body);
        Ok(())
    }

    /// The wire form as a new buffer.
    pub fn encode(&self) -> Result<Vec<u8>, FrameError> {
        let mut out = Vec::with_capacity(self.wire_len());
        self.encode_into(&mut out)?;
        Ok(out)
    }

    /// The 9-byte header for a body of `body_len` bytes, for writers that send
    /// header and body without joining them.
    pub fn header(id: u32, flags: Flags, body_len: usize) -> Result<[u8; HEADER_LEN], FrameError> {
        let len = check_body_len(body_len)?;
        let mut h = [0u8; HEADER_LEN];
        h[..4].copy_from_slice(&len.to_be_bytes());
        h[4..8].copy_from_slice(&id.to_be_bytes());
        h[8] = flags.bits();
        Ok(h)
    }

    /// Decodes one frame from the front of `buf`.
    ///
    /// Returns `Ok(None)` when `buf` holds only part of a frame, and the frame
    /// with the number of bytes it used otherwise.
    pub fn decode(buf: &[u8]) -> Result<Option<(Frame, usize)>, FrameError> {
        let Some(header) = parse_header(buf)? else {
            return Ok(None);
        };
        let total = 4 + header.len as usize;
        if buf.len() < total {
            return Ok(None);
        }
        let body = buf[HEADER_LEN..total].to_vec();
        Ok(Some((Frame { id: header.id, flags: header.flags, body }, total)))
    }

    /// Reads one frame from a blocking reader. `Ok(None)` at a clean end of
    /// stream (between frames).
    pub fn read_from<R: Read>(r: &mut R) -> io::Result<Option<Frame>> {
        let mut head = [0u8; HEADER_LEN];
        let got = read_full(r, &mut head)?;
        if got == 0 {
            return Ok(None);
        }
        if got < HEADER_LEN {
            return Err(invalid(FrameError::Truncated(got)));
        }
        let header = parse_header(&head).map_err(invalid)?.ok_or_else(|| invalid(FrameError::Truncated(got)))?;
        let mut body = vec![0u8; header.body_len()];
        let got_body = read_full(r, &mut body)?;
        if got_body < body.len() {
            return Err(invalid(FrameError::Truncated(HEADER_LEN + got_body)));
        }
        Ok(Some(Frame { id: header.id, flags: header.flags, body }))
    }

    /// Writes the frame to a blocking writer in one `write_all`.
    pub fn write_to<W: Write>(&self, w: &mut W) -> io::Result<()> {
        let bytes = self.encode().map_err(invalid)?;
        w.write_all(&bytes)
    }
}

/// A parsed frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Value of the length field (id + flags + body).
    pub len: u32,
    /// Session id.
    pub id: u32,
    /// Routing flags.
    pub flags: Flags,
}

impl Header {
    /// Bytes of body that follow the header.
    pub fn body_len(&self) -> usize {
        self.len as usize - 5
    }
}

/// Parses and validates a header from the front of `buf`; `Ok(None)` if fewer
/// than [`HEADER_LEN`] bytes are there.
pub fn parse_header(buf: &[u8]) -> Result<Option<Header>, FrameError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    if len < MIN_FRAME_LEN {
        return Err(FrameError::TooShort(len));
    }
    if len as usize > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge(len));
    }
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let id = u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]);
    let flags = Flags::from_bits(buf[8])?;
    Ok(Some(Header { len, id, flags }))
}

fn check_body_len(body_len: usize) -> Result<u32, FrameError> {
    if body_len > MAX_BODY_LEN {
        return Err(FrameError::TooLarge(u32::try_from(body_len + 5).unwrap_or(u32::MAX)));
    }
    // Cannot overflow: MAX_BODY_LEN + 5 fits in u32.
    Ok((body_len + 5) as u32)
}

fn read_full<R: Read>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

fn invalid(e: FrameError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// Incremental decoder for byte streams that arrive in arbitrary pieces.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    start: usize,
}

impl FrameDecoder {
    /// An empty decoder.
    pub fn new() -> FrameDecoder {
        FrameDecoder::default()
    }

    /// Adds received bytes.
    pub fn extend(&mut self, bytes: &[u8]) {
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete frame, if one is buffered. After an error the decoder
    /// is poisoned: the stream has lost framing and must be closed.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        match Frame::decode(&self.buf[self.start..])? {
            Some((frame, used)) => {
                self.start += used;
                if self.start > 64 * 1024 && self.start * 2 > self.buf.len() {
                    self.buf.drain(..self.start);
                    self.start = 0;
                }
                Ok(Some(frame))
            }
            None => Ok(None),
        }
    }

    /// Bytes received but not yet returned as frames.
    pub fn pending(&self) -> usize {
        self.buf.len() - self.start
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn header_layout_is_big_endian() {
        let f = Frame::new(0x01020304, Flags::TERMINAL | Flags::SHUTDOWN, vec![0xaa, 0xbb]);
        let bytes = f.encode().expect("encodes");
        assert_eq!(bytes, vec![0, 0, 0, 7, 1, 2, 3, 4, 0b101, 0xaa, 0xbb]);
    }

    #[test]
    fn short_length_is_rejected() {
        assert_eq!(Frame::decode(&[0, 0, 0, 4, 0, 0, 0, 0, 0]), Err(FrameError::TooShort(4)));
    }

    #[test]
    fn oversized_length_is_rejected_before_the_body_arrives() {
        let len = (MAX_FRAME_LEN as u32 + 1).to_be_bytes();
        assert_eq!(Frame::decode(&len), Err(FrameError::TooLarge(MAX_FRAME_LEN as u32 + 1)));
    }

    #[test]
    fn oversized_body_is_refused_when_encoding() {
        let f = Frame::new(1, Flags::NONE, vec![0; MAX_BODY_LEN + 1]);
        assert!(matches!(f.encode(), Err(FrameError::TooLarge(_))));
        let f = Frame::new(1, Flags::NONE, vec![0; MAX_BODY_LEN]);
        assert_eq!(f.encode().expect("largest body fits").len(), HEADER_LEN + MAX_BODY_LEN);
    }

    #[test]
    fn unknown_flags_are_rejected() {
        assert_eq!(Frame::decode(&[0, 0, 0, 5, 0, 0, 0, 1, 0x80]), Err(FrameError::UnknownFlags(0x80)));
    }

    #[test]
    fn partial_input_asks_for_more() {
        let bytes = Frame::new(9, Flags::NONE, b"hello".to_vec()).encode().expect("encodes");
        for cut in 0..bytes.len() {
            assert_eq!(Frame::decode(&bytes[..cut]), Ok(None), "cut at {cut}");
        }
    }

    #[test]
    fn blocking_reader_reports_truncation() {
        let bytes = Frame::new(9, Flags::NONE, b"hello".to_vec()).encode().expect("encodes");
        let mut cut = &bytes[..bytes.len() - 1];
        let err = Frame::read_from(&mut cut).expect_err("truncated");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        let mut empty: &[u8] = &[];
        assert!(Frame::read_from(&mut empty).expect("clean eof").is_none());
    }

    fn arb_frame() -> impl Strategy<Value = Frame> {
        (any::<u32>(), 0u8..8, proptest::collection::vec(any::<u8>(), 0..2048))
            .prop_map(|(id, bits, body)| Frame::new(id, Flags(bits), body))
    }

    proptest! {
        #[test]
        fn frames_round_trip(frame in arb_frame()) {
            let bytes = frame.encode().unwrap();
            let (back, used) = Frame::decode(&bytes).unwrap().unwrap();
            prop_assert_eq!(used, bytes.len());
            prop_assert_eq!(&back, &frame);
            let mut r = &bytes[..];
            prop_assert_eq!(Frame::read_from(&mut r).unwrap().unwrap(), frame);
        }

        #[test]
        fn decoder_reassembles_any_split(frames in proptest::collection::vec(arb_frame(), 1..8), chunk in 1usize..64) {
            let mut wire = Vec::new();
            for f in &frames { f.encode_into(&mut wire).unwrap(); }
            let mut dec = FrameDecoder::new();
            let mut out = Vec::new();
            for piece in wire.chunks(chunk) {
                dec.extend(piece);
                while let Some(f) = dec.next_frame().unwrap() { out.push(f); }
            }
            prop_assert_eq!(out, frames);
            prop_assert_eq!(dec.pending(), 0);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = Frame::decode(&bytes);
            let mut dec = FrameDecoder::new();
            dec.extend(&bytes);
            while let Ok(Some(_)) = dec.next_frame() {}
            let mut r = &bytes[..];
            while let Ok(Some(_)) = Frame::read_from(&mut r) {}
        }
    }
}
