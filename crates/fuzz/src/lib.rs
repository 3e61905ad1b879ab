//! alcove's fuzz targets.
//!
//! Each target is a pure function over bytes (`fn(&[u8])`): the bytes are
//! turned into a structured input with [`arbitrary`], the input is fed
//! through alcove's own public entry points, and every invariant the target
//! checks is an `assert!`, so a violated invariant is a panic like any
//! crash. Two drivers call the same functions:
//!
//! - cargo-fuzz (nightly, coverage-guided): the `fuzz/` directory at the
//!   repository root, one `fuzz_targets/*.rs` per target;
//! - the stable driver (`alcove-fuzz TARGET N`, wrapped by `bench/fuzz`):
//!   N inputs of seeded random bytes, reporting runs per second and saving
//!   the input of any panic (see `main.rs`).
//!
//! Invariants of every target: it never writes outside a temporary
//! directory it creates and removes, never signals or kills a process it
//! did not start, and returns (or panics) within a bounded time. What each
//! target feeds and checks is in its module's documentation.

pub mod agent;
pub mod codec;
pub mod config;
mod frames;
pub mod net;
pub mod relay;
pub mod rootfs;
pub mod route;

/// A fuzz target: a name and the function that runs one input.
#[derive(Clone, Copy)]
pub struct Target {
    /// Name used on the command line and by `fuzz/fuzz_targets/NAME.rs`.
    pub name: &'static str,
    /// Runs one input; panics when an invariant is violated.
    pub run: fn(&[u8]),
    /// Sets up the process once, before any thread exists (signal masks).
    pub prepare: fn(),
    /// Largest input the stable driver generates for this target.
    pub max_len: usize,
}

fn nothing_to_prepare() {}

/// Every target.
pub const TARGETS: &[Target] = &[
    Target { name: "codec", run: codec::fuzz, prepare: nothing_to_prepare, max_len: 4096 },
    Target { name: "config", run: config::fuzz, prepare: nothing_to_prepare, max_len: 2048 },
    Target { name: "relay", run: relay::fuzz, prepare: relay::prepare_process, max_len: 4096 },
    Target { name: "route", run: route::fuzz, prepare: nothing_to_prepare, max_len: 4096 },
    Target { name: "agent", run: agent::fuzz, prepare: agent::prepare_process, max_len: 4096 },
    Target { name: "rootfs", run: rootfs::fuzz, prepare: nothing_to_prepare, max_len: 8192 },
    Target { name: "net", run: net::fuzz, prepare: nothing_to_prepare, max_len: 8192 },
];

/// The target called `name`.
pub fn target(name: &str) -> Option<Target> {
    TARGETS.iter().copied().find(|t| t.name == name)
}

/// Ignores SIGPIPE: a peer that closed its end must show up as `EPIPE`,
/// not kill the fuzzing process (libFuzzer's `main` does not ignore it as
/// Rust's does).
pub fn ignore_sigpipe() {
    // SAFETY: setting a signal disposition has no memory preconditions.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
}

/// The structured input of `data`; `None` when the bytes cannot make one
/// (arbitrary ran out of bytes in a way that is not useful to run). With
/// `ALCOVE_FUZZ_SHOW` set, the input is printed (to read a saved failure).
pub(crate) fn structured<'a, T: arbitrary::Arbitrary<'a> + std::fmt::Debug>(data: &'a [u8]) -> Option<T> {
    let mut u = arbitrary::Unstructured::new(data);
    let input = T::arbitrary(&mut u).ok();
    if std::env::var_os("ALCOVE_FUZZ_SHOW").is_some() {
        eprintln!("alcove-fuzz input: {input:#?}");
    }
    input
}

/// A fresh temporary directory, on tmpfs (`/dev/shm`) where there is one:
/// the targets that write (a database, an imported rootfs) then measure
/// alcove, not the disk's fsync.
pub fn scratch_dir() -> tempfile::TempDir {
    let shm = std::path::Path::new("/dev/shm");
    let builder = tempfile::Builder::new().prefix("alcove-fuzz-").tempdir_in(shm);
    builder.or_else(|_| tempfile::Builder::new().prefix("alcove-fuzz-").tempdir()).expect("a temporary directory")
}
