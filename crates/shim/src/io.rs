//! A process's stdio through the FIFOs containerd hands over: its output
//! events written to the stdout and stderr FIFOs, the stdin FIFO fed to
//! the command.
//!
//! Invariants:
//! - Output FIFOs are opened read-write: on Linux that never blocks for a
//!   reader, and containerd's reader sees EOF once the shim closes them,
//!   which it does when the process's last event has been written.
//! - An empty path means "not wanted": output is discarded, and the
//!   command's stdin is /dev/null.
//! - Stdin is read on a thread of its own (a FIFO opened read-only blocks
//!   until a writer comes); its EOF closes the command's stdin, and so
//!   does containerd's CloseIO: once `closed` is set, nothing more read
//!   from the FIFO reaches the command.

use alcove_client::ExecInput;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::io::AsyncWriteExt;
use tokio::net::unix::pipe;

/// Where a process's output goes.
pub struct OutputFifos {
    stdout: Option<pipe::Sender>,
    stderr: Option<pipe::Sender>,
}

fn open_output(path: &str) -> std::io::Result<Option<pipe::Sender>> {
    if path.is_empty() {
        return Ok(None);
    }
    pipe::OpenOptions::new().read_write(true).open_sender(Path::new(path)).map(Some)
}

impl OutputFifos {
    /// Opens the FIFOs at `stdout` and `stderr` (empty: none).
    pub fn open(stdout: &str, stderr: &str) -> std::io::Result<OutputFifos> {
        Ok(OutputFifos { stdout: open_output(stdout)?, stderr: open_output(stderr)? })
    }

    /// Writes bytes of stdout. A reader that went away is not an error of
    /// the process: its output is dropped from then on.
    pub async fn stdout(&mut self, bytes: &[u8]) {
        write_or_drop(&mut self.stdout, bytes).await;
    }

    /// Writes bytes of stderr (as [`OutputFifos::stdout`]).
    pub async fn stderr(&mut self, bytes: &[u8]) {
        write_or_drop(&mut self.stderr, bytes).await;
    }
}

async fn write_or_drop(fifo: &mut Option<pipe::Sender>, bytes: &[u8]) {
    if let Some(f) = fifo {
        if f.write_all(bytes).await.is_err() {
            *fifo = None;
        }
    }
}

/// Feeds the FIFO at `path` to `input` until the FIFO's EOF or until
/// `closed` is set (CloseIO, which closes the command's stdin itself),
/// then closes the command's stdin. Runs on a thread of its own; `runtime`
/// drives the writes.
pub fn feed_stdin(
    path: String,
    input: ExecInput,
    closed: Arc<AtomicBool>,
    runtime: tokio::runtime::Handle,
) -> std::io::Result<()> {
    std::thread::Builder::new().name("alcove-shim-stdin".into()).spawn(move || {
        use std::io::Read;
        let Ok(mut fifo) = std::fs::File::open(&path) else {
            let _ = input.close_stdin();
            return;
        };
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match fifo.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) if closed.load(Ordering::SeqCst) => return,
                Ok(n) => {
                    if runtime.block_on(input.write_stdin(&buf[..n])).is_err() {
                        return;
                    }
                }
            }
        }
        let _ = input.close_stdin();
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    fn mkfifo(path: &Path) {
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("no NUL");
        // SAFETY: a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
    }

    #[tokio::test]
    async fn output_reaches_the_reader_and_closing_gives_it_eof() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("out");
        mkfifo(&path);
        // Opened before any reader exists, as containerd may.
        let mut fifos = OutputFifos::open(path.to_str().expect("utf-8"), "").expect("opens without a reader");
        let mut reader = pipe::OpenOptions::new().open_receiver(&path).expect("reader");
        fifos.stdout(b"hi\n").await;
        fifos.stderr(b"discarded: no stderr FIFO").await;
        drop(fifos);
        let mut got = Vec::new();
        reader.read_to_end(&mut got).await.expect("reads to EOF");
        assert_eq!(got, b"hi\n");
    }
}
