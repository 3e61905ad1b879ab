//! Times the jail's launch (spawn → init exec'd) and its exit-to-cleanup
//! (`JailRunner::wait`) with `/bin/busybox true` as init on a busybox rootfs.
//!
//! Run as root: `cargo run --release -p alcove-jail --example launch_timing -- [runs]`.
//! Set `TIMING_LIMITS=1` to also request memory and cpu limits, and
//! `TIMING_BALLAST_MB=<n>` to give the launching process `n` MiB resident,
//! `TIMING_EPHEMERAL=1` to launch as `alcove run --rm` does (a `volatile`
//! overlay; the uid-range record is not synced).
//! `TIMING_VARIANTS=default,nouserns,disk` (any subset, default `default`)
//! alternates launches with the default isolation (a private uid range),
//! without a user namespace, and with a 64 MiB disk limit (the image made
//! once per sandbox directory, as a kept sandbox's restart sees it; the
//! first launch, which makes it, is not timed), one of each per round.

use alcove_backend::GuestSpec;
use alcove_jail::{JailBackend, JailOptions, UserNamespace};
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const BUSYBOX: &str = "/bin/busybox";

fn stats(name: &str, mut v: Vec<Duration>) {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let n = v.len();
    println!(
        "{name:<22} n={n} min={:.2} p25={:.2} median={:.2} p75={:.2} max={:.2} ms",
        ms(v[0]),
        ms(v[n / 4]),
        ms(v[n / 2]),
        ms(v[3 * n / 4]),
        ms(v[n - 1])
    );
}

/// One timed launch: (spawn, run, wait, total).
fn launch(backend: &JailBackend, spec: &GuestSpec) -> [Duration; 4] {
    let t0 = Instant::now();
    let jail = backend.spawn(spec).expect("spawn");
    let t1 = Instant::now();
    // PID 1 has exec'd; wait for it to exit without reaping it.
    // SAFETY: siginfo_t is plain data.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: waitid on our own child with WNOWAIT leaves it unreaped.
    let rc = unsafe { libc::waitid(libc::P_PID, jail.control.pid() as u32, &mut info, libc::WEXITED | libc::WNOWAIT) };
    assert_eq!(rc, 0, "waitid");
    let t2 = Instant::now();
    let exit = jail.runner.wait();
    let t3 = Instant::now();
    assert_eq!(exit.code, Some(0), "init failed: {exit:?}");
    drop(jail.agent_channel);
    [t1 - t0, t2 - t1, t3 - t2, t3 - t0]
}

struct Variant {
    name: String,
    backend: JailBackend,
    disk_mib: Option<u64>,
    /// A kept sandbox directory (disk variant), else a fresh one per run.
    kept_dir: Option<PathBuf>,
    times: [Vec<Duration>; 4],
}

fn main() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "launch_timing must run as root");
    let runs: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(50);
    let limits = std::env::var_os("TIMING_LIMITS").is_some();
    // As `alcove run --rm` launches: a volatile overlay, no synced uid-range record.
    let ephemeral = std::env::var_os("TIMING_EPHEMERAL").is_some();
    // Optional resident ballast, to see what the fork-like clone costs in a
    // process with a large address space (TIMING_BALLAST_MB).
    let ballast_mb: usize = std::env::var("TIMING_BALLAST_MB").ok().and_then(|v| v.parse().ok()).unwrap_or(0);
    let ballast: Vec<Vec<u8>> = (0..ballast_mb).map(|i| vec![i as u8 | 1; 1 << 20]).collect();
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("rootfs");
    for d in ["bin", "etc", "proc", "sys", "dev", "tmp", "root"] {
        std::fs::create_dir_all(root.join(d)).expect("mkdir");
    }
    std::fs::copy(BUSYBOX, root.join("bin/busybox")).expect("copy busybox");
    symlink("busybox", root.join("bin/true")).expect("symlink");

    let backend = |user_namespace| {
        JailBackend::new(JailOptions {
            user_namespace,
            init_argv: Some(vec!["busybox".into(), "true".into()]),
            cgroup_parent: Some("alcove-timing".into()),
            ..JailOptions::default()
        })
    };
    let names = std::env::var("TIMING_VARIANTS").unwrap_or_else(|_| "default".into());
    let mut variants: Vec<Variant> = names
        .split(',')
        .map(|name| {
            let (user_namespace, disk_mib) = match name {
                "default" => (UserNamespace::Auto, None),
                "nouserns" => (UserNamespace::Never, None),
                "disk" => (UserNamespace::Auto, Some(64)),
                other => panic!("unknown variant {other} (default, nouserns, disk)"),
            };
            Variant {
                name: name.to_string(),
                backend: backend(user_namespace),
                disk_mib,
                kept_dir: disk_mib.map(|_| dir.path().join(format!("kept-{name}"))),
                times: Default::default(),
            }
        })
        .collect();
    let spec = |sandbox: &Path, disk_mib| GuestSpec {
        name: "timing".into(),
        sandbox_dir: sandbox.to_path_buf(),
        guest_log: sandbox.join("logs/guest.log"),
        rootfs: Some(PathBuf::from(&root)),
        agent_binary: Some(PathBuf::from(BUSYBOX)),
        memory_mib: limits.then_some(256),
        cpus: limits.then_some(1),
        disk_mib,
        ephemeral: ephemeral && disk_mib.is_none(),
        ..GuestSpec::default()
    };
    for v in &variants {
        if let Some(kept) = &v.kept_dir {
            launch(&v.backend, &spec(kept, v.disk_mib));
        }
    }
    for i in 0..runs {
        for v in variants.iter_mut() {
            let sandbox = v.kept_dir.clone().unwrap_or_else(|| dir.path().join(format!("sb-{}-{i}", v.name)));
            let t = launch(&v.backend, &spec(&sandbox, v.disk_mib));
            for (k, d) in t.into_iter().enumerate() {
                v.times[k].push(d);
            }
        }
    }
    std::hint::black_box(&ballast);
    for v in variants {
        let [spawn, run, wait, total] = v.times;
        println!("-- {}", v.name);
        stats("spawn", spawn);
        stats("run", run);
        stats("wait", wait);
        stats("total", total);
    }
}
