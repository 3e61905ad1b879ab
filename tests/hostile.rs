//! Hostile peers against the standalone sandbox process (mock guest): what
//! they cost the host stays bounded — log lines, memory — and the other
//! clients are served whole and in order.

mod common;
#[path = "common/crowd.rs"]
mod crowd;
#[path = "common/process.rs"]
mod process;

use alcove::actors::relay::flow;
use alcove_backend::mock::MockEvent;
use alcove_protocol::{ExecRequest, Flags, Frame, Message, INITIAL_WINDOW};
use common::RawClient;
use crowd::{start_hostiles, StdinFlooder, CROWD_FLOOD_FRAMES, FLOOD_CHUNK};
use std::path::PathBuf;
use std::process::Child;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

struct Standalone {
    dir: tempfile::TempDir,
    child: Child,
}

impl Standalone {
    fn start(mock: serde_json::Value) -> Standalone {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = serde_json::json!({
            "name": "hostile",
            "home": dir.path().join("home"),
            "backend": "mock",
            "socket_path": dir.path().join("run/h.sock"),
            "mock": mock,
            "policy": { "drain_timeout": 2000, "shutdown_grace": 100, "metrics_interval": 0 }
        });
        let child = process::spawn_sandbox(dir.path(), &cfg);
        Standalone { dir, child }
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("run/h.sock")
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// SIGTERM, then waits for the exit.
    fn stop(&mut self) {
        // SAFETY: signals our own child.
        assert_eq!(unsafe { libc::kill(self.pid(), libc::SIGTERM) }, 0);
        assert_eq!(process::wait_exit(&mut self.child, WAIT), 0);
    }

    /// The runtime log's text (every `runtime*.log` file).
    fn runtime_log(&self) -> String {
        let logs = self.dir.path().join("home/sandboxes/hostile/logs");
        let mut text = String::new();
        for e in std::fs::read_dir(&logs).expect("log dir").filter_map(Result::ok) {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("runtime") && name.ends_with(".log") {
                text.push_str(&std::fs::read_to_string(e.path()).expect("readable"));
            }
        }
        text
    }
}

fn exec_asking_for_the_pipe(client: &mut RawClient, id: u32, program: &str) {
    let req = ExecRequest { argv: vec![program.to_string()], stdout_pipe: true, ..ExecRequest::default() };
    client.send(id, Flags::SESSION_START, &Message::ExecRequest(req));
}

fn count(text: &str, needle: &str) -> usize {
    text.lines().filter(|l| l.contains(needle)).count()
}

#[test]
fn a_guest_sending_bad_descriptors_cannot_fill_the_runtime_log() {
    let mut s = Standalone::start(serde_json::json!({ "heartbeat_interval_ms": 50 }));
    let mut client = RawClient::connect(&s.socket());
    // Each `badfd` session hands the host a pipe's write end, each `nofd`
    // an FD frame without a descriptor: a warning each, in the relay.
    for k in 0..300u32 {
        let id = client.range.id_start + k;
        exec_asking_for_the_pipe(&mut client, id, if k % 2 == 0 { "badfd" } else { "nofd" });
        loop {
            let (fid, flags, _) = client.recv().expect("the session goes on");
            assert_eq!(fid, id);
            if flags.contains(Flags::TERMINAL) {
                break;
            }
        }
    }
    drop(client);
    s.stop();
    let log = s.runtime_log();
    let bad = count(&log, "not a pipe's read end");
    let missing = count(&log, "without a descriptor");
    assert!(bad >= 1 && missing >= 1, "the warnings are not logged at all:\n{log}");
    let limit = alcove::actors::peer_log::PER_WINDOW as usize;
    assert!(bad <= limit && missing <= limit, "{bad} + {missing} warnings for 300 bad frames:\n{log}");
    assert!(log.contains("not logged"), "the suppressed warnings are not counted:\n{log}");
}

/// Waits (polling) until `cond` holds.
fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + WAIT;
    while !cond() {
        assert!(std::time::Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn wait_for_event(env: &common::Env, event: MockEvent) {
    wait_until(&format!("the guest logs {event:?}"), || env.log.contains(&event));
}

/// Fails on the code before this branch (91893c6): the crowd stalls and its
/// clients time out. The guest reader waited to queue credit for the
/// quitter's discarded output behind the flooder's stdin in the bounded
/// queue towards the guest, while the guest (which, like the mock, answers
/// stdin with credit from its reading thread) waited for the host to read
/// that credit: a deadlock of the whole relay.
#[test]
fn a_hundred_and_twenty_four_clients_get_every_byte_beside_four_hostile_ones() {
    let env = common::start(common::script(), common::policy());
    assert!(env.handle.wait_ready(WAIT));
    let socket = env.socket();
    let mut hostiles = start_hostiles(&socket);
    // Every line of every good client arrives, in order (checked inside).
    crowd::good_clients(&socket, 124, 2000);
    // Each hostile did what it was there for.
    assert!(hostiles.garbage.closed(), "the garbage client was not dropped");
    wait_for_event(&env, MockEvent::WindowFull { id: hostiles.never_reads.1 });
    wait_for_event(&env, MockEvent::WindowFull { id: hostiles.flooder.1 });
    wait_for_event(&env, MockEvent::Signalled { id: hostiles.quitter, signal: libc::SIGKILL });
    let (flooder, _) = hostiles.flooder;
    wait_until("the relay has read all of the flood", || flooder.sent() == CROWD_FLOOD_FRAMES);
    flooder.stop();
    drop(hostiles.never_reads);
    assert!(env.handle.outcome().is_none(), "the sandbox did not survive its hostile clients");
    // And a client after them is served as before.
    let mut after = RawClient::connect(&socket);
    let id = after.range.id_start;
    after.exec(id, &["echo", "after"], false);
    assert_eq!(after.collect(id).0, b"after\n");
}

/// The most bytes the relay may queue towards a client with one session.
const ONE_SESSION_QUEUE: usize = INITIAL_WINDOW as usize + flow::CLIENT_QUEUE_SLACK;

#[test]
fn a_client_that_never_reads_costs_at_most_one_window_per_session() {
    let env = common::start(common::script(), common::policy());
    assert!(env.handle.wait_ready(WAIT));
    let mut c = RawClient::connect(&env.socket());
    let id = c.range.id_start;
    let total = 16 << 20;
    c.exec(id, &["stream", &total.to_string()], false);
    // The guest stops for credit: everything the relay holds for this
    // client is now queued or in the socket.
    wait_for_event(&env, MockEvent::WindowFull { id });
    let held = env.handle.relay_stats().peak_client_queue;
    assert!(held <= ONE_SESSION_QUEUE, "{held} bytes queued for one session");
    // Nothing was lost: the client reads all of it, in order, afterwards.
    let (out, end) = c.collect(id);
    assert_eq!(out.len(), total);
    assert!(out.iter().all(|b| *b == b'x'));
    assert!(matches!(end, Message::ExecExited(s) if s.code == Some(0)), "{end:?}");
    let held = env.handle.relay_stats().peak_client_queue;
    assert!(held <= ONE_SESSION_QUEUE, "{held} bytes queued for one session");
}

#[test]
fn a_guest_ignoring_flow_control_loses_its_client_not_host_memory() {
    let env = common::start(common::script(), common::policy());
    assert!(env.handle.wait_ready(WAIT));
    let mut victim = RawClient::connect(&env.socket());
    let id = victim.range.id_start;
    // 64 MiB without waiting for credit, to a client that does not read.
    victim.exec(id, &["flood", &(64 << 20).to_string()], false);
    wait_until("the relay drops the client", || env.handle.relay_stats().clients_over_queue == 1);
    let held = env.handle.relay_stats().peak_client_queue;
    assert!(held <= ONE_SESSION_QUEUE, "{held} bytes queued for one session");
    assert!(victim.closed(), "the client was not disconnected");
    // The sandbox and its other clients are unaffected.
    let mut other = RawClient::connect(&env.socket());
    let oid = other.range.id_start;
    other.exec(oid, &["echo", "fine"], false);
    assert_eq!(other.collect(oid).0, b"fine\n");
    assert!(env.handle.outcome().is_none());
    assert_eq!(env.handle.relay_stats().clients_over_queue, 1);
}

/// Fails on the code before this branch (91893c6), whose queue towards the
/// guest held 256 frames whatever their size: 32 MiB of this flood.
#[test]
fn a_client_flooding_stdin_into_a_guest_that_does_not_read_holds_at_most_its_budget() {
    let env = common::start(common::script(), common::policy());
    assert!(env.handle.wait_ready(WAIT));
    env.gate.close();
    let mut c = RawClient::connect(&env.socket());
    let id = c.range.id_start;
    c.exec(id, &["cat"], true);
    let flooder = StdinFlooder::start(c, id, 128);
    // Nothing drains while the guest does not read: once the flooder's
    // budget is full the relay holds all it ever will.
    wait_until("the flooder's budget is full", || env.handle.relay_stats().guest_queue >= flow::CLIENT_GUEST_BUDGET);
    let one_frame = Frame::message(id, Flags::NONE, &Message::ExecStdin { data: vec![0; FLOOD_CHUNK] })
        .expect("encodes")
        .wire_len();
    let s = env.handle.relay_stats();
    assert!(
        s.peak_client_to_guest < flow::CLIENT_GUEST_BUDGET + one_frame,
        "{} bytes queued from one client",
        s.peak_client_to_guest
    );
    assert_eq!(s.peak_guest_queue, s.peak_client_to_guest, "only the flooder queued anything");
    // Another client is still served once the guest reads again.
    env.gate.open();
    let mut other = RawClient::connect(&env.socket());
    let oid = other.range.id_start;
    other.exec(oid, &["echo", "fine"], false);
    assert_eq!(other.collect(oid).0, b"fine\n");
    flooder.stop();
    assert!(env.handle.outcome().is_none());
}

/// Fails on the code before this branch (91893c6): every session was
/// forwarded, so one client could make the relay hold a window for each of
/// thousands of sessions.
#[test]
fn a_client_opening_too_many_sessions_is_refused_the_extra_one() {
    let env = common::start(common::script(), common::policy());
    assert!(env.handle.wait_ready(WAIT));
    let mut c = RawClient::connect(&env.socket());
    let first = c.range.id_start;
    let cap = flow::MAX_SESSIONS_PER_CLIENT as u32;
    for k in 0..cap {
        c.exec(first + k, &["sleep", "600000"], false);
    }
    let extra = first + cap;
    c.exec(extra, &["echo", "extra"], false);
    let mut started = 0;
    loop {
        let (id, flags, msg) = c.recv().expect("a frame");
        if id == extra {
            assert!(flags.contains(Flags::TERMINAL), "{msg:?}");
            assert!(
                matches!(&msg, Message::SessionAborted { reason } if reason.contains("too many sessions")),
                "{msg:?}"
            );
            break;
        }
        assert!(matches!(msg, Message::ExecStarted { .. }), "session {id}: {msg:?}");
        started += 1;
    }
    assert_eq!(env.handle.relay_stats().sessions_refused, 1);
    // Once one session ends, a new one is taken.
    c.send(first, Flags::NONE, &Message::ExecSignal { signal: libc::SIGTERM });
    loop {
        let (id, flags, msg) = c.recv().expect("a frame");
        if id == first && flags.contains(Flags::TERMINAL) {
            break;
        }
        assert!(matches!(msg, Message::ExecStarted { .. }), "session {id}: {msg:?}");
        started += 1;
    }
    assert_eq!(started, cap, "every session within the cap started");
    let next = extra + 1;
    c.exec(next, &["echo", "next"], false);
    assert_eq!(c.collect(next).0, b"next\n");
    assert!(!env.log.events().contains(&MockEvent::ExecStarted(vec!["echo".into(), "extra".into()])));
}
