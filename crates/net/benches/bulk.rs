//! Bulk TCP through the engine over the in-memory frame pair: a smoltcp
//! guest stack on one end, a host socket on 127.0.0.1 on the other,
//! reached through the host address. See crates/net/BENCH.md.

#[path = "../tests/common/mod.rs"]
mod common;

use alcove_net::policy::{Policy, Profile};
use alcove_net::NetConfig;
use common::*;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};

const BYTES: usize = 8 << 20;

fn config(mtu: usize) -> NetConfig {
    NetConfig { policy: Policy { profile: Profile::Host, rules: vec![] }, mtu, ..NetConfig::default() }
}

fn bulk(c: &mut Criterion) {
    let mut group = c.benchmark_group("tcp_bulk");
    group.sample_size(10);
    group.throughput(Throughput::Bytes(BYTES as u64));
    for mtu in [1500usize, 9000] {
        // Guest → host: a sink on the host counts what arrives.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let mut s = stream.unwrap();
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 1 << 16];
                    while s.read(&mut buf).map(|n| n > 0).unwrap_or(false) {}
                });
            }
        });
        let mut h = start(config(mtu));
        let mut g = h.guest_stack_with_mtu(mtu);
        let chunk = vec![0x5au8; 1 << 16];
        let mut local_port = 20000u16;
        group.bench_function(format!("guest_to_host_mtu{mtu}"), |b| {
            b.iter(|| {
                local_port += 1;
                let sock = g.connect(SocketAddr::new(h.plan.host_v4.into(), port), local_port);
                let mut sent = 0;
                assert!(g.run_until(|g| {
                    let s = g.tcp(sock);
                    while s.can_send() && sent < BYTES {
                        sent += s.send_slice(&chunk[..chunk.len().min(BYTES - sent)]).unwrap();
                    }
                    if sent == BYTES {
                        s.close();
                    }
                    sent == BYTES && s.send_queue() == 0
                }));
                g.tcp(sock).abort();
                g.run_until(|_| true);
                g.sockets.remove(sock);
            })
        });

        // Host → guest: a source on the host writes BYTES per connection.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let mut s = stream.unwrap();
                std::thread::spawn(move || {
                    let data = vec![0xa5u8; 1 << 16];
                    let mut left = BYTES;
                    while left > 0 {
                        let n = data.len().min(left);
                        s.write_all(&data[..n]).unwrap();
                        left -= n;
                    }
                });
            }
        });
        group.bench_function(format!("host_to_guest_mtu{mtu}"), |b| {
            b.iter(|| {
                local_port += 1;
                let sock = g.connect(SocketAddr::new(h.plan.host_v4.into(), port), local_port);
                let mut got = 0;
                assert!(g.run_until(|g| {
                    let s = g.tcp(sock);
                    while s.can_recv() {
                        got += s.recv(|b| (b.len(), b.len())).unwrap();
                    }
                    got == BYTES
                }));
                g.tcp(sock).abort();
                g.run_until(|_| true);
                g.sockets.remove(sock);
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bulk);
criterion_main!(benches);
