//! The crowd of tests/hostile.rs and benches/hostile.rs: good clients that
//! each read a session of numbered lines and check every line, in order,
//! beside four hostile clients.
#![allow(dead_code)]

use crate::common::RawClient;
use alcove_protocol::{Flags, Frame, Message};
use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

/// Reads session `id` to its end; its stdout and whether it exited 0.
pub fn read_session(client: &mut RawClient, id: u32) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    loop {
        let (fid, flags, msg) = client.recv().expect("the session ends with a terminal frame");
        assert_eq!(fid, id);
        match msg {
            Message::ExecStdout { data } => out.extend(data),
            Message::ExecExited(s) if flags.contains(Flags::TERMINAL) => return (out, s.code == Some(0)),
            m if flags.contains(Flags::TERMINAL) => panic!("session {id} ended with {m:?}"),
            _ => {}
        }
    }
}

/// A client that writes `frames` stdin frames of 128 KiB to session `id` as
/// fast as its socket takes them, never waiting for credit and never
/// reading, then stays connected until stopped.
pub struct StdinFlooder {
    /// Whole frames written so far.
    sent: Arc<AtomicUsize>,
    stop: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

pub const FLOOD_CHUNK: usize = 128 << 10;

impl StdinFlooder {
    pub fn start(mut client: RawClient, id: u32, frames: usize) -> StdinFlooder {
        let (stop, stopped) = mpsc::channel::<()>();
        let sent = Arc::new(AtomicUsize::new(0));
        let counter = sent.clone();
        // A bounded write, so a flooder the relay no longer reads still sees
        // the stop.
        client.stream.set_write_timeout(Some(Duration::from_millis(20))).expect("timeout");
        let thread = std::thread::spawn(move || {
            let frame = Frame::message(id, Flags::NONE, &Message::ExecStdin { data: vec![b'f'; FLOOD_CHUNK] })
                .expect("encodes")
                .encode()
                .expect("encodes");
            let mut at = 0;
            while counter.load(Ordering::Relaxed) < frames && stopped.try_recv() == Err(mpsc::TryRecvError::Empty) {
                if let Ok(n) = client.stream.write(&frame[at..]) {
                    at += n;
                    if at == frame.len() {
                        counter.fetch_add(1, Ordering::Relaxed);
                        at = 0;
                    }
                }
            }
            // Connected, unread, until told to stop.
            let _ = stopped.recv();
        });
        StdinFlooder { sent, stop: Some(stop), thread: Some(thread) }
    }

    pub fn sent(&self) -> usize {
        self.sent.load(Ordering::Relaxed)
    }

    pub fn stop(mut self) {
        self.stop.take();
        self.thread.take().expect("running").join().expect("the flooder panicked");
    }
}

impl Drop for StdinFlooder {
    fn drop(&mut self) {
        self.stop.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The four hostile clients of the crowd test, connected and misbehaving.
pub struct Hostiles {
    pub garbage: RawClient,
    pub never_reads: (RawClient, u32),
    pub flooder: (StdinFlooder, u32),
    pub quitter: u32,
}

/// Frames of 128 KiB the stdin flooder sends (32 MiB).
pub const CROWD_FLOOD_FRAMES: usize = 256;

pub fn start_hostiles(socket: &std::path::Path) -> Hostiles {
    // Sends garbage instead of a frame.
    let mut garbage = RawClient::connect(socket);
    garbage.stream.write_all(&[0xff; 64]).expect("written");
    // Starts a 64 MiB stream and never reads it.
    let mut never_reads = RawClient::connect(socket);
    let stream_id = never_reads.range.id_start;
    never_reads.exec(stream_id, &["stream", &(64 << 20).to_string()], false);
    // Floods stdin (32 MiB, without waiting for credit) into a `cat` whose
    // output it never reads.
    let mut flooder = RawClient::connect(socket);
    let cat_id = flooder.range.id_start;
    flooder.exec(cat_id, &["cat"], true);
    let flooder = StdinFlooder::start(flooder, cat_id, CROWD_FLOOD_FRAMES);
    // Disconnects in the middle of a session.
    let mut quitter = RawClient::connect(socket);
    let quitter_id = quitter.range.id_start;
    quitter.exec(quitter_id, &["lines", "100000"], false);
    for _ in 0..10 {
        quitter.recv().expect("a frame");
    }
    drop(quitter);
    Hostiles { garbage, never_reads: (never_reads, stream_id), flooder: (flooder, cat_id), quitter: quitter_id }
}

/// Runs `clients` good clients at once, each reading `lines` numbered lines
/// (`lines N` in the mock guest) and checking every one, in order; the time
/// until the last one has all of its lines.
pub fn good_clients(socket: &std::path::Path, clients: usize, lines: usize) -> Duration {
    let t = Instant::now();
    let good: Vec<_> = (0..clients)
        .map(|_| {
            let socket = socket.to_path_buf();
            std::thread::spawn(move || {
                let mut c = RawClient::connect(&socket);
                let id = c.range.id_start;
                c.exec(id, &["lines", &lines.to_string()], false);
                let (out, ok) = read_session(&mut c, id);
                assert!(ok, "a good client's command failed");
                let text = String::from_utf8(out).expect("utf-8");
                let got: Vec<&str> = text.lines().collect();
                assert_eq!(got.len(), lines, "lines lost");
                for (i, line) in got.iter().enumerate() {
                    assert_eq!(*line, format!("line {i}"), "out of order");
                }
            })
        })
        .collect();
    for g in good {
        if let Err(e) = g.join() {
            std::panic::resume_unwind(e);
        }
    }
    t.elapsed()
}
