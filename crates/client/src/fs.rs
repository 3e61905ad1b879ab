//! File operations in the guest.
//!
//! Each operation is one session: the client sends an `FsRequest`, the guest
//! answers with one `FsResponse` (TERMINAL). A read streams `FsData` chunks
//! before the response; a write sends `FsData` chunks (at most [`MAX_CHUNK`]
//! bytes each, paced by the session's window exactly like stdin) and `FsEnd`
//! before the response. Guest failures keep their kind as
//! [`ClientError::Fs`].

use crate::conn::SessionLink;
use crate::{Client, ClientError};
use alcove_protocol::{DirEntry, FileStat, Flags, FsReply, FsRequest, Message, MAX_CHUNK};
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

/// Mode of directories made by [`Client::mkdir`].
pub const DEFAULT_DIR_MODE: u32 = 0o755;

struct FsSession {
    link: Arc<SessionLink>,
    rx: mpsc::UnboundedReceiver<Message>,
}

impl FsSession {
    /// Waits for the response, refusing anything else.
    async fn response(&mut self) -> Result<FsReply, ClientError> {
        match self.rx.recv().await {
            Some(msg) => final_message(msg),
            None => Err(ClientError::Disconnected),
        }
    }
}

fn final_message(msg: Message) -> Result<FsReply, ClientError> {
    match msg {
        Message::FsResponse(Ok(reply)) => Ok(reply),
        Message::FsResponse(Err(e)) => Err(ClientError::Fs(e)),
        Message::SessionAborted { reason } => Err(ClientError::Aborted(reason)),
        other => Err(unexpected(&other)),
    }
}

fn unexpected(msg: &Message) -> ClientError {
    let text = format!("{msg:?}");
    ClientError::Unexpected(text.chars().take(80).collect())
}

fn bytes_done(reply: FsReply) -> Result<u64, ClientError> {
    match reply {
        FsReply::Done { bytes } => Ok(bytes),
        other => Err(ClientError::Unexpected(format!("{other:?}").chars().take(80).collect())),
    }
}

impl Client {
    fn fs_session(&self, req: FsRequest) -> Result<FsSession, ClientError> {
        let (link, rx) = self.open_session(&Message::FsRequest(req), None)?;
        Ok(FsSession { link, rx })
    }

    async fn fs_simple(&self, req: FsRequest) -> Result<FsReply, ClientError> {
        self.fs_session(req)?.response().await
    }

    /// Reads a whole guest file into memory.
    pub async fn read_file(&self, path: &str) -> Result<Vec<u8>, ClientError> {
        let mut out = Vec::new();
        self.read_file_to(path, &mut out).await?;
        Ok(out)
    }

    /// Streams a guest file into `dest`, flushing it at the end. Returns the
    /// byte count the guest reports.
    pub async fn read_file_to<W>(&self, path: &str, dest: &mut W) -> Result<u64, ClientError>
    where
        W: AsyncWrite + Unpin + ?Sized,
    {
        let mut s = self.fs_session(FsRequest::Read { path: path.to_string() })?;
        loop {
            match s.rx.recv().await {
                None => return Err(ClientError::Disconnected),
                Some(Message::FsData { data }) => dest.write_all(&data).await.map_err(ClientError::LocalIo)?,
                Some(other) => {
                    let bytes = bytes_done(final_message(other)?)?;
                    dest.flush().await.map_err(ClientError::LocalIo)?;
                    return Ok(bytes);
                }
            }
        }
    }

    /// Creates or truncates a guest file (new files get `mode`) with `data`.
    /// Returns the byte count the guest reports.
    pub async fn write_file(&self, path: &str, mode: u32, data: &[u8]) -> Result<u64, ClientError> {
        let mut src = data;
        self.write_file_from(path, mode, &mut src).await
    }

    /// Creates or truncates a guest file (new files get `mode`) with
    /// everything read from `src`. If the guest refuses early (for example a
    /// missing directory), its error is returned without reading further.
    ///
    /// A local read error is returned as [`ClientError::LocalIo`]; the
    /// protocol has no way to cancel the write, so the guest's session stays
    /// open (without `FsEnd`) until the connection closes.
    pub async fn write_file_from<R>(&self, path: &str, mode: u32, src: &mut R) -> Result<u64, ClientError>
    where
        R: AsyncRead + Unpin + ?Sized,
    {
        let mut s = self.fs_session(FsRequest::Write { path: path.to_string(), mode })?;
        let mut buf = vec![0u8; MAX_CHUNK];
        loop {
            let n = src.read(&mut buf).await.map_err(ClientError::LocalIo)?;
            if n == 0 {
                match s.link.send(Flags::NONE, &Message::FsEnd) {
                    Ok(()) | Err(ClientError::SessionClosed) => break,
                    Err(e) => return Err(e),
                }
            }
            match s.link.send_data(&Message::FsData { data: buf[..n].to_vec() }).await {
                Ok(()) => {}
                // The guest already answered (an early error): read it.
                Err(ClientError::SessionClosed) => break,
                Err(e) => return Err(e),
            }
        }
        bytes_done(s.response().await?)
    }

    /// Metadata of a guest path (a final symlink is not followed).
    pub async fn stat(&self, path: &str) -> Result<FileStat, ClientError> {
        match self.fs_simple(FsRequest::Stat { path: path.to_string() }).await? {
            FsReply::Stat(st) => Ok(st),
            other => Err(ClientError::Unexpected(format!("{other:?}").chars().take(80).collect())),
        }
    }

    /// Entries of a guest directory, sorted by name.
    pub async fn list(&self, path: &str) -> Result<Vec<DirEntry>, ClientError> {
        match self.fs_simple(FsRequest::List { path: path.to_string() }).await? {
            FsReply::List(entries) => Ok(entries),
            other => Err(ClientError::Unexpected(format!("{other:?}").chars().take(80).collect())),
        }
    }

    /// Creates a guest directory (mode [`DEFAULT_DIR_MODE`]), with its
    /// missing parents when `parents` is set.
    pub async fn mkdir(&self, path: &str, parents: bool) -> Result<(), ClientError> {
        let req = FsRequest::Mkdir { path: path.to_string(), parents, mode: DEFAULT_DIR_MODE };
        bytes_done(self.fs_simple(req).await?).map(drop)
    }

    /// Removes a guest file or directory (with its content when `recursive`).
    pub async fn remove(&self, path: &str, recursive: bool) -> Result<(), ClientError> {
        bytes_done(self.fs_simple(FsRequest::Remove { path: path.to_string(), recursive }).await?).map(drop)
    }

    /// Renames a guest path.
    pub async fn rename(&self, from: &str, to: &str) -> Result<(), ClientError> {
        let req = FsRequest::Rename { from: from.to_string(), to: to.to_string() };
        bytes_done(self.fs_simple(req).await?).map(drop)
    }

    /// Copies a guest file or directory tree; returns the bytes copied.
    pub async fn copy(&self, from: &str, to: &str) -> Result<u64, ClientError> {
        bytes_done(self.fs_simple(FsRequest::Copy { from: from.to_string(), to: to.to_string() }).await?)
    }
}
