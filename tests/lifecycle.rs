//! Every way a sandbox ends, through the real actors on the mock backend,
//! with a real SQLite file and a real agent.sock. Time-based policies run on
//! a manual clock, so nothing here waits for a real timeout.

mod common;

use alcove::clock::Clock;
use alcove::store::{SandboxStatus, TerminationReason};
use alcove::{Policy, PolicySpec};
use alcove_backend::mock::{MockEvent, MockScript};
use alcove_protocol::{Flags, Message, CONTROL_ID};
use common::*;
use std::time::Duration;

#[test]
fn guest_exit_zero_is_completed() {
    let env = start(MockScript { crash_after_ms: Some(50), crash_code: 0, ..script() }, policy());
    let outcome = env.handle.wait_timeout(WAIT).expect("ends");
    assert_eq!(outcome.reason, TerminationReason::Completed);
    assert_eq!(outcome.exit_code, Some(0));
    env.assert_final(&outcome);
    assert_eq!(env.sandbox().status, SandboxStatus::Stopped);
}

#[test]
fn guest_exit_nonzero_is_failed_with_its_code() {
    let env = start(MockScript { crash_after_ms: Some(50), crash_code: 3, ..script() }, policy());
    let outcome = env.handle.wait_timeout(WAIT).expect("ends");
    assert_eq!(outcome.reason, TerminationReason::Failed);
    assert_eq!(outcome.exit_code, Some(3));
    env.assert_final(&outcome);
}

#[test]
fn idle_sandbox_times_out() {
    let env = start(
        script(),
        Policy::try_from(PolicySpec { idle_timeout: Some(Duration::from_secs(300)), ..policy().spec() })
            .expect("a valid policy"),
    );
    assert!(env.handle.wait_ready(WAIT));
    assert_eq!(env.sandbox().status, SandboxStatus::Running);
    env.clock.advance(Duration::from_secs(299));
    assert!(env.handle.wait_timeout(Duration::from_millis(100)).is_none(), "ended before the idle timeout");
    env.clock.advance(Duration::from_secs(2));
    let outcome = env.handle.wait_timeout(WAIT).expect("ends");
    assert_eq!(outcome.reason, TerminationReason::IdleTimeout);
    env.assert_final(&outcome);
    assert!(env.log.contains(&MockEvent::ShutdownReceived), "idle stop is graceful");
}

#[test]
fn a_long_command_without_input_is_not_idle() {
    let env = start(
        script(),
        Policy::try_from(PolicySpec { idle_timeout: Some(Duration::from_secs(60)), ..policy().spec() })
            .expect("a valid policy"),
    );
    assert!(env.handle.wait_ready(WAIT));
    let mut client = RawClient::connect(&env.socket());
    let id = client.range.id_start;
    client.exec(id, &["sleep", "600000"], false);
    assert!(matches!(client.recv(), Some((_, _, Message::ExecStarted { .. }))));
    env.clock.advance(Duration::from_secs(3600));
    assert!(env.handle.wait_timeout(Duration::from_millis(200)).is_none(), "a running session was called idle");
    // Once the command ends the idle clock starts from that moment.
    client.send(id, Flags::NONE, &Message::ExecSignal { signal: 15 });
    let (_, end) = client.collect(id);
    assert!(matches!(end, Message::ExecExited(s) if s.signal == Some(15)));
    assert!(
        env.handle.wait_timeout(Duration::from_millis(100)).is_none(),
        "idle counted from before the session ended"
    );
    env.clock.advance(Duration::from_secs(61));
    let outcome = env.handle.wait_timeout(WAIT).expect("ends");
    assert_eq!(outcome.reason, TerminationReason::IdleTimeout);
    env.assert_final(&outcome);
}

#[test]
fn touch_resets_the_idle_clock() {
    let env = start(
        script(),
        Policy::try_from(PolicySpec { idle_timeout: Some(Duration::from_secs(60)), ..policy().spec() })
            .expect("a valid policy"),
    );
    assert!(env.handle.wait_ready(WAIT));
    let mut client = RawClient::connect(&env.socket());
    // Each touch lands 40 s after the previous one, so without them the
    // sandbox would be idle for 80 s by the second round. Each is seen by
    // the relay before the clock moves again.
    for _ in 0..3 {
        env.clock.advance(Duration::from_secs(40));
        client.send(CONTROL_ID, Flags::NONE, &Message::Touch);
        let now = env.clock.now();
        env.wait_activity("the client's touch", |a| a.last_activity == now);
        assert!(env.handle.outcome().is_none(), "touched sandbox timed out");
    }
    env.clock.advance(Duration::from_secs(40));
    env.handle.touch();
    let now = env.clock.now();
    env.wait_activity("the handle's touch", |a| a.last_activity == now);
    assert!(env.handle.outcome().is_none(), "touched sandbox timed out");
    env.clock.advance(Duration::from_secs(61));
    assert_eq!(env.handle.wait_timeout(WAIT).expect("ends").reason, TerminationReason::IdleTimeout);
}

#[test]
fn max_duration_ends_even_a_busy_sandbox() {
    let env = start(
        script(),
        Policy::try_from(PolicySpec { max_duration: Some(Duration::from_secs(30)), ..policy().spec() })
            .expect("a valid policy"),
    );
    assert!(env.handle.wait_ready(WAIT));
    let mut client = RawClient::connect(&env.socket());
    client.exec(client.range.id_start, &["sleep", "600000"], false);
    env.clock.advance(Duration::from_secs(31));
    let outcome = env.handle.wait_timeout(WAIT).expect("ends");
    assert_eq!(outcome.reason, TerminationReason::MaxDurationExceeded);
    env.assert_final(&outcome);
}

#[test]
fn shutdown_flag_from_a_client_stops_gracefully() {
    let env = start(script(), policy());
    assert!(env.handle.wait_ready(WAIT));
    let mut client = RawClient::connect(&env.socket());
    client.send(CONTROL_ID, Flags::SHUTDOWN, &Message::Shutdown { grace_ms: 100 });
    let outcome = env.handle.wait_timeout(WAIT).expect("ends");
    assert_eq!(outcome.reason, TerminationReason::ShutdownRequested);
    env.assert_final(&outcome);
    let events = env.log.events();
    let shutdown = events.iter().position(|e| *e == MockEvent::ShutdownReceived).expect("guest got Shutdown");
    let exit = events.iter().position(|e| matches!(e, MockEvent::Exited(_))).expect("guest exited");
    assert!(shutdown < exit, "Shutdown must reach the guest before it exits: {events:?}");
    assert!(!events.contains(&MockEvent::ForceStopped));
}

#[test]
fn signal_takes_the_graceful_path() {
    let env = start(script(), policy());
    assert!(env.handle.wait_ready(WAIT));
    env.handle.terminate(TerminationReason::Signal, "SIGTERM");
    let outcome = env.handle.wait_timeout(WAIT).expect("ends");
    assert_eq!(outcome.reason, TerminationReason::Signal);
    env.assert_final(&outcome);
    assert!(env.log.contains(&MockEvent::ShutdownReceived));
}

#[test]
fn first_cause_wins() {
    let env = start(MockScript { hang_on_shutdown: true, ..script() }, policy());
    assert!(env.handle.wait_ready(WAIT));
    env.handle.terminate(TerminationReason::Signal, "first");
    env.handle.stop();
    env.handle.terminate(TerminationReason::MaxDurationExceeded, "third");
    let outcome = env.handle.wait_timeout(WAIT).expect("ends");
    assert_eq!(outcome.reason, TerminationReason::Signal);
    assert_eq!(outcome.detail.as_deref().map(|d| d.starts_with("first")), Some(true));
    env.assert_final(&outcome);
}

#[test]
fn a_guest_that_hangs_on_shutdown_is_forced_after_the_drain_timeout() {
    let env = start(MockScript { hang_on_shutdown: true, ..script() }, policy());
    assert!(env.handle.wait_ready(WAIT));
    env.handle.stop();
    let outcome = env.handle.wait_timeout(WAIT).expect("ends");
    assert_eq!(outcome.reason, TerminationReason::ShutdownRequested);
    assert_eq!(outcome.exit_code, Some(137));
    env.assert_final(&outcome);
    let events = env.log.events();
    assert!(events.contains(&MockEvent::ShutdownReceived) && events.contains(&MockEvent::ForceStopped), "{events:?}");
}

#[test]
fn an_agent_that_is_never_ready_is_unresponsive() {
    let env = start(
        MockScript { ready_after_ms: None, ..script() },
        Policy::try_from(PolicySpec { ready_timeout: Duration::from_secs(30), ..policy().spec() })
            .expect("a valid policy"),
    );
    assert!(!env.handle.wait_ready(Duration::from_millis(50)));
    assert_eq!(env.sandbox().status, SandboxStatus::Starting);
    env.clock.advance(Duration::from_secs(31));
    let outcome = env.handle.wait_timeout(WAIT).expect("ends");
    assert_eq!(outcome.reason, TerminationReason::AgentUnresponsive);
    assert!(outcome.detail.as_deref().is_some_and(|d| d.contains("not ready")), "{outcome:?}");
    env.assert_final(&outcome);
    assert!(env.log.contains(&MockEvent::ForceStopped), "an agent that never answered is forced off");
}

#[test]
fn lost_heartbeats_are_unresponsive() {
    let env = start(
        MockScript { heartbeats_stop_after: Some(0), ..script() },
        Policy::try_from(PolicySpec { heartbeat_timeout: Duration::from_secs(10), ..policy().spec() })
            .expect("a valid policy"),
    );
    assert!(env.handle.wait_ready(WAIT));
    // A silent agent: its Ready was its last sign of life.
    env.clock.advance(Duration::from_secs(5));
    assert!(env.handle.outcome().is_none());
    env.clock.advance(Duration::from_secs(5));
    let outcome = env.handle.wait_timeout(WAIT).expect("ends");
    assert_eq!(outcome.reason, TerminationReason::AgentUnresponsive);
    assert!(outcome.detail.as_deref().is_some_and(|d| d.contains("heartbeat")), "{outcome:?}");
    env.assert_final(&outcome);
}

#[test]
fn heartbeats_keep_a_sandbox_alive() {
    let env = start(
        script(),
        Policy::try_from(PolicySpec { heartbeat_timeout: Duration::from_secs(10), ..policy().spec() })
            .expect("a valid policy"),
    );
    assert!(env.handle.wait_ready(WAIT));
    // Half a heartbeat timeout at a time, each followed by a real heartbeat
    // (the mock beats every 20 ms): 25 s in all, never 10 s of silence.
    for _ in 0..5 {
        env.clock.advance(Duration::from_secs(5));
        let now = env.clock.now();
        env.wait_activity("a heartbeat after the clock moved", |a| a.last_heartbeat == Some(now));
        assert!(env.handle.outcome().is_none(), "a beating agent was called unresponsive");
    }
    env.handle.stop();
    assert_eq!(env.handle.wait_timeout(WAIT).expect("ends").reason, TerminationReason::ShutdownRequested);
}

#[test]
fn a_backend_that_fails_to_start_is_an_internal_error() {
    let env = start(MockScript { fail_launch: Some("no such rootfs /nope".into()), ..script() }, policy());
    let outcome = env.handle.wait_timeout(WAIT).expect("ends");
    assert_eq!(outcome.reason, TerminationReason::InternalError);
    assert!(outcome.detail.as_deref().is_some_and(|d| d.contains("no such rootfs /nope")), "{outcome:?}");
    env.assert_final(&outcome);
    assert_eq!(env.sandbox().status, SandboxStatus::Stopped);
}

#[test]
fn a_database_that_cannot_be_written_is_an_internal_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = alcove::clock::ManualClock::new();
    let mut opts = options(&dir, policy(), &clock);
    opts.store.retry_budget = Duration::from_millis(200);
    opts.store.busy_timeout = Duration::from_millis(50);
    // Create the database, then hold its write lock from another connection.
    drop(alcove::store::Store::open(&opts.db_path).expect("creates"));
    let blocker = rusqlite::Connection::open(&opts.db_path).expect("opens");
    blocker.execute_batch("BEGIN EXCLUSIVE").expect("locks");
    let backend = alcove_backend::mock::MockBackend::new(script());
    let log = backend.log();
    let handle = alcove::start(opts.clone(), Box::new(backend)).expect("starts");
    let outcome = handle.wait_timeout(WAIT).expect("ends");
    assert_eq!(outcome.reason, TerminationReason::InternalError);
    assert!(outcome.detail.as_deref().is_some_and(|d| d.contains("database")), "{outcome:?}");
    assert!(!outcome.recorded, "nothing could be recorded while the database was locked");
    assert!(!opts.socket_path.exists());
    assert!(log.events().iter().any(|e| matches!(e, MockEvent::Exited(_))), "the guest was stopped");
    blocker.execute_batch("ROLLBACK").expect("unlocks");
    // No run row was written, so none can be left Running.
    let store = alcove::store::Store::open(&opts.db_path).expect("opens");
    assert!(store.running_runs().expect("query").is_empty());
}

#[test]
fn metrics_are_sampled_into_the_database() {
    let env = start(script(), policy());
    assert!(env.handle.wait_ready(WAIT));
    // The first sample is written at once, the next ones in a batch.
    let deadline = std::time::Instant::now() + WAIT;
    while env.store().metrics("box1", 100).expect("metrics").len() < 2 {
        assert!(std::time::Instant::now() < deadline, "fewer than two samples were written");
        std::thread::sleep(Duration::from_millis(5));
    }
    env.handle.stop();
    env.handle.wait_timeout(WAIT).expect("ends");
    let samples = env.store().metrics("box1", 100).expect("metrics");
    assert!(samples.len() >= 2, "{} samples", samples.len());
    assert!(samples.iter().all(|s| s.memory_bytes > 0));
}

/// Pause and resume through Lifecycle: each answered once the backend has
/// acted and the record says so; refusals in one line; a stop of a paused
/// sandbox thaws it before the agent is asked to shut down.
#[test]
fn pause_and_resume_are_recorded_refused_when_repeated_and_a_stop_thaws_first() {
    use alcove_protocol::SandboxRequest;
    let env = start(script(), policy());
    assert!(env.handle.wait_ready(WAIT));
    let mut client = RawClient::connect(&env.socket());
    let mut id = client.range.id_start;
    let mut ask = |request: SandboxRequest| {
        id += 1;
        client.send(id, Flags::SESSION_START, &Message::SandboxRequest(request));
        let (reply_id, flags, reply) = client.recv().expect("a reply");
        assert_eq!((reply_id, flags), (id, Flags::TERMINAL));
        reply
    };
    assert_eq!(ask(SandboxRequest::Resume), Message::SandboxReply(Err("the sandbox is not paused".into())));
    assert!(!env.log.contains(&MockEvent::Resumed), "a refused resume does not reach the backend");

    assert_eq!(ask(SandboxRequest::Pause), Message::SandboxReply(Ok(())));
    assert!(env.log.contains(&MockEvent::Paused));
    assert_eq!(env.sandbox().status, SandboxStatus::Paused);
    assert_eq!(ask(SandboxRequest::Pause), Message::SandboxReply(Err("the sandbox is already paused".into())));

    assert_eq!(ask(SandboxRequest::Resume), Message::SandboxReply(Ok(())));
    assert_eq!(env.sandbox().status, SandboxStatus::Running);
    assert_eq!(ask(SandboxRequest::Pause), Message::SandboxReply(Ok(())));

    env.handle.stop();
    let outcome = env.handle.wait_timeout(WAIT).expect("ends");
    assert_eq!(outcome.reason, TerminationReason::ShutdownRequested);
    env.assert_final(&outcome);
    assert_eq!(env.sandbox().status, SandboxStatus::Stopped);
    let events = env.log.events();
    let thawed = events.iter().rposition(|e| *e == MockEvent::Resumed).expect("thawed for the stop");
    let paused = events.iter().rposition(|e| *e == MockEvent::Paused).expect("paused");
    let shutdown = events.iter().position(|e| *e == MockEvent::ShutdownReceived).expect("a graceful stop");
    assert!(paused < thawed && thawed < shutdown, "{events:?}");
}
