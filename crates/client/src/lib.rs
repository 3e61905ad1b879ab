//! Async client for alcove sandboxes.
//!
//! A [`Client`] is one connection to a sandbox's agent.sock (found through
//! [`paths`]). After the handshake (an id range from the relay, then the
//! agent's `Ready` of a matching protocol version) it multiplexes any number
//! of concurrent sessions: commands ([`Client::exec`]) and file operations
//! ([`Client::read_file`], [`Client::write_file`], …). It needs only tokio,
//! not actix.
//!
//! ```no_run
//! # async fn demo() -> Result<(), alcove_client::ClientError> {
//! use alcove_client::{Client, ExecOptions};
//! let client = Client::connect("dev").await?;
//! let out = client.exec_output(ExecOptions::new(["uname", "-a"])).await?;
//! println!("{} (exit {:?})", String::from_utf8_lossy(&out.stdout), out.status.code);
//! client.write_file("/tmp/hello", 0o644, b"hi").await?;
//! # Ok(()) }
//! ```
//!
//! Invariants kept by the library (details in each module):
//! - ids used are inside the granted range and never shared by two open
//!   sessions;
//! - at most `INITIAL_WINDOW` un-credited bytes of stdin / file content are
//!   in flight per session, in chunks of at most `MAX_CHUNK` bytes;
//! - incoming frames are read continuously, whatever the consumers do;
//! - losing the connection fails every open session with
//!   [`ClientError::Disconnected`].
#![warn(missing_docs)]

mod conn;
pub mod copy;
mod error;
pub mod exec;
pub mod fs;
pub mod paths;
pub mod sink;

pub use conn::Client;
pub use copy::CopyReport;
pub use error::ClientError;
pub use exec::{ExecEvent, ExecInput, ExecOptions, ExecOutput, ExecSession, Output, StdinWriter};
pub use sink::OutputSink;

pub use alcove_protocol as protocol;
pub use alcove_protocol::{
    DirEntry, ExitStatus, FileKind, FileStat, FsError, FsErrorKind, Ready, Rlimit, SpawnError, SpawnErrorKind, TtySize,
};
