//! Body encoding. The only module that knows the serialisation format
//! (bincode 2.0.1, standard config); swapping it touches nothing else.

use crate::frame::{Flags, Frame, MAX_BODY_LEN};
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
                })),
            any::<u32>().prop_map(|pid| Message::ExecStarted { pid }),
            arb_bytes().prop_map(|data| Message::ExecStdin { data }),
            Just(Message::ExecStdinEof),
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
    fn data_chunks_are_encoded_without_per_byte_overhead() {
        let body = encode_message(&Message::ExecStdout { data: vec![7; MAX_CHUNK] }).expect("encodes");
        assert!(body.len() < MAX_CHUNK + 16, "{} bytes", body.len());
    }
}
