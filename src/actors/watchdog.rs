//! The Watchdog actor: idle timeout, max duration, ready timeout and
//! heartbeat loss.
//!
//! Every `watchdog_tick` it asks the Relay for an [`Activity`] snapshot and
//! compares it with the injected [`Clock`]. The first rule that fires sends
//! one [`Terminate`] to Lifecycle and the watchdog stops: deciding between
//! competing causes is Lifecycle's job, not the watchdog's. Rules, in order:
//!
//! 1. not ready `ready_timeout` after start → AgentUnresponsive;
//! 2. `max_duration` after start → MaxDurationExceeded;
//! 3. ready, no open session, and no client frame, touch or session end for
//!    `idle_timeout` → IdleTimeout (a long command that reads nothing is a
//!    session, so it is not idle);
//! 4. ready and no heartbeat for `heartbeat_timeout` → AgentUnresponsive.

use crate::clock::Clock;
use crate::config::Policy;
use crate::messages::{Activity, GetActivity, Terminate};
use crate::store::TerminationReason;
use actix::prelude::*;
use std::sync::Arc;
use std::time::Duration;

/// Watches the clock.
pub struct Watchdog {
    policy: Policy,
    clock: Arc<dyn Clock>,
    started_at: Duration,
    /// Relay: the activity snapshot.
    activity: Recipient<GetActivity>,
    /// Lifecycle: the cause, once a rule fires.
    terminate: Recipient<Terminate>,
    fired: bool,
}

impl Watchdog {
    /// A watchdog whose start time is the clock's now.
    pub fn new(
        policy: Policy,
        clock: Arc<dyn Clock>,
        activity: Recipient<GetActivity>,
        terminate: Recipient<Terminate>,
    ) -> Watchdog {
        let started_at = clock.now();
        Watchdog { policy, clock, started_at, activity, terminate, fired: false }
    }
}

/// The rules, as a pure function of the policy, the start time, the relay's
/// activity and the clock.
fn rules_for(policy: &Policy, started_at: Duration, a: &Activity, now: Duration) -> Option<Terminate> {
    let since_start = now.saturating_sub(started_at);
    let secs = |d: Duration| d.as_secs_f64();
    if a.ready_at.is_none() && since_start >= policy.ready_timeout {
        return Some(Terminate::new(
            TerminationReason::AgentUnresponsive,
            format!("the agent was not ready within {:.1}s", secs(policy.ready_timeout)),
        ));
    }
    if let Some(max) = policy.max_duration {
        if since_start >= max {
            return Some(Terminate::new(
                TerminationReason::MaxDurationExceeded,
                format!("the sandbox reached its maximum duration of {:.1}s", secs(max)),
            ));
        }
    }
    let ready_at = a.ready_at?;
    if let Some(idle) = policy.idle_timeout {
        let last = a.last_activity.max(ready_at);
        if a.open_sessions == 0 && now.saturating_sub(last) >= idle {
            return Some(Terminate::new(
                TerminationReason::IdleTimeout,
                format!("no session, client frame or touch for {:.1}s", secs(idle)),
            ));
        }
    }
    let last_beat = a.last_heartbeat.unwrap_or(ready_at).max(ready_at);
    if now.saturating_sub(last_beat) >= policy.heartbeat_timeout {
        return Some(Terminate::new(
            TerminationReason::AgentUnresponsive,
            format!("no heartbeat from the agent for {:.1}s", secs(policy.heartbeat_timeout)),
        ));
    }
    None
}

impl Actor for Watchdog {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(self.policy.watchdog_tick, |this, ctx| {
            if this.fired {
                return;
            }
            let relay = this.activity.clone();
            let fut = async move { relay.send(GetActivity).await };
            ctx.spawn(fut.into_actor(this).map(|res, this, ctx| {
                let Ok(activity) = res else {
                    return;
                };
                if this.fired {
                    return;
                }
                if let Some(cause) = rules_for(&this.policy, this.started_at, &activity, this.clock.now()) {
                    tracing::info!(reason = %cause.reason, detail = ?cause.detail, "watchdog fired");
                    this.fired = true;
                    this.terminate.do_send(cause);
                    ctx.stop();
                }
            }));
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(policy: Policy) -> impl Fn(&Activity, u64) -> Option<TerminationReason> {
        move |a, now_s| rules_for(&policy, Duration::ZERO, a, Duration::from_secs(now_s)).map(|t| t.reason)
    }

    fn ready(at: u64) -> Activity {
        Activity {
            ready_at: Some(Duration::from_secs(at)),
            last_heartbeat: Some(Duration::from_secs(at)),
            last_activity: Duration::from_secs(at),
            ..Activity::default()
        }
    }

    #[test]
    fn never_ready_is_unresponsive_after_the_ready_timeout() {
        let check = rules(Policy { ready_timeout: Duration::from_secs(30), ..Policy::default() });
        assert_eq!(check(&Activity::default(), 29), None);
        assert_eq!(check(&Activity::default(), 30), Some(TerminationReason::AgentUnresponsive));
    }

    #[test]
    fn open_sessions_are_not_idle() {
        let p = Policy {
            idle_timeout: Some(Duration::from_secs(5)),
            heartbeat_timeout: Duration::from_secs(3600),
            ..Policy::default()
        };
        let check = rules(p);
        let mut a = ready(1);
        assert_eq!(check(&a, 5), None);
        assert_eq!(check(&a, 6), Some(TerminationReason::IdleTimeout));
        a.open_sessions = 1;
        assert_eq!(check(&a, 600), None);
    }

    #[test]
    fn max_duration_counts_from_start() {
        let check = rules(Policy {
            max_duration: Some(Duration::from_secs(10)),
            heartbeat_timeout: Duration::from_secs(3600),
            ..Policy::default()
        });
        assert_eq!(check(&ready(1), 9), None);
        assert_eq!(check(&ready(1), 10), Some(TerminationReason::MaxDurationExceeded));
    }

    #[test]
    fn heartbeat_loss_is_unresponsive() {
        let check = rules(Policy { heartbeat_timeout: Duration::from_secs(10), ..Policy::default() });
        let mut a = ready(1);
        a.last_heartbeat = Some(Duration::from_secs(20));
        assert_eq!(check(&a, 29), None);
        assert_eq!(check(&a, 30), Some(TerminationReason::AgentUnresponsive));
    }
}
