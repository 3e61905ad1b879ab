//! The Watchdog actor: idle timeout, max duration, ready timeout and
//! heartbeat loss.
//!
//! It asks the Relay for an [`Activity`] snapshot, compares it with the
//! injected [`Clock`], and then sleeps on that clock until the earliest
//! moment a rule could fire ([`next_check`]): an idle sandbox wakes only at
//! its deadlines, not on a tick. Before the agent is ready it looks every
//! `watchdog_tick` (readiness is not announced to it, and comes soon).
//! The first rule that fires sends one [`Terminate`] to Lifecycle and the
//! watchdog stops: deciding between competing causes is Lifecycle's job,
//! not the watchdog's. Rules, in order:
//!
//! 1. not ready `ready_timeout` after start → AgentUnresponsive;
//! 2. `max_duration` after start → MaxDurationExceeded;
//! 3. ready, no open session, and no client frame, touch or session end for
//!    `idle_timeout` → IdleTimeout (a long command that reads nothing is a
//!    session, so it is not idle);
//! 4. ready and no heartbeat (nor any other frame from the agent, which
//!    the relay counts as one) for `heartbeat_timeout` → AgentUnresponsive.
//!
//! While the sandbox is paused ([`Activity::paused`]) rules 3 and 4 do not
//! fire: a frozen agent cannot beat, and a paused sandbox is not idle by
//! its own doing. A resume restarts both clocks (the relay counts it as
//! activity and as a heartbeat). `max_duration` keeps counting: it is a
//! bound on wall-clock time, paused or not.
//!
//! Invariant: no rule can fire between two looks. Every input of the rules
//! only moves their deadlines later (activity, heartbeats), except a session
//! ending, and while sessions are open the next look is at most
//! `idle_timeout` away — the soonest an idle timeout can follow their end;
//! while paused the next look is at most the shorter of `idle_timeout` and
//! `heartbeat_timeout` away — the soonest either can fire after a resume.

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
    if a.paused {
        return None;
    }
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

/// How often the agent is asked to send heartbeats: a third of the
/// heartbeat timeout (two may be late), between 1 s and 30 s. An idle agent
/// wakes only this often, and so does the relay that reads it. (The channel
/// is a local stream: a beat is late, never lost.)
pub fn agent_heartbeat(policy: &Policy) -> Duration {
    (policy.heartbeat_timeout / 3).clamp(Duration::from_secs(1), Duration::from_secs(30))
}

/// The clock time of the next look: the earliest moment any rule could
/// fire, given what is known `now` (see the module's invariant).
fn next_check(policy: &Policy, started_at: Duration, a: &Activity, now: Duration) -> Duration {
    let mut next = Vec::with_capacity(4);
    if let Some(max) = policy.max_duration {
        next.push(started_at + max);
    }
    match a.ready_at {
        None => {
            next.push(started_at + policy.ready_timeout);
            next.push(now + policy.watchdog_tick);
        }
        Some(_) if a.paused => {
            let resumed_soonest =
                policy.idle_timeout.map_or(policy.heartbeat_timeout, |i| i.min(policy.heartbeat_timeout));
            next.push(now + resumed_soonest);
        }
        Some(ready_at) => {
            if let Some(idle) = policy.idle_timeout {
                next.push(if a.open_sessions == 0 { a.last_activity.max(ready_at) + idle } else { now + idle });
            }
            next.push(a.last_heartbeat.unwrap_or(ready_at).max(ready_at) + policy.heartbeat_timeout);
        }
    }
    let soonest = next.into_iter().min().unwrap_or(now + policy.watchdog_tick);
    // A deadline not after `now` belongs to a rule that just declined to
    // fire; never spin on it.
    if soonest > now {
        soonest
    } else {
        now + policy.watchdog_tick
    }
}

impl Watchdog {
    /// Looks at the activity, then fires or sleeps until the next look.
    fn look(&mut self, ctx: &mut Context<Self>) {
        let relay = self.activity.clone();
        let fut = async move { relay.send(GetActivity).await };
        ctx.spawn(fut.into_actor(self).map(|res, this, ctx| {
            // The relay is gone: the sandbox is ending, nothing to watch.
            let Ok(activity) = res else { return };
            if this.fired {
                return;
            }
            let now = this.clock.now();
            if let Some(cause) = rules_for(&this.policy, this.started_at, &activity, now) {
                tracing::info!(reason = %cause.reason, detail = ?cause.detail, "watchdog fired");
                this.fired = true;
                this.terminate.do_send(cause);
                ctx.stop();
                return;
            }
            let at = next_check(&this.policy, this.started_at, &activity, now);
            ctx.spawn(this.clock.sleep_until(at).into_actor(this).map(|(), this, ctx| this.look(ctx)));
        }));
    }
}

impl Actor for Watchdog {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.look(ctx);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::config::PolicySpec;

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
        let check = rules(
            Policy::try_from(PolicySpec { ready_timeout: Duration::from_secs(30), ..PolicySpec::default() })
                .expect("a valid policy"),
        );
        assert_eq!(check(&Activity::default(), 29), None);
        assert_eq!(check(&Activity::default(), 30), Some(TerminationReason::AgentUnresponsive));
    }

    #[test]
    fn open_sessions_are_not_idle() {
        let p = Policy::try_from(PolicySpec {
            idle_timeout: Some(Duration::from_secs(5)),
            heartbeat_timeout: Duration::from_secs(3600),
            ..PolicySpec::default()
        })
        .expect("a valid policy");
        let check = rules(p);
        let mut a = ready(1);
        assert_eq!(check(&a, 5), None);
        assert_eq!(check(&a, 6), Some(TerminationReason::IdleTimeout));
        a.open_sessions = 1;
        assert_eq!(check(&a, 600), None);
    }

    #[test]
    fn max_duration_counts_from_start() {
        let check = rules(
            Policy::try_from(PolicySpec {
                max_duration: Some(Duration::from_secs(10)),
                heartbeat_timeout: Duration::from_secs(3600),
                ..PolicySpec::default()
            })
            .expect("a valid policy"),
        );
        assert_eq!(check(&ready(1), 9), None);
        assert_eq!(check(&ready(1), 10), Some(TerminationReason::MaxDurationExceeded));
    }

    #[test]
    fn heartbeat_loss_is_unresponsive() {
        let check = rules(
            Policy::try_from(PolicySpec { heartbeat_timeout: Duration::from_secs(10), ..PolicySpec::default() })
                .expect("a valid policy"),
        );
        let mut a = ready(1);
        a.last_heartbeat = Some(Duration::from_secs(20));
        assert_eq!(check(&a, 29), None);
        assert_eq!(check(&a, 30), Some(TerminationReason::AgentUnresponsive));
    }

    fn valid(spec: PolicySpec) -> Policy {
        Policy::try_from(spec).expect("a valid policy")
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn before_ready_it_looks_every_tick_up_to_the_ready_timeout() {
        let p = valid(PolicySpec {
            watchdog_tick: Duration::from_millis(100),
            ready_timeout: secs(30),
            ..PolicySpec::default()
        });
        let a = Activity::default();
        assert_eq!(next_check(&p, secs(0), &a, secs(1)), secs(1) + Duration::from_millis(100));
        assert_eq!(next_check(&p, secs(0), &a, Duration::from_millis(29_950)), secs(30));
    }

    #[test]
    fn a_ready_idle_sandbox_sleeps_until_its_nearest_deadline() {
        let p = valid(PolicySpec {
            idle_timeout: Some(secs(300)),
            max_duration: Some(secs(3600)),
            heartbeat_timeout: secs(864_000),
            ..PolicySpec::default()
        });
        // Idle deadline: last activity + 300 s.
        assert_eq!(next_check(&p, secs(0), &ready(100), secs(150)), secs(400));
        // The max duration comes first near the end.
        assert_eq!(next_check(&p, secs(0), &ready(3500), secs(3550)), secs(3600));
        // Heartbeat loss is a deadline too.
        let p = valid(PolicySpec { heartbeat_timeout: secs(10), ..p.spec() });
        assert_eq!(next_check(&p, secs(0), &ready(100), secs(105)), secs(110));
    }

    #[test]
    fn with_open_sessions_the_next_look_is_at_most_one_idle_timeout_away() {
        let p = valid(PolicySpec {
            idle_timeout: Some(secs(60)),
            heartbeat_timeout: secs(864_000),
            ..PolicySpec::default()
        });
        let mut a = ready(1);
        a.open_sessions = 2;
        // The session may end right now: idle cannot fire before now + 60 s.
        assert_eq!(next_check(&p, secs(0), &a, secs(1000)), secs(1060));
    }

    #[test]
    fn the_next_look_is_always_in_the_future() {
        let p = valid(PolicySpec {
            heartbeat_timeout: secs(10),
            watchdog_tick: Duration::from_millis(5),
            ..PolicySpec::default()
        });
        // A deadline equal to now (its rule declined) is not looked at again at once.
        let a = ready(0);
        assert!(next_check(&p, secs(0), &a, secs(10)) > secs(10));
    }

    #[test]
    fn an_hour_of_idle_wakes_only_at_deadlines() {
        // An idle sandbox: ready at 0, nothing happens for an hour, no
        // heartbeat deadline near (host-driven liveness aside): the rules
        // are looked at once, at the idle deadline, instead of 36 000 ticks.
        let p = valid(PolicySpec {
            idle_timeout: Some(secs(3600)),
            heartbeat_timeout: secs(864_000),
            watchdog_tick: Duration::from_millis(100),
            ..PolicySpec::default()
        });
        let a = ready(0);
        let mut now = secs(0);
        let mut looks = 0;
        while rules_for(&p, secs(0), &a, now).is_none() {
            now = next_check(&p, secs(0), &a, now);
            looks += 1;
        }
        assert_eq!((looks, now), (1, secs(3600)));
    }

    #[test]
    fn the_agent_beats_three_times_per_heartbeat_timeout_within_bounds() {
        let with = |t: u64| {
            agent_heartbeat(&valid(PolicySpec { heartbeat_timeout: Duration::from_millis(t), ..PolicySpec::default() }))
        };
        assert_eq!(with(9_000), Duration::from_secs(3));
        assert_eq!(with(2_000), Duration::from_secs(1));
        assert_eq!(with(864_000_000), Duration::from_secs(30));
    }

    fn paused(mut a: Activity) -> Activity {
        a.paused = true;
        a
    }

    #[test]
    fn a_paused_sandbox_is_neither_idle_nor_unresponsive_but_its_max_duration_counts() {
        let check = rules(valid(PolicySpec {
            idle_timeout: Some(secs(5)),
            heartbeat_timeout: secs(10),
            max_duration: Some(secs(100)),
            ..PolicySpec::default()
        }));
        // Paused at 1: no heartbeat and no activity since, far past both timeouts.
        assert_eq!(check(&paused(ready(1)), 99), None);
        assert_eq!(check(&paused(ready(1)), 100), Some(TerminationReason::MaxDurationExceeded));
        // The same activity unpaused would have fired long before.
        assert_eq!(check(&ready(1), 6), Some(TerminationReason::IdleTimeout));
    }

    #[test]
    fn while_paused_the_next_look_is_the_soonest_a_rule_could_fire_after_a_resume() {
        let p = valid(PolicySpec {
            idle_timeout: Some(secs(60)),
            heartbeat_timeout: secs(30),
            max_duration: Some(secs(10_000)),
            ..PolicySpec::default()
        });
        // Resumed right after this look, heartbeat loss could fire 30 s later.
        assert_eq!(next_check(&p, secs(0), &paused(ready(1)), secs(500)), secs(530));
        // The max duration still comes first when it is nearer.
        assert_eq!(next_check(&p, secs(0), &paused(ready(1)), secs(9_990)), secs(10_000));
        let no_idle = valid(PolicySpec { idle_timeout: None, ..p.spec() });
        assert_eq!(next_check(&no_idle, secs(0), &paused(ready(1)), secs(500)), secs(530));
        let short_idle = valid(PolicySpec { idle_timeout: Some(secs(5)), ..p.spec() });
        assert_eq!(next_check(&short_idle, secs(0), &paused(ready(1)), secs(500)), secs(505));
    }

    /// The relay's part: a fixed activity; says when it was asked.
    struct FixedActivity {
        activity: Activity,
        clock: ManualClock,
        asked: tokio::sync::mpsc::UnboundedSender<Duration>,
    }

    impl Actor for FixedActivity {
        type Context = Context<Self>;
    }

    impl Handler<GetActivity> for FixedActivity {
        type Result = MessageResult<GetActivity>;

        fn handle(&mut self, _: GetActivity, _: &mut Self::Context) -> Self::Result {
            let _ = self.asked.send(self.clock.now());
            MessageResult(self.activity)
        }
    }

    /// Lifecycle's part: the cause and the time it came.
    struct Causes {
        clock: ManualClock,
        tx: Option<tokio::sync::oneshot::Sender<(TerminationReason, Duration)>>,
    }

    impl Actor for Causes {
        type Context = Context<Self>;
    }

    impl Handler<Terminate> for Causes {
        type Result = ();

        fn handle(&mut self, msg: Terminate, _: &mut Self::Context) {
            if let Some(tx) = self.tx.take() {
                let _ = tx.send((msg.reason, self.clock.now()));
            }
        }
    }

    #[test]
    fn an_idle_sandbox_is_looked_at_only_at_its_deadline_over_an_hour_of_manual_time() {
        actix::System::new().block_on(async {
            let clock = ManualClock::new();
            let policy = valid(PolicySpec {
                idle_timeout: Some(secs(3600)),
                heartbeat_timeout: secs(864_000),
                watchdog_tick: Duration::from_millis(100),
                ..PolicySpec::default()
            });
            let (asked_tx, mut asked) = tokio::sync::mpsc::unbounded_channel();
            let relay = FixedActivity { activity: ready(0), clock: clock.clone(), asked: asked_tx }.start();
            let (tx, ended) = tokio::sync::oneshot::channel();
            let lifecycle = Causes { clock: clock.clone(), tx: Some(tx) }.start();
            Watchdog::new(policy, Arc::new(clock.clone()), relay.recipient(), lifecycle.recipient()).start();
            assert_eq!(asked.recv().await, Some(secs(0)), "the first look");
            // A minute at a time, each step given the chance to wake it.
            for _ in 0..59 {
                clock.advance(secs(60));
                for _ in 0..10 {
                    tokio::task::yield_now().await;
                }
                assert!(asked.try_recv().is_err(), "looked at {:?}, before any deadline", clock.now());
            }
            clock.advance(secs(60));
            assert_eq!(ended.await.expect("a cause"), (TerminationReason::IdleTimeout, secs(3600)));
            assert_eq!(asked.try_recv().ok(), Some(secs(3600)), "one look, at the deadline");
            assert!(asked.try_recv().is_err());
        });
    }

    /// The relay's part, for a sandbox paused and then resumed: its
    /// activity is what the test last set.
    struct ChangingActivity {
        activity: Arc<std::sync::Mutex<Activity>>,
    }

    impl Actor for ChangingActivity {
        type Context = Context<Self>;
    }

    impl Handler<GetActivity> for ChangingActivity {
        type Result = MessageResult<GetActivity>;

        fn handle(&mut self, _: GetActivity, _: &mut Self::Context) -> Self::Result {
            MessageResult(*self.activity.lock().expect("activity"))
        }
    }

    #[test]
    fn a_sandbox_paused_for_an_hour_survives_and_its_idle_clock_restarts_at_resume() {
        actix::System::new().block_on(async {
            let clock = ManualClock::new();
            let policy = valid(PolicySpec {
                idle_timeout: Some(secs(60)),
                heartbeat_timeout: secs(120),
                watchdog_tick: Duration::from_millis(100),
                ..PolicySpec::default()
            });
            // Ready at 0 and paused at once: no heartbeat, no activity after.
            let activity = Arc::new(std::sync::Mutex::new(paused(ready(0))));
            let relay = ChangingActivity { activity: activity.clone() }.start();
            let (tx, mut ended) = tokio::sync::oneshot::channel();
            let lifecycle = Causes { clock: clock.clone(), tx: Some(tx) }.start();
            Watchdog::new(policy, Arc::new(clock.clone()), relay.recipient(), lifecycle.recipient()).start();
            let settle = || async {
                for _ in 0..20 {
                    tokio::task::yield_now().await;
                }
            };
            settle().await;
            // An hour and a half paused, ten seconds at a time: nothing fires.
            for _ in 0..363 {
                clock.advance(secs(10));
                settle().await;
                assert!(ended.try_recv().is_err(), "fired while paused, at {:?}", clock.now());
            }
            // Resumed at 3630 s: the relay counts it as activity and a heartbeat.
            let resumed_at = clock.now();
            assert_eq!(resumed_at, secs(3630));
            *activity.lock().expect("activity") = Activity {
                ready_at: Some(secs(0)),
                last_heartbeat: Some(resumed_at),
                last_activity: resumed_at,
                open_sessions: 0,
                paused: false,
            };
            for _ in 0..5 {
                clock.advance(secs(10));
                settle().await;
                assert!(ended.try_recv().is_err(), "fired before the idle timeout after resume");
            }
            clock.advance(secs(10));
            assert_eq!(ended.await.expect("a cause"), (TerminationReason::IdleTimeout, resumed_at + secs(60)));
        });
    }
}
