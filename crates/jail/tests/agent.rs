//! The real guest agent as PID 1 of a jail, spoken to over the agent
//! channel with the wire protocol (root required).

mod common;

use alcove_backend::{GuestExit, GuestSpec};
use alcove_jail::{Jail, JailBackend, JailOptions};
use alcove_protocol::{ExecRequest, Flags, Frame, Message, CONTROL_ID, PROTOCOL_VERSION};
use common::Fixture;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

/// The embedded static agent, installed into the fixture (an explicit
/// `ALCOVE_AGENT_BIN` wins, as with `agent_path`).
fn agent_binary(fx: &Fixture) -> PathBuf {
    if std::env::var_os("ALCOVE_AGENT_BIN").is_some_and(|v| !v.is_empty()) {
        return alcove_agent_bin::agent_path().expect("ALCOVE_AGENT_BIN names the agent");
    }
    alcove_agent_bin::install_into(&fx.dir.path().join("agent-bin")).expect("the embedded agent installs")
}

fn spec(fx: &Fixture, name: &str) -> GuestSpec {
    let mut spec = fx.spec(name);
    spec.agent_binary = Some(agent_binary(fx));
    spec.env = vec![("FROM_SPEC".into(), "spec-value".into())];
    spec.memory_mib = Some(64);
    spec
}

/// Next frame that is not a heartbeat.
fn next(channel: &mut UnixStream) -> Frame {
    loop {
        let frame = Frame::read_from(channel).expect("read").expect("the agent closed the channel");
        if frame.id == CONTROL_ID {
            if let Ok(Message::Heartbeat { .. }) = frame.decode_body() {
                continue;
            }
        }
        return frame;
    }
}

struct Output {
    stdout: String,
    stderr: String,
    code: Option<i32>,
    signal: Option<i32>,
    oom_killed: bool,
}

fn exec(channel: &mut UnixStream, id: u32, argv: &[&str]) -> Output {
    exec_as(channel, id, argv, None)
}

fn exec_as(channel: &mut UnixStream, id: u32, argv: &[&str], user: Option<&str>) -> Output {
    let req = ExecRequest {
        argv: argv.iter().map(|s| s.to_string()).collect(),
        user: user.map(str::to_string),
        ..ExecRequest::default()
    };
    Frame::message(id, Flags::SESSION_START, &Message::ExecRequest(req))
        .expect("encode")
        .write_to(channel)
        .expect("send");
    let mut out = Output { stdout: String::new(), stderr: String::new(), code: None, signal: None, oom_killed: false };
    loop {
        let frame = next(channel);
        assert_eq!(frame.id, id, "unexpected frame {frame:?}");
        match frame.decode_body().expect("decode") {
            Message::ExecStarted { .. } => {}
            Message::ExecStdout { data } => out.stdout.push_str(&String::from_utf8_lossy(&data)),
            Message::ExecStderr { data } => out.stderr.push_str(&String::from_utf8_lossy(&data)),
            Message::ExecExited(status) => {
                assert!(frame.flags.contains(Flags::TERMINAL));
                out.code = status.code;
                out.signal = status.signal;
                out.oom_killed = status.oom_killed;
                return out;
            }
            Message::ExecFailed(e) => panic!("{argv:?} failed to start: {e:?}"),
            other => panic!("unexpected message {other:?}"),
        }
    }
}

fn start(fx: &Fixture, name: &str) -> Jail {
    let jail = JailBackend::new(JailOptions::default()).spawn(&spec(fx, name)).expect("the agent jail starts");
    jail.agent_channel.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
    jail
}

#[test]
fn agent_reports_ready_and_runs_commands_in_the_jail() {
    let fx = Fixture::new();
    let mut jail = start(&fx, "agent-jail");
    let ready = next(&mut jail.agent_channel);
    assert_eq!(ready.id, CONTROL_ID);
    match ready.decode_body().expect("decode") {
        Message::Ready(r) => assert_eq!(r.protocol_version, PROTOCOL_VERSION),
        other => panic!("expected Ready, got {other:?}"),
    }

    let out = exec(&mut jail.agent_channel, 1, &["hostname"]);
    assert_eq!((out.code, out.stdout.trim()), (Some(0), "agent-jail"), "stderr: {}", out.stderr);

    let out = exec(
        &mut jail.agent_channel,
        2,
        &["sh", "-c", "echo pid1=$(cat /proc/1/comm); echo env=$FROM_SPEC; ls /sys/class/net; echo hi > /made-by-exec"],
    );
    assert_eq!(out.code, Some(0), "stderr: {}", out.stderr);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert!(lines[0].starts_with("pid1=alcove-agent") || lines[0] == "pid1=agent", "{lines:?}");
    assert_eq!(lines[1], "env=spec-value");
    assert_eq!(lines[2], "lo");
    assert!(fx.sandbox_dir().join("upper/made-by-exec").exists());

    let out = exec(&mut jail.agent_channel, 3, &["sh", "-c", "exit 5"]);
    assert_eq!(out.code, Some(5));

    // User switching still works with no_new_privs and the reduced
    // bounding set; the switched process holds no capability at all.
    let out = exec_as(&mut jail.agent_channel, 4, &["sh", "-c", "id -u; grep CapEff /proc/self/status"], Some("65534"));
    assert_eq!(out.code, Some(0), "stderr: {}", out.stderr);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines[0], "65534");
    assert!(lines[1].ends_with("0000000000000000"), "{lines:?}");

    // A command past the memory limit is OOM-killed; the agent lives on.
    let out = exec(&mut jail.agent_channel, 5, &["dd", "if=/dev/zero", "of=/dev/null", "bs=128M", "count=1"]);
    assert_eq!(out.signal, Some(9), "dd was not killed: code {:?}, stderr {}", out.code, out.stderr);
    assert!(out.oom_killed, "the agent did not see the OOM kill");
    let out = exec(&mut jail.agent_channel, 6, &["echo", "still here"]);
    assert_eq!(out.stdout, "still here\n");

    // Graceful stop: Shutdown on the control id; PID 1 exits and the
    // runner cleans up.
    let paths = jail.control.cgroup_paths();
    Frame::message(CONTROL_ID, Flags::SHUTDOWN, &Message::Shutdown { grace_ms: 500 })
        .expect("encode")
        .write_to(&mut jail.agent_channel)
        .expect("send");
    let exit = jail.runner.wait();
    assert_eq!(exit, GuestExit::exited(0), "log: {}", fx.guest_log());
    for p in paths {
        assert!(!p.exists(), "{} left behind", p.display());
    }
    assert!(!fx.sandbox_dir().join("merged").exists());
}
