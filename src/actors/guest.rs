//! The Guest actor: owns the guest's control handle and carries out stops.
//!
//! It acts only on [`StopGuest`] from Lifecycle, which has already fixed the
//! termination reason. A graceful stop asks the agent to shut down (through
//! the Relay) and forces the guest off if it has not ended within
//! `drain_timeout`; a hard stop forces it at once. The guest's end is not
//! observed here: the backend's runner reports it to Lifecycle through the
//! exit observer.

use crate::config::Policy;
use crate::messages::{AttachControl, SendShutdown, StopGuest};
use actix::prelude::*;
use alcove_backend::GuestControl;
use std::sync::Arc;

/// Owns the guest's control handle.
pub struct GuestActor {
    policy: Policy,
    /// Relay: ask the agent to shut down.
    send_shutdown: Recipient<SendShutdown>,
    control: Option<Arc<dyn GuestControl>>,
    /// A stop that arrived before the guest existed.
    pending: Option<StopGuest>,
    stopping: bool,
}

impl GuestActor {
    /// A Guest actor that will get its control handle later.
    pub fn new(policy: Policy, send_shutdown: Recipient<SendShutdown>) -> GuestActor {
        GuestActor { policy, send_shutdown, control: None, pending: None, stopping: false }
    }

    fn force(&self) {
        if let Some(control) = &self.control {
            tracing::info!("forcing the guest off");
            control.force_stop();
        }
    }

    fn stop(&mut self, msg: StopGuest, ctx: &mut Context<Self>) {
        if self.stopping {
            // A second request can only make the stop harder, never softer.
            if !msg.graceful {
                self.force();
            }
            return;
        }
        self.stopping = true;
        if !msg.graceful {
            self.force();
            return;
        }
        let drain = self.policy.drain_timeout;
        let relay = self.send_shutdown.clone();
        let grace = self.policy.shutdown_grace;
        ctx.spawn(async move { relay.send(SendShutdown { grace }).await.unwrap_or(false) }.into_actor(self).map(
            move |sent, this, ctx| {
                if !sent {
                    tracing::warn!("could not send Shutdown to the agent");
                    this.force();
                    return;
                }
                ctx.run_later(drain, move |this, _| {
                    tracing::warn!(
                        drain_ms = drain.as_millis() as u64,
                        "the guest did not stop within the drain timeout"
                    );
                    this.force();
                });
            },
        ));
    }
}

impl Actor for GuestActor {
    type Context = Context<Self>;
}

impl Handler<AttachControl> for GuestActor {
    type Result = ();

    fn handle(&mut self, msg: AttachControl, ctx: &mut Self::Context) {
        self.control = Some(msg.control);
        if let Some(stop) = self.pending.take() {
            self.stop(stop, ctx);
        }
    }
}

impl Handler<StopGuest> for GuestActor {
    type Result = ();

    fn handle(&mut self, msg: StopGuest, ctx: &mut Self::Context) {
        if self.control.is_none() {
            self.pending = Some(msg);
            return;
        }
        self.stop(msg, ctx);
    }
}
