//! End-to-end tests of the jail backend with a busybox init (root required).
//!
//! Over 600 lines on purpose: one integration test file for the area.
//!
//! Each test builds a tiny rootfs holding the host's static busybox, runs a
//! shell script as the jail's PID 1 (`JailOptions::init_argv`), and reads
//! what the script reports on fd 3 (the agent channel) from the host end.

use alcove_backend::{
    BackendError, ExitObserver, GuestBackend, GuestControl, GuestExit, GuestRunner, GuestSpec, MountSpec,
};
use alcove_jail::{Jail, JailBackend, JailOptions, UserNamespace};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod common;

use common::{Fixture, BUSYBOX};

fn backend(script: &str) -> JailBackend {
    JailBackend::new(JailOptions {
        init_argv: Some(vec!["sh".into(), "-c".into(), script.into()]),
        ..JailOptions::default()
    })
}

/// Collects everything the guest writes on fd 3 until EOF.
fn collect(jail: &Jail) -> std::thread::JoinHandle<String> {
    let mut channel = jail.agent_channel.try_clone().expect("clone channel");
    std::thread::spawn(move || {
        let mut out = String::new();
        let _ = channel.read_to_string(&mut out);
        out
    })
}

/// Runs `script` as PID 1 to its end: (exit, fd-3 output).
fn run(spec: &GuestSpec, script: &str) -> (GuestExit, String) {
    let jail = backend(script).spawn(spec).expect("jail starts");
    let reader = collect(&jail);
    let Jail { agent_channel, runner, control: _control, .. } = jail;
    drop(agent_channel);
    let exit = runner.wait();
    (exit, reader.join().expect("reader"))
}

fn line<'a>(out: &'a str, key: &str) -> &'a str {
    out.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key}= line in guest output:\n{out}"))
}

fn host_mounts_mention(path: &Path) -> bool {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    mountinfo.contains(path.to_str().expect("utf8"))
}

#[test]
fn isolation_basics() {
    let fx = Fixture::new();
    let spec = fx.spec("iso-basics");
    let script = r#"
        echo "pid=$$" >&3
        echo "hostname=$(hostname)" >&3
        echo "procs=$(ls /proc | grep -c '^[0-9][0-9]*$')" >&3
        echo "net=$(ls /sys/class/net | tr '\n' ' ')" >&3
        echo "loflags=$(cat /sys/class/net/lo/flags)" >&3
        echo "config=$(cat <&4)" >&3
        echo "agent=$(ls -l /.alcove/agent | cut -c1-10)" >&3
        echo "nnp=$(grep NoNewPrivs /proc/self/status | tr -d ' \t' | cut -d: -f2)" >&3
        echo "seccomp=$(grep '^Seccomp:' /proc/self/status | tr -d ' \t' | cut -d: -f2)" >&3
        echo "capbnd=$(grep CapBnd /proc/self/status | tr -d ' \t' | cut -d: -f2)" >&3
        echo "root=$(ls / | tr '\n' ' ')" >&3
        if touch /.alcove/x 2>/dev/null; then echo "alcove_rw=yes" >&3; else echo "alcove_rw=no" >&3; fi
        if mount -t tmpfs none /mnt 2>/dev/null; then echo "mount=yes" >&3; else echo "mount=no" >&3; fi
        if unshare -U true 2>/dev/null; then echo "userns=yes" >&3; else echo "userns=no" >&3; fi
        if mknod /tmp/sda b 8 0 2>/dev/null; then echo "mknod=yes" >&3; else echo "mknod=no" >&3; fi
        if echo 1 > /proc/sys/kernel/sysrq 2>/dev/null; then echo "procsys=rw" >&3; else echo "procsys=ro" >&3; fi
        echo "stderr goes to the log" >&2
        exit 0
    "#;
    let (exit, out) = run(&spec, script);
    assert_eq!(exit, GuestExit::exited(0), "{out}\n{}", fx.guest_log());
    assert_eq!(line(&out, "pid"), "1");
    assert_eq!(line(&out, "hostname"), "iso-basics");
    // PID 1 (sh) and the `ls` of the command substitution, at most a pipeline.
    let procs: u32 = line(&out, "procs").parse().expect("number");
    assert!((1..=4).contains(&procs), "saw {procs} processes:\n{out}");
    assert_eq!(line(&out, "net").trim(), "lo");
    let flags = u32::from_str_radix(line(&out, "loflags").trim_start_matches("0x"), 16).expect("hex");
    assert_eq!(flags & 1, 1, "lo is not up");
    let config = alcove_protocol::agent_config::AgentConfig::from_json(line(&out, "config").as_bytes()).expect("json");
    assert_eq!(config.hostname, "iso-basics");
    assert_eq!(config.mode, alcove_protocol::agent_config::AgentMode::Jail);
    assert!(line(&out, "agent").starts_with("-r"), "{out}");
    assert_eq!(line(&out, "nnp"), "1");
    assert_eq!(line(&out, "seccomp"), "2");
    let capbnd = u64::from_str_radix(line(&out, "capbnd"), 16).expect("hex");
    let expected: u64 = alcove_jail::policy::kept_capabilities(false, false).iter().map(|c| 1u64 << c).sum();
    assert_eq!(capbnd, expected, "bounding set {capbnd:#x}");
    let root: Vec<&str> = line(&out, "root").split_whitespace().collect();
    assert_eq!(root, ["bin", "dev", "etc", "proc", "root", "sys", "tmp"]);
    assert_eq!(line(&out, "alcove_rw"), "no");
    assert_eq!(line(&out, "mount"), "no");
    assert_eq!(line(&out, "userns"), "no");
    assert_eq!(line(&out, "mknod"), "no");
    assert_eq!(line(&out, "procsys"), "ro");
    assert!(fx.guest_log().contains("stderr goes to the log"), "log: {}", fx.guest_log());
}

#[test]
fn writes_land_in_upper_and_persist_across_restart() {
    let fx = Fixture::new();
    let spec = fx.spec("overlay");
    let script = r#"
        echo changed > /etc/base.txt
        echo new > /created.txt
        mkdir -p /var/data && echo deep > /var/data/f
        echo done=1 >&3
    "#;
    let (exit, out) = run(&spec, script);
    assert_eq!(exit.code, Some(0), "{out}\n{}", fx.guest_log());
    assert_eq!(line(&out, "done"), "1");
    // The base rootfs is untouched.
    assert_eq!(std::fs::read_to_string(fx.rootfs().join("etc/base.txt")).expect("read"), "from the base\n");
    assert!(!fx.rootfs().join("created.txt").exists());
    assert!(!fx.rootfs().join(".alcove").exists(), "the jail wrote into the base rootfs");
    // The writes are in upper/.
    let upper = fx.sandbox_dir().join("upper");
    assert_eq!(std::fs::read_to_string(upper.join("etc/base.txt")).expect("read"), "changed\n");
    assert_eq!(std::fs::read_to_string(upper.join("created.txt")).expect("read"), "new\n");
    assert_eq!(std::fs::read_to_string(upper.join("var/data/f")).expect("read"), "deep\n");

    // A second start over the same sandbox dir sees them.
    let (exit, out) = run(&spec, r#"echo "base=$(cat /etc/base.txt)" >&3; echo "new=$(cat /created.txt)" >&3"#);
    assert_eq!(exit.code, Some(0), "{out}");
    assert_eq!(line(&out, "base"), "changed");
    assert_eq!(line(&out, "new"), "new");
}

#[test]
fn host_paths_outside_mounts_are_unreachable() {
    let fx = Fixture::new();
    let secret = fx.dir.path().join("secret.txt");
    std::fs::write(&secret, "host secret").expect("write");
    let spec = fx.spec("no-escape");
    let script = format!(
        r#"
        if cat {secret} 2>/dev/null; then echo "secret=visible" >&3; else echo "secret=hidden" >&3; fi
        if ls /proc/1/root{secret} >/dev/null 2>&1; then echo "via_proc=visible" >&3; else echo "via_proc=hidden" >&3; fi
        echo "cgroup_fs=$(ls /sys/fs/cgroup 2>/dev/null | tr '\n' ' ')" >&3
        echo "cgroup_leaves=$(find /sys/fs/cgroup -name cgroup.procs | wc -l)" >&3
        echo "cgroup_procs=$(cat $(find /sys/fs/cgroup -name cgroup.procs) | wc -l)" >&3
        if echo 1 > $(find /sys/fs/cgroup -name memory.limit_in_bytes) 2>/dev/null; then echo "cgroup_rw=yes" >&3; else echo "cgroup_rw=no" >&3; fi
        "#,
        secret = secret.display(),
    );
    let (exit, out) = run(&spec, &script);
    assert_eq!(exit.code, Some(0), "{out}\n{}", fx.guest_log());
    assert_eq!(line(&out, "secret"), "hidden");
    assert_eq!(line(&out, "via_proc"), "hidden");
    // Only the jail's own memory cgroup is shown (for its OOM counter), read-only:
    // one cgroup, holding exactly the jail's processes, and no other hierarchy.
    assert_eq!(line(&out, "cgroup_fs").trim(), "memory", "the host's cgroup tree is visible");
    assert_eq!(line(&out, "cgroup_leaves").trim(), "1", "other cgroups are visible");
    let procs: usize = line(&out, "cgroup_procs").trim().parse().expect("a count");
    assert!((1..10).contains(&procs), "{procs} processes in the visible cgroup");
    assert_eq!(line(&out, "cgroup_rw"), "no", "the cgroup view is writable");
}

#[test]
fn extra_mounts_read_only_and_read_write() {
    let fx = Fixture::new();
    let rw = fx.dir.path().join("rw-vol");
    let ro = fx.dir.path().join("ro-vol");
    let file = fx.dir.path().join("single.conf");
    std::fs::create_dir_all(&rw).expect("mkdir");
    std::fs::create_dir_all(&ro).expect("mkdir");
    std::fs::write(ro.join("inside.txt"), "read me").expect("write");
    std::fs::write(&file, "one file").expect("write");
    let mut spec = fx.spec("mounts");
    spec.mounts = vec![
        MountSpec { host: rw.clone(), guest: "/data".into(), readonly: false },
        MountSpec { host: ro.clone(), guest: "/srv/ro".into(), readonly: true },
        MountSpec { host: file.clone(), guest: "/etc/single.conf".into(), readonly: true },
    ];
    let script = r#"
        echo from-guest > /data/written.txt && echo "rw=ok" >&3
        echo "ro_read=$(cat /srv/ro/inside.txt)" >&3
        if echo x > /srv/ro/new.txt 2>/dev/null; then echo "ro_write=yes" >&3; else echo "ro_write=no" >&3; fi
        echo "file=$(cat /etc/single.conf)" >&3
        if echo x > /etc/single.conf 2>/dev/null; then echo "file_write=yes" >&3; else echo "file_write=no" >&3; fi
    "#;
    let (exit, out) = run(&spec, script);
    assert_eq!(exit.code, Some(0), "{out}\n{}", fx.guest_log());
    assert_eq!(line(&out, "rw"), "ok");
    assert_eq!(std::fs::read_to_string(rw.join("written.txt")).expect("host sees it"), "from-guest\n");
    assert_eq!(line(&out, "ro_read"), "read me");
    assert_eq!(line(&out, "ro_write"), "no");
    assert!(!ro.join("new.txt").exists());
    assert_eq!(line(&out, "file"), "one file");
    assert_eq!(line(&out, "file_write"), "no");
    assert_eq!(std::fs::read_to_string(&file).expect("read"), "one file");
}

#[test]
fn dev_nodes_work() {
    let fx = Fixture::new();
    let spec = fx.spec("devs");
    let script = r#"
        echo discard > /dev/null && echo "null=ok" >&3
        echo "zero=$(head -c 4096 /dev/zero | wc -c)" >&3
        echo "urandom=$(head -c 32 /dev/urandom | wc -c)" >&3
        echo "random=$(head -c 8 /dev/random | wc -c)" >&3
        if echo x > /dev/full 2>/dev/null; then echo "full=wrote" >&3; else echo "full=enospc" >&3; fi
        echo "ptmx=$(readlink /dev/ptmx)" >&3
        echo "fd=$(readlink /dev/fd)" >&3
        [ -c /dev/pts/ptmx ] && echo "pts=ok" >&3
        [ -d /dev/shm ] && echo "shm=ok" >&3
        echo "devs=$(ls /dev | tr '\n' ' ')" >&3
    "#;
    let (exit, out) = run(&spec, script);
    assert_eq!(exit.code, Some(0), "{out}\n{}", fx.guest_log());
    assert_eq!(line(&out, "null"), "ok");
    assert_eq!(line(&out, "zero").trim(), "4096");
    assert_eq!(line(&out, "urandom").trim(), "32");
    assert_eq!(line(&out, "random").trim(), "8");
    assert_eq!(line(&out, "full"), "enospc");
    assert_eq!(line(&out, "ptmx"), "pts/ptmx");
    assert_eq!(line(&out, "fd"), "/proc/self/fd");
    assert_eq!(line(&out, "pts"), "ok");
    assert_eq!(line(&out, "shm"), "ok");
    let devs: Vec<&str> = line(&out, "devs").split_whitespace().collect();
    assert!(
        !devs.iter().any(|d| d.starts_with("sd") || d.starts_with("vd") || *d == "mem" || *d == "kmsg"),
        "{devs:?}"
    );
}

#[test]
fn memory_limit_oom_kills_the_hog_and_pid1_survives() {
    let fx = Fixture::new();
    let mut spec = fx.spec("oom");
    spec.memory_mib = Some(32);
    let script = r#"
        dd if=/dev/zero of=/dev/null bs=96M count=1 2>/dev/null
        echo "dd=$?" >&3
        echo "pid1=alive" >&3
    "#;
    let (exit, out) = run(&spec, script);
    assert_eq!(exit.code, Some(0), "{out}\n{}", fx.guest_log());
    assert_eq!(line(&out, "dd"), "137", "the hog was not SIGKILLed:\n{out}");
    assert_eq!(line(&out, "pid1"), "alive");
}

#[test]
fn pids_limit_caps_process_count() {
    let fx = Fixture::new();
    let mut spec = fx.spec("pids");
    spec.pids_limit = Some(10);
    // A forking loop that can only end when fork fails; then PID 1 reports
    // with builtins only (the jail is full) and waits.
    let script = r#"
        sh -c 'while :; do sleep 30 & done' 2>/dev/null
        echo "inner=$?" >&3
        while :; do read -t 1 x <&0; done
    "#;
    let jail = backend(script).spawn(&spec).expect("starts");
    let mut reader = BufReader::new(jail.agent_channel.try_clone().expect("clone"));
    let mut first = String::new();
    reader.read_line(&mut first).expect("read");
    assert_ne!(first.trim(), "inner=0", "the fork loop ended without a fork failure");
    let pids_dir = jail.control.cgroup_paths().into_iter().find(|p| p.join("pids.max").exists()).expect("pids cgroup");
    assert_eq!(std::fs::read_to_string(pids_dir.join("pids.max")).expect("read").trim(), "10");
    let current: u32 =
        std::fs::read_to_string(pids_dir.join("pids.current")).expect("read").trim().parse().expect("number");
    assert!((8..=10).contains(&current), "{current} processes with a limit of 10");
    jail.control.force_stop();
    assert_eq!(jail.runner.wait().signal, Some(libc::SIGKILL));
}

#[test]
fn only_an_ephemeral_layer_is_mounted_volatile() {
    let fx = Fixture::new();
    let script = r#"
        if grep -q ' / .*volatile' /proc/self/mountinfo; then echo "volatile=yes" >&3; else echo "volatile=no" >&3; fi
        echo data > /kept
    "#;
    let kept = fx.spec("durable");
    let (exit, out) = run(&kept, script);
    assert_eq!(exit.code, Some(0), "{out}\n{}", fx.guest_log());
    assert_eq!(line(&out, "volatile"), "no");

    let mut spec = fx.spec("throwaway");
    spec.sandbox_dir = fx.dir.path().join("sandbox-eph");
    spec.guest_log = spec.sandbox_dir.join("guest.log");
    spec.ephemeral = true;
    let (exit, out) = run(&spec, script);
    assert_eq!(exit.code, Some(0), "{out}\n{}", fx.guest_log());
    assert_eq!(line(&out, "volatile"), "yes");
    // The run's writes still reach its upper layer.
    assert_eq!(std::fs::read_to_string(spec.sandbox_dir.join("upper/kept")).expect("written").trim(), "data");
}

#[test]
fn the_jail_is_in_every_one_of_its_cgroups() {
    // PID 1 joins its v1 cgroups itself (through `tasks`) and the host adds
    // it to the cgroup2 one: each directory must hold the jail's processes.
    let fx = Fixture::new();
    let jail = backend("sleep 30 & echo up >&3; wait").spawn(&fx.spec("member")).expect("starts");
    let mut reader = BufReader::new(jail.agent_channel.try_clone().expect("clone"));
    let mut first = String::new();
    reader.read_line(&mut first).expect("read");
    assert_eq!(first.trim(), "up");
    let paths = jail.control.cgroup_paths();
    assert!(!paths.is_empty(), "the jail has no cgroup");
    for p in &paths {
        let procs = std::fs::read_to_string(p.join("cgroup.procs")).expect("cgroup.procs");
        let members: Vec<&str> = procs.lines().collect();
        assert!(members.len() >= 2, "{} holds {members:?}, not the jail's PID 1 and its sleep", p.display());
    }
    jail.control.force_stop();
    assert_eq!(jail.runner.wait().signal, Some(libc::SIGKILL));
}

#[test]
fn nothing_is_left_after_exit_and_exit_codes_reach_the_observer() {
    let fx = Fixture::new();
    let spec = fx.spec("cleanup");
    let backend = backend("sleep 30 & sleep 30 & echo up >&3; exit 7");
    let launched = Box::new(backend.clone()).launch(&spec).expect("launch");
    // The same run through the concrete API, to see the cgroup paths.
    let mut spec2 = fx.spec("cleanup2");
    spec2.sandbox_dir = fx.dir.path().join("sandbox2");
    spec2.guest_log = spec2.sandbox_dir.join("guest.log");
    let jail = backend.spawn(&spec2).map(Some).unwrap_or(None);
    let paths = jail.as_ref().map(|j| j.control.cgroup_paths()).unwrap_or_default();
    assert!(!paths.is_empty(), "the jail has no cgroup");
    for p in &paths {
        assert!(p.exists(), "{} missing while running", p.display());
    }

    let seen: Arc<Mutex<Vec<GuestExit>>> = Arc::default();
    let observer = {
        let seen = seen.clone();
        ExitObserver::new(move |exit| seen.lock().expect("lock").push(exit))
    };
    launched.runner.run(observer);
    assert_eq!(*seen.lock().expect("lock"), vec![GuestExit::exited(7)]);

    // The runner reports the exit while it removes the cgroup; by the time
    // it returns both are done.
    let jail = jail.expect("second jail");
    let seen2: Arc<Mutex<Vec<GuestExit>>> = Arc::default();
    let observer = {
        let seen = seen2.clone();
        ExitObserver::new(move |exit| seen.lock().expect("lock").push(exit))
    };
    Box::new(jail.runner).run(observer);
    assert_eq!(*seen2.lock().expect("lock"), vec![GuestExit::exited(7)]);
    for p in &paths {
        assert!(!p.exists(), "{} left behind", p.display());
    }
    for dir in [fx.sandbox_dir(), spec2.sandbox_dir.clone()] {
        assert!(!dir.join("merged").exists(), "merged/ left behind");
        assert!(!host_mounts_mention(&dir), "a mount leaked to the host");
    }
}

#[test]
fn force_stop_kills_everything_promptly() {
    let fx = Fixture::new();
    let spec = fx.spec("force");
    let jail = backend("sleep 1000 & sleep 1000 & echo ready >&3; wait").spawn(&spec).expect("starts");
    let mut reader = BufReader::new(jail.agent_channel.try_clone().expect("clone"));
    let mut first = String::new();
    reader.read_line(&mut first).expect("read");
    assert_eq!(first.trim(), "ready");
    let paths = jail.control.cgroup_paths();
    let procs_file = paths.iter().map(|p| p.join("cgroup.procs")).find(|p| p.exists()).expect("procs file");
    let pids: Vec<i32> =
        std::fs::read_to_string(&procs_file).expect("read").lines().filter_map(|l| l.parse().ok()).collect();
    assert_eq!(pids.len(), 3, "PID 1 and two sleeps: {pids:?}");

    let usage = jail.control.usage().expect("usage from the cgroup");
    assert!(usage.memory_bytes > 0, "{usage:?}");

    let started = Instant::now();
    jail.control.force_stop();
    jail.control.force_stop(); // idempotent
    let control = jail.control.clone();
    let exit = jail.runner.wait();
    assert!(started.elapsed() < Duration::from_secs(3), "took {:?}", started.elapsed());
    assert_eq!(exit, GuestExit::killed(9));
    for pid in pids {
        assert!(!Path::new(&format!("/proc/{pid}")).exists(), "process {pid} survived");
    }
    for p in &paths {
        assert!(!p.exists(), "{} left behind", p.display());
    }
    assert!(control.usage().is_none());
    control.force_stop(); // after the end: harmless
}

#[test]
fn usage_counts_cpu() {
    let fx = Fixture::new();
    let mut spec = fx.spec("usage");
    spec.cpus = Some(1);
    let jail = backend("i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; echo busy-done >&3; sleep 100")
        .spawn(&spec)
        .expect("starts");
    let mut reader = BufReader::new(jail.agent_channel.try_clone().expect("clone"));
    let mut first = String::new();
    reader.read_line(&mut first).expect("read");
    assert_eq!(first.trim(), "busy-done");
    let usage = jail.control.usage().expect("usage");
    assert!(usage.cpu_usec > 1000, "{usage:?}");
    assert!(usage.memory_bytes > 0, "{usage:?}");
    let quota_file = jail
        .control
        .cgroup_paths()
        .into_iter()
        .map(|p| p.join("cpu.cfs_quota_us"))
        .find(|p| p.exists())
        .expect("cpu cgroup");
    assert_eq!(std::fs::read_to_string(quota_file).expect("read").trim(), "100000");
    jail.control.force_stop();
    assert_eq!(jail.runner.wait().signal, Some(libc::SIGKILL));
}

#[test]
fn dropping_the_runner_kills_the_jail() {
    let fx = Fixture::new();
    let jail = backend("echo up >&3; sleep 1000").spawn(&fx.spec("dropped")).expect("starts");
    let pid = jail.control.pid();
    let mut reader = BufReader::new(jail.agent_channel.try_clone().expect("clone"));
    let mut first = String::new();
    reader.read_line(&mut first).expect("read");
    drop(jail.runner);
    assert!(!Path::new(&format!("/proc/{pid}")).exists());
}

fn expect_invalid(spec: &GuestSpec, needle: &str) {
    let err = backend("exit 0").spawn(spec).err().unwrap_or_else(|| panic!("{spec:?} was accepted"));
    assert!(matches!(err, BackendError::InvalidConfig(_)), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains(needle), "{msg:?} lacks {needle:?}");
    assert!(!msg.contains('\n'), "{msg:?} is not one line");
    assert!(!spec.sandbox_dir.join("upper").exists(), "something was created before validation failed");
}

#[test]
fn bad_input_is_refused_before_anything_runs() {
    let fx = Fixture::new();
    let mut spec = fx.spec("bad");
    spec.rootfs = Some(fx.dir.path().join("missing"));
    expect_invalid(&spec, "rootfs");

    let mut spec = fx.spec("bad");
    let file = fx.dir.path().join("plain-file");
    std::fs::write(&file, "x").expect("write");
    spec.rootfs = Some(file.clone());
    expect_invalid(&spec, "is not a directory");

    let mut spec = fx.spec("bad");
    spec.agent_binary = Some(fx.dir.path().join("no-agent"));
    expect_invalid(&spec, "agent binary");

    let mut spec = fx.spec("bad");
    spec.mounts = vec![MountSpec { host: fx.dir.path().join("nope"), guest: "/x".into(), readonly: false }];
    expect_invalid(&spec, "mount host path");

    let mut spec = fx.spec("bad");
    spec.mounts = vec![MountSpec { host: fx.rootfs(), guest: "relative".into(), readonly: false }];
    expect_invalid(&spec, "not absolute");

    let mut spec = fx.spec("bad");
    spec.mounts = vec![MountSpec { host: fx.rootfs(), guest: "/proc/x".into(), readonly: false }];
    expect_invalid(&spec, "/proc");

    let mut spec = fx.spec("bad");
    spec.cpus = Some(10_000);
    expect_invalid(&spec, "exceeds");

    let mut spec = fx.spec("bad");
    spec.cpus = Some(0);
    expect_invalid(&spec, "cpus");

    let mut spec = fx.spec("bad");
    spec.memory_mib = Some(1);
    expect_invalid(&spec, "memory");

    let mut spec = fx.spec("bad");
    spec.pids_limit = Some(1);
    expect_invalid(&spec, "pids");

    let mut spec = fx.spec("bad name/with slash");
    spec.name = "bad name/with slash".into();
    expect_invalid(&spec, "sandbox name");
}

#[test]
fn setup_failure_is_reported_and_cleaned_up() {
    let fx = Fixture::new();
    // /dev in the rootfs is a file: the jail cannot mount its /dev there.
    std::fs::remove_dir(fx.rootfs().join("dev")).expect("rmdir");
    std::fs::write(fx.rootfs().join("dev"), "not a dir").expect("write");
    let err = backend("exit 0").spawn(&fx.spec("broken")).err().expect("fails");
    let msg = err.to_string();
    assert!(msg.contains("/dev"), "{msg}");
    assert!(!msg.contains('\n'), "{msg}");
    assert!(!host_mounts_mention(&fx.sandbox_dir()));
    assert!(!fx.sandbox_dir().join("merged").exists(), "merged/ left behind");
}

#[test]
fn user_namespace_mode_runs_the_same_jail() {
    let fx = Fixture::new();
    let spec = fx.spec("userns");
    let backend = JailBackend::new(JailOptions {
        user_namespace: UserNamespace::Caller,
        init_argv: Some(vec![
            "sh".into(),
            "-c".into(),
            r#"
            echo "pid=$$" >&3
            echo "hostname=$(hostname)" >&3
            echo "uidmap=$(cat /proc/self/uid_map | tr -s ' ' | sed 's/^ //')" >&3
            echo "net=$(ls /sys/class/net | tr '\n' ' ')" >&3
            echo written > /in-userns.txt && echo "write=ok" >&3
            "#
            .into(),
        ]),
        ..JailOptions::default()
    });
    let jail = backend.spawn(&spec).expect("starts in a user namespace");
    let reader = collect(&jail);
    let Jail { agent_channel, runner, control: _c, .. } = jail;
    drop(agent_channel);
    let exit = runner.wait();
    let out = reader.join().expect("reader");
    assert_eq!(exit.code, Some(0), "{out}\n{}", fx.guest_log());
    assert_eq!(line(&out, "pid"), "1");
    assert_eq!(line(&out, "hostname"), "userns");
    assert_eq!(line(&out, "uidmap"), "0 0 1");
    assert_eq!(line(&out, "net").trim(), "lo");
    assert_eq!(line(&out, "write"), "ok");
    assert!(fx.sandbox_dir().join("upper/in-userns.txt").exists());
}

const ROOTLESS_ENV: &str = "ALCOVE_JAIL_ROOTLESS_FIXTURE";

/// Runs the ignored `rootless_child` test of this binary as uid/gid 65534.
#[test]
fn rootless_mode_works_for_an_unprivileged_caller() {
    use std::os::unix::fs::chown;
    use std::os::unix::process::CommandExt;
    let fx = Fixture::new();
    let sandbox = fx.sandbox_dir();
    std::fs::create_dir_all(&sandbox).expect("mkdir");
    for p in [fx.dir.path(), sandbox.as_path()] {
        chown(p, Some(65534), Some(65534)).expect("chown");
    }
    let exe = std::env::current_exe().expect("test binary");
    let mut cmd = std::process::Command::new(exe);
    cmd.args(["--exact", "rootless_child", "--ignored", "--nocapture", "--test-threads=1"])
        .env(ROOTLESS_ENV, fx.dir.path());
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
    let out = cmd.output().expect("run the unprivileged half");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "unprivileged run failed:\n{text}");
    assert!(text.contains("1 passed"), "the unprivileged half did not run:\n{text}");
    assert_eq!(
        std::fs::read_to_string(sandbox.join("upper/rootless.txt")).expect("written through the overlay"),
        "rootless\n"
    );
}

/// The unprivileged half of `rootless_mode_works_for_an_unprivileged_caller`.
#[test]
#[ignore = "run by rootless_mode_works_for_an_unprivileged_caller as uid 65534"]
fn rootless_child() {
    let dir = PathBuf::from(std::env::var(ROOTLESS_ENV).expect("run through the rootless test"));
    // SAFETY: geteuid has no preconditions.
    assert_ne!(unsafe { libc::geteuid() }, 0);
    let sandbox = dir.join("sandbox");
    let spec = GuestSpec {
        name: "rootless".into(),
        sandbox_dir: sandbox.clone(),
        guest_log: sandbox.join("guest.log"),
        rootfs: Some(dir.join("rootfs")),
        agent_binary: Some(PathBuf::from(BUSYBOX)),
        ..GuestSpec::default()
    };
    // A limit asked for that this caller cannot apply (no delegated cgroup)
    // refuses the jail, at the pre-flight and at launch, in one line.
    let limited = GuestSpec { memory_mib: Some(64), ..spec.clone() };
    let err = alcove_jail::check(&limited, &JailOptions::default()).expect_err("the check refuses --memory");
    assert!(err.to_string().contains("--memory cannot be applied"), "{err}");
    let err = backend("true").spawn(&limited).err().expect("the launch refuses a limit it cannot apply");
    assert!(matches!(err, BackendError::InvalidConfig(_)), "{err:?}");
    assert!(!err.to_string().contains('\n'), "{err}");
    let script = r#"
        echo "pid=$$" >&3
        echo "uid=$(id -u)" >&3
        echo "hostname=$(hostname)" >&3
        echo "net=$(ls /sys/class/net | tr '\n' ' ')" >&3
        echo rootless > /rootless.txt && echo "write=ok" >&3
    "#;
    let jail = backend(script).spawn(&spec).expect("an unprivileged jail starts");
    let reader = collect(&jail);
    let Jail { agent_channel, runner, control, .. } = jail;
    drop(agent_channel);
    assert!(control.cgroup_paths().is_empty(), "no cgroup is expected without privileges");
    let exit = runner.wait();
    let out = reader.join().expect("reader");
    assert_eq!(exit.code, Some(0), "{out}\n{}", std::fs::read_to_string(sandbox.join("guest.log")).unwrap_or_default());
    assert_eq!(line(&out, "pid"), "1");
    assert_eq!(line(&out, "uid"), "0");
    assert_eq!(line(&out, "hostname"), "rootless");
    assert_eq!(line(&out, "net").trim(), "lo");
    assert_eq!(line(&out, "write"), "ok");
}
