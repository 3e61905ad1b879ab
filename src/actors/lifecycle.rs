//! The Lifecycle actor: the sandbox's state machine and the one place where
//! the termination reason is decided.
//!
//! States: Starting → Ready → Draining → Exited; while Ready, the guest may
//! be paused and resumed ([`SetPaused`]: the backend freezes or thaws every
//! process of the guest, then the record says Paused or Running, then the
//! request is answered, so an answered request is both done and recorded).
//! One pause or resume runs at a time. A cause to end a paused sandbox thaws it first (a frozen
//! process cannot act on a shutdown, and on cgroup v1 not even die).
//! The first [`Terminate`] to
//! arrive fixes the reason (later ones are logged and ignored); only then is
//! Guest told to stop. When the guest ends ([`GuestExited`]) without an earlier
//! cause, its exit decides ([`RunEnd::decide`]): code 0 is Completed, any
//! other code or a killing signal Failed.
//!
//! Finalisation runs once, in this order: close the relay (no new client;
//! the guest's last frames routed, then open sessions aborted), make the run's end final through the Db actor
//! ([`crate::run_end::finish`]: commit the run row and the sandbox status,
//! then remove agent.sock unless the caller does, see [`SocketRemoval`]),
//! publish the [`Outcome`], acknowledge the exit observer, stop the actor
//! system. A socket file with no live sandbox process behind it therefore
//! marks an end that did not finish, for the CLI's reaper to clean up.
//! The run row is written before anything else is handled (`ctx.wait`), so
//! a finalisation never races its creation.

use crate::actors::db::SampleGate;
use crate::config::Outcome;
use crate::messages::{
    AgentReady, AttachControl, AttachGuest, CloseRelay, DbFinishRun, DbSetStatus, DbStartRun, GuestExited,
    GuestLaunched, LaunchFailed, OpenToClients, SetPaused, StopGuest, Terminate,
};
use crate::run_end::{Cleanup, RunEnd};
use crate::sandbox::SocketRemoval;
use crate::store::{RunId, SandboxStatus, TerminationReason};
use actix::prelude::*;
use alcove_backend::{GuestControl, GuestExit};
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// Lifecycle states.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Guest booting, agent not ready.
    Starting,
    /// Agent ready.
    Ready,
    /// A termination reason is fixed; the guest is being stopped.
    Draining,
    /// Final: the outcome is committed.
    Exited,
}

/// State shared between the actors and the threads outside the actor system
/// (the embedding handle, the exit observer).
#[derive(Default)]
pub struct Published {
    facts: Mutex<Facts>,
    changed: Condvar,
}

#[derive(Default)]
struct Facts {
    ready: bool,
    outcome: Option<Outcome>,
    run: Option<RunId>,
    control: Option<Arc<dyn GuestControl>>,
}

impl Published {
    fn lock(&self) -> MutexGuard<'_, Facts> {
        self.facts.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn update(&self, f: impl FnOnce(&mut Facts)) {
        f(&mut self.lock());
        self.changed.notify_all();
    }

    /// The run row, once written.
    pub fn run(&self) -> Option<RunId> {
        self.lock().run
    }

    /// The guest's control handle, once launched.
    pub fn control(&self) -> Option<Arc<dyn GuestControl>> {
        self.lock().control.clone()
    }

    /// The final outcome, if the sandbox has ended.
    pub fn outcome(&self) -> Option<Outcome> {
        self.lock().outcome.clone()
    }

    /// Records the outcome unless one is already there (used by the exit
    /// observer's last resort).
    pub fn set_outcome_if_unset(&self, outcome: Outcome) {
        self.update(|i| {
            if i.outcome.is_none() {
                i.outcome = Some(outcome);
            }
        });
    }

    /// Waits until the agent is ready or the sandbox has ended; true if ready.
    pub fn wait_ready(&self, timeout: Duration) -> bool {
        let guard = self.lock();
        let (guard, _) = self
            .changed
            .wait_timeout_while(guard, timeout, |i| !i.ready && i.outcome.is_none())
            .unwrap_or_else(|p| p.into_inner());
        guard.ready
    }

    /// Waits for the outcome.
    pub fn wait_outcome(&self, timeout: Option<Duration>) -> Option<Outcome> {
        let guard = self.lock();
        let guard = match timeout {
            Some(t) => {
                self.changed.wait_timeout_while(guard, t, |i| i.outcome.is_none()).unwrap_or_else(|p| p.into_inner()).0
            }
            None => self.changed.wait_while(guard, |i| i.outcome.is_none()).unwrap_or_else(|p| p.into_inner()),
        };
        guard.outcome.clone()
    }
}

/// The messages Lifecycle sends, and to whom (given at construction by
/// [`crate::sandbox`]'s `run_actor_system`, the one place that knows the
/// whole graph).
pub struct LifecyclePeers {
    /// Db: the run row.
    pub start_run: Recipient<DbStartRun>,
    /// Db: the sandbox status.
    pub set_status: Recipient<DbSetStatus>,
    /// Db: the run's end.
    pub finish_run: Recipient<DbFinishRun>,
    /// Relay: the host end of the agent channel.
    pub attach_guest: Recipient<AttachGuest>,
    /// Relay: clients may have their handshake.
    pub open_to_clients: Recipient<OpenToClients>,
    /// Relay: stop accepting, abort open sessions.
    pub close_relay: Recipient<CloseRelay>,
    /// Guest: end the guest.
    pub stop_guest: Recipient<StopGuest>,
    /// Guest and Metrics: the guest's control handle.
    pub attach_control: Vec<Recipient<AttachControl>>,
}

/// Decides how the sandbox ends.
pub struct Lifecycle {
    name: String,
    config_json: String,
    pid: u32,
    state: State,
    cause: Option<Terminate>,
    run: Option<RunId>,
    peers: LifecyclePeers,
    shared: Arc<Published>,
    samples: SampleGate,
    /// agent.sock, when Lifecycle removes it at the end.
    socket_after_end: Option<PathBuf>,
    finalising: bool,
    /// The guest is frozen (only while Ready).
    paused: bool,
    /// A pause or resume is under way.
    pausing: bool,
}

impl Lifecycle {
    /// A lifecycle for sandbox `name`, sending to `peers`.
    pub fn new(
        name: String,
        config_json: String,
        pid: u32,
        peers: LifecyclePeers,
        samples: SampleGate,
        shared: Arc<Published>,
    ) -> Lifecycle {
        Lifecycle {
            name,
            config_json,
            pid,
            state: State::Starting,
            cause: None,
            run: None,
            peers,
            shared,
            samples,
            socket_after_end: None,
            finalising: false,
            paused: false,
            pausing: false,
        }
    }

    /// Who removes agent.sock (`socket`) at the end: with
    /// [`SocketRemoval::AfterRunEnd`], Lifecycle once the run's end is
    /// committed (default: nobody, e.g. a test without a socket).
    pub fn with_socket_removal(mut self, removal: SocketRemoval, socket: PathBuf) -> Lifecycle {
        self.socket_after_end = (removal == SocketRemoval::AfterRunEnd).then_some(socket);
        self
    }

    /// Records the sandbox status, then runs `then`. A failed write is a
    /// cause to end the sandbox (InternalError).
    fn set_status(&self, status: SandboxStatus, ctx: &mut Context<Self>, then: impl FnOnce(&mut Self) + 'static) {
        let db = self.peers.set_status.clone();
        let msg = DbSetStatus { sandbox: self.name.clone(), status };
        ctx.spawn(async move { db.send(msg).await }.into_actor(self).map(|res, this, ctx: &mut Context<Self>| {
            if let Some(err) = flatten(res) {
                ctx.notify(Terminate::new(
                    TerminationReason::InternalError,
                    format!("cannot write the database: {err}"),
                ));
            }
            then(this);
        }));
    }

    /// The one path to the end: fixes the run's end and makes it final.
    fn finalise(&mut self, exit: Option<GuestExit>, ack: crossbeam_channel::Sender<()>, ctx: &mut Context<Self>) {
        if self.finalising {
            let _ = ack.send(());
            return;
        }
        self.finalising = true;
        // The final write goes ahead of any sample still queued for the database.
        self.samples.close();
        let end = RunEnd::decide(self.cause.take(), exit.as_ref());
        tracing::info!(reason = %end.reason, exit_code = ?end.exit_code, exit_signal = ?end.exit_signal, detail = ?end.detail, "finalising");
        let close_relay = self.peers.close_relay.clone();
        let db = self.peers.finish_run.clone();
        let finish = DbFinishRun {
            run: self.run,
            end: end.clone(),
            cleanup: Cleanup { leftovers: None, socket: self.socket_after_end.clone() },
        };
        let fut = async move {
            let _ = close_relay.send(CloseRelay).await;
            crate::kill_point!("sandbox-during-finalisation");
            let cleanup = finish.cleanup.clone();
            match db.send(finish).await {
                Ok(recorded) => recorded,
                Err(e) => {
                    tracing::error!(error = %e, "the database actor is gone; the run's end is not recorded");
                    crate::run_end::finish(None, &cleanup);
                    false
                }
            }
        };
        ctx.wait(fut.into_actor(self).map(move |recorded, this, _| {
            this.state = State::Exited;
            this.shared.update(|i| i.outcome = Some(Outcome::of(end, recorded)));
            let _ = ack.send(());
            System::current().stop();
        }));
    }
}

/// Collapses a mailbox error and a handler error into one message.
fn flatten<T>(res: Result<Result<T, String>, MailboxError>) -> Option<String> {
    match res {
        Ok(Ok(_)) => None,
        Ok(Err(e)) => Some(e),
        Err(e) => Some(format!("the database actor is gone: {e}")),
    }
}

impl Actor for Lifecycle {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let db = self.peers.start_run.clone();
        let msg = DbStartRun {
            sandbox: self.name.clone(),
            config_json: self.config_json.clone(),
            pid: self.pid,
            pid_start_ticks: crate::liveness::ProcessIdentity::of(self.pid).map(|p| p.start_ticks),
        };
        // Nothing else is handled until the run row exists (or cannot).
        ctx.wait(async move { db.send(msg).await }.into_actor(self).map(|res, this, ctx| match res {
            Ok(Ok(run)) => {
                this.run = Some(run);
                this.shared.update(|i| i.run = Some(run));
            }
            Ok(Err(e)) => {
                ctx.notify(Terminate::new(TerminationReason::InternalError, format!("cannot write the database: {e}")))
            }
            Err(e) => {
                ctx.notify(Terminate::new(TerminationReason::InternalError, format!("the database actor is gone: {e}")))
            }
        }));
    }
}

impl Handler<GuestLaunched> for Lifecycle {
    type Result = ();

    fn handle(&mut self, msg: GuestLaunched, _: &mut Self::Context) {
        self.shared.update(|i| i.control = Some(msg.control.clone()));
        self.peers.attach_guest.do_send(AttachGuest { channel: msg.agent_channel });
        for peer in &self.peers.attach_control {
            peer.do_send(AttachControl { control: msg.control.clone() });
        }
    }
}

impl Handler<LaunchFailed> for Lifecycle {
    type Result = ();

    fn handle(&mut self, msg: LaunchFailed, ctx: &mut Self::Context) {
        if self.cause.is_none() {
            self.cause = Some(Terminate::new(
                TerminationReason::InternalError,
                format!("the guest could not start: {}", msg.error),
            ));
        }
        self.finalise(None, msg.ack, ctx);
    }
}

impl Handler<AgentReady> for Lifecycle {
    type Result = ();

    fn handle(&mut self, msg: AgentReady, ctx: &mut Self::Context) {
        if self.state != State::Starting {
            return;
        }
        tracing::info!(agent = %msg.ready.agent_version, ready_us = msg.ready.boot.ready_us, "agent ready");
        self.state = State::Ready;
        crate::kill_point!("sandbox-before-running");
        // Clients and waiters learn of readiness once the record says Running.
        self.set_status(SandboxStatus::Running, ctx, |this| {
            this.peers.open_to_clients.do_send(OpenToClients);
            this.shared.update(|i| i.ready = true);
            crate::kill_point!("sandbox-after-ready");
        });
    }
}

impl Lifecycle {
    /// Why the guest cannot be paused (`paused`) or resumed now, if it cannot.
    fn refuse_pause(&self, paused: bool) -> Option<String> {
        let not_running = match self.state {
            State::Starting => Some("the sandbox is still starting"),
            State::Draining | State::Exited => Some("the sandbox is stopping"),
            State::Ready if self.finalising => Some("the sandbox is stopping"),
            State::Ready => None,
        };
        if let Some(why) = not_running {
            return Some(why.to_string());
        }
        if self.pausing {
            return Some("a pause or resume of this sandbox is already under way".into());
        }
        match (paused, self.paused) {
            (true, true) => Some("the sandbox is already paused".into()),
            (false, false) => Some("the sandbox is not paused".into()),
            _ => None,
        }
    }

    /// Thaws a paused guest (before it is stopped).
    fn thaw_for_stop(&mut self) {
        if !(self.paused || self.pausing) {
            return;
        }
        if let Some(control) = self.shared.control() {
            if let Err(e) = control.resume() {
                tracing::warn!(error = %e, "could not thaw the paused guest before stopping it");
            }
        }
        self.paused = false;
    }
}

impl Handler<SetPaused> for Lifecycle {
    type Result = ResponseActFuture<Self, Result<(), String>>;

    fn handle(&mut self, msg: SetPaused, _: &mut Self::Context) -> Self::Result {
        if let Some(why) = self.refuse_pause(msg.paused) {
            return Box::pin(fut::ready(Err(why)));
        }
        let Some(control) = self.shared.control() else {
            return Box::pin(fut::ready(Err("the sandbox has no guest to pause".to_string())));
        };
        self.pausing = true;
        let paused = msg.paused;
        tracing::info!(paused, "pause requested");
        // Freezing waits for the kernel (up to freezer::FREEZE_BUDGET): off
        // the actor thread.
        let frozen = tokio::task::spawn_blocking(move || if paused { control.pause() } else { control.resume() });
        let record = self.peers.set_status.clone();
        let sandbox = self.name.clone();
        Box::pin(
            async move {
                let changed = frozen.await.unwrap_or_else(|e| Err(format!("the pause task failed: {e}")));
                if let Err(e) = changed {
                    return (false, Err(e));
                }
                let status = if paused { SandboxStatus::Paused } else { SandboxStatus::Running };
                match flatten(record.send(DbSetStatus { sandbox, status }).await) {
                    None => (true, Ok(())),
                    Some(e) => (true, Err(format!("cannot write the database: {e}"))),
                }
            }
            .into_actor(self)
            .map(move |(changed, result), this, ctx| {
                this.pausing = false;
                if changed {
                    this.paused = paused;
                }
                let stopping = this.state != State::Ready || this.finalising;
                if stopping {
                    // A stop came meanwhile and thawed the guest; a freeze
                    // that finished after that thaw is undone here.
                    if let Some(control) = this.shared.control() {
                        let _ = control.resume();
                    }
                    this.paused = false;
                    if changed && this.state == State::Draining && !this.finalising {
                        // Our Paused may have landed after the stop's Draining.
                        this.set_status(SandboxStatus::Draining, ctx, |_| {});
                    }
                    return Err("the sandbox is stopping".to_string());
                }
                match &result {
                    Ok(()) => tracing::info!(paused, "pause state changed"),
                    // The guest changed but its record did not: end it rather
                    // than leave the record false.
                    Err(e) if changed => ctx.notify(Terminate::new(TerminationReason::InternalError, e.clone())),
                    Err(e) => tracing::warn!(paused, error = %e, "pause request failed"),
                }
                result
            }),
        )
    }
}

impl Handler<Terminate> for Lifecycle {
    type Result = ();

    fn handle(&mut self, msg: Terminate, ctx: &mut Self::Context) {
        if self.state == State::Draining || self.state == State::Exited || self.finalising {
            tracing::debug!(reason = %msg.reason, "later termination cause ignored");
            return;
        }
        self.thaw_for_stop();
        let graceful = self.state == State::Ready && msg.reason != TerminationReason::AgentUnresponsive && !msg.force;
        tracing::info!(reason = %msg.reason, detail = ?msg.detail, graceful, "terminating");
        self.cause = Some(msg);
        self.state = State::Draining;
        self.set_status(SandboxStatus::Draining, ctx, |_| {});
        crate::kill_point!("sandbox-during-stop");
        self.peers.stop_guest.do_send(StopGuest { graceful });
    }
}

impl Handler<GuestExited> for Lifecycle {
    type Result = ();

    fn handle(&mut self, msg: GuestExited, ctx: &mut Self::Context) {
        self.finalise(Some(msg.exit), msg.ack, ctx);
    }
}
