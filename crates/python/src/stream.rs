//! `NativeStream`: one running command's events and input (a streamed
//! `exec` or a PTY session).
//!
//! Invariants:
//! - Events come out in the order the guest sent them: `started`, output
//!   chunks, then one `exit` (or one error); after either, `next` returns
//!   `None` for ever.
//! - The session slot of its sandbox handle is held until the last event
//!   (or the stream is dropped).
//! - Only one `next` runs at a time (an async mutex); input calls never wait
//!   for it.
//! - A stream let go before its last event kills its command (SIGKILL):
//!   nothing runs on that nobody reads.

use crate::errors::Error;
use crate::{blocking, spawn, Value};
use alcove_client::{ExecEvent, ExecInput, ExecOutput, ExecSession};
use pyo3::prelude::*;
use std::sync::{Arc, Mutex};
use tokio::sync::OwnedSemaphorePermit;

struct Inner {
    output: tokio::sync::Mutex<Option<ExecOutput>>,
    input: ExecInput,
    pid: u32,
    slot: Mutex<Option<OwnedSemaphorePermit>>,
}

impl Inner {
    fn release(&self) {
        if let Ok(mut slot) = self.slot.lock() {
            slot.take();
        }
    }

    async fn next(&self) -> Result<Value, Error> {
        let mut guard = self.output.lock().await;
        let Some(output) = guard.as_mut() else { return Ok(Value::Event(None)) };
        let event = output.next_event().await;
        let last = !matches!(event, Some(Ok(ExecEvent::Started { .. } | ExecEvent::Stdout(_) | ExecEvent::Stderr(_))));
        if last {
            guard.take();
            self.release();
        }
        match event {
            None => Ok(Value::Event(None)),
            Some(Ok(ev)) => Ok(Value::Event(Some(ev))),
            Some(Err(e)) => Err(e.into()),
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Dropped before its last event (the Python object was let go): the
        // command would run on unseen, so it is killed.
        if self.output.get_mut().is_some() {
            let _ = self.input.signal(SIGKILL);
        }
    }
}

/// Linux SIGKILL.
const SIGKILL: i32 = 9;

/// Kills a command when dropped, unless disarmed once the command ended.
pub(crate) struct KillOnDrop(Option<ExecInput>);

impl KillOnDrop {
    pub(crate) fn new(input: ExecInput) -> KillOnDrop {
        KillOnDrop(Some(input))
    }

    pub(crate) fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(input) = self.0.take() {
            let _ = input.signal(SIGKILL);
        }
    }
}

/// A running command.
#[pyclass(frozen, module = "alcove._alcove")]
pub struct NativeStream {
    inner: Arc<Inner>,
}

impl NativeStream {
    pub(crate) fn new(session: ExecSession, slot: OwnedSemaphorePermit) -> NativeStream {
        let pid = session.pid();
        let (input, output) = session.split();
        NativeStream {
            inner: Arc::new(Inner {
                output: tokio::sync::Mutex::new(Some(output)),
                input,
                pid,
                slot: Mutex::new(Some(slot)),
            }),
        }
    }
}

fn py_err(e: alcove_client::ClientError) -> PyErr {
    Python::attach(|py| Error::from(e).into_py_err(py))
}

#[pymethods]
impl NativeStream {
    /// The command's pid in the guest.
    #[getter]
    fn pid(&self) -> u32 {
        self.inner.pid
    }

    /// The next event as `(kind, payload)`, or `None` after the last.
    fn next(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let inner = self.inner.clone();
        blocking(py, async move { inner.next().await })
    }

    fn next_async(&self, done: Py<PyAny>) -> crate::NativeTask {
        let inner = self.inner.clone();
        spawn(done, async move { inner.next().await })
    }

    /// Sends bytes to stdin, waiting for the guest's flow-control credit.
    fn write(&self, py: Python<'_>, data: Vec<u8>) -> PyResult<Py<PyAny>> {
        let inner = self.inner.clone();
        blocking(py, async move {
            inner.input.write_stdin(&data).await?;
            Ok(Value::None)
        })
    }

    fn write_async(&self, done: Py<PyAny>, data: Vec<u8>) -> crate::NativeTask {
        let inner = self.inner.clone();
        spawn(done, async move {
            inner.input.write_stdin(&data).await?;
            Ok(Value::None)
        })
    }

    /// Closes stdin (the command reads end of file).
    fn close_stdin(&self) -> PyResult<()> {
        self.inner.input.close_stdin().map_err(py_err)
    }

    /// Resizes the terminal of a PTY session.
    fn resize(&self, rows: u16, cols: u16) -> PyResult<()> {
        self.inner.input.resize(rows, cols).map_err(py_err)
    }

    /// Sends a signal (Linux numbering) to the command's process group.
    fn signal(&self, signal: i32) -> PyResult<()> {
        self.inner.input.signal(signal).map_err(py_err)
    }
}
