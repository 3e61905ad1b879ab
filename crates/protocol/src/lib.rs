//! alcove's wire protocol.
//!
//! Everything that crosses agent.sock or the guest console channel is a
//! [`Frame`]: `[len u32 BE][id u32 BE][flags u8][body]`, where `len` counts the
//! id, the flags and the body. Routing information (the session id and the
//! [`Flags`]) sits outside the body so the relay can route frames without
//! decoding them. Bodies are [`Message`] values encoded by [`codec`], the only
//! module that knows which serialisation format is in use.
//!
//! Id 0 ([`CONTROL_ID`]) carries control traffic: the guest's `Ready` and
//! `Heartbeat`, the host's `Shutdown`, a client's `Touch`. Every other id names
//! a session (one exec or one file operation) and belongs to the client whose
//! handshake range contains it.
//!
//! This crate depends on nothing else of alcove, so the agent and the client
//! library can share it.
#![warn(missing_docs)]

pub mod agent_config;
pub mod codec;
pub mod frame;
pub mod handshake;
pub mod message;

#[cfg(feature = "tokio")]
pub mod async_io;
pub mod fdpass;

pub use codec::{decode_message, encode_message, CodecError};
pub use frame::{Flags, Frame, FrameDecoder, FrameError, HEADER_LEN, MAX_FRAME_LEN};
pub use handshake::{Handshake, HandshakeError, HANDSHAKE_LEN};
pub use message::*;

/// Version of the protocol spoken by this build. A peer reporting another
/// version in `Ready` must be refused with a clear error.
pub const PROTOCOL_VERSION: u32 = 2;

/// The id reserved for control traffic; never a session id.
pub const CONTROL_ID: u32 = 0;
