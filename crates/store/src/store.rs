//! [`Store`]: the connection, the retry discipline and every query.
//!
//! Over 600 lines on purpose: every query sits next to the one retry
//! discipline it must use (network flows are in `store/flows.rs`).
//!
//! All writes go through `Store::write`, which opens `BEGIN IMMEDIATE`, runs
//! the body, commits, and on `SQLITE_BUSY`/`SQLITE_LOCKED` (from any of those
//! steps) rolls back and retries with exponential backoff until
//! [`StoreOptions::retry_budget`] is spent. The body may therefore run more
//! than once; it only touches the transaction. Each attempt's SQLite busy
//! wait is capped by the remaining budget, so a call gives up within about
//! `retry_budget` however `busy_timeout` is set.

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, ErrorCode, OpenFlags, OptionalExtension, Row};
use rusqlite::{Transaction, TransactionBehavior};

use crate::model::{
    MetricSample, RunId, RunOutcome, RunRecord, RunStatus, SandboxRecord, SandboxStatus, TerminationReason,
};
use crate::schema::{self, Identity, SCHEMA_VERSION};
use crate::StoreError;

mod flows;
pub use flows::FlowRow;

/// Tuning of a [`Store`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreOptions {
    /// SQLite's own wait for a lock within one attempt.
    pub busy_timeout: Duration,
    /// Total time one call may spend retrying before [`StoreError::Busy`].
    pub retry_budget: Duration,
    /// Metric rows kept per sandbox (the newest ones). 0 keeps none.
    pub metric_retention: usize,
    /// Network flow rows kept per sandbox (the newest ones). 0 keeps none.
    pub flow_retention: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            busy_timeout: Duration::from_secs(5),
            retry_budget: Duration::from_secs(10),
            metric_retention: 3600,
            flow_retention: 10_000,
        }
    }
}

/// alcove's database: one SQLite connection. `Send`, not `Sync`.
#[derive(Debug)]
pub struct Store {
    conn: Connection,
    path: PathBuf,
    opts: StoreOptions,
}

const SANDBOX_COLUMNS: &str = "id, name, config_json, status, created_at_ms, updated_at_ms";
const RUN_SELECT: &str = "SELECT r.id, s.name, r.pid, r.status, r.exit_code, r.exit_signal, \
     r.reason, r.detail, r.started_at_ms, r.terminated_at_ms, r.pid_start_ticks \
     FROM run r JOIN sandbox s ON s.id = r.sandbox_id";
const METRIC_COLUMNS: &str = "at_ms, cpu_usec, memory_bytes, io_read_bytes, io_write_bytes, net_rx_bytes, net_tx_bytes";

/// WAL pages after which a commit checkpoints (SQLite's default is 1000);
/// see `Store::init`.
const WAL_AUTOCHECKPOINT_PAGES: i64 = 64;
const FIRST_BACKOFF: Duration = Duration::from_millis(2);
const MAX_BACKOFF: Duration = Duration::from_millis(100);

/// Whether a commit is on disk when it returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Durability {
    /// `synchronous=FULL`: the WAL is synced at the commit.
    Synced,
    /// `synchronous=NORMAL`: the commit reaches the disk with the next
    /// synced one (the WAL is one file, synced as a whole). For facts a
    /// synced record already implies, or whose loss is harmless.
    Implied,
}

impl Store {
    /// Opens (creating if needed) the database at `path` with default options.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        Store::open_with(path, StoreOptions::default())
    }

    /// Opens (creating if needed) the database at `path`, creating its
    /// directory, checking the file is an alcove database this build
    /// understands, setting the connection pragmas and migrating the schema.
    pub fn open_with(path: &Path, opts: StoreOptions) -> Result<Store, StoreError> {
        let open_err = |why: String| StoreError::Open { path: path.to_owned(), why };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            // Owner-only, like everything alcove creates under its home
            // (whatever the umask of the process creating it).
            std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700)
                .create(dir)
                .map_err(|e| open_err(format!("cannot create directory {}: {e}", dir.display())))?;
        }
        // Sandbox configs (environment values included) live here: the file
        // is created owner-only, and SQLite gives its -wal and -shm files the
        // same mode.
        if let Err(e) = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path) {
            if e.kind() != std::io::ErrorKind::AlreadyExists {
                return Err(open_err(e.to_string()));
            }
        }
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(path, flags).map_err(|e| open_err(e.to_string()))?;
        let store = Store { conn, path: path.to_owned(), opts };
        store.init().map_err(|e| store.classify_open_error(e))?;
        Ok(store)
    }

    fn init(&self) -> Result<(), StoreError> {
        self.conn.busy_timeout(self.opts.busy_timeout)?;
        self.conn.pragma_update(None, "foreign_keys", true)?;
        // One read transaction: the pragmas and the table count must come from
        // the same snapshot, or a concurrent first migration looks foreign.
        let identity = self.read("open the database", |c| schema::inspect(c, &self.path))?;
        check_version(identity)?;
        let mode: String = self
            .retry("switch the database to WAL", |c| Ok(c.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Open {
                path: self.path.clone(),
                why: format!("SQLite kept journal mode {mode:?} instead of WAL"),
            });
        }
        // Every commit is on disk when it returns: FULL syncs the WAL at each
        // commit (0.1-0.2 ms here). NORMAL would leave the newest commits to
        // a later checkpoint, which a closing connection runs only when it is
        // the last one: with any other sandbox process open, a power loss
        // could take back a run's end already reported.
        self.conn.pragma_update(None, "synchronous", "FULL")?;
        // With every commit synced, the checkpoint a last connection runs as
        // it closes buys nothing but time (about 1 ms of a cold `run`). The
        // WAL is checkpointed by SQLite's auto-checkpoint instead, at 64
        // pages rather than 1000: the next first connection reads and
        // checksums the whole WAL to rebuild its index, and at 1000 pages
        // (4 MiB) that read cost more than the checkpoint it replaced
        // (bench/compare cold run: 1000 pages 1.22-1.29x crun, 256 pages
        // 1.01-1.12x, 64 pages 0.97-0.98x; BENCHMARKS.md).
        self.conn.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true)?;
        self.conn.pragma_update(None, "wal_autocheckpoint", WAL_AUTOCHECKPOINT_PAGES)?;
        if identity != Identity::Alcove(SCHEMA_VERSION) {
            // A migration may rebuild a referenced table (schema.rs, v4):
            // foreign keys off, which SQLite honours only outside a
            // transaction; `migrate` checks the references itself.
            self.conn.pragma_update(None, "foreign_keys", false)?;
            let migrated = self.write("migrate the database schema", |tx| {
                // Re-read under the write lock: another process may have migrated.
                match check_version(schema::inspect(tx, &self.path)?)? {
                    Identity::Fresh => schema::migrate(tx, 0),
                    Identity::Alcove(v) => schema::migrate(tx, v),
                }
            });
            self.conn.pragma_update(None, "foreign_keys", true)?;
            migrated?;
        }
        Ok(())
    }

    /// Turns low-level failures during open into the documented errors.
    fn classify_open_error(&self, e: StoreError) -> StoreError {
        let code = match &e {
            StoreError::Sqlite(inner) => inner.sqlite_error_code(),
            _ => None,
        };
        match code {
            Some(ErrorCode::NotADatabase) => {
                StoreError::NotAlcove { path: self.path.clone(), why: "file is not a database".into() }
            }
            Some(
                ErrorCode::CannotOpen | ErrorCode::PermissionDenied | ErrorCode::ReadOnly | ErrorCode::SystemIoFailure,
            ) => StoreError::Open { path: self.path.clone(), why: e.to_string() },
            _ => e,
        }
    }

    /// The database path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The options this store was opened with.
    pub fn options(&self) -> &StoreOptions {
        &self.opts
    }

    // ---- sandboxes ----

    /// Creates a sandbox in state `Stopped`; [`StoreError::DuplicateName`] if
    /// the name is taken.
    pub fn create_sandbox(&self, name: &str, config_json: &str) -> Result<SandboxRecord, StoreError> {
        check_config(name, config_json)?;
        let sql = format!(
            "INSERT INTO sandbox (name, config_json, status, created_at_ms, updated_at_ms) \
             VALUES (?1, ?2, ?3, ?4, ?4) ON CONFLICT(name) DO NOTHING RETURNING {SANDBOX_COLUMNS}"
        );
        self.write("create a sandbox", |tx| {
            tx.query_row(&sql, params![name, config_json, SandboxStatus::Stopped, now_ms()], sandbox_row)
                .optional()?
                .ok_or_else(|| StoreError::DuplicateName(name.to_owned()))
        })
    }

    /// Creates a sandbox (state `Stopped`) or replaces the config of an
    /// existing one, keeping its status and creation time.
    pub fn upsert_sandbox(&self, name: &str, config_json: &str) -> Result<SandboxRecord, StoreError> {
        check_config(name, config_json)?;
        let sql = format!(
            "INSERT INTO sandbox (name, config_json, status, created_at_ms, updated_at_ms) \
             VALUES (?1, ?2, ?3, ?4, ?4) ON CONFLICT(name) DO UPDATE SET \
             config_json = excluded.config_json, updated_at_ms = excluded.updated_at_ms \
             RETURNING {SANDBOX_COLUMNS}"
        );
        self.write("save a sandbox", |tx| {
            Ok(tx.query_row(&sql, params![name, config_json, SandboxStatus::Stopped, now_ms()], sandbox_row)?)
        })
    }

    /// The sandbox named `name`, if any.
    pub fn sandbox(&self, name: &str) -> Result<Option<SandboxRecord>, StoreError> {
        let sql = format!("SELECT {SANDBOX_COLUMNS} FROM sandbox WHERE name = ?1");
        self.read("read a sandbox", |c| Ok(c.query_row(&sql, [name], sandbox_row).optional()?))
    }

    /// Every sandbox, ordered by name.
    pub fn sandboxes(&self) -> Result<Vec<SandboxRecord>, StoreError> {
        let sql = format!("SELECT {SANDBOX_COLUMNS} FROM sandbox ORDER BY name");
        self.read("list sandboxes", |c| {
            let mut stmt = c.prepare_cached(&sql)?;
            let rows = stmt.query_map([], sandbox_row)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    /// Every sandbox with its newest run (if any), ordered by name, from one
    /// snapshot: a sandbox another process removes meanwhile is either
    /// listed whole or not at all.
    pub fn sandboxes_with_latest_run(&self) -> Result<Vec<(SandboxRecord, Option<RunRecord>)>, StoreError> {
        let sandboxes = format!("SELECT {SANDBOX_COLUMNS} FROM sandbox ORDER BY name");
        let latest = format!("{RUN_SELECT} WHERE r.sandbox_id = ?1 ORDER BY r.id DESC LIMIT 1");
        self.read("list sandboxes", |c| {
            let mut stmt = c.prepare_cached(&sandboxes)?;
            let list = stmt.query_map([], sandbox_row)?.collect::<Result<Vec<_>, _>>()?;
            let mut run = c.prepare_cached(&latest)?;
            list.into_iter()
                .map(|sb| {
                    let last = run.query_row([sb.id], run_row).optional()?;
                    Ok((sb, last))
                })
                .collect()
        })
    }

    /// Records a new status for a sandbox.
    ///
    /// `Running` is committed without its own sync ([`Durability::Implied`]):
    /// the run row [`Store::start_run`] synced already records the run, and
    /// after a power loss the reaper finalises that run (Crashed) whether or
    /// not this status survived; the next synced commit carries it anyway.
    pub fn set_sandbox_status(&self, name: &str, status: SandboxStatus) -> Result<(), StoreError> {
        let durability = if status == SandboxStatus::Running { Durability::Implied } else { Durability::Synced };
        self.write_with(durability, "set a sandbox status", |tx| {
            let n = tx.execute(
                "UPDATE sandbox SET status = ?1, updated_at_ms = ?2 WHERE name = ?3",
                params![status, now_ms(), name],
            )?;
            if n == 0 {
                return Err(StoreError::NoSuchSandbox(name.to_owned()));
            }
            Ok(())
        })
    }

    /// Deletes a sandbox with its runs and metrics; false if it did not exist.
    pub fn delete_sandbox(&self, name: &str) -> Result<bool, StoreError> {
        self.write("delete a sandbox", |tx| Ok(tx.execute("DELETE FROM sandbox WHERE name = ?1", [name])? > 0))
    }

    // ---- runs ----

    /// Records a new `Running` run of `sandbox` with host pid `pid` (start
    /// time unknown) and sets the sandbox to `Starting`, in one transaction.
    pub fn start_run(&self, sandbox: &str, pid: u32) -> Result<RunId, StoreError> {
        self.start_run_of(sandbox, pid, None)
    }

    /// [`Store::start_run`] with the start time of the process `pid` in clock
    /// ticks since boot, which identifies it exactly (see
    /// [`RunRecord::pid_start_ticks`]).
    pub fn start_run_of(&self, sandbox: &str, pid: u32, start_ticks: Option<u64>) -> Result<RunId, StoreError> {
        let ticks = start_ticks.map(clamp);
        self.write("start a run", |tx| {
            let sid = sandbox_id(tx, sandbox)?;
            let now = now_ms();
            tx.execute(
                "INSERT INTO run (sandbox_id, pid, status, started_at_ms, pid_start_ticks) \
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![sid, pid, RunStatus::Running, now, ticks],
            )?;
            let run = RunId(tx.last_insert_rowid());
            tx.execute(
                "UPDATE sandbox SET status = ?1, updated_at_ms = ?2 WHERE id = ?3",
                params![SandboxStatus::Starting, now, sid],
            )?;
            Ok(run)
        })
    }

    /// Terminates a run with `outcome` and, if it is its sandbox's newest run,
    /// sets the sandbox to `Crashed` (reason `Crashed`) or `Stopped`, in one
    /// transaction. [`StoreError::AlreadyFinished`] (changing nothing) if the
    /// run is already terminated.
    pub fn finish_run(&self, run: RunId, outcome: &RunOutcome) -> Result<(), StoreError> {
        self.write("finish a run", |tx| {
            let found: Option<(RunStatus, i64)> = tx
                .query_row("SELECT status, sandbox_id FROM run WHERE id = ?1", [run.0], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?;
            let (status, sid) = found.ok_or(StoreError::NoSuchRun(run))?;
            if status == RunStatus::Terminated {
                return Err(StoreError::AlreadyFinished(run));
            }
            let now = now_ms();
            tx.execute(
                "UPDATE run SET status = ?1, exit_code = ?2, exit_signal = ?3, reason = ?4, \
                 detail = ?5, terminated_at_ms = ?6 WHERE id = ?7",
                params![
                    RunStatus::Terminated,
                    outcome.exit_code,
                    outcome.exit_signal,
                    outcome.reason,
                    outcome.detail,
                    now,
                    run.0
                ],
            )?;
            let status = if outcome.reason == TerminationReason::Crashed {
                SandboxStatus::Crashed
            } else {
                SandboxStatus::Stopped
            };
            // A stale run finished late (e.g. by the reaper) must not override
            // the state of a newer run.
            tx.execute(
                "UPDATE sandbox SET status = ?1, updated_at_ms = ?2 WHERE id = ?3 \
                 AND NOT EXISTS (SELECT 1 FROM run WHERE sandbox_id = ?3 AND id > ?4)",
                params![status, now, sid, run.0],
            )?;
            Ok(())
        })
    }

    /// Records how the command of a run ended, when the run ended because
    /// its CLI stopped the sandbox after that command (an attached `alcove
    /// run`, reason `ShutdownRequested`): the run becomes `Completed` (exit
    /// 0) or `Failed`, with the command's exit code or signal and `detail`.
    /// A run that ended any other way (a policy, a crash, a signal) keeps
    /// its record. Returns whether the run was changed.
    pub fn record_command_end(
        &self,
        run: RunId,
        exit_code: Option<i32>,
        exit_signal: Option<i32>,
        detail: &str,
    ) -> Result<bool, StoreError> {
        let reason = if exit_code == Some(0) { TerminationReason::Completed } else { TerminationReason::Failed };
        self.write("record a command's end", |tx| {
            let n = tx.execute(
                "UPDATE run SET reason = ?1, exit_code = ?2, exit_signal = ?3, detail = ?4 \
                 WHERE id = ?5 AND status = ?6 AND reason = ?7",
                params![
                    reason,
                    exit_code,
                    exit_signal,
                    detail,
                    run.0,
                    RunStatus::Terminated,
                    TerminationReason::ShutdownRequested
                ],
            )?;
            Ok(n > 0)
        })
    }

    /// The runs of `sandbox`, newest first.
    pub fn runs(&self, sandbox: &str) -> Result<Vec<RunRecord>, StoreError> {
        self.runs_of(sandbox, i64::MAX)
    }

    /// The newest run of `sandbox`, if it has any.
    pub fn latest_run(&self, sandbox: &str) -> Result<Option<RunRecord>, StoreError> {
        Ok(self.runs_of(sandbox, 1)?.into_iter().next())
    }

    fn runs_of(&self, sandbox: &str, limit: i64) -> Result<Vec<RunRecord>, StoreError> {
        let sql = format!("{RUN_SELECT} WHERE r.sandbox_id = ?1 ORDER BY r.id DESC LIMIT ?2");
        self.read("list runs", |c| {
            let sid = sandbox_id(c, sandbox)?;
            let mut stmt = c.prepare_cached(&sql)?;
            let rows = stmt.query_map(params![sid, limit], run_row)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    /// Every run still recorded as `Running`, oldest first, across sandboxes.
    pub fn running_runs(&self) -> Result<Vec<RunRecord>, StoreError> {
        let sql = format!("{RUN_SELECT} WHERE r.status = ?1 ORDER BY r.id");
        self.read("list running runs", |c| {
            let mut stmt = c.prepare_cached(&sql)?;
            let rows = stmt.query_map([RunStatus::Running], run_row)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    // ---- metrics ----

    /// Stores one sample and drops the sandbox's samples beyond the newest
    /// [`StoreOptions::metric_retention`] (ordered by `at_ms`, then insertion).
    pub fn insert_metric(&self, sandbox: &str, sample: &MetricSample) -> Result<(), StoreError> {
        self.insert_metrics_within(sandbox, std::slice::from_ref(sample), self.opts.retry_budget)
    }

    /// Stores a batch of samples in one transaction (one write, however
    /// many samples), then applies the retention as [`Store::insert_metric`]
    /// does. Gives up ([`StoreError::Busy`]) once the database has been busy
    /// for `budget` (at most the retry budget): samples are worth less than
    /// the writes that may wait behind them.
    pub fn insert_metrics_within(
        &self,
        sandbox: &str,
        samples: &[MetricSample],
        budget: Duration,
    ) -> Result<(), StoreError> {
        if samples.is_empty() {
            return Ok(());
        }
        let budget = budget.min(self.opts.retry_budget);
        let keep = i64::try_from(self.opts.metric_retention).unwrap_or(i64::MAX);
        let insert = format!(
            "INSERT INTO sandbox_metric (sandbox_id, {METRIC_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"
        );
        // A sample lost to a power loss is only a gap in a time series.
        self.write_within(budget, Durability::Implied, "record metric samples", |tx| {
            let sid = sandbox_id(tx, sandbox)?;
            let mut stmt = tx.prepare_cached(&insert)?;
            for sample in samples {
                stmt.execute(params![
                    sid,
                    sample.at_ms,
                    clamp(sample.cpu_usec),
                    clamp(sample.memory_bytes),
                    clamp(sample.io_read_bytes),
                    clamp(sample.io_write_bytes),
                    clamp(sample.net_rx_bytes),
                    clamp(sample.net_tx_bytes)
                ])?;
            }
            tx.execute(
                "DELETE FROM sandbox_metric WHERE sandbox_id = ?1 AND id IN (\
                 SELECT id FROM sandbox_metric WHERE sandbox_id = ?1 \
                 ORDER BY at_ms DESC, id DESC LIMIT -1 OFFSET ?2)",
                params![sid, keep],
            )?;
            Ok(())
        })
    }

    /// The newest `limit` samples of `sandbox`, newest first.
    pub fn metrics(&self, sandbox: &str, limit: usize) -> Result<Vec<MetricSample>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let sql = format!(
            "SELECT {METRIC_COLUMNS} FROM sandbox_metric WHERE sandbox_id = ?1 \
             ORDER BY at_ms DESC, id DESC LIMIT ?2"
        );
        self.read("read metrics", |c| {
            let sid = sandbox_id(c, sandbox)?;
            let mut stmt = c.prepare_cached(&sql)?;
            let rows = stmt.query_map(params![sid, limit], |r| {
                Ok(MetricSample {
                    at_ms: r.get(0)?,
                    cpu_usec: r.get(1)?,
                    memory_bytes: r.get(2)?,
                    io_read_bytes: r.get(3)?,
                    io_write_bytes: r.get(4)?,
                    net_rx_bytes: r.get(5)?,
                    net_tx_bytes: r.get(6)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    // ---- transactions and retries ----

    /// Runs `body` in a `BEGIN IMMEDIATE` transaction, retrying on busy;
    /// the commit is synced.
    fn write<T>(
        &self,
        what: &str,
        body: impl FnMut(&Transaction<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.write_with(Durability::Synced, what, body)
    }

    /// [`Store::write`] with the commit's [`Durability`].
    fn write_with<T>(
        &self,
        durability: Durability,
        what: &str,
        body: impl FnMut(&Transaction<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.write_within(self.opts.retry_budget, durability, what, body)
    }

    /// [`Store::write_with`] retrying for `budget` instead of the retry budget.
    fn write_within<T>(
        &self,
        budget: Duration,
        durability: Durability,
        what: &str,
        mut body: impl FnMut(&Transaction<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        if durability == Durability::Implied {
            self.conn.pragma_update(None, "synchronous", "NORMAL")?;
        }
        let result = self.retry_within(budget, what, |conn| {
            let tx = Transaction::new_unchecked(conn, TransactionBehavior::Immediate)?;
            let value = body(&tx)?; // dropping `tx` on error rolls back
            tx.commit()?;
            Ok(value)
        });
        if durability == Durability::Implied {
            self.conn.pragma_update(None, "synchronous", "FULL")?;
        }
        result.map_err(|e| self.classify_write_error(what, e))
    }

    /// A full disk or a read-only database, said as such.
    fn classify_write_error(&self, what: &str, e: StoreError) -> StoreError {
        let code = match &e {
            StoreError::Sqlite(inner) => inner.sqlite_error_code(),
            _ => None,
        };
        match code {
            Some(ErrorCode::ReadOnly) => StoreError::ReadOnly { what: what.to_owned(), path: self.path.clone() },
            Some(ErrorCode::DiskFull) => StoreError::Full { what: what.to_owned(), path: self.path.clone() },
            _ => e,
        }
    }

    /// Runs `body` in a deferred (read) transaction, retrying on busy.
    fn read<T>(&self, what: &str, mut body: impl FnMut(&Connection) -> Result<T, StoreError>) -> Result<T, StoreError> {
        self.retry(what, |conn| {
            let tx = Transaction::new_unchecked(conn, TransactionBehavior::Deferred)?;
            let value = body(&tx)?;
            tx.commit()?;
            Ok(value)
        })
    }

    /// Calls `attempt` until it succeeds, fails with a non-busy error, or the
    /// retry budget is spent ([`StoreError::Busy`]).
    fn retry<T>(&self, what: &str, attempt: impl FnMut(&Connection) -> Result<T, StoreError>) -> Result<T, StoreError> {
        self.retry_within(self.opts.retry_budget, what, attempt)
    }

    /// [`Store::retry`] with its own budget.
    fn retry_within<T>(
        &self,
        budget: Duration,
        what: &str,
        mut attempt: impl FnMut(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let start = Instant::now();
        let deadline = start.checked_add(budget).unwrap_or_else(|| start + Duration::from_secs(365 * 24 * 3600));
        let mut backoff = FIRST_BACKOFF;
        let mut current_timeout = self.opts.busy_timeout;
        let result = loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let per_try = self.opts.busy_timeout.min(remaining);
            if per_try != current_timeout {
                self.conn.busy_timeout(per_try)?;
                current_timeout = per_try;
            }
            match attempt(&self.conn) {
                Err(e) if e.is_busy() => {
                    let remaining = deadline.saturating_duration_since(Instant::now());
                    if remaining.is_zero() {
                        break Err(StoreError::Busy { what: what.to_owned() });
                    }
                    thread::sleep((backoff + jitter(backoff)).min(remaining));
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
                other => break other,
            }
        };
        if current_timeout != self.opts.busy_timeout {
            if let Err(e) = self.conn.busy_timeout(self.opts.busy_timeout) {
                if result.is_ok() {
                    return Err(e.into());
                }
            }
        }
        result
    }
}

/// Refuses schemas newer than this build.
fn check_version(identity: Identity) -> Result<Identity, StoreError> {
    match identity {
        Identity::Alcove(found) if found > SCHEMA_VERSION => {
            Err(StoreError::TooNew { found, supported: SCHEMA_VERSION })
        }
        other => Ok(other),
    }
}

fn check_config(name: &str, config_json: &str) -> Result<(), StoreError> {
    serde_json::from_str::<serde::de::IgnoredAny>(config_json)
        .map(|_| ())
        .map_err(|e| StoreError::InvalidConfig { name: name.to_owned(), why: e.to_string() })
}

fn sandbox_id(conn: &Connection, name: &str) -> Result<i64, StoreError> {
    conn.query_row("SELECT id FROM sandbox WHERE name = ?1", [name], |r| r.get(0))
        .optional()?
        .ok_or_else(|| StoreError::NoSuchSandbox(name.to_owned()))
}

fn sandbox_row(r: &Row<'_>) -> rusqlite::Result<SandboxRecord> {
    Ok(SandboxRecord {
        id: r.get(0)?,
        name: r.get(1)?,
        config_json: r.get(2)?,
        status: r.get(3)?,
        created_at_ms: r.get(4)?,
        updated_at_ms: r.get(5)?,
    })
}

fn run_row(r: &Row<'_>) -> rusqlite::Result<RunRecord> {
    Ok(RunRecord {
        id: RunId(r.get(0)?),
        sandbox: r.get(1)?,
        pid: r.get(2)?,
        status: r.get(3)?,
        exit_code: r.get(4)?,
        exit_signal: r.get(5)?,
        reason: r.get(6)?,
        detail: r.get(7)?,
        started_at_ms: r.get(8)?,
        terminated_at_ms: r.get(9)?,
        pid_start_ticks: r.get::<_, Option<i64>>(10)?.and_then(|t| u64::try_from(t).ok()),
    })
}

/// Counters are stored as SQLite's signed 64-bit integers.
fn clamp(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)).unwrap_or(0)
}

/// Up to half of `backoff`, from the clock's low bits, so processes that
/// collided do not retry in lockstep.
fn jitter(backoff: Duration) -> Duration {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    let half = u32::try_from(backoff.as_micros() / 2).unwrap_or(u32::MAX).max(1);
    Duration::from_micros(u64::from(nanos % half))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::sqlite_is_busy;

    fn synchronous(store: &Store) -> i64 {
        store.conn.query_row("PRAGMA synchronous", [], |r| r.get(0)).expect("pragma")
    }

    /// Schema v4 rebuilds the sandbox table that runs and metrics
    /// reference: an older database keeps every row, and takes Paused.
    #[test]
    fn migrating_to_v4_keeps_every_run_and_metric_and_takes_paused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("alcove.db");
        {
            let conn = Connection::open(&path).expect("open v3");
            conn.pragma_update(None, "foreign_keys", true).expect("fk on, as alcove's connections have them");
            for step in &schema::MIGRATIONS[..3] {
                conn.execute_batch(step).expect("v1..v3");
            }
            conn.execute_batch(&format!(
                "PRAGMA user_version = 3; PRAGMA application_id = {};",
                schema::APPLICATION_ID
            ))
            .expect("identity");
            conn.execute_batch(
                "INSERT INTO sandbox (name, config_json, status, created_at_ms, updated_at_ms) \
                     VALUES ('old', '{}', 'Stopped', 1, 2);
                 INSERT INTO run (sandbox_id, pid, status, reason, started_at_ms, terminated_at_ms) \
                     VALUES (1, 7, 'Terminated', 'Completed', 1, 2);
                 INSERT INTO sandbox_metric (sandbox_id, at_ms, cpu_usec, memory_bytes, io_read_bytes, \
                     io_write_bytes, net_rx_bytes, net_tx_bytes) VALUES (1, 1, 1, 1, 1, 1, 1, 1);",
            )
            .expect("v3 rows");
        }
        let store = Store::open(&path).expect("migrate to the current schema");
        assert_eq!(store.runs("old").expect("runs").len(), 1, "the run survived the rebuild");
        let metrics: i64 =
            store.conn.query_row("SELECT count(*) FROM sandbox_metric", [], |r| r.get(0)).expect("count");
        assert_eq!(metrics, 1, "the metric survived the rebuild");
        store.set_sandbox_status("old", SandboxStatus::Paused).expect("Paused is a valid status");
        assert_eq!(store.sandbox("old").expect("query").expect("row").status, SandboxStatus::Paused);
        // References still hold: deleting the sandbox cascades as before.
        assert!(store.delete_sandbox("old").expect("delete"));
        let runs: i64 = store.conn.query_row("SELECT count(*) FROM run", [], |r| r.get(0)).expect("count");
        assert_eq!(runs, 0, "foreign keys are back on after the migration");
    }

    #[test]
    fn commits_are_synced_except_the_implied_ones() {
        const FULL: i64 = 2;
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("alcove.db")).expect("open");
        assert_eq!(synchronous(&store), FULL);
        store.create_sandbox("a", "{}").expect("create");
        store.start_run("a", 1).expect("run");
        // An implied commit runs at NORMAL and puts FULL back, also when it fails.
        store.set_sandbox_status("a", SandboxStatus::Running).expect("running");
        assert_eq!(synchronous(&store), FULL);
        assert!(store.set_sandbox_status("missing", SandboxStatus::Running).is_err());
        assert_eq!(synchronous(&store), FULL);
        let sample = MetricSample {
            at_ms: 1,
            cpu_usec: 0,
            memory_bytes: 0,
            io_read_bytes: 0,
            io_write_bytes: 0,
            net_rx_bytes: 0,
            net_tx_bytes: 0,
        };
        store.insert_metric("a", &sample).expect("sample");
        assert_eq!(synchronous(&store), FULL);
    }

    #[test]
    fn store_is_send() {
        fn assert_send<T: Send>() {}
        assert_send::<Store>();
    }

    #[test]
    fn jitter_stays_below_half_the_backoff() {
        for ms in [1u64, 2, 50, 100] {
            let b = Duration::from_millis(ms);
            assert!(jitter(b) <= b / 2);
        }
    }

    #[test]
    fn counters_above_i64_max_saturate() {
        assert_eq!(clamp(u64::MAX), i64::MAX);
        assert_eq!(clamp(5), 5);
    }

    #[test]
    fn busy_sqlite_errors_are_busy() {
        let e = rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY), None);
        assert!(sqlite_is_busy(&e));
        assert!(StoreError::from(e).is_busy());
        let e = rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_LOCKED), None);
        assert!(StoreError::Sqlite(e).is_busy());
        assert!(!StoreError::NoSuchSandbox("x".into()).is_busy());
    }
}
