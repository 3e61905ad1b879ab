//! alcove's SQLite persistence: sandboxes, their runs and metric samples.
//!
//! One [`Store`] wraps one rusqlite connection to `$ALCOVE_HOME/alcove.db`.
//! Several processes (every sandbox host process and the CLI) share that file,
//! so:
//!
//! - every connection runs with `journal_mode=WAL`, `synchronous=FULL`
//!   (a commit is durable when it returns, whoever else has the file open;
//!   a few commits whose facts a synced record implies skip their own sync),
//!   no checkpoint on close but an auto-checkpoint every 64 WAL pages,
//!   `foreign_keys=ON` and a `busy_timeout`;
//! - every write is one transaction opened with `BEGIN IMMEDIATE` and retried
//!   on `SQLITE_BUSY`/`SQLITE_LOCKED` with backoff until
//!   [`StoreOptions::retry_budget`] is spent, after which the call fails with
//!   [`StoreError::Busy`] having changed nothing;
//! - reads run in one deferred transaction (a consistent snapshot) with the
//!   same retry rule.
//!
//! The file is identified by `PRAGMA application_id` ([`APPLICATION_ID`]) and
//! versioned by `PRAGMA user_version` ([`SCHEMA_VERSION`]); see [`schema`] for
//! the tables and the rules used to refuse files that are not ours.
//!
//! Invariants kept by the store:
//! - a run is `Running` with no reason and no termination time, or
//!   `Terminated` with both (enforced by a CHECK constraint);
//! - a `Terminated` run is never changed again ([`StoreError::AlreadyFinished`]);
//! - run ids are never reused, even after their sandbox is deleted;
//! - at most [`StoreOptions::metric_retention`] metric rows are kept per
//!   sandbox (the newest ones);
//! - at most [`StoreOptions::flow_retention`] network flow rows are kept
//!   per sandbox (the newest ones);
//! - deleting a sandbox deletes its runs, metrics and flows.
#![warn(missing_docs)]

mod error;
mod model;
pub mod schema;
mod store;

pub use error::StoreError;
pub use model::{
    MetricSample, ParseEnumError, RunId, RunOutcome, RunRecord, RunStatus, SandboxRecord, SandboxStatus,
    TerminationReason,
};
pub use schema::{APPLICATION_ID, SCHEMA_VERSION};
pub use store::{FlowRow, Store, StoreOptions};
