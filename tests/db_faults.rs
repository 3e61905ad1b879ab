//! The run's end against a database that is slow to take it: the final
//! write must not lose to metric samples or to a budget shorter than the
//! store's own patience.
//!
//! The fault injected here is real time: another connection holds
//! `BEGIN EXCLUSIVE` for a few seconds (SQLite's busy waits are real time).
//! That hold is the fault under test, not a wait for a message; everything
//! else synchronises on events.

mod common;

use alcove::store::{RunStatus, TerminationReason};
use common::*;
use std::time::Duration;

#[test]
fn the_runs_end_outlasts_a_database_locked_for_three_seconds() {
    // Metrics every 20 ms: samples pile up for the one database thread
    // while the lock is held.
    let env = start(script(), policy());
    assert!(env.handle.wait_ready(WAIT));
    let blocker = rusqlite::Connection::open(&env.db).expect("opens");
    blocker.execute_batch("BEGIN EXCLUSIVE").expect("locks");
    let mut client = RawClient::connect(&env.socket());
    client.exec(client.range.id_start, &["poweroff", "0"], false);
    // The guest's end is on its way to Lifecycle; the database says no for 3 s.
    std::thread::sleep(Duration::from_secs(3));
    blocker.execute_batch("ROLLBACK").expect("unlocks");
    let outcome = env.handle.wait_timeout(WAIT).expect("ends");
    assert_eq!((outcome.reason, outcome.exit_code), (TerminationReason::Completed, Some(0)), "{outcome:?}");
    env.assert_final(&outcome);
    assert_eq!(env.last_run().status, RunStatus::Terminated);
}
