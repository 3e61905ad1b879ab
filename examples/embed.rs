//! Starting a sandbox from a Rust program, as `alcove create` would.
//!
//! Run it as root (the jail needs it), from the repository:
//!
//! ```text
//! sudo cargo run --example embed            # the default rootfs, built on first use
//! sudo cargo run --example embed -- /path/to/rootfs
//! ```
//!
//! It starts a sandbox under `$ALCOVE_HOME` (default `~/.alcove`), runs a
//! command, writes and reads back a file, shows that `alcove ps` lists the
//! sandbox, and removes it. `tests/embed.rs` runs this same code.

use alcove::{EmbedError, Sandbox, SandboxBuilder};
use alcove_client::ExecOptions;
use std::process::ExitCode;
use std::time::Duration;

/// What [`start_and_use`] saw in the sandbox.
pub struct Seen {
    /// `uname -s` in the guest.
    pub kernel: String,
    /// The file written through the client, read back by `cat` in the guest.
    pub file: Vec<u8>,
    /// Whether the records (what `alcove ps` reads) list the sandbox.
    pub listed: bool,
}

/// Starts a sandbox from `builder` with a few settings of its own, uses it,
/// and hands it back running.
pub async fn start_and_use(builder: SandboxBuilder) -> Result<(Sandbox, Seen), EmbedError> {
    let sandbox = builder.memory_mib(256).idle_timeout(Duration::from_secs(600)).start().await?;
    let client = sandbox.client();
    let uname = client.exec_output(ExecOptions::new(["uname", "-s"])).await?;
    client.write_file("/tmp/hello.txt", 0o644, b"hello from the host\n").await?;
    let cat = client.exec_output(ExecOptions::new(["cat", "/tmp/hello.txt"])).await?;
    let listed = alcove::embed::list(Some(sandbox.home()))?.iter().any(|s| s.name == sandbox.name());
    let seen = Seen { kernel: String::from_utf8_lossy(&uname.stdout).trim().to_string(), file: cat.stdout, listed };
    Ok((sandbox, seen))
}

#[tokio::main]
async fn main() -> ExitCode {
    let rootfs = std::env::args().nth(1).unwrap_or_else(|| "default".to_string());
    let builder = Sandbox::builder(Sandbox::generated_name()).rootfs(rootfs);
    let (sandbox, seen) = match start_and_use(builder).await {
        Ok(started) => started,
        Err(e) => {
            eprintln!("embed: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("sandbox {} (pid {}) runs {}", sandbox.name(), sandbox.pid(), seen.kernel);
    println!("read back: {}", String::from_utf8_lossy(&seen.file).trim_end());
    println!("listed by alcove ps: {}", seen.listed);
    if let Err(e) = sandbox.remove().await {
        eprintln!("embed: {e}");
        return ExitCode::FAILURE;
    }
    println!("removed {}", sandbox.name());
    ExitCode::SUCCESS
}
