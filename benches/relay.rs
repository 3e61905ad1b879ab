//! Relay routing through real sockets: a sandbox started with
//! `alcove::start` on the mock backend (the in-process guest speaking the real
//! protocol over the real socketpair), and 1, 16 or 128 `alcove-client`
//! connections on agent.sock.
//!
//! - `relay/exec_round/N`: every one of N clients runs `echo` (request →
//!   `ExecStarted` → stdout → `ExecExited`) at the same time; one iteration is
//!   one such round, so the time is the latency of an exec when N clients are
//!   busy, and the throughput is execs/s through the relay;
//! - `relay/stream/N`: N clients each stream an equal share of 64 MiB of
//!   stdout (`stream BYTES` in the mock guest, paced by the flow-control
//!   window and the relay's credit); throughput in payload bytes/s.
//!
//! The mock guest spawns a thread per command and encodes every chunk twice,
//! so these figures bound the relay from below; the figures of the real
//! agent are in `bench/compare` (see BENCHMARKS.md).

use alcove::{Policy, PolicySpec, SandboxHandle, SandboxOptions};
use alcove_backend::mock::{MockBackend, MockScript};
use alcove_client::{Client, ExecEvent, ExecOptions};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::time::{Duration, Instant};

const CLIENTS: [usize; 3] = [1, 16, 128];
const STREAM_TOTAL: usize = 64 * 1024 * 1024;

struct Sandbox {
    _dir: tempfile::TempDir,
    handle: SandboxHandle,
}

impl Sandbox {
    fn start() -> Sandbox {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut opts = SandboxOptions::new("bench", dir.path().join("alcove.db"), dir.path().join("run/bench.sock"));
        opts.policy =
            Policy::try_from(PolicySpec { heartbeat_timeout: Duration::from_secs(3600), ..Policy::default().spec() })
                .expect("a valid policy");
        let backend = MockBackend::new(MockScript::default());
        let handle = alcove::start(opts, Box::new(backend)).expect("the sandbox starts");
        assert!(handle.wait_ready(Duration::from_secs(10)), "the mock guest never became ready");
        Sandbox { _dir: dir, handle }
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.handle.stop();
        let _ = self.handle.wait_timeout(Duration::from_secs(10));
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
}

async fn connect(sb: &Sandbox, n: usize) -> Vec<Client> {
    let mut clients = Vec::with_capacity(n);
    for _ in 0..n {
        clients.push(Client::connect_path(sb.handle.socket_path()).await.expect("connects"));
    }
    clients
}

async fn echo(client: &Client) {
    let out = client.exec_output(ExecOptions::new(["echo", "hi"])).await.expect("echo runs");
    assert_eq!(out.stdout, b"hi\n");
}

async fn stream(client: &Client, bytes: usize) -> usize {
    let mut session =
        client.exec(ExecOptions::new(["stream".to_string(), bytes.to_string()])).await.expect("stream starts");
    let mut got = 0;
    while let Some(ev) = session.next_event().await {
        match ev.expect("no error") {
            ExecEvent::Stdout(d) => got += d.len(),
            ExecEvent::Exited(_) => break,
            _ => {}
        }
    }
    assert_eq!(got, bytes);
    got
}

fn relay(c: &mut Criterion) {
    let sb = Sandbox::start();
    let rt = runtime();
    let mut g = c.benchmark_group("relay");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(4));
    g.warm_up_time(Duration::from_millis(500));
    for n in CLIENTS {
        let clients = rt.block_on(connect(&sb, n));
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(BenchmarkId::new("exec_round", n), |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let start = Instant::now();
                    let tasks = clients.iter().cloned().map(|c| async move {
                        for _ in 0..iters {
                            echo(&c).await;
                        }
                    });
                    join_all(tasks).await;
                    start.elapsed()
                })
            })
        });
        let share = STREAM_TOTAL / n;
        g.throughput(Throughput::Bytes((share * n) as u64));
        g.bench_function(BenchmarkId::new("stream", n), |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        let tasks = clients.iter().cloned().map(|c| async move { stream(&c, share).await });
                        join_all(tasks).await;
                    }
                    start.elapsed()
                })
            })
        });
        drop(clients);
    }
    g.finish();
}

/// Runs one task per client on the runtime and waits for all of them.
async fn join_all<F>(futs: impl Iterator<Item = F>)
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futs.map(tokio::spawn).collect();
    for h in handles {
        h.await.expect("a client task panicked");
    }
}

criterion_group!(benches, relay);
criterion_main!(benches);
