//! Times the jail's launch (spawn → init exec'd) and its exit-to-cleanup
//! (`JailRunner::wait`) with `/bin/busybox true` as init on a busybox rootfs.
//!
//! Run as root: `cargo run --release -p alcove-jail --example launch_timing -- [runs]`.
//! Set `TIMING_LIMITS=1` to also request memory and cpu limits, and
//! `TIMING_BALLAST_MB=<n>` to give the launching process `n` MiB resident.

use alcove_backend::GuestSpec;
use alcove_jail::{JailBackend, JailOptions};
use std::os::unix::fs::symlink;
use std::path::PathBuf;
use std::time::{Duration, Instant};

const BUSYBOX: &str = "/bin/busybox";

fn stats(name: &str, mut v: Vec<Duration>) {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let n = v.len();
    println!(
        "{name:<10} n={n} min={:.2} p25={:.2} median={:.2} p75={:.2} max={:.2} ms",
        ms(v[0]),
        ms(v[n / 4]),
        ms(v[n / 2]),
        ms(v[3 * n / 4]),
        ms(v[n - 1])
    );
}

fn main() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "launch_timing must run as root");
    let runs: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(50);
    let limits = std::env::var_os("TIMING_LIMITS").is_some();
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

    let backend = JailBackend::new(JailOptions {
        init_argv: Some(vec!["busybox".into(), "true".into()]),
        cgroup_parent: Some("alcove-timing".into()),
        ..JailOptions::default()
    });
    let (mut spawn, mut run, mut wait, mut total) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for i in 0..runs {
        let sandbox = dir.path().join(format!("sb{i}"));
        let spec = GuestSpec {
            name: "timing".into(),
            sandbox_dir: sandbox.clone(),
            guest_log: sandbox.join("logs/guest.log"),
            rootfs: Some(PathBuf::from(&root)),
            agent_binary: Some(PathBuf::from(BUSYBOX)),
            memory_mib: limits.then_some(256),
            cpus: limits.then_some(1),
            ..GuestSpec::default()
        };
        let t0 = Instant::now();
        let jail = backend.spawn(&spec).expect("spawn");
        let t1 = Instant::now();
        // PID 1 has exec'd; wait for it to exit without reaping it.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: waitid on our own child with WNOWAIT leaves it unreaped.
        let rc =
            unsafe { libc::waitid(libc::P_PID, jail.control.pid() as u32, &mut info, libc::WEXITED | libc::WNOWAIT) };
        assert_eq!(rc, 0, "waitid");
        let t2 = Instant::now();
        let exit = jail.runner.wait();
        let t3 = Instant::now();
        assert_eq!(exit.code, 0, "init failed: {exit:?}");
        drop(jail.agent_channel);
        spawn.push(t1 - t0);
        run.push(t2 - t1);
        wait.push(t3 - t2);
        total.push(t3 - t0);
    }
    std::hint::black_box(&ballast);
    stats("spawn", spawn);
    stats("run", run);
    stats("wait", wait);
    stats("total", total);
}
