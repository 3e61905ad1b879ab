//! Integration tests of alcove-store against real SQLite files.
//!
//! Over 600 lines on purpose: one integration test file for the area.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use alcove_store::{
    MetricSample, RunId, RunOutcome, RunStatus, SandboxStatus, Store, StoreError, StoreOptions, TerminationReason,
    APPLICATION_ID, SCHEMA_VERSION,
};
use rusqlite::Connection;
use tempfile::TempDir;

fn tmp() -> TempDir {
    tempfile::tempdir().expect("tempdir")
}

fn db_path(dir: &TempDir) -> PathBuf {
    dir.path().join("alcove.db")
}

fn sample(at_ms: i64) -> MetricSample {
    MetricSample {
        at_ms,
        cpu_usec: at_ms as u64 * 10,
        memory_bytes: 1 << 20,
        io_read_bytes: 1,
        io_write_bytes: 2,
        net_rx_bytes: 3,
        net_tx_bytes: 4,
    }
}

fn outcome(reason: TerminationReason) -> RunOutcome {
    RunOutcome { reason, exit_code: Some(3), exit_signal: None, detail: Some(format!("ended: {reason}")) }
}

// ---- open / identity ----

#[test]
fn open_creates_directory_and_an_identified_wal_database() {
    let dir = tmp();
    let path = dir.path().join("deep/er/alcove.db");
    let store = Store::open(&path).expect("open");
    assert_eq!(store.path(), path);
    drop(store);

    let raw = Connection::open(&path).expect("raw open");
    let app: i32 = raw.query_row("PRAGMA application_id", [], |r| r.get(0)).expect("app id");
    let version: u32 = raw.query_row("PRAGMA user_version", [], |r| r.get(0)).expect("version");
    let mode: String = raw.query_row("PRAGMA journal_mode", [], |r| r.get(0)).expect("mode");
    assert_eq!(app, APPLICATION_ID);
    assert_eq!(version, SCHEMA_VERSION);
    assert_eq!(mode, "wal");

    // Reopening an up-to-date database keeps its contents.
    let store = Store::open(&path).expect("reopen");
    store.create_sandbox("a", "{}").expect("create");
    drop(store);
    let store = Store::open(&path).expect("reopen again");
    assert!(store.sandbox("a").expect("read").is_some());
}

#[test]
fn a_version_1_database_gains_start_ticks_and_keeps_its_runs() {
    let dir = tmp();
    let path = db_path(&dir);
    let store = Store::open(&path).expect("open");
    store.create_sandbox("old", "{}").expect("create");
    let run = store.start_run("old", 77).expect("run");
    drop(store);
    // Back to schema v1, as an older alcove left it.
    let raw = Connection::open(&path).expect("raw open");
    raw.execute_batch("DROP TABLE network_flow; ALTER TABLE run DROP COLUMN pid_start_ticks; PRAGMA user_version = 1;")
        .expect("downgrade");
    drop(raw);
    let store = Store::open(&path).expect("migrates");
    let old = store.latest_run("old").expect("read").expect("kept");
    assert_eq!((old.id, old.pid, old.pid_start_ticks), (run, 77, None));
    let new = store.start_run_of("old", 78, Some(123_456)).expect("run");
    let again = store.latest_run("old").expect("read").expect("new run");
    assert_eq!((again.id, again.pid_start_ticks), (new, Some(123_456)));
    // ... and the network_flow table of version 3.
    assert!(store.flows("old", false, 10).expect("flows table").is_empty());
}

#[test]
fn empty_file_is_initialised() {
    let dir = tmp();
    let path = db_path(&dir);
    std::fs::write(&path, b"").expect("touch");
    let store = Store::open(&path).expect("open empty file");
    assert!(store.sandboxes().expect("list").is_empty());
}

#[test]
fn concurrent_first_opens_migrate_once() {
    let dir = tmp();
    let path = db_path(&dir);
    let handles: Vec<_> = (0..6)
        .map(|i| {
            let path = path.clone();
            thread::spawn(move || {
                let store = Store::open(&path)?;
                store.create_sandbox(&format!("t{i}"), "{}").map(|_| ())
            })
        })
        .collect();
    for h in handles {
        h.join().expect("thread").expect("open and write");
    }
    let store = Store::open(&path).expect("open");
    assert_eq!(store.sandboxes().expect("list").len(), 6);
}

#[test]
fn non_database_file_is_refused_untouched() {
    let dir = tmp();
    let path = db_path(&dir);
    let junk = "this is certainly not a SQLite database\n".repeat(200);
    std::fs::write(&path, &junk).expect("write junk");
    let err = Store::open(&path).expect_err("junk accepted");
    assert!(matches!(err, StoreError::NotAlcove { .. }), "{err:?}");
    assert_eq!(err.to_string(), format!("{} is not an alcove database: file is not a database", path.display()));
    assert_eq!(std::fs::read_to_string(&path).expect("reread"), junk);
}

#[test]
fn foreign_databases_are_refused() {
    let dir = tmp();

    // Someone else's unversioned schema.
    let tables = dir.path().join("tables.db");
    let raw = Connection::open(&tables).expect("raw");
    raw.execute_batch("CREATE TABLE photos (id INTEGER PRIMARY KEY, path TEXT);").expect("foreign table");
    drop(raw);
    let err = Store::open(&tables).expect_err("foreign tables accepted");
    assert!(matches!(&err, StoreError::NotAlcove { why, .. } if why.contains("table")), "{err:?}");
    // Nothing of ours was added.
    let raw = Connection::open(&tables).expect("raw");
    let n: i64 = raw.query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0)).expect("count");
    assert_eq!(n, 1);

    // Another application's id, even without tables.
    let other_app = dir.path().join("other_app.db");
    let raw = Connection::open(&other_app).expect("raw");
    raw.execute_batch("PRAGMA application_id = 305419896;").expect("set app id");
    drop(raw);
    let err = Store::open(&other_app).expect_err("foreign app id accepted");
    assert!(matches!(&err, StoreError::NotAlcove { why, .. } if why.contains("0x12345678")), "{err:?}");

    // A versioned schema without our id.
    let versioned = dir.path().join("versioned.db");
    let raw = Connection::open(&versioned).expect("raw");
    raw.execute_batch("PRAGMA user_version = 3;").expect("set version");
    drop(raw);
    let err = Store::open(&versioned).expect_err("unidentified versioned db accepted");
    assert!(matches!(err, StoreError::NotAlcove { .. }), "{err:?}");
}

#[test]
fn newer_schema_is_refused() {
    let dir = tmp();
    let path = db_path(&dir);
    drop(Store::open(&path).expect("create"));
    let raw = Connection::open(&path).expect("raw");
    raw.execute_batch(&format!("PRAGMA user_version = {};", SCHEMA_VERSION + 1)).expect("bump version");
    drop(raw);
    let err = Store::open(&path).expect_err("newer schema accepted");
    match err {
        StoreError::TooNew { found, supported } => {
            assert_eq!(found, SCHEMA_VERSION + 1);
            assert_eq!(supported, SCHEMA_VERSION);
        }
        other => panic!("expected TooNew, got {other:?}"),
    }
}

#[test]
fn unopenable_paths_are_refused() {
    let dir = tmp();
    let file = dir.path().join("plain-file");
    std::fs::write(&file, b"x").expect("write");
    let under_file = file.join("sub/alcove.db");
    let err = Store::open(&under_file).expect_err("directory under a file");
    assert!(matches!(&err, StoreError::Open { why, .. } if why.contains("cannot create directory")), "{err:?}");

    let err = Store::open(dir.path()).expect_err("a directory is not a database file");
    assert!(matches!(err, StoreError::Open { .. }), "{err:?}");
}

// ---- sandboxes ----

#[test]
fn sandbox_round_trips() {
    let dir = tmp();
    let store = Store::open(&db_path(&dir)).expect("open");
    assert_eq!(store.sandbox("web").expect("read"), None);

    let created = store.create_sandbox("web", r#"{"image":"alpine","memory_mb":256}"#).expect("create");
    assert_eq!(created.name, "web");
    assert_eq!(created.status, SandboxStatus::Stopped);
    assert_eq!(created.created_at_ms, created.updated_at_ms);
    assert!(created.created_at_ms > 1_600_000_000_000);
    assert_eq!(store.sandbox("web").expect("read"), Some(created.clone()));

    let err = store.create_sandbox("web", "{}").expect_err("duplicate");
    assert!(matches!(&err, StoreError::DuplicateName(n) if n == "web"), "{err:?}");
    assert_eq!(err.to_string(), "a sandbox named \"web\" already exists");
    assert_eq!(store.sandbox("web").expect("read"), Some(created.clone()));

    let err = store.create_sandbox("bad", "{not json").expect_err("bad json");
    assert!(matches!(err, StoreError::InvalidConfig { .. }), "{err:?}");
    assert_eq!(store.sandbox("bad").expect("read"), None);

    store.set_sandbox_status("web", SandboxStatus::Running).expect("status");
    let replaced = store.upsert_sandbox("web", r#"{"image":"debian"}"#).expect("upsert existing");
    assert_eq!(replaced.id, created.id);
    assert_eq!(replaced.config_json, r#"{"image":"debian"}"#);
    assert_eq!(replaced.status, SandboxStatus::Running, "upsert keeps status");
    assert_eq!(replaced.created_at_ms, created.created_at_ms);
    assert!(replaced.updated_at_ms >= created.updated_at_ms);

    let fresh = store.upsert_sandbox("api", "[1,2]").expect("upsert new");
    assert_eq!(fresh.status, SandboxStatus::Stopped);
    assert_ne!(fresh.id, created.id);

    let names: Vec<String> = store.sandboxes().expect("list").into_iter().map(|s| s.name).collect();
    assert_eq!(names, ["api", "web"]);

    for &status in SandboxStatus::ALL {
        store.set_sandbox_status("api", status).expect("set status");
        assert_eq!(store.sandbox("api").expect("read").map(|s| s.status), Some(status));
    }
    let err = store.set_sandbox_status("ghost", SandboxStatus::Running).expect_err("ghost");
    assert!(matches!(&err, StoreError::NoSuchSandbox(n) if n == "ghost"), "{err:?}");

    assert!(store.delete_sandbox("api").expect("delete"));
    assert!(!store.delete_sandbox("api").expect("delete again"));
    assert_eq!(store.sandbox("api").expect("read"), None);

    let json = serde_json::to_value(store.sandbox("web").expect("read")).expect("json");
    assert_eq!(json["name"], "web");
    assert_eq!(json["status"], "Running");
    assert_eq!(json["config_json"], r#"{"image":"debian"}"#);
}

#[test]
fn delete_cascades_to_runs_and_metrics() {
    let dir = tmp();
    let path = db_path(&dir);
    let store = Store::open(&path).expect("open");
    store.create_sandbox("doomed", "{}").expect("create");
    store.create_sandbox("kept", "{}").expect("create");
    let run = store.start_run("doomed", 100).expect("run");
    store.finish_run(run, &outcome(TerminationReason::Completed)).expect("finish");
    store.start_run("doomed", 101).expect("run 2");
    store.start_run("kept", 200).expect("kept run");
    for t in 0..5 {
        store.insert_metric("doomed", &sample(t)).expect("metric");
        store.insert_metric("kept", &sample(t)).expect("metric");
    }
    assert!(store.delete_sandbox("doomed").expect("delete"));

    let raw = Connection::open(&path).expect("raw");
    let runs: i64 = raw.query_row("SELECT count(*) FROM run", [], |r| r.get(0)).expect("runs");
    let metrics: i64 = raw.query_row("SELECT count(*) FROM sandbox_metric", [], |r| r.get(0)).expect("metrics");
    assert_eq!(runs, 1);
    assert_eq!(metrics, 5);
    assert_eq!(store.running_runs().expect("running").len(), 1);
    assert!(matches!(store.runs("doomed"), Err(StoreError::NoSuchSandbox(_))));

    // Run ids are not reused after the cascade.
    store.create_sandbox("doomed", "{}").expect("recreate");
    let again = store.start_run("doomed", 102).expect("run");
    assert!(again > run);
}

// ---- runs ----

#[test]
fn run_lifecycle() {
    let dir = tmp();
    let store = Store::open(&db_path(&dir)).expect("open");
    store.create_sandbox("box", "{}").expect("create");
    assert_eq!(store.latest_run("box").expect("latest"), None);
    assert!(store.runs("box").expect("runs").is_empty());
    assert!(matches!(store.start_run("ghost", 1), Err(StoreError::NoSuchSandbox(_))));

    let first = store.start_run("box", 4242).expect("start");
    assert_eq!(store.sandbox("box").expect("read").map(|s| s.status), Some(SandboxStatus::Starting));
    let rec = store.latest_run("box").expect("latest").expect("a run");
    assert_eq!(rec.id, first);
    assert_eq!(rec.sandbox, "box");
    assert_eq!(rec.pid, 4242);
    assert_eq!(rec.status, RunStatus::Running);
    assert_eq!((rec.reason, rec.exit_code, rec.exit_signal, rec.terminated_at_ms), (None, None, None, None));
    assert_eq!(store.running_runs().expect("running"), vec![rec.clone()]);

    store.set_sandbox_status("box", SandboxStatus::Running).expect("running");
    let done = RunOutcome {
        reason: TerminationReason::Signal,
        exit_code: None,
        exit_signal: Some(9),
        detail: Some("killed".into()),
    };
    store.finish_run(first, &done).expect("finish");
    let rec = store.latest_run("box").expect("latest").expect("a run");
    assert_eq!(rec.status, RunStatus::Terminated);
    assert_eq!(rec.reason, Some(TerminationReason::Signal));
    assert_eq!(rec.exit_code, None);
    assert_eq!(rec.exit_signal, Some(9));
    assert_eq!(rec.detail.as_deref(), Some("killed"));
    let ended = rec.terminated_at_ms.expect("terminated_at");
    assert!(ended >= rec.started_at_ms);
    assert_eq!(store.sandbox("box").expect("read").map(|s| s.status), Some(SandboxStatus::Stopped));
    assert!(store.running_runs().expect("running").is_empty());

    // Finishing twice is refused and changes nothing.
    let before = store.sandbox("box").expect("read");
    let err = store.finish_run(first, &outcome(TerminationReason::Crashed)).expect_err("twice");
    assert!(matches!(err, StoreError::AlreadyFinished(id) if id == first), "{err:?}");
    assert_eq!(err.to_string(), format!("run {} has already finished", first.0));
    assert_eq!(store.latest_run("box").expect("latest"), Some(rec.clone()));
    assert_eq!(store.sandbox("box").expect("read"), before);

    let err = store.finish_run(RunId(999_999), &done).expect_err("no such run");
    assert!(matches!(err, StoreError::NoSuchRun(RunId(999_999))), "{err:?}");

    // A crash marks the sandbox Crashed; runs come newest first.
    let second = store.start_run("box", 5000).expect("start 2");
    store.finish_run(second, &outcome(TerminationReason::Crashed)).expect("finish 2");
    assert_eq!(store.sandbox("box").expect("read").map(|s| s.status), Some(SandboxStatus::Crashed));
    let ids: Vec<RunId> = store.runs("box").expect("runs").iter().map(|r| r.id).collect();
    assert_eq!(ids, [second, first]);

    let json = serde_json::to_value(&rec).expect("json");
    assert_eq!(json["id"], first.0);
    assert_eq!(json["reason"], "Signal");
    assert_eq!(json["status"], "Terminated");
}

#[test]
fn every_reason_is_stored_and_read_back() {
    let dir = tmp();
    let store = Store::open(&db_path(&dir)).expect("open");
    store.create_sandbox("box", "{}").expect("create");
    for &reason in TerminationReason::ALL {
        let run = store.start_run("box", 1).expect("start");
        store.finish_run(run, &outcome(reason)).expect("finish");
        let rec = store.latest_run("box").expect("latest").expect("run");
        assert_eq!(rec.reason, Some(reason));
        assert_eq!(rec.exit_code, Some(3));
        let want = if reason == TerminationReason::Crashed { SandboxStatus::Crashed } else { SandboxStatus::Stopped };
        assert_eq!(store.sandbox("box").expect("read").map(|s| s.status), Some(want));
    }
    assert_eq!(store.runs("box").expect("runs").len(), TerminationReason::ALL.len());
}

#[test]
fn late_finish_of_a_stale_run_keeps_the_newer_runs_status() {
    let dir = tmp();
    let store = Store::open(&db_path(&dir)).expect("open");
    store.create_sandbox("box", "{}").expect("create");
    let stale = store.start_run("box", 10).expect("stale");
    let current = store.start_run("box", 11).expect("current");
    store.set_sandbox_status("box", SandboxStatus::Running).expect("running");
    store.finish_run(stale, &outcome(TerminationReason::Crashed)).expect("reap stale");
    assert_eq!(store.sandbox("box").expect("read").map(|s| s.status), Some(SandboxStatus::Running));
    let running: Vec<RunId> = store.running_runs().expect("running").iter().map(|r| r.id).collect();
    assert_eq!(running, [current]);
}

#[test]
fn corrupt_stored_text_is_reported() {
    let dir = tmp();
    let path = db_path(&dir);
    let store = Store::open(&path).expect("open");
    store.create_sandbox("box", "{}").expect("create");
    // Bypass the CHECK constraint the way a hand edit might.
    let raw = Connection::open(&path).expect("raw");
    raw.execute_batch("PRAGMA ignore_check_constraints = ON; UPDATE sandbox SET status = 'Melted';").expect("corrupt");
    let err = store.sandbox("box").expect_err("corrupt status read");
    assert!(matches!(&err, StoreError::Corrupt(what) if what.contains("Melted")), "{err:?}");
}

// ---- metrics ----

#[test]
fn retention_keeps_exactly_the_newest_samples() {
    let dir = tmp();
    let opts = StoreOptions { metric_retention: 5, ..StoreOptions::default() };
    let store = Store::open_with(&db_path(&dir), opts).expect("open");
    store.create_sandbox("a", "{}").expect("create");
    store.create_sandbox("b", "{}").expect("create");
    assert!(store.metrics("a", 10).expect("empty").is_empty());
    for t in 1..=12 {
        store.insert_metric("a", &sample(t)).expect("metric a");
    }
    for t in 1..=3 {
        store.insert_metric("b", &sample(t)).expect("metric b");
    }
    let a = store.metrics("a", 100).expect("metrics a");
    assert_eq!(a.iter().map(|m| m.at_ms).collect::<Vec<_>>(), [12, 11, 10, 9, 8]);
    assert_eq!(a[0], sample(12));
    assert_eq!(store.metrics("a", 2).expect("limited").len(), 2);
    assert_eq!(store.metrics("b", 100).expect("metrics b").len(), 3, "other sandbox untouched");

    // A late sample older than everything kept is dropped immediately.
    store.insert_metric("a", &sample(0)).expect("old metric");
    let a = store.metrics("a", 100).expect("metrics a");
    assert_eq!(a.iter().map(|m| m.at_ms).collect::<Vec<_>>(), [12, 11, 10, 9, 8]);

    let err = store.insert_metric("ghost", &sample(1)).expect_err("ghost");
    assert!(matches!(err, StoreError::NoSuchSandbox(_)), "{err:?}");
    assert!(matches!(store.metrics("ghost", 1), Err(StoreError::NoSuchSandbox(_))));
}

#[test]
fn a_batch_of_samples_is_stored_whole_with_the_same_retention() {
    let dir = tmp();
    let opts = StoreOptions { metric_retention: 5, ..StoreOptions::default() };
    let store = Store::open_with(&db_path(&dir), opts).expect("open");
    store.create_sandbox("a", "{}").expect("create");
    let batch: Vec<_> = (1..=8).map(sample).collect();
    store.insert_metrics_within("a", &batch, Duration::from_secs(1)).expect("batch");
    let a = store.metrics("a", 100).expect("metrics a");
    assert_eq!(a.iter().map(|m| m.at_ms).collect::<Vec<_>>(), [8, 7, 6, 5, 4]);
    assert_eq!(a[0], sample(8));
    // An empty batch is no write at all, even for a sandbox that is gone.
    store.insert_metrics_within("ghost", &[], Duration::from_secs(1)).expect("empty");
    let err = store.insert_metrics_within("ghost", &batch, Duration::from_secs(1)).expect_err("ghost");
    assert!(matches!(err, StoreError::NoSuchSandbox(_)), "{err:?}");
}

#[test]
fn huge_counters_saturate() {
    let dir = tmp();
    let store = Store::open(&db_path(&dir)).expect("open");
    store.create_sandbox("a", "{}").expect("create");
    let mut s = sample(1);
    s.net_rx_bytes = u64::MAX;
    store.insert_metric("a", &s).expect("insert");
    let got = store.metrics("a", 1).expect("read");
    assert_eq!(got[0].net_rx_bytes, i64::MAX as u64);
    assert_eq!(got[0].cpu_usec, s.cpu_usec);
}

// ---- locking ----

fn hold_exclusive_lock(path: &Path, hold: Duration) -> thread::JoinHandle<()> {
    let (locked_tx, locked_rx) = mpsc::channel();
    let path = path.to_owned();
    let handle = thread::spawn(move || {
        let raw = Connection::open(&path).expect("raw");
        raw.execute_batch("BEGIN EXCLUSIVE; UPDATE sandbox SET updated_at_ms = updated_at_ms;").expect("lock");
        locked_tx.send(()).expect("signal");
        thread::sleep(hold);
        raw.execute_batch("COMMIT").expect("unlock");
    });
    locked_rx.recv().expect("lock taken");
    handle
}

#[test]
fn writer_waits_for_a_lock_released_within_the_budget() {
    let dir = tmp();
    let path = db_path(&dir);
    let opts = StoreOptions {
        busy_timeout: Duration::from_millis(20),
        retry_budget: Duration::from_secs(10),
        metric_retention: 10,
        flow_retention: 10,
    };
    let store = Store::open_with(&path, opts).expect("open");
    let holder = hold_exclusive_lock(&path, Duration::from_millis(300));
    let start = Instant::now();
    store.create_sandbox("patient", "{}").expect("write after the lock is released");
    let waited = start.elapsed();
    holder.join().expect("holder");
    assert!(waited >= Duration::from_millis(200), "did not wait: {waited:?}");
    assert!(store.sandbox("patient").expect("read").is_some());
}

#[test]
fn writer_gives_up_with_busy_when_the_lock_outlives_the_budget() {
    let dir = tmp();
    let path = db_path(&dir);
    let opts = StoreOptions {
        // Longer than the budget: the budget must still win.
        busy_timeout: Duration::from_secs(5),
        retry_budget: Duration::from_millis(150),
        metric_retention: 10,
        flow_retention: 10,
    };
    let store = Store::open_with(&path, opts).expect("open");
    let holder = hold_exclusive_lock(&path, Duration::from_millis(1200));
    let start = Instant::now();
    let err = store.create_sandbox("impatient", "{}").expect_err("lock held past the budget");
    let waited = start.elapsed();
    assert!(err.is_busy(), "{err:?}");
    assert!(matches!(&err, StoreError::Busy { what } if what == "create a sandbox"), "{err:?}");
    assert!(waited >= Duration::from_millis(140), "gave up too early: {waited:?}");
    assert!(waited < Duration::from_millis(1000), "overran the budget: {waited:?}");
    holder.join().expect("holder");
    // Nothing was written, and the store works again once the lock is gone.
    assert_eq!(store.sandbox("impatient").expect("read"), None);
    store.create_sandbox("impatient", "{}").expect("write after unlock");
}

// ---- several processes ----

const CHILD_ENV: &str = "ALCOVE_STORE_TEST_WRITER";
const WRITES_PER_WRITER: i64 = 100;

/// One writer's workload: per iteration a new sandbox, a run started and
/// finished, and a metric on the shared sandbox (4 write transactions).
fn workload(path: &Path, tag: i64) -> Result<(), StoreError> {
    let store = Store::open(path)?;
    for i in 0..WRITES_PER_WRITER {
        let name = format!("w{tag}-{i}");
        store.create_sandbox(&name, &format!(r#"{{"writer":{tag},"i":{i}}}"#))?;
        let run = store.start_run(&name, u32::try_from(tag * 100_000 + i).unwrap_or(0))?;
        store.insert_metric("shared", &sample(tag * 1_000_000 + i))?;
        store.finish_run(run, &outcome(TerminationReason::Completed))?;
    }
    Ok(())
}

fn check_workload(store: &Store, tag: i64) {
    for i in 0..WRITES_PER_WRITER {
        let name = format!("w{tag}-{i}");
        let sb = store.sandbox(&name).expect("read").unwrap_or_else(|| panic!("{name} missing"));
        assert_eq!(sb.status, SandboxStatus::Stopped);
        let runs = store.runs(&name).expect("runs");
        assert_eq!(runs.len(), 1, "{name}");
        assert_eq!(runs[0].status, RunStatus::Terminated);
        assert_eq!(i64::from(runs[0].pid), tag * 100_000 + i);
    }
    let shared = store.metrics("shared", 100_000).expect("metrics");
    let mine: Vec<i64> = shared.iter().map(|m| m.at_ms).filter(|t| t / 1_000_000 == tag).collect();
    assert_eq!(mine.len() as i64, WRITES_PER_WRITER, "metrics of writer {tag}");
}

/// In the parent: a single-writer run of the workload. In a child spawned by
/// `two_processes_write_concurrently`: that child's share of the workload.
#[test]
fn writer_workload() {
    if let Ok(spec) = std::env::var(CHILD_ENV) {
        let (tag, path) = spec.split_once(':').expect("tag:path");
        let tag: i64 = tag.parse().expect("tag");
        workload(Path::new(path), tag).expect("child workload");
        return;
    }
    let dir = tmp();
    let path = db_path(&dir);
    Store::open(&path).expect("open").create_sandbox("shared", "{}").expect("shared");
    workload(&path, 7).expect("workload");
    check_workload(&Store::open(&path).expect("open"), 7);
}

#[test]
fn two_processes_write_concurrently() {
    let dir = tmp();
    let path = db_path(&dir);
    Store::open(&path).expect("open").create_sandbox("shared", "{}").expect("shared");
    let exe = std::env::current_exe().expect("test binary");
    let mut running: Vec<_> = [1i64, 2]
        .iter()
        .map(|tag| {
            let child = Command::new(&exe)
                .args(["--exact", "writer_workload", "--test-threads=1", "--nocapture"])
                .env(CHILD_ENV, format!("{tag}:{}", path.display()))
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("spawn child");
            (*tag, child)
        })
        .collect();
    // The parent writes too while the children run.
    workload(&path, 3).expect("parent workload");
    for (tag, child) in running.drain(..) {
        let out = child.wait_with_output().expect("child");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("1 passed"),
            "writer {tag} failed: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let store = Store::open(&path).expect("open");
    for tag in [1, 2, 3] {
        check_workload(&store, tag);
    }
    assert_eq!(store.sandboxes().expect("list").len() as i64, 3 * WRITES_PER_WRITER + 1);
    assert!(store.running_runs().expect("running").is_empty());
}

#[test]
fn the_database_file_is_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("alcove.db");
    let store = alcove_store::Store::open(&path).expect("opens");
    store.create_sandbox("a", "{}").expect("written");
    for file in ["alcove.db", "alcove.db-wal", "alcove.db-shm"] {
        let mode = std::fs::metadata(dir.path().join(file)).expect(file).permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{file} has mode {mode:o}");
    }
}

#[test]
fn closing_the_last_connection_leaves_a_short_wal() {
    // Commits are synced as they happen, so the last connection does not
    // checkpoint as it closes; the auto-checkpoint keeps the WAL short.
    let dir = tmp();
    let path = dir.path().join("alcove.db");
    let store = Store::open(&path).expect("open");
    store.create_sandbox("kept", "{}").expect("create");
    drop(store);
    let wal = std::fs::metadata(dir.path().join("alcove.db-wal")).expect("the WAL is still there");
    assert!(wal.len() > 0, "the WAL was checkpointed and reset on close");
    let store = Store::open(&path).expect("reopen");
    assert!(store.sandbox("kept").expect("read").is_some());
    for i in 0..200 {
        store.create_sandbox(&format!("s{i}"), "{}").expect("create");
    }
    let wal = std::fs::metadata(dir.path().join("alcove.db-wal")).expect("wal").len();
    // 64 pages of 4 KiB plus frame headers, and the frames of one commit.
    assert!(wal < 80 * 4096, "the WAL grew to {wal} bytes");
}
