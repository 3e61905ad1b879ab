//! Times `exec true` through `alcove-client` against a running sandbox:
//! the Rust reference of the Python SDK's benchmark (`bench/python_sdk`).
//!
//! ```text
//! ALCOVE_HOME=… cargo run --release --example client_exec_latency -- NAME N [CONCURRENT]
//! ```
//!
//! Without CONCURRENT: N sequential round trips on one connection, printed
//! as one JSON line of per-call microseconds. With CONCURRENT: N rounds of
//! that many simultaneous execs (at most 64 open at once, the relay's limit
//! per connection), each round's wall time in microseconds.

use alcove_client::{Client, ExecOptions};
use std::process::ExitCode;
use std::time::Instant;

async fn exec_true(client: &Client) -> Result<(), String> {
    let out = client.exec_output(ExecOptions::new(["true"])).await.map_err(|e| e.to_string())?;
    match out.status.code {
        Some(0) => Ok(()),
        other => Err(format!("true exited with {other:?}")),
    }
}

async fn run(name: &str, n: usize, concurrent: Option<usize>) -> Result<Vec<u128>, String> {
    let client = Client::connect(name).await.map_err(|e| e.to_string())?;
    // Untimed: the first calls fault pages in on both sides.
    for _ in 0..3 {
        exec_true(&client).await?;
    }
    // The relay allows a connection 64 open sessions; the rest wait, as
    // they do in the Python SDK.
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(64));
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        match concurrent {
            None => exec_true(&client).await?,
            Some(k) => {
                let mut set = tokio::task::JoinSet::new();
                for _ in 0..k {
                    let c = client.clone();
                    let slots = slots.clone();
                    set.spawn(async move {
                        let _slot = slots.acquire_owned().await.map_err(|e| e.to_string())?;
                        exec_true(&c).await
                    });
                }
                while let Some(done) = set.join_next().await {
                    done.map_err(|e| e.to_string())??;
                }
            }
        }
        times.push(start.elapsed().as_micros());
    }
    Ok(times)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(name), Some(n)) = (args.first(), args.get(1).and_then(|n| n.parse().ok())) else {
        eprintln!("usage: client_exec_latency NAME N [CONCURRENT]");
        return ExitCode::from(2);
    };
    let concurrent = args.get(2).and_then(|k| k.parse().ok());
    // A current-thread runtime, as the CLI runs.
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("client_exec_latency: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(name, n, concurrent)) {
        Ok(times) => {
            let list: Vec<String> = times.iter().map(u128::to_string).collect();
            println!("[{}]", list.join(","));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("client_exec_latency: {e}");
            ExitCode::FAILURE
        }
    }
}
