//! `containerd-shim-alcove-v2`: the containerd shim v2 whose tasks are
//! alcove sandboxes (runtime `io.containerd.alcove.v2`).
//!
//! containerd starts it with `start` (it re-executes itself to serve, and
//! prints the socket address), calls the Task service over ttrpc, and runs
//! it with `delete` in a bundle whose shim died. The `containerd-shim`
//! crate handles the command line, the socket and the logging; this crate
//! supplies the service (`service.rs`), the bundle reader (`bundle.rs`), the
//! rootfs mounts (`mount.rs`), the containers and their processes
//! (`container.rs`, `process.rs`), their stdio (`io.rs`) and their
//! metrics (`stats.rs`).
//!
//! The sandbox processes are the `alcove` executable beside this one (or
//! `$ALCOVE_BIN`); their records live in `$ALCOVE_HOME` of containerd's
//! environment, so `alcove ps` there lists the tasks' sandboxes.

mod bundle;
mod container;
mod io;
mod mount;
mod process;
mod service;
mod stats;

#[tokio::main]
async fn main() {
    containerd_shim::asynchronous::run::<service::AlcoveShim>(service::RUNTIME_ID, None).await;
}
