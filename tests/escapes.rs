//! Escape attempts run *inside* a sandbox through the real CLI (issue 11):
//! every one must fail, the sandbox must survive each, and a limit that is
//! hit is reported.
//!
//! Shell attempts use the default busybox rootfs. System calls busybox
//! cannot make come from `escape_probe.c`, compiled here with `cc -static`
//! and given to the sandbox as a read-only volume: it prints one line per
//! attempt (`denied NAME: errno` or `ESCAPED NAME`) and exits with the
//! number of attempts that succeeded. Run on the host (in a throw-away
//! network namespace) the same probe reports its netlink attempts as
//! escapes, which is how it was checked to be able to tell.

mod cli_support;

use cli_support::{shared_rootfs, Alcove, Out};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

const PROBE_SOURCE: &str = include_str!("escape_probe.c");

/// A directory holding the static probe, built once per test binary.
fn probe_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        if Command::new("cc").arg("--version").output().is_err() {
            let _ = Command::new("apt-get").args(["update", "-qq"]).status();
            let status = Command::new("apt-get")
                .args(["install", "-y", "-qq", "gcc", "libc6-dev"])
                .env("DEBIAN_FRONTEND", "noninteractive")
                .status()
                .expect("apt-get");
            assert!(status.success(), "installing gcc failed");
        }
        let dir = PathBuf::from(format!("/tmp/alcv-escape-probe-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("probe dir");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let source = dir.join("escape_probe.c");
        std::fs::write(&source, PROBE_SOURCE).expect("write the probe source");
        let out = Command::new("cc")
            .args(["-static", "-O1", "-o"])
            .arg(dir.join("escape-probe"))
            .arg(&source)
            .output()
            .expect("run cc");
        assert!(out.status.success(), "cc -static failed: {}", String::from_utf8_lossy(&out.stderr));
        dir
    })
}

/// Runs `script` in sandbox `name` with `sh -c`.
fn sh(a: &Alcove, name: &str, script: &str) -> Out {
    a.run(&["exec", name, "--", "sh", "-c", script])
}

/// A shell attempt that must fail: `attempt` runs; its success is an escape.
fn attempt(a: &Alcove, name: &str, what: &str, command: &str, escapes: &mut Vec<String>) {
    let out = sh(a, name, &format!("if {command} >/dev/null 2>&1; then echo ESCAPED; else echo denied; fi"));
    match out.stdout.trim() {
        "denied" => {}
        "ESCAPED" => escapes.push(format!("{what}: `{command}` succeeded")),
        _ => escapes.push(format!("{what}: could not tell ({out:?})")),
    }
}

/// The probe's groups, each attempt of which must be denied.
fn probe(a: &Alcove, name: &str, group: &str, escapes: &mut Vec<String>) {
    let out = a.run(&["exec", name, "--", "/probe/escape-probe", group]);
    for line in out.stdout.lines().filter(|l| l.starts_with("ESCAPED")) {
        escapes.push(format!("probe {group}: {line}"));
    }
    if out.code != 0 && !out.stdout.contains("ESCAPED") {
        escapes.push(format!("probe {group} did not run: {out:?}"));
    }
    assert!(out.stdout.lines().count() > 1, "probe {group} printed nothing: {out:?}");
}

fn assert_alive(a: &Alcove, name: &str, after: &str) {
    let out = a.run(&["exec", name, "--", "true"]);
    assert_eq!(out.code, 0, "the sandbox did not survive {after}: {out:?}");
    assert_eq!(a.status(name), "Running", "the sandbox did not survive {after}");
}

#[test]
fn every_escape_attempt_fails_and_the_sandbox_survives() {
    let a = Alcove::new();
    let rootfs = a.rootfs_arg();
    let secret_dir = tempfile::tempdir_in("/tmp").expect("tempdir");
    let secret = secret_dir.path().join("host-secret.txt");
    std::fs::write(&secret, "host only").expect("write");
    let vol = tempfile::tempdir_in("/tmp").expect("volume");
    let probe_vol = format!("{}:/probe:ro", probe_dir().display());
    let data_vol = format!("{}:/vol", vol.path().display());
    a.ok(&["create", "esc", "--rootfs", &rootfs, "-v", &probe_vol, "-v", &data_vol]);

    let mut escapes = Vec::new();
    let secret = secret.display().to_string();
    let secret_dir_name = secret_dir.path().display().to_string();
    let shell: Vec<(&str, String)> = vec![
        // Mounts of any kind.
        ("mount tmpfs", "mount -t tmpfs none /mnt".into()),
        ("mount proc", "mkdir -p /mnt/p && mount -t proc proc /mnt/p".into()),
        ("mount sysfs", "mkdir -p /mnt/s && mount -t sysfs sysfs /mnt/s".into()),
        ("mount cgroup v1", "mkdir -p /mnt/c && mount -t cgroup -o memory cgroup /mnt/c".into()),
        ("mount cgroup2", "mkdir -p /mnt/c2 && mount -t cgroup2 none /mnt/c2".into()),
        ("mount devpts", "mkdir -p /mnt/d && mount -t devpts devpts /mnt/d".into()),
        ("mount overlay", "mkdir -p /mnt/o && mount -t overlay -o lowerdir=/etc overlay /mnt/o".into()),
        ("bind mount", "mount --bind /vol /mnt".into()),
        ("remount / read-write with suid", "mount -o remount,suid,dev /".into()),
        ("umount /proc", "umount -l /proc".into()),
        // New namespaces.
        ("unshare -U", "unshare -U true".into()),
        ("unshare -m", "unshare -m true".into()),
        ("unshare -n", "unshare -n true".into()),
        ("nsenter into PID 1's mount namespace", "nsenter -t 1 -m true".into()),
        // Host files.
        ("read a host file", format!("cat {secret}")),
        ("list a host directory", format!("ls {secret_dir_name}")),
        ("host file through /proc/1/root", format!("cat /proc/1/root{secret}")),
        // Devices.
        ("mknod a block device and open it", "mknod /tmp/sda b 254 0 && head -c 1 /tmp/sda".into()),
        ("mknod a block device on a volume and open it", "mknod /vol/sda b 254 0 && head -c 1 /vol/sda".into()),
        ("mknod a char device in /dev/shm", "mknod /dev/shm/mem c 1 1 && head -c 1 /dev/shm/mem".into()),
        // Kernel.
        ("load a kernel module", "insmod /probe/escape-probe".into()),
        ("reboot", "reboot -f".into()),
        ("write /proc/sysrq-trigger", "echo h > /proc/sysrq-trigger".into()),
        ("write a /proc/sys knob", "echo 1 > /proc/sys/kernel/sysrq".into()),
        (
            "write a /sys knob (the value already there)",
            "v=$(cat /sys/kernel/mm/ksm/run) && echo $v > /sys/kernel/mm/ksm/run".into(),
        ),
        ("write a cgroup limit", "echo -1 > /sys/fs/cgroup/memory/memory.limit_in_bytes".into()),
        // Cgroups.
        ("move itself to another cgroup", "echo $$ > /sys/fs/cgroup/memory/cgroup.procs".into()),
        ("create a cgroup", "mkdir /sys/fs/cgroup/memory/escape".into()),
        // Network.
        ("create a network link", "ip link add escape0 type bridge".into()),
        ("take the loopback down", "ip link set lo down".into()),
        ("add an address", "ip addr add 10.99.99.99/32 dev lo".into()),
    ];
    for (what, command) in &shell {
        attempt(&a, "esc", what, command, &mut escapes);
    }
    assert_alive(&a, "esc", "the shell attempts (reboot -f among them)");
    for group in ["namespaces", "kernel", "network"] {
        probe(&a, "esc", group, &mut escapes);
    }
    assert_alive(&a, "esc", "the probe's attempts");

    // Writing the base rootfs lands in the sandbox's own layer only.
    let out = sh(&a, "esc", "echo changed > /etc/escape-marker && echo x >> /bin/busybox; echo done");
    assert_eq!(out.stdout.trim(), "done", "{out:?}");
    let base = shared_rootfs();
    if base.join("etc/escape-marker").exists() {
        escapes.push("writing the base rootfs: /etc/escape-marker appeared in it".into());
    }
    let busybox = std::fs::read(base.join("bin/busybox")).expect("base busybox");
    if busybox.ends_with(b"x\n") {
        escapes.push("writing the base rootfs: bin/busybox was appended to".into());
    }
    assert!(
        !vol.path().join("sda").exists() || !is_block_device(&vol.path().join("sda")),
        "a block device appeared on the volume"
    );

    assert!(escapes.is_empty(), "escapes:\n{}", escapes.join("\n"));
}

fn is_block_device(p: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::symlink_metadata(p).map(|m| m.file_type().is_block_device()).unwrap_or(false)
}

/// Item 8 of issue 11 (the agent undumpable) is another change: un-ignore
/// when it has landed.
#[test]
#[ignore = "ptrace/pidfd_getfd of the agent: closed by the agent-dumpable change (issue 11, item 8)"]
fn the_agent_cannot_be_traced_or_robbed_of_its_channel() {
    let a = Alcove::new();
    let probe_vol = format!("{}:/probe:ro", probe_dir().display());
    a.ok(&["create", "agent", "--rootfs", &a.rootfs_arg(), "-v", &probe_vol]);
    let mut escapes = Vec::new();
    probe(&a, "agent", "agent", &mut escapes);
    assert!(escapes.is_empty(), "escapes:\n{}", escapes.join("\n"));
}

#[test]
fn limits_hold_the_sandbox_survives_and_the_reason_is_reported() {
    let a = Alcove::new();
    let rootfs = a.rootfs_arg();
    a.ok(&["create", "lim", "--rootfs", &rootfs, "--memory", "64", "--pids", "48", "--disk", "32"]);
    let cfg = &a.inspect("lim")["config"]["guest"];
    assert_eq!(
        (cfg["memory_mib"].as_u64(), cfg["pids_limit"].as_u64(), cfg["disk_mib"].as_u64()),
        (Some(64), Some(48), Some(32))
    );

    // Memory: the hog is OOM-killed, and the CLI says so.
    let out = a.run(&["exec", "lim", "--", "dd", "if=/dev/zero", "of=/dev/null", "bs=200M", "count=1"]);
    assert_eq!(out.code, 137, "{out:?}");
    assert!(out.stderr.contains("out-of-memory killer"), "the OOM kill is not reported: {out:?}");
    assert_alive(&a, "lim", "an OOM kill");

    // Pids: forks fail inside, with the shell's own message.
    let out = sh(&a, "lim", "i=0; while [ $i -lt 100 ]; do sleep 2 & i=$((i+1)); done; wait");
    assert!(out.stderr.contains("can't fork") || out.stderr.contains("Resource temporarily unavailable"), "{out:?}");
    assert_alive(&a, "lim", "the pids limit");
    // The loop's shell gave up at the first failed fork, leaving its
    // sleeps to the agent: wait (polling, no event exists) until they are
    // gone and the sandbox can fork again.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while sh(&a, "lim", "/bin/true && echo forked").stdout.trim() != "forked" {
        assert!(std::time::Instant::now() < deadline, "the sandbox never got its processes back");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }

    // Disk: the writable layer fills up, then works again.
    let out = a.run(&["exec", "lim", "--", "dd", "if=/dev/zero", "of=/big", "bs=1M", "count=64"]);
    assert_ne!(out.code, 0, "64 MiB fit into a 32 MiB layer: {out:?}");
    assert!(out.stderr.contains("No space left on device"), "{out:?}");
    assert_alive(&a, "lim", "a full disk");
    let out = sh(&a, "lim", "rm /big && echo ok > /small && cat /small");
    assert_eq!(out.stdout.trim(), "ok", "{out:?}");

    // Defaults hold without flags: memory, pids, /tmp and /dev/shm sizes.
    a.ok(&["create", "dflt", "--rootfs", &rootfs]);
    let cfg = &a.inspect("dflt")["config"]["guest"];
    assert_eq!(cfg["memory_mib"].as_u64(), Some(alcove_jail::limits::DEFAULT_MEMORY_MIB));
    assert_eq!(cfg["pids_limit"].as_u64(), Some(alcove_jail::limits::DEFAULT_PIDS_LIMIT));
    let out = sh(&a, "dflt", "df -k /dev/shm /tmp | tail -2 | tr -s ' ' | cut -d' ' -f2 | tr '\\n' ' '");
    let sizes: Vec<u64> = out.stdout.split_whitespace().filter_map(|s| s.parse().ok()).collect();
    assert_eq!(
        sizes,
        [alcove_jail::limits::DEFAULT_SHM_MIB * 1024, alcove_jail::limits::DEFAULT_MEMORY_MIB / 2 * 1024],
        "{out:?}"
    );
    // The isolation is shown by inspect and probed by doctor.
    let inspect = a.inspect("dflt");
    let isolation = inspect["isolation"].as_str().unwrap_or_default();
    assert!(isolation.starts_with("private user namespace"), "{inspect}");
    let doctor = a.ok(&["doctor"]);
    assert!(doctor.contains("idmapped mounts    yes"), "{doctor}");
}

#[test]
fn a_limit_that_cannot_be_applied_refuses_the_sandbox_before_it_is_recorded() {
    use std::os::unix::process::CommandExt;
    cli_support::require_root();
    // An unprivileged caller without a delegated cgroup: uid 65534 with a
    // home of its own and an (empty) rootfs it can read.
    let dir = tempfile::tempdir_in("/tmp").expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let (home, runtime, rootfs) = (dir.path().join("h"), dir.path().join("r"), dir.path().join("root"));
    for d in [&home, &runtime, &rootfs] {
        std::fs::create_dir_all(d).expect("mkdir");
        std::os::unix::fs::chown(d, Some(65534), Some(65534)).expect("chown");
    }
    let run = |args: &[&str]| {
        let mut cmd = Command::new(cli_support::bin());
        cmd.args(args).env("ALCOVE_HOME", &home).env("ALCOVE_RUNTIME_DIR", &runtime).env("NO_COLOR", "1");
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setresgid(65534, 65534, 65534) != 0
                    || libc::setresuid(65534, 65534, 65534) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let out = cmd.output().expect("run alcove as uid 65534");
        Out {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    };
    let root = rootfs.display().to_string();
    for (flag, value) in [("--memory", "64"), ("--pids", "64"), ("--cpus", "1"), ("--disk", "64")] {
        let out = run(&["run", "--backend", "jail", "--rootfs", &root, "--name", "refused", flag, value, "--", "true"]);
        out.assert_error(&format!("{flag} cannot be applied"));
        let listed = run(&["ps", "-a", "--json"]);
        assert_eq!(listed.stdout.trim(), "[]", "a refused sandbox was recorded: {listed:?}");
        assert!(!home.join("sandboxes/refused").exists(), "a refused sandbox left its directory");
    }
}
