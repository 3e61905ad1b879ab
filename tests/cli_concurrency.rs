//! Many CLIs at once on one `$ALCOVE_HOME`: concurrent `run --rm`, and
//! `create`/`exec`/`rm` mixes with `ps` calls, never fail because of each
//! other. A reaper in one CLI must never take away a sandbox whose owner
//! (another CLI, or its own sandbox process) is still using it.

mod cli_support;

use cli_support::{Alcove, Out};

/// Concurrent attached runs (the CI-sized version of `bench/stress`).
const RUNS: usize = 64;

fn assert_ok(out: &Out, want_stdout: &str, what: &str) {
    assert_eq!((out.code, out.stdout.as_str(), out.stderr.as_str()), (0, want_stdout, ""), "{what}: {out:?}");
}

#[test]
fn sixty_four_concurrent_runs_with_bystanders_all_succeed() {
    let a = Alcove::new();
    let rootfs = a.rootfs_arg();
    // Agent installed and database created before the crowd arrives.
    a.ok(&["run", "--rootfs", &rootfs, "--", "true"]);
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        // Bystanders: every `ps` runs the reaper while the runs come and go.
        let watchers: Vec<_> = (0..4)
            .map(|_| {
                s.spawn(|| {
                    let mut calls = 0;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let out = a.run(&["ps", "-a", "--json"]);
                        assert_eq!((out.code, out.stderr.as_str()), (0, ""), "a bystander ps failed: {out:?}");
                        calls += 1;
                    }
                    calls
                })
            })
            .collect();
        let runs: Vec<_> = (0..RUNS)
            .map(|i| {
                let rootfs = &rootfs;
                let a = &a;
                s.spawn(move || {
                    let out = a.run(&["run", "--rm", "--rootfs", rootfs, "--", "echo", &format!("hi {i}")]);
                    assert_ok(&out, &format!("hi {i}\n"), &format!("run {i}"));
                })
            })
            .collect();
        let failed: Vec<String> = runs
            .into_iter()
            .filter_map(|h| h.join().err())
            .map(|e| e.downcast_ref::<String>().cloned().unwrap_or_else(|| "panic".into()))
            .collect();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for w in watchers {
            assert!(w.join().expect("a bystander failed") > 0);
        }
        assert!(failed.is_empty(), "{} of {RUNS} runs failed: {failed:#?}", failed.len());
    });
    // Every `--rm` sandbox is gone, and nothing else is left.
    assert!(a.ps().is_empty(), "{:?}", a.ps());
}

#[test]
fn create_exec_rm_and_ps_mixes_do_not_disturb_each_other() {
    let a = Alcove::new();
    let rootfs = a.rootfs_arg();
    a.ok(&["run", "--rootfs", &rootfs, "--", "true"]);
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..12)
            .map(|i| {
                let (a, rootfs) = (&a, &rootfs);
                s.spawn(move || {
                    let name = format!("mix{i}");
                    let out = a.run(&["create", &name, "--rootfs", rootfs]);
                    assert_ok(&out, &format!("{name}\n"), "create");
                    for k in 0..3 {
                        let out = a.run(&["exec", &name, "--", "echo", &format!("{i}.{k}")]);
                        assert_ok(&out, &format!("{i}.{k}\n"), "exec");
                        let out = a.run(&["ps", "-a", "--json"]);
                        assert_eq!((out.code, out.stderr.as_str()), (0, ""), "ps: {out:?}");
                    }
                    // Half are removed while running, half stopped first.
                    if i % 2 == 0 {
                        assert_ok(&a.run(&["rm", "-f", &name]), &format!("{name}\n"), "rm -f");
                    } else {
                        assert_ok(&a.run(&["stop", &name]), &format!("{name}\n"), "stop");
                        assert_ok(&a.run(&["rm", &name]), &format!("{name}\n"), "rm");
                    }
                    let out = a.run(&["run", "--rm", "--rootfs", rootfs, "--", "echo", &name]);
                    assert_ok(&out, &format!("{name}\n"), "run --rm");
                })
            })
            .collect();
        for w in workers {
            if let Err(e) = w.join() {
                std::panic::resume_unwind(e);
            }
        }
    });
    assert!(a.ps().is_empty(), "{:?}", a.ps());
}
