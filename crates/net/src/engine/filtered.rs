//! The byte pump of a TCP flow an [`Interceptor`](crate::intercept::Interceptor)
//! chose: guest bytes → filter → host, host bytes → filter → guest.
//!
//! Invariants:
//! - Input is read from a side only while the output waiting for the
//!   other side is under [`FILTER_BUFFER`].
//! - A FIN crosses only after everything the filter produced for that side
//!   has been written.
//! - A filter error or a host I/O error aborts both sides (RST).

use super::tcp::{Phase, TcpFlow};
use super::{Engine, FlowKey};
use crate::flows::CloseReason;
use crate::intercept::{FilterOutput, FILTER_BUFFER};
use smoltcp::socket::tcp::{Socket, State};
use std::io::{self, Read, Write};

/// A filter and what it produced that a side has not taken yet.
pub(crate) struct Filtered {
    pub filter: Box<dyn crate::intercept::StreamFilter>,
    pub out: FilterOutput,
}

fn flush_guest(socket: &mut Socket<'static>, f: &mut Filtered, flow_bytes: &mut u64) {
    if f.out.to_guest.is_empty() || !socket.may_send() {
        return;
    }
    if let Ok(n) = socket.send_slice(&f.out.to_guest) {
        f.out.to_guest.drain(..n);
        *flow_bytes += n as u64;
    }
}

fn flush_host(stream: &mut mio::net::TcpStream, f: &mut Filtered, writable: &mut bool) -> io::Result<()> {
    while *writable && !f.out.to_host.is_empty() {
        match stream.write(&f.out.to_host) {
            Ok(n) => {
                f.out.to_host.drain(..n);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => *writable = false,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

impl Engine {
    pub(super) fn pump_filtered(&mut self, key: FlowKey) {
        let Some(flow) = self.tcp.get_mut(&key) else { return };
        let Phase::Open { handle } = flow.phase else { return };
        let socket = self.stack.tcp(handle);
        if let Err(reason) = pump(flow, socket) {
            flow.close = Some(reason);
            socket.abort();
        }
    }
}

fn pump(flow: &mut TcpFlow, socket: &mut Socket<'static>) -> Result<(), CloseReason> {
    let TcpFlow { host, filtered, meta, host_readable, host_writable, host_eof, fin_to_host, .. } = flow;
    let (Some(stream), Some(f)) = (host.as_mut(), filtered.as_mut()) else { return Ok(()) };
    let host_err = |e: io::Error| CloseReason::HostReset(e.to_string());
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        flush_guest(socket, f, &mut meta.bytes_to_guest);
        flush_host(stream, f, host_writable).map_err(host_err)?;
        let mut progressed = false;
        // Guest → filter.
        if f.out.to_host.len() < FILTER_BUFFER && socket.can_recv() {
            let n = socket.recv_slice(&mut chunk).unwrap_or(0);
            if n > 0 {
                meta.bytes_from_guest += n as u64;
                f.filter.guest_bytes(&chunk[..n], &mut f.out).map_err(|e| e.close_reason())?;
                progressed = true;
            }
        }
        // Host → filter.
        if f.out.to_guest.len() < FILTER_BUFFER && *host_readable && !*host_eof {
            match stream.read(&mut chunk) {
                Ok(0) => *host_eof = true,
                Ok(n) => {
                    f.filter.host_bytes(&chunk[..n], &mut f.out).map_err(|e| e.close_reason())?;
                    progressed = true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => *host_readable = false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(host_err(e)),
            }
        }
        if !progressed {
            break;
        }
    }
    let guest_finished = matches!(socket.state(), State::CloseWait | State::LastAck | State::Closing | State::TimeWait);
    if guest_finished && !*fin_to_host && socket.recv_queue() == 0 && f.out.to_host.is_empty() {
        let _ = stream.shutdown(std::net::Shutdown::Write);
        *fin_to_host = true;
    }
    if *host_eof && f.out.to_guest.is_empty() {
        socket.close();
    }
    Ok(())
}
