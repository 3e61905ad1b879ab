//! The client's error type.
//!
//! Every failure a caller can see is one [`ClientError`] variant with a
//! one-line, sentence-style message. Errors reported by the guest keep their
//! typed payload ([`SpawnError`], [`FsError`]) so callers can branch on the
//! kind (for example to map `not_found` to exit code 127).

use alcove_protocol::{FsError, HandshakeError, SpawnError};
use std::io;
use std::path::PathBuf;
use std::time::Duration;

/// Why a client operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// A sandbox name is invalid, or its socket path cannot be made or its
    /// runtime directory prepared (see [`alcove_layout::LayoutError`]).
    #[error(transparent)]
    Layout(#[from] alcove_layout::LayoutError),
    /// The directory holding a sandbox socket could let another user plant
    /// or replace the socket: it must be owned by the caller or root and
    /// give no access to group or others (mode 0700).
    #[error("refusing the socket directory {}: {reason} (it must be owned by you or root with mode 0700; remove it, or set ALCOVE_RUNTIME_DIR to a directory of yours)", dir.display())]
    UntrustedSocketDir {
        /// The directory.
        dir: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The process listening on a sandbox socket runs as another user.
    #[error("refusing {}: the process listening there runs as uid {uid}, neither you nor root", path.display())]
    UntrustedPeer {
        /// The socket path.
        path: PathBuf,
        /// The peer's uid (`SO_PEERCRED`).
        uid: u32,
    },
    /// No sandbox of that name is listening.
    #[error("no sandbox named {name} is running (socket {} not found)", path.display())]
    NotRunning {
        /// The sandbox name.
        name: String,
        /// The socket path that was tried.
        path: PathBuf,
    },
    /// Nothing listens on the socket path.
    #[error("no sandbox is listening on {}", path.display())]
    NoListener {
        /// The socket path that was tried.
        path: PathBuf,
    },
    /// Connecting to the socket failed for another reason.
    #[error("cannot connect to {}: {source}", path.display())]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// The underlying failure.
        source: io::Error,
    },
    /// The relay closed the connection before the handshake completed (it
    /// may have no free client slot, or the sandbox is stopping).
    #[error("the sandbox closed the connection during the handshake")]
    HandshakeClosed,
    /// The handshake was malformed or the protocol versions differ.
    #[error("handshake with the sandbox failed: {0}")]
    Handshake(#[from] HandshakeError),
    /// The connection to the sandbox was lost (or it sent bytes that are not
    /// valid frames and was dropped).
    #[error("the connection to the sandbox was lost")]
    Disconnected,
    /// The relay ended the session without a reply from the guest.
    #[error("the sandbox aborted the session: {0}")]
    Aborted(String),
    /// The sandbox process refused a request made of it (pause, resume);
    /// the text is its one-line reason.
    #[error("{0}")]
    Refused(String),
    /// The command could not be started.
    #[error("could not start the command ({}): {}", .0.kind.as_str(), .0.message)]
    Spawn(SpawnError),
    /// A file operation failed in the guest.
    #[error("file operation failed: {}", .0.message)]
    Fs(FsError),
    /// The command ran longer than its timeout and was killed.
    #[error("the command did not finish within {0:?} and was killed")]
    Timeout(Duration),
    /// Every session id granted by the relay is in use.
    #[error("all {0} session ids granted to this connection are in use")]
    NoFreeIds(u64),
    /// The session has already ended, so it takes no more input.
    #[error("the session has already ended")]
    SessionClosed,
    /// Stdin was written on a session opened without `stdin: true`.
    #[error("the command was started without stdin (set ExecOptions::stdin to stream input)")]
    StdinNotRequested,
    /// The guest sent a message that does not belong in this session.
    #[error("the sandbox sent an unexpected message: {0}")]
    Unexpected(String),
    /// A request could not be encoded.
    #[error("the request could not be encoded: {0}")]
    Encode(String),
    /// The guest named a directory entry that is not one path component; the
    /// copy stopped before the name touched the host.
    #[error("the sandbox sent an unsafe file name {name:?} in {dir} ({reason}); the copy stopped")]
    UnsafeName {
        /// The guest directory the name was listed in (or the guest path).
        dir: String,
        /// The refused name.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A host-side step of a copy out of the guest failed.
    #[error("cannot {what} {}: {source}", path.display())]
    Host {
        /// What was being done.
        what: &'static str,
        /// The host path.
        path: PathBuf,
        /// The underlying failure.
        source: io::Error,
    },
    /// A tree copied out of the guest is deeper than the copy allows.
    #[error("{path} is more than {max} directories deep; the copy stopped")]
    TooDeep {
        /// The guest directory at the limit.
        path: String,
        /// The deepest level copied.
        max: usize,
    },
    /// Reading or writing a local stream (the source or destination of a
    /// file transfer) failed.
    #[error("local I/O failed: {0}")]
    LocalIo(#[source] io::Error),
}

impl ClientError {
    pub(crate) fn host(what: &'static str, path: &std::path::Path, source: io::Error) -> ClientError {
        ClientError::Host { what, path: path.to_path_buf(), source }
    }
}

impl From<ClientError> for io::Error {
    fn from(e: ClientError) -> io::Error {
        let kind = match &e {
            ClientError::Disconnected => io::ErrorKind::ConnectionAborted,
            ClientError::SessionClosed | ClientError::StdinNotRequested => io::ErrorKind::BrokenPipe,
            ClientError::Timeout(_) => io::ErrorKind::TimedOut,
            _ => io::ErrorKind::Other,
        };
        io::Error::new(kind, e)
    }
}
