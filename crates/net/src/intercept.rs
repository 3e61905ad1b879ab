//! The seam for TLS interception (secrets, issue 16): an [`Interceptor`]
//! chooses outbound TCP flows whose bytes pass through a [`StreamFilter`]
//! instead of straight between the guest and the host.
//!
//! Invariants:
//! - The choice is made once per flow, after the host connection is up
//!   and the guest's first TLS record (its ClientHello, if any) has
//!   arrived, with the SNI, the names the engine's DNS returned for the
//!   address, and the address the host dialled. Flows not chosen cost
//!   nothing more than the SNI check.
//! - A filter is sans-I/O: it gets bytes and appends what goes to each
//!   side; the engine does all socket work, back-pressure and half-close.
//!   Output waiting for a side is bounded by [`FILTER_BUFFER`]; the engine
//!   reads no more input until it drains.
//! - A filter error ends the flow with RST on both sides and a
//!   [`crate::NetEvent::Denied`] record whose close reason is
//!   [`crate::CloseReason::Blocked`] with the filter's reason, or
//!   [`crate::CloseReason::SecretViolation`] (neither ever contains a
//!   secret's value).
//! - `resolved_names` are the names the engine's DNS returned for the
//!   address, plus `host.alcove.internal` for the host address.
//! - `--net-rate` does not throttle filtered flows (their bytes are bounded
//!   by [`FILTER_BUFFER`] per side instead).

use std::net::SocketAddr;

/// Output waiting for one side of a filtered flow before input stops.
pub const FILTER_BUFFER: usize = 256 * 1024;

/// What an interceptor knows of a flow when it chooses.
#[derive(Debug, Clone, Copy)]
pub struct FlowInfo<'a> {
    pub id: u64,
    /// The guest's end.
    pub guest: SocketAddr,
    /// The destination as the guest addressed it.
    pub remote: SocketAddr,
    /// The address the host dialled (the host's loopback for the host address).
    pub dialled: SocketAddr,
    /// The TLS server name of the guest's ClientHello.
    pub sni: Option<&'a str>,
    /// The names the engine's DNS returned for `remote`'s address.
    pub resolved_names: &'a [String],
}

/// Where a filter's output goes.
#[derive(Debug, Default)]
pub struct FilterOutput {
    pub to_host: Vec<u8>,
    pub to_guest: Vec<u8>,
}

/// Why a filter ended its flow (recorded; must not carry secret values).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    /// The flow could not go on (recorded as [`crate::CloseReason::Blocked`]).
    #[error("{0}")]
    Blocked(String),
    /// A secret's placeholder was sent where it does not belong (recorded
    /// as [`crate::CloseReason::SecretViolation`]).
    #[error("secret {secret} sent to {host} {how}")]
    SecretViolation {
        /// The secret's name (never its value).
        secret: String,
        /// Where it was going.
        host: String,
        /// How (`in plaintext`, `in a DNS question`, ...).
        how: String,
    },
}

impl FilterError {
    /// The flow record's close reason for this error.
    pub fn close_reason(&self) -> crate::CloseReason {
        match self {
            FilterError::Blocked(why) => crate::CloseReason::Blocked(why.clone()),
            FilterError::SecretViolation { secret, host, how } => {
                crate::CloseReason::SecretViolation { secret: secret.clone(), host: host.clone(), how: how.clone() }
            }
        }
    }
}

/// A byte-stream transformer between the guest and the host.
pub trait StreamFilter: Send {
    /// Bytes the guest sent.
    fn guest_bytes(&mut self, data: &[u8], out: &mut FilterOutput) -> Result<(), FilterError>;
    /// Bytes the host sent.
    fn host_bytes(&mut self, data: &[u8], out: &mut FilterOutput) -> Result<(), FilterError>;
}

/// Chooses the flows a filter sees.
pub trait Interceptor: Send {
    fn intercept(&mut self, flow: &FlowInfo<'_>) -> Option<Box<dyn StreamFilter>>;

    /// A DNS question the guest asked (lower case, no trailing dot); an
    /// error refuses it (answered REFUSED, recorded as denied).
    fn dns_query(&mut self, _name: &str) -> Option<FilterError> {
        None
    }
}
