//! The routing rules, driven by plain calls: no socket, task or sleep.

use super::*;
use crate::clock::ManualClock;
use alcove_protocol::{ExecRequest, ExitStatus, FsRequest, PROTOCOL_VERSION};

struct Fixture {
    table: RouteTable,
    clock: ManualClock,
    counters: Arc<RelayCounters>,
}

fn fixture() -> Fixture {
    let clock = ManualClock::new();
    let counters = Arc::new(RelayCounters::default());
    let mut table = RouteTable::new(Arc::new(clock.clone()), counters.clone());
    table.attach_guest();
    Fixture { table, clock, counters }
}

fn frame(id: u32, flags: Flags, msg: &Message) -> Frame {
    Frame::message(id, flags, msg).expect("encodes")
}

fn exec_start(id: u32) -> ToGuest {
    let req = ExecRequest { argv: vec!["true".into()], ..ExecRequest::default() };
    ToGuest::own(frame(id, Flags::SESSION_START, &Message::ExecRequest(req)))
}

fn fs_start(id: u32) -> ToGuest {
    ToGuest::own(frame(id, Flags::SESSION_START, &Message::FsRequest(FsRequest::Stat { path: "/".into() })))
}

fn stdout(id: u32, len: usize) -> Frame {
    frame(id, Flags::NONE, &Message::ExecStdout { data: vec![b'x'; len] })
}

fn exited(id: u32) -> Frame {
    frame(id, Flags::TERMINAL, &Message::ExecExited(ExitStatus { code: Some(0), signal: None, oom_killed: false }))
}

fn ready_frame(protocol_version: u32) -> Frame {
    let ready = Ready { protocol_version, agent_version: "test".into(), boot: Default::default() };
    frame(CONTROL_ID, Flags::NONE, &Message::Ready(ready))
}

fn pipe() -> (OwnedFd, OwnedFd) {
    use std::os::fd::FromRawFd;
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two new descriptors into the array it is given.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(rc, 0, "pipe2: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors are new and owned by nothing else.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

/// The frames queued for `client`, in order.
fn to_client(actions: &[Action], client: ClientKey) -> Vec<&Frame> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::ToClient(k, item) if *k == client => Some(&item.frame),
            _ => None,
        })
        .collect()
}

/// The frames queued for the guest, decoded.
fn to_guest(actions: &[Action]) -> Vec<(u32, Message)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::ToGuest(item) => Some((item.frame.id, item.frame.decode_body().expect("decodes"))),
            _ => None,
        })
        .collect()
}

fn credits(actions: &[Action]) -> Vec<(u32, u32)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Credit { id, bytes } => Some((*id, *bytes)),
            _ => None,
        })
        .collect()
}

fn closes(actions: &[Action], client: ClientKey) -> bool {
    actions.iter().any(|a| matches!(a, Action::CloseClient(k) if *k == client))
}

#[test]
fn slot_ranges_are_disjoint_and_skip_the_control_id() {
    let mut prev_end = 0;
    for k in 0..MAX_CLIENTS {
        for generation in 0..SLOT_GENERATIONS {
            let r = slot_range(k, generation);
            assert!(r.id_start > prev_end, "slot {k} generation {generation}");
            assert!(r.id_end > r.id_start);
            assert!(!r.contains(CONTROL_ID));
            prev_end = r.id_end;
        }
    }
    // Generations cycle within the slot's block.
    assert_eq!(slot_range(3, SLOT_GENERATIONS + 2), slot_range(3, 2));
}

#[test]
fn every_slot_is_given_once_and_a_freed_one_comes_back_with_new_ids() {
    let mut f = fixture();
    let clients: Vec<ClientKey> = (0..MAX_CLIENTS).map(|_| f.table.admit().expect("a slot")).collect();
    let mut slots: Vec<usize> = clients.iter().map(|c| c.slot).collect();
    slots.dedup();
    assert_eq!(slots.len(), MAX_CLIENTS);
    assert_eq!(f.table.admit(), None, "a client beyond the slots was admitted");
    let gone = clients[7];
    let actions = f.table.disconnect(gone, "test");
    assert!(closes(&actions, gone));
    let again = f.table.admit().expect("the freed slot");
    assert_eq!(again.slot, gone.slot);
    assert_ne!(again.range(), gone.range(), "the slot's next client got its predecessor's ids");
}

#[test]
fn a_generation_whose_ids_are_still_in_use_is_skipped() {
    let mut f = fixture();
    let first = f.table.admit().expect("a slot");
    let id = first.range().id_start;
    assert_eq!(to_guest(&f.table.client_frame(first, exec_start(id))).len(), 1);
    // The client leaves; its session is killed but still open in the guest.
    let actions = f.table.disconnect(first, "gone");
    assert_eq!(to_guest(&actions), [(id, Message::ExecSignal { signal: libc::SIGKILL })]);
    // Cycle the slot through all its generations: none may reuse the ids.
    for _ in 0..2 * SLOT_GENERATIONS {
        let next = f.table.admit().expect("a slot");
        assert_eq!(next.slot, first.slot);
        assert!(!next.range().contains(id), "generation {} reuses a live session's ids", next.generation);
        f.table.disconnect(next, "cycled");
    }
    // Once the guest ends the session, the ids are free again.
    f.table.guest_frame(exited(id), Descriptor::None);
    let reused = (0..SLOT_GENERATIONS).any(|_| {
        let next = f.table.admit().expect("a slot");
        f.table.disconnect(next, "cycled");
        next.range().contains(id)
    });
    assert!(reused);
}

#[test]
fn a_client_leaving_its_range_or_breaking_the_protocol_is_dropped_alone() {
    let mut f = fixture();
    let good = f.table.admit().expect("a slot");
    let cases: Vec<Box<dyn Fn(ClientKey) -> ToGuest>> = vec![
        Box::new(|c| exec_start(c.range().id_end + 1)),
        Box::new(|c| ToGuest::own(Frame::new(c.range().id_start, Flags::SESSION_START, vec![0xde, 0xad]))),
        Box::new(|c| ToGuest::own(frame(c.range().id_start, Flags::SESSION_START, &Message::ExecStdinEof))),
        Box::new(|c| ToGuest::own(frame(c.range().id_start, Flags::FD, &Message::ExecStdinEof))),
        Box::new(|_| ToGuest::own(frame(CONTROL_ID, Flags::NONE, &Message::ExecStdinEof))),
    ];
    for (n, case) in cases.iter().enumerate() {
        let bad = f.table.admit().expect("a slot");
        let actions = f.table.client_frame(bad, case(bad));
        assert!(closes(&actions, bad), "case {n} did not drop the client: {actions:?}");
        assert!(to_guest(&actions).is_empty(), "case {n} reached the guest");
        // Later frames of a dropped client are ignored.
        assert!(f.table.client_frame(bad, exec_start(bad.range().id_start)).is_empty());
    }
    let id = good.range().id_start;
    assert_eq!(to_guest(&f.table.client_frame(good, exec_start(id))).len(), 1);
    // A session id may be started once.
    let again = f.table.client_frame(good, exec_start(id));
    assert!(closes(&again, good));
}

#[test]
fn a_disconnect_kills_exec_sessions_and_aborts_file_sessions() {
    let mut f = fixture();
    let c = f.table.admit().expect("a slot");
    let (exec, fs) = (c.range().id_start, c.range().id_start + 1);
    f.table.client_frame(c, exec_start(exec));
    f.table.client_frame(c, fs_start(fs));
    assert_eq!(f.table.activity().open_sessions, 2);
    let mut ended = to_guest(&f.table.disconnect(c, "gone"));
    ended.sort_by_key(|(id, _)| *id);
    assert_eq!(
        ended,
        [
            (exec, Message::ExecSignal { signal: libc::SIGKILL }),
            (fs, Message::SessionAborted { reason: "the client disconnected".into() })
        ]
    );
    // Sessions whose client is gone are not activity.
    assert_eq!(f.table.activity().open_sessions, 0);
    // A second disconnect (its task ending later) changes nothing.
    assert!(f.table.disconnect(c, "again").is_empty());
}

#[test]
fn guest_frames_reach_their_client_and_earn_credit_once_written() {
    let mut f = fixture();
    let c = f.table.admit().expect("a slot");
    let id = c.range().id_start;
    f.table.client_frame(c, exec_start(id));
    let chunk = stdout(id, 20_000);
    let wire = chunk.wire_len() as u32;
    let per_batch = CREDIT_BATCH.div_ceil(wire);
    for _ in 0..per_batch {
        let actions = f.table.guest_frame(chunk.clone(), Descriptor::None);
        assert_eq!(to_client(&actions, c), [&chunk]);
        assert!(credits(&actions).is_empty(), "credit before the client was written to");
    }
    assert_eq!(f.counters.stats().peak_client_queue, (per_batch * wire) as usize);
    let mut earned = Vec::new();
    for _ in 0..per_batch {
        earned.extend(credits(&f.table.client_wrote(c, Written::of(&chunk))));
    }
    // One batch, once enough was written.
    assert_eq!(earned, [(id, per_batch * wire)]);
    // The terminal frame ends the session: no credit for it, no route after.
    f.clock.advance(Duration::from_secs(5));
    let end = exited(id);
    assert_eq!(to_client(&f.table.guest_frame(end.clone(), Descriptor::None), c), [&end]);
    assert_eq!(f.table.activity().last_activity, Duration::from_secs(5), "a session's end is activity");
    assert_eq!(f.table.activity().open_sessions, 0);
    assert!(f.table.client_wrote(c, Written::of(&end)).is_empty());
    assert!(f.table.guest_frame(stdout(id, 10), Descriptor::None).is_empty(), "a frame after the end was routed");
}

#[test]
fn frames_of_a_gone_clients_session_are_credited_and_others_dropped() {
    let mut f = fixture();
    let c = f.table.admit().expect("a slot");
    let id = c.range().id_start;
    f.table.client_frame(c, exec_start(id));
    f.table.disconnect(c, "gone");
    let chunk = stdout(id, 1000);
    let actions = f.table.guest_frame(chunk.clone(), Descriptor::None);
    assert_eq!(credits(&actions), [(id, chunk.wire_len() as u32)]);
    assert!(!actions.iter().any(|a| matches!(a, Action::ToClient(..))));
    // A session nobody started earns nothing (the ledger cannot be grown
    // with made-up ids).
    assert!(f.table.guest_frame(stdout(id + 99, 1000), Descriptor::None).is_empty());
    // The killed session's end removes its route.
    assert!(f.table.guest_frame(exited(id), Descriptor::None).is_empty());
    assert!(f.table.guest_frame(chunk, Descriptor::None).is_empty());
}

#[test]
fn a_guest_beyond_its_window_loses_the_client_not_memory() {
    let mut f = fixture();
    let victim = f.table.admit().expect("a slot");
    let other = f.table.admit().expect("a slot");
    let id = victim.range().id_start;
    f.table.client_frame(victim, exec_start(id));
    let chunk = stdout(id, 60_000);
    let limit = INITIAL_WINDOW as usize + CLIENT_QUEUE_SLACK;
    let mut queued = 0;
    loop {
        let actions = f.table.guest_frame(chunk.clone(), Descriptor::None);
        if closes(&actions, victim) {
            // The frame that did not fit is credited like a gone client's.
            assert_eq!(credits(&actions), [(id, chunk.wire_len() as u32)]);
            assert_eq!(to_guest(&actions), [(id, Message::ExecSignal { signal: libc::SIGKILL })]);
            break;
        }
        queued += chunk.wire_len();
        assert!(queued <= limit, "{queued} bytes queued for one session");
    }
    let stats = f.counters.stats();
    assert_eq!(stats.clients_over_queue, 1);
    assert!(stats.peak_client_queue <= limit);
    // The other client is untouched.
    let oid = other.range().id_start;
    assert_eq!(to_guest(&f.table.client_frame(other, exec_start(oid))).len(), 1);
}

#[test]
fn the_session_beyond_the_cap_is_refused_by_the_relay() {
    let mut f = fixture();
    let c = f.table.admit().expect("a slot");
    let first = c.range().id_start;
    for k in 0..MAX_SESSIONS_PER_CLIENT as u32 {
        assert_eq!(to_guest(&f.table.client_frame(c, exec_start(first + k))).len(), 1);
    }
    let extra = first + MAX_SESSIONS_PER_CLIENT as u32;
    let actions = f.table.client_frame(c, exec_start(extra));
    assert!(to_guest(&actions).is_empty(), "the extra session reached the guest");
    let refused = to_client(&actions, c);
    assert_eq!(refused.len(), 1);
    assert!(refused[0].flags.contains(Flags::TERMINAL));
    assert!(matches!(refused[0].decode_body(), Ok(Message::SessionAborted { reason }) if reason.contains("too many")));
    assert_eq!(f.counters.stats().sessions_refused, 1);
    // Once the refusal and one session's end are written, a session fits again.
    let refusal = Written::of(refused[0]);
    f.table.client_wrote(c, refusal);
    let end = exited(first);
    f.table.guest_frame(end.clone(), Descriptor::None);
    f.table.client_wrote(c, Written::of(&end));
    assert_eq!(to_guest(&f.table.client_frame(c, exec_start(extra + 1))).len(), 1);
}

#[test]
fn the_agents_ready_is_held_for_clients_until_running_is_recorded() {
    let mut f = fixture();
    f.clock.advance(Duration::from_secs(3));
    let ready = ready_frame(PROTOCOL_VERSION);
    let actions = f.table.guest_frame(ready.clone(), Descriptor::None);
    assert!(matches!(actions.as_slice(), [Action::AgentReady(r)] if r.protocol_version == PROTOCOL_VERSION));
    let a = f.table.activity();
    assert_eq!((a.ready_at, a.last_heartbeat), (Some(Duration::from_secs(3)), Some(Duration::from_secs(3))));
    // A second Ready changes nothing.
    assert!(f.table.guest_frame(ready_frame(PROTOCOL_VERSION), Descriptor::None).is_empty());
    assert_eq!(f.table.open_to_clients(), Some(ready));
    assert_eq!(f.table.open_to_clients(), None);
    f.clock.advance(Duration::from_secs(2));
    let beat = frame(CONTROL_ID, Flags::NONE, &Message::Heartbeat { seq: 1, active_sessions: 0 });
    assert!(f.table.guest_frame(beat, Descriptor::None).is_empty());
    assert_eq!(f.table.activity().last_heartbeat, Some(Duration::from_secs(5)));
}

#[test]
fn any_frame_from_a_ready_agent_counts_as_a_heartbeat() {
    let mut f = fixture();
    let c = f.table.admit().expect("a slot");
    let id = c.range().id_start;
    f.table.client_frame(c, exec_start(id));
    // Before Ready, output says nothing of the heartbeat.
    f.clock.advance(Duration::from_secs(1));
    f.table.guest_frame(stdout(id, 10), Descriptor::None);
    assert_eq!(f.table.activity().last_heartbeat, None);
    f.table.guest_frame(ready_frame(PROTOCOL_VERSION), Descriptor::None);
    f.clock.advance(Duration::from_secs(40));
    f.table.guest_frame(stdout(id, 10), Descriptor::None);
    let a = f.table.activity();
    assert_eq!(a.last_heartbeat, Some(Duration::from_secs(41)));
    assert_eq!(a.last_activity, Duration::from_secs(1), "guest output is not client activity");
}

#[test]
fn an_agent_of_another_protocol_version_ends_the_sandbox() {
    let mut f = fixture();
    let actions = f.table.guest_frame(ready_frame(PROTOCOL_VERSION + 1), Descriptor::None);
    assert!(
        matches!(actions.as_slice(), [Action::Terminate(t)] if t.reason == TerminationReason::InternalError),
        "{actions:?}"
    );
    assert_eq!(f.table.open_to_clients(), None);
}

#[test]
fn a_clients_shutdown_flag_and_touch_are_control_not_traffic() {
    let mut f = fixture();
    let c = f.table.admit().expect("a slot");
    f.clock.advance(Duration::from_secs(9));
    let touch = ToGuest::own(frame(CONTROL_ID, Flags::NONE, &Message::Touch));
    assert!(f.table.client_frame(c, touch).is_empty());
    assert_eq!(f.table.activity().last_activity, Duration::from_secs(9));
    let shutdown = ToGuest::own(frame(CONTROL_ID, Flags::SHUTDOWN, &Message::Touch));
    let actions = f.table.client_frame(c, shutdown);
    assert!(matches!(actions.as_slice(), [Action::Terminate(t)] if t.reason == TerminationReason::ShutdownRequested));
}

#[test]
fn an_fd_frame_travels_with_its_pipe_or_not_at_all() {
    let mut f = fixture();
    let c = f.table.admit().expect("a slot");
    let id = c.range().id_start;
    f.table.client_frame(c, exec_start(id));
    let handover = frame(id, Flags::FD, &Message::ExecStdout { data: Vec::new() });
    // Without a usable descriptor the frame is dropped and its bytes credited.
    for descriptor in [Descriptor::None, Descriptor::NotAPipe] {
        let actions = f.table.guest_frame(handover.clone(), descriptor);
        assert_eq!(credits(&actions), [(id, handover.wire_len() as u32)]);
        assert!(to_client(&actions, c).is_empty());
    }
    let (read, _write) = pipe();
    let actions = f.table.guest_frame(handover.clone(), Descriptor::Pipe(read));
    match actions.as_slice() {
        [Action::ToClient(k, ToClient { frame, fd: Some(_) })] => assert_eq!((*k, frame), (c, &handover)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn closing_aborts_open_sessions_and_closes_every_client() {
    let mut f = fixture();
    let a = f.table.admit().expect("a slot");
    let b = f.table.admit().expect("a slot");
    let gone = f.table.admit().expect("a slot");
    let id = a.range().id_start;
    f.table.client_frame(a, exec_start(id));
    f.table.client_frame(gone, exec_start(gone.range().id_start));
    f.table.disconnect(gone, "gone");
    let actions = f.table.close();
    let aborted = to_client(&actions, a);
    assert_eq!(aborted.len(), 1);
    assert!(aborted[0].flags.contains(Flags::TERMINAL));
    assert!(matches!(aborted[0].decode_body(), Ok(Message::SessionAborted { .. })));
    assert!(closes(&actions, a) && closes(&actions, b));
    assert!(!closes(&actions, gone), "a gone client was closed twice");
    // The abort goes before the close, so the writer delivers it.
    let abort_at = actions.iter().position(|x| matches!(x, Action::ToClient(..)));
    let close_at = actions.iter().position(|x| matches!(x, Action::CloseClient(k) if *k == a));
    assert!(abort_at < close_at);
    assert_eq!(f.table.admit(), None, "a client was admitted after the close");
    assert!(f.table.close().is_empty());
}

#[test]
fn frames_are_refused_while_the_guest_is_detached() {
    let mut f = fixture();
    let c = f.table.admit().expect("a slot");
    f.table.detach_guest();
    let actions = f.table.client_frame(c, exec_start(c.range().id_start));
    assert!(closes(&actions, c));
    assert!(to_guest(&actions).is_empty());
}

#[test]
fn an_undeliverable_frame_drops_its_client_and_is_credited() {
    let mut f = fixture();
    let c = f.table.admit().expect("a slot");
    let id = c.range().id_start;
    f.table.client_frame(c, exec_start(id));
    let chunk = stdout(id, 500);
    let actions = f.table.undeliverable(c, &chunk);
    assert!(closes(&actions, c));
    assert_eq!(credits(&actions), [(id, chunk.wire_len() as u32)]);
}

#[test]
fn a_resume_restarts_the_idle_and_heartbeat_clocks() {
    let mut f = fixture();
    f.table.guest_frame(ready_frame(PROTOCOL_VERSION), Descriptor::None);
    f.table.set_paused(true);
    f.clock.advance(Duration::from_secs(3600));
    let a = f.table.activity();
    assert!(a.paused);
    assert_eq!((a.last_heartbeat, a.last_activity), (Some(Duration::ZERO), Duration::ZERO), "pausing moves nothing");
    f.table.set_paused(false);
    let a = f.table.activity();
    assert!(!a.paused);
    assert_eq!((a.last_heartbeat, a.last_activity), (Some(Duration::from_secs(3600)), Duration::from_secs(3600)));
}

#[test]
fn a_sandbox_request_is_for_the_relay_and_counts_as_a_session_until_answered() {
    let mut f = fixture();
    let c = f.table.admit().expect("a slot");
    let id = c.range().id_start;
    let ask = ToGuest::own(frame(id, Flags::SESSION_START, &Message::SandboxRequest(SandboxRequest::Pause)));
    let actions = f.table.client_frame(c, ask);
    assert!(
        matches!(actions.as_slice(), [Action::SandboxRequest { client, id: i, request: SandboxRequest::Pause }] if *client == c && *i == id),
        "{actions:?}"
    );
    assert!(to_guest(&actions).is_empty());
    let actions = f.table.sandbox_reply(c, id, Err("no".into()));
    let reply = to_client(&actions, c);
    assert_eq!(reply.len(), 1);
    assert_eq!(reply[0].flags, Flags::TERMINAL);
    assert_eq!(reply[0].decode_body().expect("decodes"), Message::SandboxReply(Err("no".into())));
    // A client gone before its answer gets nothing queued.
    f.table.disconnect(c, "test");
    assert!(f.table.sandbox_reply(c, id, Ok(())).is_empty());
}

#[test]
fn a_paused_sandbox_refuses_new_sessions_until_resumed() {
    let mut f = fixture();
    let c = f.table.admit().expect("a slot");
    let id = c.range().id_start;
    f.table.set_paused(true);
    let actions = f.table.client_frame(c, exec_start(id));
    assert!(to_guest(&actions).is_empty(), "the frozen agent is not asked");
    let refused = to_client(&actions, c);
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0].flags, Flags::TERMINAL);
    assert!(
        matches!(refused[0].decode_body(), Ok(Message::SessionAborted { reason }) if reason.contains("paused")),
        "{:?}",
        refused[0].decode_body()
    );
    f.table.set_paused(false);
    let actions = f.table.client_frame(c, fs_start(id + 1));
    assert_eq!(to_guest(&actions).len(), 1, "resumed: sessions reach the guest again");
}
