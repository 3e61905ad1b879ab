//! The CLI's error type and exit codes.
//!
//! Exit codes follow docker: a command's own exit code is passed through;
//! [`EXIT_ALCOVE`] (125) when alcove itself fails (bad input included);
//! [`EXIT_CANNOT_INVOKE`] (126) when the command exists but cannot be run;
//! [`EXIT_NOT_FOUND`] (127) when it does not exist. Every failure is printed
//! as one line, `alcove: <message>`, never with a backtrace.

use alcove_client::{ClientError, SpawnErrorKind};

/// alcove itself failed.
pub const EXIT_ALCOVE: i32 = 125;
/// The command could not be invoked.
pub const EXIT_CANNOT_INVOKE: i32 = 126;
/// The command was not found.
pub const EXIT_NOT_FOUND: i32 = 127;

/// Why a CLI command failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A failure of alcove or of its input (exit 125).
    #[error("{0}")]
    Failed(String),
    /// The command could not be started in the sandbox (126 or 127).
    #[error("{message}")]
    Spawn {
        /// The message.
        message: String,
        /// 126 or 127.
        code: i32,
    },
}

impl CliError {
    /// A failure with this message.
    pub fn msg(message: impl Into<String>) -> CliError {
        CliError::Failed(message.into())
    }

    /// The process exit code for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Failed(_) => EXIT_ALCOVE,
            CliError::Spawn { code, .. } => *code,
        }
    }

    /// Maps a client error; a spawn failure keeps its docker exit code.
    pub fn client(e: ClientError) -> CliError {
        match &e {
            ClientError::Spawn(s) => {
                let code = match s.kind {
                    SpawnErrorKind::NotFound => EXIT_NOT_FOUND,
                    SpawnErrorKind::PermissionDenied
                    | SpawnErrorKind::NotExecutable
                    | SpawnErrorKind::BadCwd
                    | SpawnErrorKind::UserSetupFailed => EXIT_CANNOT_INVOKE,
                    _ => return CliError::Failed(one_line(&e.to_string())),
                };
                CliError::Spawn { message: one_line(&e.to_string()), code }
            }
            _ => CliError::Failed(one_line(&e.to_string())),
        }
    }
}

impl From<alcove_store::StoreError> for CliError {
    fn from(e: alcove_store::StoreError) -> CliError {
        CliError::Failed(one_line(&e.to_string()))
    }
}

impl From<alcove_rootfs::RootfsError> for CliError {
    fn from(e: alcove_rootfs::RootfsError) -> CliError {
        CliError::Failed(one_line(&e.to_string()))
    }
}

impl From<ClientError> for CliError {
    fn from(e: ClientError) -> CliError {
        CliError::client(e)
    }
}

/// Result of a CLI step.
pub type CliResult<T> = Result<T, CliError>;

/// Squeezes a message onto one line.
pub fn one_line(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for (i, line) in s.lines().map(str::trim).filter(|l| !l.is_empty()).enumerate() {
        if i > 0 {
            out.push_str("; ");
        }
        out.push_str(line);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use alcove_client::SpawnError;

    #[test]
    fn spawn_errors_map_to_docker_codes() {
        let spawn = |kind| ClientError::Spawn(SpawnError { kind, message: "x".into() });
        assert_eq!(CliError::client(spawn(SpawnErrorKind::NotFound)).exit_code(), 127);
        assert_eq!(CliError::client(spawn(SpawnErrorKind::PermissionDenied)).exit_code(), 126);
        assert_eq!(CliError::client(spawn(SpawnErrorKind::Other)).exit_code(), 125);
        assert_eq!(CliError::client(ClientError::Disconnected).exit_code(), 125);
    }

    #[test]
    fn messages_are_squeezed_onto_one_line() {
        assert_eq!(one_line("a\n  b\n\nc "), "a; b; c");
    }
}
