//! alcove's network engine: an in-process user-space TCP/IP stack
//! (smoltcp) between a guest's Ethernet link and the host's sockets, with
//! policy, DNS, published ports, bounds and flow records. No actix, no
//! SQLite: the sandbox's `Network` actor drives it through [`Network`].
//!
//! # Shape
//!
//! ```text
//!  guest eth0 ── FrameDevice ──► Engine thread (mio Poll) ──► host sockets
//!   (TAP in the jail's netns,      │ wire: parse, decide      (TCP streams, UDP,
//!    msb_krun NetBackend,          │ smoltcp: ARP/NDP/ping,    ICMP, DNS upstreams,
//!    or a socket pair)             │   guest side of TCP       published listeners)
//!                                  └► NetEvent channel, Counters
//! ```
//!
//! # Driving it
//!
//! ```no_run
//! use alcove_net::{device::frame_pair, NetConfig, Network, policy::Policy};
//! let (engine_end, _guest_end) = frame_pair().unwrap();
//! let config = NetConfig { dns_upstreams: vec!["127.0.0.53:53".parse().unwrap()], ..NetConfig::default() };
//! let (net, events) = Network::start(config, Box::new(engine_end), Vec::new()).unwrap();
//! net.set_policy(Policy::default()).unwrap();          // atomically, revoking flows
//! let port = net.add_port("8080:80".parse().unwrap()).unwrap(); // bound here: taken port = error
//! let counters = net.counters();                        // rx/tx frames and bytes
//! while let Ok(event) = events.try_recv() { /* NetEvent::Flow / Denied / Stopped */ }
//! net.stop();
//! ```
//!
//! Secrets (TLS interception) plug in through
//! [`Network::start_with_interceptor`] and the [`intercept`] traits;
//! [`secrets::SecretsInterceptor`] is the one alcove uses (a per-sandbox CA,
//! gated HTTP/1.1 placeholder substitution, violation checks).
//!
//! # Invariants (the whole crate)
//!
//! - Everything from the guest is hostile: frames are parsed with length
//!   and checksum checks before any decision; a malformed frame is dropped
//!   and counted, never a panic ([`fuzz::process_frames`] is the fuzz entry).
//! - Connect before accept: the guest's SYN is answered only when the host
//!   connection is up; refusals are RST, ICMP unreachable or NXDOMAIN at
//!   once, never a silent drop or a hang.
//! - The policy decides every new flow, on the address the host will
//!   contact and the names the engine's own DNS returned for it; cloud
//!   metadata needs a rule that names it.
//! - Bounded: connections, UDP/ICMP sessions, DNS queries in flight, TCP
//!   buffers per flow and in total, queued frames, queued events. A guest
//!   past a bound only has its own new flows refused.
//! - Idle means idle: the engine thread sleeps in `epoll_wait` with no
//!   timeout while no packet moves and no flow has a deadline.

pub mod config;
pub mod device;
mod engine;
pub mod flows;
pub mod fuzz;
mod handle;
pub mod intercept;
pub mod policy;
pub mod ports;
pub mod secrets;
mod wire;

pub use config::{AddressPlan, Limits, NetConfig, HOST_NAME};
pub use flows::{CloseReason, CounterSnapshot, Counters, Direction, FlowRecord, NetEvent};
pub use handle::{NetError, Network};
pub use ports::{BoundPort, PortMapping, PortProto};
