//! `alcove run` against jail sandboxes: exit codes, output streams, options,
//! removal afterwards, detached runs and the parent-death watch.

mod cli_support;

use cli_support::{any_cmdline_contains, Alcove};
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

#[test]
fn run_propagates_exit_codes_and_streams_and_cleans_up() {
    let a = Alcove::new();
    // The default rootfs (built on first use in this fresh home).
    let out = a.run(&["run", "--backend", "jail", "--", "sh", "-c", "exit 3"]);
    assert_eq!(out.code, 3, "{out:?}");

    let out = a.run(&["run", "--", "sh", "-c", "echo out; echo err >&2; exit 0"]);
    assert_eq!((out.code, out.stdout.as_str(), out.stderr.as_str()), (0, "out\n", "err\n"), "{out:?}");

    // Killed by a signal: 128 + N.
    let out = a.run(&["run", "--", "sh", "-c", "kill -TERM $$"]);
    assert_eq!(out.code, 128 + 15, "{out:?}");

    // Docker's codes for commands that cannot run.
    let out = a.run(&["run", "--", "no-such-command"]);
    assert_eq!(out.code, 127, "{out:?}");
    assert_eq!(out.stderr.lines().count(), 1, "{out:?}");
    assert!(out.stderr.contains("not found"), "{out:?}");
    let out = a.run(&["run", "--", "/etc/passwd"]);
    assert_eq!(out.code, 126, "{out:?}");
    assert_eq!(out.stderr.lines().count(), 1, "{out:?}");

    // Unnamed runs leave nothing behind: no row, no directory.
    assert!(a.ps().is_empty(), "{:?}", a.ps());
    let dirs = std::fs::read_dir(a.home.join("sandboxes")).map(|d| d.count()).unwrap_or(0);
    assert_eq!(dirs, 0);

    // Megabytes of stdout into a pipe (the CLI splices them from its socket
    // into its stdout), whole and in order.
    let out = a.ok(&["run", "--", "seq", "1", "400000"]);
    let want: String = (1..=400_000).map(|i| format!("{i}\n")).collect();
    assert!(out == want, "seq output differs: {} bytes instead of {}", out.len(), want.len());

    // A layer thrown away after the run is mounted volatile (no sync of the
    // host filesystem when it is unmounted); a kept one is not.
    let root_mount = ["sh", "-c", "grep ' / / ' /proc/self/mountinfo"];
    let out = a.ok(&[&["run", "--"][..], &root_mount[..]].concat());
    assert!(out.contains("volatile"), "{out}");
    let out = a.ok(&[&["run", "--name", "kept", "--"][..], &root_mount[..]].concat());
    assert!(out.contains("overlay") && !out.contains("volatile"), "{out}");
    a.ok(&["rm", "kept"]);

    // --name keeps the sandbox (stopped), --name --rm does not.
    a.ok(&["run", "--name", "kept", "--", "true"]);
    let e = a.ps_entry("kept").expect("kept sandbox listed");
    assert_eq!(e["status"], "Stopped");
    // The run records its command's end (exit 0), not the stop that followed.
    assert_eq!(e["last_run"]["reason"], "Completed");
    assert_eq!(e["last_run"]["exit_code"], 0);
    a.ok(&["run", "--name", "gone", "--rm", "--", "true"]);
    assert!(a.ps_entry("gone").is_none());
    assert!(!a.home.join("sandboxes/gone").exists());
}

#[test]
fn run_applies_env_workdir_user_volumes_and_limits() {
    let a = Alcove::new();
    let rootfs = a.rootfs_arg();
    let vol = tempfile::tempdir_in("/tmp").expect("volume dir");
    std::fs::write(vol.path().join("in.txt"), "from the host\n").expect("write");
    let ro = format!("{}:/mnt/ro:ro", vol.path().display());
    let out = a.run(&[
        "run",
        "--rootfs",
        &rootfs,
        "-e",
        "GREETING=hello world",
        "-w",
        "/tmp",
        "-u",
        "1000",
        "--cpus",
        "1",
        "--memory",
        "256",
        "-v",
        &ro,
        "--",
        "sh",
        "-c",
        "echo \"$GREETING\"; pwd; id -u; cat /mnt/ro/in.txt; echo x > /mnt/ro/new 2>/dev/null || echo read-only",
    ]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.stdout, "hello world\n/tmp\n1000\nfrom the host\nread-only\n");
    assert!(!vol.path().join("new").exists());

    // A writable volume writes through to the host.
    let rw = format!("{}:/mnt/rw", vol.path().display());
    a.ok(&["run", "--rootfs", &rootfs, "-v", &rw, "--", "sh", "-c", "echo written > /mnt/rw/out.txt"]);
    assert_eq!(std::fs::read_to_string(vol.path().join("out.txt")).expect("written"), "written\n");

    // stdin with -i.
    let out = a.run_input(&["run", "-i", "--rootfs", &rootfs, "--", "sh", "-c", "tr a-z A-Z"], b"shout\n");
    assert_eq!((out.code, out.stdout.as_str()), (0, "SHOUT\n"), "{out:?}");
}

#[test]
fn secrets_stay_out_of_argv_and_the_config_file_is_private() {
    let a = Alcove::new();
    let rootfs = a.rootfs_arg();
    let secret = format!("s3cr3t-{}", std::process::id());
    a.ok(&["create", "sec", "--rootfs", &rootfs, "-e", &format!("API_TOKEN={secret}")]);
    // The CLI has exited; the sandbox process and its guest are running.
    let pid = a.ps_entry("sec").expect("listed")["pid"].as_u64().expect("pid");
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).expect("cmdline");
    assert!(String::from_utf8_lossy(&cmdline).contains("--config"));
    assert!(!any_cmdline_contains(&secret), "the secret shows up in some process's argv");
    let cfg = a.home.join("sandboxes/sec/config.json");
    let mode = std::fs::metadata(&cfg).expect("config file").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert!(std::fs::read_to_string(&cfg).expect("read").contains(&secret));
    // And the guest sees it.
    assert_eq!(a.ok(&["exec", "sec", "--", "sh", "-c", "echo $API_TOKEN"]), format!("{secret}\n"));
    a.ok(&["rm", "-f", "sec"]);
}

#[test]
fn detached_runs_outlive_the_cli_and_attached_runs_die_with_it() {
    let a = Alcove::new();
    let rootfs = a.rootfs_arg();
    // run -d: prints the name, the command runs in the background.
    let out = a.ok(&[
        "run",
        "-d",
        "--name",
        "bg",
        "--rootfs",
        &rootfs,
        "--",
        "sh",
        "-c",
        "echo started > /tmp/mark; exec sleep 60",
    ]);
    assert_eq!(out, "bg\n");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = a.run(&["exec", "bg", "--", "cat", "/tmp/mark"]);
        if out.code == 0 {
            assert_eq!(out.stdout, "started\n");
            break;
        }
        assert!(Instant::now() < deadline, "the detached command never ran: {out:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(a.status("bg"), "Running");

    // run -d of a command that ends: the sandbox stops, and --rm removes it.
    a.ok(&["run", "-d", "--rm", "--name", "brief", "--rootfs", &rootfs, "--", "true"]);
    let deadline = Instant::now() + Duration::from_secs(15);
    while a.ps_entry("brief").is_some() {
        assert!(Instant::now() < deadline, "brief was never removed: {:?}", a.ps_entry("brief"));
        std::thread::sleep(Duration::from_millis(100));
    }

    // An attached run killed with SIGKILL takes its sandbox with it.
    let mut child = a
        .cmd(&["run", "--name", "att", "--rootfs", &rootfs, "--", "sleep", "60"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("spawn run");
    a.wait_status("att", "Running", Duration::from_secs(15));
    child.kill().expect("kill the CLI");
    child.wait().expect("reap the CLI");
    let e = a.wait_status("att", "Stopped", Duration::from_secs(15));
    assert_eq!(e["last_run"]["reason"], "Signal", "{e}");
    assert!(e["last_run"]["detail"].as_str().unwrap_or("").contains("attached client"), "{e}");
    a.ok(&["stop", "bg"]);
}

#[test]
fn a_sandbox_ending_under_a_command_is_explained_and_backends_fail_clearly() {
    let a = Alcove::new();
    let rootfs = a.rootfs_arg();
    // The max duration ends the sandbox under a running command: the
    // command's own code (SIGTERM) comes back, with one line saying why.
    let started = Instant::now();
    let out = a.run(&["run", "--rootfs", &rootfs, "--max-duration", "1", "--", "sleep", "30"]);
    assert!(started.elapsed() < Duration::from_secs(15), "{:?}", started.elapsed());
    assert_eq!(out.code, 128 + 15, "{out:?}");
    assert_eq!(out.stderr.lines().count(), 1, "{out:?}");
    assert!(out.stderr.contains("MaxDurationExceeded"), "{out:?}");

    // krun works only where microVMs boot; elsewhere it fails with one line.
    let (auto, _) = alcove_hostprobe::probe().auto_backend();
    let out = a.run(&["run", "--backend", "krun", "--rootfs", &rootfs, "--", "true"]);
    if auto == alcove_hostprobe::Backend::Krun {
        assert_eq!(out.code, 0, "{out:?}");
    } else {
        out.assert_error("failed to start");
    }
    // Nothing is left behind by the failure.
    assert!(a.ps().is_empty(), "{:?}", a.ps());
    // `auto` works here whatever it picks.
    assert_eq!(a.ok(&["run", "--backend", "auto", "--rootfs", &rootfs, "--", "echo", "auto"]), "auto\n");
}

#[test]
fn a_reader_that_goes_away_ends_the_command_as_in_a_local_pipeline() {
    // `alcove run -- yes | head -2`: with stdout a pipe, the command writes
    // into a pipe the CLI splices into its own stdout; when the reader
    // leaves, the command gets SIGPIPE (exit 128 + 13), instead of running
    // on with its output dropped.
    use std::io::{BufRead, BufReader};
    let a = Alcove::new();
    let rootfs = a.rootfs_arg();
    let mut child = a
        .cmd(&["run", "--rootfs", &rootfs, "--", "yes"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    assert_eq!(lines.next().and_then(Result::ok).as_deref(), Some("y"));
    assert_eq!(lines.next().and_then(Result::ok).as_deref(), Some("y"));
    drop(lines);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        assert!(std::time::Instant::now() < deadline, "`yes` kept running after its reader left");
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(128 + libc::SIGPIPE));
    assert!(a.ps().is_empty(), "{:?}", a.ps());
}
