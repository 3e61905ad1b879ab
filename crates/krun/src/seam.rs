//! The recording seam between a [`VmPlan`] and msb_krun's `VmBuilder`.
//!
//! [`apply`] is the only code that decides which builder call carries which
//! plan field; it talks to a [`VmConfigurator`]. [`KrunBuilder`] forwards to
//! msb_krun, and the tests' recording double captures the calls, so a test
//! proves every field reaches the builder without creating a VM.
//!
//! Every virtio-fs share is served by a [`ShareFs`] that [`apply`] builds:
//! the boot trampoline (`/dev/root`), `upper` and read-write mounts in
//! [`ShareMode::Writable`], the `rootfs` share and read-only mounts
//! (`SharePlan::read_only`) in [`ShareMode::ReadOnly`]. [`KrunBuilder`]
//! attaches each with `FsBuilder::custom`; msb_krun's plain
//! `fs(tag, path)` / `fs.root(path)` (a bare passthrough, which lets a guest
//! step above the share with `..`) is never used. The boot share keeps the
//! tag `/dev/root` that `fs.root` would give it (the kernel mounts its root
//! by that tag) and its `ioctl` reaches the passthrough unchanged, so the
//! guest's exit-code report still lands in the VM's exit-code cell.
//!
//! A plan with a network ([`VmPlan::net`]) gets exactly one virtio-net
//! device with the plan's MAC and the backend the caller made (the
//! engine's adapter); a plan without one gets none, and [`apply`] refuses
//! a backend that does not match the plan either way.

use crate::config::DiskFormat;
use crate::plan::{DiskPlan, ExecPlan, VmPlan};
use crate::sharefs::{ShareFs, ShareMode};
use alcove_backend::BackendError;
use msb_krun::backends::net::NetBackend;
use msb_krun::{ConsolePortBackend, DiskImageFormat, Vm, VmBuilder};
use std::path::Path;

/// The builder calls alcove makes.
pub trait VmConfigurator {
    /// vCPUs and memory.
    fn machine(&mut self, vcpus: u8, memory_mib: usize);
    /// The libkrunfw library to load the kernel from.
    fn krunfw(&mut self, path: &Path);
    /// The kernel's `init=`.
    fn init_path(&mut self, path: &str);
    /// The virtio-fs root (tag [`ROOT_SHARE_TAG`]): the boot trampoline.
    fn root_share(&mut self, fs: ShareFs);
    /// Another virtio-fs share.
    fn share(&mut self, tag: &str, fs: ShareFs);
    /// A virtio-blk device.
    fn disk(&mut self, disk: &DiskPlan);
    /// Where the guest console (hvc0) goes.
    fn console_output(&mut self, path: &Path);
    /// A named virtio-console port.
    fn console_port(&mut self, name: &str, backend: Box<dyn ConsolePortBackend>);
    /// A virtio-net device with this MAC, served by `backend`.
    fn net(&mut self, mac: [u8; 6], backend: Box<dyn NetBackend + Send>);
    /// What init runs.
    fn exec(&mut self, exec: &ExecPlan);
    /// The exit hook, called with the VMM's exit code.
    fn on_exit(&mut self, hook: Box<dyn Fn(i32) + Send + 'static>);
}

/// The virtio-fs tag of the root share, as msb_krun's `FsBuilder::root`
/// names it (the kernel is booted with `root=/dev/root`).
pub const ROOT_SHARE_TAG: &str = "/dev/root";

fn share_fs(dir: &Path, mode: ShareMode) -> Result<ShareFs, BackendError> {
    ShareFs::new(dir, mode).map_err(|e| BackendError::Setup(e.to_string()))
}

/// Applies a plan: every field becomes a builder call. `net` is the
/// virtio-net backend, given exactly when the plan has a network. Fails if
/// it is not, or if a share's backend cannot be created.
pub fn apply(
    plan: &VmPlan,
    agent_port: Box<dyn ConsolePortBackend>,
    net: Option<Box<dyn NetBackend + Send>>,
    on_exit: Box<dyn Fn(i32) + Send + 'static>,
    c: &mut dyn VmConfigurator,
) -> Result<(), BackendError> {
    let net = match (&plan.net, net) {
        (Some(device), Some(backend)) => Some((device.mac, backend)),
        (None, None) => None,
        (Some(_), None) => return Err(BackendError::Setup("the plan has a network but no backend was given".into())),
        (None, Some(_)) => return Err(BackendError::Setup("a network backend was given to a plan without one".into())),
    };
    c.machine(plan.vcpus, plan.memory_mib);
    c.krunfw(&plan.krunfw);
    c.init_path(&plan.init_path);
    c.root_share(share_fs(&plan.boot_dir, ShareMode::Writable)?);
    for s in &plan.shares {
        let mode = if s.read_only { ShareMode::ReadOnly } else { ShareMode::Writable };
        c.share(&s.tag, share_fs(&s.host, mode)?);
    }
    for d in &plan.disks {
        c.disk(d);
    }
    c.console_output(&plan.console_output);
    c.console_port(&plan.agent_port, agent_port);
    if let Some((mac, backend)) = net {
        c.net(mac, backend);
    }
    c.exec(&plan.exec);
    c.on_exit(on_exit);
    Ok(())
}

/// The real configurator over msb_krun's `VmBuilder`.
#[derive(Default)]
pub struct KrunBuilder {
    builder: VmBuilder,
}

impl KrunBuilder {
    /// A fresh builder.
    pub fn new() -> KrunBuilder {
        KrunBuilder::default()
    }

    fn with(&mut self, f: impl FnOnce(VmBuilder) -> VmBuilder) {
        self.builder = f(std::mem::take(&mut self.builder));
    }

    /// Builds the VM (no KVM work happens until `Vm::enter`).
    pub fn build(self) -> msb_krun::Result<Vm> {
        self.builder.build()
    }
}

fn krun_format(f: DiskFormat) -> DiskImageFormat {
    match f {
        DiskFormat::Raw => DiskImageFormat::Raw,
        DiskFormat::Qcow2 => DiskImageFormat::Qcow2,
        DiskFormat::Vmdk => DiskImageFormat::Vmdk,
    }
}

impl VmConfigurator for KrunBuilder {
    fn machine(&mut self, vcpus: u8, memory_mib: usize) {
        self.with(|b| b.machine(|m| m.vcpus(vcpus).memory_mib(memory_mib)));
    }
    fn krunfw(&mut self, path: &Path) {
        self.with(|b| b.kernel(|k| k.krunfw_path(path)));
    }
    fn init_path(&mut self, path: &str) {
        self.with(|b| b.kernel(|k| k.init_path(path)));
    }
    fn root_share(&mut self, fs: ShareFs) {
        self.with(|b| b.fs(|f| f.tag(ROOT_SHARE_TAG).custom(Box::new(fs))));
    }
    fn share(&mut self, tag: &str, fs: ShareFs) {
        self.with(|b| b.fs(|f| f.tag(tag).custom(Box::new(fs))));
    }
    fn disk(&mut self, d: &DiskPlan) {
        self.with(|b| {
            b.disk(|x| x.path(&d.path).id(d.id.clone()).format(krun_format(d.format)).read_only(d.read_only))
        });
    }
    fn console_output(&mut self, path: &Path) {
        self.with(|b| b.console(|c| c.output(path)));
    }
    fn console_port(&mut self, name: &str, backend: Box<dyn ConsolePortBackend>) {
        self.with(|b| b.console(|c| c.custom(name, backend)));
    }
    fn net(&mut self, mac: [u8; 6], backend: Box<dyn NetBackend + Send>) {
        self.with(|b| b.net(|n| n.mac(mac).custom(backend)));
    }
    fn exec(&mut self, e: &ExecPlan) {
        self.with(|b| b.exec(|x| x.path(&e.path).args(&e.args).workdir(&e.workdir)));
    }
    fn on_exit(&mut self, hook: Box<dyn Fn(i32) + Send + 'static>) {
        self.with(|b| b.on_exit(hook));
    }
}
