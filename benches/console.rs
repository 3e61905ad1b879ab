//! The agent channel between the relay and a backend, both ways.
//!
//! The channel is what every backend hands the relay: a connected
//! `SOCK_STREAM` socketpair (`alcove_backend::console::channel`). Each side
//! uses the same I/O as the real code:
//!
//! - host side (the relay, on a single-threaded tokio runtime like the actor
//!   thread's): `write_frame` through a 256 KiB `BufWriter`, flushed when the
//!   queue is empty (the relay's guest writer), and `read_frame` (its guest
//!   reader);
//! - guest side (the agent): blocking `write_all` of
//!   already-encoded frames from one buffer, and 64 KiB `read`s fed to a
//!   `FrameDecoder`.
//!
//! `console/host_to_guest/*` and `console/guest_to_host/*` move 32 MiB of
//! `MAX_CHUNK` (128 KiB) frames or 4 MiB of 64-byte frames per iteration;
//! throughput is wire bytes/s. Message encoding is not included (see the
//! codec bench). `console/guest_to_host_buffered/*` is the same read through
//! a 256 KiB `BufReader`, the relay change proposed in BENCHMARKS.md.

use alcove_protocol::async_io::{read_frame, write_frame};
use alcove_protocol::{Flags, Frame, FrameDecoder, MAX_CHUNK};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::io::{Read, Write};
use std::sync::mpsc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWriteExt, BufReader, BufWriter};

const BIG_TOTAL: usize = 32 * 1024 * 1024;
const SMALL_TOTAL: usize = 4 * 1024 * 1024;

fn cases() -> [(&'static str, usize, usize); 2] {
    [("128KiB", MAX_CHUNK, BIG_TOTAL / MAX_CHUNK), ("64B", 64, SMALL_TOTAL / (64 + 9))]
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
}

fn frames(size: usize, count: usize) -> Vec<Frame> {
    (0..count).map(|i| Frame::new(0x0100_0000 + i as u32 % 16, Flags::NONE, vec![0x5a; size])).collect()
}

fn host_to_guest(c: &mut Criterion) {
    let mut g = c.benchmark_group("console");
    g.sample_size(20);
    g.measurement_time(Duration::from_secs(4));
    for (label, size, count) in cases() {
        let rt = runtime();
        let (host, mut guest) = alcove_backend::console::channel().expect("socketpair");
        let (done_tx, done_rx) = mpsc::channel::<()>();
        let reader = std::thread::spawn(move || {
            let mut dec = FrameDecoder::new();
            let mut rbuf = vec![0u8; 64 * 1024];
            let mut seen = 0usize;
            loop {
                let n = match guest.read(&mut rbuf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                dec.extend(&rbuf[..n]);
                while let Some(f) = dec.next_frame().expect("valid frames") {
                    debug_assert_eq!(f.body.len(), size);
                    seen += 1;
                    if seen == count {
                        seen = 0;
                        if done_tx.send(()).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        let batch = frames(size, count);
        let wire: usize = batch.iter().map(Frame::wire_len).sum();
        let mut w = {
            let _guard = rt.enter();
            host.set_nonblocking(true).expect("nonblocking");
            BufWriter::with_capacity(256 * 1024, tokio::net::UnixStream::from_std(host).expect("tokio stream"))
        };
        g.throughput(Throughput::Bytes(wire as u64));
        g.bench_function(BenchmarkId::new("host_to_guest", label), |b| {
            b.iter(|| {
                rt.block_on(async {
                    for f in &batch {
                        write_frame(&mut w, f).await.expect("writes");
                    }
                    w.flush().await.expect("flushes");
                });
                done_rx.recv().expect("the guest side counted the batch");
            })
        });
        drop(w);
        reader.join().expect("reader thread");
    }
    g.finish();
}

/// The guest → host direction as the relay reads it today (`read_frame` on
/// the bare socket: two `recv` per frame) and, `buffered`, through a 256 KiB
/// `BufReader` (the change proposed in BENCHMARKS.md).
fn guest_to_host(c: &mut Criterion) {
    guest_to_host_with(c, false);
    guest_to_host_with(c, true);
}

fn guest_to_host_with(c: &mut Criterion, buffered: bool) {
    let mut g = c.benchmark_group("console");
    g.sample_size(20);
    g.measurement_time(Duration::from_secs(4));
    for (label, size, count) in cases() {
        let rt = runtime();
        let (host, mut guest) = alcove_backend::console::channel().expect("socketpair");
        let (go_tx, go_rx) = mpsc::channel::<()>();
        let mut wire = Vec::new();
        for f in frames(size, count) {
            f.encode_into(&mut wire).expect("fits");
        }
        let wire_len = wire.len();
        let writer = std::thread::spawn(move || {
            while go_rx.recv().is_ok() {
                if guest.write_all(&wire).is_err() {
                    return;
                }
            }
        });
        let mut r = {
            let _guard = rt.enter();
            host.set_nonblocking(true).expect("nonblocking");
            let stream = tokio::net::UnixStream::from_std(host).expect("tokio stream");
            let r: Box<dyn AsyncRead + Unpin> =
                if buffered { Box::new(BufReader::with_capacity(256 * 1024, stream)) } else { Box::new(stream) };
            r
        };
        let name = if buffered { "guest_to_host_buffered" } else { "guest_to_host" };
        g.throughput(Throughput::Bytes(wire_len as u64));
        g.bench_function(BenchmarkId::new(name, label), |b| {
            b.iter(|| {
                go_tx.send(()).expect("writer alive");
                rt.block_on(async {
                    for _ in 0..count {
                        let f = read_frame(&mut r).await.expect("reads").expect("a frame");
                        debug_assert_eq!(f.body.len(), size);
                    }
                })
            })
        });
        drop(go_tx);
        drop(r);
        writer.join().expect("writer thread");
    }
    g.finish();
}

criterion_group!(benches, host_to_guest, guest_to_host);
criterion_main!(benches);
