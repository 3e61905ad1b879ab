//! The one error type of this crate.
//!
//! Every message is one sentence on one line, fit to print as-is to a user.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong while resolving, building or importing a root filesystem.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    /// No imported rootfs has this name, or a given path does not exist.
    #[error(
        "rootfs {0:?} does not exist (see `alcove rootfs list`, or import one with `alcove rootfs import NAME FILE`)"
    )]
    NotFound(String),
    /// A rootfs path was given but it is not a directory.
    #[error("rootfs path {} is not a directory", .0.display())]
    NotADirectory(PathBuf),
    /// The root filesystem has no `/bin/sh`.
    #[error("rootfs {} has no shell: bin/sh is missing or dangling", .0.display())]
    NoShell(PathBuf),
    /// A rootfs name does not follow `[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}`.
    #[error("invalid rootfs name {name:?}: {why}")]
    InvalidName {
        /// The rejected name.
        name: String,
        /// What is wrong with it.
        why: String,
    },
    /// A rootfs with this name already exists.
    #[error("rootfs {0:?} already exists (remove it first with `alcove rootfs rm {0}`)")]
    AlreadyExists(String),
    /// An archive entry tries to escape the root or create something unsafe.
    #[error("refusing archive entry {entry:?}: {why}")]
    Hostile {
        /// The entry's path as written in the archive.
        entry: String,
        /// Why it is refused.
        why: String,
    },
    /// The file is not a tar, OCI image layout or docker-save archive.
    #[error("unrecognised archive format: {0}")]
    UnknownFormat(String),
    /// An OCI or docker-save archive is recognised but inconsistent.
    #[error("malformed image archive: {0}")]
    Malformed(String),
    /// The default rootfs cannot be built because apt-get is missing or failed.
    #[error("cannot build the default rootfs: {hint}")]
    AptMissing {
        /// What failed and how to provide a rootfs instead.
        hint: String,
    },
    /// An image could not be pulled from its registry (unknown image or tag, registry down,
    /// credentials refused, no variant for this platform, a blob that fails its digest…).
    #[error("cannot pull image {reference}: {why}")]
    Pull {
        /// The reference as the user gave it.
        reference: String,
        /// What went wrong, one line.
        why: String,
    },
    /// An I/O operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

impl RootfsError {
    /// Wraps an I/O error with a description of what was being done.
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        RootfsError::Io { context: context.into(), source }
    }

    pub(crate) fn pull(reference: impl Into<String>, why: impl Into<String>) -> Self {
        RootfsError::Pull { reference: reference.into(), why: why.into() }
    }

    pub(crate) fn hostile(entry: impl Into<String>, why: impl Into<String>) -> Self {
        RootfsError::Hostile { entry: entry.into(), why: why.into() }
    }
}

/// Adds context to `io::Result`s.
pub(crate) trait IoContext<T> {
    /// Maps the error to [`RootfsError::Io`] with a context computed lazily.
    fn ctx<F: FnOnce() -> String>(self, f: F) -> Result<T, RootfsError>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn ctx<F: FnOnce() -> String>(self, f: F) -> Result<T, RootfsError> {
        self.map_err(|e| RootfsError::io(f(), e))
    }
}
