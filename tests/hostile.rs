//! Hostile peers against the standalone sandbox process (mock guest): what
//! they cost the host stays bounded — log lines, memory — and the other
//! clients are served whole and in order.

mod common;
#[path = "common/process.rs"]
mod process;

use alcove_protocol::{ExecRequest, Flags, Message};
use common::RawClient;
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
