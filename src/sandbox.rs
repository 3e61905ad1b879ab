//! Starting the actor system: the embedding API, also used by the
//! standalone sandbox process.
//!
//! [`launch`] opens the database, binds agent.sock, starts the actor system
//! on its own thread (Db on a further thread), lets Lifecycle write the run
//! row, and asks the backend to create the guest. It returns a
//! [`SandboxHandle`] to stop, touch and await the sandbox, and a
//! [`GuestDriver`] that must be run on some thread: the standalone process
//! runs it on its main thread (a krun guest's driver never returns), an
//! embedding program usually calls [`GuestDriver::spawn`].
//!
//! Threads: the caller's (backend launch, then the driver), `alcove-actors`
//! (actix System: Lifecycle, Guest, Relay, Watchdog, Metrics), `alcove-db`
//! (SyncArbiter with the Db actor), plus whatever the backend starts. A panic
//! on the actor thread forces the guest off, and the exit observer's budget
//! then finalises the run from the driver's thread, so no failure leaves a
//! run Running or the process hanging.

use crate::actors::db::{DbActor, SampleGate};
use crate::actors::guest::GuestActor;
use crate::actors::lifecycle::{Lifecycle, LifecyclePeers, Published};
use crate::actors::metrics::Metrics;
use crate::actors::network::{NetworkActor, StartNetwork};
use crate::actors::relay::flow::{RelayCounters, RelayStats};
use crate::actors::relay::{bind_socket, Relay, RelayError, RelayPeers};
use crate::actors::watchdog::Watchdog;
use crate::clock::{Clock, MonotonicClock};
use crate::config::{ExitBudget, Outcome, Policy};
use crate::messages::{Activity, GetActivity, GuestExited, GuestLaunched, LaunchFailed, Terminate, Touch};
use crate::run_end::{finish, Cleanup, RunEnd, Write};
use crate::store::{Store, StoreError, StoreOptions, TerminationReason};
use actix::prelude::*;
use alcove_backend::{ExitObserver, GuestBackend, GuestExit, GuestRunner, GuestSpec};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// Why a sandbox could not be started at all. Once the run row exists,
/// failures are outcomes (InternalError), not errors.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The database cannot be opened or is not alcove's.
    #[error(transparent)]
    Database(#[from] StoreError),
    /// agent.sock cannot be created.
    #[error(transparent)]
    Socket(#[from] RelayError),
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// agent.sock's directory cannot be created or is not private.
    #[error(transparent)]
    SocketDir(#[from] alcove_layout::LayoutError),
    /// A thread could not be started.
    #[error("cannot start the {what} thread: {source}")]
    Thread {
        /// Which thread.
        what: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// The actor system died during start-up.
    #[error("the actor system stopped during start-up")]
    ActorsGone,
}

/// What to start.
#[derive(Clone, Debug)]
pub struct SandboxOptions {
    /// Sandbox name.
    pub name: String,
    /// The configuration stored with the sandbox row (JSON).
    pub config_json: String,
    /// The SQLite database.
    pub db_path: PathBuf,
    /// Store tuning (busy timeout, retry budget, metric retention).
    pub store: StoreOptions,
    /// agent.sock.
    pub socket_path: PathBuf,
    /// The guest to create.
    pub spec: GuestSpec,
    /// Timing policies.
    pub policy: Policy,
    /// The clock the policies use.
    pub clock: Arc<dyn Clock>,
    /// Pid recorded in the run row (the process that owns the sandbox).
    pub pid: u32,
    /// Who removes agent.sock at the end.
    pub socket_removal: SocketRemoval,
    /// The network engine's settings when the guest has a link
    /// (`spec.network` set); `None`: loopback only, no engine.
    pub network: Option<crate::net_settings::NetworkPlan>,
}

/// Who removes agent.sock when the sandbox ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SocketRemoval {
    /// Lifecycle, once the run's end is committed and before the outcome
    /// is published (and the exit observer's last resort, after its write).
    #[default]
    AfterRunEnd,
    /// The caller, after the [`GuestDriver`] has returned: the standalone
    /// process removes it as its last act, once the backend has cleaned up
    /// (a jail's cgroups), so a socket file left with no sandbox process
    /// behind it marks an end that did not finish.
    ByCaller,
}

impl SandboxOptions {
    /// Options with defaults for everything but names and paths.
    pub fn new(
        name: impl Into<String>,
        db_path: impl Into<PathBuf>,
        socket_path: impl Into<PathBuf>,
    ) -> SandboxOptions {
        SandboxOptions {
            name: name.into(),
            config_json: "{}".into(),
            db_path: db_path.into(),
            store: StoreOptions::default(),
            socket_path: socket_path.into(),
            spec: GuestSpec::default(),
            policy: Policy::default(),
            clock: Arc::new(MonotonicClock::new()),
            pid: std::process::id(),
            socket_removal: SocketRemoval::default(),
            network: None,
        }
    }
}

/// What the handle sends the relay.
type RelayForHandle = (Recipient<Touch>, Recipient<GetActivity>);

/// Control of a running sandbox from outside the actor system.
pub struct SandboxHandle {
    lifecycle: Addr<Lifecycle>,
    touch: Recipient<Touch>,
    activity: Recipient<GetActivity>,
    relay_counters: Arc<RelayCounters>,
    shared: Arc<Published>,
    socket_path: PathBuf,
    actor_thread: Mutex<Option<JoinHandle<()>>>,
}

impl SandboxHandle {
    /// Asks for a graceful stop (reason ShutdownRequested, unless another
    /// cause came first).
    pub fn stop(&self) {
        self.terminate(TerminationReason::ShutdownRequested, "stop requested by the host program");
    }

    /// Ends the sandbox with `reason` (first cause wins).
    pub fn terminate(&self, reason: TerminationReason, detail: &str) {
        self.lifecycle.do_send(Terminate::new(reason, detail));
    }

    /// Ends the sandbox with `reason`, forcing the guest off without a
    /// graceful shutdown (first cause wins).
    pub fn kill(&self, reason: TerminationReason, detail: &str) {
        self.lifecycle.do_send(Terminate::new(reason, detail).forced());
    }

    /// Counts as activity for the idle timeout.
    pub fn touch(&self) {
        self.touch.do_send(Touch);
    }

    /// What the watchdog's rules look at (readiness, the last heartbeat and
    /// activity on the sandbox's clock, open sessions), asked of the relay;
    /// `None` once the sandbox has ended. Blocks the calling thread until the
    /// relay answers: not for use on an async runtime's thread.
    pub fn activity(&self) -> Option<Activity> {
        let ask = self.activity.send(GetActivity);
        let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().ok()?;
        runtime.block_on(ask).ok()
    }

    /// What the relay has held for its clients and the guest (high-water
    /// marks; see [`crate::actors::relay::flow`]).
    pub fn relay_stats(&self) -> RelayStats {
        self.relay_counters.stats()
    }

    /// agent.sock of this sandbox.
    pub fn socket_path(&self) -> &Path {
        &self.socket_path
    }

    /// Waits until the agent is ready; false if the sandbox ended first or
    /// the timeout passed.
    pub fn wait_ready(&self, timeout: Duration) -> bool {
        self.shared.wait_ready(timeout)
    }

    /// The outcome, if the sandbox has ended.
    pub fn outcome(&self) -> Option<Outcome> {
        self.shared.outcome()
    }

    /// Waits for the end and returns the outcome.
    pub fn wait(&self) -> Outcome {
        let outcome = self.shared.wait_outcome(None);
        self.join_actor_thread();
        outcome.unwrap_or_else(|| lost_outcome("the sandbox ended without an outcome"))
    }

    /// Waits at most `timeout` for the end.
    pub fn wait_timeout(&self, timeout: Duration) -> Option<Outcome> {
        let outcome = self.shared.wait_outcome(Some(timeout));
        if outcome.is_some() {
            self.join_actor_thread();
        }
        outcome
    }

    fn join_actor_thread(&self) {
        let handle = self.actor_thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(h) = handle {
            let _ = h.join();
        }
    }
}

fn lost_outcome(detail: &str) -> Outcome {
    Outcome::of(RunEnd::internal_error(None, detail), false)
}

/// Drives the guest to its end. Must be run exactly once.
pub struct GuestDriver {
    runner: Option<Box<dyn GuestRunner>>,
    observer: ExitObserver,
}

impl GuestDriver {
    /// Runs the guest on this thread until it ends and the outcome is final.
    /// For a krun guest this never returns (the process `_exit`s).
    pub fn run(self) {
        if let Some(runner) = self.runner {
            runner.run(self.observer);
        }
    }

    /// Runs the guest on a new thread.
    pub fn spawn(self) -> Result<JoinHandle<()>, StartError> {
        std::thread::Builder::new()
            .name("alcove-guest".into())
            .spawn(move || self.run())
            .map_err(|source| StartError::Thread { what: "guest", source })
    }
}

/// Starts a sandbox with `backend`; see the module docs.
pub fn launch(
    opts: SandboxOptions,
    backend: Box<dyn GuestBackend>,
) -> Result<(SandboxHandle, GuestDriver), StartError> {
    let store = Store::open_with(&opts.db_path, store_options_within(&opts.store, &opts.policy))?;
    let listener = bind_agent_socket(&opts.socket_path)?;
    launch_with(store, listener, opts, backend)
}

/// Binds agent.sock (0600) in its directory, which
/// [`alcove_layout::ensure_private_dir`] creates 0700 or refuses.
pub fn bind_agent_socket(path: &Path) -> Result<std::os::unix::net::UnixListener, StartError> {
    if let Some(dir) = path.parent() {
        alcove_layout::ensure_private_dir(dir)?;
    }
    Ok(bind_socket(path)?)
}

/// `store` with its retry budget (and each attempt's busy wait) cut to what
/// the policy's [`ExitBudget`] leaves the final write, so the store never
/// retries past the point where the exit observer gives up on it.
pub fn store_options_within(store: &StoreOptions, policy: &Policy) -> StoreOptions {
    let final_write = policy.exit_budget().final_write();
    StoreOptions {
        retry_budget: store.retry_budget.min(final_write),
        busy_timeout: store.busy_timeout.min(final_write),
        ..store.clone()
    }
}

/// [`launch`] with the database opened and agent.sock bound by the caller
/// (with options from [`store_options_within`]).
/// The standalone process does both before it prints its pid: a bad
/// database is refused before it claims to run, and a client that reads the
/// pid can connect at once (the relay answers once the agent is ready).
pub fn launch_with(
    store: Store,
    listener: std::os::unix::net::UnixListener,
    opts: SandboxOptions,
    backend: Box<dyn GuestBackend>,
) -> Result<(SandboxHandle, GuestDriver), StartError> {
    let shared = Arc::new(Published::default());
    let relay_counters = Arc::new(RelayCounters::default());

    let (addr_tx, addr_rx) = crossbeam_channel::bounded(1);
    let actor_thread = {
        let opts = opts.clone();
        let shared = shared.clone();
        let counters = relay_counters.clone();
        std::thread::Builder::new()
            .name("alcove-actors".into())
            .spawn(move || run_actor_system(opts, store, listener, (shared, counters), addr_tx))
            .map_err(|source| StartError::Thread { what: "actor", source })?
    };
    let (lifecycle, (touch, activity), network) = match addr_rx.recv() {
        Ok(addrs) => addrs,
        Err(_) => {
            let _ = actor_thread.join();
            let _ = std::fs::remove_file(&opts.socket_path);
            return Err(StartError::ActorsGone);
        }
    };
    let handle = SandboxHandle {
        lifecycle: lifecycle.clone(),
        touch,
        activity,
        relay_counters,
        shared: shared.clone(),
        socket_path: opts.socket_path.clone(),
        actor_thread: Mutex::new(Some(actor_thread)),
    };
    let observer = exit_observer(&opts, lifecycle.clone(), shared.clone());

    let spec =
        GuestSpec { heartbeat: Some(crate::actors::watchdog::agent_heartbeat(&opts.policy)), ..opts.spec.clone() };
    match backend.launch(&spec) {
        Ok(launched) => {
            if let Some(device) = launched.network_device {
                network.do_send(StartNetwork { device });
            }
            lifecycle.do_send(GuestLaunched { agent_channel: launched.agent_channel, control: launched.control });
            Ok((handle, GuestDriver { runner: Some(launched.runner), observer }))
        }
        Err(e) => {
            tracing::error!(error = %e, "the backend could not create the guest");
            let (ack_tx, ack_rx) = crossbeam_channel::bounded(1);
            lifecycle.do_send(LaunchFailed { error: e.to_string(), ack: ack_tx });
            if ack_rx.recv_timeout(opts.policy.exit_budget().ack_wait()).is_err() {
                last_resort(&opts, &shared, None, "the actor system did not finalise a failed launch in time");
            }
            Ok((handle, GuestDriver { runner: None, observer }))
        }
    }
}

/// [`launch`] with the guest driven on its own thread.
pub fn start(opts: SandboxOptions, backend: Box<dyn GuestBackend>) -> Result<SandboxHandle, StartError> {
    let (handle, driver) = launch(opts, backend)?;
    driver.spawn()?;
    Ok(handle)
}

/// Starts the actors on this thread and runs them until Lifecycle stops
/// the system. The one place that knows the whole graph: each actor is
/// given, at construction, a `Recipient` for each message it sends (see
/// docs/ARCHITECTURE.md, "Actors and messages"). Lifecycle's context is
/// made first, so the actors that report to it can hold its address
/// before it runs; it is started last, with the addresses of all of them.
fn run_actor_system(
    opts: SandboxOptions,
    store: Store,
    listener: std::os::unix::net::UnixListener,
    (shared, relay_counters): (Arc<Published>, Arc<RelayCounters>),
    addr_tx: crossbeam_channel::Sender<(Addr<Lifecycle>, RelayForHandle, Recipient<StartNetwork>)>,
) {
    let panic_shared = shared.clone();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
        let system = System::new();
        system.block_on(async move {
            let store = Mutex::new(Some(store));
            let (db_path, store_options) = (opts.db_path.clone(), store_options_within(&opts.store, &opts.policy));
            let samples = SampleGate::default();
            let db_samples = samples.clone();
            let db = SyncArbiter::start(1, move || {
                // The first call gets the connection opened (and checked) by
                // `launch`; should actix ever call again, a new one is opened.
                let store = match store.lock().unwrap_or_else(|p| p.into_inner()).take() {
                    Some(s) => Ok(s),
                    None => Store::open_with(&db_path, store_options.clone()).map_err(|e| e.to_string()),
                };
                DbActor::new(store, db_samples.clone())
            });
            let lifecycle_ctx = Context::<Lifecycle>::new();
            let lifecycle = lifecycle_ctx.address();
            let relay = Relay::new(
                listener,
                opts.socket_path.clone(),
                opts.clock.clone(),
                RelayPeers {
                    agent_ready: lifecycle.clone().recipient(),
                    terminate: lifecycle.clone().recipient(),
                    set_paused: lifecycle.clone().recipient(),
                },
                relay_counters,
            )
            .start();
            let vm = GuestActor::new(opts.policy, relay.clone().recipient()).start();
            let metrics = Metrics::new(opts.name.clone(), opts.policy.metrics_interval, db.clone().recipient()).start();
            // The network engine's owner; idle (no engine) without a link.
            let network = NetworkActor::new(
                opts.name.clone(),
                opts.network.clone(),
                db.clone().recipient(),
                metrics.clone().recipient(),
                lifecycle.clone().recipient(),
            )
            .start();
            Watchdog::new(opts.policy, opts.clock.clone(), relay.clone().recipient(), lifecycle.clone().recipient())
                .start();
            let peers = LifecyclePeers {
                start_run: db.clone().recipient(),
                set_status: db.clone().recipient(),
                finish_run: db.recipient(),
                attach_guest: relay.clone().recipient(),
                open_to_clients: relay.clone().recipient(),
                close_relay: relay.clone().recipient(),
                stop_guest: vm.clone().recipient(),
                attach_control: vec![metrics.recipient(), vm.recipient()],
            };
            lifecycle_ctx.run(
                Lifecycle::new(opts.name.clone(), opts.config_json.clone(), opts.pid, peers, samples, shared.clone())
                    .with_socket_removal(opts.socket_removal, opts.socket_path.clone()),
            );
            let _ = addr_tx.send((lifecycle, (relay.clone().recipient(), relay.recipient()), network.recipient()));
        });
        if let Err(e) = system.run() {
            tracing::error!(error = %e, "the actor system failed");
        }
    }));
    if result.is_err() {
        tracing::error!("the actor thread panicked; forcing the guest off");
        if let Some(control) = panic_shared.control() {
            control.force_stop();
        }
    }
}

fn exit_observer(opts: &SandboxOptions, lifecycle: Addr<Lifecycle>, shared: Arc<Published>) -> ExitObserver {
    let opts = opts.clone();
    ExitObserver::new(move |exit: GuestExit| {
        let (ack_tx, ack_rx) = crossbeam_channel::bounded(1);
        lifecycle.do_send(GuestExited { exit: exit.clone(), ack: ack_tx });
        if ack_rx.recv_timeout(opts.policy.exit_budget().ack_wait()).is_err() {
            last_resort(&opts, &shared, Some(&exit), "the actor system did not finalise the run in time");
        }
    })
}

/// Finalises from the calling thread when the actors could not: makes the
/// run's end final ([`finish`]) with a fresh connection, removing the
/// socket unless the caller does.
fn last_resort(opts: &SandboxOptions, shared: &Published, exit: Option<&GuestExit>, detail: &str) {
    tracing::error!(detail, "finalising without the actor system");
    let end = RunEnd::internal_error(exit, detail);
    let cleanup = Cleanup {
        leftovers: None,
        socket: (opts.socket_removal == SocketRemoval::AfterRunEnd).then(|| opts.socket_path.clone()),
    };
    let short = StoreOptions {
        retry_budget: ExitBudget::LAST_RESORT / 2,
        busy_timeout: ExitBudget::LAST_RESORT / 4,
        ..opts.store.clone()
    };
    let store = shared.run().map(|run| (Store::open_with(&opts.db_path, short), run));
    let recorded = match &store {
        Some((Ok(store), run)) => finish(Some(Write { store, run: *run, end: &end }), &cleanup),
        Some((Err(e), _)) => {
            tracing::error!(error = %e, "the last-resort write failed");
            finish(None, &cleanup)
        }
        None => finish(None, &cleanup),
    };
    if let crate::run_end::Recorded::Failed(e) = &recorded {
        tracing::error!(error = %e, "the last-resort write failed");
    }
    shared.set_outcome_if_unset(Outcome::of(end, recorded.is_final()));
}
