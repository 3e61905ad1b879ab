//! Target `codec`: the protocol's frame codec (`alcove-protocol`) on
//! hostile bytes.
//!
//! The input is a byte stream as a peer would send it. The first byte picks
//! how the stream is cut into reads; the rest goes through a
//! [`FrameDecoder`] piece by piece, exactly as the relay and the agent feed
//! theirs. Checked, for every frame the decoder returns:
//! - the one-shot [`Frame::decode`] of the same bytes agrees with the
//!   streaming decoder (same frame, same length), and pieces never change
//!   the result: decoding the whole stream at once yields the same frames
//!   and the same error;
//! - a frame re-encodes to exactly the bytes it came from;
//! - a body that decodes as a [`Message`] re-encodes to a body that decodes
//!   to the same message, and a data body recognised by
//!   [`parse_data_prefix`] is exactly that data message;
//! - the same bytes as a handshake, and as an agent config (JSON), either
//!   fail cleanly or round-trip.

use alcove_protocol::agent_config::AgentConfig;
use alcove_protocol::codec::{parse_data_prefix, BodyPrefix};
use alcove_protocol::{decode_message, encode_message, Frame, FrameDecoder, Handshake, HANDSHAKE_LEN};

/// Runs one input.
pub fn fuzz(data: &[u8]) {
    check(data);
}

/// Runs one input; returns how many frames it held.
pub fn check(data: &[u8]) -> usize {
    let Some((&cut, stream)) = data.split_first() else {
        return 0;
    };
    let pieces = decode_in_pieces(stream, cut);
    let whole = decode_in_pieces(stream, 0);
    assert_eq!(pieces, whole, "cutting the stream into reads changed what was decoded");
    let mut offset = 0;
    for frame in &pieces.0 {
        let wire = frame.encode().expect("a decoded frame re-encodes");
        assert_eq!(wire, &stream[offset..offset + wire.len()], "a frame re-encoded to other bytes");
        let (again, used) = Frame::decode(&stream[offset..]).expect("decodes").expect("complete");
        assert_eq!((&again, used), (frame, wire.len()), "one-shot and streaming decoders disagree");
        offset += used;
        check_body(frame);
    }
    check_handshake(stream);
    check_agent_config(stream);
    pieces.0.len()
}

/// Frames decoded from `stream` fed in reads of a size derived from `cut`
/// (`0`: all at once), and the error that ended decoding, if any.
fn decode_in_pieces(stream: &[u8], cut: u8) -> (Vec<Frame>, Option<String>) {
    let mut decoder = FrameDecoder::new();
    let mut frames = Vec::new();
    let step = if cut == 0 { stream.len().max(1) } else { usize::from(cut % 17) + 1 };
    for piece in stream.chunks(step) {
        decoder.extend(piece);
        loop {
            match decoder.next_frame() {
                Ok(Some(f)) => frames.push(f),
                Ok(None) => break,
                // A poisoned stream: stop as every reader of the protocol does.
                Err(e) => return (frames, Some(e.to_string())),
            }
        }
    }
    (frames, None)
}

fn check_body(frame: &Frame) {
    let Ok(msg) = frame.decode_body() else {
        return;
    };
    let body = encode_message(&msg).expect("a decoded message re-encodes");
    assert_eq!(decode_message(&body).expect("a re-encoded body decodes"), msg, "message round trip");
    let rebuilt = Frame::message(frame.id, frame.flags, &msg).expect("fits: it came in one frame");
    assert_eq!(rebuilt.decode_body().expect("decodes"), msg);
    if let BodyPrefix::Data { kind, offset, len } = parse_data_prefix(&frame.body) {
        if offset as u64 + len == frame.body.len() as u64 {
            let payload = frame.body[offset..].to_vec();
            assert_eq!(kind.into_message(payload), msg, "the data prefix names another message than the body");
        }
    }
}

fn check_handshake(stream: &[u8]) {
    let Some(bytes) = stream.get(..HANDSHAKE_LEN) else {
        return;
    };
    let raw: [u8; HANDSHAKE_LEN] = bytes.try_into().expect("length checked");
    if let Ok(h) = Handshake::decode(raw) {
        assert!(h.id_start != alcove_protocol::CONTROL_ID && h.id_start <= h.id_end);
        assert_eq!(h.encode(), raw, "handshake round trip");
    }
}

fn check_agent_config(stream: &[u8]) {
    if let Ok(cfg) = AgentConfig::from_json(stream) {
        let again = AgentConfig::from_json(&cfg.to_json()).expect("an agent config re-reads");
        assert_eq!(again, cfg, "agent config round trip");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alcove_protocol::{Flags, Message};

    #[test]
    fn valid_frames_cut_into_small_reads_are_all_decoded_and_checked() {
        let mut stream = vec![3u8];
        for (id, msg) in [(7, Message::ExecStdout { data: b"hello".to_vec() }), (0, Message::Touch)] {
            stream.extend(Frame::message(id, Flags::NONE, &msg).expect("encodes").encode().expect("encodes"));
        }
        assert_eq!(check(&stream), 2);
        // A broken header after them ends decoding: still the two frames.
        stream.extend([0, 0, 0, 1, 0, 0, 0, 0, 0]);
        assert_eq!(check(&stream), 2);
    }
}
