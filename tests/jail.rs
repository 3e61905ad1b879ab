//! Real sandboxes end to end: the standalone sandbox process on the jail
//! backend, the relay, the static agent as PID 1, the default busybox rootfs,
//! a real SQLite file, driven through alcove-client. Needs root (CI is root):
//! these tests fail, not skip, without it.

use alcove::store::{RunStatus, SandboxStatus, Store, TerminationReason};
use alcove_client::protocol::{FsErrorKind, SpawnErrorKind, TtySize};
use alcove_client::{Client, ClientError, ExecEvent, ExecOptions};
#[path = "common/process.rs"]
mod process;

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(20);

fn rootfs() -> PathBuf {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "the jail end-to-end tests need root");
    process::default_rootfs()
}

struct Sandbox {
    dir: tempfile::TempDir,
    name: String,
    child: Child,
}

fn config(dir: &Path, name: &str, extra: serde_json::Value) -> serde_json::Value {
    let mut cfg = serde_json::json!({
        "name": name,
        "home": dir.join("home"),
        "backend": "jail",
        "socket_path": dir.join("run/a.sock"),
        "guest": { "rootfs": rootfs(), "memory_mib": 256 },
        "policy": { "drain_timeout": 5000, "shutdown_grace": 500, "metrics_interval": 200 }
    });
    merge(&mut cfg, extra);
    cfg
}

fn merge(base: &mut serde_json::Value, extra: serde_json::Value) {
    match (base, extra) {
        (serde_json::Value::Object(b), serde_json::Value::Object(e)) => {
            for (k, v) in e {
                match b.get_mut(&k) {
                    Some(slot) if slot.is_object() && v.is_object() => merge(slot, v),
                    _ => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (b, e) => *b = e,
    }
}

fn spawn_process(dir: &Path, cfg: &serde_json::Value) -> Child {
    process::spawn_sandbox(dir, cfg)
}

impl Sandbox {
    fn start(name: &str, extra: serde_json::Value) -> Sandbox {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = config(dir.path(), name, extra);
        let child = spawn_process(dir.path(), &cfg);
        Sandbox { dir, name: name.to_string(), child }
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("run/a.sock")
    }

    fn store(&self) -> Store {
        Store::open(&self.dir.path().join("home/alcove.db")).expect("db")
    }

    fn upper(&self) -> PathBuf {
        self.dir.path().join("home/sandboxes").join(&self.name).join("upper")
    }

    async fn client(&self) -> Client {
        let deadline = Instant::now() + WAIT;
        loop {
            match Client::connect_path(&self.socket()).await {
                Ok(c) => return c,
                Err(e) => {
                    assert!(Instant::now() < deadline, "never connected: {e}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }

    fn wait_exit(&mut self) -> i32 {
        process::wait_exit(&mut self.child, WAIT)
    }

    /// Stops gracefully through the protocol and checks the records.
    async fn stop(mut self) -> Self {
        let client = self.client().await;
        client.shutdown(500).await.expect("shutdown accepted");
        assert_eq!(self.wait_exit(), 0);
        let run = self.store().latest_run(&self.name).expect("query").expect("run");
        assert_eq!(run.status, RunStatus::Terminated);
        assert_eq!(run.reason, Some(TerminationReason::ShutdownRequested));
        assert_eq!(self.store().sandbox(&self.name).expect("query").expect("row").status, SandboxStatus::Stopped);
        assert!(!self.socket().exists());
        self
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn sh(script: &str) -> ExecOptions {
    ExecOptions::new(["/bin/sh", "-c", script])
}

async fn out(client: &Client, script: &str) -> (String, String, Option<i32>) {
    let o = client.exec_output(sh(script)).await.expect("exec");
    (String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned(), o.status.code)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_streams_codes_stdin_env_cwd_user() {
    let sb = Sandbox::start("e2e-basic", serde_json::json!({ "guest": { "env": [["GREETING", "hello"]] } }));
    let c = sb.client().await;

    let (stdout, stderr, code) = out(&c, "echo to-out; echo to-err >&2; exit 3").await;
    assert_eq!((stdout.as_str(), stderr.as_str(), code), ("to-out\n", "to-err\n", Some(3)));

    // stdin streamed to EOF.
    let mut opts = ExecOptions::new(["cat"]);
    opts.stdin = true;
    let o = c.exec_output_with_input(opts, b"line one\nline two\n").await.expect("cat");
    assert_eq!(o.stdout, b"line one\nline two\n");
    assert_eq!(o.status.code, Some(0));

    // env (sandbox default + request), cwd, user.
    let mut opts = sh("echo $GREETING $EXTRA; pwd; id -u; id -g");
    opts.env = vec![("EXTRA".into(), "world".into())];
    opts.cwd = Some("/tmp".into());
    opts.user = Some("nobody".into());
    let o = c.exec_output(opts).await.expect("exec");
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "hello world");
    assert_eq!(lines[1], "/tmp");
    assert_eq!(lines[2], "65534");

    // Each spawn-failure kind.
    let fail = |argv: Vec<&str>, cwd: Option<&str>, user: Option<&str>| {
        let mut o = ExecOptions::new(argv);
        o.cwd = cwd.map(String::from);
        o.user = user.map(String::from);
        o
    };
    out(&c, "printf 'garbage' > /tmp/notexec; chmod 755 /tmp/notexec; printf '#!/bin/sh\\necho hi' > /tmp/noperm; chmod 600 /tmp/noperm").await;
    let cases = [
        (fail(vec!["/no/such/program"], None, None), SpawnErrorKind::NotFound),
        (fail(vec!["definitely-not-a-command"], None, None), SpawnErrorKind::NotFound),
        (fail(vec!["/tmp/noperm"], None, Some("nobody")), SpawnErrorKind::PermissionDenied),
        (fail(vec!["/tmp/notexec"], None, None), SpawnErrorKind::NotExecutable),
        (fail(vec!["/bin/true"], Some("/no/such/dir"), None), SpawnErrorKind::BadCwd),
        (fail(vec!["/bin/true"], None, Some("no-such-user")), SpawnErrorKind::UserSetupFailed),
    ];
    for (opts, kind) in cases {
        let argv = opts.argv.clone();
        match c.exec_output(opts).await {
            Err(ClientError::Spawn(e)) => assert_eq!(e.kind, kind, "{argv:?}: {}", e.message),
            other => panic!("{argv:?}: expected {kind:?}, got {other:?}"),
        }
    }

    // Signals reach the process.
    let session = c.exec(ExecOptions::new(["sleep", "600"])).await.expect("sleep starts");
    session.signal(libc::SIGTERM).expect("signal sent");
    let status = session.wait().await.expect("ends");
    assert_eq!(status.signal, Some(libc::SIGTERM));
    sb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pty_session_is_a_terminal_and_sees_resizes() {
    let sb = Sandbox::start("e2e-pty", serde_json::json!({}));
    let c = sb.client().await;
    let mut opts = sh("test -t 0 && echo is-a-tty; stty size; read line; stty size");
    opts.tty = Some(TtySize { rows: 24, cols: 80 });
    opts.stdin = true;
    let mut s = c.exec(opts).await.expect("pty exec");
    let mut seen = String::new();
    let mut resized = false;
    loop {
        match s.next_event().await.expect("event").expect("no error") {
            ExecEvent::Stdout(d) => {
                seen.push_str(&String::from_utf8_lossy(&d));
                if !resized && seen.contains("24 80") {
                    resized = true;
                    s.resize(40, 132).expect("resize sent");
                    s.write_stdin(b"go\n").await.expect("stdin");
                }
            }
            ExecEvent::Exited(st) => {
                assert_eq!(st.code, Some(0), "{seen}");
                break;
            }
            _ => {}
        }
    }
    assert!(seen.contains("is-a-tty"), "{seen}");
    assert!(seen.contains("40 132"), "resize not seen: {seen}");
    sb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_round_trip_and_twenty_mib_is_byte_identical() {
    let sb = Sandbox::start("e2e-files", serde_json::json!({}));
    let c = sb.client().await;
    let data: Vec<u8> = (0..20 * 1024 * 1024u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    assert_eq!(c.write_file("/root/big.bin", 0o600, &data).await.expect("write"), data.len() as u64);
    let back = c.read_file("/root/big.bin").await.expect("read");
    assert!(back == data, "20 MiB file came back different");
    let st = c.stat("/root/big.bin").await.expect("stat");
    assert_eq!((st.size, st.mode & 0o777), (data.len() as u64, 0o600));
    // The guest sees the same bytes.
    let (sum_in, _, _) = out(&c, "md5sum /root/big.bin | cut -d' ' -f1").await;
    assert_eq!(sum_in.trim().len(), 32);
    // The same bytes as a command's stdout and stderr: the agent splices
    // large output from the pipe into the channel, the relay and client
    // hand the payload over undecoded.
    let o = c.exec_output(sh("cat /root/big.bin; cat /root/big.bin >&2")).await.expect("cat runs");
    assert_eq!(o.status.code, Some(0));
    assert!(o.stdout == data, "20 MiB of stdout came back different ({} bytes)", o.stdout.len());
    assert!(o.stderr == data, "20 MiB of stderr came back different ({} bytes)", o.stderr.len());
    let guest_log = sb.dir.path().join("home/sandboxes/e2e-files/logs/guest.log");
    let log = std::fs::read_to_string(&guest_log).expect("guest log");
    let spliced = log
        .lines()
        .filter_map(|l| l.split("output frames, ").nth(1)?.split(' ').next()?.parse::<u64>().ok())
        .max()
        .unwrap_or(0);
    assert!(spliced > 0, "no output frame was spliced:\n{log}");
    c.mkdir("/root/d/e", true).await.expect("mkdir");
    c.copy("/root/big.bin", "/root/d/e/copy.bin").await.expect("copy");
    c.rename("/root/d/e/copy.bin", "/root/d/moved.bin").await.expect("rename");
    let names: Vec<String> = c.list("/root/d").await.expect("list").into_iter().map(|e| e.name).collect();
    assert_eq!(names, vec!["e".to_string(), "moved.bin".to_string()]);
    c.remove("/root/d", true).await.expect("remove");
    match c.stat("/root/d").await {
        Err(ClientError::Fs(e)) => assert_eq!(e.kind, FsErrorKind::NotFound),
        other => panic!("expected NotFound, got {other:?}"),
    }
    sb.stop().await;
}

/// A sink on a blocking pipe, and a thread reading the pipe to its end.
fn sink_and_reader() -> (alcove_client::OutputSink, std::thread::JoinHandle<Vec<u8>>) {
    let (mut r, w) = std::io::pipe().expect("pipe");
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut r, &mut out).expect("reads the pipe");
        out
    });
    (alcove_client::OutputSink::for_pipe(w.into()).expect("a blocking pipe is a sink"), reader)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stdout_sink_reads_the_commands_pipe_itself() {
    let sb = Sandbox::start("e2e-pipe", serde_json::json!({}));
    let c = sb.client().await;
    let data: Vec<u8> = (0..20 * 1024 * 1024u32).map(|i| (i.wrapping_mul(2654435761) >> 11) as u8).collect();
    c.write_file("/root/big.bin", 0o600, &data).await.expect("write");
    // The agent hands the stdout pipe over; stderr still comes as frames.
    let (sink, reader) = sink_and_reader();
    let mut o = sh("cat /root/big.bin; echo done >&2; exit 4");
    o.stdout_sink = Some(sink);
    let got = c.exec_output(o).await.expect("cat runs");
    assert_eq!(got.status.code, Some(4));
    assert!(got.stdout.is_empty());
    assert_eq!(got.stderr, b"done\n");
    let piped = reader.join().expect("reader");
    assert!(piped == data, "20 MiB through the handed-over pipe came back different ({} bytes)", piped.len());
    let log = std::fs::read_to_string(sb.dir.path().join("home/sandboxes/e2e-pipe/logs/guest.log")).expect("log");
    assert!(log.contains("stdout pipe handed to the client"), "the agent relayed stdout instead:\n{log}");
    // A background process keeping the pipe open does not hold the session
    // (nor the client) beyond the drain bounds.
    let (sink, reader) = sink_and_reader();
    let mut o = sh("sleep 30 & echo hi");
    o.stdout_sink = Some(sink);
    let started = Instant::now();
    let got = c.exec_output(o).await.expect("sh runs");
    assert_eq!(got.status.code, Some(0));
    assert!(started.elapsed() < Duration::from_secs(10), "the session waited for the background sleep");
    drop(c);
    assert_eq!(reader.join().expect("reader"), b"hi\n");
    sb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolation_holds() {
    let host_dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(host_dir.path().join("shared.txt"), b"from host").expect("written");
    let secret = tempfile::tempdir().expect("tempdir");
    std::fs::write(secret.path().join("secret.txt"), b"host secret").expect("written");
    let sb = Sandbox::start(
        "e2e-iso",
        serde_json::json!({ "guest": { "memory_mib": 64, "mounts": [
            { "host": host_dir.path(), "guest": "/mnt/ro", "readonly": true }
        ] } }),
    );
    let c = sb.client().await;
    let rootfs_before = listing(&rootfs());

    // Only the sandbox's processes: the agent is PID 1, and few exist.
    let (ps, _, _) = out(&c, "ls /proc | grep -E '^[0-9]+$' | wc -l; cat /proc/1/cmdline | tr '\\0' ' '").await;
    let mut lines = ps.lines();
    let count: usize = lines.next().expect("count").trim().parse().expect("number");
    assert!(count < 10, "{count} processes visible in the sandbox");
    assert!(lines.next().expect("cmdline").contains("agent"), "PID 1 is not the agent: {ps}");
    assert_eq!(out(&c, "hostname").await.0.trim(), "e2e-iso");

    // A write inside lands in the upper layer; the base rootfs is unchanged.
    out(&c, "echo inside > /etc/written-inside; rm /bin/vi").await;
    assert!(!rootfs().join("etc/written-inside").exists());
    assert!(rootfs().join("bin/vi").symlink_metadata().is_ok(), "a delete inside reached the base rootfs");
    assert_eq!(listing(&rootfs()), rootfs_before);
    assert_eq!(std::fs::read(sb.upper().join("etc/written-inside")).expect("in upper"), b"inside\n");

    // Host paths outside mounts are unreachable; the read-only mount is read-only.
    let secret_path = secret.path().join("secret.txt");
    let (o, _, code) = out(&c, &format!("cat {} 2>&1", secret_path.display())).await;
    assert_ne!(code, Some(0), "host file readable inside: {o}");
    assert_eq!(out(&c, "cat /mnt/ro/shared.txt").await.0, "from host");
    let (_, _, code) = out(&c, "echo x > /mnt/ro/new 2>/dev/null").await;
    assert_ne!(code, Some(0), "wrote through a read-only mount");
    assert!(!host_dir.path().join("new").exists());

    // Past the memory limit: the command is OOM-killed and reported, the sandbox survives.
    let o = c.exec_output(sh("dd if=/dev/zero of=/dev/null bs=200M count=1")).await.expect("dd runs");
    assert!(o.status.oom_killed || o.status.signal == Some(libc::SIGKILL), "not OOM-killed: {:?}", o.status);
    assert!(o.status.oom_killed, "the OOM kill was not reported: {:?}", o.status);
    assert_eq!(out(&c, "echo alive").await.0, "alive\n");
    sb.stop().await;
}

fn listing(root: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(root.join("etc"))
        .expect("etc")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_two_concurrent_execs_return_their_own_output() {
    let sb = Sandbox::start("e2e-conc", serde_json::json!({}));
    let c = sb.client().await;
    let runs = (0..32).map(|i| {
        let c = c.clone();
        async move {
            let o =
                c.exec_output(sh(&format!("i={i}; seq 1 $((i * 100)) | wc -l; echo done-$i >&2"))).await.expect("exec");
            (i, o)
        }
    });
    for (i, o) in futures_join_all(runs).await {
        assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), (i * 100).to_string());
        assert_eq!(String::from_utf8_lossy(&o.stderr), format!("done-{i}\n"));
    }
    sb.stop().await;
}

async fn futures_join_all<F>(futs: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futs.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.expect("task"));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_timeout_with_the_real_agent_ignores_a_long_quiet_command() {
    let sb = Sandbox::start("e2e-idle", serde_json::json!({ "policy": { "idle_timeout": 1000 } }));
    let c = sb.client().await;
    // A 2.5 s sleep with no input keeps the sandbox alive past the 1 s idle timeout.
    let o = c.exec_output(ExecOptions::new(["sleep", "2.5"])).await.expect("sleep runs to its end");
    assert_eq!(o.status.code, Some(0));
    drop(c);
    let mut sb = sb;
    assert_eq!(sb.wait_exit(), 0);
    let run = sb.store().latest_run("e2e-idle").expect("query").expect("run");
    assert_eq!(run.reason, Some(TerminationReason::IdleTimeout));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_written_just_before_a_graceful_stop_is_kept() {
    let sb = Sandbox::start("e2e-keep", serde_json::json!({}));
    let c = sb.client().await;
    // Written with plain shell redirection, not synced by the command itself.
    out(&c, "echo precious > /root/keep.txt").await;
    let sb = sb.stop().await;
    assert_eq!(std::fs::read(sb.upper().join("root/keep.txt")).expect("in the upper layer"), b"precious\n");
    // Nothing is left behind: no mount of the sandbox dir, no process.
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert!(!mounts.contains(&sb.dir.path().display().to_string()), "a mount outlived the sandbox");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_finalised_or_fails_with_its_kind() {
    // A rootfs that does not exist, or is a file: InternalError, never Running.
    let missing = tempfile::tempdir().expect("tempdir");
    let file = missing.path().join("a-file");
    std::fs::write(&file, b"x").expect("written");
    for (name, rootfs, needle) in
        [("bad-rootfs1", missing.path().join("nope"), "rootfs"), ("bad-rootfs2", file.clone(), "not a directory")]
    {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = config(dir.path(), name, serde_json::json!({ "guest": { "rootfs": rootfs } }));
        let mut child = spawn_process(dir.path(), &cfg);
        assert_eq!(child.wait().expect("exits").code(), Some(1));
        let store = Store::open(&dir.path().join("home/alcove.db")).expect("db");
        let run = store.latest_run(name).expect("query").expect("run row");
        assert_eq!(run.reason, Some(TerminationReason::InternalError));
        assert!(run.detail.clone().unwrap_or_default().contains(needle), "{:?}", run.detail);
    }
    // A mount whose host path is missing.
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(
        dir.path(),
        "bad-mount",
        serde_json::json!({ "guest": { "mounts": [{ "host": "/no/such/host/path", "guest": "/mnt", "readonly": false }] } }),
    );
    let mut child = spawn_process(dir.path(), &cfg);
    assert_eq!(child.wait().expect("exits").code(), Some(1));
    let store = Store::open(&dir.path().join("home/alcove.db")).expect("db");
    let run = store.latest_run("bad-mount").expect("query").expect("run row");
    assert_eq!(run.reason, Some(TerminationReason::InternalError));
    assert!(run.detail.unwrap_or_default().contains("/no/such/host/path"));

    // A rootfs without /bin/sh: the shell exec fails with not_found, quickly.
    let bare = tempfile::tempdir().expect("tempdir");
    for d in ["etc", "tmp", "proc", "sys", "dev"] {
        std::fs::create_dir_all(bare.path().join(d)).expect("dir");
    }
    let sb = Sandbox::start("bare", serde_json::json!({ "guest": { "rootfs": bare.path() } }));
    let c = sb.client().await;
    match c.exec_output(sh("echo hi")).await {
        Err(ClientError::Spawn(e)) => assert_eq!(e.kind, SpawnErrorKind::NotFound, "{}", e.message),
        other => panic!("expected not_found, got {other:?}"),
    }
    sb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oom_kill_in_one_sandbox_is_not_blamed_on_another() {
    let quiet = Sandbox::start("e2e-quiet", serde_json::json!({}));
    let hungry = Sandbox::start("e2e-hungry", serde_json::json!({ "guest": { "memory_mib": 64 } }));
    let (qc, hc) = (quiet.client().await, hungry.client().await);
    // The quiet sandbox's command is SIGKILLed by itself while, in between,
    // the other sandbox has an OOM kill: host-wide counters would blame it.
    let victim = tokio::spawn(async move { qc.exec_output(sh("sleep 1.5; kill -9 $$")).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let o = hc.exec_output(sh("dd if=/dev/zero of=/dev/null bs=200M count=1")).await.expect("dd runs");
    assert!(o.status.oom_killed, "the real OOM kill was not reported: {:?}", o.status);
    let v = victim.await.expect("task").expect("exec");
    assert_eq!(v.status.signal, Some(libc::SIGKILL));
    assert!(!v.status.oom_killed, "an OOM kill in another sandbox was blamed on this one");
    hungry.stop().await;
    quiet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_jail_options_of_the_config_are_honoured() {
    // Root gets a private uid range by default; the config asks for none.
    let sb = Sandbox::start("e2e-opts", serde_json::json!({ "jail": { "user_namespace": "never" } }));
    let c = sb.client().await;
    let record = alcove_jail::recorded_isolation(&sb.dir.path().join("home/sandboxes/e2e-opts"));
    assert!(record.as_deref().is_some_and(|r| r.starts_with("no user namespace")), "{record:?}");
    // Guest root is host root: no uid map other than the identity.
    let (map, _, _) = out(&c, "cat /proc/self/uid_map").await;
    assert_eq!(map.split_whitespace().collect::<Vec<_>>(), ["0", "0", "4294967295"], "{map}");
    drop(c);
    sb.stop().await;
}
