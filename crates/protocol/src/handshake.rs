//! The client handshake on agent.sock.
//!
//! On connect the relay writes `[id_start u32 BE][id_end u32 BE]` (an
//! inclusive range of session ids the client may use) and then the cached
//! `Ready` frame of the agent. A client must check `Ready`'s protocol version
//! before sending anything.

use crate::message::{Message, Ready};
use crate::{Frame, PROTOCOL_VERSION};

/// Bytes of the id-range prefix.
pub const HANDSHAKE_LEN: usize = 8;

/// The id range granted to one client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Handshake {
    /// First session id the client may use.
    pub id_start: u32,
    /// Last session id the client may use (inclusive).
    pub id_end: u32,
}

/// Why a handshake was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HandshakeError {
    /// The range is empty, reversed or includes the control id.
    #[error("the relay granted an invalid id range {0}..={1}")]
    BadRange(u32, u32),
    /// The frame after the range was not `Ready`.
    #[error("expected the agent's Ready message after the id range")]
    NotReady,
    /// The agent speaks another protocol version.
    #[error("the sandbox speaks protocol version {theirs}, this build speaks {ours}")]
    VersionMismatch {
        /// The agent's version.
        theirs: u32,
        /// This build's version.
        ours: u32,
    },
}

impl Handshake {
    /// The wire form.
    pub fn encode(&self) -> [u8; HANDSHAKE_LEN] {
        let mut b = [0u8; HANDSHAKE_LEN];
        b[..4].copy_from_slice(&self.id_start.to_be_bytes());
        b[4..].copy_from_slice(&self.id_end.to_be_bytes());
        b
    }

    /// Parses and validates the wire form.
    pub fn decode(b: [u8; HANDSHAKE_LEN]) -> Result<Handshake, HandshakeError> {
        let id_start = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
        let id_end = u32::from_be_bytes([b[4], b[5], b[6], b[7]]);
        if id_start == crate::CONTROL_ID || id_end < id_start {
            return Err(HandshakeError::BadRange(id_start, id_end));
        }
        Ok(Handshake { id_start, id_end })
    }

    /// Whether `id` is in the range.
    pub fn contains(&self, id: u32) -> bool {
        (self.id_start..=self.id_end).contains(&id)
    }
}

/// Checks the frame that follows the range: it must be `Ready` with this
/// build's protocol version.
pub fn check_ready(frame: &Frame) -> Result<Ready, HandshakeError> {
    match frame.decode_body() {
        Ok(Message::Ready(ready)) => check_version(ready),
        _ => Err(HandshakeError::NotReady),
    }
}

/// Refuses a `Ready` of another protocol version.
pub fn check_version(ready: Ready) -> Result<Ready, HandshakeError> {
    if ready.protocol_version != PROTOCOL_VERSION {
        return Err(HandshakeError::VersionMismatch { theirs: ready.protocol_version, ours: PROTOCOL_VERSION });
    }
    Ok(ready)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::BootTimings;
    use crate::Flags;

    #[test]
    fn range_round_trips_and_is_validated() {
        let h = Handshake { id_start: 16, id_end: 31 };
        assert_eq!(Handshake::decode(h.encode()), Ok(h));
        assert!(h.contains(16) && h.contains(31) && !h.contains(32) && !h.contains(0));
        assert_eq!(
            Handshake::decode(Handshake { id_start: 0, id_end: 5 }.encode()),
            Err(HandshakeError::BadRange(0, 5))
        );
        assert_eq!(
            Handshake::decode(Handshake { id_start: 9, id_end: 5 }.encode()),
            Err(HandshakeError::BadRange(9, 5))
        );
    }

    #[test]
    fn other_versions_are_refused_clearly() {
        let ready =
            Ready { protocol_version: PROTOCOL_VERSION + 1, agent_version: "x".into(), boot: BootTimings::default() };
        let frame = Frame::message(0, Flags::NONE, &Message::Ready(ready)).expect("encodes");
        let err = check_ready(&frame).expect_err("refused");
        assert_eq!(
            err.to_string(),
            format!(
                "the sandbox speaks protocol version {}, this build speaks {}",
                PROTOCOL_VERSION + 1,
                PROTOCOL_VERSION
            )
        );
        let not_ready = Frame::message(0, Flags::NONE, &Message::Touch).expect("encodes");
        assert_eq!(check_ready(&not_ready), Err(HandshakeError::NotReady));
    }
}
