//! Body encoding. The only module that knows the serialisation format
//! (bincode 2.0.1, standard config); swapping it touches nothing else.

use crate::frame::{Flags, Frame, FrameError, HEADER_LEN, MAX_BODY_LEN};
use crate::message::Message;

/// Why a body could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The message does not fit in one frame.
    #[error("message does not fit in one frame: {0}")]
    Encode(String),
    /// The body is not a valid message of this protocol version.
    #[error("frame body is not a valid message: {0}")]
    Decode(String),
    /// Bytes were left after the message.
    #[error("frame body has {0} trailing bytes after the message")]
    Trailing(usize),
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_BODY_LEN>()
}

/// Encodes a message as a frame body.
pub fn encode_message(msg: &Message) -> Result<Vec<u8>, CodecError> {
    let body = bincode::serde::encode_to_vec(msg, config()).map_err(|e| CodecError::Encode(e.to_string()))?;
    if body.len() > MAX_BODY_LEN {
        return Err(CodecError::Encode(format!("{} bytes exceed the frame limit", body.len())));
    }
    Ok(body)
}

/// Decodes a frame body; never panics on arbitrary input.
pub fn decode_message(body: &[u8]) -> Result<Message, CodecError> {
    let (msg, used): (Message, usize) =
        bincode::serde::decode_from_slice(body, config()).map_err(|e| CodecError::Decode(e.to_string()))?;
    if used != body.len() {
        return Err(CodecError::Trailing(body.len() - used));
    }
    Ok(msg)
}

impl Frame {
    /// A frame carrying `msg`.
    pub fn message(id: u32, flags: Flags, msg: &Message) -> Result<Frame, CodecError> {
        Ok(Frame::new(id, flags, encode_message(msg)?))
    }

    /// Decodes the body.
    pub fn decode_body(&self) -> Result<Message, CodecError> {
        decode_message(&self.body)
    }
}

/// The messages that are nothing but a byte payload (`data`), which the
/// stream paths send and receive without copying the payload through the
/// codec: a writer sends [`data_frame_prefix`] and then the bytes; a reader
/// recognises such a body with [`parse_data_prefix`] and keeps the payload as
/// it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DataKind {
    /// [`Message::ExecStdin`].
    ExecStdin,
    /// [`Message::ExecStdout`].
    ExecStdout,
    /// [`Message::ExecStderr`].
    ExecStderr,
    /// [`Message::FsData`].
    FsData,
}

impl DataKind {
    const ALL: [DataKind; 4] = [DataKind::ExecStdin, DataKind::ExecStdout, DataKind::ExecStderr, DataKind::FsData];

    /// The message carrying `data`.
    pub fn into_message(self, data: Vec<u8>) -> Message {
        match self {
            DataKind::ExecStdin => Message::ExecStdin { data },
            DataKind::ExecStdout => Message::ExecStdout { data },
            DataKind::ExecStderr => Message::ExecStderr { data },
            DataKind::FsData => Message::FsData { data },
        }
    }

    /// The encoded variant tag, as the first bytes of a body: `(bytes, len)`.
    fn tag(self) -> ([u8; 8], usize) {
        // The body of an empty payload is the tag followed by a one-byte
        // length 0; encoding it needs no allocation.
        let mut out = [0u8; 8];
        let used = bincode::serde::encode_into_slice(self.into_message(Vec::new()), &mut out, config()).unwrap_or(0);
        (out, used.saturating_sub(1))
    }
}

/// Longest body prefix of a data message (variant tag and payload length).
pub const DATA_BODY_PREFIX_MAX: usize = 16;
/// Longest [`DataPrefix`]: the frame header and the body prefix.
pub const DATA_PREFIX_MAX: usize = HEADER_LEN + DATA_BODY_PREFIX_MAX;

/// The bytes that precede the payload of a data frame on the wire: the frame
/// header and the body's variant tag and length prefix. Followed by exactly
/// the payload they announce, they form the frame that
/// `Frame::message(id, flags, &kind.into_message(payload))` encodes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataPrefix {
    bytes: [u8; DATA_PREFIX_MAX],
    len: usize,
}

impl DataPrefix {
    /// The prefix bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    /// Wire bytes of the whole frame: the prefix and the payload.
    pub fn wire_len(&self, payload_len: usize) -> usize {
        self.len + payload_len
    }
}

/// The prefix of a data frame carrying `payload_len` bytes (see
/// [`DataPrefix`]); fails only when such a frame would exceed the frame limit.
pub fn data_frame_prefix(id: u32, flags: Flags, kind: DataKind, payload_len: usize) -> Result<DataPrefix, CodecError> {
    let (tag, tag_len) = kind.tag();
    let mut body = [0u8; DATA_BODY_PREFIX_MAX];
    body[..tag_len].copy_from_slice(&tag[..tag_len]);
    let len_len = bincode::encode_into_slice(payload_len as u64, &mut body[tag_len..], config())
        .map_err(|e| CodecError::Encode(e.to_string()))?;
    let body_prefix = tag_len + len_len;
    let header = Frame::header(id, flags, body_prefix + payload_len).map_err(|e: FrameError| {
        CodecError::Encode(format!("a {payload_len}-byte payload does not fit in one frame: {e}"))
    })?;
    let mut bytes = [0u8; DATA_PREFIX_MAX];
    bytes[..HEADER_LEN].copy_from_slice(&header);
    bytes[HEADER_LEN..HEADER_LEN + body_prefix].copy_from_slice(&body[..body_prefix]);
    Ok(DataPrefix { bytes, len: HEADER_LEN + body_prefix })
}

/// What the first bytes of a body say about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyPrefix {
    /// More bytes are needed to tell (at most [`DATA_BODY_PREFIX_MAX`]).
    Incomplete,
    /// A data message: its payload starts at `offset` and is `len` bytes long.
    Data {
        /// Which message.
        kind: DataKind,
        /// Bytes of tag and length before the payload.
        offset: usize,
        /// Length of the payload.
        len: u64,
    },
    /// Not a data message (or not a valid body); decode it with
    /// [`decode_message`].
    Other,
}

/// Recognises a data message from the first bytes of its body, without
/// decoding (or copying) the payload. `Data` means the body is exactly that
/// message when it is `offset + len` bytes long; the caller checks the length.
pub fn parse_data_prefix(body: &[u8]) -> BodyPrefix {
    for kind in DataKind::ALL {
        let (tag, tag_len) = kind.tag();
        if body.len() < tag_len {
            // Every tag of this protocol is one byte; a shorter body is empty.
            return BodyPrefix::Incomplete;
        }
        if body[..tag_len] != tag[..tag_len] {
            continue;
        }
        let rest = &body[tag_len..];
        return match bincode::decode_from_slice::<u64, _>(rest, config()) {
            Ok((len, used)) => BodyPrefix::Data { kind, offset: tag_len + used, len },
            Err(bincode::error::DecodeError::UnexpectedEnd { .. }) => BodyPrefix::Incomplete,
            Err(_) => BodyPrefix::Other,
        };
    }
    BodyPrefix::Other
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::*;
    use proptest::prelude::*;

    fn arb_bytes() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(any::<u8>(), 0..300)
    }

    fn arb_string() -> BoxedStrategy<String> {
        "[ -~]{0,24}".boxed()
    }

    fn arb_message() -> impl Strategy<Value = Message> {
        let stat: BoxedStrategy<FileStat> =
            (0u8..4, any::<u64>(), any::<u32>(), any::<i64>(), proptest::option::of(arb_string()))
                .prop_map(|(k, size, mode, mtime, link_target)| FileStat {
                    kind: [FileKind::File, FileKind::Dir, FileKind::Symlink, FileKind::Other][k as usize],
                    size,
                    mode,
                    uid: mode / 3,
                    gid: mode / 5,
                    mtime,
                    link_target,
                })
                .boxed();
        prop_oneof![
            (any::<u32>(), arb_string(), any::<u64>()).prop_map(|(v, s, t)| Message::Ready(Ready {
                protocol_version: v,
                agent_version: s,
                boot: BootTimings { agent_start_us: t, mounts_done_us: t / 2, ready_us: t / 3 },
            })),
            (any::<u64>(), any::<u32>()).prop_map(|(seq, active_sessions)| Message::Heartbeat { seq, active_sessions }),
            any::<u32>().prop_map(|grace_ms| Message::Shutdown { grace_ms }),
            Just(Message::Touch),
            (
                proptest::collection::vec(arb_string(), 0..4),
                proptest::option::of(arb_string()),
                any::<bool>(),
                proptest::option::of((any::<u16>(), any::<u16>()))
            )
                .prop_map(|(argv, cwd, stdin, tty)| Message::ExecRequest(ExecRequest {
                    env: argv.iter().map(|a| (a.clone(), a.to_uppercase())).collect(),
                    argv,
                    cwd: cwd.clone(),
                    user: cwd,
                    tty: tty.map(|(rows, cols)| TtySize { rows, cols }),
                    stdin,
                    rlimits: vec![Rlimit { resource: "nofile".into(), soft: 1024, hard: 4096 }],
                    stdout_pipe: !stdin,
                })),
            any::<u32>().prop_map(|pid| Message::ExecStarted { pid }),
            arb_bytes().prop_map(|data| Message::ExecStdin { data }),
            Just(Message::ExecStdinEof),
            Just(Message::ExecStdoutPipe),
            arb_bytes().prop_map(|data| Message::ExecStdout { data }),
            arb_bytes().prop_map(|data| Message::ExecStderr { data }),
            (proptest::option::of(any::<i32>()), proptest::option::of(any::<i32>()), any::<bool>())
                .prop_map(|(code, signal, oom_killed)| Message::ExecExited(ExitStatus { code, signal, oom_killed })),
            arb_string().prop_map(|message| Message::ExecFailed(SpawnError { kind: SpawnErrorKind::BadCwd, message })),
            (any::<u16>(), any::<u16>()).prop_map(|(rows, cols)| Message::ExecResize(TtySize { rows, cols })),
            any::<i32>().prop_map(|signal| Message::ExecSignal { signal }),
            arb_string().prop_map(|path| Message::FsRequest(FsRequest::Write { path, mode: 0o644 })),
            (arb_string(), arb_string()).prop_map(|(from, to)| Message::FsRequest(FsRequest::Copy { from, to })),
            arb_bytes().prop_map(|data| Message::FsData { data }),
            Just(Message::FsEnd),
            stat.clone().prop_map(|s| Message::FsResponse(Ok(FsReply::Stat(s)))),
            proptest::collection::vec((arb_string(), stat), 0..4).prop_map(|v| Message::FsResponse(Ok(FsReply::List(
                v.into_iter().map(|(name, stat)| DirEntry { name, stat }).collect()
            )))),
            arb_string().prop_map(|message| Message::FsResponse(Err(FsError { kind: FsErrorKind::NotFound, message }))),
            any::<u32>().prop_map(|bytes| Message::Credit { bytes }),
            arb_string().prop_map(|reason| Message::SessionAborted { reason }),
            Just(Message::SandboxRequest(SandboxRequest::Pause)),
            Just(Message::SandboxRequest(SandboxRequest::Resume)),
            proptest::option::of(arb_string()).prop_map(|e| Message::SandboxReply(match e {
                Some(e) => Err(e),
                None => Ok(()),
            })),
        ]
    }

    proptest! {
        #[test]
        fn messages_round_trip(msg in arb_message(), id in any::<u32>()) {
            let frame = Frame::message(id, Flags::TERMINAL, &msg).unwrap();
            let wire = frame.encode().unwrap();
            let (back, _) = Frame::decode(&wire).unwrap().unwrap();
            prop_assert_eq!(back.decode_body().unwrap(), msg);
        }

        #[test]
        fn arbitrary_bodies_give_errors_not_panics(body in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_message(&body);
        }
    }

    #[test]
    fn trailing_bytes_are_an_error() {
        let mut body = encode_message(&Message::Touch).expect("encodes");
        body.push(0);
        assert!(matches!(decode_message(&body), Err(CodecError::Trailing(1))));
    }

    #[test]
    fn huge_declared_lengths_do_not_allocate() {
        // A variant tag for ExecStdout followed by a length prefix of u64::MAX.
        let mut body = encode_message(&Message::ExecStdout { data: vec![] }).expect("encodes");
        body.pop();
        body.extend_from_slice(&[0xfd, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
        assert!(decode_message(&body).is_err());
    }

    #[test]
    fn data_frame_prefixes_match_the_encoded_frames() {
        for kind in DataKind::ALL {
            for len in [0usize, 1, 250, 251, 65535, 65536, MAX_CHUNK, MAX_BODY_LEN - 9] {
                let payload: Vec<u8> = (0..len).map(|i| (i % 253) as u8).collect();
                let frame =
                    Frame::message(0x0102_0304, Flags::TERMINAL, &kind.into_message(payload.clone())).expect("encodes");
                let wire = frame.encode().expect("encodes");
                let prefix = data_frame_prefix(0x0102_0304, Flags::TERMINAL, kind, len).expect("prefix");
                assert_eq!(prefix.wire_len(len), wire.len(), "{kind:?} {len}");
                assert_eq!(prefix.as_bytes(), &wire[..wire.len() - len], "{kind:?} {len}");
                assert_eq!(&wire[prefix.as_bytes().len()..], &payload[..]);
                // And the reader side recognises the body.
                let body = &frame.body;
                let offset = prefix.as_bytes().len() - HEADER_LEN;
                assert_eq!(parse_data_prefix(body), BodyPrefix::Data { kind, offset, len: len as u64 });
                for cut in 0..offset {
                    assert_eq!(parse_data_prefix(&body[..cut]), BodyPrefix::Incomplete, "{kind:?} {len} cut {cut}");
                }
            }
        }
        assert!(data_frame_prefix(1, Flags::NONE, DataKind::ExecStdout, MAX_BODY_LEN).is_err());
    }

    #[test]
    fn other_bodies_are_not_taken_for_data() {
        for msg in [
            Message::Touch,
            Message::Credit { bytes: 300 },
            Message::ExecExited(ExitStatus { code: Some(0), signal: None, oom_killed: false }),
            Message::ExecStarted { pid: 77 },
        ] {
            let body = encode_message(&msg).expect("encodes");
            assert_eq!(parse_data_prefix(&body), BodyPrefix::Other, "{msg:?}");
        }
    }

    proptest! {
        #[test]
        fn data_prefix_parsing_never_panics(body in proptest::collection::vec(any::<u8>(), 0..24)) {
            if let BodyPrefix::Data { kind, offset, len } = parse_data_prefix(&body) {
                prop_assert!(offset <= body.len());
                // A body that is exactly prefix + payload decodes to that message.
                if (body.len() - offset) as u64 == len {
                    let msg = decode_message(&body).unwrap();
                    prop_assert_eq!(msg, kind.into_message(body[offset..].to_vec()));
                }
            }
        }
    }

    #[test]
    fn data_chunks_are_encoded_without_per_byte_overhead() {
        let body = encode_message(&Message::ExecStdout { data: vec![7; MAX_CHUNK] }).expect("encodes");
        assert!(body.len() < MAX_CHUNK + 16, "{} bytes", body.len());
    }
}
