//! alcove's microVM backend: a libkrun guest through msb_krun.
//!
//! [`KrunBackend::launch`] checks everything ([`plan`]), writes the
//! per-sandbox boot share, builds the VM through the [`seam`] and returns:
//! the host end of the agent channel (the guest end serves the `agent`
//! virtio-console port, see [`port`]); a runner that calls `Vm::enter()` on
//! the sandbox process's main thread and never returns; and a control whose
//! `force_stop` fires msb_krun's exit handle.
//!
//! How the guest is put together:
//! - the kernel comes from libkrunfw (always an explicit, validated path);
//! - `/dev/root` is the trampoline `<sandbox_dir>/boot` holding a copy of
//!   the static agent (`init=/alcove-agent`, started as
//!   `alcove-agent --config /.alcove/agent.json`) and its JSON config;
//! - the agent assembles the real root per `AgentConfig.vm`: the user's root
//!   (virtio-fs tag `rootfs`, or the read-only virtio-blk disk `root`) as the
//!   overlay's lower layer, `<sandbox_dir>/upper-vm` (tag `upper`) as its
//!   writable layer, extra mounts (tags `mnt0`, `mnt1`, ...) and disk
//!   volumes (their configured ids);
//! - every virtio-fs share is served by [`sharefs::ShareFs`], msb_krun's
//!   passthrough behind a wrapper, never by msb_krun's bare `fs(tag, path)`
//!   (whose passthrough resolves `..` in a share's root to the host
//!   directory above it). In both modes guest-supplied names must be single
//!   path components (`.`, `..`, `/` and empty names answer `EINVAL`) and
//!   `readdirplus` never looks up `.`/`..`, so the guest cannot reach
//!   outside a share's directory;
//! - the trampoline, `upper` and read-write mounts are served writable
//!   (everything else delegated, the exit-code ioctl included);
//! - read-only is enforced by the VMM, not only by the guest's mount flags:
//!   the `rootfs` share and read-only mounts are served read-only (every
//!   mutating request refused with `EROFS`), so guest root cannot remount
//!   them read-write and change the host directory; the root disk and
//!   read-only volumes are attached read-only by msb_krun's virtio-blk;
//! - with a network (`GuestSpec::network`), one virtio-net device with the
//!   guest's MAC whose backend is the engine's msb_krun adapter
//!   (`alcove_net::device::krun`): the virtio-net worker reads and writes
//!   one end of a frame pair, and the other end goes back to the sandbox
//!   process as `Launched::network_device` (`NetworkDevice::FramePair`),
//!   where the Network actor runs the same engine a jail's TAP gets; the
//!   agent configures `eth0` (MTU at most 1500, address, routes) before any
//!   command runs;
//! - the guest console (hvc0: kernel log, agent stderr) goes to a pipe that
//!   a host thread copies into the bounded, rotating `GuestSpec::guest_log`
//!   ([`alcove_backend::guest_log`]); msb_krun opens the pipe by its
//!   `/proc/self/fd` path, so the guest never writes a host file directly
//!   and cannot fill the disk.
//!
//! Exit reporting (the [`GuestExit`] the observer gets):
//! - msb_krun calls the exit hook on the thread inside `Vm::enter()` with
//!   one `i32`, then `_exit`s. The guest's own code reaches it only through
//!   the virtio-fs exit-code ioctl; that is visible as `Vm::exit_code()`
//!   having been set, and is reported as is, without detail.
//! - Without a reported code: after [`GuestControl::force_stop`] the code is
//!   the VMM's (0) and the detail says the host stopped the VM; a non-zero
//!   VMM code (a vCPU failed, e.g. `KVM_EXIT_INTERNAL_ERROR`) is kept with a
//!   detail; a zero VMM code (power-off, reboot or kernel panic without a
//!   report) becomes 1 with a detail, because the agent always reports
//!   before powering off and 0 would read as success.
//! - If `Vm::enter()` fails before the VMM runs, the runner reports code 1
//!   with the error and returns.
#![warn(missing_docs)]

pub mod config;
pub mod plan;
pub mod port;
pub mod seam;
pub mod sharefs;

pub use config::{DiskFormat, KrunConfig, KrunRoot, KrunVolume};
pub use plan::{HostLimits, VmPlan};

use alcove_backend::guest_log::{log_pipe, LogPump, GUEST_LOG_LIMITS};
use alcove_backend::{
    BackendError, ExitObserver, GuestBackend, GuestControl, GuestExit, GuestRunner, GuestSpec, Launched, NetworkDevice,
};
use msb_krun::{ExitHandle, Vm};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

/// The krun backend.
#[derive(Clone, Debug, Default)]
pub struct KrunBackend {
    config: KrunConfig,
    host: Option<HostLimits>,
}

impl KrunBackend {
    /// A backend with these settings, checked against this host's limits.
    pub fn new(config: KrunConfig) -> KrunBackend {
        KrunBackend { config, host: None }
    }

    /// Checks against the given limits instead of this host's.
    pub fn with_host_limits(mut self, host: HostLimits) -> KrunBackend {
        self.host = Some(host);
        self
    }

    /// The settings.
    pub fn config(&self) -> &KrunConfig {
        &self.config
    }
}

/// What the exit hook knows besides the VMM's code.
#[derive(Default)]
struct ExitState {
    /// The runner's observer, taken by whoever reports first.
    observer: Mutex<Option<ExitObserver>>,
    /// The VM's exit-code cell (`i32::MAX` until the guest reports).
    guest_code: OnceLock<Arc<AtomicI32>>,
    /// `force_stop` was called.
    forced: AtomicBool,
}

impl ExitState {
    fn report(&self, exit: GuestExit) {
        let observer = match self.observer.lock() {
            Ok(mut g) => g.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        if let Some(o) = observer {
            o.guest_exited(exit);
        }
    }

    fn guest_reported(&self) -> bool {
        self.guest_code.get().is_some_and(|c| c.load(Ordering::SeqCst) != i32::MAX)
    }
}

/// Interprets msb_krun's exit code (see the crate docs).
pub fn interpret_exit(vmm_code: i32, guest_reported: bool, forced: bool) -> GuestExit {
    if guest_reported {
        return GuestExit::exited(vmm_code);
    }
    if forced {
        return GuestExit::exited(vmm_code)
            .with_detail("the host stopped the microVM before the guest reported an exit code");
    }
    if vmm_code != 0 {
        return GuestExit::exited(vmm_code).with_detail(format!(
            "the VMM stopped the microVM with code {vmm_code} before the guest reported an exit code \
             (a vCPU failed, e.g. KVM_EXIT_INTERNAL_ERROR; see the guest log)"
        ));
    }
    GuestExit::exited(1).with_detail(
        "the microVM stopped without the guest reporting an exit code (kernel panic, reboot, or init exited)",
    )
}

impl GuestBackend for KrunBackend {
    fn launch(self: Box<Self>, spec: &GuestSpec) -> Result<Launched, BackendError> {
        let host = self.host.unwrap_or_else(HostLimits::current);
        let mut plan = plan::plan(&self.config, spec, &host)?;
        plan::write_boot_share(&plan)?;
        let console = bounded_console(&mut plan)?;
        let (host_end, guest_end) =
            alcove_backend::console::channel().map_err(|e| BackendError::io("cannot create the agent channel", e))?;

        let state = Arc::new(ExitState::default());
        let hook_state = Arc::clone(&state);
        let hook = Box::new(move |code: i32| {
            let exit = interpret_exit(code, hook_state.guest_reported(), hook_state.forced.load(Ordering::SeqCst));
            tracing::info!(code, reported = exit.code, detail = ?exit.detail, "microVM exited");
            hook_state.report(exit);
        });
        // The guest's link: msb_krun's virtio-net worker drives one end of a
        // frame pair, the sandbox process's engine the other.
        let (net_backend, network_device) = match &plan.net {
            Some(_) => {
                let (backend, engine_end) = alcove_net::device::krun::krun_backend()
                    .map_err(|e| BackendError::io("cannot create the network link", e))?;
                let backend: Box<dyn msb_krun::backends::net::NetBackend + Send> = Box::new(backend);
                (Some(backend), Some(NetworkDevice::FramePair { fd: engine_end.into_fd() }))
            }
            None => (None, None),
        };
        let mut builder = seam::KrunBuilder::new();
        seam::apply(&plan, Box::new(port::AgentPort::new(guest_end)), net_backend, hook, &mut builder)?;
        let vm = builder.build().map_err(|e| BackendError::Setup(format!("cannot build the microVM: {e}")))?;
        let _ = state.guest_code.set(vm.exit_code());
        let control = Arc::new(KrunControl { exit: vm.exit_handle(), state: Arc::clone(&state) });
        Ok(Launched {
            agent_channel: host_end,
            runner: Box::new(KrunRunner { vm, state, _console: console }),
            control,
            network_device,
        })
    }
}

/// The guest console's way to its log: the pipe's write end (kept open for
/// the VMM, which opens it by path) and the thread copying it into the
/// bounded guest log. Only held (read by tests): both live as long as the VM.
#[cfg_attr(not(test), allow(dead_code))]
struct ConsoleLog {
    write_end: OwnedFd,
    pump: LogPump,
}

impl ConsoleLog {
    /// Closes the host's write end and waits up to `within` for the pump to
    /// write what the other writers (the VMM) left. For tests: the process
    /// `_exit`s with the VMM.
    #[cfg(test)]
    fn finish(self, within: std::time::Duration) -> bool {
        drop(self.write_end);
        self.pump.finish(within)
    }
}

/// Points the plan's console output at a pipe pumped into the bounded guest
/// log (the plan's `console_output` until now).
fn bounded_console(plan: &mut VmPlan) -> Result<ConsoleLog, BackendError> {
    let (write_end, pump) = log_pipe(&plan.console_output, GUEST_LOG_LIMITS)
        .map_err(|e| BackendError::io(format!("cannot open the guest log {}", plan.console_output.display()), e))?;
    plan.console_output = PathBuf::from(format!("/proc/self/fd/{}", write_end.as_raw_fd()));
    Ok(ConsoleLog { write_end, pump })
}

/// Runs the VM on the calling thread.
struct KrunRunner {
    vm: Vm,
    state: Arc<ExitState>,
    /// Lives as long as the VM.
    _console: ConsoleLog,
}

impl GuestRunner for KrunRunner {
    fn run(self: Box<Self>, observer: ExitObserver) {
        let KrunRunner { vm, state, _console } = *self;
        match state.observer.lock() {
            Ok(mut g) => *g = Some(observer),
            Err(poisoned) => *poisoned.into_inner() = Some(observer),
        }
        // On success this never returns: the VMM runs the exit hook on this
        // thread and calls `_exit`.
        let err = match vm.enter() {
            Ok(never) => match never {},
            Err(e) => e,
        };
        tracing::error!(error = %err, "the microVM could not start");
        state.report(GuestExit::exited(1).with_detail(format!("the microVM could not start: {err}")));
    }
}

/// Ends the VM through msb_krun's exit handle.
struct KrunControl {
    exit: ExitHandle,
    state: Arc<ExitState>,
}

impl GuestControl for KrunControl {
    /// Fires the VMM's exit event: the event loop stops, runs the exit hook
    /// (reporting the stop) and `_exit`s the process. Works before `enter()`
    /// too: the event is pending when the loop starts. Idempotent.
    fn force_stop(&self) {
        self.state.forced.store(true, Ordering::SeqCst);
        self.exit.trigger();
    }
}

#[cfg(test)]
mod tests;
