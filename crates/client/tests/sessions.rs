//! The client against an in-test fake relay + agent speaking the real
//! protocol over a Unix socket. The fake checks the client's behaviour (ids
//! in range and never shared by two open sessions, data chunks within
//! MAX_CHUNK, never more than INITIAL_WINDOW un-credited bytes) and records
//! what it saw in `Stats` for the tests to assert.
//!
//! Over 600 lines on purpose: one area (the client's session rules) against one
//! fake, in one file, as the project keeps one integration test file per area.

use alcove_client::protocol::async_io::{read_frame, write_frame};
use alcove_client::protocol::fdpass::send_with_fd;
use alcove_client::protocol::{
    BootTimings, DirEntry, ExecRequest, ExitStatus, FileKind, FileStat, Flags, Frame, FsError, FsErrorKind, FsReply,
    FsRequest, Handshake, HandshakeError, Message, Ready, SpawnError, SpawnErrorKind, TtySize, INITIAL_WINDOW,
    MAX_CHUNK, PROTOCOL_VERSION,
};
use alcove_client::{Client, ClientError, ExecEvent, ExecOptions};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;

// ---------------------------------------------------------------- the fake

#[derive(Default, Debug)]
struct Stats {
    /// Session ids outside the granted range.
    out_of_range: Vec<u32>,
    /// SESSION_START on an id whose session was still open.
    reused_open: Vec<u32>,
    /// Every session id opened.
    ids_opened: Vec<u32>,
    /// Data frames larger than MAX_CHUNK of content.
    oversized_chunks: usize,
    /// Largest un-credited stdin / file content in flight on one session.
    max_in_flight: usize,
    /// Un-credited bytes at each point where the fake found the client
    /// waiting for credit.
    stalls: Vec<usize>,
    touches: u32,
    shutdown_grace: Option<u32>,
    signals: Vec<i32>,
    resizes: Vec<TtySize>,
    requests: Vec<ExecRequest>,
    files: BTreeMap<String, Vec<u8>>,
    dirs: BTreeSet<String>,
    /// The fake's write into a handed-over stdout pipe failed (EPIPE).
    pipe_write_failed: bool,
    /// Listings served as they are, in place of the computed ones: a
    /// hostile agent's names.
    listings: BTreeMap<String, Vec<DirEntry>>,
}

type Shared = Arc<Mutex<Stats>>;
type Routes = Arc<Mutex<HashMap<u32, mpsc::UnboundedSender<Frame>>>>;

struct Fake {
    path: PathBuf,
    stats: Shared,
    _dir: tempfile::TempDir,
}

#[derive(Clone, Copy)]
struct FakeConfig {
    range: (u32, u32),
    version: u32,
}

impl Default for FakeConfig {
    fn default() -> Self {
        FakeConfig { range: (100, 131), version: PROTOCOL_VERSION }
    }
}

impl Fake {
    async fn start(cfg: FakeConfig) -> Fake {
        let dir = tempfile::tempdir().expect("tempdir");
        // A sandbox's socket directory: the client trusts no other.
        std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o700)).expect("chmod");
        let path = dir.path().join("agent.sock");
        let listener = UnixListener::bind(&path).expect("bind");
        let stats: Shared = Arc::default();
        stats.lock().unwrap().dirs.insert("/".into());
        let st = stats.clone();
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                tokio::spawn(serve(sock, cfg, st.clone()));
            }
        });
        Fake { path, stats, _dir: dir }
    }

    async fn client(&self) -> Client {
        Client::connect_path(&self.path).await.expect("connects")
    }

    fn stats(&self) -> std::sync::MutexGuard<'_, Stats> {
        self.stats.lock().unwrap()
    }

    fn assert_clean(&self) {
        let s = self.stats();
        assert!(s.out_of_range.is_empty(), "ids out of range: {:?}", s.out_of_range);
        assert!(s.reused_open.is_empty(), "ids reused while open: {:?}", s.reused_open);
        assert_eq!(s.oversized_chunks, 0, "chunks above MAX_CHUNK");
        assert!(s.max_in_flight <= INITIAL_WINDOW as usize, "window exceeded: {}", s.max_in_flight);
    }
}

fn ready(version: u32) -> Message {
    Message::Ready(Ready { protocol_version: version, agent_version: "fake-9.9".into(), boot: BootTimings::default() })
}

fn frame(id: u32, flags: Flags, msg: &Message) -> Frame {
    Frame::message(id, flags, msg).expect("encodes")
}

/// One session's side of the fake agent.
struct Sess {
    id: u32,
    out: mpsc::UnboundedSender<(Frame, Option<OwnedFd>)>,
    rx: mpsc::UnboundedReceiver<Frame>,
    routes: Routes,
    stats: Shared,
    /// Closes the whole connection when sent.
    kill_conn: mpsc::UnboundedSender<()>,
}

impl Sess {
    fn send(&self, msg: Message) {
        let _ = self.out.send((frame(self.id, Flags::NONE, &msg), None));
    }

    /// Hands `pipe` to the client as the command's stdout, as a jail's agent does.
    fn send_stdout_pipe(&self, pipe: OwnedFd) {
        let _ = self.out.send((frame(self.id, Flags::FD, &Message::ExecStdoutPipe), Some(pipe)));
    }

    /// Sends the terminal frame; the session is unrouted first so that the
    /// client may reuse the id as soon as it sees this frame.
    fn finish(&self, msg: Message) {
        self.routes.lock().unwrap().remove(&self.id);
        let _ = self.out.send((frame(self.id, Flags::TERMINAL, &msg), None));
    }

    async fn next(&mut self) -> Option<Message> {
        self.rx.recv().await.map(|f| f.decode_body().expect("client frame decodes"))
    }

    /// Accounts for one data frame of the client; returns its wire length.
    fn account(&self, wire: usize, data_len: usize, in_flight: &mut usize) {
        *in_flight += wire;
        let mut s = self.stats.lock().unwrap();
        s.max_in_flight = s.max_in_flight.max(*in_flight);
        if data_len > MAX_CHUNK {
            s.oversized_chunks += 1;
        }
    }
}

async fn serve(sock: UnixStream, cfg: FakeConfig, stats: Shared) {
    let (mut rd, mut wr) = sock.into_split();
    let range = Handshake { id_start: cfg.range.0, id_end: cfg.range.1 };
    // Raw bytes: the fake may hand out ranges the client must refuse.
    let mut raw = Vec::new();
    raw.extend_from_slice(&cfg.range.0.to_be_bytes());
    raw.extend_from_slice(&cfg.range.1.to_be_bytes());
    if wr.write_all(&raw).await.is_err() {
        return;
    }
    if write_frame(&mut wr, &frame(0, Flags::NONE, &ready(cfg.version))).await.is_err() {
        return;
    }
    let (out, mut out_rx) = mpsc::unbounded_channel::<(Frame, Option<OwnedFd>)>();
    let writer = tokio::spawn(async move {
        while let Some((f, fd)) = out_rx.recv().await {
            let sent = match fd {
                Some(fd) => {
                    let mut bytes = Vec::new();
                    f.encode_into(&mut bytes).expect("encodes");
                    send_with_fd(wr.as_ref(), &bytes, fd.as_fd()).await
                }
                None => write_frame(&mut wr, &f).await,
            };
            if sent.is_err() {
                break;
            }
        }
    });
    let (kill_tx, mut kill_rx) = mpsc::unbounded_channel::<()>();
    let routes: Routes = Arc::default();
    loop {
        let f = tokio::select! {
            f = read_frame(&mut rd) => f,
            _ = kill_rx.recv() => break,
        };
        let Ok(Some(f)) = f else { break };
        if f.id == 0 {
            match f.decode_body().expect("control decodes") {
                Message::Touch => stats.lock().unwrap().touches += 1,
                Message::Shutdown { grace_ms } if f.flags.contains(Flags::SHUTDOWN) => {
                    stats.lock().unwrap().shutdown_grace = Some(grace_ms);
                    break;
                }
                other => panic!("unexpected control message {other:?}"),
            }
            continue;
        }
        if !range.contains(f.id) {
            stats.lock().unwrap().out_of_range.push(f.id);
            continue;
        }
        if f.flags.contains(Flags::SESSION_START) {
            let (tx, rx) = mpsc::unbounded_channel();
            {
                let mut r = routes.lock().unwrap();
                let mut s = stats.lock().unwrap();
                s.ids_opened.push(f.id);
                if r.insert(f.id, tx).is_some() {
                    s.reused_open.push(f.id);
                }
            }
            let sess = Sess {
                id: f.id,
                out: out.clone(),
                rx,
                routes: routes.clone(),
                stats: stats.clone(),
                kill_conn: kill_tx.clone(),
            };
            let request = f.decode_body().expect("request decodes");
            tokio::spawn(run_session(sess, request));
        } else if let Some(tx) = routes.lock().unwrap().get(&f.id) {
            let _ = tx.send(f);
        }
        // Frames for a session that already ended are dropped, as a relay
        // does.
    }
    writer.abort();
}

async fn run_session(s: Sess, request: Message) {
    match request {
        Message::ExecRequest(req) => {
            s.stats.lock().unwrap().requests.push(req.clone());
            run_exec(s, req).await
        }
        Message::FsRequest(req) => run_fs(s, req).await,
        other => panic!("unexpected session request {other:?}"),
    }
}

fn exited(code: i32) -> Message {
    Message::ExecExited(ExitStatus { code: Some(code), signal: None, oom_killed: false })
}

fn signalled(signal: i32) -> Message {
    Message::ExecExited(ExitStatus { code: None, signal: Some(signal), oom_killed: false })
}

fn spawn_failed(kind: SpawnErrorKind, message: &str) -> Message {
    Message::ExecFailed(SpawnError { kind, message: message.into() })
}

async fn run_exec(mut s: Sess, req: ExecRequest) {
    let argv: Vec<&str> = req.argv.iter().map(String::as_str).collect();
    match argv.as_slice() {
        ["notfound", ..] => return s.finish(spawn_failed(SpawnErrorKind::NotFound, "notfound: command not found")),
        ["denied", ..] => return s.finish(spawn_failed(SpawnErrorKind::PermissionDenied, "denied: permission denied")),
        ["badcwd", ..] => return s.finish(spawn_failed(SpawnErrorKind::BadCwd, "/nope: no such directory")),
        ["abort", ..] => return s.finish(Message::SessionAborted { reason: "the sandbox is stopping".into() }),
        _ => {}
    }
    s.send(Message::ExecStarted { pid: 4242 });
    match argv.as_slice() {
        ["echo", rest @ ..] => {
            s.send(Message::ExecStdout { data: format!("{}\n", rest.join(" ")).into_bytes() });
            s.finish(exited(0));
        }
        ["split"] => {
            s.send(Message::ExecStdout { data: b"out1".to_vec() });
            s.send(Message::ExecStderr { data: b"err1".to_vec() });
            s.send(Message::ExecStdout { data: b"out2".to_vec() });
            s.finish(exited(3));
        }
        ["killed"] => s.finish(signalled(9)),
        ["ticks", tag, n] => {
            let n: i32 = n.parse().expect("count");
            for i in 0..n {
                s.send(Message::ExecStdout { data: format!("{tag}:{i}\n").into_bytes() });
                s.send(Message::ExecStderr { data: format!("{tag}!{i}\n").into_bytes() });
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            s.finish(exited(n));
        }
        ["bigout", n] => {
            let n: usize = n.parse().expect("size");
            let data = pattern(n, 7);
            for c in data.chunks(MAX_CHUNK) {
                s.send(Message::ExecStdout { data: c.to_vec() });
            }
            s.finish(exited(0));
        }
        ["cat", mode] => cat(s, mode).await,
        ["pipeout", n, then] if req.stdout_pipe => {
            // n pattern bytes through a handed-over pipe; "hold" keeps the
            // write end open after the exit, as a background child would.
            let n: usize = n.parse().expect("size");
            let (r, w) = blocking_pipe();
            s.send_stdout_pipe(r);
            let hold = *then == "hold";
            let stats = s.stats.clone();
            let w = tokio::task::spawn_blocking(move || {
                use std::io::Write;
                let mut w = std::fs::File::from(w);
                let written = w.write_all(&pattern(n, 9));
                stats.lock().unwrap().pipe_write_failed = written.is_err();
                w
            })
            .await
            .expect("writer");
            s.finish(exited(0));
            if hold {
                tokio::time::sleep(Duration::from_secs(10)).await;
            }
            drop(w);
        }
        ["sleep"] => loop {
            match s.next().await {
                Some(Message::ExecSignal { signal }) => {
                    s.stats.lock().unwrap().signals.push(signal);
                    if signal == 9 {
                        return s.finish(signalled(9));
                    }
                }
                Some(Message::ExecResize(size)) => s.stats.lock().unwrap().resizes.push(size),
                Some(other) => panic!("sleep got {other:?}"),
                None => return,
            }
        },
        ["stubborn"] => {
            // Records signals but never ends: an unresponsive guest.
            while let Some(msg) = s.next().await {
                if let Message::ExecSignal { signal } = msg {
                    s.stats.lock().unwrap().signals.push(signal);
                }
            }
        }
        ["vanish"] => {
            s.send(Message::ExecStdout { data: b"partial".to_vec() });
            tokio::time::sleep(Duration::from_millis(20)).await;
            let _ = s.kill_conn.send(());
        }
        other => s.finish(spawn_failed(SpawnErrorKind::NotFound, &format!("{other:?}: unknown to the fake"))),
    }
}

/// Wire bytes of the largest stdin frame a client may send (MAX_CHUNK of
/// data plus the header and a few bytes of encoding).
const MAX_DATA_FRAME: usize = MAX_CHUNK + 64;

/// Echoes stdin to stdout. Modes: `credit` grants credit per frame;
/// `withhold` grants no credit until the client's window is too full for
/// another full chunk and the client has then stayed quiet for 100 ms (it
/// must be waiting for credit): then it grants everything; `never` drops the
/// connection at that point instead.
async fn cat(mut s: Sess, mode: &str) {
    let mut in_flight = 0usize;
    loop {
        let f = if mode != "credit" && in_flight + MAX_DATA_FRAME > INITIAL_WINDOW as usize {
            match tokio::time::timeout(Duration::from_millis(100), s.rx.recv()).await {
                Ok(f) => f,
                Err(_) => {
                    s.stats.lock().unwrap().stalls.push(in_flight);
                    if mode == "never" {
                        let _ = s.kill_conn.send(());
                        return;
                    }
                    let bytes = u32::try_from(in_flight).expect("fits");
                    in_flight = 0;
                    s.send(Message::Credit { bytes });
                    continue;
                }
            }
        } else {
            s.rx.recv().await
        };
        let Some(f) = f else { return };
        let wire = f.wire_len();
        match f.decode_body().expect("decodes") {
            Message::ExecStdin { data } => {
                s.account(wire, data.len(), &mut in_flight);
                if mode == "credit" {
                    in_flight = 0;
                    s.send(Message::Credit { bytes: wire as u32 });
                }
                s.send(Message::ExecStdout { data });
            }
            Message::ExecStdinEof => return s.finish(exited(0)),
            other => panic!("cat got {other:?}"),
        }
    }
}

fn fs_err(kind: FsErrorKind, message: String) -> Message {
    Message::FsResponse(Err(FsError { kind, message }))
}

fn done(bytes: u64) -> Message {
    Message::FsResponse(Ok(FsReply::Done { bytes }))
}

fn parent(p: &str) -> String {
    match p.rfind('/') {
        Some(0) | None => "/".into(),
        Some(i) => p[..i].into(),
    }
}

fn file_stat(kind: FileKind, size: u64) -> FileStat {
    FileStat { kind, size, mode: 0o644, uid: 0, gid: 0, mtime: 0, link_target: None }
}

async fn run_fs(mut s: Sess, req: FsRequest) {
    match req {
        FsRequest::Write { path, mode: _ } => {
            if path.starts_with("/ro/") {
                // Refuse at once, before reading any content.
                return s.finish(fs_err(FsErrorKind::PermissionDenied, format!("{path}: read-only file system")));
            }
            let mut content = Vec::new();
            let mut in_flight = 0;
            loop {
                let Some(f) = s.rx.recv().await else { return };
                let wire = f.wire_len();
                match f.decode_body().expect("decodes") {
                    Message::FsData { data } => {
                        s.account(wire, data.len(), &mut in_flight);
                        content.extend_from_slice(&data);
                        in_flight -= wire;
                        s.send(Message::Credit { bytes: wire as u32 });
                    }
                    Message::FsEnd => break,
                    other => panic!("write got {other:?}"),
                }
            }
            let n = content.len() as u64;
            s.stats.lock().unwrap().files.insert(path, content);
            s.finish(done(n));
        }
        FsRequest::Read { path } => {
            let content = s.stats.lock().unwrap().files.get(&path).cloned();
            let Some(content) = content else {
                return s.finish(fs_err(FsErrorKind::NotFound, format!("{path}: no such file")));
            };
            for c in content.chunks(MAX_CHUNK) {
                s.send(Message::FsData { data: c.to_vec() });
            }
            s.finish(done(content.len() as u64));
        }
        FsRequest::Stat { path } => {
            let st = s.stats.lock().unwrap();
            let reply = if let Some(c) = st.files.get(&path) {
                Message::FsResponse(Ok(FsReply::Stat(file_stat(FileKind::File, c.len() as u64))))
            } else if st.dirs.contains(&path) {
                Message::FsResponse(Ok(FsReply::Stat(file_stat(FileKind::Dir, 0))))
            } else {
                fs_err(FsErrorKind::NotFound, format!("{path}: no such file or directory"))
            };
            drop(st);
            s.finish(reply);
        }
        FsRequest::List { path } => {
            let st = s.stats.lock().unwrap();
            if let Some(entries) = st.listings.get(&path).cloned() {
                drop(st);
                return s.finish(Message::FsResponse(Ok(FsReply::List(entries))));
            }
            let mut entries: Vec<DirEntry> = st
                .files
                .iter()
                .filter(|(p, _)| parent(p) == path)
                .map(|(p, c)| DirEntry {
                    name: p.rsplit('/').next().unwrap_or("").into(),
                    stat: file_stat(FileKind::File, c.len() as u64),
                })
                .chain(st.dirs.iter().filter(|d| d.as_str() != "/" && parent(d) == path).map(|d| DirEntry {
                    name: d.rsplit('/').next().unwrap_or("").into(),
                    stat: file_stat(FileKind::Dir, 0),
                }))
                .collect();
            entries.sort_by(|a, b| a.name.cmp(&b.name));
            drop(st);
            s.finish(Message::FsResponse(Ok(FsReply::List(entries))));
        }
        FsRequest::Mkdir { path, parents, mode } => {
            assert_eq!(mode, 0o755);
            let mut st = s.stats.lock().unwrap();
            let reply = if !parents && !st.dirs.contains(&parent(&path)) {
                fs_err(FsErrorKind::NotFound, format!("{}: no such directory", parent(&path)))
            } else {
                let mut p = path.clone();
                while p != "/" {
                    st.dirs.insert(p.clone());
                    p = parent(&p);
                }
                done(0)
            };
            drop(st);
            s.finish(reply);
        }
        FsRequest::Remove { path, recursive } => {
            let mut st = s.stats.lock().unwrap();
            let has_children = st.files.keys().chain(st.dirs.iter()).any(|p| p.starts_with(&format!("{path}/")));
            let reply = if st.files.remove(&path).is_some() {
                done(0)
            } else if !st.dirs.contains(&path) {
                fs_err(FsErrorKind::NotFound, format!("{path}: no such file or directory"))
            } else if has_children && !recursive {
                fs_err(FsErrorKind::DirectoryNotEmpty, format!("{path}: directory not empty"))
            } else {
                let prefix = format!("{path}/");
                st.files.retain(|p, _| !p.starts_with(&prefix));
                st.dirs.retain(|p| p != &path && !p.starts_with(&prefix));
                done(0)
            };
            drop(st);
            s.finish(reply);
        }
        FsRequest::Rename { from, to } => {
            let mut st = s.stats.lock().unwrap();
            let reply = match st.files.remove(&from) {
                Some(c) => {
                    st.files.insert(to, c);
                    done(0)
                }
                None => fs_err(FsErrorKind::NotFound, format!("{from}: no such file")),
            };
            drop(st);
            s.finish(reply);
        }
        FsRequest::Copy { from, to } => {
            let mut st = s.stats.lock().unwrap();
            let reply = match st.files.get(&from).cloned() {
                Some(c) => {
                    let n = c.len() as u64;
                    st.files.insert(to, c);
                    done(n)
                }
                None => fs_err(FsErrorKind::NotFound, format!("{from}: no such file")),
            };
            drop(st);
            s.finish(reply);
        }
    }
}

/// Deterministic, non-repeating-looking test content.
fn pattern(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 3) as u8
        })
        .collect()
}

// ---------------------------------------------------------------- tests

/// Every test body runs under this bound so a flow-control bug shows up as a
/// failure, not a hang.
async fn bounded<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(30), f).await.expect("test finished in time")
}

fn opts(argv: &[&str]) -> ExecOptions {
    ExecOptions::new(argv.iter().copied())
}

#[tokio::test]
async fn handshake_yields_ready_and_range() {
    let fake = Fake::start(FakeConfig::default()).await;
    let client = fake.client().await;
    assert_eq!(client.ready().agent_version, "fake-9.9");
    assert_eq!(client.ready().protocol_version, PROTOCOL_VERSION);
    assert_eq!(client.id_range(), Handshake { id_start: 100, id_end: 131 });
    assert!(client.is_connected());
}

#[tokio::test]
async fn other_protocol_versions_are_refused() {
    let fake = Fake::start(FakeConfig { version: PROTOCOL_VERSION + 1, ..FakeConfig::default() }).await;
    let err = Client::connect_path(&fake.path).await.err().expect("refused");
    assert!(
        matches!(err, ClientError::Handshake(HandshakeError::VersionMismatch { theirs, ours }) if theirs == PROTOCOL_VERSION + 1 && ours == PROTOCOL_VERSION),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        format!(
            "handshake with the sandbox failed: the sandbox speaks protocol version {}, this build speaks {}",
            PROTOCOL_VERSION + 1,
            PROTOCOL_VERSION
        )
    );
}

#[tokio::test]
async fn bad_ranges_closed_handshakes_and_missing_sockets_are_errors() {
    let fake = Fake::start(FakeConfig { range: (0, 5), ..FakeConfig::default() }).await;
    let err = Client::connect_path(&fake.path).await.err().expect("refused");
    assert!(matches!(err, ClientError::Handshake(HandshakeError::BadRange(0, 5))), "{err:?}");

    // A relay that closes right after accepting (no free client slot).
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o700)).expect("chmod");
    let path = dir.path().join("full.sock");
    let listener = UnixListener::bind(&path).expect("bind");
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let _ = sock.write_all(&[0, 0]).await;
        }
    });
    let err = Client::connect_path(&path).await.err().expect("refused");
    assert!(matches!(err, ClientError::HandshakeClosed), "{err:?}");

    let missing = dir.path().join("missing.sock");
    let err = Client::connect_path(&missing).await.err().expect("refused");
    assert!(matches!(&err, ClientError::NoListener { path } if *path == missing), "{err:?}");
    assert_eq!(err.to_string(), format!("no sandbox is listening on {}", missing.display()));
}

#[tokio::test]
async fn exec_collects_stdout_stderr_and_exit_status() {
    bounded(async {
        let fake = Fake::start(FakeConfig::default()).await;
        let client = fake.client().await;

        let out = client.exec_output(opts(&["split"])).await.expect("runs");
        assert_eq!(out.stdout, b"out1out2");
        assert_eq!(out.stderr, b"err1");
        assert_eq!(out.status, ExitStatus { code: Some(3), signal: None, oom_killed: false });

        let out = client.exec_output(opts(&["echo", "hello", "world"])).await.expect("runs");
        assert_eq!(out.stdout, b"hello world\n");
        assert!(out.stderr.is_empty());
        assert_eq!(out.status.code, Some(0));

        let out = client.exec_output(opts(&["killed"])).await.expect("runs");
        assert_eq!(out.status, ExitStatus { code: None, signal: Some(9), oom_killed: false });

        // Multi-chunk output arrives whole and in order.
        let n = 3 * MAX_CHUNK + 1000;
        let out = client.exec_output(opts(&["bigout", &n.to_string()])).await.expect("runs");
        assert_eq!(out.stdout, pattern(n, 7));

        // The request carries every option.
        let mut o = opts(&["echo", "x"]);
        o.env = vec![("A".into(), "1".into())];
        o.cwd = Some("/work".into());
        o.user = Some("nobody".into());
        o.tty = Some(TtySize { rows: 24, cols: 80 });
        o.rlimits = vec![alcove_client::Rlimit { resource: "nofile".into(), soft: 64, hard: 128 }];
        client.exec_output(o.clone()).await.expect("runs");
        let last = fake.stats().requests.last().cloned().expect("recorded");
        assert_eq!(
            last,
            ExecRequest {
                argv: o.argv,
                env: o.env,
                cwd: o.cwd,
                user: o.user,
                tty: o.tty,
                stdin: false,
                rlimits: o.rlimits,
                stdout_pipe: false,
            }
        );
        fake.assert_clean();
    })
    .await
}

#[tokio::test]
async fn events_stream_in_order_starting_with_the_pid() {
    bounded(async {
        let fake = Fake::start(FakeConfig::default()).await;
        let client = fake.client().await;
        let mut session = client.exec(opts(&["split"])).await.expect("starts");
        assert_eq!(session.pid(), 4242);
        let mut events = Vec::new();
        while let Some(ev) = session.next_event().await {
            events.push(ev.expect("event"));
        }
        assert_eq!(
            events,
            vec![
                ExecEvent::Started { pid: 4242 },
                ExecEvent::Stdout(b"out1".to_vec()),
                ExecEvent::Stderr(b"err1".to_vec()),
                ExecEvent::Stdout(b"out2".to_vec()),
                ExecEvent::Exited(ExitStatus { code: Some(3), signal: None, oom_killed: false }),
            ]
        );
        assert!(session.next_event().await.is_none(), "nothing after Exited");
    })
    .await
}

#[tokio::test]
async fn ids_stay_in_the_granted_range_and_are_recycled() {
    bounded(async {
        let fake = Fake::start(FakeConfig { range: (100, 103), ..FakeConfig::default() }).await;
        let client = fake.client().await;
        for i in 0..10 {
            let out = client.exec_output(opts(&["echo", &i.to_string()])).await.expect("runs");
            assert_eq!(out.stdout, format!("{i}\n").into_bytes());
        }
        // Four open sessions use the whole range; a fifth is refused.
        let mut open = Vec::new();
        for _ in 0..4 {
            open.push(client.exec(opts(&["sleep"])).await.expect("starts"));
        }
        let err = client.exec(opts(&["sleep"])).await.err().expect("no id left");
        assert!(matches!(err, ClientError::NoFreeIds(4)), "{err:?}");
        assert_eq!(err.to_string(), "all 4 session ids granted to this connection are in use");
        let ids: BTreeSet<u32> = open.iter().map(|s| s.id()).collect();
        assert_eq!(ids, (100..=103).collect());
        // Ending one frees its id.
        let first = open.remove(0);
        let freed = first.id();
        first.signal(9).expect("signal sent");
        assert_eq!(first.wait().await.expect("ends").signal, Some(9));
        let again = client.exec(opts(&["sleep"])).await.expect("starts");
        assert_eq!(again.id(), freed);
        for s in open.into_iter().chain([again]) {
            s.signal(9).expect("signal sent");
            s.wait().await.expect("ends");
        }
        let seen = fake.stats().ids_opened.clone();
        assert_eq!(seen.len(), 15);
        assert!(seen.iter().all(|id| (100..=103).contains(id)), "{seen:?}");
        fake.assert_clean();
    })
    .await
}

#[tokio::test]
async fn stdin_beyond_the_window_waits_for_credit() {
    bounded(async {
        let fake = Fake::start(FakeConfig::default()).await;
        let client = fake.client().await;
        let input = pattern(3 * INITIAL_WINDOW as usize + 12_345, 3);
        let out = client.exec_output_with_input(opts(&["cat", "withhold"]), &input).await.expect("runs");
        assert_eq!(out.status.code, Some(0));
        assert!(out.stdout == input, "stdin arrived intact ({} of {} bytes)", out.stdout.len(), input.len());
        let s = fake.stats();
        // The fake granted no credit until the window was full, so a client
        // that did not wait would have exceeded it; one that waited too early
        // would have hung (and hit `bounded`).
        assert!(s.max_in_flight <= INITIAL_WINDOW as usize, "{} in flight", s.max_in_flight);
        assert!(s.max_in_flight + MAX_DATA_FRAME > INITIAL_WINDOW as usize, "window used: {}", s.max_in_flight);
        assert!(s.stalls.len() >= 3, "the client waited for credit {} times", s.stalls.len());
        assert!(
            s.stalls.iter().all(|b| *b <= INITIAL_WINDOW as usize && b + MAX_DATA_FRAME > INITIAL_WINDOW as usize),
            "{:?}",
            s.stalls
        );
        drop(s);
        fake.assert_clean();
    })
    .await
}

#[tokio::test]
async fn stdin_writer_pumps_concurrently_with_output() {
    bounded(async {
        let fake = Fake::start(FakeConfig::default()).await;
        let client = fake.client().await;
        let mut o = opts(&["cat", "credit"]);
        o.stdin = true;
        let session = client.exec(o).await.expect("starts");
        let mut writer = session.stdin_writer();
        let (_input, output) = session.split();
        let input = pattern(2 * INITIAL_WINDOW as usize + 77, 11);
        let feed = {
            let input = input.clone();
            tokio::spawn(async move {
                let mut src = &input[..];
                let n = tokio::io::copy(&mut src, &mut writer).await.expect("copied");
                writer.shutdown().await.expect("stdin closed");
                n
            })
        };
        let out = output.collect().await.expect("collected");
        assert_eq!(feed.await.expect("joins"), input.len() as u64);
        assert_eq!(out.stdout.len(), input.len());
        assert!(out.stdout == input);
        fake.assert_clean();
    })
    .await
}

#[tokio::test]
async fn stdin_needs_the_stdin_option() {
    bounded(async {
        let fake = Fake::start(FakeConfig::default()).await;
        let client = fake.client().await;
        let session = client.exec(opts(&["sleep"])).await.expect("starts");
        let err = session.write_stdin(b"x").await.expect_err("refused");
        assert!(matches!(err, ClientError::StdinNotRequested), "{err:?}");
        session.signal(9).expect("sent");
        session.wait().await.expect("ends");
    })
    .await
}

#[tokio::test]
async fn spawn_failures_keep_their_kind() {
    bounded(async {
        let fake = Fake::start(FakeConfig::default()).await;
        let client = fake.client().await;
        for (cmd, kind) in [
            ("notfound", SpawnErrorKind::NotFound),
            ("denied", SpawnErrorKind::PermissionDenied),
            ("badcwd", SpawnErrorKind::BadCwd),
        ] {
            let err = client.exec(opts(&[cmd])).await.err().expect("fails");
            match &err {
                ClientError::Spawn(e) => assert_eq!(e.kind, kind),
                other => panic!("{cmd}: {other:?}"),
            }
            assert!(
                err.to_string().starts_with(&format!("could not start the command ({}): ", kind.as_str())),
                "{err}"
            );
        }
        let err = client.exec_output(opts(&["notfound"])).await.expect_err("fails");
        assert_eq!(err.to_string(), "could not start the command (not_found): notfound: command not found");
        // The failed sessions released their ids.
        client.exec_output(opts(&["echo"])).await.expect("runs");
        fake.assert_clean();
    })
    .await
}

#[tokio::test]
async fn timeouts_kill_the_command() {
    bounded(async {
        let fake = Fake::start(FakeConfig::default()).await;
        let client = fake.client().await;
        let mut o = opts(&["sleep"]);
        o.timeout = Some(Duration::from_millis(150));
        let t0 = Instant::now();
        let err = client.exec_output(o).await.expect_err("times out");
        let took = t0.elapsed();
        assert!(matches!(err, ClientError::Timeout(d) if d == Duration::from_millis(150)), "{err:?}");
        assert_eq!(err.to_string(), "the command did not finish within 150ms and was killed");
        assert!(took >= Duration::from_millis(150) && took < Duration::from_secs(2), "{took:?}");
        assert_eq!(fake.stats().signals, vec![9]);
        // A command that ends in time is not affected.
        let mut o = opts(&["echo", "quick"]);
        o.timeout = Some(Duration::from_secs(5));
        assert_eq!(client.exec_output(o).await.expect("runs").stdout, b"quick\n");
    })
    .await
}

#[tokio::test]
async fn timeouts_give_up_after_the_kill_grace_when_the_guest_is_silent() {
    bounded(async {
        let fake = Fake::start(FakeConfig::default()).await;
        let client = fake.client().await;
        let mut o = opts(&["stubborn"]);
        o.timeout = Some(Duration::from_millis(50));
        let t0 = Instant::now();
        let err = client.exec_output(o).await.expect_err("times out");
        let took = t0.elapsed();
        assert!(matches!(err, ClientError::Timeout(_)), "{err:?}");
        let grace = alcove_client::exec::KILL_GRACE;
        assert!(took >= grace && took < grace + Duration::from_secs(1), "{took:?}");
        assert_eq!(fake.stats().signals, vec![9]);
    })
    .await
}

#[tokio::test]
async fn signals_and_resizes_reach_the_session() {
    bounded(async {
        let fake = Fake::start(FakeConfig::default()).await;
        let client = fake.client().await;
        let session = client.exec(opts(&["sleep"])).await.expect("starts");
        session.resize(40, 120).expect("sent");
        session.signal(15).expect("sent");
        session.signal(9).expect("sent");
        let id = session.id();
        let input = session.input();
        assert_eq!(session.wait().await.expect("ends").signal, Some(9));
        assert_eq!(fake.stats().signals, vec![15, 9]);
        assert_eq!(fake.stats().resizes, vec![TtySize { rows: 40, cols: 120 }]);
        // A finished session takes no more input.
        let err = input.signal(2).expect_err("closed");
        assert!(matches!(err, ClientError::SessionClosed), "{err:?} on {id}");
    })
    .await
}

#[tokio::test]
async fn file_content_round_trips_in_many_chunks() {
    bounded(async {
        let fake = Fake::start(FakeConfig::default()).await;
        let client = fake.client().await;
        let content = pattern(2 * INITIAL_WINDOW as usize + 5 * MAX_CHUNK + 123, 5);
        let n = client.write_file("/data.bin", 0o600, &content).await.expect("written");
        assert_eq!(n, content.len() as u64);
        assert!(fake.stats().files.get("/data.bin") == Some(&content), "the fake holds the content");
        assert!(client.read_file("/data.bin").await.expect("read") == content);

        let mut sink = Vec::new();
        let n = client.read_file_to("/data.bin", &mut sink).await.expect("streamed");
        assert_eq!(n, content.len() as u64);
        assert!(sink == content);

        // From an AsyncRead source.
        let mut src = &content[..1000];
        client.write_file_from("/small", 0o644, &mut src).await.expect("written");
        assert_eq!(client.read_file("/small").await.expect("read"), &content[..1000]);
        fake.assert_clean();
    })
    .await
}

#[tokio::test]
async fn file_operations_map_replies_and_errors() {
    bounded(async {
        let fake = Fake::start(FakeConfig::default()).await;
        let client = fake.client().await;
        client.mkdir("/a/b", true).await.expect("mkdir -p");
        let err = client.mkdir("/x/y", false).await.expect_err("no parent");
        assert!(matches!(&err, ClientError::Fs(e) if e.kind == FsErrorKind::NotFound), "{err:?}");
        client.write_file("/a/b/f", 0o644, b"hello").await.expect("written");
        assert_eq!(client.copy("/a/b/f", "/a/b/g").await.expect("copied"), 5);
        client.rename("/a/b/g", "/a/h").await.expect("renamed");
        let st = client.stat("/a/b/f").await.expect("stat");
        assert_eq!((st.kind, st.size), (FileKind::File, 5));
        assert_eq!(client.stat("/a").await.expect("stat").kind, FileKind::Dir);
        let names: Vec<(String, FileKind)> =
            client.list("/a").await.expect("list").into_iter().map(|e| (e.name, e.stat.kind)).collect();
        assert_eq!(names, vec![("b".to_string(), FileKind::Dir), ("h".to_string(), FileKind::File)]);

        let err = client.remove("/a", false).await.expect_err("not empty");
        assert!(matches!(&err, ClientError::Fs(e) if e.kind == FsErrorKind::DirectoryNotEmpty), "{err:?}");
        assert_eq!(err.to_string(), "file operation failed: /a: directory not empty");
        client.remove("/a", true).await.expect("removed");
        let err = client.read_file("/a/h").await.expect_err("gone");
        assert!(matches!(&err, ClientError::Fs(e) if e.kind == FsErrorKind::NotFound), "{err:?}");
        let err = client.stat("/a").await.expect_err("gone");
        assert!(matches!(&err, ClientError::Fs(e) if e.kind == FsErrorKind::NotFound), "{err:?}");

        // An early refusal ends a large write without waiting for credit.
        let big = pattern(3 * INITIAL_WINDOW as usize, 1);
        let err = client.write_file("/ro/file", 0o644, &big).await.expect_err("refused");
        assert!(matches!(&err, ClientError::Fs(e) if e.kind == FsErrorKind::PermissionDenied), "{err:?}");
        fake.assert_clean();
    })
    .await
}

#[tokio::test]
async fn concurrent_sessions_share_one_connection() {
    bounded(async {
        let fake = Fake::start(FakeConfig::default()).await;
        let client = fake.client().await;
        let mut tasks = tokio::task::JoinSet::new();
        for t in 0..16 {
            let client = client.clone();
            tasks.spawn(async move {
                let n = 5 + t % 7;
                let out = client.exec_output(opts(&["ticks", &format!("s{t}"), &n.to_string()])).await.expect("runs");
                (t, n, out)
            });
        }
        // File transfers run alongside.
        let content = pattern(3 * MAX_CHUNK, 9);
        let fs = {
            let client = client.clone();
            let content = content.clone();
            tokio::spawn(async move {
                client.write_file("/c", 0o644, &content).await.expect("written");
                client.read_file("/c").await.expect("read")
            })
        };
        let mut seen = 0;
        while let Some(res) = tasks.join_next().await {
            let (t, n, out) = res.expect("joins");
            let want_out: String = (0..n).map(|i| format!("s{t}:{i}\n")).collect();
            let want_err: String = (0..n).map(|i| format!("s{t}!{i}\n")).collect();
            assert_eq!(String::from_utf8(out.stdout).expect("utf8"), want_out);
            assert_eq!(String::from_utf8(out.stderr).expect("utf8"), want_err);
            assert_eq!(out.status.code, Some(n));
            seen += 1;
        }
        assert_eq!(seen, 16);
        assert!(fs.await.expect("joins") == content);
        fake.assert_clean();
    })
    .await
}

#[tokio::test]
async fn losing_the_connection_fails_open_sessions() {
    bounded(async {
        let fake = Fake::start(FakeConfig::default()).await;
        let client = fake.client().await;
        let mut session = client.exec(opts(&["vanish"])).await.expect("starts");
        assert_eq!(session.next_event().await.expect("event").expect("ok"), ExecEvent::Started { pid: 4242 });
        assert_eq!(session.next_event().await.expect("event").expect("ok"), ExecEvent::Stdout(b"partial".to_vec()));
        let err = session.next_event().await.expect("event").expect_err("disconnected");
        assert!(matches!(err, ClientError::Disconnected), "{err:?}");
        assert_eq!(err.to_string(), "the connection to the sandbox was lost");
        client.closed().await;
        assert!(!client.is_connected());
        let err = client.exec_output(opts(&["echo"])).await.expect_err("disconnected");
        assert!(matches!(err, ClientError::Disconnected), "{err:?}");
        assert!(matches!(client.touch(), Err(ClientError::Disconnected)));

        // A writer blocked on a full window is woken by the loss too.
        let client = fake.client().await;
        let mut o = opts(&["cat", "never"]);
        o.stdin = true;
        let (input, output) = client.exec(o).await.expect("starts").split();
        let collect = tokio::spawn(output.collect());
        let err = input.write_stdin(&pattern(2 * INITIAL_WINDOW as usize, 2)).await.expect_err("disconnected");
        assert!(matches!(err, ClientError::Disconnected), "{err:?}");
        assert!(matches!(collect.await.expect("joins"), Err(ClientError::Disconnected)));
        assert_eq!(fake.stats().stalls.len(), 1);
        fake.assert_clean();
    })
    .await
}

#[tokio::test]
async fn aborted_sessions_report_the_reason() {
    bounded(async {
        let fake = Fake::start(FakeConfig::default()).await;
        let client = fake.client().await;
        let err = client.exec_output(opts(&["abort"])).await.expect_err("aborted");
        assert!(matches!(&err, ClientError::Aborted(r) if r == "the sandbox is stopping"), "{err:?}");
        assert_eq!(err.to_string(), "the sandbox aborted the session: the sandbox is stopping");
        assert!(client.is_connected());
    })
    .await
}

#[tokio::test]
async fn touch_and_shutdown_use_the_control_id() {
    bounded(async {
        let fake = Fake::start(FakeConfig::default()).await;
        let client = fake.client().await;
        client.touch().expect("sent");
        client.touch().expect("sent");
        // Round-trip a session so both touches have been read.
        client.exec_output(opts(&["echo"])).await.expect("runs");
        assert_eq!(fake.stats().touches, 2);
        client.shutdown(1500).await.expect("shut down");
        assert_eq!(fake.stats().shutdown_grace, Some(1500));
        assert!(!client.is_connected());
    })
    .await
}

// ---------------------------------------------------------- stdout sinks

/// A pipe (blocking, as a shell gives one): (read end, write end).
fn blocking_pipe() -> (std::os::fd::OwnedFd, std::os::fd::OwnedFd) {
    use std::os::fd::FromRawFd;
    let mut fds = [0; 2];
    // SAFETY: fds is a valid two-element array.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: pipe2 returned two fresh descriptors we now own.
    unsafe { (std::os::fd::OwnedFd::from_raw_fd(fds[0]), std::os::fd::OwnedFd::from_raw_fd(fds[1])) }
}

/// Reads a pipe to its end on a thread.
fn drain(r: std::os::fd::OwnedFd) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        use std::io::Read;
        let mut out = Vec::new();
        std::fs::File::from(r).read_to_end(&mut out).expect("reads the pipe");
        out
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stdout_sink_gets_the_output_in_order_and_the_events_do_not() {
    bounded(async {
        let fake = Fake::start(FakeConfig::default()).await;
        let client = fake.client().await;
        let (r, w) = blocking_pipe();
        let reader = drain(r);
        let mut o = opts(&["bigout", &(3 * MAX_CHUNK + 1000).to_string()]);
        o.stdout_sink = Some(alcove_client::OutputSink::for_pipe(w).expect("a blocking pipe is a sink"));
        let mut session = client.exec(o.clone()).await.expect("runs");
        let mut stdout_events = 0;
        let status = loop {
            match session.next_event().await.expect("an event").expect("no error") {
                ExecEvent::Stdout(_) => stdout_events += 1,
                ExecEvent::Exited(status) => break status,
                _ => {}
            }
        };
        assert_eq!(status.code, Some(0));
        assert_eq!(stdout_events, 0, "stdout went to the events as well");
        // Small frames and stderr on the same session: stderr stays an event.
        o.argv = vec!["split".into()];
        let out = client.exec_output(o).await.expect("runs");
        assert_eq!((out.stdout.as_slice(), out.stderr.as_slice()), (&b""[..], &b"err1"[..]));
        drop(session);
        let mut want = pattern(3 * MAX_CHUNK + 1000, 7);
        want.extend_from_slice(b"out1out2");
        let got = reader.join().expect("reader");
        assert!(got == want, "the pipe got {} bytes, not the output in order", got.len());
        fake.assert_clean();
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_whose_reader_left_drops_output_but_keeps_the_connection() {
    bounded(async {
        let fake = Fake::start(FakeConfig::default()).await;
        let client = fake.client().await;
        let (r, w) = blocking_pipe();
        drop(r);
        let mut o = opts(&["bigout", &(1 << 20).to_string()]);
        o.stdout_sink = alcove_client::OutputSink::for_pipe(w);
        assert!(o.stdout_sink.is_some());
        let out = client.exec_output(o).await.expect("runs to its end");
        assert_eq!(out.status.code, Some(0));
        // The framing survived: the next session works.
        let out = client.exec_output(opts(&["echo", "still", "here"])).await.expect("runs");
        assert_eq!(out.stdout, b"still here\n");
        fake.assert_clean();
    })
    .await
}

#[test]
fn only_blocking_pipes_are_sinks() {
    let file = tempfile::tempfile().expect("a file");
    assert!(alcove_client::OutputSink::for_pipe(file.into()).is_none(), "a file");
    let (a, _b) = std::os::unix::net::UnixStream::pair().expect("sockets");
    assert!(alcove_client::OutputSink::for_pipe(a.into()).is_none(), "a socket");
    let (_r, w) = blocking_pipe();
    // SAFETY: F_SETFL on a descriptor we own.
    unsafe { libc::fcntl(std::os::fd::AsRawFd::as_raw_fd(&w), libc::F_SETFL, libc::O_NONBLOCK) };
    assert!(alcove_client::OutputSink::for_pipe(w).is_none(), "a non-blocking pipe");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handed_over_stdout_pipe_reaches_the_sink_before_exited() {
    bounded(async {
        let fake = Fake::start(FakeConfig::default()).await;
        let client = fake.client().await;
        let (r, w) = blocking_pipe();
        let reader = drain(r);
        let len = 5 * 1024 * 1024 + 17;
        let mut o = opts(&["pipeout", &len.to_string(), "close"]);
        o.stdout_sink = Some(alcove_client::OutputSink::for_pipe(w).expect("a blocking pipe is a sink"));
        let out = client.exec_output(o).await.expect("runs");
        assert_eq!(out.status.code, Some(0));
        assert!(out.stdout.is_empty(), "stdout went to the sink, not the events");
        drop(client);
        let got = reader.join().expect("reader");
        assert!(got == pattern(len, 9), "the sink got {} bytes, not the pipe's {len} in order", got.len());
        assert!(fake.stats().requests[0].stdout_pipe, "a session with a sink asks for the pipe");
        fake.assert_clean();
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_sessions_with_a_sink_ask_for_the_pipe() {
    bounded(async {
        let fake = Fake::start(FakeConfig::default()).await;
        let client = fake.client().await;
        client.exec_output(opts(&["echo", "x"])).await.expect("runs");
        assert!(!fake.stats().requests[0].stdout_pipe);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipe_held_open_after_the_exit_is_given_up_as_the_agent_would() {
    bounded(async {
        let fake = Fake::start(FakeConfig::default()).await;
        let client = fake.client().await;
        let (r, w) = blocking_pipe();
        let reader = drain(r);
        let mut o = opts(&["pipeout", "1000", "hold"]);
        o.stdout_sink = alcove_client::OutputSink::for_pipe(w);
        let started = Instant::now();
        let out = client.exec_output(o).await.expect("runs");
        let took = started.elapsed();
        assert_eq!(out.status.code, Some(0));
        // The fake holds the pipe for 10 s; the client gives it up after
        // the drain grace once it is empty.
        assert!(
            took >= alcove_client::protocol::OUTPUT_DRAIN_GRACE && took < Duration::from_secs(5),
            "Exited came after {took:?}"
        );
        drop(client);
        assert!(reader.join().expect("reader") == pattern(1000, 9));
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_whose_reader_left_closes_the_handed_over_pipe() {
    bounded(async {
        let fake = Fake::start(FakeConfig::default()).await;
        let client = fake.client().await;
        let (r, w) = blocking_pipe();
        drop(r);
        let mut o = opts(&["pipeout", &(4 << 20).to_string(), "close"]);
        o.stdout_sink = alcove_client::OutputSink::for_pipe(w);
        let out = client.exec_output(o).await.expect("runs to its end");
        assert_eq!(out.status.code, Some(0));
        assert!(fake.stats().pipe_write_failed, "the command's writes failed as into a closed pipe");
        let out = client.exec_output(opts(&["echo", "still", "here"])).await.expect("runs");
        assert_eq!(out.stdout, b"still here\n");
    })
    .await
}

// ------------------------------------------------- copying out of the guest

#[tokio::test]
async fn copy_out_refuses_names_that_are_not_one_component() {
    bounded(async {
        for bad in ["../x", "/abs", "a/b", "..", ".", ""] {
            let fake = Fake::start(FakeConfig::default()).await;
            {
                let mut st = fake.stats();
                st.dirs.insert("/p".into());
                st.files.insert("/p/ok".into(), b"fine".to_vec());
                // Whatever the host might read for the bad name.
                st.files.insert(format!("/p/{bad}"), b"escaped".to_vec());
                let entries = vec![
                    DirEntry { name: bad.to_string(), stat: file_stat(FileKind::File, 7) },
                    DirEntry { name: "ok".into(), stat: file_stat(FileKind::File, 4) },
                ];
                st.listings.insert("/p".into(), entries);
            }
            let client = fake.client().await;
            let root = tempfile::tempdir().expect("tempdir");
            let dest = root.path().join("a/b/dest");
            std::fs::create_dir_all(&dest).expect("mkdir");
            let err = client.copy_out("/p", &dest, "p").await.expect_err(bad);
            assert!(
                matches!(&err, ClientError::UnsafeName { name, dir, .. } if name == bad && dir == "/p"),
                "{bad:?}: {err:?}"
            );
            let text = err.to_string();
            assert!(text.contains(&format!("{bad:?}")) && !text.contains('\n'), "{text}");
            // Nothing named by the guest was written anywhere: the tree
            // holds only the directories made above and the copy's own.
            let mut found = Vec::new();
            let mut stack = vec![root.path().to_path_buf()];
            while let Some(d) = stack.pop() {
                for e in std::fs::read_dir(&d).expect("list") {
                    let p = e.expect("entry").path();
                    if p.is_dir() {
                        stack.push(p.clone());
                    }
                    found.push(p.strip_prefix(root.path()).expect("inside").to_string_lossy().into_owned());
                }
            }
            found.sort();
            assert_eq!(found, vec!["a", "a/b", "a/b/dest", "a/b/dest/p"], "{bad:?}");
        }
    })
    .await
}

#[tokio::test]
async fn copy_out_writes_the_tree_with_permission_bits_only() {
    bounded(async {
        let fake = Fake::start(FakeConfig::default()).await;
        {
            let mut st = fake.stats();
            st.dirs.insert("/t".into());
            st.files.insert("/t/suid".into(), b"s".to_vec());
            let mut suid = file_stat(FileKind::File, 1);
            suid.mode = 0o106755;
            let mut dir = file_stat(FileKind::Dir, 0);
            dir.mode = 0o43777;
            let mut link = file_stat(FileKind::Symlink, 0);
            link.link_target = Some("/etc/passwd".into());
            let mut fifo = file_stat(FileKind::Other, 0);
            fifo.mode = 0o10644;
            st.dirs.insert("/t/d".into());
            st.listings.insert(
                "/t".into(),
                vec![
                    DirEntry { name: "d".into(), stat: dir },
                    DirEntry { name: "fifo".into(), stat: fifo },
                    DirEntry { name: "l".into(), stat: link },
                    DirEntry { name: "suid".into(), stat: suid },
                ],
            );
        }
        let client = fake.client().await;
        let dest = tempfile::tempdir().expect("tempdir");
        let report = client.copy_out("/t", dest.path(), "t").await.expect("copied");
        assert_eq!((report.files, report.dirs, report.symlinks, report.bytes), (1, 2, 1, 1));
        assert_eq!(report.skipped, vec!["/t/fifo".to_string()]);
        use std::os::unix::fs::MetadataExt;
        let mode = |rel: &str| std::fs::symlink_metadata(dest.path().join(rel)).expect(rel).mode() & 0o7777;
        assert_eq!(mode("t/suid"), 0o755);
        assert_eq!(mode("t/d"), 0o777);
        assert_eq!(std::fs::read_link(dest.path().join("t/l")).expect("link").to_str(), Some("/etc/passwd"));
        assert_eq!(std::fs::read(dest.path().join("t/suid")).expect("content"), b"s");
    })
    .await
}
