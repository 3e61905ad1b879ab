//! The Network actor: owns the sandbox's network engine
//! ([`alcove_net::Network`]) when the sandbox has a link.
//!
//! - It starts the engine when the backend hands over the guest's link
//!   ([`StartNetwork`]: a jail's TAP or a microVM's frame pair; the same
//!   engine, policy, DNS and records either way), publishing the configured ports (bound then: a
//!   port taken since `create` checked it ends the sandbox with
//!   InternalError rather than running without it).
//! - A forwarding thread (`alcove-net-events`) turns the engine's event
//!   channel into [`NetEvents`] batches; every flow record goes to Db
//!   ([`DbInsertFlows`]), and the engine's counters go to Metrics once
//!   ([`AttachNetCounters`]).
//! - Live changes (`alcove net policy`, `alcove port`) arrive on the
//!   sandbox's network control socket ([`crate::net_control`]), served
//!   while the engine lives.
//! - With secrets, the engine runs with their interceptor
//!   ([`alcove_net::secrets`]); a secret violation ends the sandbox (reason
//!   NetworkPolicy) with `--on-secret-violation terminate`, naming the
//!   secret and host, never the value.
//! - A policy denial ends the sandbox (reason NetworkPolicy) only when the
//!   settings say so; refusals by a bound or a martian address never do,
//!   nor does the engine stopping (its link goes away with the guest).
//!
//! Invariants:
//! - The engine lives exactly as long as this actor: dropping the actor
//!   (the actor system stopping) stops the engine and joins its thread,
//!   which ends the forwarding thread.
//! - Without a link no engine, thread or socket exists: a sandbox without
//!   `--net` costs nothing here.

use crate::messages::Terminate;
use crate::net_control::ControlServer;
use crate::net_settings::NetworkPlan;
use crate::store::{FlowRow, TerminationReason};
use actix::prelude::*;
use alcove_backend::NetworkDevice;
use alcove_net::device::{FrameDevice, PairDevice, TapDevice};
use alcove_net::policy::DecidedBy;
use alcove_net::ports::BoundPort;
use alcove_net::{CloseReason, Counters, Direction, FlowRecord, NetEvent, Network};
use std::sync::Arc;
use std::time::UNIX_EPOCH;

/// The backend created the guest's link: start the engine on it.
#[derive(Message)]
#[rtype(result = "()")]
pub struct StartNetwork {
    /// The host end of the guest's link.
    pub device: NetworkDevice,
}

/// Flow records for the Db actor.
#[derive(Message, Debug)]
#[rtype(result = "Result<(), String>")]
pub struct DbInsertFlows {
    /// The sandbox.
    pub sandbox: String,
    /// The records, oldest first.
    pub rows: Vec<FlowRow>,
}

/// The engine's live counters, for the Metrics actor.
#[derive(Message)]
#[rtype(result = "()")]
pub struct AttachNetCounters(pub Arc<Counters>);

/// Events of the engine, in order (sent by the forwarding thread).
#[derive(Message)]
#[rtype(result = "()")]
pub struct NetEvents(pub Vec<NetEvent>);

/// The verdict of a flow that carried a secret's placeholder where it does
/// not belong (the start of its close text).
pub const SECRET_VIOLATION: &str = "secret_violation";

/// Most events one [`NetEvents`] batch carries.
const MAX_BATCH: usize = 256;

/// Owns the engine.
pub struct NetworkActor {
    sandbox: String,
    plan: Option<NetworkPlan>,
    /// A policy denial ends the sandbox.
    deny_ends_sandbox: bool,
    /// A secret violation ends the sandbox.
    secret_violation_ends: bool,
    /// Serves live changes; dropped before the engine (field order).
    control: Option<ControlServer>,
    engine: Option<Arc<Network>>,
    db: Recipient<DbInsertFlows>,
    metrics: Recipient<AttachNetCounters>,
    lifecycle: Recipient<Terminate>,
}

impl NetworkActor {
    /// An actor for `sandbox`; `plan` is `None` for a sandbox without a link.
    pub fn new(
        sandbox: String,
        plan: Option<NetworkPlan>,
        db: Recipient<DbInsertFlows>,
        metrics: Recipient<AttachNetCounters>,
        lifecycle: Recipient<Terminate>,
    ) -> NetworkActor {
        let deny_ends_sandbox = plan.as_ref().is_some_and(|p| p.deny_ends_sandbox);
        let secret_violation_ends = plan.as_ref().and_then(|p| p.secrets.as_ref()).is_some_and(|s| s.violation_ends);
        NetworkActor {
            sandbox,
            plan,
            deny_ends_sandbox,
            secret_violation_ends,
            control: None,
            engine: None,
            db,
            metrics,
            lifecycle,
        }
    }

    fn start_engine(&mut self, device: NetworkDevice, ctx: &mut Context<Self>) -> Result<(), String> {
        let plan = self.plan.take().ok_or("the guest has a link but the sandbox has no network settings")?;
        let device: Box<dyn FrameDevice> = match device {
            NetworkDevice::Tap { fd, name } => Box::new(TapDevice::from_fd(fd, name)),
            NetworkDevice::FramePair { fd } => Box::new(PairDevice::from_fd(fd)),
        };
        let ports = plan.ports.iter().map(|m| BoundPort::bind(*m)).collect::<Result<Vec<_>, _>>();
        let ports = ports.map_err(|e| e.to_string())?;
        let secrets = plan.secrets.as_ref().map(|s| s.config.secrets.clone());
        let interceptor = plan.secrets.map(|s| {
            Box::new(alcove_net::secrets::SecretsInterceptor::new(s.config))
                as Box<dyn alcove_net::intercept::Interceptor>
        });
        let (engine, events) =
            Network::start_with_interceptor(plan.config, device, ports, interceptor).map_err(|e| e.to_string())?;
        let addr = ctx.address();
        std::thread::Builder::new()
            .name("alcove-net-events".into())
            .spawn(move || {
                while let Ok(first) = events.recv() {
                    let mut batch = vec![first];
                    batch.extend(events.try_iter().take(MAX_BATCH - 1));
                    addr.do_send(NetEvents(batch));
                }
            })
            .map_err(|e| format!("cannot start the network event thread: {e}"))?;
        self.metrics.do_send(AttachNetCounters(engine.shared_counters()));
        let engine = Arc::new(engine);
        if let Some(path) = plan.control_socket {
            // Live changes are a convenience: the network runs without them.
            match ControlServer::start(path.clone(), Arc::downgrade(&engine), secrets, plan.config_writer.clone()) {
                Ok(server) => self.control = Some(server),
                Err(e) => tracing::warn!(path = %path.display(), error = %e, "no live network control"),
            }
        }
        self.engine = Some(engine);
        Ok(())
    }
}

impl Actor for NetworkActor {
    type Context = Context<Self>;
}

impl Handler<StartNetwork> for NetworkActor {
    type Result = ();

    fn handle(&mut self, msg: StartNetwork, ctx: &mut Self::Context) {
        if let Err(e) = self.start_engine(msg.device, ctx) {
            tracing::error!(error = %e, "the network could not start");
            self.lifecycle
                .do_send(Terminate::new(TerminationReason::InternalError, format!("cannot start the network: {e}")));
        }
    }
}

impl Handler<NetEvents> for NetworkActor {
    type Result = ();

    fn handle(&mut self, msg: NetEvents, _: &mut Self::Context) {
        let deny_ends = self.deny_ends_sandbox;
        let secret_ends = self.secret_violation_ends;
        let mut rows = Vec::with_capacity(msg.0.len());
        for event in msg.0 {
            match event {
                NetEvent::Flow(record) => rows.push(flow_row(&record)),
                NetEvent::Denied(record) => {
                    if secret_ends && matches!(record.close, CloseReason::SecretViolation { .. }) {
                        let why = format!("secret violation: {}", close_text(&record.close));
                        self.lifecycle.do_send(Terminate::new(TerminationReason::NetworkPolicy, why));
                    }
                    if deny_ends && is_policy_denial(&record.decided_by) {
                        self.lifecycle.do_send(Terminate::new(TerminationReason::NetworkPolicy, violation(&record)));
                    }
                    rows.push(flow_row(&record));
                }
                // Not a cause to end the sandbox: the guest's link vanishes
                // with its namespace when the guest ends, and the engine
                // then stops on the device error, possibly before the
                // guest's exit reaches Lifecycle (whose first cause wins).
                NetEvent::Stopped { error: Some(e) } => {
                    tracing::warn!(error = %e, "the network engine stopped");
                }
                NetEvent::Stopped { error: None } => {}
            }
        }
        if !rows.is_empty() {
            self.db.do_send(DbInsertFlows { sandbox: self.sandbox.clone(), rows });
        }
    }
}

/// Whether the policy (not a bound, not a martian address) refused it.
fn is_policy_denial(by: &DecidedBy) -> bool {
    matches!(by, DecidedBy::Rule { .. } | DecidedBy::Profile(_) | DecidedBy::Metadata)
}

fn violation(record: &FlowRecord) -> String {
    let name = record.name.as_deref().map(|n| format!(" ({n})")).unwrap_or_default();
    format!("network policy: {} to {}{name} denied by {}", record.protocol, record.remote, record.decided_by)
}

/// A flow record as stored.
pub fn flow_row(record: &FlowRecord) -> FlowRow {
    FlowRow {
        started_at_ms: record.started.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64),
        duration_ms: record.duration.as_millis() as u64,
        protocol: record.protocol.to_string(),
        direction: match record.direction {
            Direction::Outbound => "outbound",
            Direction::Inbound => "inbound",
        }
        .into(),
        guest: record.guest.to_string(),
        remote: record.remote.to_string(),
        name: record.name.clone(),
        allowed: record.allowed,
        decided_by: record.decided_by.to_string(),
        bytes_from_guest: record.bytes_from_guest,
        bytes_to_guest: record.bytes_to_guest,
        close: close_text(&record.close),
    }
}

fn close_text(close: &CloseReason) -> String {
    match close {
        CloseReason::Closed => "closed".into(),
        CloseReason::Denied => "denied".into(),
        CloseReason::ConnectFailed(why) => format!("connect failed: {why}"),
        CloseReason::GuestReset => "guest reset".into(),
        CloseReason::HostReset(why) => format!("host reset: {why}"),
        CloseReason::Revoked => "revoked".into(),
        CloseReason::Idle => "idle".into(),
        CloseReason::Shutdown => "shutdown".into(),
        CloseReason::Answered(what) => format!("answered {what}"),
        CloseReason::Blocked(why) => format!("blocked: {why}"),
        CloseReason::SecretViolation { secret, host, how } => {
            format!("{SECRET_VIOLATION}: secret {secret} sent to {host} {how}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alcove_net::policy::{Profile, Proto};
    use std::time::{Duration, SystemTime};

    fn record(allowed: bool, by: DecidedBy) -> FlowRecord {
        FlowRecord {
            id: 1,
            protocol: Proto::Tcp,
            direction: Direction::Outbound,
            guest: "10.0.2.15:40000".parse().unwrap(),
            remote: "10.0.2.2:8080".parse().unwrap(),
            name: Some("host.alcove.internal".into()),
            allowed,
            decided_by: by,
            bytes_from_guest: 3,
            bytes_to_guest: 5,
            started: UNIX_EPOCH + Duration::from_millis(1234),
            duration: Duration::from_millis(7),
            close: if allowed { CloseReason::Closed } else { CloseReason::Denied },
        }
    }

    #[test]
    fn a_record_becomes_a_row() {
        let row = flow_row(&record(true, DecidedBy::Profile(Profile::Host)));
        assert_eq!(row.started_at_ms, 1234);
        assert_eq!((row.protocol.as_str(), row.direction.as_str()), ("tcp", "outbound"));
        assert_eq!((row.guest.as_str(), row.remote.as_str()), ("10.0.2.15:40000", "10.0.2.2:8080"));
        assert_eq!((row.bytes_from_guest, row.bytes_to_guest, row.duration_ms), (3, 5, 7));
        assert_eq!((row.decided_by.as_str(), row.close.as_str()), ("profile host", "closed"));
        assert!(SystemTime::now() > UNIX_EPOCH);
    }

    #[test]
    fn only_policy_denials_are_violations() {
        assert!(is_policy_denial(&DecidedBy::Rule { index: 0, text: "deny:x".into() }));
        assert!(is_policy_denial(&DecidedBy::Profile(Profile::None)));
        assert!(is_policy_denial(&DecidedBy::Metadata));
        assert!(!is_policy_denial(&DecidedBy::Limit("tcp connections")));
        assert!(!is_policy_denial(&DecidedBy::Martian));
        let text = violation(&record(false, DecidedBy::Profile(Profile::Public)));
        assert!(text.contains("tcp to 10.0.2.2:8080 (host.alcove.internal) denied by profile public"), "{text}");
    }
}
