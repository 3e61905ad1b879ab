//! The handle an owner (the sandbox's `Network` actor) drives the engine
//! through: typed commands in, [`NetEvent`]s out, counters shared.
//!
//! Invariants:
//! - The engine runs on its own thread (`alcove-net`); every command is a
//!   message plus a wake-up of its poll, answered through a one-shot
//!   channel, so a command never races a turn.
//! - `set_policy` returns after the new policy is in force and the flows it
//!   revokes have been reset.
//! - Dropping the handle stops the engine and joins its thread.

use crate::config::NetConfig;
use crate::device::FrameDevice;
use crate::engine::Engine;
use crate::flows::{CounterSnapshot, Counters, EventSink, NetEvent};
use crate::intercept::Interceptor;
use crate::policy::Policy;
use crate::ports::{BoundPort, PortError, PortMapping};
use crossbeam_channel::{bounded, Receiver, Sender};
use mio::Waker;
use std::io;
use std::sync::Arc;
use std::thread::JoinHandle;

/// Errors of the engine's handle.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("network engine: {context}: {source}")]
    Io {
        context: &'static str,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Port(#[from] PortError),
    #[error("the network engine has stopped")]
    Stopped,
}

pub(crate) enum Command {
    SetPolicy(Policy, Sender<usize>),
    AddPort(BoundPort, Sender<io::Result<()>>),
    RemovePort(PortMapping, Sender<bool>),
    ListPorts(Sender<Vec<PortMapping>>),
    Stop,
}

/// A running engine.
pub struct Network {
    commands: Sender<Command>,
    waker: Arc<Waker>,
    counters: Arc<Counters>,
    thread: Option<JoinHandle<()>>,
}

impl Network {
    /// Starts the engine on its own thread with `device` as the guest's
    /// link and `ports` already published. Returns the handle and the
    /// receiver of flow records and violations.
    pub fn start(
        config: NetConfig,
        device: Box<dyn FrameDevice>,
        ports: Vec<BoundPort>,
    ) -> Result<(Network, Receiver<NetEvent>), NetError> {
        Self::start_with_interceptor(config, device, ports, None)
    }

    /// [`Network::start`] with an [`Interceptor`] choosing flows for
    /// stream filters (TLS interception for secrets).
    pub fn start_with_interceptor(
        config: NetConfig,
        device: Box<dyn FrameDevice>,
        ports: Vec<BoundPort>,
        interceptor: Option<Box<dyn Interceptor>>,
    ) -> Result<(Network, Receiver<NetEvent>), NetError> {
        let (event_tx, event_rx) = bounded(config.limits.event_queue.max(1));
        let (command_tx, command_rx) = crossbeam_channel::unbounded();
        let counters = Arc::new(Counters::default());
        let sink = EventSink::new(event_tx, counters.clone());
        let (mut engine, waker) = Engine::new(config, device, sink, counters.clone(), Some(command_rx))
            .map_err(|source| NetError::Io { context: "start", source })?;
        engine.set_interceptor(interceptor);
        for port in ports {
            engine.add_port(port).map_err(|source| NetError::Io { context: "publish port", source })?;
        }
        let thread = std::thread::Builder::new()
            .name("alcove-net".into())
            .spawn(move || {
                let error = engine.run().err().map(|e| e.to_string());
                engine.final_event(NetEvent::Stopped { error });
            })
            .map_err(|source| NetError::Io { context: "spawn thread", source })?;
        Ok((Network { commands: command_tx, waker, counters, thread: Some(thread) }, event_rx))
    }

    fn call<T>(&self, make: impl FnOnce(Sender<T>) -> Command) -> Result<T, NetError> {
        let (tx, rx) = bounded(1);
        self.commands.send(make(tx)).map_err(|_| NetError::Stopped)?;
        self.waker.wake().map_err(|source| NetError::Io { context: "wake", source })?;
        rx.recv().map_err(|_| NetError::Stopped)
    }

    /// Replaces the policy atomically; returns how many flows it revoked.
    pub fn set_policy(&self, policy: Policy) -> Result<usize, NetError> {
        self.call(|reply| Command::SetPolicy(policy, reply))
    }

    /// Binds `mapping` on this thread (a taken port fails here) and
    /// publishes it. Returns the mapping with the port actually bound.
    pub fn add_port(&self, mapping: PortMapping) -> Result<PortMapping, NetError> {
        self.add_bound_port(BoundPort::bind(mapping)?)
    }

    /// Publishes an already bound port.
    pub fn add_bound_port(&self, port: BoundPort) -> Result<PortMapping, NetError> {
        let mapping = port.mapping();
        self.call(|reply| Command::AddPort(port, reply))?
            .map_err(|source| NetError::Io { context: "publish port", source })?;
        Ok(mapping)
    }

    /// Stops publishing `mapping`; `false` if it was not published.
    pub fn remove_port(&self, mapping: &PortMapping) -> Result<bool, NetError> {
        self.call(|reply| Command::RemovePort(*mapping, reply))
    }

    /// The published ports.
    pub fn ports(&self) -> Result<Vec<PortMapping>, NetError> {
        self.call(Command::ListPorts)
    }

    /// Traffic counters, read without involving the engine thread.
    pub fn counters(&self) -> CounterSnapshot {
        self.counters.snapshot()
    }

    /// The live counters themselves, for an owner that samples them on its
    /// own schedule (the sandbox's Metrics actor).
    pub fn shared_counters(&self) -> Arc<Counters> {
        self.counters.clone()
    }

    /// Stops the engine (every connection is reset) and waits for it.
    pub fn stop(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        if let Some(thread) = self.thread.take() {
            let _ = self.commands.send(Command::Stop);
            let _ = self.waker.wake();
            let _ = thread.join();
        }
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

#[cfg(test)]
mod tests {
    /// The owning actor keeps the handle in its state and may move it.
    #[test]
    fn the_handle_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<super::Network>();
    }
}
