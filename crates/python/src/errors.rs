//! alcove's errors as the exception classes of `alcove.errors` (defined in
//! Python, so they carry docstrings and attributes like `kind`). Each
//! message is the one line alcove prints.

use alcove::EmbedError;
use alcove_client::{ClientError, FsErrorKind};
use pyo3::prelude::*;

/// Why an operation failed, before it becomes a Python exception.
#[derive(Debug)]
pub(crate) enum Error {
    Embed(EmbedError),
    /// The sandbox could not be created or started.
    Start(String),
    /// The handle was closed (removed, or `close()`d) before this call.
    Closed(String),
}

impl From<EmbedError> for Error {
    fn from(e: EmbedError) -> Error {
        Error::Embed(e)
    }
}

impl From<ClientError> for Error {
    fn from(e: ClientError) -> Error {
        Error::Embed(EmbedError::Client(e))
    }
}

/// `NotFound` → `not_found`.
fn fs_kind(kind: FsErrorKind) -> &'static str {
    match kind {
        FsErrorKind::NotFound => "not_found",
        FsErrorKind::PermissionDenied => "permission_denied",
        FsErrorKind::AlreadyExists => "already_exists",
        FsErrorKind::NotADirectory => "not_a_directory",
        FsErrorKind::IsADirectory => "is_a_directory",
        FsErrorKind::DirectoryNotEmpty => "directory_not_empty",
        FsErrorKind::InvalidInput => "invalid_input",
        _ => "other",
    }
}

impl Error {
    /// The exception class name in `alcove.errors` and its arguments.
    fn class_and_args(&self) -> (&'static str, String, Option<&'static str>) {
        let msg = self.to_string();
        match self {
            Error::Start(_) => ("StartError", msg, None),
            Error::Closed(_) => ("SandboxClosed", msg, None),
            Error::Embed(e) => match e {
                EmbedError::NotFound(_) => ("SandboxNotFound", msg, None),
                EmbedError::AlreadyExists(_) => ("SandboxExists", msg, None),
                EmbedError::NotRunning(_) => ("SandboxNotRunning", msg, None),
                EmbedError::InvalidArgument(_) => ("InvalidArgument", msg, None),
                EmbedError::NoExecutable(_) => ("StartError", msg, None),
                EmbedError::Failed(_) => ("AlcoveError", msg, None),
                EmbedError::Client(c) => match c {
                    ClientError::Spawn(s) => ("SpawnError", msg, Some(s.kind.as_str())),
                    ClientError::Fs(f) => ("FileError", msg, Some(fs_kind(f.kind))),
                    ClientError::Timeout(_) => ("Timeout", msg, None),
                    ClientError::NotRunning { .. } | ClientError::NoListener { .. } => ("SandboxNotRunning", msg, None),
                    ClientError::Disconnected | ClientError::Aborted(_) | ClientError::HandshakeClosed => {
                        ("ConnectionLost", msg, None)
                    }
                    ClientError::Layout(_) => ("InvalidArgument", msg, None),
                    _ => ("AlcoveError", msg, None),
                },
            },
        }
    }

    /// The Python exception.
    pub(crate) fn into_py_err(self, py: Python<'_>) -> PyErr {
        let (class, msg, kind) = self.class_and_args();
        let made = || -> PyResult<PyErr> {
            let errors = py.import("alcove.errors")?;
            let cls = errors.getattr(class)?;
            let exc = match kind {
                Some(k) => cls.call1((msg.clone(), k))?,
                None => cls.call1((msg.clone(),))?,
            };
            Ok(PyErr::from_value(exc))
        };
        // Without the Python package (the native module imported alone),
        // a plain RuntimeError still says what happened.
        made().unwrap_or_else(|_| pyo3::exceptions::PyRuntimeError::new_err(msg))
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Embed(e) => write!(f, "{e}"),
            Error::Start(m) | Error::Closed(m) => f.write_str(m),
        }
    }
}
