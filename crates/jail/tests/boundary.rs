//! The host boundary of the jail (issue 11: holes 3–4, items 5–7), each by
//! a busybox script run as the jail's PID 1 (root required).
//!
//! - hole 3: every guest-writable or host-provided mount is `nosuid,nodev`;
//!   a device node on a volume cannot be opened;
//! - hole 4: without a user namespace, `CAP_NET_ADMIN`, `CAP_SYS_BOOT` and
//!   `CAP_SETFCAP` are gone;
//! - item 5: guest root is a private, recorded host uid range; layers and
//!   volumes keep their owners through idmapped mounts;
//! - item 6: a cgroup namespace and runc's masked / read-only paths;
//! - item 7: sized /tmp and /dev/shm, a disk limit for the writable layer.

use alcove_backend::{GuestExit, GuestSpec, MountSpec};
use alcove_jail::{policy::caps, Isolation, Jail, JailBackend, JailOptions, UserNamespace};
use std::io::Read;
use std::os::unix::fs::MetadataExt;

mod common;

use common::Fixture;

fn backend_with(user_namespace: UserNamespace, script: &str) -> JailBackend {
    JailBackend::new(JailOptions {
        user_namespace,
        init_argv: Some(vec!["sh".into(), "-c".into(), script.into()]),
        ..JailOptions::default()
    })
}

/// Runs `script` as PID 1 to its end: (exit, fd-3 output, isolation used).
fn run_with(user_namespace: UserNamespace, spec: &GuestSpec, script: &str) -> (GuestExit, String, Isolation) {
    let jail = backend_with(user_namespace, script).spawn(spec).expect("jail starts");
    let mut channel = jail.agent_channel.try_clone().expect("clone channel");
    let reader = std::thread::spawn(move || {
        let mut out = String::new();
        let _ = channel.read_to_string(&mut out);
        out
    });
    let Jail { agent_channel, runner, control, .. } = jail;
    drop(agent_channel);
    let isolation = control.isolation().clone();
    let exit = runner.wait();
    (exit, reader.join().expect("reader"), isolation)
}

fn run(spec: &GuestSpec, script: &str) -> (GuestExit, String, Isolation) {
    run_with(UserNamespace::Auto, spec, script)
}

fn line<'a>(out: &'a str, key: &str) -> &'a str {
    out.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key}= line in guest output:\n{out}"))
}

/// The options of the mount at `target` in a mountinfo text (the last one
/// mounted there wins), per-mount and super-block options joined.
fn mount_options(mountinfo: &str, target: &str) -> String {
    mountinfo
        .lines()
        .rev()
        .find_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let fields: Vec<&str> = left.split(' ').collect();
            (fields.get(4) == Some(&target)).then(|| format!("{},{}", fields[5], right))
        })
        .unwrap_or_else(|| panic!("{target} is not mounted:\n{mountinfo}"))
}

#[test]
fn every_guest_writable_or_host_provided_mount_is_nosuid_nodev() {
    let fx = Fixture::new();
    let vol = fx.dir.path().join("vol");
    std::fs::create_dir_all(&vol).expect("mkdir");
    let mut spec = fx.spec("nodev");
    spec.mounts = vec![MountSpec { host: vol, guest: "/data".into(), readonly: false }];
    let (exit, out, _) = run(&spec, "cat /proc/self/mountinfo >&3");
    assert_eq!(exit.code, Some(0), "{out}\n{}", fx.guest_log());
    for target in ["/", "/tmp", "/dev/shm", "/dev", "/data", "/.alcove/agent"] {
        let opts = mount_options(&out, target);
        let flags: Vec<&str> = opts.split(',').collect();
        assert!(flags.contains(&"nosuid") && flags.contains(&"nodev"), "{target} is mounted {opts}");
    }
}

#[test]
fn a_device_node_on_a_volume_cannot_be_opened() {
    // /dev/null's numbers: allowed by the v1 device list, so only `nodev`
    // on the volume keeps the guest from opening a node a host user left there.
    let fx = Fixture::new();
    let vol = fx.dir.path().join("devvol");
    std::fs::create_dir_all(&vol).expect("mkdir");
    let node = vol.join("null-like");
    let path = std::ffi::CString::new(node.to_str().expect("utf8")).expect("cstring");
    // SAFETY: mknod with a valid path.
    let rc = unsafe { libc::mknod(path.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(1, 3)) };
    assert_eq!(rc, 0, "mknod on the host: {}", std::io::Error::last_os_error());
    let mut spec = fx.spec("devvol");
    spec.mounts = vec![MountSpec { host: vol, guest: "/vol".into(), readonly: false }];
    let script = r#"
        if echo x > /vol/null-like 2>/dev/null; then echo "open=yes" >&3; else echo "open=no" >&3; fi
        if mknod /tmp/blk b 7 0 2>/dev/null; then echo "mknod=yes" >&3; else echo "mknod=no" >&3; fi
        if mkfifo /tmp/fifo 2>/dev/null; then echo "fifo=yes" >&3; else echo "fifo=no" >&3; fi
    "#;
    let (exit, out, _) = run(&spec, script);
    assert_eq!(exit.code, Some(0), "{out}\n{}", fx.guest_log());
    assert_eq!(line(&out, "open"), "no", "a device node on a volume was opened");
    assert_eq!(line(&out, "mknod"), "no");
    assert_eq!(line(&out, "fifo"), "yes", "plain mknod of a FIFO must keep working");
}

fn bounding_set(out: &str) -> u64 {
    u64::from_str_radix(line(out, "capbnd"), 16).expect("hex")
}

const CAPBND: &str = r#"echo "capbnd=$(grep CapBnd /proc/self/status | tr -d ' \t' | cut -d: -f2)" >&3"#;

#[test]
fn host_root_mode_drops_net_admin_sys_boot_and_setfcap() {
    let fx = Fixture::new();
    let (exit, out, isolation) = run_with(UserNamespace::Never, &fx.spec("hostroot"), CAPBND);
    assert_eq!(exit.code, Some(0), "{out}\n{}", fx.guest_log());
    assert!(matches!(isolation, Isolation::HostRoot { .. }), "{isolation:?}");
    let bnd = bounding_set(&out);
    for (cap, name) in [
        (caps::CAP_NET_ADMIN, "CAP_NET_ADMIN"),
        (caps::CAP_SYS_BOOT, "CAP_SYS_BOOT"),
        (caps::CAP_SETFCAP, "CAP_SETFCAP"),
    ] {
        assert_eq!(bnd & (1 << cap), 0, "{name} kept while guest root is host root: {bnd:#x}");
    }
    assert_ne!(bnd & (1 << caps::CAP_SETUID), 0, "CAP_SETUID is needed by the agent: {bnd:#x}");
}

#[test]
fn guest_root_is_a_private_recorded_host_range() {
    let fx = Fixture::new();
    let spec = fx.spec("private");
    let script = r#"
        echo "uidmap=$(cat /proc/self/uid_map | tr -s ' ' | sed 's/^ //')" >&3
        echo "gidmap=$(cat /proc/self/gid_map | tr -s ' ' | sed 's/^ //')" >&3
        echo "uid=$(id -u)" >&3
        echo "base_owner=$(stat -c %u:%g /etc/base.txt)" >&3
        echo "root_owner=$(stat -c %u:%g /)" >&3
        echo "agent_owner=$(stat -c %u:%g /.alcove/agent)" >&3
        echo new > /created.txt && chown 1000:1000 /created.txt && echo "write=ok" >&3
        echo changed > /etc/base.txt && echo "copyup=ok" >&3
        if sethostname x 2>/dev/null || hostname other 2>/dev/null; then echo "uts=changed" >&3; else echo "uts=kept" >&3; fi
    "#;
    let (exit, out, isolation) = run(&spec, script);
    assert_eq!(exit.code, Some(0), "{out}\n{}", fx.guest_log());
    let Isolation::Private { base, count } = isolation else { panic!("not a private range: {isolation:?}") };
    assert_eq!(count, alcove_jail::idmap::RANGE_SIZE);
    assert!(base >= alcove_jail::idmap::POOL_START, "base {base} is below alcove's pool");
    assert_eq!(line(&out, "uidmap"), format!("0 {base} {count}"));
    assert_eq!(line(&out, "gidmap"), format!("0 {base} {count}"));
    assert_eq!(line(&out, "uid"), "0");
    // Through the idmapped lower layer the base's files are root's.
    assert_eq!(line(&out, "base_owner"), "0:0");
    assert_eq!(line(&out, "root_owner"), "0:0");
    assert_eq!(line(&out, "agent_owner"), "0:0");
    assert_eq!(line(&out, "write"), "ok");
    assert_eq!(line(&out, "copyup"), "ok");
    // On the host, the writable layer belongs to the range; the base is untouched.
    let upper = fx.sandbox_dir().join("upper");
    let created = std::fs::metadata(upper.join("created.txt")).expect("in upper");
    assert_eq!((created.uid(), created.gid()), (base + 1000, base + 1000));
    let copied = std::fs::metadata(upper.join("etc/base.txt")).expect("copied up");
    assert_eq!((copied.uid(), copied.gid()), (base, base));
    let lower = std::fs::metadata(fx.rootfs().join("etc/base.txt")).expect("lower");
    assert_eq!((lower.uid(), lower.gid()), (0, 0));
    assert_eq!(std::fs::read_to_string(fx.rootfs().join("etc/base.txt")).expect("read"), "from the base\n");
    // The range is recorded in the host-wide registry under the sandbox's directory.
    let owner = std::fs::read_to_string(alcove_jail::idmap::registry_dir().join(base.to_string())).expect("entry");
    let sandbox = std::fs::canonicalize(fx.sandbox_dir()).expect("canonical");
    assert_eq!(owner.trim_end(), sandbox.to_str().expect("utf8"));
}

#[test]
fn a_sandbox_keeps_its_range_across_starts_and_another_gets_its_own() {
    let fx = Fixture::new();
    let spec = fx.spec("keep-a");
    let probe = r#"echo "uid=$(id -u)" >&3; echo x > /file-$$ "#;
    let (_, _, first) = run(&spec, probe);
    let (exit, out, again) = run(&spec, r#"echo "owner=$(stat -c %u /file-1)" >&3"#);
    assert_eq!(exit.code, Some(0), "{out}\n{}", fx.guest_log());
    assert_eq!(first, again, "a restarted sandbox changed ranges");
    assert_eq!(line(&out, "owner"), "0", "the first start's files are not root's any more");

    let mut other = fx.spec("keep-b");
    other.sandbox_dir = fx.dir.path().join("sandbox-b");
    other.guest_log = other.sandbox_dir.join("guest.log");
    let (_, _, second) = run(&other, "true");
    let (Isolation::Private { base: a, count }, Isolation::Private { base: b, .. }) = (&first, &second) else {
        panic!("not private ranges: {first:?} {second:?}")
    };
    assert!(a.abs_diff(*b) >= *count, "ranges overlap: {a} and {b}");
}

#[test]
fn volumes_keep_their_owners_through_the_idmap() {
    let fx = Fixture::new();
    let vol = fx.dir.path().join("owned");
    std::fs::create_dir_all(&vol).expect("mkdir");
    std::fs::write(vol.join("users.txt"), "a user's file").expect("write");
    std::os::unix::fs::chown(vol.join("users.txt"), Some(1000), Some(1000)).expect("chown");
    let ro = fx.dir.path().join("ro");
    std::fs::create_dir_all(&ro).expect("mkdir");
    let mut spec = fx.spec("volowners");
    spec.mounts = vec![
        MountSpec { host: vol.clone(), guest: "/vol".into(), readonly: false },
        MountSpec { host: ro.clone(), guest: "/ro".into(), readonly: true },
    ];
    let script = r#"
        echo "owner=$(stat -c %u:%g /vol/users.txt)" >&3
        echo from-guest > /vol/made.txt && echo "write=ok" >&3
        if touch /ro/x 2>/dev/null; then echo "ro=writable" >&3; else echo "ro=readonly" >&3; fi
    "#;
    let (exit, out, _) = run(&spec, script);
    assert_eq!(exit.code, Some(0), "{out}\n{}", fx.guest_log());
    assert_eq!(line(&out, "owner"), "1000:1000");
    assert_eq!(line(&out, "write"), "ok");
    assert_eq!(line(&out, "ro"), "readonly");
    let made = std::fs::metadata(vol.join("made.txt")).expect("on the host");
    assert_eq!((made.uid(), made.gid()), (0, 0), "guest root's file on a volume is the host owner's view of root");
}

#[test]
fn cgroup_namespace_and_masked_paths() {
    let fx = Fixture::new();
    let mut spec = fx.spec("masked");
    spec.memory_mib = Some(64);
    let script = r#"
        echo "cgroup=$(cut -d: -f3 /proc/self/cgroup | sort -u | tr '\n' ' ')" >&3
        for f in kcore keys latency_stats timer_list timer_stats sched_debug; do
            if [ -e /proc/$f ]; then echo "$f=$(head -c 64 /proc/$f | wc -c)" >&3; else echo "$f=0" >&3; fi
        done
        for d in /proc/acpi /proc/scsi /sys/firmware /sys/devices/virtual/powercap; do
            echo "$d=$(ls -A $d 2>/dev/null | wc -l)" >&3
        done
        if echo 1 > /proc/sys/kernel/sysrq 2>/dev/null; then echo "procsys=rw" >&3; else echo "procsys=ro" >&3; fi
        if echo h > /proc/sysrq-trigger 2>/dev/null; then echo "sysrq=written" >&3; else echo "sysrq=refused" >&3; fi
        echo "oom_file=$(ls /sys/fs/cgroup/memory/memory.oom_control 2>/dev/null)" >&3
    "#;
    let (exit, out, _) = run(&spec, script);
    assert_eq!(exit.code, Some(0), "{out}\n{}", fx.guest_log());
    assert_eq!(line(&out, "cgroup").trim(), "/", "the host's cgroup paths are visible");
    for f in ["kcore", "keys", "latency_stats", "timer_list", "timer_stats", "sched_debug"] {
        assert_eq!(line(&out, f).trim(), "0", "/proc/{f} is readable");
    }
    for d in ["/proc/acpi", "/proc/scsi", "/sys/firmware", "/sys/devices/virtual/powercap"] {
        assert_eq!(line(&out, d).trim(), "0", "{d} is not masked");
    }
    assert_eq!(line(&out, "procsys"), "ro");
    assert_eq!(line(&out, "sysrq"), "refused");
    // The agent still finds the jail's own memory cgroup where
    // /proc/self/cgroup (now "/") points.
    assert_eq!(line(&out, "oom_file"), "/sys/fs/cgroup/memory/memory.oom_control");
}

#[test]
fn tmp_and_shm_are_sized() {
    let fx = Fixture::new();
    let script = r#"
        echo "tmp=$(df -k /tmp | tail -1 | tr -s ' ' | cut -d' ' -f2)" >&3
        echo "shm=$(df -k /dev/shm | tail -1 | tr -s ' ' | cut -d' ' -f2)" >&3
    "#;
    let mut spec = fx.spec("sized");
    spec.memory_mib = Some(256);
    let (exit, out, _) = run(&spec, script);
    assert_eq!(exit.code, Some(0), "{out}\n{}", fx.guest_log());
    assert_eq!(line(&out, "shm"), (alcove_jail::limits::DEFAULT_SHM_MIB * 1024).to_string());
    assert_eq!(line(&out, "tmp"), (128 * 1024).to_string(), "/tmp is not half the memory limit");

    let mut spec = fx.spec("sized2");
    spec.sandbox_dir = fx.dir.path().join("sandbox-2");
    spec.guest_log = spec.sandbox_dir.join("guest.log");
    spec.tmp_mib = Some(20);
    spec.shm_mib = Some(10);
    let (exit, out, _) = run(&spec, script);
    assert_eq!(exit.code, Some(0), "{out}");
    assert_eq!(line(&out, "tmp"), (20 * 1024).to_string());
    assert_eq!(line(&out, "shm"), (10 * 1024).to_string());
}

#[test]
fn disk_limit_bounds_the_writable_layer_and_survives_restart() {
    let fx = Fixture::new();
    let mut spec = fx.spec("disk");
    spec.disk_mib = Some(32);
    let script = r#"
        if dd if=/dev/zero of=/fill bs=1M count=64 2>/dev/null; then echo "dd=fit" >&3; else echo "dd=full" >&3; fi
        rm -f /fill
        echo kept > /kept.txt && echo "write=ok" >&3
    "#;
    let (exit, out, _) = run(&spec, script);
    assert_eq!(exit.code, Some(0), "{out}\n{}", fx.guest_log());
    assert_eq!(line(&out, "dd"), "full", "64 MiB fit into a 32 MiB layer");
    assert_eq!(line(&out, "write"), "ok", "the layer is unusable after it was full");
    let (exit, out, _) = run(&spec, r#"echo "kept=$(cat /kept.txt)" >&3"#);
    assert_eq!(exit.code, Some(0), "{out}\n{}", fx.guest_log());
    assert_eq!(line(&out, "kept"), "kept");
    // Nothing of the image stays mounted or attached on the host: the loop
    // device is released by the kernel once the jail's namespace is gone
    // (asynchronously, so polled with a generous deadline).
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert!(!mounts.contains(fx.dir.path().to_str().expect("utf8")), "{mounts}");
    let image = std::fs::canonicalize(fx.sandbox_dir().join("disk.img")).expect("the image exists");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let attached: Vec<String> = std::fs::read_dir("/sys/block")
            .expect("/sys/block")
            .flatten()
            .filter_map(|e| std::fs::read_to_string(e.path().join("loop/backing_file")).ok())
            .filter(|f| f.trim() == image.to_str().expect("utf8"))
            .collect();
        if attached.is_empty() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the image is still attached to a loop device");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn preflight_check_accepts_what_this_host_can_enforce() {
    let fx = Fixture::new();
    let mut spec = fx.spec("check");
    spec.memory_mib = Some(64);
    spec.pids_limit = Some(64);
    spec.disk_mib = Some(64);
    alcove_jail::check(&spec, &JailOptions::default()).expect("root on this host can apply every limit");
    assert!(!fx.sandbox_dir().exists(), "the check created the sandbox directory");
    spec.disk_mib = Some(1);
    let err = alcove_jail::check(&spec, &JailOptions::default()).expect_err("a 1 MiB disk is refused");
    assert!(err.to_string().contains("disk"), "{err}");
}
