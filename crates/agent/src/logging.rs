//! The guest log: lines on stderr (the jail backend redirects it to the
//! sandbox's guest.log; in a VM it is the console).
//!
//! Invariant: logging never fails and never panics; a write error is ignored.

use std::io::Write;
use std::sync::OnceLock;
use std::time::Instant;

static START: OnceLock<Instant> = OnceLock::new();

/// Starts the log clock (the first call wins).
pub fn init() {
    START.get_or_init(Instant::now);
}

/// Writes one line, prefixed with the seconds since [`init`].
pub fn log(args: std::fmt::Arguments<'_>) {
    let t = START.get_or_init(Instant::now).elapsed();
    let line = format!("[alcove-agent {:>4}.{:03}] {args}\n", t.as_secs(), t.subsec_millis());
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}
