//! `alcove._alcove`: the native half of the Python package `alcove`
//! (`python/alcove/`, which holds the public API, its types and docs).
//!
//! Every operation is written once, as a Rust future, and offered twice:
//! `op(...)` runs it on the shared tokio runtime and blocks the calling
//! thread *with the GIL released* ([`blocking`]); `op_async(done, ...)`
//! spawns it and calls `done(ok, value)` from a runtime thread when it ends
//! ([`spawn`]) — the Python side passes a `done` that hands the value to its
//! asyncio loop with `call_soon_threadsafe`. No Python object is touched
//! without the GIL, and no future holds the GIL while it waits.
//!
//! Invariants:
//! - One tokio runtime per process ([`runtime`]), multi-threaded, created
//!   on first use; its threads only run futures and callbacks.
//! - Sandboxes are reached only through `alcove::Sandbox` (the CLI's
//!   create/start/stop path and `alcove-client`), never through the CLI
//!   program.
//! - Errors reach Python as the classes of `alcove.errors`, with alcove's
//!   one-line messages ([`errors`]).

mod errors;
mod sandbox;
mod stream;

use errors::Error;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyTuple};
use std::future::Future;
use std::sync::OnceLock;

/// The process's tokio runtime.
pub(crate) fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("alcove-py")
            .enable_all()
            .build()
            .expect("the alcove SDK cannot start its tokio runtime")
    })
}

/// A value an operation hands back, turned into a Python object only once
/// the GIL is held.
pub(crate) enum Value {
    None,
    Bool(bool),
    U64(u64),
    Bytes(Vec<u8>),
    /// `(stdout, stderr, exit_code, signal, oom_killed)`.
    Output(alcove_client::Output),
    /// `(kind, size, mode, uid, gid, mtime, link_target)`.
    Stat(alcove_client::FileStat),
    /// `[(name, stat), …]`.
    Entries(Vec<alcove_client::DirEntry>),
    Sandbox(sandbox::NativeSandbox),
    Stream(stream::NativeStream),
    /// `None` at the end, else `(kind, payload)`.
    Event(Option<alcove_client::ExecEvent>),
}

fn status_tuple<'py>(py: Python<'py>, s: &alcove_client::ExitStatus) -> PyResult<Bound<'py, PyTuple>> {
    PyTuple::new(
        py,
        [
            s.code.into_pyobject(py)?.into_any(),
            s.signal.into_pyobject(py)?.into_any(),
            pyo3::types::PyBool::new(py, s.oom_killed).to_owned().into_any(),
        ],
    )
}

fn stat_tuple<'py>(py: Python<'py>, s: &alcove_client::FileStat) -> PyResult<Bound<'py, PyTuple>> {
    let kind = match s.kind {
        alcove_client::FileKind::File => "file",
        alcove_client::FileKind::Dir => "dir",
        alcove_client::FileKind::Symlink => "symlink",
        alcove_client::FileKind::Other => "other",
    };
    (kind, s.size, s.mode, s.uid, s.gid, s.mtime, s.link_target.clone()).into_pyobject(py)
}

impl Value {
    fn into_py(self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        Ok(match self {
            Value::None => py.None(),
            Value::Bool(b) => pyo3::types::PyBool::new(py, b).to_owned().into_any().unbind(),
            Value::U64(n) => n.into_pyobject(py)?.into_any().unbind(),
            Value::Bytes(b) => PyBytes::new(py, &b).into_any().unbind(),
            Value::Output(o) => {
                let status = status_tuple(py, &o.status)?;
                let mut items = vec![PyBytes::new(py, &o.stdout).into_any(), PyBytes::new(py, &o.stderr).into_any()];
                items.extend(status.iter());
                PyTuple::new(py, items)?.into_any().unbind()
            }
            Value::Stat(s) => stat_tuple(py, &s)?.into_any().unbind(),
            Value::Entries(entries) => {
                let list = PyList::empty(py);
                for e in &entries {
                    list.append((e.name.as_str(), stat_tuple(py, &e.stat)?))?;
                }
                list.into_any().unbind()
            }
            Value::Sandbox(s) => Py::new(py, s)?.into_any(),
            Value::Stream(s) => Py::new(py, s)?.into_any(),
            Value::Event(None) => py.None(),
            Value::Event(Some(ev)) => {
                use alcove_client::ExecEvent;
                match ev {
                    ExecEvent::Started { pid } => ("started", pid).into_pyobject(py)?.into_any().unbind(),
                    ExecEvent::Stdout(d) => ("stdout", PyBytes::new(py, &d)).into_pyobject(py)?.into_any().unbind(),
                    ExecEvent::Stderr(d) => ("stderr", PyBytes::new(py, &d)).into_pyobject(py)?.into_any().unbind(),
                    ExecEvent::Exited(s) => ("exit", status_tuple(py, &s)?).into_pyobject(py)?.into_any().unbind(),
                }
            }
        })
    }
}

/// How often a blocking call on the main thread lets Python's signal
/// handlers run (Ctrl-C).
const SIGNAL_CHECK: std::time::Duration = std::time::Duration::from_millis(50);

/// Whether this is the process's main thread, the only one Python runs
/// signal handlers on.
fn on_main_thread() -> bool {
    // SAFETY: getpid and gettid have no preconditions.
    unsafe { libc::getpid() == libc::gettid() }
}

/// Runs `fut` to its end on the runtime, with the GIL released meanwhile.
/// On the main thread a signal handler that raises (Ctrl-C's
/// `KeyboardInterrupt`) ends the wait: `fut` is dropped, which kills a
/// command it ran, and the exception propagates.
pub(crate) fn blocking<F>(py: Python<'_>, fut: F) -> PyResult<Py<PyAny>>
where
    F: Future<Output = Result<Value, Error>> + Send,
{
    let watch_signals = on_main_thread();
    let result = py.detach(|| {
        runtime().block_on(async {
            if !watch_signals {
                return Ok(fut.await);
            }
            tokio::pin!(fut);
            let start = tokio::time::Instant::now() + SIGNAL_CHECK;
            let mut tick = tokio::time::interval_at(start, SIGNAL_CHECK);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tokio::select! {
                    out = &mut fut => return Ok(out),
                    _ = tick.tick() => Python::attach(|py| py.check_signals())?,
                }
            }
        })
    });
    match result {
        Ok(Ok(v)) => v.into_py(py),
        Ok(Err(e)) => Err(e.into_py_err(py)),
        Err(interrupted) => Err(interrupted),
    }
}

/// A spawned operation, which the Python side cancels when its asyncio
/// future is cancelled.
#[pyclass(frozen, module = "alcove._alcove")]
pub(crate) struct NativeTask {
    handle: tokio::task::AbortHandle,
}

#[pymethods]
impl NativeTask {
    /// Stops the operation: its future is dropped (a command it ran is
    /// killed) and `done` is never called.
    fn cancel(&self) {
        self.handle.abort();
    }
}

/// Spawns `fut` on the runtime; when it ends, calls `done(True, value)` or
/// `done(False, exception)` from a runtime thread, with the GIL.
pub(crate) fn spawn<F>(done: Py<PyAny>, fut: F) -> NativeTask
where
    F: Future<Output = Result<Value, Error>> + Send + 'static,
{
    let task = runtime().spawn(async move {
        let result = fut.await;
        Python::attach(|py| {
            let (ok, value) = match result.map(|v| v.into_py(py)) {
                Ok(Ok(v)) => (true, v),
                Ok(Err(e)) => (false, e.into_value(py).into_any()),
                Err(e) => (false, e.into_py_err(py).into_value(py).into_any()),
            };
            if let Err(e) = done.call1(py, (ok, value)) {
                // The loop is closed: nobody waits for this result.
                e.write_unraisable(py, None);
            }
        });
    });
    NativeTask { handle: task.abort_handle() }
}

/// Every sandbox of the installation at `home` (`None`: `$ALCOVE_HOME`), as
/// JSON text: a list of what `NativeSandbox.info` gives.
#[pyfunction]
#[pyo3(signature = (home=None))]
fn list_sandboxes(py: Python<'_>, home: Option<std::path::PathBuf>) -> PyResult<String> {
    let infos = py.detach(|| alcove::embed::list(home.as_deref())).map_err(|e| Error::from(e).into_py_err(py))?;
    Ok(serde_json::Value::Array(infos.iter().map(sandbox::info_json).collect()).to_string())
}

/// A sandbox name as `alcove run` makes one.
#[pyfunction]
fn generated_name() -> String {
    alcove::Sandbox::generated_name()
}

#[pymodule]
fn _alcove(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<sandbox::NativeSandbox>()?;
    m.add_class::<stream::NativeStream>()?;
    m.add_class::<NativeTask>()?;
    m.add_function(wrap_pyfunction!(list_sandboxes, m)?)?;
    m.add_function(wrap_pyfunction!(generated_name, m)?)?;
    m.add("MAX_CONCURRENT_SESSIONS", sandbox::MAX_CONCURRENT_SESSIONS)?;
    Ok(())
}
