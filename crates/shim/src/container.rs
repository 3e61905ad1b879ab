//! One containerd container: its bundle, its mounted rootfs, the alcove
//! sandbox it runs in and its processes.
//!
//! Invariants:
//! - A container exists only with a running sandbox: [`Container::create`]
//!   either returns both, or leaves nothing behind (no mount, no sandbox,
//!   no marker file).
//! - The sandbox's name is recorded in the bundle (`alcove-sandbox`) before
//!   the sandbox starts, so a `delete` after a shim crash finds it.
//! - [`Container::destroy`] removes the sandbox (processes, records, files)
//!   and unmounts what Create mounted; it may be called again after a
//!   partial failure.
//!
//! Pods: a container here owns its sandbox. Later containers of a pod will
//! hold a shared sandbox instead (the `sandbox` field becomes shared), with
//! their own rootfs set up inside it; nothing else here changes.

use crate::bundle::{self, TaskSpec};
use crate::mount::{self, RootfsMount};
use crate::process::{Process, Stdio};
use alcove::{Backend, Sandbox};
use alcove_client::ExecOptions;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// The file in the bundle naming the task's sandbox.
pub const SANDBOX_MARKER: &str = "alcove-sandbox";

/// Why a container could not be created or removed.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    /// The bundle is refused.
    #[error(transparent)]
    Bundle(#[from] bundle::BundleError),
    /// The bundle cannot be read.
    #[error("bundle {path}: {source}")]
    Read {
        /// What was read.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// No rootfs: neither mounts from containerd nor a directory.
    #[error("the bundle has no root filesystem: no rootfs mounts and no directory {0}")]
    NoRootfs(String),
    /// The rootfs could not be mounted or unmounted.
    #[error(transparent)]
    Mount(#[from] mount::MountError),
    /// alcove refused or failed the sandbox.
    #[error("alcove: {0}")]
    Sandbox(#[from] alcove::EmbedError),
    /// The sandbox refused or failed a pause or resume.
    #[error("alcove: {0}")]
    Pause(#[source] alcove_client::ClientError),
}

/// A container and its sandbox.
pub struct Container {
    /// containerd's container id.
    pub id: String,
    /// The bundle directory.
    pub bundle: PathBuf,
    /// The rootfs directory, when this shim mounted it.
    mounted_rootfs: Option<PathBuf>,
    /// The sandbox it runs in.
    pub sandbox: Sandbox,
    /// Its main process.
    pub init: Arc<Process>,
    /// Its execs, by exec id.
    pub execs: Mutex<HashMap<String, Arc<Process>>>,
    /// The sandbox is paused: its running processes show as PAUSED.
    paused: AtomicBool,
}

/// The alcove sandbox name of container `id` in containerd namespace
/// `namespace`: readable when it is a valid name, else a digest.
pub fn sandbox_name(namespace: &str, id: &str) -> String {
    let readable = format!("ctr-{namespace}-{id}");
    if alcove_client::paths::validate_name(&readable).is_ok() {
        return readable;
    }
    let digest = Sha256::digest(format!("{namespace}\0{id}").as_bytes());
    let hex: String = digest.iter().take(12).map(|b| format!("{b:02x}")).collect();
    format!("ctr-{hex}")
}

/// What Create was asked.
pub struct CreateRequest {
    /// Container id.
    pub id: String,
    /// containerd namespace.
    pub namespace: String,
    /// Bundle directory.
    pub bundle: PathBuf,
    /// The rootfs mounts (empty: the bundle's root directory is ready).
    pub rootfs: Vec<RootfsMount>,
    /// The main process's FIFOs.
    pub stdio: Stdio,
}

impl Container {
    /// Reads the bundle, mounts the rootfs and starts the sandbox.
    pub async fn create(req: CreateRequest) -> Result<Container, ContainerError> {
        let config_path = req.bundle.join("config.json");
        let bytes = std::fs::read(&config_path)
            .map_err(|source| ContainerError::Read { path: config_path.display().to_string(), source })?;
        let spec = bundle::parse(&bytes)?;
        let rootfs = req.bundle.join(&spec.root_path);
        let mounted_rootfs = if req.rootfs.is_empty() {
            if !rootfs.is_dir() {
                return Err(ContainerError::NoRootfs(rootfs.display().to_string()));
            }
            None
        } else {
            std::fs::create_dir_all(&rootfs)
                .map_err(|source| ContainerError::Read { path: rootfs.display().to_string(), source })?;
            mount::mount_all(&req.rootfs, &rootfs)?;
            Some(rootfs.clone())
        };
        let name = sandbox_name(&req.namespace, &req.id);
        let undo_mount = |e: ContainerError| {
            if let Some(r) = &mounted_rootfs {
                let _ = mount::unmount_all(r);
            }
            let _ = std::fs::remove_file(req.bundle.join(SANDBOX_MARKER));
            e
        };
        std::fs::write(req.bundle.join(SANDBOX_MARKER), &name)
            .map_err(|source| undo_mount(ContainerError::Read { path: SANDBOX_MARKER.into(), source }))?;
        let sandbox = builder(&name, &rootfs, &spec).start().await.map_err(|e| undo_mount(e.into()))?;
        let init = Arc::new(Process::new(req.id.clone(), main_command(&spec), req.stdio));
        Ok(Container {
            id: req.id,
            bundle: req.bundle,
            mounted_rootfs,
            sandbox,
            init,
            execs: Mutex::new(HashMap::new()),
            paused: AtomicBool::new(false),
        })
    }

    /// Removes the sandbox and unmounts the rootfs.
    pub async fn destroy(&self) -> Result<(), ContainerError> {
        self.sandbox.remove().await?;
        if let Some(r) = &self.mounted_rootfs {
            mount::unmount_all(r)?;
        }
        let _ = std::fs::remove_file(self.bundle.join(SANDBOX_MARKER));
        Ok(())
    }

    /// Adds exec `process`; false when its id is taken.
    pub fn add_exec(&self, process: Arc<Process>) -> bool {
        let mut execs = self.execs.lock().unwrap_or_else(|p| p.into_inner());
        if process.id == self.id || execs.contains_key(&process.id) {
            return false;
        }
        execs.insert(process.id.clone(), process);
        true
    }

    /// Pauses (`true`) or resumes the sandbox: every process in it, init
    /// and execs (the sandbox's freezer; the record says Paused).
    pub async fn set_paused(&self, paused: bool) -> Result<(), ContainerError> {
        let client = self.sandbox.client();
        let done = if paused { client.pause().await } else { client.resume().await };
        done.map_err(ContainerError::Pause)?;
        self.paused.store(paused, Ordering::SeqCst);
        Ok(())
    }

    /// Whether the sandbox is paused.
    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::SeqCst)
    }

    /// Forgets exec `exec_id`.
    pub fn remove_exec(&self, exec_id: &str) {
        self.execs.lock().unwrap_or_else(|p| p.into_inner()).remove(exec_id);
    }

    /// The sandbox's jail cgroup directories (one per hierarchy on v1).
    /// `leftovers` finds a live jail's cgroups as well as a dead one's.
    pub fn cgroup_dirs(&self) -> Vec<PathBuf> {
        alcove_jail::cgroup::leftovers(self.sandbox.name(), self.sandbox.pid(), None)
    }

    /// Host pids of every process in the sandbox's jail (its init, the
    /// commands and their children), from the jail's cgroups.
    pub fn host_pids(&self) -> Vec<u32> {
        let mut pids = std::collections::BTreeSet::new();
        for dir in self.cgroup_dirs() {
            let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
            pids.extend(procs.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
        }
        pids.into_iter().collect()
    }

    /// The process `exec_id` ("" or the container id: the main one).
    pub fn process(&self, exec_id: &str) -> Option<Arc<Process>> {
        if exec_id.is_empty() || exec_id == self.id {
            return Some(self.init.clone());
        }
        self.execs.lock().unwrap_or_else(|p| p.into_inner()).get(exec_id).cloned()
    }
}

fn builder(name: &str, rootfs: &Path, spec: &TaskSpec) -> alcove::SandboxBuilder {
    let mut b = Sandbox::builder(name).backend(Backend::Jail).rootfs(rootfs.display().to_string());
    if let Some(m) = spec.memory_mib {
        b = b.memory_mib(m);
    }
    if let Some(c) = spec.cpus {
        b = b.cpus(c);
    }
    if let Some(p) = spec.pids {
        b = b.pids(p);
    }
    if let Some(n) = &spec.network {
        b = b.network(n.clone());
    }
    if let Some(t) = spec.idle_timeout {
        b = b.idle_timeout(t);
    }
    if let Some(h) = &spec.hostname {
        b = b.hostname(h.clone());
    }
    b
}

/// The bundle's process as an alcove exec.
pub fn main_command(spec: &TaskSpec) -> ExecOptions {
    ExecOptions {
        argv: spec.args.clone(),
        env: spec.env.clone(),
        cwd: Some(spec.cwd.clone()),
        user: Some(spec.user.clone()),
        rlimits: spec.rlimits.clone(),
        tty: spec.terminal,
        ..ExecOptions::default()
    }
}

/// Clean-up after a shim that died: removes the sandbox named in the bundle
/// at `bundle` (through the `alcove` CLI, which can remove a sandbox in any
/// state) and unmounts its rootfs.
pub fn clean_up_bundle(bundle: &Path) -> Result<(), String> {
    let marker = bundle.join(SANDBOX_MARKER);
    if let Ok(name) = std::fs::read_to_string(&marker) {
        let exe = alcove::embed::alcove_executable(None).map_err(|e| e.to_string())?;
        let out = std::process::Command::new(exe)
            .args(["rm", "-f", name.trim()])
            .output()
            .map_err(|e| format!("alcove rm -f {}: {e}", name.trim()))?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() && !stderr.contains("no sandbox named") {
            return Err(format!("alcove rm -f {}: {}", name.trim(), stderr.trim()));
        }
        let _ = std::fs::remove_file(&marker);
    }
    mount::unmount_all(&bundle.join("rootfs")).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sandbox_names_are_readable_when_valid_and_digests_otherwise() {
        assert_eq!(sandbox_name("default", "hi"), "ctr-default-hi");
        let long = sandbox_name("k8s.io", &"a".repeat(64));
        assert!(long.starts_with("ctr-") && long.len() == 28, "{long}");
        assert!(alcove_client::paths::validate_name(&long).is_ok());
        assert_ne!(sandbox_name("a", &"x".repeat(70)), sandbox_name("b", &"x".repeat(70)));
    }

    #[test]
    fn the_main_command_is_the_bundles_process() {
        let spec = TaskSpec {
            args: vec!["echo".into(), "hi".into()],
            env: vec![("A".into(), "1".into())],
            cwd: "/tmp".into(),
            user: "1000:1000".into(),
            ..TaskSpec::default()
        };
        let o = main_command(&spec);
        assert_eq!(o.argv, ["echo", "hi"]);
        assert_eq!(o.env, [("A".to_string(), "1".to_string())]);
        assert_eq!(o.cwd.as_deref(), Some("/tmp"));
        assert_eq!(o.user.as_deref(), Some("1000:1000"));
        assert!(!o.stdin);
    }
}
