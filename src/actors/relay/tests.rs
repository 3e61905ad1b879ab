//! The Relay actor alone, between a raw client and a scripted agent channel:
//! how it closes when the guest has just ended, and how it answers a
//! client's request to the sandbox process.

use super::*;
use crate::clock::MonotonicClock;
use alcove_protocol::async_io::{read_frame, write_frame};
use alcove_protocol::{ExecRequest, ExitStatus, Handshake, Ready, HANDSHAKE_LEN, PROTOCOL_VERSION};
use tokio::io::AsyncReadExt;

/// Stands in for Lifecycle: passes `AgentReady` on, keeps causes.
struct Peer {
    ready: Option<tokio::sync::oneshot::Sender<()>>,
    paused: bool,
}

impl Actor for Peer {
    type Context = Context<Self>;
}

impl Handler<AgentReady> for Peer {
    type Result = ();

    fn handle(&mut self, _: AgentReady, _: &mut Self::Context) {
        if let Some(tx) = self.ready.take() {
            let _ = tx.send(());
        }
    }
}

/// Lifecycle's part of a pause: refuses to pause twice, like Lifecycle.
impl Handler<SetPaused> for Peer {
    type Result = Result<(), String>;

    fn handle(&mut self, msg: SetPaused, _: &mut Self::Context) -> Self::Result {
        if msg.paused == self.paused {
            return Err(format!("already {}", if msg.paused { "paused" } else { "running" }));
        }
        self.paused = msg.paused;
        Ok(())
    }
}

impl Handler<Terminate> for Peer {
    type Result = ();

    fn handle(&mut self, msg: Terminate, _: &mut Self::Context) {
        tracing::info!(reason = %msg.reason, "cause");
    }
}

fn frame(id: u32, flags: Flags, msg: &Message) -> Frame {
    Frame::message(id, flags, msg).expect("encodes")
}

/// A relay serving a socket in `dir`, with its guest end and a connected
/// client past its handshake.
async fn relay_with_client(dir: &std::path::Path) -> (Addr<Relay>, UnixStream, UnixStream, Handshake) {
    let path = dir.join("agent.sock");
    let listener = bind_socket(&path).expect("binds");
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let peer = Peer { ready: Some(ready_tx), paused: false }.start();
    let peers = RelayPeers {
        agent_ready: peer.clone().recipient(),
        terminate: peer.clone().recipient(),
        set_paused: peer.recipient(),
    };
    let relay = Relay::new(listener, path.clone(), Arc::new(MonotonicClock::new()), peers, Arc::default()).start();
    let (host_end, guest_end) = std::os::unix::net::UnixStream::pair().expect("socketpair");
    relay.send(AttachGuest { channel: host_end }).await.expect("attached");
    guest_end.set_nonblocking(true).expect("nonblocking");
    let mut guest = UnixStream::from_std(guest_end).expect("tokio stream");
    let ready = Ready { protocol_version: PROTOCOL_VERSION, agent_version: "test".into(), boot: Default::default() };
    write_frame(&mut guest, &frame(CONTROL_ID, Flags::NONE, &Message::Ready(ready))).await.expect("ready");
    ready_rx.await.expect("the relay reports the agent ready");
    relay.send(OpenToClients).await.expect("opened");
    let mut client = UnixStream::connect(&path).await.expect("connects");
    let mut hs = [0u8; HANDSHAKE_LEN];
    client.read_exact(&mut hs).await.expect("handshake");
    let range = Handshake::decode(hs).expect("a range");
    let greeting = read_frame(&mut client).await.expect("reads").expect("the agent's Ready");
    assert!(matches!(greeting.decode_body(), Ok(Message::Ready(_))));
    (relay, guest, client, range)
}

#[test]
fn frames_the_guest_wrote_before_it_ended_reach_their_client_after_close_begins() {
    let dir = tempfile::tempdir().expect("tempdir");
    System::new().block_on(async {
        let (relay, mut guest, mut client, range) = relay_with_client(dir.path()).await;
        let id = range.id_start;
        let exec = ExecRequest { argv: vec!["sleep".into(), "30".into()], ..ExecRequest::default() };
        write_frame(&mut client, &frame(id, Flags::SESSION_START, &Message::ExecRequest(exec))).await.expect("exec");
        let request = read_frame(&mut guest).await.expect("reads").expect("the exec request reaches the guest");
        assert_eq!(request.id, id);

        // The guest writes its last frame and ends; its end is observed
        // (Lifecycle closes the relay) before the relay has read that frame:
        // the close is in the actor's mailbox before the channel's
        // readiness reaches the reader.
        let status = ExitStatus { code: Some(143), signal: None, oom_killed: false };
        write_frame(&mut guest, &frame(id, Flags::TERMINAL, &Message::ExecExited(status))).await.expect("exit");
        drop(guest);
        relay.send(CloseRelay).await.expect("closes");

        let last = read_frame(&mut client).await.expect("reads").expect("a terminal frame");
        assert_eq!(last.id, id);
        assert_eq!(last.decode_body().expect("decodes"), Message::ExecExited(status), "not aborted");
        assert!(read_frame(&mut client).await.expect("reads").is_none(), "then the relay closes the client");
    });
}

#[test]
fn a_channel_the_guest_side_keeps_open_is_read_to_its_last_frame_and_closed() {
    let dir = tempfile::tempdir().expect("tempdir");
    System::new().block_on(async {
        let (relay, mut guest, mut client, range) = relay_with_client(dir.path()).await;
        let (ended, open) = (range.id_start, range.id_start + 1);
        for id in [ended, open] {
            let exec = ExecRequest { argv: vec!["sleep".into(), "30".into()], ..ExecRequest::default() };
            write_frame(&mut client, &frame(id, Flags::SESSION_START, &Message::ExecRequest(exec)))
                .await
                .expect("exec");
            read_frame(&mut guest).await.expect("reads").expect("the exec request reaches the guest");
        }
        // A VMM may keep its end of the channel open after the guest ended:
        // what was written is routed, and the close does not wait for an
        // end of the channel that never comes.
        let status = ExitStatus { code: Some(0), signal: None, oom_killed: false };
        write_frame(&mut guest, &frame(ended, Flags::TERMINAL, &Message::ExecExited(status))).await.expect("exit");
        relay.send(CloseRelay).await.expect("closes");
        let mut last = std::collections::HashMap::new();
        while let Some(f) = read_frame(&mut client).await.expect("reads") {
            assert!(f.flags.contains(Flags::TERMINAL), "{f:?}");
            last.insert(f.id, f.decode_body().expect("decodes"));
        }
        assert_eq!(last.get(&ended), Some(&Message::ExecExited(status)));
        assert!(matches!(last.get(&open), Some(Message::SessionAborted { .. })), "{last:?}");
        drop(guest);
    });
}

#[test]
fn a_sandbox_request_is_answered_by_the_relay_and_never_reaches_the_guest() {
    let dir = tempfile::tempdir().expect("tempdir");
    System::new().block_on(async {
        let (relay, mut guest, mut client, range) = relay_with_client(dir.path()).await;
        let ask = |id: u32, request: SandboxRequest| frame(id, Flags::SESSION_START, &Message::SandboxRequest(request));
        let id = range.id_start;
        write_frame(&mut client, &ask(id, SandboxRequest::Pause)).await.expect("pause");
        let reply = read_frame(&mut client).await.expect("reads").expect("a reply");
        assert_eq!((reply.id, reply.flags), (id, Flags::TERMINAL));
        assert_eq!(reply.decode_body().expect("decodes"), Message::SandboxReply(Ok(())));
        assert!(relay.send(GetActivity).await.expect("activity").paused, "the watchdog sees it paused");

        // Lifecycle's refusal reaches the client as it was worded.
        write_frame(&mut client, &ask(id + 1, SandboxRequest::Pause)).await.expect("pause again");
        let reply = read_frame(&mut client).await.expect("reads").expect("a reply");
        assert_eq!(reply.decode_body().expect("decodes"), Message::SandboxReply(Err("already paused".into())));

        write_frame(&mut client, &ask(id + 2, SandboxRequest::Resume)).await.expect("resume");
        let reply = read_frame(&mut client).await.expect("reads").expect("a reply");
        assert_eq!(reply.decode_body().expect("decodes"), Message::SandboxReply(Ok(())));
        assert!(!relay.send(GetActivity).await.expect("activity").paused);

        // The guest saw none of it: the next thing it reads is an exec.
        let exec = ExecRequest { argv: vec!["true".into()], ..ExecRequest::default() };
        write_frame(&mut client, &frame(id + 3, Flags::SESSION_START, &Message::ExecRequest(exec)))
            .await
            .expect("exec");
        let first = read_frame(&mut guest).await.expect("reads").expect("a frame");
        assert_eq!(first.id, id + 3, "no request to the sandbox process was forwarded");
    });
}
