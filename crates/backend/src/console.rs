//! The agent channel: one connected `SOCK_STREAM` Unix socket pair per guest.
//!
//! The host end goes to the relay. The guest end is inherited by a jail's
//! agent as a file descriptor, served to a VM's `agent` virtio-console port by
//! the krun backend, or driven by the in-process mock guest. The kernel's
//! socket buffers are the bounded rings between the two sides and readiness
//! on the fds is the wake mechanism, so no side polls.

use std::io;
use std::os::unix::net::UnixStream;

/// Both ends of a new agent channel: `(host, guest)`, close-on-exec.
pub fn channel() -> io::Result<(UnixStream, UnixStream)> {
    UnixStream::pair()
}
