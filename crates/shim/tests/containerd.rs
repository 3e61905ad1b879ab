//! containerd-shim-alcove-v2 under a real containerd (Debian's, installed
//! when missing) of the test's own: `ctr run --rm --runtime
//! io.containerd.alcove.v2` of a local busybox image prints what the command
//! prints, exit codes propagate, the bundle's env, cwd, hostname and
//! memory limit are honoured, stdin and a terminal work, execs, `ctr task ps` and
//! `ctr task metrics` work, `ctr task pause`/`resume` freeze and thaw the
//! task (PAUSED in `ctr task ls`, Paused in `alcove ps`, the kernel's
//! freezer holding its processes; a SIGKILL ends a paused task), CloseIO
//! gives the command EOF,
//! containerd's events follow a task's life,
//! 16 tasks run at once, a bundle alcove cannot honour
//! fails with a clear message, and nothing is left behind (no sandbox
//! record, process, mount or shim socket).

mod support;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use support::Containerd;

const IMAGE: &str = "docker.io/library/busybox:alcove-test";
const RUNTIME: &str = "io.containerd.alcove.v2";

fn shim_sockets() -> BTreeSet<String> {
    std::fs::read_dir("/run/containerd/s")
        .map(|d| d.filter_map(|e| Some(e.ok()?.file_name().to_string_lossy().into_owned())).collect())
        .unwrap_or_default()
}

/// `ctr events`, read line by line on a thread.
struct EventStream {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl EventStream {
    /// Starts `ctr events` and returns once it is subscribed: it has shown
    /// an event made after it started (a namespace created as a marker).
    fn subscribe(containerd: &Containerd) -> EventStream {
        let mut child = containerd.spawn_ctr(&["events"]);
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let stream = EventStream { child, lines };
        // A marker made before the subscription is never shown: make
        // another until one is (each wait bounds one attempt, not the test).
        for attempt in 0..60 {
            let marker = format!("events-ready-{attempt}");
            let made = containerd.ctr(&["namespaces", "create", &marker]);
            assert!(made.status.success(), "{}", text(&made.stderr));
            let seen = std::iter::from_fn(|| stream.lines.recv_timeout(std::time::Duration::from_millis(500)).ok())
                .any(|l| l.contains(&marker));
            let _ = containerd.ctr(&["namespaces", "remove", &marker]);
            if seen {
                return stream;
            }
        }
        panic!("ctr events never subscribed");
    }

    /// The topics of the events whose line holds `needle`, up to and
    /// including the first of topic `last`.
    fn topics_until(&mut self, needle: &str, last: &str) -> Vec<String> {
        let mut topics = Vec::new();
        while let Ok(line) = self.lines.recv_timeout(std::time::Duration::from_secs(60)) {
            if !line.contains(needle) {
                continue;
            }
            if let Some(topic) = line.split_whitespace().find(|w| w.starts_with("/tasks/")) {
                topics.push(topic.to_string());
                if topic == last {
                    return topics;
                }
            }
        }
        panic!("no {last} event for {needle}; saw {topics:?}");
    }
}

impl Drop for EventStream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Sends CloseIO (stdin) for task `id` straight to its shim, at the
/// socket address the shim crate derives from containerd's address, the
/// namespace and the task id.
fn close_stdin(containerd: &Containerd, id: &str) {
    use containerd_shim::protos::{api::CloseIORequest, shim_sync::TaskClient, ttrpc};
    let address = containerd_shim::socket_address(&containerd.socket.display().to_string(), "default", id);
    let client = ttrpc::Client::connect(&address).expect("connect to the shim");
    let request = CloseIORequest { id: id.to_string(), stdin: true, ..Default::default() };
    TaskClient::new(client).close_io(ttrpc::context::with_timeout(10_000_000_000), &request).expect("CloseIO");
}

/// The STATUS column of `ctr task ls` for task `id`.
fn task_status(containerd: &Containerd, id: &str) -> String {
    let ls = containerd.ctr(&["task", "ls"]);
    assert!(ls.status.success(), "{}", text(&ls.stderr));
    let out = text(&ls.stdout);
    let line = out.lines().find(|l| l.split_whitespace().next() == Some(id));
    line.and_then(|l| l.split_whitespace().nth(2)).unwrap_or_else(|| panic!("task {id} in {out}")).to_string()
}

/// The status `alcove ps` shows for the sandbox of task `id`.
fn sandbox_status(containerd: &Containerd, id: &str) -> String {
    let ps = containerd.alcove(&["ps", "--all", "--json"]);
    let list: serde_json::Value = serde_json::from_slice(&ps.stdout).expect("ps --json");
    let suffix = format!("-{id}");
    let entry =
        list.as_array().and_then(|l| l.iter().find(|s| s["name"].as_str().is_some_and(|n| n.ends_with(&suffix))));
    entry.and_then(|e| e["status"].as_str()).unwrap_or_else(|| panic!("no sandbox for {id}: {list}")).to_string()
}

/// The state letter of host process `pid` (`/proc/PID/stat`): a frozen
/// task shows as D, whether the freezer parked it in `__refrigerator` or
/// froze it in its sleep.
fn task_state(pid: u32) -> char {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("the process exists");
    let after_name = &stat[stat.rfind(')').expect("stat has a name") + 1..];
    after_name.trim_start().chars().next().expect("a state")
}

/// `freezer.state` of host process `pid`'s v1 freezer cgroup.
fn freezer_state(pid: u32) -> String {
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("the process exists");
    let path = cgroups.lines().find_map(|l| l.split_once(":freezer:").map(|(_, p)| p.to_string())).expect("a freezer");
    let state = std::fs::read_to_string(format!("/sys/fs/cgroup/freezer{path}/freezer.state")).expect("freezer.state");
    state.trim().to_string()
}

#[test]
fn ctr_runs_tasks_in_alcove_sandboxes_and_leaves_nothing_behind() {
    support::require_root();
    support::ensure_containerd();
    support::ensure_alcove_binary();
    let rootfs = alcove_rootfs::RootfsStore::new("/tmp/alcv-test-rootfs")
        .ensure_default(&mut |_| {})
        .expect("build the busybox rootfs")
        .root;
    // Short: containerd's and the sandboxes' socket paths live under it.
    let dir = tempfile::Builder::new().prefix("alcv-ctrd-").tempdir_in("/tmp").expect("temp dir");
    let archive = dir.path().join("busybox.tar");
    support::oci::write_archive(&rootfs, IMAGE, &archive);
    let sockets_before = shim_sockets();

    let containerd = Containerd::start(dir.path());
    let import = containerd.ctr(&["image", "import", archive.to_str().expect("utf-8")]);
    assert!(import.status.success(), "import: {}", text(&import.stderr));

    // The command's output, and success.
    let run = containerd.ctr(&["run", "--rm", "--runtime", RUNTIME, IMAGE, "echo-hi", "echo", "hi"]);
    assert_eq!(text(&run.stdout), "hi\n", "stderr: {}\nlog: {}", text(&run.stderr), containerd.log());
    assert_eq!(run.status.code(), Some(0));

    // The bundle's hostname is the sandbox's. ctr has no --hostname: a
    // whole spec carrying one, over the busybox rootfs directory.
    let mut spec: serde_json::Value =
        serde_json::from_str(include_str!("../src/testdata/ctr-run-config.json")).expect("the spec fixture");
    spec["hostname"] = "web.example".into();
    spec["process"]["args"] = serde_json::json!(["sh", "-c", "hostname; cat /etc/hostname; echo $HOSTNAME"]);
    spec["root"]["path"] = rootfs.display().to_string().into();
    let spec_path = dir.path().join("hostname.json");
    std::fs::write(&spec_path, serde_json::to_vec(&spec).expect("JSON")).expect("write the spec");
    let spec_arg = spec_path.display().to_string();
    let run = containerd.ctr(&["run", "--rm", "--runtime", RUNTIME, "--config", &spec_arg, "hn"]);
    assert_eq!(text(&run.stdout), "web.example\nweb.example\nweb.example\n", "stderr: {}", text(&run.stderr));
    assert_eq!(run.status.code(), Some(0));

    // stderr apart from stdout, and the exit code back through ctr.
    let run = containerd.ctr(&[
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        IMAGE,
        "exit-3",
        "sh",
        "-c",
        "echo out; echo err >&2; exit 3",
    ]);
    assert_eq!(text(&run.stdout), "out\n");
    assert!(text(&run.stderr).contains("err\n"), "{}", text(&run.stderr));
    assert_eq!(run.status.code(), Some(3), "{}", text(&run.stderr));

    // The bundle's environment and working directory reach the command.
    let run = containerd.ctr(&[
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        "--env",
        "GREETING=hello",
        "--cwd",
        "/tmp",
        IMAGE,
        "env-cwd",
        "sh",
        "-c",
        "echo $GREETING; pwd",
    ]);
    assert_eq!(text(&run.stdout), "hello\n/tmp\n", "{}", text(&run.stderr));

    // Stdin reaches the command, and its EOF ends it.
    let mut cat = std::process::Command::new("ctr")
        .arg("--address")
        .arg(&containerd.socket)
        .args(["run", "--rm", "--runtime", RUNTIME, IMAGE, "stdin-cat", "cat"])
        .current_dir("/")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start ctr");
    cat.stdin.take().expect("stdin").write_all(b"through stdin\n").expect("write stdin");
    let run = cat.wait_with_output().expect("ctr ends");
    assert_eq!(text(&run.stdout), "through stdin\n");
    assert_eq!(run.status.code(), Some(0));

    // A terminal (-t): the command runs on a pty; ctr itself needs one,
    // which `script` gives it.
    let ctr_tty = format!(
        "ctr --address {} run --rm -t --runtime {RUNTIME} {IMAGE} on-tty sh -c 'tty; echo done'",
        containerd.socket.display()
    );
    let run = std::process::Command::new("script")
        .args(["-qec", &ctr_tty, "/dev/null"])
        .current_dir("/")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run script");
    let out = text(&run.stdout);
    assert!(out.contains("/dev/pts/") && out.contains("done"), "{out:?} {}", text(&run.stderr));
    assert_eq!(run.status.code(), Some(0), "{out:?}");

    // The image spec's memory limit is the sandbox's: `tail /dev/zero`
    // (which holds everything it reads) in a 64 MiB sandbox ends in the OOM
    // killer, while 200 MiB held without the limit is fine.
    // containerd's event stream shows the task's life, the OOM kill included.
    let mut events = EventStream::subscribe(&containerd);
    let hog = "head -c 200m /dev/zero | tail > /dev/null";
    let run = containerd.ctr(&[
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        "--memory-limit",
        "67108864",
        IMAGE,
        "mem-64",
        "tail",
        "/dev/zero",
    ]);
    assert_eq!(run.status.code(), Some(128 + libc::SIGKILL), "{}", text(&run.stderr));
    let topics = events.topics_until("\"mem-64\"", "/tasks/delete");
    assert_eq!(topics, ["/tasks/create", "/tasks/start", "/tasks/oom", "/tasks/exit", "/tasks/delete"]);
    drop(events);
    let run = containerd.ctr(&["run", "--rm", "--runtime", RUNTIME, IMAGE, "mem-free", "sh", "-c", hog]);
    assert_eq!(run.status.code(), Some(0), "{}", text(&run.stderr));

    // An exec in a running task, with its own output and exit code; a kill
    // ends the task with the signal's status.
    let mut long = containerd.spawn_ctr(&[
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        IMAGE,
        "long",
        "sh",
        "-c",
        "echo ready; exec sleep 600",
    ]);
    let mut first_line = String::new();
    let mut long_out = BufReader::new(long.stdout.take().expect("stdout"));
    long_out.read_line(&mut first_line).expect("read the task's first line");
    assert_eq!(first_line, "ready\n", "log: {}", containerd.log());
    let exec = containerd.ctr(&["task", "exec", "--exec-id", "e1", "long", "sh", "-c", "echo from-exec; exit 4"]);
    assert_eq!(text(&exec.stdout), "from-exec\n", "{}", text(&exec.stderr));
    assert_eq!(exec.status.code(), Some(4), "{}", text(&exec.stderr));
    let exec = containerd.ctr(&["task", "exec", "--exec-id", "e2", "long", "cat", "/nonexistent"]);
    assert_eq!(exec.status.code(), Some(1), "{}", text(&exec.stderr));
    assert!(text(&exec.stderr).contains("/nonexistent"), "{}", text(&exec.stderr));
    // Pids: host pids of the sandbox's processes, the command among them.
    let ps = containerd.ctr(&["task", "ps", "long"]);
    assert!(ps.status.success(), "{}", text(&ps.stderr));
    let pids: Vec<u32> =
        text(&ps.stdout).lines().skip(1).filter_map(|l| l.split_whitespace().next()?.parse().ok()).collect();
    let sleeping =
        pids.iter().any(|pid| std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c == b"sleep\x00600\x00"));
    assert!(sleeping, "ctr task ps lists the command: {}", text(&ps.stdout));
    // Metrics: the sandbox's cgroup figures in containerd's format.
    let metrics = containerd.ctr(&["task", "metrics", "long"]);
    assert!(metrics.status.success(), "{}", text(&metrics.stderr));
    let figure = |name: &str| -> u64 {
        let out = text(&metrics.stdout);
        let line = out.lines().find(|l| l.trim_start().starts_with(name));
        line.and_then(|l| l.split_whitespace().last()?.parse().ok()).unwrap_or_else(|| panic!("{name} in {out}"))
    };
    assert!(figure("memory.usage_in_bytes") > 0);
    assert!(figure("pids.current") >= 2, "the agent and the command");

    // Pause and resume: the task's processes are frozen by the kernel, ctr
    // and alcove say so, and events mark both changes.
    let sleep_pid = *pids
        .iter()
        .find(|pid| std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c == b"sleep\x00600\x00"))
        .expect("the command's pid");
    let mut events = EventStream::subscribe(&containerd);
    let pause = containerd.ctr(&["task", "pause", "long"]);
    assert!(pause.status.success(), "{}", text(&pause.stderr));
    assert_eq!(task_status(&containerd, "long"), "PAUSED");
    assert_eq!(task_state(sleep_pid), 'D', "the paused task's command is frozen (the kernel shows it as D)");
    assert_eq!(freezer_state(sleep_pid), "FROZEN");
    assert_eq!(sandbox_status(&containerd, "long"), "Paused");
    let again = containerd.ctr(&["task", "pause", "long"]);
    assert!(!again.status.success(), "pausing a paused task is refused");
    assert!(text(&again.stderr).contains("already paused"), "{}", text(&again.stderr));
    let resume = containerd.ctr(&["task", "resume", "long"]);
    assert!(resume.status.success(), "{}", text(&resume.stderr));
    assert_eq!(task_status(&containerd, "long"), "RUNNING");
    // Thawed tasks are woken, not run on the spot: bounded wait for the
    // command to be an ordinary sleeper again.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while task_state(sleep_pid) != 'S' {
        assert!(std::time::Instant::now() < deadline, "the resumed command stays {}", task_state(sleep_pid));
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert_eq!(freezer_state(sleep_pid), "THAWED");
    assert_eq!(sandbox_status(&containerd, "long"), "Running");
    assert_eq!(events.topics_until("\"long\"", "/tasks/resumed"), ["/tasks/paused", "/tasks/resumed"]);
    drop(events);
    let exec = containerd.ctr(&["task", "exec", "--exec-id", "e3", "long", "echo", "after-resume"]);
    assert_eq!(text(&exec.stdout), "after-resume\n", "{}", text(&exec.stderr));

    let kill = containerd.ctr(&["task", "kill", "long"]);
    assert!(kill.status.success(), "{}", text(&kill.stderr));
    let ended = long.wait().expect("the task's ctr ends");
    assert_eq!(ended.code(), Some(128 + libc::SIGTERM), "log: {}", containerd.log());

    // A paused task ends by SIGKILL (thawed to die, as runc does).
    let mut frozen = containerd.spawn_ctr(&[
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        IMAGE,
        "frozen",
        "sh",
        "-c",
        "echo ready; exec sleep 600",
    ]);
    let mut line = String::new();
    BufReader::new(frozen.stdout.take().expect("stdout")).read_line(&mut line).expect("read the first line");
    assert_eq!(line, "ready\n", "log: {}", containerd.log());
    let pause = containerd.ctr(&["task", "pause", "frozen"]);
    assert!(pause.status.success(), "{}", text(&pause.stderr));
    assert_eq!(task_status(&containerd, "frozen"), "PAUSED");
    let kill = containerd.ctr(&["task", "kill", "--signal", "SIGKILL", "frozen"]);
    assert!(kill.status.success(), "{}", text(&kill.stderr));
    let ended = frozen.wait().expect("the paused task's ctr ends");
    assert_eq!(ended.code(), Some(128 + libc::SIGKILL), "log: {}", containerd.log());

    // CloseIO (what the CRI sends when an attached stdin ends; ctr has no
    // command for it): the command reads EOF although ctr keeps the stdin
    // FIFO open.
    let mut reader = std::process::Command::new("ctr")
        .arg("--address")
        .arg(&containerd.socket)
        .args(["run", "--rm", "--runtime", RUNTIME, IMAGE, "reader", "sh", "-c", "cat; echo stdin-closed"])
        .current_dir("/")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("ctr run reader");
    let mut reader_in = reader.stdin.take().expect("stdin");
    reader_in.write_all(b"before-close\n").expect("write stdin");
    let mut reader_out = BufReader::new(reader.stdout.take().expect("stdout"));
    let mut line = String::new();
    reader_out.read_line(&mut line).expect("the command echoes its stdin");
    assert_eq!(line, "before-close\n", "log: {}", containerd.log());
    close_stdin(&containerd, "reader");
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut reader_out, &mut rest).expect("the rest of the output");
    assert_eq!(rest, "stdin-closed\n", "cat saw EOF after CloseIO");
    assert_eq!(reader.wait().expect("ctr ends").code(), Some(0), "log: {}", containerd.log());
    drop(reader_in);

    // 16 tasks at once, each with its own sandbox and output.
    let runs: Vec<_> = (0..16)
        .map(|i| {
            let id = format!("many-{i}");
            let word = format!("task-{i}");
            containerd.spawn_ctr(&["run", "--rm", "--runtime", RUNTIME, IMAGE, &id, "echo", &word])
        })
        .collect();
    for (i, run) in runs.into_iter().enumerate() {
        let out = run.wait_with_output().expect("ctr ends");
        assert_eq!(text(&out.stdout), format!("task-{i}\n"), "task {i}; log: {}", containerd.log());
        assert_eq!(out.status.code(), Some(0), "task {i}");
    }

    // A bundle alcove cannot honour: one clear line from containerd, nothing kept.
    let run = containerd.ctr(&["run", "--rm", "--privileged", "--runtime", RUNTIME, IMAGE, "privileged", "true"]);
    assert_ne!(run.status.code(), Some(0));
    let stderr = text(&run.stderr);
    assert!(stderr.contains("process.capabilities is not supported by alcove"), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    let _ = containerd.ctr(&["container", "rm", "privileged"]);
    let run = containerd.ctr(&[
        "run",
        "--rm",
        "--annotation",
        "io.alcove.network=everything",
        "--runtime",
        RUNTIME,
        IMAGE,
        "bad-net",
        "true",
    ]);
    assert_ne!(run.status.code(), Some(0));
    let stderr = text(&run.stderr);
    assert!(stderr.contains("annotation io.alcove.network: unknown network profile \"everything\""), "{stderr}");
    let _ = containerd.ctr(&["container", "rm", "bad-net"]);

    // Nothing left: no container, no sandbox record, no shim, no mount, no socket.
    let containers = containerd.ctr(&["container", "ls", "-q"]);
    assert_eq!(text(&containers.stdout), "", "containers left");
    let ps = containerd.alcove(&["ps", "--all", "--json"]);
    let list: serde_json::Value = serde_json::from_slice(&ps.stdout).expect("ps --json");
    assert_eq!(list, serde_json::json!([]), "sandboxes left");
    assert_eq!(Containerd::shim_processes(), Vec::<u32>::new(), "shim processes left");
    assert_eq!(Containerd::mounts_under(dir.path()), Vec::<String>::new(), "mounts left");
    assert_eq!(shim_sockets(), sockets_before, "shim sockets left");
}
