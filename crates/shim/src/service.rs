//! containerd's shim v2 contract: the `Shim` entry points (start, delete,
//! serve) and the ttrpc `containerd.task.v2.Task` service over
//! [`Container`]s.
//!
//! Invariants:
//! - One shim process serves the containers containerd groups onto it, by
//!   id (one for `ctr`; a pod's containers later). The map holds a
//!   container from a successful Create until its Delete.
//! - Every error reaches containerd as one line with a ttrpc code:
//!   InvalidArgument for a bundle alcove refuses, NotFound for an unknown
//!   id, FailedPrecondition for a call out of order, Internal otherwise.
//! - Events follow containerd's order: TaskCreate after Create, TaskStart
//!   after Start, TaskOOM (when the OOM killer ended it) then TaskExit once
//!   per process after its output is written, TaskPaused/TaskResumed after
//!   the sandbox's guest is frozen/thawed, TaskDelete after Delete.
//! - Pause and Resume act on the whole sandbox (init and execs), like
//!   runc's on a container; a running process of a paused container is
//!   PAUSED. SIGKILL to a paused task resumes it first (TaskResumed), as
//!   runc's kill thaws: a frozen process cannot die.
//! - The pid containerd sees for a task is the host pid of its sandbox
//!   process (the command's own pid is a pid in the sandbox's namespace).

use crate::bundle::{self, BundleError};
use crate::container::{self, Container, ContainerError, CreateRequest};
use crate::mount::RootfsMount;
use crate::process::{Exit, Phase, Process, ProcessError, Stdio};
use async_trait::async_trait;
use containerd_shim::asynchronous::{spawn, ExitSignal, Shim};
use containerd_shim::protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskIO, TaskOOM, TaskPaused, TaskResumed,
    TaskStart,
};
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::protobuf::MessageDyn;
use containerd_shim::protos::shim_async::Task;
use containerd_shim::protos::topics;
use containerd_shim::protos::ttrpc::r#async::TtrpcContext;
use containerd_shim::protos::ttrpc::{self, context::Context, Code};
use containerd_shim::protos::types::task::{ProcessInfo, Status};
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{api, Config, Flags, StartOpts, TtrpcResult};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

/// The runtime name containerd knows this shim by.
pub const RUNTIME_ID: &str = "io.containerd.alcove.v2";

/// The shim: what `start`/`delete` need, and the task service it serves.
#[derive(Clone)]
pub struct AlcoveShim {
    namespace: String,
    /// The ttrpc socket this process serves on (`unix://…`; empty for
    /// `start` and `delete`).
    socket: String,
    exit: Arc<ExitSignal>,
}

#[async_trait]
impl Shim for AlcoveShim {
    type T = TaskService;

    async fn new(_runtime_id: &str, args: &Flags, config: &mut Config) -> Self {
        // The crate's reaper waits for every child; the embedding API waits
        // for its sandbox processes itself.
        config.no_reaper = true;
        AlcoveShim {
            namespace: args.namespace.clone(),
            socket: args.socket.clone(),
            exit: Arc::new(ExitSignal::default()),
        }
    }

    async fn start_shim(&mut self, opts: StartOpts) -> Result<String, containerd_shim::Error> {
        let grouping = opts.id.clone();
        spawn(opts, &grouping, Vec::new()).await
    }

    async fn delete_shim(&mut self) -> Result<api::DeleteResponse, containerd_shim::Error> {
        // containerd runs `delete` in the bundle directory after a shim died.
        let bundle = std::env::current_dir().map_err(|e| containerd_shim::Error::Other(e.to_string()))?;
        container::clean_up_bundle(&bundle).map_err(containerd_shim::Error::Other)?;
        Ok(api::DeleteResponse {
            exit_status: 128 + libc::SIGKILL as u32,
            exited_at: Some(timestamp(SystemTime::now())).into(),
            ..Default::default()
        })
    }

    async fn wait(&mut self) {
        self.exit.wait().await;
        // The crate removes the socket through a file in the bundle, which
        // containerd may have removed by now: a socket left behind would
        // refuse the next shim of the same id (AddrInUse).
        let path = self.socket.strip_prefix("unix://").unwrap_or(&self.socket);
        if !path.is_empty() {
            let _ = std::fs::remove_file(path);
        }
    }

    async fn create_task_service(&self, publisher: RemotePublisher) -> TaskService {
        TaskService {
            inner: Arc::new(Inner {
                namespace: self.namespace.clone(),
                exit: self.exit.clone(),
                publisher,
                containers: Mutex::new(HashMap::new()),
            }),
        }
    }
}

/// The ttrpc Task service.
#[derive(Clone)]
pub struct TaskService {
    inner: Arc<Inner>,
}

struct Inner {
    namespace: String,
    exit: Arc<ExitSignal>,
    publisher: RemotePublisher,
    containers: Mutex<HashMap<String, Arc<Container>>>,
}

/// A failure as containerd receives it.
#[derive(Debug, thiserror::Error)]
enum ServiceError {
    #[error(transparent)]
    Container(#[from] ContainerError),
    #[error(transparent)]
    Process(#[from] ProcessError),
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error("container {0} not found")]
    NoContainer(String),
    #[error("process {0} not found")]
    NoProcess(String),
    #[error("{0}")]
    Precondition(String),
}

impl From<ServiceError> for ttrpc::Error {
    fn from(e: ServiceError) -> ttrpc::Error {
        let code = match &e {
            ServiceError::Container(ContainerError::Bundle(_) | ContainerError::NoRootfs(_)) => Code::INVALID_ARGUMENT,
            ServiceError::Container(ContainerError::Sandbox(alcove::EmbedError::InvalidArgument(_))) => {
                Code::INVALID_ARGUMENT
            }
            ServiceError::Container(ContainerError::Mount(crate::mount::MountError::UnsupportedType(_))) => {
                Code::INVALID_ARGUMENT
            }
            ServiceError::Container(ContainerError::Pause(alcove_client::ClientError::Refused(_))) => {
                Code::FAILED_PRECONDITION
            }
            ServiceError::NoContainer(_) | ServiceError::NoProcess(_) => Code::NOT_FOUND,
            ServiceError::Process(ProcessError::AlreadyStarted(_)) | ServiceError::Precondition(_) => {
                Code::FAILED_PRECONDITION
            }
            ServiceError::Process(ProcessError::NotRunning(_)) => Code::NOT_FOUND,
            _ => Code::INTERNAL,
        };
        ttrpc::Error::RpcStatus(ttrpc::get_status(code, e.to_string()))
    }
}

fn timestamp(t: SystemTime) -> Timestamp {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    Timestamp { seconds: d.as_secs() as i64, nanos: d.subsec_nanos() as i32, ..Default::default() }
}

impl Inner {
    fn container(&self, id: &str) -> Result<Arc<Container>, ServiceError> {
        self.containers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
            .ok_or_else(|| ServiceError::NoContainer(id.to_string()))
    }

    fn process(&self, id: &str, exec_id: &str) -> Result<(Arc<Container>, Arc<Process>), ServiceError> {
        let c = self.container(id)?;
        let p = c.process(exec_id).ok_or_else(|| ServiceError::NoProcess(exec_id.to_string()))?;
        Ok((c, p))
    }

    async fn publish(&self, topic: &str, event: Box<dyn MessageDyn>) {
        // An event containerd cannot take is logged, never fatal to the task.
        if let Err(e) = self.publisher.publish(Context::default(), topic, &self.namespace, event).await {
            log::warn!("publishing {topic}: {e}");
        }
    }
}

#[async_trait]
impl Task for TaskService {
    async fn create(&self, _ctx: &TtrpcContext, req: api::CreateTaskRequest) -> TtrpcResult<api::CreateTaskResponse> {
        if !req.checkpoint.is_empty() || !req.parent_checkpoint.is_empty() {
            return Err(ServiceError::Precondition("checkpoint/restore is not supported by alcove".into()).into());
        }
        if self.inner.container(&req.id).is_ok() {
            return Err(ServiceError::Precondition(format!("container {} already exists", req.id)).into());
        }
        let stdio = Stdio { stdin: req.stdin.clone(), stdout: req.stdout.clone(), stderr: req.stderr.clone() };
        let rootfs = req
            .rootfs
            .iter()
            .map(|m| RootfsMount { kind: m.type_.clone(), source: m.source.clone(), options: m.options.clone() })
            .collect();
        let create = CreateRequest {
            id: req.id.clone(),
            namespace: self.inner.namespace.clone(),
            bundle: PathBuf::from(&req.bundle),
            rootfs,
            stdio,
        };
        let container = Arc::new(Container::create(create).await.map_err(ServiceError::from)?);
        let pid = container.sandbox.pid();
        self.inner.containers.lock().unwrap_or_else(|p| p.into_inner()).insert(req.id.clone(), container);
        let event = TaskCreate {
            container_id: req.id.clone(),
            bundle: req.bundle.clone(),
            rootfs: req.rootfs.clone(),
            io: Some(TaskIO {
                stdin: req.stdin.clone(),
                stdout: req.stdout.clone(),
                stderr: req.stderr.clone(),
                terminal: req.terminal,
                ..Default::default()
            })
            .into(),
            pid,
            ..Default::default()
        };
        self.inner.publish(topics::TASK_CREATE_EVENT_TOPIC, Box::new(event)).await;
        Ok(api::CreateTaskResponse { pid, ..Default::default() })
    }

    async fn start(&self, _ctx: &TtrpcContext, req: api::StartRequest) -> TtrpcResult<api::StartResponse> {
        let (container, process) = self.inner.process(&req.id, &req.exec_id)?;
        if !req.exec_id.is_empty() && !matches!(container.init.phase(), Phase::Running { .. }) {
            return Err(ServiceError::Precondition(format!("task {} is not running", req.id)).into());
        }
        let pid = container.sandbox.pid();
        let inner = self.inner.clone();
        let (container_id, process_id) = (req.id.clone(), process.id.clone());
        let on_exit = move |exit: Exit| {
            let event = TaskExit {
                container_id,
                id: process_id,
                pid,
                exit_status: exit.code,
                exited_at: Some(timestamp(exit.at)).into(),
                ..Default::default()
            };
            tokio::spawn(async move {
                if exit.oom_killed {
                    let oom = TaskOOM { container_id: event.container_id.clone(), ..Default::default() };
                    inner.publish(topics::TASK_OOM_EVENT_TOPIC, Box::new(oom)).await;
                }
                inner.publish(topics::TASK_EXIT_EVENT_TOPIC, Box::new(event)).await
            });
        };
        process.start(container.sandbox.client(), on_exit).await.map_err(ServiceError::from)?;
        if req.exec_id.is_empty() {
            let event = TaskStart { container_id: req.id.clone(), pid, ..Default::default() };
            self.inner.publish(topics::TASK_START_EVENT_TOPIC, Box::new(event)).await;
        } else {
            let event = TaskExecStarted {
                container_id: req.id.clone(),
                exec_id: req.exec_id.clone(),
                pid,
                ..Default::default()
            };
            self.inner.publish(topics::TASK_EXEC_STARTED_EVENT_TOPIC, Box::new(event)).await;
        }
        Ok(api::StartResponse { pid, ..Default::default() })
    }

    async fn state(&self, _ctx: &TtrpcContext, req: api::StateRequest) -> TtrpcResult<api::StateResponse> {
        let (container, process) = self.inner.process(&req.id, &req.exec_id)?;
        let mut resp = api::StateResponse {
            id: process.id.clone(),
            bundle: container.bundle.display().to_string(),
            pid: container.sandbox.pid(),
            stdin: process.stdio.stdin.clone(),
            stdout: process.stdio.stdout.clone(),
            stderr: process.stdio.stderr.clone(),
            exec_id: req.exec_id.clone(),
            ..Default::default()
        };
        resp.status = match process.phase() {
            Phase::Created => Status::CREATED,
            Phase::Running { .. } if container.is_paused() => Status::PAUSED,
            Phase::Running { .. } => Status::RUNNING,
            Phase::Exited(exit) => {
                resp.exit_status = exit.code;
                resp.exited_at = Some(timestamp(exit.at)).into();
                Status::STOPPED
            }
        }
        .into();
        Ok(resp)
    }

    async fn wait(&self, _ctx: &TtrpcContext, req: api::WaitRequest) -> TtrpcResult<api::WaitResponse> {
        let (_, process) = self.inner.process(&req.id, &req.exec_id)?;
        let exit = process.wait().await;
        Ok(api::WaitResponse {
            exit_status: exit.code,
            exited_at: Some(timestamp(exit.at)).into(),
            ..Default::default()
        })
    }

    async fn kill(&self, _ctx: &TtrpcContext, req: api::KillRequest) -> TtrpcResult<api::Empty> {
        let (container, process) = self.inner.process(&req.id, &req.exec_id)?;
        if req.signal == libc::SIGKILL as u32 && container.is_paused() {
            // A frozen agent cannot deliver it, and a frozen process cannot
            // die: SIGKILL resumes the task first, as runc's kill thaws.
            container.set_paused(false).await.map_err(ServiceError::from)?;
            let event = TaskResumed { container_id: req.id.clone(), ..Default::default() };
            self.inner.publish(topics::TASK_RESUMED_EVENT_TOPIC, Box::new(event)).await;
        }
        match process.phase() {
            // Killing a task that never started ends it, as runc's does.
            Phase::Created => process.finish(Exit { code: 128 + req.signal, oom_killed: false, at: SystemTime::now() }),
            Phase::Running { .. } => process.signal(req.signal).map_err(ServiceError::from)?,
            Phase::Exited(_) => {
                return Err(ServiceError::Process(ProcessError::NotRunning(process.id.clone())).into());
            }
        }
        Ok(api::Empty::default())
    }

    async fn delete(&self, _ctx: &TtrpcContext, req: api::DeleteRequest) -> TtrpcResult<api::DeleteResponse> {
        let (container, process) = self.inner.process(&req.id, &req.exec_id)?;
        let exit = match process.phase() {
            Phase::Running { .. } => {
                return Err(ServiceError::Precondition(format!("task {} is running: kill it first", req.id)).into())
            }
            Phase::Exited(exit) => exit,
            // Deleting a created task ends it unstarted.
            Phase::Created => Exit { code: 128 + libc::SIGKILL as u32, oom_killed: false, at: SystemTime::now() },
        };
        if !req.exec_id.is_empty() {
            // An exec's end is its own; the sandbox stays.
            process.finish(exit);
            container.remove_exec(&req.exec_id);
            let pid = container.sandbox.pid();
            return Ok(api::DeleteResponse {
                pid,
                exit_status: exit.code,
                exited_at: Some(timestamp(exit.at)).into(),
                ..Default::default()
            });
        }
        container.destroy().await.map_err(ServiceError::from)?;
        process.finish(exit);
        self.inner.containers.lock().unwrap_or_else(|p| p.into_inner()).remove(&req.id);
        let pid = container.sandbox.pid();
        let event = TaskDelete {
            container_id: req.id.clone(),
            pid,
            exit_status: exit.code,
            exited_at: Some(timestamp(exit.at)).into(),
            ..Default::default()
        };
        self.inner.publish(topics::TASK_DELETE_EVENT_TOPIC, Box::new(event)).await;
        Ok(api::DeleteResponse {
            pid,
            exit_status: exit.code,
            exited_at: Some(timestamp(exit.at)).into(),
            ..Default::default()
        })
    }

    async fn exec(&self, _ctx: &TtrpcContext, req: api::ExecProcessRequest) -> TtrpcResult<api::Empty> {
        let container = self.inner.container(&req.id)?;
        if !matches!(container.init.phase(), Phase::Running { .. }) {
            return Err(ServiceError::Precondition(format!("task {} is not running", req.id)).into());
        }
        let spec = req.spec.as_ref().map(|any| any.value.as_slice()).unwrap_or_default();
        let spec = bundle::parse_process(spec).map_err(ServiceError::from)?;
        let stdio = Stdio { stdin: req.stdin.clone(), stdout: req.stdout.clone(), stderr: req.stderr.clone() };
        let process = Arc::new(Process::new(req.exec_id.clone(), container::main_command(&spec), stdio));
        if !container.add_exec(process) {
            return Err(ServiceError::Precondition(format!("exec {} already exists", req.exec_id)).into());
        }
        let event = TaskExecAdded { container_id: req.id.clone(), exec_id: req.exec_id.clone(), ..Default::default() };
        self.inner.publish(topics::TASK_EXEC_ADDED_EVENT_TOPIC, Box::new(event)).await;
        Ok(api::Empty::default())
    }

    async fn pause(&self, _ctx: &TtrpcContext, req: api::PauseRequest) -> TtrpcResult<api::Empty> {
        let container = self.inner.container(&req.id)?;
        if !matches!(container.init.phase(), Phase::Running { .. }) {
            return Err(ServiceError::Precondition(format!("task {} is not running", req.id)).into());
        }
        container.set_paused(true).await.map_err(ServiceError::from)?;
        let event = TaskPaused { container_id: req.id.clone(), ..Default::default() };
        self.inner.publish(topics::TASK_PAUSED_EVENT_TOPIC, Box::new(event)).await;
        Ok(api::Empty::default())
    }

    async fn resume(&self, _ctx: &TtrpcContext, req: api::ResumeRequest) -> TtrpcResult<api::Empty> {
        let container = self.inner.container(&req.id)?;
        container.set_paused(false).await.map_err(ServiceError::from)?;
        let event = TaskResumed { container_id: req.id.clone(), ..Default::default() };
        self.inner.publish(topics::TASK_RESUMED_EVENT_TOPIC, Box::new(event)).await;
        Ok(api::Empty::default())
    }

    async fn close_io(&self, _ctx: &TtrpcContext, req: api::CloseIORequest) -> TtrpcResult<api::Empty> {
        let (_, process) = self.inner.process(&req.id, &req.exec_id)?;
        // Only stdin can be closed: the outputs end with the process.
        if req.stdin {
            process.close_stdin().map_err(ServiceError::from)?;
        }
        Ok(api::Empty::default())
    }

    async fn resize_pty(&self, _ctx: &TtrpcContext, req: api::ResizePtyRequest) -> TtrpcResult<api::Empty> {
        let (_, process) = self.inner.process(&req.id, &req.exec_id)?;
        let rows = u16::try_from(req.height).unwrap_or(u16::MAX);
        let cols = u16::try_from(req.width).unwrap_or(u16::MAX);
        process.resize(rows, cols).map_err(ServiceError::from)?;
        Ok(api::Empty::default())
    }

    async fn stats(&self, _ctx: &TtrpcContext, req: api::StatsRequest) -> TtrpcResult<api::StatsResponse> {
        let container = self.inner.container(&req.id)?;
        let metrics = crate::stats::read(&container.cgroup_dirs());
        let any = containerd_shim::util::convert_to_any(Box::new(metrics))
            .map_err(|e| ttrpc::Error::RpcStatus(ttrpc::get_status(Code::INTERNAL, e.to_string())))?;
        Ok(api::StatsResponse { stats: Some(any).into(), ..Default::default() })
    }

    async fn pids(&self, _ctx: &TtrpcContext, req: api::PidsRequest) -> TtrpcResult<api::PidsResponse> {
        let container = self.inner.container(&req.id)?;
        let processes =
            container.host_pids().into_iter().map(|pid| ProcessInfo { pid, ..Default::default() }).collect();
        Ok(api::PidsResponse { processes, ..Default::default() })
    }

    async fn connect(&self, _ctx: &TtrpcContext, req: api::ConnectRequest) -> TtrpcResult<api::ConnectResponse> {
        let task_pid = self.inner.container(&req.id).map(|c| c.sandbox.pid()).unwrap_or(0);
        Ok(api::ConnectResponse {
            shim_pid: std::process::id(),
            task_pid,
            version: env!("CARGO_PKG_VERSION").to_string(),
            ..Default::default()
        })
    }

    async fn shutdown(&self, _ctx: &TtrpcContext, _req: api::ShutdownRequest) -> TtrpcResult<api::Empty> {
        // containerd asks after every Delete; the shim ends once it serves
        // no container.
        if self.inner.containers.lock().unwrap_or_else(|p| p.into_inner()).is_empty() {
            self.inner.exit.signal();
        }
        Ok(api::Empty::default())
    }
}
