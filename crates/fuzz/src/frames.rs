//! Frames as fuzz inputs, shared by the targets that speak the protocol
//! (`relay` through sockets, `route` to the routing table directly): an id
//! (control, raw, or inside the range of a client seen so far), any of the
//! four flags, and a body that is a valid message or raw bytes.

use alcove_protocol::{BootTimings, ExecRequest, Flags, Frame, FsRequest, Handshake, Message, Ready, CONTROL_ID};
use arbitrary::Arbitrary;

#[derive(Arbitrary, Clone, Debug)]
pub(crate) struct FrameSpec {
    pub(crate) id: IdSpec,
    pub(crate) flags: u8,
    pub(crate) body: BodySpec,
}

#[derive(Arbitrary, Clone, Debug)]
pub(crate) enum IdSpec {
    Control,
    /// An id in the range of the `client`-th client ever connected.
    InRange {
        client: u8,
        offset: u16,
    },
    Raw(u32),
}

#[derive(Arbitrary, Clone, Debug)]
pub(crate) enum BodySpec {
    Msg(MsgSpec),
    Raw(Vec<u8>),
}

#[derive(Arbitrary, Clone, Debug)]
pub(crate) enum MsgSpec {
    Exec {
        stdin: bool,
        stdout_pipe: bool,
    },
    Stdin(Vec<u8>),
    StdinEof,
    Stdout(Vec<u8>),
    Exited(i32),
    Credit(u32),
    Touch,
    Shutdown(u32),
    Heartbeat(u64, u32),
    Ready(u32),
    FsWrite(String),
    FsData(Vec<u8>),
    FsEnd,
    Aborted(String),
    Signal(i32),
    StdoutPipe,
    /// Pause (true) or resume the sandbox.
    Sandbox(bool),
}

impl MsgSpec {
    pub(crate) fn message(&self) -> Message {
        match self {
            MsgSpec::Exec { stdin, stdout_pipe } => Message::ExecRequest(ExecRequest {
                argv: vec!["true".into()],
                stdin: *stdin,
                stdout_pipe: *stdout_pipe,
                ..ExecRequest::default()
            }),
            MsgSpec::Stdin(d) => Message::ExecStdin { data: d.clone() },
            MsgSpec::StdinEof => Message::ExecStdinEof,
            MsgSpec::Stdout(d) => Message::ExecStdout { data: d.clone() },
            MsgSpec::Exited(code) => {
                Message::ExecExited(alcove_protocol::ExitStatus { code: Some(*code), signal: None, oom_killed: false })
            }
            MsgSpec::Credit(bytes) => Message::Credit { bytes: *bytes },
            MsgSpec::Touch => Message::Touch,
            MsgSpec::Shutdown(grace_ms) => Message::Shutdown { grace_ms: *grace_ms },
            MsgSpec::Heartbeat(seq, active_sessions) => {
                Message::Heartbeat { seq: *seq, active_sessions: *active_sessions }
            }
            MsgSpec::Ready(v) => Message::Ready(ready(*v)),
            MsgSpec::FsWrite(path) => Message::FsRequest(FsRequest::Write { path: path.clone(), mode: 0o644 }),
            MsgSpec::FsData(d) => Message::FsData { data: d.clone() },
            MsgSpec::FsEnd => Message::FsEnd,
            MsgSpec::Aborted(reason) => Message::SessionAborted { reason: reason.clone() },
            MsgSpec::Signal(signal) => Message::ExecSignal { signal: *signal },
            MsgSpec::StdoutPipe => Message::ExecStdoutPipe,
            MsgSpec::Sandbox(pause) => Message::SandboxRequest(if *pause {
                alcove_protocol::SandboxRequest::Pause
            } else {
                alcove_protocol::SandboxRequest::Resume
            }),
        }
    }
}

pub(crate) fn ready(protocol_version: u32) -> Ready {
    Ready { protocol_version, agent_version: "fuzz".into(), boot: BootTimings::default() }
}

impl FrameSpec {
    /// The frame, its `InRange` id resolved against `ranges` (the ranges
    /// handed to clients so far, oldest first).
    pub(crate) fn build(&self, ranges: &[Handshake]) -> Frame {
        let id = match &self.id {
            IdSpec::Control => CONTROL_ID,
            IdSpec::Raw(id) => *id,
            IdSpec::InRange { client, offset } => match ranges.get(usize::from(*client) % ranges.len().max(1)) {
                Some(r) => r.id_start + u32::from(*offset) % (r.id_end - r.id_start + 1),
                None => u32::from(*offset),
            },
        };
        let flags = Flags::from_bits(self.flags & 0b1111).expect("masked to known bits");
        let body = match &self.body {
            BodySpec::Msg(m) => alcove_protocol::encode_message(&m.message()).expect("small messages encode"),
            BodySpec::Raw(b) => b.clone(),
        };
        Frame::new(id, flags, body)
    }
}
