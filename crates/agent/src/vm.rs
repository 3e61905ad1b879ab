//! MicroVM specifics: the virtio-console port, the staging of the root, and
//! libkrun's exit-code report.
//!
//! libkrun learns a guest's exit code only through an ioctl on its root
//! virtio-fs mount: `ioctl(fd_of("/"), KRUN_EXIT_CODE_IOCTL = 0x7602, code)`
//! (the code is passed by value). The agent therefore opens the boot root
//! before pivoting away from it and keeps that fd for the final report; a
//! plain power-off would otherwise be reported as exit code 0.

use crate::mounts::{self, MountError, Stage};
use crate::sys::{self, Fd};
use alcove_protocol::agent_config::VmBoot;
use std::io;
use std::path::{Path, PathBuf};

macro_rules! log {
    ($($arg:tt)*) => { $crate::logging::log(format_args!($($arg)*)) };
}

/// libkrun's exit-code ioctl request number.
pub const KRUN_EXIT_CODE_IOCTL: libc::c_ulong = 0x7602;

/// Name of the virtio-console port carrying the agent channel.
pub const AGENT_PORT_NAME: &str = "agent";

/// Where the root is staged before the pivot.
pub const STAGE_DIR: &str = "/.alcove/stage";

/// Finds the device of the virtio-console port named `name`:
/// `<sys>/class/virtio-ports/<vportNpM>/name` holds the name and the device
/// is `<dev>/<vportNpM>`.
pub fn find_port(name: &str, sys: &Path, dev: &Path) -> Option<PathBuf> {
    let mut entries: Vec<_> =
        std::fs::read_dir(sys.join("class/virtio-ports")).ok()?.flatten().map(|e| e.file_name()).collect();
    entries.sort();
    entries.into_iter().find_map(|port| {
        let n = std::fs::read_to_string(sys.join("class/virtio-ports").join(&port).join("name")).ok()?;
        (n.trim() == name).then(|| dev.join(&port))
    })
}

/// Opens the agent port (waiting briefly for the device to appear).
pub fn open_agent_port() -> io::Result<Fd> {
    for _ in 0..200 {
        if let Some(p) = find_port(AGENT_PORT_NAME, Path::new("/sys"), Path::new("/dev")) {
            let c = sys::cstring(&p.to_string_lossy())?;
            // SAFETY: c is a valid path.
            let fd = sys::check(unsafe { libc::open(c.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC | libc::O_NONBLOCK) })?;
            log!("agent channel: {}", p.display());
            return Ok(Fd::new(fd));
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    Err(io::Error::new(io::ErrorKind::NotFound, "no virtio-console port named \"agent\" in /sys/class/virtio-ports"))
}

/// The boot root, held open for the exit-code report.
pub fn open_boot_root() -> io::Result<Fd> {
    // SAFETY: constant path.
    let fd = sys::check(unsafe { libc::open(c"/".as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC) })?;
    Ok(Fd::new(fd))
}

/// Assembles the VM's root per `boot` and pivots into it. The caller must
/// have opened the boot root first (see [`open_boot_root`]).
pub fn assemble_root(boot: &VmBoot) -> Result<(), MountError> {
    // /proc, /sys and /dev of the boot root: needed to find devices.
    let early = mounts::base_plan(&mounts::mounted_points(), true);
    let early: Vec<_> = early
        .into_iter()
        .filter(|s| match s {
            mounts::Step::Mount { target, .. } | mounts::Step::Mkdir(target) => {
                ["/proc", "/sys", "/dev"].contains(&target.as_str())
            }
            mounts::Step::MountBlock { .. } => false,
        })
        .collect();
    mounts::run_best_effort(&early);
    let stage = Stage::new(STAGE_DIR);
    let plan = mounts::vm_root_plan(boot, &stage)?;
    mounts::run_all(&plan)?;
    // Best effort: a guest without its name files still runs.
    let (upper, keep) = (Path::new(&stage.rw).join("upper"), Path::new(&stage.rw).join(".alcove-names"));
    if let Err(e) = crate::names::install(&boot.name_files, Path::new(&stage.root), &upper, &keep) {
        log!("warning: cannot write the name files: {e}");
    }
    mounts::pivot_into(&stage.root)
}

/// Points stdout/stderr at /dev/console when they are not usable (init
/// started without a console in the boot root), so the guest log is not lost.
pub fn console_stdio() {
    // SAFETY: fstat on fd 2 into a local struct.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let ok = unsafe { libc::fstat(2, &mut st) } == 0 && (st.st_mode & libc::S_IFMT) != libc::S_IFDIR;
    if ok {
        return;
    }
    // SAFETY: opening a constant path and dup2 onto the standard fds.
    unsafe {
        let fd = libc::open(c"/dev/console".as_ptr(), libc::O_WRONLY | libc::O_NOCTTY | libc::O_CLOEXEC);
        if fd >= 0 {
            libc::dup2(fd, 1);
            libc::dup2(fd, 2);
            libc::close(fd);
        }
    }
}

/// Reports `code` to libkrun through the boot root's virtio-fs.
pub fn report_exit_code(root: &Fd, code: i32) {
    // SAFETY: plain ioctl with an integer argument.
    let rc = unsafe { libc::ioctl(root.raw(), KRUN_EXIT_CODE_IOCTL as _, code as libc::c_ulong) };
    if rc < 0 {
        log!("warning: cannot report exit code {code} to the VMM: {}", io::Error::last_os_error());
    }
}

/// Syncs and powers the VM off. Never returns.
pub fn power_off() -> ! {
    // SAFETY: sync and reboot have no memory preconditions.
    unsafe {
        libc::sync();
        libc::reboot(libc::RB_POWER_OFF);
    }
    // reboot only returns on failure (not PID 1, or no CAP_SYS_BOOT).
    log!("power off failed: {}; exiting", io::Error::last_os_error());
    std::process::exit(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_found_by_name() {
        let d = tempfile::tempdir().expect("tempdir");
        let sys = d.path().join("sys");
        for (port, name) in [("vport0p0", "console"), ("vport0p1", "agent")] {
            let dir = sys.join("class/virtio-ports").join(port);
            std::fs::create_dir_all(&dir).expect("mkdir");
            std::fs::write(dir.join("name"), format!("{name}\n")).expect("name");
        }
        assert_eq!(find_port("agent", &sys, Path::new("/dev")), Some(PathBuf::from("/dev/vport0p1")));
        assert_eq!(find_port("other", &sys, Path::new("/dev")), None);
        assert_eq!(find_port("agent", &d.path().join("missing"), Path::new("/dev")), None);
    }
}
