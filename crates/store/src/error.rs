//! The store's error type.

use std::path::PathBuf;

use rusqlite::ErrorCode;

use crate::model::RunId;

/// Everything that can go wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database file (or its directory) could not be created or opened.
    #[error("cannot open the alcove database {path}: {why}")]
    Open {
        /// The database path.
        path: PathBuf,
        /// What failed.
        why: String,
    },
    /// The file exists but is not an alcove database.
    #[error("{path} is not an alcove database: {why}")]
    NotAlcove {
        /// The database path.
        path: PathBuf,
        /// Why it was refused.
        why: String,
    },
    /// The database was written by a newer alcove.
    #[error("the alcove database has schema version {found}, but this build supports only up to version {supported}; upgrade alcove")]
    TooNew {
        /// The schema version found in the file.
        found: u32,
        /// The newest schema version this build knows.
        supported: u32,
    },
    /// A sandbox with this name already exists.
    #[error("a sandbox named \"{0}\" already exists")]
    DuplicateName(String),
    /// No sandbox has this name.
    #[error("no sandbox named \"{0}\"")]
    NoSuchSandbox(String),
    /// No run has this id.
    #[error("no run with id {0}")]
    NoSuchRun(RunId),
    /// The run was already terminated; nothing was changed.
    #[error("run {0} has already finished")]
    AlreadyFinished(RunId),
    /// The database stayed locked by other connections for the whole retry budget.
    #[error("the alcove database stayed locked by another process while trying to {what}; nothing was changed")]
    Busy {
        /// The operation that gave up.
        what: String,
    },
    /// A sandbox config is not valid JSON.
    #[error("the config of sandbox \"{name}\" is not valid JSON: {why}")]
    InvalidConfig {
        /// The sandbox name.
        name: String,
        /// The JSON parser's complaint.
        why: String,
    },
    /// A write found the database (or its file system) read-only; nothing
    /// was changed.
    #[error("cannot {what}: the alcove database {path} is read-only")]
    ReadOnly {
        /// The operation that failed.
        what: String,
        /// The database path.
        path: PathBuf,
    },
    /// A write found no space left for the database; nothing was changed.
    #[error("cannot {what}: the disk holding the alcove database {path} is full")]
    Full {
        /// The operation that failed.
        what: String,
        /// The database path.
        path: PathBuf,
    },
    /// A stored value could not be read back (bad enum text, out-of-range number).
    #[error("the alcove database holds a corrupt value: {0}")]
    Corrupt(String),
    /// Any other SQLite error.
    #[error("SQLite error: {0}")]
    Sqlite(#[source] rusqlite::Error),
}

impl StoreError {
    /// True for [`StoreError::Busy`] and for raw SQLite busy/locked errors.
    pub fn is_busy(&self) -> bool {
        match self {
            StoreError::Busy { .. } => true,
            StoreError::Sqlite(e) => sqlite_is_busy(e),
            _ => false,
        }
    }
}

/// True when a rusqlite error is `SQLITE_BUSY` or `SQLITE_LOCKED` (any extended code).
pub(crate) fn sqlite_is_busy(e: &rusqlite::Error) -> bool {
    matches!(e.sqlite_error_code(), Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked))
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        match e {
            rusqlite::Error::FromSqlConversionFailure(col, ty, err) => {
                StoreError::Corrupt(format!("column {col} ({ty}): {err}"))
            }
            rusqlite::Error::IntegralValueOutOfRange(col, v) => {
                StoreError::Corrupt(format!("column {col}: value {v} is out of range"))
            }
            other => StoreError::Sqlite(other),
        }
    }
}
