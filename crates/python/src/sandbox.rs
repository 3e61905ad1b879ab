//! `NativeSandbox`: one sandbox handle, shared by every Python thread and
//! task that uses it (`frozen`: no `&mut`, so no borrow can fail across
//! threads).
//!
//! Invariants:
//! - At most [`MAX_CONCURRENT_SESSIONS`] sessions (commands, streams, file
//!   operations) of one handle are open at once; the rest wait for a slot
//!   instead of being refused by the relay, which allows a connection that
//!   many.
//! - After `close()` or `remove()` every call raises `SandboxClosed`; a
//!   command already running keeps its session to the end.

use crate::errors::Error;
use crate::stream::NativeStream;
use crate::{blocking, spawn, Value};
use alcove::{Backend, Sandbox};
use alcove_client::ExecOptions;
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

/// The relay's limit of open sessions per connection.
pub(crate) const MAX_CONCURRENT_SESSIONS: usize = alcove::actors::relay::flow::MAX_SESSIONS_PER_CLIENT;

type Op = Pin<Box<dyn Future<Output = Result<Value, Error>> + Send + 'static>>;

pub(crate) struct Shared {
    pub(crate) sandbox: Sandbox,
    pub(crate) sessions: Arc<Semaphore>,
    closed: AtomicBool,
}

/// A running sandbox and the connection to it.
#[pyclass(frozen, module = "alcove._alcove")]
pub struct NativeSandbox {
    shared: Arc<Shared>,
}

impl NativeSandbox {
    fn new(sandbox: Sandbox) -> NativeSandbox {
        NativeSandbox {
            shared: Arc::new(Shared {
                sandbox,
                sessions: Arc::new(Semaphore::new(MAX_CONCURRENT_SESSIONS)),
                closed: AtomicBool::new(false),
            }),
        }
    }

    fn open(&self) -> PyResult<Arc<Shared>> {
        if self.shared.closed.load(Ordering::Acquire) {
            let msg = format!("the handle of sandbox {} is closed", self.shared.sandbox.name());
            return Err(Python::attach(|py| Error::Closed(msg).into_py_err(py)));
        }
        Ok(self.shared.clone())
    }

    /// A future using the client under a session slot.
    fn session<F, Fut>(&self, f: F) -> PyResult<Op>
    where
        F: FnOnce(alcove_client::Client) -> Fut + Send + 'static,
        Fut: Future<Output = Result<Value, Error>> + Send + 'static,
    {
        let shared = self.open()?;
        Ok(Box::pin(async move {
            let _slot = shared
                .sessions
                .clone()
                .acquire_owned()
                .await
                .map_err(|_| Error::Closed(format!("the handle of sandbox {} is closed", shared.sandbox.name())))?;
            f(shared.sandbox.client().clone()).await
        }))
    }

    fn exec_op(&self, argv: Vec<String>, stdin: Option<Vec<u8>>, cmd: Command) -> PyResult<Op> {
        let opts = cmd.options(argv)?;
        self.session(move |client| async move {
            let mut opts = opts;
            opts.stdin = stdin.is_some();
            let (input, output) = client.exec(opts).await?.split();
            // Dropped before the command's end (its asyncio future was
            // cancelled): nobody waits for it, so it is killed.
            let mut guard = crate::stream::KillOnDrop::new(input.clone());
            let feed = async {
                // A command that exits before reading everything ends the
                // session; the outcome is then the collected output's.
                if let Some(data) = &stdin {
                    if input.write_stdin(data).await.is_ok() {
                        let _ = input.close_stdin();
                    }
                }
            };
            let collect = output.collect();
            tokio::pin!(feed, collect);
            let mut fed = false;
            let out = loop {
                tokio::select! {
                    out = &mut collect => break out,
                    () = &mut feed, if !fed => fed = true,
                }
            };
            guard.disarm();
            Ok(Value::Output(out?))
        })
    }

    fn stream_op(&self, argv: Vec<String>, cmd: Command, tty: Option<(u16, u16)>, stdin: bool) -> PyResult<Op> {
        let mut opts = cmd.options(argv)?;
        opts.tty = tty.map(|(rows, cols)| alcove_client::TtySize { rows, cols });
        opts.stdin = stdin || tty.is_some();
        let shared = self.open()?;
        Ok(Box::pin(async move {
            let slot = shared
                .sessions
                .clone()
                .acquire_owned()
                .await
                .map_err(|_| Error::Closed(format!("the handle of sandbox {} is closed", shared.sandbox.name())))?;
            let session = shared.sandbox.client().exec(opts).await?;
            Ok(Value::Stream(NativeStream::new(session, slot)))
        }))
    }

    fn lifecycle_op(&self, what: Lifecycle) -> PyResult<Op> {
        let shared = self.open()?;
        Ok(Box::pin(async move {
            let sandbox = &shared.sandbox;
            Ok(match what {
                Lifecycle::Stop(t) => Value::Bool(sandbox.stop(t).await?),
                Lifecycle::Kill => Value::Bool(sandbox.kill().await?),
                Lifecycle::Remove => {
                    sandbox.remove().await?;
                    shared.closed.store(true, Ordering::Release);
                    Value::None
                }
            })
        }))
    }
}

enum Lifecycle {
    Stop(Duration),
    Kill,
    Remove,
}

/// The settings of one command.
struct Command {
    env: Vec<(String, String)>,
    cwd: Option<String>,
    user: Option<String>,
    timeout: Option<f64>,
}

impl Command {
    fn options(self, argv: Vec<String>) -> PyResult<ExecOptions> {
        if argv.is_empty() {
            return Err(PyValueError::new_err("the command is empty"));
        }
        let mut opts = ExecOptions::new(argv);
        opts.env = self.env;
        opts.cwd = self.cwd;
        opts.user = self.user;
        opts.timeout = self.timeout.map(|t| seconds("timeout", t)).transpose()?;
        Ok(opts)
    }
}

/// A positive, finite number of seconds.
fn seconds(what: &str, value: f64) -> PyResult<Duration> {
    if !value.is_finite() || value <= 0.0 {
        return Err(PyValueError::new_err(format!("{what} must be a positive number of seconds, not {value}")));
    }
    Duration::try_from_secs_f64(value).map_err(|e| PyValueError::new_err(format!("{what}: {e}")))
}

/// Reads `key` of the settings dict as `T`, or a `TypeError` naming it.
fn setting<'py, T: FromPyObjectOwned<'py>>(d: &Bound<'py, PyDict>, key: &str, what: &str) -> PyResult<Option<T>> {
    match d.get_item(key)? {
        None => Ok(None),
        Some(v) if v.is_none() => Ok(None),
        Some(v) => v.extract::<T>().map(Some).map_err(|_| {
            let ty = v.get_type().name().map(|n| n.to_string()).unwrap_or_else(|_| "?".into());
            PyTypeError::new_err(format!("{key} must be {what}, not {ty}"))
        }),
    }
}

use pyo3::conversion::FromPyObjectOwned;

fn builder(settings: &Bound<'_, PyDict>) -> PyResult<alcove::SandboxBuilder> {
    let name: String = match setting(settings, "name", "a str")? {
        Some(n) => n,
        None => Sandbox::generated_name(),
    };
    let mut b = Sandbox::builder(name);
    if let Some(home) = setting::<PathBuf>(settings, "home", "a path")? {
        b = b.home(home);
    }
    if let Some(exe) = setting::<PathBuf>(settings, "executable", "a path")? {
        b = b.executable(exe);
    }
    if let Some(backend) = setting::<String>(settings, "backend", "a str")? {
        let backend: Backend = backend.parse().map_err(|e: alcove::EmbedError| PyValueError::new_err(e.to_string()))?;
        b = b.backend(backend);
    }
    if let Some(rootfs) = setting::<PathBuf>(settings, "rootfs", "a str or path")? {
        b = b.rootfs(rootfs.to_string_lossy().into_owned());
    }
    if let Some(m) = setting::<u64>(settings, "memory", "an int (MiB)")? {
        b = b.memory_mib(m);
    }
    if let Some(c) = setting::<u32>(settings, "cpus", "an int")? {
        b = b.cpus(c);
    }
    if let Some(p) = setting::<u64>(settings, "pids", "an int")? {
        b = b.pids(p);
    }
    if let Some(d) = setting::<u64>(settings, "disk", "an int (MiB)")? {
        b = b.disk_mib(d);
    }
    if let Some(t) = setting::<f64>(settings, "idle_timeout", "a number of seconds")? {
        b = b.idle_timeout(seconds("idle_timeout", t)?);
    }
    if let Some(t) = setting::<f64>(settings, "max_duration", "a number of seconds")? {
        b = b.max_duration(seconds("max_duration", t)?);
    }
    if let Some(n) = setting::<String>(settings, "network", "a str")? {
        b = b.network(n);
    }
    for rule in setting::<Vec<String>>(settings, "net_rules", "a list of str")?.unwrap_or_default() {
        b = b.net_rule(rule);
    }
    for (k, v) in setting::<Vec<(String, String)>>(settings, "env", "a dict of str to str")?.unwrap_or_default() {
        b = b.env(k, v);
    }
    for v in setting::<Vec<String>>(settings, "volumes", "a list of str")?.unwrap_or_default() {
        b = b.volume(v);
    }
    if let Some(w) = setting::<String>(settings, "workdir", "a str")? {
        b = b.workdir(w);
    }
    if let Some(u) = setting::<String>(settings, "user", "a str")? {
        b = b.user(u);
    }
    if let Some(r) = setting::<bool>(settings, "auto_remove", "a bool")? {
        b = b.auto_remove(r);
    }
    Ok(b)
}

fn create_op(settings: &Bound<'_, PyDict>) -> PyResult<Op> {
    let b = builder(settings)?;
    Ok(Box::pin(async move {
        let sandbox = b.start().await.map_err(|e| match e {
            alcove::EmbedError::Failed(m) => Error::Start(m),
            e => Error::Embed(e),
        })?;
        Ok(Value::Sandbox(NativeSandbox::new(sandbox)))
    }))
}

fn connect_op(name: String, home: Option<PathBuf>) -> Op {
    Box::pin(async move {
        let sandbox = Sandbox::connect(home.as_deref(), &name).await?;
        Ok(Value::Sandbox(NativeSandbox::new(sandbox)))
    })
}

fn ms(t: Option<i64>) -> serde_json::Value {
    t.map(serde_json::Value::from).unwrap_or_default()
}

/// A sandbox's record as JSON text (parsed by the Python side).
pub(crate) fn info_json(info: &alcove::SandboxInfo) -> serde_json::Value {
    let run = info.last_run.as_ref().map(|r| {
        serde_json::json!({
            "id": r.id, "pid": r.pid, "status": r.status.to_string(),
            "exit_code": r.exit_code, "exit_signal": r.exit_signal,
            "reason": r.reason.map(|x| x.to_string()), "detail": r.detail,
            "started_at_ms": r.started_at_ms, "terminated_at_ms": ms(r.terminated_at_ms),
        })
    });
    serde_json::json!({
        "name": info.name, "status": info.status.to_string(), "backend": info.backend,
        "pid": info.pid, "created_at_ms": info.created_at_ms, "last_run": run,
    })
}

#[pymethods]
impl NativeSandbox {
    /// Creates and starts a sandbox from a settings dict (see
    /// `alcove.Sandbox.create`); blocks until it accepts commands.
    #[staticmethod]
    fn create(py: Python<'_>, settings: &Bound<'_, PyDict>) -> PyResult<Py<PyAny>> {
        blocking(py, create_op(settings)?)
    }

    #[staticmethod]
    fn create_async(done: Py<PyAny>, settings: &Bound<'_, PyDict>) -> PyResult<crate::NativeTask> {
        Ok(spawn(done, create_op(settings)?))
    }

    #[staticmethod]
    #[pyo3(signature = (name, home=None))]
    fn connect(py: Python<'_>, name: String, home: Option<PathBuf>) -> PyResult<Py<PyAny>> {
        blocking(py, connect_op(name, home))
    }

    #[staticmethod]
    #[pyo3(signature = (done, name, home=None))]
    fn connect_async(done: Py<PyAny>, name: String, home: Option<PathBuf>) -> crate::NativeTask {
        spawn(done, connect_op(name, home))
    }

    #[getter]
    fn name(&self) -> String {
        self.shared.sandbox.name().to_string()
    }

    #[getter]
    fn pid(&self) -> u32 {
        self.shared.sandbox.pid()
    }

    #[getter]
    fn home(&self) -> PathBuf {
        self.shared.sandbox.home().to_path_buf()
    }

    #[getter]
    fn closed(&self) -> bool {
        self.shared.closed.load(Ordering::Acquire)
    }

    /// Marks the handle closed; the sandbox itself is untouched.
    fn close(&self) {
        self.shared.closed.store(true, Ordering::Release);
    }

    #[pyo3(signature = (argv, stdin=None, env=Vec::new(), cwd=None, user=None, timeout=None))]
    #[allow(clippy::too_many_arguments)]
    fn exec(
        &self,
        py: Python<'_>,
        argv: Vec<String>,
        stdin: Option<Vec<u8>>,
        env: Vec<(String, String)>,
        cwd: Option<String>,
        user: Option<String>,
        timeout: Option<f64>,
    ) -> PyResult<Py<PyAny>> {
        blocking(py, self.exec_op(argv, stdin, Command { env, cwd, user, timeout })?)
    }

    #[pyo3(signature = (done, argv, stdin=None, env=Vec::new(), cwd=None, user=None, timeout=None))]
    #[allow(clippy::too_many_arguments)]
    fn exec_async(
        &self,
        done: Py<PyAny>,
        argv: Vec<String>,
        stdin: Option<Vec<u8>>,
        env: Vec<(String, String)>,
        cwd: Option<String>,
        user: Option<String>,
        timeout: Option<f64>,
    ) -> PyResult<crate::NativeTask> {
        Ok(spawn(done, self.exec_op(argv, stdin, Command { env, cwd, user, timeout })?))
    }

    #[pyo3(signature = (argv, env=Vec::new(), cwd=None, user=None, timeout=None, tty=None, stdin=false))]
    #[allow(clippy::too_many_arguments)]
    fn stream(
        &self,
        py: Python<'_>,
        argv: Vec<String>,
        env: Vec<(String, String)>,
        cwd: Option<String>,
        user: Option<String>,
        timeout: Option<f64>,
        tty: Option<(u16, u16)>,
        stdin: bool,
    ) -> PyResult<Py<PyAny>> {
        blocking(py, self.stream_op(argv, Command { env, cwd, user, timeout }, tty, stdin)?)
    }

    #[pyo3(signature = (done, argv, env=Vec::new(), cwd=None, user=None, timeout=None, tty=None, stdin=false))]
    #[allow(clippy::too_many_arguments)]
    fn stream_async(
        &self,
        done: Py<PyAny>,
        argv: Vec<String>,
        env: Vec<(String, String)>,
        cwd: Option<String>,
        user: Option<String>,
        timeout: Option<f64>,
        tty: Option<(u16, u16)>,
        stdin: bool,
    ) -> PyResult<crate::NativeTask> {
        Ok(spawn(done, self.stream_op(argv, Command { env, cwd, user, timeout }, tty, stdin)?))
    }

    /// File operations: `op` is read, write, list, stat, remove or mkdir.
    #[pyo3(signature = (op, path, data=None, mode=0o644, flag=false))]
    fn files(
        &self,
        py: Python<'_>,
        op: &str,
        path: String,
        data: Option<Vec<u8>>,
        mode: u32,
        flag: bool,
    ) -> PyResult<Py<PyAny>> {
        blocking(py, self.files_op(op, path, data, mode, flag)?)
    }

    #[pyo3(signature = (done, op, path, data=None, mode=0o644, flag=false))]
    fn files_async(
        &self,
        done: Py<PyAny>,
        op: &str,
        path: String,
        data: Option<Vec<u8>>,
        mode: u32,
        flag: bool,
    ) -> PyResult<crate::NativeTask> {
        Ok(spawn(done, self.files_op(op, path, data, mode, flag)?))
    }

    fn stop(&self, py: Python<'_>, timeout: f64) -> PyResult<Py<PyAny>> {
        blocking(py, self.lifecycle_op(Lifecycle::Stop(stop_timeout(timeout)?))?)
    }

    fn stop_async(&self, done: Py<PyAny>, timeout: f64) -> PyResult<crate::NativeTask> {
        Ok(spawn(done, self.lifecycle_op(Lifecycle::Stop(stop_timeout(timeout)?))?))
    }

    fn kill(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        blocking(py, self.lifecycle_op(Lifecycle::Kill)?)
    }

    fn kill_async(&self, done: Py<PyAny>) -> PyResult<crate::NativeTask> {
        Ok(spawn(done, self.lifecycle_op(Lifecycle::Kill)?))
    }

    fn remove(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        blocking(py, self.lifecycle_op(Lifecycle::Remove)?)
    }

    fn remove_async(&self, done: Py<PyAny>) -> PyResult<crate::NativeTask> {
        Ok(spawn(done, self.lifecycle_op(Lifecycle::Remove)?))
    }

    /// The sandbox's record as JSON text.
    fn info(&self, py: Python<'_>) -> PyResult<String> {
        let shared = self.open()?;
        let info = py.detach(|| shared.sandbox.info()).map_err(|e| Error::from(e).into_py_err(py))?;
        Ok(info_json(&info).to_string())
    }

    /// The newest metric sample as JSON text (`null` before the first).
    fn metrics(&self, py: Python<'_>) -> PyResult<String> {
        let shared = self.open()?;
        let sample = py.detach(|| shared.sandbox.metrics()).map_err(|e| Error::from(e).into_py_err(py))?;
        serde_json::to_string(&sample).map_err(|e| PyValueError::new_err(e.to_string()))
    }
}

fn stop_timeout(t: f64) -> PyResult<Duration> {
    if t == 0.0 {
        return Ok(Duration::ZERO);
    }
    seconds("timeout", t)
}

impl NativeSandbox {
    fn files_op(&self, op: &str, path: String, data: Option<Vec<u8>>, mode: u32, flag: bool) -> PyResult<Op> {
        let op = match op {
            "read" | "write" | "list" | "stat" | "remove" | "mkdir" => op.to_string(),
            other => return Err(PyValueError::new_err(format!("unknown file operation {other:?}"))),
        };
        self.session(move |client| async move {
            Ok(match op.as_str() {
                "read" => Value::Bytes(client.read_file(&path).await?),
                "write" => Value::U64(client.write_file(&path, mode, data.as_deref().unwrap_or_default()).await?),
                "list" => Value::Entries(client.list(&path).await?),
                "stat" => Value::Stat(client.stat(&path).await?),
                "remove" => {
                    client.remove(&path, flag).await?;
                    Value::None
                }
                _ => {
                    client.mkdir(&path, flag).await?;
                    Value::None
                }
            })
        })
    }
}
