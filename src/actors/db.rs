//! The Db actor: the one SQLite connection of the sandbox process.
//!
//! Runs on its own thread (an actix `SyncArbiter` with one thread), because
//! rusqlite blocks. Every write of the sandbox process goes through it; the
//! store retries on SQLITE_BUSY within its budget, so an error here means the
//! database really cannot be written.
//!
//! One thread serves every write in order, so the run's final write could
//! queue behind metric samples. It does not: samples wait at most
//! [`ExitBudget::SAMPLE_WAIT`] for a busy database, and once Lifecycle
//! closes the [`SampleGate`] (before it sends the final write) the samples
//! still queued are dropped unwritten.

use crate::actors::network::DbInsertFlows;
use crate::config::ExitBudget;
use crate::messages::{DbFinishRun, DbInsertMetrics, DbSetStatus, DbStartRun};
use crate::run_end::{finish, Recorded, Write};
use crate::store::{RunId, Store};
use actix::prelude::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Whether metric samples may still be written: open until the run starts
/// to end. Shared by Lifecycle (which closes it) and the Db actor.
#[derive(Clone, Debug)]
pub struct SampleGate(Arc<AtomicBool>);

impl Default for SampleGate {
    fn default() -> SampleGate {
        SampleGate(Arc::new(AtomicBool::new(true)))
    }
}

impl SampleGate {
    /// No sample is written after this call returns.
    pub fn close(&self) {
        self.0.store(false, Ordering::SeqCst);
    }

    /// Whether samples may be written.
    pub fn is_open(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Owns the store.
pub struct DbActor {
    store: Result<Store, String>,
    samples: SampleGate,
}

impl DbActor {
    /// Wraps an open store, or the reason it could not be opened (every
    /// message is then answered with that error).
    pub fn new(store: Result<Store, String>, samples: SampleGate) -> DbActor {
        DbActor { store, samples }
    }

    fn store(&self) -> Result<&Store, String> {
        self.store.as_ref().map_err(Clone::clone)
    }
}

impl Actor for DbActor {
    type Context = SyncContext<Self>;
}

impl Handler<DbStartRun> for DbActor {
    type Result = Result<RunId, String>;

    fn handle(&mut self, msg: DbStartRun, _: &mut Self::Context) -> Self::Result {
        if self.store()?.sandbox(&msg.sandbox).map_err(|e| e.to_string())?.is_none() {
            self.store()?.upsert_sandbox(&msg.sandbox, &msg.config_json).map_err(|e| e.to_string())?;
        }
        self.store()?.start_run_of(&msg.sandbox, msg.pid, msg.pid_start_ticks).map_err(|e| e.to_string())
    }
}

impl Handler<DbSetStatus> for DbActor {
    type Result = Result<(), String>;

    fn handle(&mut self, msg: DbSetStatus, _: &mut Self::Context) -> Self::Result {
        self.store()?.set_sandbox_status(&msg.sandbox, msg.status).map_err(|e| e.to_string())
    }
}

impl Handler<DbFinishRun> for DbActor {
    type Result = bool;

    fn handle(&mut self, msg: DbFinishRun, _: &mut Self::Context) -> bool {
        let store = match self.store() {
            Ok(store) => Some(store),
            Err(e) => {
                tracing::error!(error = %e, "cannot record the end of the run");
                None
            }
        };
        let write = store.zip(msg.run).map(|(store, run)| Write { store, run, end: &msg.end });
        match finish(write, &msg.cleanup) {
            Recorded::Failed(e) => {
                tracing::error!(error = %e, "cannot record the end of the run");
                false
            }
            recorded => recorded.is_final(),
        }
    }
}

impl Handler<DbInsertMetrics> for DbActor {
    type Result = Result<(), String>;

    fn handle(&mut self, msg: DbInsertMetrics, _: &mut Self::Context) -> Self::Result {
        if !self.samples.is_open() {
            return Ok(());
        }
        self.store()?
            .insert_metrics_within(&msg.sandbox, &msg.samples, ExitBudget::SAMPLE_WAIT)
            .map_err(|e| e.to_string())
    }
}

impl Handler<DbInsertFlows> for DbActor {
    type Result = Result<(), String>;

    /// Flow records are written like samples: not once the run is ending,
    /// and never waiting long for a busy database.
    fn handle(&mut self, msg: DbInsertFlows, _: &mut Self::Context) -> Self::Result {
        if !self.samples.is_open() {
            return Ok(());
        }
        self.store()?.insert_flows_within(&msg.sandbox, &msg.rows, ExitBudget::SAMPLE_WAIT).map_err(|e| e.to_string())
    }
}
