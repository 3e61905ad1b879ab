//! The relay through real sockets: handshake and id ranges, 128 clients,
//! misbehaving clients dropped alone, session kill on disconnect, flow
//! control, and a slow client that stalls nobody else.

mod common;

use alcove::store::TerminationReason;
use alcove::{Policy, PolicySpec};
use alcove_backend::mock::MockEvent;
use alcove_protocol::{fdpass, Flags, Frame, Message, CONTROL_ID, INITIAL_WINDOW, PROTOCOL_VERSION};
use common::*;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

fn ready_env() -> Env {
    let env = start(script(), policy());
    assert!(env.handle.wait_ready(WAIT));
    env
}

#[test]
fn handshake_gives_a_range_and_the_agents_ready() {
    let env = ready_env();
    let client = RawClient::connect(&env.socket());
    assert!(client.range.id_start > CONTROL_ID && client.range.id_end > client.range.id_start);
    assert!(matches!(client.ready, Message::Ready(ref r) if r.protocol_version == PROTOCOL_VERSION));
    let mode = std::fs::metadata(env.socket()).expect("socket").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let dir_mode = std::fs::metadata(env.socket().parent().expect("dir")).expect("dir").permissions().mode() & 0o777;
    assert_eq!(dir_mode, 0o700);
}

#[test]
fn clients_that_connect_before_ready_wait_for_it() {
    let env = start(alcove_backend::mock::MockScript { ready_after_ms: Some(300), ..script() }, policy());
    let t = Instant::now();
    let mut client = RawClient::connect(&env.socket());
    assert!(t.elapsed() >= Duration::from_millis(250), "handshake before the agent was ready");
    // A client that got its handshake never sees the sandbox as Starting.
    assert_eq!(env.sandbox().status, alcove::store::SandboxStatus::Running);
    let id = client.range.id_start;
    client.exec(id, &["echo", "late"], false);
    assert_eq!(client.collect(id).0, b"late\n");
}

#[test]
fn one_hundred_twenty_eight_clients_at_once_with_disjoint_ranges() {
    let env = ready_env();
    let mut clients: Vec<RawClient> = (0..128).map(|_| RawClient::connect(&env.socket())).collect();
    let mut ranges: Vec<_> = clients.iter().map(|c| (c.range.id_start, c.range.id_end)).collect();
    ranges.sort();
    for w in ranges.windows(2) {
        assert!(w[0].1 < w[1].0, "ranges overlap: {w:?}");
    }
    for (i, c) in clients.iter_mut().enumerate() {
        let id = c.range.id_start + 1;
        c.exec(id, &["echo", &format!("client {i}")], false);
    }
    for (i, c) in clients.iter_mut().enumerate() {
        let id = c.range.id_start + 1;
        assert_eq!(c.collect(id).0, format!("client {i}\n").into_bytes());
    }
    // The 129th is refused; the others are unaffected.
    let mut extra = UnixStream::connect(env.socket()).expect("connects");
    extra.set_read_timeout(Some(WAIT)).expect("timeout");
    let mut buf = [0u8; 8];
    assert!(matches!(std::io::Read::read(&mut extra, &mut buf), Ok(0) | Err(_)), "a 129th client got a handshake");
    let id = clients[5].range.id_start + 2;
    clients[5].exec(id, &["echo", "still"], false);
    assert_eq!(clients[5].collect(id).0, b"still\n");
    // A freed slot is reused. The leaving client has a session open: the
    // relay kills it as it frees the slot, so the guest's record of that
    // SIGKILL says the slot is free.
    let mut leaving = clients.pop().expect("a client");
    let lid = leaving.range.id_start + 3;
    leaving.exec(lid, &["sleep", "600000"], false);
    assert!(matches!(leaving.recv(), Some((_, _, Message::ExecStarted { .. }))));
    drop(leaving);
    wait_for_event(&env, &MockEvent::Signalled { id: lid, signal: libc::SIGKILL });
    let mut again = RawClient::connect(&env.socket());
    let id = again.range.id_start;
    again.exec(id, &["echo", "reused"], false);
    assert_eq!(again.collect(id).0, b"reused\n");
}

#[test]
fn an_id_outside_the_range_drops_only_that_client() {
    let env = ready_env();
    let mut good = RawClient::connect(&env.socket());
    let mut bad = RawClient::connect(&env.socket());
    let stolen = good.range.id_start;
    bad.exec(stolen, &["echo", "hijack"], false);
    assert!(bad.closed(), "a client using another's ids was not dropped");
    let id = good.range.id_start;
    good.exec(id, &["echo", "fine"], false);
    assert_eq!(good.collect(id).0, b"fine\n");
    assert!(env.handle.outcome().is_none(), "the sandbox must survive a bad client");
}

#[test]
fn garbage_drops_only_that_client() {
    let env = ready_env();
    let mut good = RawClient::connect(&env.socket());
    for garbage in [&[0xffu8, 0xff, 0xff, 0xff, 1, 2, 3, 4, 5][..], &[0, 0, 0, 1, 9][..]] {
        let mut bad = RawClient::connect(&env.socket());
        bad.stream.write_all(garbage).expect("writes");
        assert!(bad.closed(), "a client sending garbage was not dropped");
    }
    // A well-framed frame whose body is not a message also drops the client.
    let mut bad = RawClient::connect(&env.socket());
    let id = bad.range.id_start;
    Frame::new(id, Flags::SESSION_START, vec![0xde, 0xad]).write_to(&mut bad.stream).expect("writes");
    assert!(bad.closed());
    let id = good.range.id_start;
    good.exec(id, &["echo", "ok"], false);
    assert_eq!(good.collect(id).0, b"ok\n");
}

#[test]
fn disconnecting_kills_the_clients_open_sessions() {
    let env = ready_env();
    let mut client = RawClient::connect(&env.socket());
    let id = client.range.id_start;
    client.exec(id, &["sleep", "600000"], false);
    assert!(matches!(client.recv(), Some((_, _, Message::ExecStarted { .. }))));
    drop(client);
    wait_for_event(&env, &MockEvent::Signalled { id, signal: libc::SIGKILL });
}

#[test]
fn stdin_reaches_the_command_and_eof_ends_it() {
    let env = ready_env();
    let mut client = RawClient::connect(&env.socket());
    let id = client.range.id_start;
    client.exec(id, &["cat"], true);
    client.send(id, Flags::NONE, &Message::ExecStdin { data: b"hello ".to_vec() });
    client.send(id, Flags::NONE, &Message::ExecStdin { data: b"world".to_vec() });
    client.send(id, Flags::NONE, &Message::ExecStdinEof);
    let mut out = Vec::new();
    loop {
        match client.recv().expect("frame") {
            (_, _, Message::ExecStdout { data }) => out.extend(data),
            (_, flags, Message::ExecExited(s)) => {
                assert!(flags.contains(Flags::TERMINAL));
                assert_eq!(s.code, Some(0));
                break;
            }
            _ => {}
        }
    }
    assert_eq!(out, b"hello world");
}

#[test]
fn large_output_flows_through_credit_without_loss() {
    let env = ready_env();
    let mut client = RawClient::connect(&env.socket());
    let id = client.range.id_start;
    let total = 8 * INITIAL_WINDOW as usize;
    client.exec(id, &["stream", &total.to_string()], false);
    let (out, end) = client.collect(id);
    assert_eq!(out.len(), total);
    assert!(matches!(end, Message::ExecExited(s) if s.code == Some(0)));
}

#[test]
fn a_slow_client_stalls_only_itself() {
    let env = ready_env();
    // This client starts a big stream and then reads nothing.
    let mut slow = RawClient::connect(&env.socket());
    let slow_id = slow.range.id_start;
    let total = 16 * INITIAL_WINDOW as usize;
    slow.exec(slow_id, &["stream", &total.to_string()], false);
    // The guest waits for credit: the slow client holds all it will.
    wait_for_event(&env, &MockEvent::WindowFull { id: slow_id });
    // Others keep working, promptly.
    let mut fast = RawClient::connect(&env.socket());
    for n in 0..20 {
        let id = fast.range.id_start + n;
        let t = Instant::now();
        fast.exec(id, &["echo", "quick"], false);
        assert_eq!(fast.collect(id).0, b"quick\n");
        assert!(t.elapsed() < Duration::from_secs(2), "a fast client waited {:?} behind a slow one", t.elapsed());
    }
    // The slow client was held back, not fed without bound and not dropped:
    // it can still read its whole stream, byte for byte.
    let (out, _) = slow.collect(slow_id);
    assert_eq!(out.len(), total);
}

#[test]
fn open_sessions_are_aborted_when_the_sandbox_stops() {
    let env = ready_env();
    let mut client = RawClient::connect(&env.socket());
    let id = client.range.id_start;
    client.exec(id, &["sleep", "600000"], false);
    assert!(matches!(client.recv(), Some((_, _, Message::ExecStarted { .. }))));
    env.handle.stop();
    // Either the guest answers the SIGTERM of its shutdown, or the relay
    // aborts the session; the client never hangs.
    let (fid, flags, msg) = client.recv().expect("a final frame");
    assert_eq!(fid, id);
    assert!(flags.contains(Flags::TERMINAL), "{msg:?}");
    assert_eq!(env.handle.wait_timeout(WAIT).expect("ends").reason, TerminationReason::ShutdownRequested);
    assert!(client.closed());
}

#[test]
fn a_stalled_client_with_many_small_frames_is_held_back_not_dropped() {
    let env = ready_env();
    let mut client = RawClient::connect(&env.socket());
    let id = client.range.id_start;
    // 100k one-line frames: far more frames than bytes would suggest, and
    // more than a window's worth, while the client reads nothing for a while.
    let n = 100_000;
    client.exec(id, &["lines", &n.to_string()], false);
    // The guest has filled the session's window while the client read nothing.
    assert!(env.log.wait_for(&MockEvent::WindowFull { id }, WAIT), "the guest never waited for credit");
    let (out, end) = client.collect(id);
    assert!(matches!(end, Message::ExecExited(s) if s.code == Some(0)), "{end:?}");
    let text = String::from_utf8(out).expect("utf-8");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), n);
    assert_eq!(lines[n - 1], format!("line {}", n - 1));
}

// ------------------------------------------------------------ descriptors

fn exec_asking_for_the_pipe(client: &mut RawClient, id: u32, argv: &[&str]) {
    let req = alcove_protocol::ExecRequest {
        argv: argv.iter().map(|s| s.to_string()).collect(),
        stdout_pipe: true,
        ..alcove_protocol::ExecRequest::default()
    };
    client.send(id, Flags::SESSION_START, &Message::ExecRequest(req));
}

#[test]
fn a_guests_stdout_pipe_reaches_its_client_with_the_frame() {
    let env = ready_env();
    let mut client = RawClient::connect(&env.socket());
    let id = client.range.id_start;
    exec_asking_for_the_pipe(&mut client, id, &["pipe", "300000"]);
    let (_, _, started, fd) = client.recv_with_fd().expect("a frame");
    assert!(matches!(started, Message::ExecStarted { .. }) && fd.is_none());
    let (fid, flags, msg, fd) = client.recv_with_fd().expect("a frame");
    assert_eq!((fid, msg), (id, Message::ExecStdoutPipe));
    assert!(flags.contains(Flags::FD));
    let fd = fd.expect("the pipe came with its frame");
    assert!(fdpass::is_pipe_read_end(std::os::fd::AsFd::as_fd(&fd)));
    let mut piped = Vec::new();
    std::fs::File::from(fd).read_to_end(&mut piped).expect("reads the pipe");
    assert_eq!(piped, vec![b'p'; 300_000]);
    let (_, flags, msg, _) = client.recv_with_fd().expect("the end");
    assert!(flags.contains(Flags::TERMINAL));
    assert!(matches!(msg, Message::ExecExited(ref st) if st.code == Some(0)), "{msg:?}");
}

#[test]
fn descriptors_other_than_a_pipes_read_end_never_reach_a_client() {
    let env = ready_env();
    let mut client = RawClient::connect(&env.socket());
    // A pipe's write end (it would let the client write into the guest's
    // pipe), and an FD frame with no descriptor at all.
    for (k, program) in ["badfd", "nofd"].into_iter().enumerate() {
        let id = client.range.id_start + k as u32;
        exec_asking_for_the_pipe(&mut client, id, &[program]);
        let mut seen = Vec::new();
        loop {
            let (fid, flags, msg, fd) = client.recv_with_fd().expect("the session goes on");
            assert_eq!(fid, id);
            assert!(fd.is_none(), "{program}: a descriptor reached the client");
            assert!(!flags.contains(Flags::FD), "{program}: an FD frame reached the client");
            seen.push(msg.clone());
            if flags.contains(Flags::TERMINAL) {
                break;
            }
        }
        assert!(seen.contains(&Message::ExecStdout { data: b"after\n".to_vec() }), "{program}: {seen:?}");
        assert!(matches!(seen.last(), Some(Message::ExecExited(st)) if st.code == Some(0)), "{program}: {seen:?}");
    }
}

#[test]
fn a_client_sending_a_descriptor_frame_is_dropped_alone() {
    let env = ready_env();
    let mut good = RawClient::connect(&env.socket());
    let mut bad = RawClient::connect(&env.socket());
    let id = bad.range.id_start;
    bad.send(id, Flags::FD, &Message::ExecStdinEof);
    assert!(bad.closed(), "a client sending an FD frame was not dropped");
    let id = good.range.id_start;
    good.exec(id, &["echo", "fine"], false);
    assert_eq!(good.collect(id).0, b"fine\n");
}

// ------------------------------------------------------------ file sessions

/// Waits until the mock guest has logged `event`.
fn wait_for_event(env: &Env, event: &MockEvent) {
    assert!(env.log.wait_for(event, WAIT), "never saw {event:?}: {:?}", env.log.events());
}

#[test]
fn an_interrupted_upload_ends_with_its_client_and_wedges_nothing() {
    let env = start(
        script(),
        Policy::try_from(PolicySpec { idle_timeout: Some(Duration::from_secs(60)), ..policy().spec() })
            .expect("a valid policy"),
    );
    assert!(env.handle.wait_ready(WAIT));
    // An upload that stops mid-way: its client is killed (the guest, a mock,
    // never answers a file session by itself).
    let mut uploader = RawClient::connect(&env.socket());
    let upload = uploader.range.id_start;
    let req = alcove_protocol::FsRequest::Write { path: "/x".into(), mode: 0o644 };
    uploader.send(upload, Flags::SESSION_START, &Message::FsRequest(req));
    uploader.send(upload, Flags::NONE, &Message::FsData { data: vec![7; 4096] });
    let old_range = uploader.range;
    drop(uploader);
    // The guest is told to end the session, as an exec session is killed.
    wait_for_event(&env, &MockEvent::Aborted { id: upload });
    // The next client of that slot never sees ids of the previous holder:
    // its own first id is free, and later copies work.
    let mut next = RawClient::connect(&env.socket());
    assert!(!next.range.contains(upload), "the reused slot handed out {old_range:?} again: {:?}", next.range);
    let id = next.range.id_start;
    next.exec(id, &["echo", "after"], false);
    assert_eq!(next.collect(id).0, b"after\n");
    // The dead session does not keep the sandbox busy: the idle timeout fires.
    env.clock.advance(Duration::from_secs(61));
    let outcome = env.handle.wait_timeout(WAIT).expect("the idle timeout never fired");
    assert_eq!(outcome.reason, TerminationReason::IdleTimeout);
    env.assert_final(&outcome);
}

#[test]
fn a_slot_reused_many_times_never_repeats_a_live_sessions_ids() {
    let env = ready_env();
    // Each holder of the first slot leaves a file session the guest never
    // ends; every later holder must get ids none of them used.
    let mut taken = Vec::new();
    for _ in 0..40 {
        let mut c = RawClient::connect(&env.socket());
        for &id in &taken {
            assert!(!c.range.contains(id), "{:?} holds the live session id {id}", c.range);
        }
        let id = c.range.id_start;
        let req = alcove_protocol::FsRequest::Stat { path: "/".into() };
        c.send(id, Flags::SESSION_START, &Message::FsRequest(req));
        taken.push(id);
        drop(c);
        wait_for_event(&env, &MockEvent::Aborted { id });
    }
}
