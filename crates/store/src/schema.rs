//! The on-disk schema, its migrations and how a file is recognised as ours.
//!
//! Identity: `PRAGMA application_id` is [`APPLICATION_ID`] in every alcove
//! database. `PRAGMA user_version` is the schema version: version `n` is
//! reached by applying `MIGRATIONS[0..n]` in order, each step inside the same
//! `BEGIN IMMEDIATE` transaction that also sets `application_id` and
//! `user_version`, so a file is never left half-migrated and two processes
//! opening a fresh file at once migrate it exactly once.
//!
//! A file is refused when:
//! - SQLite cannot read it as a database (not a database, encrypted, garbage);
//! - its `application_id` is neither 0 nor ours;
//! - its `application_id` is 0 but it has a non-zero `user_version` (another
//!   application's versioned schema), or `user_version` is 0 while it already
//!   holds tables (someone else's unversioned schema);
//! - its `user_version` is newer than [`SCHEMA_VERSION`].
//!
//! An empty file (or a database with no tables and both pragmas 0) is fresh
//! and gets the current schema.
//!
//! Schema v1 (all tables STRICT; enum columns carry CHECK constraints listing
//! the texts of [`SandboxStatus`](crate::SandboxStatus),
//! [`RunStatus`](crate::RunStatus) and
//! [`TerminationReason`](crate::TerminationReason)):
//!
//! - `sandbox(id, name UNIQUE, config_json CHECK json_valid, status,
//!   created_at_ms, updated_at_ms)`
//! - `run(id AUTOINCREMENT, sandbox_id → sandbox ON DELETE CASCADE, pid,
//!   status, exit_code, exit_signal, reason, detail, started_at_ms,
//!   terminated_at_ms)`, with `status = 'Running'` exactly when `reason` and
//!   `terminated_at_ms` are NULL; indexes `run_by_sandbox(sandbox_id, id)` and
//!   the partial `run_running(id) WHERE status = 'Running'`
//! - `sandbox_metric(id, sandbox_id → sandbox ON DELETE CASCADE, at_ms,
//!   cpu_usec, memory_bytes, io_read_bytes, io_write_bytes, net_rx_bytes,
//!   net_tx_bytes)` with all counters `>= 0`; index
//!   `sandbox_metric_newest(sandbox_id, at_ms DESC, id DESC)`
//!
//! Schema v2 adds `run.pid_start_ticks`: the start time of the run's
//! process in clock ticks since boot (`/proc/PID/stat` field 22), so the
//! process is told from a later one with the same pid without looking at the
//! wall clock; NULL for runs recorded before it.
//!
//! Schema v3 adds `network_flow`.
//!
//! Schema v4 adds the sandbox status `Paused` to the CHECK of
//! `sandbox.status`. SQLite cannot alter a CHECK, so the table is rebuilt
//! (new table, copy, drop, rename), which needs foreign keys off: with them
//! on, dropping `sandbox` would cascade to every run and metric.
//! [`migrate`] therefore runs with foreign keys off (the caller turns them
//! off outside its transaction, where SQLite honours it) and checks them
//! itself before it commits.

use std::path::Path;

use rusqlite::Connection;

use crate::StoreError;

/// The `PRAGMA application_id` of every alcove database: ASCII "ALCV".
pub const APPLICATION_ID: i32 = 0x414C_4356;

/// Migration steps: `MIGRATIONS[i]` takes the schema from version `i` to `i + 1`.
/// Append new steps; never edit a released one.
pub(crate) const MIGRATIONS: &[&str] = &[V1, V2, V3, V4];

/// The newest schema version this build knows (and creates).
pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

const V1: &str = r#"
CREATE TABLE sandbox (
    id            INTEGER PRIMARY KEY,
    name          TEXT    NOT NULL UNIQUE CHECK (name <> ''),
    config_json   TEXT    NOT NULL CHECK (json_valid(config_json)),
    status        TEXT    NOT NULL CHECK (status IN
                      ('Starting', 'Running', 'Draining', 'Stopped', 'Crashed')),
    created_at_ms INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL
) STRICT;

CREATE TABLE run (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    sandbox_id       INTEGER NOT NULL REFERENCES sandbox(id) ON DELETE CASCADE,
    pid              INTEGER NOT NULL CHECK (pid BETWEEN 0 AND 4294967295),
    status           TEXT    NOT NULL CHECK (status IN ('Running', 'Terminated')),
    exit_code        INTEGER,
    exit_signal      INTEGER,
    reason           TEXT    CHECK (reason IS NULL OR reason IN
                         ('Completed', 'Failed', 'IdleTimeout', 'MaxDurationExceeded',
                          'ShutdownRequested', 'Signal', 'AgentUnresponsive',
                          'NetworkPolicy', 'InternalError', 'Crashed')),
    detail           TEXT,
    started_at_ms    INTEGER NOT NULL,
    terminated_at_ms INTEGER,
    CHECK ((status = 'Running') = (reason IS NULL AND terminated_at_ms IS NULL)),
    CHECK (status = 'Terminated' OR (exit_code IS NULL AND exit_signal IS NULL))
) STRICT;

CREATE INDEX run_by_sandbox ON run(sandbox_id, id);
CREATE INDEX run_running ON run(id) WHERE status = 'Running';

CREATE TABLE sandbox_metric (
    id             INTEGER PRIMARY KEY,
    sandbox_id     INTEGER NOT NULL REFERENCES sandbox(id) ON DELETE CASCADE,
    at_ms          INTEGER NOT NULL,
    cpu_usec       INTEGER NOT NULL CHECK (cpu_usec >= 0),
    memory_bytes   INTEGER NOT NULL CHECK (memory_bytes >= 0),
    io_read_bytes  INTEGER NOT NULL CHECK (io_read_bytes >= 0),
    io_write_bytes INTEGER NOT NULL CHECK (io_write_bytes >= 0),
    net_rx_bytes   INTEGER NOT NULL CHECK (net_rx_bytes >= 0),
    net_tx_bytes   INTEGER NOT NULL CHECK (net_tx_bytes >= 0)
) STRICT;

CREATE INDEX sandbox_metric_newest ON sandbox_metric(sandbox_id, at_ms DESC, id DESC);
"#;

const V2: &str = r#"
ALTER TABLE run ADD COLUMN pid_start_ticks INTEGER CHECK (pid_start_ticks IS NULL OR pid_start_ticks >= 0);
"#;

/// What [`inspect`] found in a file SQLite could read.
/// Network flow records (issue 15), bounded per sandbox like metrics.
const V3: &str = r#"
CREATE TABLE network_flow (
    id               INTEGER PRIMARY KEY,
    sandbox_id       INTEGER NOT NULL REFERENCES sandbox(id) ON DELETE CASCADE,
    started_at_ms    INTEGER NOT NULL,
    duration_ms      INTEGER NOT NULL CHECK (duration_ms >= 0),
    protocol         TEXT    NOT NULL CHECK (protocol IN ('tcp', 'udp', 'icmp')),
    direction        TEXT    NOT NULL CHECK (direction IN ('outbound', 'inbound')),
    guest            TEXT    NOT NULL,
    remote           TEXT    NOT NULL,
    name             TEXT,
    allowed          INTEGER NOT NULL CHECK (allowed IN (0, 1)),
    decided_by       TEXT    NOT NULL,
    bytes_from_guest INTEGER NOT NULL CHECK (bytes_from_guest >= 0),
    bytes_to_guest   INTEGER NOT NULL CHECK (bytes_to_guest >= 0),
    close            TEXT    NOT NULL
) STRICT;

CREATE INDEX network_flow_newest ON network_flow(sandbox_id, id DESC);
"#;

const V4: &str = r#"
CREATE TABLE sandbox_v4 (
    id            INTEGER PRIMARY KEY,
    name          TEXT    NOT NULL UNIQUE CHECK (name <> ''),
    config_json   TEXT    NOT NULL CHECK (json_valid(config_json)),
    status        TEXT    NOT NULL CHECK (status IN
                      ('Starting', 'Running', 'Paused', 'Draining', 'Stopped', 'Crashed')),
    created_at_ms INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL
) STRICT;
INSERT INTO sandbox_v4 (id, name, config_json, status, created_at_ms, updated_at_ms)
    SELECT id, name, config_json, status, created_at_ms, updated_at_ms FROM sandbox;
DROP TABLE sandbox;
ALTER TABLE sandbox_v4 RENAME TO sandbox;
"#;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Identity {
    /// No schema yet: ours to initialise.
    Fresh,
    /// An alcove database at this schema version (possibly newer than ours).
    Alcove(u32),
}

/// Reads the identity pragmas and decides whether the file is ours.
pub(crate) fn inspect(conn: &Connection, path: &Path) -> Result<Identity, StoreError> {
    let app_id: i32 = conn.query_row("PRAGMA application_id", [], |r| r.get(0))?;
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let tables: i64 = conn.query_row(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'",
        [],
        |r| r.get(0),
    )?;
    let not_alcove = |why: String| StoreError::NotAlcove { path: path.to_owned(), why };
    if app_id != 0 && app_id != APPLICATION_ID {
        return Err(not_alcove(format!("its application_id is {app_id:#010x}, not alcove's {APPLICATION_ID:#010x}")));
    }
    if version == 0 {
        if tables > 0 {
            return Err(not_alcove(format!("it holds {tables} table(s) but no alcove schema version")));
        }
        return Ok(Identity::Fresh);
    }
    if app_id == 0 {
        return Err(not_alcove(format!("it has schema version {version} but not alcove's application_id")));
    }
    // user_version is a signed 32-bit header field; a negative one is not ours.
    let version =
        u32::try_from(version).map_err(|_| not_alcove(format!("its schema version {version} is negative")))?;
    Ok(Identity::Alcove(version))
}

/// Brings a database from `from` to [`SCHEMA_VERSION`]. Runs inside the
/// caller's `BEGIN IMMEDIATE` transaction, on a connection whose foreign
/// keys are off (see v4); the references are checked here before the
/// caller commits.
pub(crate) fn migrate(conn: &Connection, from: u32) -> Result<(), StoreError> {
    let start = usize::try_from(from).unwrap_or(usize::MAX);
    for (i, step) in MIGRATIONS.iter().enumerate().skip(start) {
        conn.execute_batch(step)?;
        // PRAGMA values cannot be bound parameters; these are integers we own.
        conn.execute_batch(&format!("PRAGMA user_version = {}; PRAGMA application_id = {APPLICATION_ID};", i + 1))?;
    }
    let broken: i64 = conn.query_row("SELECT count(*) FROM pragma_foreign_key_check", [], |r| r.get(0))?;
    if broken > 0 {
        return Err(StoreError::Sqlite(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CONSTRAINT_FOREIGNKEY),
            Some(format!("the schema migration would leave {broken} broken reference(s)")),
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_build_the_current_schema_from_scratch() {
        let conn = Connection::open_in_memory().expect("memory db");
        assert_eq!(inspect(&conn, Path::new(":memory:")).ok(), Some(Identity::Fresh));
        migrate(&conn, 0).expect("migrate");
        assert_eq!(inspect(&conn, Path::new(":memory:")).ok(), Some(Identity::Alcove(SCHEMA_VERSION)));
        let mut names: Vec<String> = conn
            .prepare("SELECT name FROM sqlite_master WHERE name NOT LIKE 'sqlite%' ORDER BY name")
            .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
            .expect("list schema");
        names.sort();
        assert_eq!(
            names,
            [
                "network_flow",
                "network_flow_newest",
                "run",
                "run_by_sandbox",
                "run_running",
                "sandbox",
                "sandbox_metric",
                "sandbox_metric_newest"
            ]
        );
        // Migrating an up-to-date database is a no-op.
        migrate(&conn, SCHEMA_VERSION).expect("no-op migrate");
    }

    #[test]
    fn check_constraints_reject_unknown_enum_text() {
        let conn = Connection::open_in_memory().expect("memory db");
        migrate(&conn, 0).expect("migrate");
        let bad = conn.execute(
            "INSERT INTO sandbox (name, config_json, status, created_at_ms, updated_at_ms) \
             VALUES ('a', '{}', 'Exploded', 0, 0)",
            [],
        );
        assert!(bad.is_err(), "bad status accepted");
        let bad_json = conn.execute(
            "INSERT INTO sandbox (name, config_json, status, created_at_ms, updated_at_ms) \
             VALUES ('a', '{', 'Stopped', 0, 0)",
            [],
        );
        assert!(bad_json.is_err(), "bad JSON accepted");
        conn.execute(
            "INSERT INTO sandbox (name, config_json, status, created_at_ms, updated_at_ms) \
             VALUES ('a', '{}', 'Stopped', 0, 0)",
            [],
        )
        .expect("good row");
        let running_with_reason = conn.execute(
            "INSERT INTO run (sandbox_id, pid, status, reason, started_at_ms) \
             VALUES (1, 1, 'Running', 'Completed', 0)",
            [],
        );
        assert!(running_with_reason.is_err(), "inconsistent run accepted");
        let bad_reason = conn.execute(
            "INSERT INTO run (sandbox_id, pid, status, reason, started_at_ms, terminated_at_ms) \
             VALUES (1, 1, 'Terminated', 'Bored', 0, 1)",
            [],
        );
        assert!(bad_reason.is_err(), "bad reason accepted");
    }
}
