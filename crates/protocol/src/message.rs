//! Messages carried in frame bodies.
//!
//! Who sends what, and on which id:
//!
//! | message | direction | id | flags |
//! |---|---|---|---|
//! | `Ready`, `Heartbeat` | guest → host | 0 | — |
//! | `Shutdown` | host → guest | 0 | SHUTDOWN |
//! | `Touch` | client → relay (not forwarded) | 0 | — |
//! | `ExecRequest`, `FsRequest` | client → guest | session | SESSION_START |
//! | `ExecStdin`, `ExecStdinEof`, `ExecResize`, `ExecSignal`, `FsData`, `FsEnd` | client → guest | session | — |
//! | `ExecStarted`, `ExecStdout`, `ExecStderr`, `FsData` | guest → client | session | — |
//! | `ExecStdoutPipe` | guest → client | session | FD |
//! | `ExecExited`, `ExecFailed`, `FsResponse` | guest → client | session | TERMINAL |
//! | `Credit` | both | session | — |
//! | `SessionAborted` | relay → client | session | TERMINAL |
//! | `SessionAborted` | relay → guest (the session's client is gone) | session | — |
//! | `SandboxRequest` | client → relay (not forwarded) | session | SESSION_START |
//! | `SandboxReply` | relay → client | session | TERMINAL |
//!
//! Flow control: the guest sends at most [`INITIAL_WINDOW`] bytes of frames
//! (header included) on a session before it receives `Credit` for them; the
//! relay returns credit as it hands frames to the client's socket, so a client
//! that stops reading stalls only its own sessions. Stdin works the same way
//! in the other direction, with the agent granting credit as it writes into
//! the process.

use serde::{Deserialize, Serialize};

/// Bytes of frames a sender may have in flight on one session before credit.
pub const INITIAL_WINDOW: u32 = 1024 * 1024;

/// Largest data chunk a sender puts in one frame.
pub const MAX_CHUNK: usize = 128 * 1024;

/// Every message of the protocol.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// The agent is up. Sent once by the guest; the relay caches it and hands
    /// it to each client after the handshake.
    Ready(Ready),
    /// Liveness from the agent, every second.
    Heartbeat {
        /// Increments by one per heartbeat.
        seq: u64,
        /// Sessions the agent is running.
        active_sessions: u32,
    },
    /// Host → guest: stop every session (SIGTERM, `grace_ms`, SIGKILL), sync
    /// and power off.
    Shutdown {
        /// Time between SIGTERM and SIGKILL.
        grace_ms: u32,
    },
    /// Client → relay: counts as activity for the idle timeout.
    Touch,
    /// Opens an exec session.
    ExecRequest(ExecRequest),
    /// The command is running.
    ExecStarted {
        /// Its pid inside the guest.
        pid: u32,
    },
    /// Bytes for the command's stdin.
    ExecStdin {
        /// The bytes.
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// The client will send no more stdin; the command sees EOF.
    ExecStdinEof,
    /// Bytes the command wrote to stdout (or to the terminal with a PTY).
    ExecStdout {
        /// The bytes.
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// Bytes the command wrote to stderr.
    ExecStderr {
        /// The bytes.
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// The command ended; closes the session.
    ExecExited(ExitStatus),
    /// The command could not be started; closes the session.
    ExecFailed(SpawnError),
    /// New terminal size for a PTY session.
    ExecResize(TtySize),
    /// Deliver a signal to the command's process group.
    ExecSignal {
        /// Signal number (Linux numbering).
        signal: i32,
    },
    /// Opens a file session.
    FsRequest(FsRequest),
    /// A chunk of file content (read results, or content to write).
    FsData {
        /// The bytes.
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// Client → guest: no more content for a write.
    FsEnd,
    /// Outcome of a file session; closes it.
    FsResponse(Result<FsReply, FsError>),
    /// The receiver consumed `bytes` of frames on this session; the sender
    /// may send that many more.
    Credit {
        /// Bytes of frames (headers included) consumed.
        bytes: u32,
    },
    /// Relay → client: the session ended without a reply from the guest
    /// (the sandbox is stopping, or the request broke the protocol).
    SessionAborted {
        /// Why.
        reason: String,
    },
    /// Guest → client, answering [`ExecRequest::stdout_pipe`]: the read end
    /// of the command's stdout pipe travels with this frame (flag
    /// [`crate::Flags::FD`]); no `ExecStdout` follows on this session. The
    /// client reads the pipe itself: what the command wrote before it exited
    /// is in the pipe when `ExecExited` arrives, and a pipe still held open
    /// by a background process is given up as the agent would (see
    /// [`OUTPUT_DRAIN_GRACE`]).
    ExecStdoutPipe,
    /// Client → relay, never forwarded to the guest: a request to the
    /// sandbox process itself. It opens a session of the client's range
    /// (flag SESSION_START) that the relay closes with one
    /// [`Message::SandboxReply`].
    SandboxRequest(SandboxRequest),
    /// Relay → client: how a [`Message::SandboxRequest`] went; closes its
    /// session. `Err` is one line for the user.
    SandboxReply(Result<(), String>),
}

/// What a client may ask of the sandbox process (not of the guest).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SandboxRequest {
    /// Freeze every process of the guest (the cgroup freezer).
    Pause,
    /// Let a paused guest run again.
    Resume,
}

/// How long output is still collected after a command exits while its pipe
/// stays open (a background child holds it).
pub const OUTPUT_DRAIN_GRACE: std::time::Duration = std::time::Duration::from_millis(100);
/// After that grace, a pipe that keeps producing is abandoned this much
/// later.
pub const OUTPUT_DRAIN_CAP: std::time::Duration = std::time::Duration::from_secs(2);

/// The agent's greeting.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ready {
    /// [`crate::PROTOCOL_VERSION`] of the agent.
    pub protocol_version: u32,
    /// The agent's crate version.
    pub agent_version: String,
    /// Where the time before `Ready` went.
    pub boot: BootTimings,
}

/// Boot timings measured by the agent, in microseconds since the guest's
/// clock started (kernel boot in a VM, namespace creation in a jail).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootTimings {
    /// When the agent's `main` started.
    pub agent_start_us: u64,
    /// When mounts, hostname and the rootfs were in place.
    pub mounts_done_us: u64,
    /// When `Ready` was sent.
    pub ready_us: u64,
}

/// A command to run.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecRequest {
    /// Program and arguments; `argv[0]` is looked up in `PATH` if it has no `/`.
    pub argv: Vec<String>,
    /// Environment, added to the sandbox's defaults (later entries win).
    pub env: Vec<(String, String)>,
    /// Working directory; the user's home or `/` when absent.
    pub cwd: Option<String>,
    /// User name or uid, optionally `user:group`; root when absent.
    pub user: Option<String>,
    /// Run on a PTY of this size; pipes when absent.
    pub tty: Option<TtySize>,
    /// Whether the client will stream stdin; otherwise stdin is /dev/null.
    pub stdin: bool,
    /// Resource limits applied before exec.
    pub rlimits: Vec<Rlimit>,
    /// The client can take the command's stdout pipe itself (it reads this
    /// connection with `SCM_RIGHTS`): the agent then answers
    /// [`Message::ExecStdoutPipe`] with the pipe's read end instead of
    /// relaying stdout, where it can (a jail's socket channel, no PTY); the
    /// output then never passes through the agent or the relay. Where it
    /// cannot, stdout comes as `ExecStdout` frames as usual.
    pub stdout_pipe: bool,
}

/// A terminal size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TtySize {
    /// Rows.
    pub rows: u16,
    /// Columns.
    pub cols: u16,
}

/// One resource limit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rlimit {
    /// Resource name as in `ulimit`/prlimit: `nofile`, `nproc`, `as`, `cpu`,
    /// `fsize`, `stack`, `core`, `memlock`.
    pub resource: String,
    /// Soft limit.
    pub soft: u64,
    /// Hard limit.
    pub hard: u64,
}

/// How a command ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitStatus {
    /// Exit code when it exited.
    pub code: Option<i32>,
    /// Signal number when a signal killed it.
    pub signal: Option<i32>,
    /// Whether the kernel's OOM killer ended it.
    pub oom_killed: bool,
}

/// Why a command could not be started.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpawnError {
    /// The class of failure.
    pub kind: SpawnErrorKind,
    /// Human-readable detail.
    pub message: String,
}

/// Classes of spawn failure; clients map them to exit codes (127 for
/// `NotFound`, 126 for the other "cannot invoke" kinds).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SpawnErrorKind {
    /// The program does not exist.
    NotFound,
    /// The program exists but may not be executed by this user.
    PermissionDenied,
    /// The file is not a valid executable.
    NotExecutable,
    /// The working directory does not exist or is not usable.
    BadCwd,
    /// The user or group does not exist, or switching to it failed.
    UserSetupFailed,
    /// A PTY, pipe or rlimit could not be set up.
    ResourceSetupFailed,
    /// The request itself is invalid (empty argv, bad rlimit name, …).
    InvalidRequest,
    /// The sandbox is shutting down.
    ShuttingDown,
    /// Anything else.
    Other,
}

impl SpawnErrorKind {
    /// The snake_case name used in CLI output and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            SpawnErrorKind::NotFound => "not_found",
            SpawnErrorKind::PermissionDenied => "permission_denied",
            SpawnErrorKind::NotExecutable => "not_executable",
            SpawnErrorKind::BadCwd => "bad_cwd",
            SpawnErrorKind::UserSetupFailed => "user_setup_failed",
            SpawnErrorKind::ResourceSetupFailed => "resource_setup_failed",
            SpawnErrorKind::InvalidRequest => "invalid_request",
            SpawnErrorKind::ShuttingDown => "shutting_down",
            SpawnErrorKind::Other => "other",
        }
    }
}

/// A file operation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FsRequest {
    /// Metadata of a path (not following a final symlink).
    Stat {
        /// Absolute guest path.
        path: String,
    },
    /// Entries of a directory.
    List {
        /// Absolute guest path.
        path: String,
    },
    /// Stream a file's content back as `FsData` chunks.
    Read {
        /// Absolute guest path.
        path: String,
    },
    /// Create or truncate a file from `FsData` chunks ended by `FsEnd`.
    Write {
        /// Absolute guest path.
        path: String,
        /// Permission bits for a new file.
        mode: u32,
    },
    /// Create a directory.
    Mkdir {
        /// Absolute guest path.
        path: String,
        /// Create missing parents too.
        parents: bool,
        /// Permission bits.
        mode: u32,
    },
    /// Remove a file or directory.
    Remove {
        /// Absolute guest path.
        path: String,
        /// Remove a directory's content too.
        recursive: bool,
    },
    /// Rename within the guest.
    Rename {
        /// Existing path.
        from: String,
        /// New path.
        to: String,
    },
    /// Copy a file or a directory tree within the guest.
    Copy {
        /// Existing path.
        from: String,
        /// Destination path.
        to: String,
    },
}

/// Successful outcome of a file operation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FsReply {
    /// Metadata from `Stat`.
    Stat(FileStat),
    /// Entries from `List`, sorted by name.
    List(Vec<DirEntry>),
    /// The operation completed; `bytes` of content were moved.
    Done {
        /// Content bytes read, written or copied.
        bytes: u64,
    },
}

/// Metadata of one path.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileStat {
    /// What the path is.
    pub kind: FileKind,
    /// Size in bytes.
    pub size: u64,
    /// Permission and type bits (`st_mode`).
    pub mode: u32,
    /// Owner uid.
    pub uid: u32,
    /// Owner gid.
    pub gid: u32,
    /// Modification time, seconds since the epoch.
    pub mtime: i64,
    /// Target of a symlink.
    pub link_target: Option<String>,
}

/// One directory entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirEntry {
    /// File name (not a path).
    pub name: String,
    /// Its metadata.
    pub stat: FileStat,
}

/// Kinds of file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FileKind {
    /// Regular file.
    File,
    /// Directory.
    Dir,
    /// Symbolic link.
    Symlink,
    /// Anything else (device, fifo, socket).
    Other,
}

/// Why a file operation failed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsError {
    /// The class of failure.
    pub kind: FsErrorKind,
    /// Human-readable detail, naming the path.
    pub message: String,
}

/// Classes of file-operation failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FsErrorKind {
    /// The path does not exist.
    NotFound,
    /// Access denied.
    PermissionDenied,
    /// The destination exists.
    AlreadyExists,
    /// A directory was expected.
    NotADirectory,
    /// A file was expected.
    IsADirectory,
    /// A directory to remove is not empty and `recursive` was not set.
    DirectoryNotEmpty,
    /// The request is invalid (relative path, …).
    InvalidInput,
    /// Anything else.
    Other,
}
