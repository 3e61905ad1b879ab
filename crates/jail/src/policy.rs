//! The jail's privilege policy: which capabilities survive in the bounding
//! set and which system calls the seccomp filter refuses.
//!
//! Invariants:
//! - The policy is built on the host before the child is cloned: the child
//!   only copies prepared data into the kernel (no allocation after `clone`).
//! - Both seccomp programs are inherited by every process of the jail and
//!   can never be removed; capabilities outside [`KEPT_CAPABILITIES`] are
//!   gone from the bounding set for good.
//!
//! See the crate documentation for the policy as a whole.

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule, TargetArch,
};
use std::collections::BTreeMap;

/// Why the seccomp policy could not be compiled.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// seccompiler refused the rule set.
    #[error("the seccomp filter could not be compiled: {0}")]
    Compile(String),
    /// The host is not x86_64.
    #[error("the jail's seccomp filter supports only x86_64 hosts, not {0}")]
    Arch(&'static str),
}

/// Capability numbers (linux/capability.h).
#[allow(missing_docs)]
pub mod caps {
    pub const CAP_CHOWN: u32 = 0;
    pub const CAP_DAC_OVERRIDE: u32 = 1;
    pub const CAP_DAC_READ_SEARCH: u32 = 2;
    pub const CAP_FOWNER: u32 = 3;
    pub const CAP_FSETID: u32 = 4;
    pub const CAP_KILL: u32 = 5;
    pub const CAP_SETGID: u32 = 6;
    pub const CAP_SETUID: u32 = 7;
    pub const CAP_SETPCAP: u32 = 8;
    pub const CAP_NET_BIND_SERVICE: u32 = 10;
    pub const CAP_NET_ADMIN: u32 = 12;
    pub const CAP_NET_RAW: u32 = 13;
    pub const CAP_SYS_MODULE: u32 = 16;
    pub const CAP_SYS_CHROOT: u32 = 18;
    pub const CAP_SYS_ADMIN: u32 = 21;
    pub const CAP_SYS_BOOT: u32 = 22;
    pub const CAP_MKNOD: u32 = 27;
    pub const CAP_AUDIT_WRITE: u32 = 29;
    pub const CAP_SETFCAP: u32 = 31;
}

/// Capabilities kept in the bounding set (everything else is dropped).
///
/// Never kept: `CAP_NET_ADMIN` (netfilter, tc, xfrm, links and module
/// autoloading are kernel attack surface even in the jail's own network
/// namespace; the loopback interface is brought up before the drop) and
/// `CAP_SYS_BOOT` (`reboot` would end the jail rather than fail).
/// `CAP_SETFCAP` is kept only in a user namespace, where a file capability
/// the guest writes is bound to that namespace's root; see
/// [`kept_capabilities`]. `CAP_SYS_ADMIN` only when the backend is told to
/// keep it ([`crate::JailOptions::keep_sys_admin`]).
pub const KEPT_CAPABILITIES: &[(u32, &str)] = &[
    (caps::CAP_CHOWN, "CAP_CHOWN"),
    (caps::CAP_DAC_OVERRIDE, "CAP_DAC_OVERRIDE"),
    (caps::CAP_FOWNER, "CAP_FOWNER"),
    (caps::CAP_FSETID, "CAP_FSETID"),
    (caps::CAP_KILL, "CAP_KILL"),
    (caps::CAP_SETGID, "CAP_SETGID"),
    (caps::CAP_SETUID, "CAP_SETUID"),
    (caps::CAP_SETPCAP, "CAP_SETPCAP"),
    (caps::CAP_NET_BIND_SERVICE, "CAP_NET_BIND_SERVICE"),
    (caps::CAP_NET_RAW, "CAP_NET_RAW"),
    (caps::CAP_SYS_CHROOT, "CAP_SYS_CHROOT"),
    (caps::CAP_AUDIT_WRITE, "CAP_AUDIT_WRITE"),
];

/// The capability numbers kept in the bounding set. `host_root`: the jail
/// has no user namespace, so guest root is the host's root.
pub fn kept_capabilities(keep_sys_admin: bool, host_root: bool) -> Vec<u32> {
    let mut kept: Vec<u32> = KEPT_CAPABILITIES.iter().map(|(cap, _)| *cap).collect();
    if !host_root {
        kept.push(caps::CAP_SETFCAP);
    }
    if keep_sys_admin {
        kept.push(caps::CAP_SYS_ADMIN);
    }
    kept
}

/// The capability numbers to drop from the bounding set on this kernel.
pub fn dropped_capabilities(keep_sys_admin: bool, host_root: bool) -> Vec<libc::c_int> {
    let last = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .unwrap_or(40);
    let kept = kept_capabilities(keep_sys_admin, host_root);
    (0..=last).filter(|cap| !kept.contains(cap)).map(|cap| cap as libc::c_int).collect()
}

/// System calls refused with `EPERM` in every jail.
pub const DENIED_SYSCALLS: &[(libc::c_long, &str)] = &[
    (libc::SYS_kexec_load, "kexec_load"),
    (libc::SYS_kexec_file_load, "kexec_file_load"),
    (libc::SYS_init_module, "init_module"),
    (libc::SYS_finit_module, "finit_module"),
    (libc::SYS_delete_module, "delete_module"),
    (libc::SYS_bpf, "bpf"),
    (libc::SYS_perf_event_open, "perf_event_open"),
    (libc::SYS_add_key, "add_key"),
    (libc::SYS_keyctl, "keyctl"),
    (libc::SYS_request_key, "request_key"),
    (libc::SYS_swapon, "swapon"),
    (libc::SYS_swapoff, "swapoff"),
    (libc::SYS_acct, "acct"),
    (libc::SYS_settimeofday, "settimeofday"),
    (libc::SYS_clock_settime, "clock_settime"),
    (libc::SYS_clock_adjtime, "clock_adjtime"),
    (libc::SYS_adjtimex, "adjtimex"),
    (libc::SYS_open_by_handle_at, "open_by_handle_at"),
    (libc::SYS_name_to_handle_at, "name_to_handle_at"),
    (libc::SYS_userfaultfd, "userfaultfd"),
    (libc::SYS_iopl, "iopl"),
    (libc::SYS_ioperm, "ioperm"),
    (libc::SYS_quotactl, "quotactl"),
    (libc::SYS_lookup_dcookie, "lookup_dcookie"),
    (libc::SYS_vhangup, "vhangup"),
    (libc::SYS_io_uring_setup, "io_uring_setup"),
    (libc::SYS_io_uring_enter, "io_uring_enter"),
    (libc::SYS_io_uring_register, "io_uring_register"),
    (libc::SYS_setns, "setns"),
    (libc::SYS_unshare, "unshare"),
];

/// Mount-related system calls, refused with `EPERM` unless `CAP_SYS_ADMIN`
/// is kept (without it they would fail anyway; the filter makes that
/// independent of the capability state).
pub const DENIED_MOUNT_SYSCALLS: &[(libc::c_long, &str)] = &[
    (libc::SYS_mount, "mount"),
    (libc::SYS_umount2, "umount2"),
    (libc::SYS_pivot_root, "pivot_root"),
    (libc::SYS_open_tree, "open_tree"),
    (libc::SYS_move_mount, "move_mount"),
    (libc::SYS_fsopen, "fsopen"),
    (libc::SYS_fsconfig, "fsconfig"),
    (libc::SYS_fsmount, "fsmount"),
    (libc::SYS_fspick, "fspick"),
    (libc::SYS_mount_setattr, "mount_setattr"),
];

/// The seccomp programs installed in the jail, in installation order.
pub struct SeccompPolicy {
    /// Programs as raw BPF, ready for `seccomp(SECCOMP_SET_MODE_FILTER)`.
    pub programs: Vec<Vec<libc::sock_filter>>,
}

/// Builds the jail's seccomp programs.
///
/// 1. The main filter (seccompiler): a foreign architecture (i386 `int 0x80`)
///    kills the process; every syscall of [`DENIED_SYSCALLS`] (and
///    [`DENIED_MOUNT_SYSCALLS`] unless `keep_sys_admin`), `clone` with
///    `CLONE_NEWUSER`, and `mknod`/`mknodat` of a character or block device
///    return `EPERM` (FIFOs, sockets and regular files stay allowed; the
///    jail's /dev is bind-mounted before the filter exists); everything
///    else is allowed.
/// 2. A small hand-written filter: x32 system calls (numbers with bit 30
///    set, which would bypass number-based rules) return `EPERM`, and
///    `clone3` returns `ENOSYS` (its flags live in memory a filter cannot
///    read, so libc falls back to `clone`, whose flags the main filter sees).
pub fn seccomp_policy(keep_sys_admin: bool) -> Result<SeccompPolicy, PolicyError> {
    if std::env::consts::ARCH != "x86_64" {
        return Err(PolicyError::Arch(std::env::consts::ARCH));
    }
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for (nr, _) in DENIED_SYSCALLS {
        rules.insert(*nr, Vec::new());
    }
    if !keep_sys_admin {
        for (nr, _) in DENIED_MOUNT_SYSCALLS {
            rules.insert(*nr, Vec::new());
        }
    }
    let newuser = libc::CLONE_NEWUSER as u64;
    let cond = SeccompCondition::new(0, SeccompCmpArgLen::Qword, SeccompCmpOp::MaskedEq(newuser), newuser)
        .map_err(|e| PolicyError::Compile(e.to_string()))?;
    let rule = SeccompRule::new(vec![cond]).map_err(|e| PolicyError::Compile(e.to_string()))?;
    rules.insert(libc::SYS_clone, vec![rule]);
    // mknod(path, mode, dev) and mknodat(dirfd, path, mode, dev): the type
    // bits of `mode` select a device.
    let device_rules = |mode_arg: u8| -> Result<Vec<SeccompRule>, PolicyError> {
        [libc::S_IFCHR, libc::S_IFBLK]
            .iter()
            .map(|kind| {
                let cond = SeccompCondition::new(
                    mode_arg,
                    SeccompCmpArgLen::Dword,
                    SeccompCmpOp::MaskedEq(u64::from(libc::S_IFMT)),
                    u64::from(*kind),
                )
                .map_err(|e| PolicyError::Compile(e.to_string()))?;
                SeccompRule::new(vec![cond]).map_err(|e| PolicyError::Compile(e.to_string()))
            })
            .collect()
    };
    rules.insert(libc::SYS_mknod, device_rules(1)?);
    rules.insert(libc::SYS_mknodat, device_rules(2)?);

    let filter =
        SeccompFilter::new(rules, SeccompAction::Allow, SeccompAction::Errno(libc::EPERM as u32), TargetArch::x86_64)
            .map_err(|e| PolicyError::Compile(e.to_string()))?;
    let program: BpfProgram =
        filter.try_into().map_err(|e: seccompiler::BackendError| PolicyError::Compile(e.to_string()))?;
    let main: Vec<libc::sock_filter> =
        program.iter().map(|i| libc::sock_filter { code: i.code, jt: i.jt, jf: i.jf, k: i.k }).collect();

    Ok(SeccompPolicy { programs: vec![main, x32_and_clone3_program()] })
}

/// BPF_LD | BPF_W | BPF_ABS.
const BPF_LD_W_ABS: u16 = 0x20;
const BPF_JMP_JEQ_K: u16 = 0x05 | 0x10;
const BPF_JMP_JGE_K: u16 = 0x05 | 0x30;
const BPF_RET_K: u16 = 0x06;
const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
const X32_SYSCALL_BIT: u32 = 0x4000_0000;
/// Offset of `nr` in `struct seccomp_data`.
const SECCOMP_DATA_NR: u32 = 0;

fn stmt(code: u16, k: u32) -> libc::sock_filter {
    libc::sock_filter { code, jt: 0, jf: 0, k }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

fn x32_and_clone3_program() -> Vec<libc::sock_filter> {
    vec![
        stmt(BPF_LD_W_ABS, SECCOMP_DATA_NR),
        // x32 syscall numbers → EPERM
        jump(BPF_JMP_JGE_K, X32_SYSCALL_BIT, 0, 1),
        stmt(BPF_RET_K, SECCOMP_RET_ERRNO | libc::EPERM as u32),
        // clone3 → ENOSYS
        jump(BPF_JMP_JEQ_K, libc::SYS_clone3 as u32, 0, 1),
        stmt(BPF_RET_K, SECCOMP_RET_ERRNO | libc::ENOSYS as u32),
        stmt(BPF_RET_K, SECCOMP_RET_ALLOW),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capabilities_partition() {
        let dropped = dropped_capabilities(false, false);
        assert!(dropped.contains(&(caps::CAP_SYS_ADMIN as i32)));
        assert!(dropped.contains(&(caps::CAP_SYS_MODULE as i32)));
        assert!(dropped.contains(&(caps::CAP_MKNOD as i32)));
        assert!(!dropped.contains(&(caps::CAP_SETUID as i32)));
        assert!(!dropped_capabilities(true, false).contains(&(caps::CAP_SYS_ADMIN as i32)));
    }

    #[test]
    fn net_admin_and_sys_boot_are_never_kept_and_setfcap_only_in_a_user_namespace() {
        for host_root in [false, true] {
            let dropped = dropped_capabilities(false, host_root);
            assert!(dropped.contains(&(caps::CAP_NET_ADMIN as i32)), "host_root {host_root}");
            assert!(dropped.contains(&(caps::CAP_SYS_BOOT as i32)), "host_root {host_root}");
        }
        assert!(dropped_capabilities(false, true).contains(&(caps::CAP_SETFCAP as i32)));
        assert!(!dropped_capabilities(false, false).contains(&(caps::CAP_SETFCAP as i32)));
    }

    /// mknod of a device is refused even with CAP_MKNOD (the test runs as
    /// root); a FIFO is not.
    #[test]
    fn seccomp_refuses_device_nodes_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = |name: &str| {
            std::ffi::CString::new(dir.path().join(name).into_os_string().into_encoded_bytes()).expect("path")
        };
        let (chr, blk, blk_at, fifo) = (path("chr"), path("blk"), path("blkat"), path("fifo"));
        let policy = seccomp_policy(false).expect("compiles");
        // SAFETY: the child makes only raw system calls and _exits.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            unsafe {
                if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                    libc::_exit(100);
                }
                for program in &policy.programs {
                    let prog = libc::sock_fprog {
                        len: program.len() as u16,
                        filter: program.as_ptr() as *mut libc::sock_filter,
                    };
                    if libc::syscall(libc::SYS_seccomp, libc::SECCOMP_SET_MODE_FILTER, 0, &prog) != 0 {
                        libc::_exit(101);
                    }
                }
                let errno = || *libc::__errno_location();
                let mut bits = 0;
                if libc::mknod(chr.as_ptr(), libc::S_IFCHR | 0o600, libc::makedev(1, 3)) == -1 && errno() == libc::EPERM
                {
                    bits |= 1;
                }
                if libc::mknod(blk.as_ptr(), libc::S_IFBLK | 0o600, libc::makedev(7, 0)) == -1 && errno() == libc::EPERM
                {
                    bits |= 2;
                }
                if libc::mknodat(libc::AT_FDCWD, blk_at.as_ptr(), libc::S_IFBLK | 0o600, libc::makedev(7, 0)) == -1
                    && errno() == libc::EPERM
                {
                    bits |= 4;
                }
                if libc::mknod(fifo.as_ptr(), libc::S_IFIFO | 0o600, 0) == 0 {
                    bits |= 8;
                }
                libc::_exit(bits);
            }
        }
        let mut status = 0;
        // SAFETY: waiting for our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(libc::WIFEXITED(status), "child died: {status:#x}");
        assert_eq!(libc::WEXITSTATUS(status), 15, "bits: {:#b}", libc::WEXITSTATUS(status));
    }

    /// Installs the programs in a forked child and checks what the kernel
    /// answers. Root (or no_new_privs) is needed to install a filter; the
    /// child sets no_new_privs itself.
    #[test]
    fn seccomp_programs_deny_what_they_say() {
        let policy = seccomp_policy(false).expect("compiles");
        // SAFETY: the child makes only raw system calls and _exits.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            unsafe {
                let mut bits = 0;
                if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                    libc::_exit(100);
                }
                for program in &policy.programs {
                    let prog = libc::sock_fprog {
                        len: program.len() as u16,
                        filter: program.as_ptr() as *mut libc::sock_filter,
                    };
                    if libc::syscall(libc::SYS_seccomp, libc::SECCOMP_SET_MODE_FILTER, 0, &prog) != 0 {
                        libc::_exit(101);
                    }
                }
                let errno = || *libc::__errno_location();
                // keyctl(KEYCTL_GET_KEYRING_ID, ...) → EPERM
                if libc::syscall(libc::SYS_keyctl, 0, -3, 0) == -1 && errno() == libc::EPERM {
                    bits |= 1;
                }
                // clone3 → ENOSYS
                if libc::syscall(libc::SYS_clone3, 0, 0) == -1 && errno() == libc::ENOSYS {
                    bits |= 2;
                }
                // x32 getpid → EPERM
                if libc::syscall(0x4000_0000 | libc::SYS_getpid) == -1 && errno() == libc::EPERM {
                    bits |= 4;
                }
                // unshare(CLONE_NEWUSER) → EPERM
                if libc::unshare(libc::CLONE_NEWUSER) == -1 && errno() == libc::EPERM {
                    bits |= 8;
                }
                // mount → EPERM (strict policy)
                if libc::mount(c"none".as_ptr(), c"/".as_ptr(), c"tmpfs".as_ptr(), 0, std::ptr::null()) == -1
                    && errno() == libc::EPERM
                {
                    bits |= 16;
                }
                // getpid still works.
                if libc::getpid() > 0 {
                    bits |= 32;
                }
                libc::_exit(bits);
            }
        }
        let mut status = 0;
        // SAFETY: waiting for our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(libc::WIFEXITED(status), "child died: {status:#x}");
        assert_eq!(libc::WEXITSTATUS(status), 63, "bits: {:#b}", libc::WEXITSTATUS(status));
    }

    #[test]
    fn seccomp_compiles_with_and_without_mounts() {
        let strict = seccomp_policy(false).expect("compiles");
        let lax = seccomp_policy(true).expect("compiles");
        assert_eq!(strict.programs.len(), 2);
        assert!(strict.programs[0].len() > lax.programs[0].len());
        // The hand-written program ends by allowing.
        let last = strict.programs[1].last().expect("non-empty");
        assert_eq!(last.k, SECCOMP_RET_ALLOW);
    }
}
