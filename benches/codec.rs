//! Frame and message codec throughput.
//!
//! - `frame/encode` and `frame/decode`: the framing layer alone
//!   (`Frame::encode_into` into a reused buffer, `Frame::decode` from a
//!   buffer), for a small body (64 B, the size of a control message) and a
//!   1 MiB body;
//! - `message/encode` and `message/decode`: a whole `ExecStdout` message
//!   (bincode body + frame), for a small chunk and a 1 MiB chunk, as the
//!   agent and the client pay it for every output chunk;
//! - `stream/decode`: `FrameDecoder` fed a byte stream in 64 KiB reads (what
//!   the agent does with its channel), frames of 64 B and of `MAX_CHUNK`.
//!
//! Throughput is reported in bytes of the wire form. Run with
//! `cargo bench --bench codec`; see BENCHMARKS.md for recorded figures.

use alcove_protocol::{decode_message, Flags, Frame, FrameDecoder, Message, MAX_CHUNK};
use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::time::Duration;

const SMALL: usize = 64;
const LARGE: usize = 1024 * 1024;

fn sizes() -> [(&'static str, usize); 2] {
    [("64B", SMALL), ("1MiB", LARGE)]
}

fn frame(c: &mut Criterion) {
    let mut g = c.benchmark_group("frame");
    g.measurement_time(Duration::from_secs(3));
    for (label, size) in sizes() {
        let f = Frame::new(0x0100_0001, Flags::NONE, vec![0x5a; size]);
        let wire = f.encode().expect("fits in a frame");
        g.throughput(Throughput::Bytes(wire.len() as u64));
        g.bench_with_input(BenchmarkId::new("encode", label), &f, |b, f| {
            let mut out = Vec::with_capacity(wire.len());
            b.iter(|| {
                out.clear();
                f.encode_into(&mut out).expect("fits");
                black_box(out.len())
            })
        });
        g.bench_with_input(BenchmarkId::new("decode", label), &wire, |b, wire| {
            b.iter(|| {
                let (f, used) = Frame::decode(black_box(wire)).expect("valid").expect("complete");
                black_box((f.body.len(), used))
            })
        });
    }
    g.finish();
}

fn message(c: &mut Criterion) {
    let mut g = c.benchmark_group("message");
    g.measurement_time(Duration::from_secs(3));
    for (label, size) in sizes() {
        let msg = Message::ExecStdout { data: vec![0x5a; size] };
        let wire = Frame::message(7, Flags::NONE, &msg).expect("encodes").encode().expect("fits");
        g.throughput(Throughput::Bytes(wire.len() as u64));
        g.bench_with_input(BenchmarkId::new("encode", label), &msg, |b, msg| {
            b.iter(|| {
                let f = Frame::message(7, Flags::NONE, black_box(msg)).expect("encodes");
                black_box(f.encode().expect("fits").len())
            })
        });
        g.bench_with_input(BenchmarkId::new("decode", label), &wire, |b, wire| {
            b.iter(|| {
                let (f, _) = Frame::decode(black_box(wire)).expect("valid").expect("complete");
                match decode_message(&f.body).expect("a message") {
                    Message::ExecStdout { data } => black_box(data.len()),
                    _ => unreachable!("encoded an ExecStdout"),
                }
            })
        });
    }
    g.finish();
}

fn stream(c: &mut Criterion) {
    let mut g = c.benchmark_group("stream");
    g.measurement_time(Duration::from_secs(3));
    for (label, size, count) in [("64B", SMALL, 16_384usize), ("128KiB", MAX_CHUNK, 32)] {
        let mut wire = Vec::new();
        for i in 0..count {
            Frame::new(i as u32 + 1, Flags::NONE, vec![0x5a; size]).encode_into(&mut wire).expect("fits");
        }
        g.throughput(Throughput::Bytes(wire.len() as u64));
        g.bench_with_input(BenchmarkId::new("decode", label), &wire, |b, wire| {
            b.iter(|| {
                let mut dec = FrameDecoder::new();
                let mut n = 0usize;
                for piece in wire.chunks(64 * 1024) {
                    dec.extend(piece);
                    while let Some(f) = dec.next_frame().expect("valid") {
                        n += f.body.len();
                    }
                }
                assert_eq!(n, size * count);
                black_box(n)
            })
        });
    }
    g.finish();
}

criterion_group!(benches, frame, message, stream);
criterion_main!(benches);
