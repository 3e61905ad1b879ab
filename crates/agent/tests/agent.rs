//! End-to-end tests of the real agent binary over a socketpair.
//!
//! Over 600 lines on purpose: the agent's whole protocol surface against one
//! real binary, one integration test file for the area.

mod common;

use alcove_protocol::agent_config::AgentConfig;
use alcove_protocol::*;
use common::*;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

#[test]
fn ready_carries_the_protocol_version_and_heartbeats_follow() {
    let mut a = Agent::start();
    assert_eq!(a.ready.protocol_version, PROTOCOL_VERSION);
    assert_eq!(a.ready.agent_version, env!("CARGO_PKG_VERSION"));
    let b = &a.ready.boot;
    assert!(b.agent_start_us <= b.mounts_done_us && b.mounts_done_us <= b.ready_us, "{b:?}");
    // Measured from this process's start, which was moments ago.
    assert!(b.ready_us < 10_000_000, "{b:?}");
    let start = Instant::now();
    let mut seqs = Vec::new();
    while seqs.len() < 2 {
        let (_, m) = a.recv_msg(CONTROL_ID);
        match m {
            Message::Heartbeat { seq, active_sessions } => {
                assert_eq!(active_sessions, 0);
                seqs.push(seq);
            }
            other => panic!("unexpected control message {other:?}"),
        }
    }
    assert_eq!(seqs, vec![1, 2]);
    let took = start.elapsed();
    assert!(took > Duration::from_millis(1500) && took < Duration::from_millis(3000), "{took:?}");
}

#[test]
fn the_heartbeat_period_comes_from_the_config() {
    // The host asks for beats every 200 ms: three arrive far sooner than
    // the default period (1 s) would bring them, none closer than the floor.
    let mut a = Agent::start_with(&AgentConfig {
        hostname: "test-box".into(),
        heartbeat_ms: Some(200),
        ..AgentConfig::default()
    });
    let start = Instant::now();
    let mut beats = 0;
    while beats < 3 {
        if let (_, Message::Heartbeat { .. }) = a.recv_msg(CONTROL_ID) {
            beats += 1;
        }
    }
    let took = start.elapsed();
    assert!(took >= Duration::from_millis(500) && took < Duration::from_millis(1900), "{took:?}");
}

#[test]
fn exec_keeps_stdout_and_stderr_apart_and_reports_the_exit_code() {
    let mut a = Agent::start();
    let r = a.sh("echo out; echo err >&2; echo more; exit 3");
    assert!(r.pid.is_some(), "ExecStarted comes first");
    assert_eq!(r.out(), "out\nmore\n");
    assert_eq!(r.err(), "err\n");
    assert_eq!(r.status, Some(ExitStatus { code: Some(3), signal: None, oom_killed: false }));
    let r = a.exec(ExecRequest { argv: argv(&["echo", "hello", "world"]), ..ExecRequest::default() });
    assert_eq!((r.out().as_str(), r.code()), ("hello world\n", Some(0)));
}

#[test]
fn stdin_streams_to_eof_with_credit() {
    let mut a = Agent::start();
    let id = a.start_exec(ExecRequest { argv: argv(&["cat"]), stdin: true, ..ExecRequest::default() });
    let mut sent = Vec::new();
    let mut wire = 0u64;
    for i in 0..50u32 {
        let chunk: Vec<u8> = (0..10_000u32).map(|j| ((i * 31 + j) % 251) as u8).collect();
        wire += a.send(id, Flags::NONE, &Message::ExecStdin { data: chunk.clone() }) as u64;
        sent.extend_from_slice(&chunk);
    }
    a.send(id, Flags::NONE, &Message::ExecStdinEof);
    let r = a.finish_exec(id);
    assert_eq!(r.code(), Some(0));
    assert_eq!(r.stdout.len(), sent.len());
    assert!(r.stdout == sent, "cat echoes stdin byte for byte");
    assert_eq!(r.stdin_credit, wire, "every stdin frame is credited once written");
}

#[test]
fn stdin_is_dev_null_unless_requested() {
    let mut a = Agent::start();
    let r = a.exec(ExecRequest { argv: argv(&["cat"]), ..ExecRequest::default() });
    assert_eq!((r.out().as_str(), r.code()), ("", Some(0)));
}

#[test]
fn pty_sessions_are_terminals_and_resize() {
    let mut a = Agent::start();
    let id = a.start_exec(ExecRequest {
        argv: argv(&["/bin/sh", "-c", "test -t 0 && echo IS-TTY; tty; stty size; read x; stty size; echo TERM=$TERM"]),
        tty: Some(TtySize { rows: 24, cols: 80 }),
        stdin: true,
        ..ExecRequest::default()
    });
    let mut out = String::new();
    let mut resized = false;
    let status = loop {
        let (f, m) = a.recv_msg(id);
        match m {
            Message::ExecStarted { .. } => {}
            Message::ExecStdout { data } => {
                out.push_str(&String::from_utf8_lossy(&data));
                a.send(id, Flags::NONE, &Message::Credit { bytes: f.wire_len() as u32 });
                if !resized && out.contains("24 80") {
                    resized = true;
                    a.send(id, Flags::NONE, &Message::ExecResize(TtySize { rows: 50, cols: 132 }));
                    a.send(id, Flags::NONE, &Message::ExecStdin { data: b"go\n".to_vec() });
                }
            }
            Message::ExecStderr { .. } => panic!("a PTY session has no separate stderr"),
            Message::Credit { .. } => {}
            Message::ExecExited(st) => break st,
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(status.code, Some(0), "{out}");
    assert!(out.contains("IS-TTY"), "{out}");
    assert!(out.contains("/dev/pts/"), "{out}");
    assert!(out.contains("50 132"), "resize reaches the terminal: {out}");
    assert!(out.contains("TERM=xterm-256color"), "{out}");
}

#[test]
fn signals_reach_the_process_group() {
    let mut a = Agent::start();
    let id = a.start_exec(ExecRequest { argv: argv(&["sleep", "30"]), ..ExecRequest::default() });
    let (_, m) = a.recv_msg(id);
    assert!(matches!(m, Message::ExecStarted { .. }));
    let t = Instant::now();
    a.send(id, Flags::NONE, &Message::ExecSignal { signal: libc::SIGTERM });
    let r = a.finish_exec(id);
    assert_eq!(r.status, Some(ExitStatus { code: None, signal: Some(libc::SIGTERM), oom_killed: false }));
    assert!(t.elapsed() < Duration::from_secs(5));
    // A shell's children are in its group too.
    let id = a.start_exec(ExecRequest {
        argv: argv(&["/bin/sh", "-c", "sleep 30 & echo started; wait; echo survived"]),
        ..ExecRequest::default()
    });
    assert_eq!(a.wait_stdout(id, "started\n"), "started\n");
    a.send(id, Flags::NONE, &Message::ExecSignal { signal: libc::SIGKILL });
    let r = a.finish_exec(id);
    assert_eq!(r.status.and_then(|s| s.signal), Some(libc::SIGKILL));
    assert_eq!(r.out(), "");
}

#[test]
fn env_cwd_and_defaults_apply_in_order() {
    let cfg = AgentConfig {
        hostname: "envbox".into(),
        env: vec![("FROM_CFG".into(), "cfg".into()), ("BOTH".into(), "cfg".into())],
        workdir: Some("/tmp".into()),
        ..AgentConfig::default()
    };
    let mut a = Agent::start_with(&cfg);
    let r = a.exec(ExecRequest {
        argv: argv(&["/bin/sh", "-c", "echo $FROM_CFG $BOTH $FROM_REQ $PATH $HOSTNAME; pwd"]),
        env: vec![("BOTH".into(), "req".into()), ("FROM_REQ".into(), "r".into())],
        ..ExecRequest::default()
    });
    assert_eq!(r.out(), "cfg req r /usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin envbox\n/tmp\n");
    let r = a.exec(ExecRequest { argv: argv(&["pwd"]), cwd: Some("/usr".into()), ..ExecRequest::default() });
    assert_eq!(r.out(), "/usr\n");
}

#[test]
fn users_are_resolved_from_etc_passwd() {
    let mut a = Agent::start();
    let r = a.exec(ExecRequest {
        argv: argv(&["/bin/sh", "-c", "id -u; id -g; echo $HOME $USER"]),
        user: Some("nobody".into()),
        cwd: Some("/".into()),
        ..ExecRequest::default()
    });
    assert_eq!(r.code(), Some(0), "{r:?}");
    let nobody = std::fs::read_to_string("/etc/passwd").expect("passwd");
    let line = nobody.lines().find(|l| l.starts_with("nobody:")).expect("nobody exists here");
    let f: Vec<&str> = line.split(':').collect();
    assert_eq!(r.out(), format!("{}\n{}\n{} nobody\n", f[2], f[3], f[5]));
    let r = a.exec(ExecRequest { argv: argv(&["id", "-u"]), user: Some("65534:0".into()), ..ExecRequest::default() });
    assert_eq!(r.out(), "65534\n");
    let r =
        a.exec(ExecRequest { argv: argv(&["true"]), user: Some("no-such-user-xyz".into()), ..ExecRequest::default() });
    assert_eq!(r.failure(), SpawnErrorKind::UserSetupFailed);
    assert!(r.failed.as_ref().is_some_and(|e| e.message.contains("no-such-user-xyz")));
}

#[test]
fn spawn_failures_are_classified() {
    let mut a = Agent::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let r = a.exec(ExecRequest { argv: argv(&["definitely-not-a-command-xyz"]), ..ExecRequest::default() });
    assert_eq!(r.failure(), SpawnErrorKind::NotFound);
    let r = a.exec(ExecRequest { argv: argv(&["/no/such/program"]), ..ExecRequest::default() });
    assert_eq!(r.failure(), SpawnErrorKind::NotFound);

    let noexec = dir.path().join("noexec.sh");
    std::fs::write(&noexec, "#!/bin/sh\necho hi\n").expect("write");
    std::fs::set_permissions(&noexec, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let r = a.exec(ExecRequest { argv: vec![noexec.to_string_lossy().into_owned()], ..ExecRequest::default() });
    assert_eq!(r.failure(), SpawnErrorKind::PermissionDenied);

    let garbage = dir.path().join("garbage");
    std::fs::write(&garbage, [0x13u8, 0x37, 0, 1, 2, 3, 0xff, 0xfe]).expect("write");
    std::fs::set_permissions(&garbage, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let r = a.exec(ExecRequest { argv: vec![garbage.to_string_lossy().into_owned()], ..ExecRequest::default() });
    assert_eq!(r.failure(), SpawnErrorKind::NotExecutable);

    let r = a.exec(ExecRequest { argv: argv(&["true"]), cwd: Some("/no/such/dir".into()), ..ExecRequest::default() });
    assert_eq!(r.failure(), SpawnErrorKind::BadCwd);
    assert!(r.failed.as_ref().is_some_and(|e| e.message.contains("/no/such/dir")));

    let r = a.exec(ExecRequest::default());
    assert_eq!(r.failure(), SpawnErrorKind::InvalidRequest);

    // The agent is still healthy.
    assert_eq!(a.sh("echo ok").out(), "ok\n");
}

#[test]
fn rlimits_apply_and_are_never_raised() {
    let mut a = Agent::start();
    let r = a.exec(ExecRequest {
        argv: argv(&["/bin/sh", "-c", "ulimit -n; ulimit -Hn"]),
        rlimits: vec![Rlimit { resource: "nofile".into(), soft: 100, hard: 200 }],
        ..ExecRequest::default()
    });
    assert_eq!(r.out(), "100\n200\n");
    let mut cur = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: valid struct.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut cur) };
    if cur.rlim_max != libc::RLIM_INFINITY {
        let r = a.exec(ExecRequest {
            argv: argv(&["true"]),
            rlimits: vec![Rlimit { resource: "nofile".into(), soft: 10, hard: cur.rlim_max + 1 }],
            ..ExecRequest::default()
        });
        assert_eq!(r.failure(), SpawnErrorKind::ResourceSetupFailed);
    }
    let r = a.exec(ExecRequest {
        argv: argv(&["true"]),
        rlimits: vec![Rlimit { resource: "bogus".into(), soft: 1, hard: 1 }],
        ..ExecRequest::default()
    });
    assert_eq!(r.failure(), SpawnErrorKind::InvalidRequest);
}

fn write_file(a: &mut Agent, path: &str, mode: u32, content: &[u8]) -> Result<FsReply, FsError> {
    let id = a.new_id();
    a.send(id, Flags::SESSION_START, &Message::FsRequest(FsRequest::Write { path: path.into(), mode }));
    let mut in_flight: u64 = 0;
    let mut credited: u64 = 0;
    for chunk in content.chunks(MAX_CHUNK) {
        // Respect the window: wait for credit when it is used up.
        while in_flight + (chunk.len() + 32) as u64 > u64::from(INITIAL_WINDOW) {
            let (f, m) = a.recv_msg(id);
            match m {
                Message::Credit { bytes } => {
                    in_flight -= u64::from(bytes);
                    credited += u64::from(bytes);
                }
                Message::FsResponse(r) => {
                    assert!(f.flags.contains(Flags::TERMINAL));
                    return r;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        in_flight += a.send(id, Flags::NONE, &Message::FsData { data: chunk.to_vec() }) as u64;
    }
    a.send(id, Flags::NONE, &Message::FsEnd);
    loop {
        let (f, m) = a.recv_msg(id);
        match m {
            Message::Credit { bytes } => credited += u64::from(bytes),
            Message::FsResponse(r) => {
                assert!(f.flags.contains(Flags::TERMINAL));
                if r.is_ok() {
                    assert!(credited > 0 || content.is_empty());
                }
                return r;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

fn read_file(a: &mut Agent, path: &str) -> Result<Vec<u8>, FsError> {
    let id = a.new_id();
    a.send(id, Flags::SESSION_START, &Message::FsRequest(FsRequest::Read { path: path.into() }));
    let mut out = Vec::new();
    loop {
        let (f, m) = a.recv_msg(id);
        match m {
            Message::FsData { data } => {
                assert!(data.len() <= MAX_CHUNK);
                out.extend_from_slice(&data);
                a.send(id, Flags::NONE, &Message::Credit { bytes: f.wire_len() as u32 });
            }
            Message::FsResponse(Ok(FsReply::Done { bytes })) => {
                assert!(f.flags.contains(Flags::TERMINAL));
                assert_eq!(bytes, out.len() as u64);
                return Ok(out);
            }
            Message::FsResponse(Err(e)) => return Err(e),
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[test]
fn an_upload_ended_by_the_host_leaves_no_file() {
    let mut a = Agent::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let dest = dir.path().join("upload.bin");
    let id = a.new_id();
    let req = FsRequest::Write { path: dest.display().to_string(), mode: 0o644 };
    a.send(id, Flags::SESSION_START, &Message::FsRequest(req));
    a.send(id, Flags::NONE, &Message::FsData { data: vec![1; 64 * 1024] });
    // Its client is gone: the relay ends the session.
    a.send(id, Flags::NONE, &Message::SessionAborted { reason: "the client disconnected".into() });
    let end = loop {
        let (f, m) = a.recv_msg(id);
        match m {
            Message::Credit { .. } => {}
            Message::FsResponse(r) => {
                assert!(f.flags.contains(Flags::TERMINAL));
                break r;
            }
            other => panic!("unexpected {other:?}"),
        }
    };
    assert!(end.is_err(), "{end:?}");
    assert!(!dest.exists(), "a cut-short upload was completed");
    let left: Vec<_> = std::fs::read_dir(dir.path()).expect("list").collect();
    assert!(left.is_empty(), "temporary files left: {left:?}");
    // The id is free again and the agent serves the next session.
    assert_eq!(write_file(&mut a, &dest.display().to_string(), 0o600, b"whole"), Ok(FsReply::Done { bytes: 5 }));
}

/// Found by fuzzing (`crates/fuzz`, target `agent`; RELIABILITY.md,
/// "Fuzzing"): a file session still open when a shutdown's grace ended got
/// no terminal frame; the agent waited out its final drain for it and
/// exited with the half-written upload's temporary file left behind. Fails
/// on e5d225b (no terminal frame: the channel closes first).
#[test]
fn an_upload_open_at_shutdown_ends_with_an_error_and_leaves_no_file() {
    let mut a = Agent::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let dest = dir.path().join("upload.bin");
    let id = a.new_id();
    let req = FsRequest::Write { path: dest.display().to_string(), mode: 0o644 };
    a.send(id, Flags::SESSION_START, &Message::FsRequest(req));
    a.send(id, Flags::NONE, &Message::FsData { data: vec![1; 4096] });
    a.send(CONTROL_ID, Flags::SHUTDOWN, &Message::Shutdown { grace_ms: 0 });
    let end = loop {
        let (f, m) = a.recv_msg(id);
        match m {
            Message::Credit { .. } => {}
            Message::FsResponse(r) => {
                assert!(f.flags.contains(Flags::TERMINAL));
                break r;
            }
            other => panic!("unexpected {other:?}"),
        }
    };
    assert!(end.is_err(), "{end:?}");
    let st = a.wait_exit(TIMEOUT).expect("agent exits");
    assert_eq!(st.code(), Some(0));
    assert!(!dest.exists(), "a cut-short upload was completed");
    let left: Vec<_> = std::fs::read_dir(dir.path()).expect("list").collect();
    assert!(left.is_empty(), "temporary files left: {left:?}");
}

#[test]
fn file_operations_round_trip_a_20_mib_file() {
    let mut a = Agent::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let base = dir.path().to_string_lossy().into_owned();
    let sub = format!("{base}/x/y");
    assert_eq!(
        a.fs(FsRequest::Mkdir { path: sub.clone(), parents: true, mode: 0o750 }),
        Ok(FsReply::Done { bytes: 0 })
    );
    let content: Vec<u8> = (0..20 * 1024 * 1024u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    let file = format!("{sub}/big.bin");
    assert_eq!(write_file(&mut a, &file, 0o640, &content), Ok(FsReply::Done { bytes: content.len() as u64 }));
    let on_disk = std::fs::read(&file).expect("on disk");
    assert!(on_disk == content, "written file is byte-identical");
    assert_eq!(std::fs::metadata(&file).expect("md").permissions().mode() & 0o777, 0o640);
    let back = read_file(&mut a, &file).expect("read back");
    assert_eq!(back.len(), content.len());
    assert!(back == content, "read back byte-identical");

    match a.fs(FsRequest::Stat { path: file.clone() }) {
        Ok(FsReply::Stat(st)) => {
            assert_eq!((st.kind, st.size, st.mode & 0o777), (FileKind::File, content.len() as u64, 0o640));
        }
        other => panic!("{other:?}"),
    }
    match a.fs(FsRequest::List { path: sub.clone() }) {
        Ok(FsReply::List(entries)) => {
            assert_eq!(entries.iter().map(|e| e.name.as_str()).collect::<Vec<_>>(), vec!["big.bin"])
        }
        other => panic!("{other:?}"),
    }
    let copy = format!("{base}/copy");
    assert_eq!(
        a.fs(FsRequest::Copy { from: format!("{base}/x"), to: copy.clone() }),
        Ok(FsReply::Done { bytes: content.len() as u64 })
    );
    assert_eq!(std::fs::metadata(format!("{copy}/y/big.bin")).expect("copied").len(), content.len() as u64);
    assert_eq!(
        a.fs(FsRequest::Rename { from: copy.clone(), to: format!("{base}/moved") }),
        Ok(FsReply::Done { bytes: 0 })
    );
    let e = a.fs(FsRequest::Remove { path: format!("{base}/moved"), recursive: false }).expect_err("not empty");
    assert_eq!(e.kind, FsErrorKind::DirectoryNotEmpty);
    assert_eq!(
        a.fs(FsRequest::Remove { path: format!("{base}/moved"), recursive: true }),
        Ok(FsReply::Done { bytes: 0 })
    );
    let e = a.fs(FsRequest::Stat { path: format!("{base}/moved") }).expect_err("gone");
    assert_eq!(e.kind, FsErrorKind::NotFound);
    assert!(e.message.contains(&format!("{base}/moved")), "{}", e.message);
    let e = read_file(&mut a, &format!("{base}/nope")).expect_err("missing");
    assert_eq!(e.kind, FsErrorKind::NotFound);
    let e = read_file(&mut a, &base).expect_err("dir");
    assert_eq!(e.kind, FsErrorKind::IsADirectory);
    let e = write_file(&mut a, &format!("{base}/no/such/parent"), 0o644, b"x").expect_err("no parent");
    assert_eq!(e.kind, FsErrorKind::NotFound);
    let e = a.fs(FsRequest::List { path: "relative".into() }).expect_err("relative");
    assert_eq!(e.kind, FsErrorKind::InvalidInput);
}

#[test]
fn output_stops_at_the_window_and_resumes_with_credit() {
    let mut a = Agent::start();
    let total = 5 * 1024 * 1024usize;
    let id = a.start_exec(ExecRequest {
        argv: argv(&["head", "-c", &total.to_string(), "/dev/zero"]),
        ..ExecRequest::default()
    });
    let mut wire = 0usize;
    let mut data = 0usize;
    let mut uncredited = Vec::new();
    // No credit: the agent must stop at INITIAL_WINDOW.
    while let Some(f) = a.try_recv(id, Duration::from_millis(700)) {
        wire += f.wire_len();
        match f.decode_body().expect("decodes") {
            Message::ExecStarted { .. } => {}
            Message::ExecStdout { data: d } => data += d.len(),
            Message::ExecExited(_) => panic!("exited although the output cannot have been sent"),
            other => panic!("unexpected {other:?}"),
        }
        uncredited.push(f.wire_len());
        assert!(wire <= INITIAL_WINDOW as usize, "sent {wire} bytes past the window");
    }
    assert!(wire > INITIAL_WINDOW as usize - MAX_CHUNK, "the window is used ({wire} bytes)");
    assert!(data < total);
    // Credit half of it: more comes, still bounded.
    let half: usize = uncredited.iter().take(uncredited.len() / 2).sum();
    a.send(id, Flags::NONE, &Message::Credit { bytes: half as u32 });
    let mut more = 0usize;
    while let Some(f) = a.try_recv(id, Duration::from_millis(500)) {
        more += f.wire_len();
        if let Message::ExecStdout { data: d } = f.decode_body().expect("decodes") {
            data += d.len();
        }
    }
    // The invariant: never more than INITIAL_WINDOW un-credited bytes. The
    // part of the window left unused before (less than one chunk frame) may
    // be used now, on top of the credit.
    let unused = INITIAL_WINDOW as usize - wire;
    assert!(
        more > 0 && more <= half + unused,
        "after {half} bytes of credit (and {unused} unused) the agent sent {more}"
    );
    // Now credit everything as it comes; all output arrives before ExecExited.
    a.send(id, Flags::NONE, &Message::Credit { bytes: (wire - half + more) as u32 });
    let rest = a.finish_exec(id);
    data += rest.stdout.len();
    assert_eq!(data, total);
    assert_eq!(rest.code(), Some(0));
}

/// Reads one exec session to its end, crediting lazily (in batches, as a
/// relay does) and checking that the agent never has more than
/// INITIAL_WINDOW un-credited bytes out. Returns (stdout, stderr, code).
fn collect_with_window_check(a: &mut Agent, id: u32) -> (Vec<u8>, Vec<u8>, Option<i32>) {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let mut uncredited = 0usize;
    loop {
        let (f, m) = a.recv_msg(id);
        uncredited += f.wire_len();
        assert!(uncredited <= INITIAL_WINDOW as usize, "{uncredited} un-credited bytes out");
        match m {
            Message::ExecStarted { .. } => {}
            Message::ExecStdout { data } => out.extend_from_slice(&data),
            Message::ExecStderr { data } => err.extend_from_slice(&data),
            Message::ExecExited(st) => return (out, err, st.code),
            other => panic!("unexpected {other:?}"),
        }
        if uncredited >= INITIAL_WINDOW as usize / 2 {
            a.send(id, Flags::NONE, &Message::Credit { bytes: uncredited as u32 });
            uncredited = 0;
        }
    }
}

fn patterned_file(dir: &std::path::Path, name: &str, len: usize, seed: u32) -> (String, Vec<u8>) {
    let mut x = seed | 1;
    let data: Vec<u8> = (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect();
    let path = dir.join(name);
    std::fs::write(&path, &data).expect("writes the file");
    (path.to_string_lossy().into_owned(), data)
}

/// Large output leaves through the splice path, also when the channel takes
/// each frame only in pieces, and arrives byte for byte with exact
/// flow-control accounting.
#[test]
fn spliced_output_is_byte_identical_also_when_frames_leave_in_pieces() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (out_path, out_data) = patterned_file(dir.path(), "out", 20 * 1024 * 1024 + 12_345, 7);
    let (err_path, err_data) = patterned_file(dir.path(), "err", 3 * 1024 * 1024 + 1, 11);
    let script = format!("cat {out_path}; cat {err_path} >&2; printf tail");
    // Default buffers, then a send buffer far below one chunk: most frames
    // are then taken partly and completed later.
    for sndbuf in [None, Some(4096)] {
        let mut a = match sndbuf {
            None => Agent::start(),
            Some(b) => Agent::start_with_sndbuf(b),
        };
        let id = a.start_exec(ExecRequest { argv: argv(&["/bin/sh", "-c", &script]), ..ExecRequest::default() });
        let (out, err, code) = collect_with_window_check(&mut a, id);
        assert_eq!(code, Some(0));
        assert_eq!(out.len(), out_data.len() + 4, "sndbuf {sndbuf:?}");
        assert!(out[..out_data.len()] == out_data[..], "stdout is byte-identical (sndbuf {sndbuf:?})");
        assert_eq!(&out[out_data.len()..], b"tail");
        assert!(err == err_data, "stderr is byte-identical (sndbuf {sndbuf:?})");
        // The agent logs how the output left.
        let log = a.log_text();
        let line = log
            .lines()
            .find(|l| l.contains(&format!("session {id}: pid")) && l.contains("spliced"))
            .unwrap_or_else(|| panic!("no session summary in the log:\n{log}"));
        let spliced: u64 = word_before(line, " spliced");
        assert!(spliced > 20, "most output frames are spliced: {line}");
        if sndbuf.is_some() {
            let resumed = word_before(line, " resumed)");
            assert!(resumed > 0, "frames were completed after a partial splice: {line}");
        }
    }
}

fn word_before(line: &str, marker: &str) -> u64 {
    let end = line.find(marker).unwrap_or_else(|| panic!("{marker:?} not in {line:?}"));
    let start = line[..end].rfind(|c: char| !c.is_ascii_digit()).map_or(0, |i| i + 1);
    line[start..end].parse().unwrap_or_else(|_| panic!("no number before {marker:?} in {line:?}"))
}

#[test]
fn thirty_two_concurrent_execs() {
    let mut a = Agent::start();
    let ids: Vec<(u32, usize)> = (0..32)
        .map(|n| {
            let id = a.start_exec(ExecRequest {
                argv: argv(&[
                    "/bin/sh",
                    "-c",
                    "sleep 0.2; echo session-$0; echo e$0 >&2; exit $(($0 % 7))",
                    &n.to_string(),
                ]),
                ..ExecRequest::default()
            });
            (id, n)
        })
        .collect();
    for (id, n) in ids {
        let r = a.finish_exec(id);
        assert_eq!(r.out(), format!("session-{n}\n"));
        assert_eq!(r.err(), format!("e{n}\n"));
        assert_eq!(r.code(), Some((n % 7) as i32));
    }
}

#[test]
fn shutdown_terminates_sessions_within_the_grace_and_exits_zero() {
    let mut a = Agent::start();
    let id = a.start_exec(ExecRequest { argv: argv(&["sleep", "30"]), ..ExecRequest::default() });
    let (_, m) = a.recv_msg(id);
    let Message::ExecStarted { pid } = m else { panic!("{m:?}") };
    // A process that ignores SIGTERM is killed when the grace ends.
    let stubborn = a.start_exec(ExecRequest {
        argv: argv(&["/bin/sh", "-c", "trap '' TERM; echo ready; sleep 30"]),
        ..ExecRequest::default()
    });
    // The trap is set once it says so.
    a.wait_stdout(stubborn, "ready\n");
    let t = Instant::now();
    a.send(CONTROL_ID, Flags::SHUTDOWN, &Message::Shutdown { grace_ms: 500 });
    let r = a.finish_exec(id);
    assert_eq!(r.status.and_then(|s| s.signal), Some(libc::SIGTERM));
    let r = a.finish_exec(stubborn);
    assert_eq!(r.status.and_then(|s| s.signal), Some(libc::SIGKILL));
    assert!(t.elapsed() >= Duration::from_millis(450), "SIGKILL waited for the grace");
    let st = a.wait_exit(Duration::from_secs(5)).expect("agent exits");
    assert_eq!(st.code(), Some(0));
    assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());
    // SAFETY: kill with signal 0 only checks existence.
    assert_ne!(unsafe { libc::kill(pid as i32, 0) }, 0, "sleep is gone");
    // Requests during or after shutdown are refused or the channel is closed.
    assert!(a
        .try_recv(CONTROL_ID, Duration::from_millis(200))
        .is_none_or(|f| matches!(f.decode_body(), Ok(Message::Heartbeat { .. }))));
}

#[test]
fn host_gone_kills_sessions_and_exits_zero() {
    let mut a = Agent::start();
    let id = a.start_exec(ExecRequest { argv: argv(&["sleep", "30"]), ..ExecRequest::default() });
    let (_, m) = a.recv_msg(id);
    let Message::ExecStarted { pid } = m else { panic!("{m:?}") };
    a.sock.shutdown(std::net::Shutdown::Both).expect("shutdown socket");
    let st = a.wait_exit(Duration::from_secs(5)).expect("agent exits");
    assert_eq!(st.code(), Some(0));
    // SAFETY: existence check only.
    assert_ne!(unsafe { libc::kill(pid as i32, 0) }, 0, "sleep is gone");
}

fn zombies_of(ppid: u32) -> Vec<String> {
    let mut out = Vec::new();
    for ent in std::fs::read_dir("/proc").expect("proc").flatten() {
        let Ok(stat) = std::fs::read_to_string(ent.path().join("stat")) else { continue };
        let Some(close) = stat.rfind(')') else { continue };
        let f: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        if f.len() > 2 && f[1] == ppid.to_string() && f[0] == "Z" {
            out.push(stat.clone());
        }
    }
    out
}

fn children_of(ppid: u32) -> usize {
    std::fs::read_dir("/proc")
        .expect("proc")
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
        .filter(|stat| {
            stat.rfind(')').is_some_and(|c| stat[c + 1..].split_whitespace().nth(1) == Some(ppid.to_string().as_str()))
        })
        .count()
}

#[test]
fn orphans_are_reaped() {
    let mut a = Agent::start();
    let agent_pid = a.child.id();
    let r = a.sh("sleep 1 >/dev/null 2>&1 & sleep 0.8 >/dev/null 2>&1 & echo started");
    assert_eq!((r.out().as_str(), r.code()), ("started\n", Some(0)));
    // The background sleeps were re-parented to the agent (a subreaper here).
    assert!(children_of(agent_pid) >= 1, "orphans are re-parented to the agent");
    let end = Instant::now() + Duration::from_secs(5);
    while children_of(agent_pid) > 0 && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(children_of(agent_pid), 0, "zombies: {:?}", zombies_of(agent_pid));
    assert!(a.log_text().contains("reaped orphan"), "{}", a.log_text());
}

#[test]
fn background_children_holding_the_pipe_do_not_hang_the_session() {
    let mut a = Agent::start();
    let t = Instant::now();
    let r = a.sh("sleep 5 & echo done");
    assert_eq!((r.out().as_str(), r.code()), ("done\n", Some(0)));
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
}

#[test]
fn malformed_requests_fail_the_session_not_the_agent() {
    let mut a = Agent::start();
    let id = a.new_id();
    a.send_raw(&Frame::new(id, Flags::SESSION_START, vec![0xff, 0xff, 0xff]).encode().expect("encodes"));
    let (f, m) = a.recv_msg(id);
    assert!(f.flags.contains(Flags::TERMINAL));
    match m {
        Message::ExecFailed(e) => assert_eq!(e.kind, SpawnErrorKind::InvalidRequest),
        other => panic!("{other:?}"),
    }
    // A non-request message opening a session is refused too.
    let id = a.new_id();
    a.send(id, Flags::SESSION_START, &Message::ExecStdinEof);
    assert!(matches!(a.recv_msg(id).1, Message::ExecFailed(SpawnError { kind: SpawnErrorKind::InvalidRequest, .. })));
    assert_eq!(a.sh("echo alive").out(), "alive\n");
}

#[test]
fn lost_framing_shuts_the_agent_down() {
    let mut a = Agent::start();
    let id = a.start_exec(ExecRequest { argv: argv(&["sleep", "30"]), ..ExecRequest::default() });
    assert!(matches!(a.recv_msg(id).1, Message::ExecStarted { .. }));
    // A length field below the minimum: framing is lost.
    a.send_raw(&[0, 0, 0, 1, 0, 0, 0, 0, 0]);
    let r = a.finish_exec(id);
    assert_eq!(r.status.and_then(|s| s.signal), Some(libc::SIGTERM));
    let st = a.wait_exit(Duration::from_secs(6)).expect("agent exits");
    assert_eq!(st.code(), Some(0));
}

#[test]
fn bad_configuration_is_a_clear_error() {
    require_root();
    let out = std::process::Command::new(agent_binary())
        .args(["--no-pid1", "--config", "/no/such/config.json"])
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/no/such/config.json"));
    let out = std::process::Command::new(agent_binary()).args(["--config-fd", "x"]).output().expect("runs");
    assert_eq!(out.status.code(), Some(2));
    // Without --no-pid1 outside a fresh PID namespace the agent refuses to touch the host.
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("c.json");
    std::fs::write(&cfg, AgentConfig::default().to_json()).expect("write");
    let out =
        std::process::Command::new(agent_binary()).args(["--config", &cfg.to_string_lossy()]).output().expect("runs");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("PID 1"));
}

#[test]
fn pid1_mode_in_fresh_namespaces() {
    require_root();
    // unshare(1) gives the agent a new PID, mount and UTS namespace, as the
    // jail backend does (minus the pivot): the agent is PID 1 there.
    let mut cmd = std::process::Command::new("unshare");
    cmd.args(["--pid", "--fork", "--mount", "--uts", "--propagation", "private", "--mount-proc", "--"])
        .arg(agent_binary())
        .args(["--config-fd", "4"]);
    let cfg = AgentConfig { hostname: "pid1-box".into(), ..AgentConfig::default() };
    let mut a = Agent::start_cmd(cmd, &cfg.to_json());
    let r = a.sh("echo $$; hostname; grep -E ' /tmp | /dev/pts ' /proc/self/mountinfo | cut -d' ' -f5,9; test -t 0 || echo no-tty");
    assert_eq!(r.code(), Some(0), "{r:?}");
    let lines: Vec<&str> = r.stdout.split(|b| *b == b'\n').map(|l| std::str::from_utf8(l).unwrap_or("")).collect();
    let shell_pid: u32 = lines[0].parse().expect("pid");
    assert!(shell_pid > 1 && shell_pid < 100, "the command runs in the agent's PID namespace: {}", r.out());
    assert_eq!(lines[1], "pid1-box");
    assert!(r.out().contains("/tmp tmpfs"), "{}", r.out());
    // A PTY works with the agent's ptmx handling.
    let r = a.exec(ExecRequest {
        argv: argv(&["/bin/sh", "-c", "tty"]),
        tty: Some(TtySize { rows: 5, cols: 5 }),
        ..ExecRequest::default()
    });
    assert!(r.out().contains("/dev/pts/"), "{r:?}");
    // Orphans re-parent to PID 1 and are reaped.
    let r = a.sh("sleep 0.2 >/dev/null 2>&1 & echo bg");
    assert_eq!(r.out(), "bg\n");
    let end = Instant::now() + Duration::from_secs(10);
    while !a.log_text().contains("reaped orphan") {
        assert!(Instant::now() < end, "the orphan was never reaped: {}", a.log_text());
        std::thread::sleep(Duration::from_millis(20));
    }
    // A daemon outside any session is terminated at shutdown too.
    let r = a.sh("setsid sleep 60 >/dev/null 2>&1 < /dev/null & echo $!");
    assert_eq!(r.code(), Some(0));
    let t = Instant::now();
    a.send(CONTROL_ID, Flags::SHUTDOWN, &Message::Shutdown { grace_ms: 3000 });
    let st = a.wait_exit(Duration::from_secs(8)).expect("agent exits");
    assert_eq!(st.code(), Some(0), "{}", a.log_text());
    assert!(t.elapsed() < Duration::from_secs(2), "no session left, the daemon took SIGTERM: {:?}", t.elapsed());
}

#[test]
fn pty_stdin_eof_ends_cat() {
    let mut a = Agent::start();
    let id = a.start_exec(ExecRequest {
        argv: argv(&["cat"]),
        tty: Some(TtySize { rows: 10, cols: 40 }),
        stdin: true,
        ..ExecRequest::default()
    });
    a.send(id, Flags::NONE, &Message::ExecStdin { data: b"hello\n".to_vec() });
    a.send(id, Flags::NONE, &Message::ExecStdinEof);
    let r = a.finish_exec(id);
    assert_eq!(r.code(), Some(0), "{r:?}");
    // The terminal echoes the line and cat repeats it.
    assert_eq!(r.out().matches("hello").count(), 2, "{:?}", r.out());
}

#[test]
fn stdin_to_a_process_that_stops_reading_is_still_credited() {
    let mut a = Agent::start();
    let id = a.start_exec(ExecRequest {
        argv: argv(&["/bin/sh", "-c", "head -c 10 >/dev/null; echo done"]),
        stdin: true,
        ..ExecRequest::default()
    });
    let mut wire = 0u64;
    for _ in 0..7 {
        wire += a.send(id, Flags::NONE, &Message::ExecStdin { data: vec![b'x'; 128 * 1024] }) as u64;
    }
    let r = a.finish_exec(id);
    assert_eq!((r.out().as_str(), r.code()), ("done\n", Some(0)));
    // Whatever could not be written is credited anyway, before the end or
    // (for frames that raced the exit) not at all: never more than was sent.
    assert!(r.stdin_credit <= wire);
    assert!(r.stdin_credit > 0);
}

/// A client that sends stdin past twice the window without waiting for
/// credit has its command killed: the agent never holds more than that.
#[test]
fn stdin_beyond_twice_the_window_kills_the_command() {
    let mut a = Agent::start();
    // `sleep` never reads its stdin: only the pipe's buffer is written.
    let id = a.start_exec(ExecRequest { argv: argv(&["/bin/sleep", "600"]), stdin: true, ..ExecRequest::default() });
    for _ in 0..24 {
        a.send(id, Flags::NONE, &Message::ExecStdin { data: vec![b'x'; 128 * 1024] });
    }
    let r = a.finish_exec(id);
    assert_eq!(r.status.map(|s| s.signal), Some(Some(9)), "{:?}", r.status);
    assert!(a.log_text().contains("stdin beyond the flow-control window"), "{}", a.log_text());
}

/// A v1 memory cgroup for the OOM test, removed on drop.
struct MemCgroup(std::path::PathBuf);

impl Drop for MemCgroup {
    fn drop(&mut self) {
        for _ in 0..100 {
            if std::fs::remove_dir(&self.0).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[test]
fn oom_kills_are_reported() {
    require_root();
    let root = std::path::Path::new("/sys/fs/cgroup/memory");
    assert!(
        root.join("cgroup.procs").exists(),
        "this test needs the cgroup v1 memory controller at {}",
        root.display()
    );
    let cg = MemCgroup(root.join(format!("alcove-agent-oom-{}", std::process::id())));
    std::fs::create_dir(&cg.0).expect("create memory cgroup");
    std::fs::write(cg.0.join("memory.limit_in_bytes"), "48M").expect("limit");
    let mut a = Agent::start();
    std::fs::write(cg.0.join("cgroup.procs"), a.child.id().to_string()).expect("move the agent");
    let r = a.sh("x=$(head -c 400000000 /dev/zero | tr '\\0' x); echo survived");
    let st = r.status.expect("exited");
    assert_eq!(st.signal, Some(libc::SIGKILL), "{r:?}");
    assert!(st.oom_killed, "{r:?}");
    // An ordinary SIGKILL is not an OOM kill.
    let id = a.start_exec(ExecRequest { argv: argv(&["sleep", "30"]), ..ExecRequest::default() });
    assert!(matches!(a.recv_msg(id).1, Message::ExecStarted { .. }));
    a.send(id, Flags::NONE, &Message::ExecSignal { signal: libc::SIGKILL });
    let st = a.finish_exec(id).status.expect("exited");
    assert_eq!((st.signal, st.oom_killed), (Some(libc::SIGKILL), false));
    let _ = a.child.kill();
    let _ = a.child.wait();
}

fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let f: Vec<&str> = stat[stat.rfind(')').expect(")") + 1..].split_whitespace().collect();
    // utime and stime are fields 14 and 15 (the 12th and 13th after the command).
    f[11].parse::<u64>().expect("utime") + f[12].parse::<u64>().expect("stime")
}

#[test]
fn a_disconnected_port_is_waited_for_not_taken_as_host_gone() {
    let mut a = Agent::start_raw(&AgentConfig::default().to_json(), &["--channel-is-port"]);
    // The host stops sending: on a virtio port that reads as end of file
    // while the host side is not connected.
    a.sock.shutdown(std::net::Shutdown::Write).expect("half close");
    let pid = a.child.id();
    let before = cpu_ticks(pid);
    let mut beats = 0;
    let end = Instant::now() + Duration::from_millis(2300);
    while Instant::now() < end {
        if let Some(f) = a.try_recv(CONTROL_ID, end.saturating_duration_since(Instant::now())) {
            assert!(matches!(f.decode_body(), Ok(Message::Heartbeat { .. })));
            beats += 1;
        }
    }
    assert!(beats >= 2, "the agent keeps serving ({beats} heartbeats)");
    assert!(a.child.try_wait().expect("wait").is_none(), "the agent did not exit");
    let used = cpu_ticks(pid) - before;
    assert!(used < 30, "no busy loop while disconnected ({used} ticks of CPU in 2.3 s)");
}

#[test]
fn commands_inherit_only_stdio_and_need_absolute_cwds() {
    let mut a = Agent::start();
    let r = a.exec(ExecRequest { argv: argv(&["ls", "-l", "/proc/self/fd/"]), ..ExecRequest::default() });
    let out = r.out();
    let fds: Vec<&str> = out
        .lines()
        .filter(|l| l.contains(" -> "))
        .filter_map(|l| l.split(" -> ").next()?.rsplit(' ').next())
        .map(str::trim)
        .collect();
    assert_eq!(fds, vec!["0", "1", "2", "3"], "only stdio and ls's own directory fd: {out}");
    let r = a.exec(ExecRequest { argv: argv(&["true"]), cwd: Some("tmp".into()), ..ExecRequest::default() });
    assert_eq!(r.failure(), SpawnErrorKind::BadCwd);
}

#[test]
fn sigterm_from_the_parent_namespace_stops_pid1_gracefully() {
    require_root();
    let mut cmd = std::process::Command::new("unshare");
    cmd.args(["--pid", "--fork", "--mount", "--propagation", "private", "--mount-proc", "--"])
        .arg(agent_binary())
        .args(["--config-fd", "4"]);
    let mut a = Agent::start_cmd(cmd, &AgentConfig::default().to_json());
    let id = a.start_exec(ExecRequest { argv: argv(&["sleep", "30"]), ..ExecRequest::default() });
    assert!(matches!(a.recv_msg(id).1, Message::ExecStarted { .. }));
    // The agent is unshare's only child.
    let children = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", a.child.id())).expect("children");
    let agent_pid: i32 = children.split_whitespace().next().expect("agent pid").parse().expect("pid");
    // SAFETY: signalling our own grandchild.
    assert_eq!(unsafe { libc::kill(agent_pid, libc::SIGTERM) }, 0);
    let r = a.finish_exec(id);
    assert_eq!(r.status.and_then(|s| s.signal), Some(libc::SIGTERM), "sessions get SIGTERM");
    assert_eq!(a.wait_exit(Duration::from_secs(5)).expect("exits").code(), Some(0));
}

/// Reads `fd` (set blocking) to its end on a thread.
fn drain_on_thread(fd: std::os::fd::OwnedFd) -> std::thread::JoinHandle<Vec<u8>> {
    use std::io::Read;
    use std::os::fd::AsRawFd;
    // SAFETY: F_GETFL/F_SETFL only change the status flags of an fd we own.
    unsafe {
        let flags = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
        libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags & !libc::O_NONBLOCK);
    }
    std::thread::spawn(move || {
        let mut out = Vec::new();
        std::fs::File::from(fd).read_to_end(&mut out).expect("read the pipe");
        out
    })
}

#[test]
fn a_requested_stdout_pipe_is_handed_over_and_stderr_still_relayed() {
    let dir = tempfile::tempdir().expect("tempdir");
    // More than the pipe holds, so the command needs its reader meanwhile.
    let (out_path, out_data) = patterned_file(dir.path(), "out", 5 * 1024 * 1024 + 3, 5);
    let mut a = Agent::start();
    let id = a.start_exec(ExecRequest {
        argv: argv(&["/bin/sh", "-c", &format!("cat {out_path}; echo err >&2; exit 3")]),
        stdout_pipe: true,
        ..ExecRequest::default()
    });
    assert!(matches!(a.recv_msg(id).1, Message::ExecStarted { .. }));
    let (f, m) = a.recv_msg(id);
    assert_eq!(m, Message::ExecStdoutPipe);
    assert!(f.flags.contains(Flags::FD), "the frame says a descriptor came with it");
    let pipe = a.take_fd().expect("a descriptor came with ExecStdoutPipe");
    assert!(fdpass::is_pipe_read_end(std::os::fd::AsFd::as_fd(&pipe)));
    let reader = drain_on_thread(pipe);
    let r = a.finish_exec(id);
    assert!(r.stdout.is_empty(), "no ExecStdout after the hand-over");
    assert_eq!(r.err(), "err\n");
    assert_eq!(r.status, Some(ExitStatus { code: Some(3), signal: None, oom_killed: false }));
    let out = reader.join().expect("reader");
    assert_eq!(out.len(), out_data.len());
    assert!(out == out_data, "stdout through the pipe is byte-identical");
    assert!(a.log_text().contains(&format!("session {id}: stdout pipe handed to the client")));
    assert!(a.take_fd().is_none(), "one descriptor only");
}

#[test]
fn a_stdout_pipe_is_not_handed_over_on_a_terminal_or_unasked() {
    let mut a = Agent::start();
    let id = a.start_exec(ExecRequest {
        argv: argv(&["/bin/sh", "-c", "echo on-a-tty"]),
        tty: Some(TtySize { rows: 24, cols: 80 }),
        stdout_pipe: true,
        ..ExecRequest::default()
    });
    // finish_exec fails on any ExecStdoutPipe.
    let r = a.finish_exec(id);
    assert!(r.out().contains("on-a-tty"), "{:?}", r.out());
    let r = a.sh("echo unasked");
    assert_eq!(r.out(), "unasked\n");
    assert!(a.take_fd().is_none());
}
