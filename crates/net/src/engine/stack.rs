//! The smoltcp interface: the gateway's link-layer presence (ARP, NDP,
//! ping) and the guest-facing half of every proxied TCP connection.
//!
//! Invariants:
//! - smoltcp sees only frames the engine has already parsed and let
//!   through ([`crate::wire::Parsed::Stack`] and TCP segments of known or
//!   refused-by-smoltcp flows).
//! - A TCP socket in `Listen` exists only inside [`Stack::accept_syn`]:
//!   it is created and handed its one SYN in the same call, so no other
//!   connection's SYN can ever land on it.
//! - Time is the monotonic clock since the engine started.

use crate::config::{AddressPlan, GATEWAY_LINK_LOCAL};
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{Device, DeviceCapabilities, Medium, RxToken, TxToken};
use smoltcp::socket::tcp;
use smoltcp::time::Instant as SmolInstant;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpCidr, IpEndpoint, IpListenEndpoint};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Instant;

/// Frames between the engine and smoltcp.
pub(crate) struct Queues {
    pub rx: VecDeque<Vec<u8>>,
    pub tx: Vec<Vec<u8>>,
    mtu: usize,
}

pub(crate) struct Rx(Vec<u8>);
pub(crate) struct Tx<'a>(&'a mut Vec<Vec<u8>>);

impl RxToken for Rx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl TxToken for Tx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut frame = vec![0u8; len];
        let r = f(&mut frame);
        self.0.push(frame);
        r
    }
}

impl Device for Queues {
    type RxToken<'a> = Rx;
    type TxToken<'a> = Tx<'a>;

    fn receive(&mut self, _: SmolInstant) -> Option<(Rx, Tx<'_>)> {
        let frame = self.rx.pop_front()?;
        Some((Rx(frame), Tx(&mut self.tx)))
    }

    fn transmit(&mut self, _: SmolInstant) -> Option<Tx<'_>> {
        Some(Tx(&mut self.tx))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        // smoltcp's MTU for Ethernet includes the 14-byte header.
        caps.max_transmission_unit = self.mtu + 14;
        caps
    }
}

pub(crate) struct Stack {
    pub iface: Interface,
    pub sockets: SocketSet<'static>,
    pub queues: Queues,
    epoch: Instant,
}

impl Stack {
    pub fn new(plan: &AddressPlan, mtu: usize, seed: u64) -> Stack {
        let mut queues = Queues { rx: VecDeque::new(), tx: Vec::new(), mtu };
        let mut config = Config::new(HardwareAddress::Ethernet(EthernetAddress(plan.gateway_mac)));
        config.random_seed = seed;
        let epoch = Instant::now();
        let mut iface = Interface::new(config, &mut queues, SmolInstant::from_micros(0));
        iface.update_ip_addrs(|addrs| {
            let list = [
                IpCidr::new(plan.gateway_v4.into(), plan.prefix_v4),
                IpCidr::new(plan.host_v4.into(), plan.prefix_v4),
                IpCidr::new(plan.gateway_v6.into(), plan.prefix_v6),
                IpCidr::new(plan.host_v6.into(), plan.prefix_v6),
                IpCidr::new(GATEWAY_LINK_LOCAL.into(), 64),
            ];
            for cidr in list {
                let _ = addrs.push(cidr);
            }
        });
        // Accept segments for any destination: every remote address the guest
        // dials is "local" to the proxy.
        iface.set_any_ip(true);
        let _ = iface.routes_mut().add_default_ipv4_route(plan.gateway_v4);
        let _ = iface.routes_mut().add_default_ipv6_route(plan.gateway_v6);
        Stack { iface, sockets: SocketSet::new(Vec::new()), queues, epoch }
    }

    pub fn now(&self) -> SmolInstant {
        SmolInstant::from_micros(self.epoch.elapsed().as_micros() as i64)
    }

    /// Processes queued ingress frames and emits what sockets have to send.
    pub fn poll(&mut self) {
        let now = self.now();
        self.iface.poll(now, &mut self.queues, &mut self.sockets);
    }

    /// How long until smoltcp needs a poll without any new packet.
    pub fn poll_delay(&mut self) -> Option<std::time::Duration> {
        let now = self.now();
        self.iface.poll_delay(now, &self.sockets).map(|d| std::time::Duration::from_micros(d.total_micros()))
    }

    /// Creates a socket for `local` (the address the guest dialled) and
    /// hands it the guest's SYN, so it answers SYN-ACK on the next poll.
    /// `None` (and no socket left behind) if smoltcp did not take the SYN.
    pub fn accept_syn(&mut self, local: SocketAddr, syn: Vec<u8>, buffer: usize) -> Option<SocketHandle> {
        let mut socket = tcp_socket(buffer);
        let endpoint = IpListenEndpoint { addr: Some(local.ip().into()), port: local.port() };
        // Listening cannot fail: the port is non-zero and the socket fresh.
        let _ = socket.listen(endpoint);
        let handle = self.sockets.add(socket);
        self.queues.rx.push_front(syn);
        let now = self.now();
        self.iface.poll_ingress_single(now, &mut self.queues, &mut self.sockets);
        if self.tcp(handle).state() != tcp::State::SynReceived {
            // Never leave a listener behind: it could take another flow's SYN.
            self.sockets.remove(handle);
            return None;
        }
        Some(handle)
    }

    /// Opens a connection from `local` to the guest's `remote` (published
    /// ports).
    pub fn connect(&mut self, local: SocketAddr, remote: SocketAddr, buffer: usize) -> Option<SocketHandle> {
        let mut socket = tcp_socket(buffer);
        let remote = IpEndpoint::new(remote.ip().into(), remote.port());
        let local = IpListenEndpoint { addr: Some(local.ip().into()), port: local.port() };
        socket.connect(self.iface.context(), remote, local).ok()?;
        Some(self.sockets.add(socket))
    }

    pub fn tcp(&mut self, handle: SocketHandle) -> &mut tcp::Socket<'static> {
        self.sockets.get_mut::<tcp::Socket>(handle)
    }
}

fn tcp_socket(buffer: usize) -> tcp::Socket<'static> {
    let mut socket = tcp::Socket::new(tcp::SocketBuffer::new(vec![0; buffer]), tcp::SocketBuffer::new(vec![0; buffer]));
    // The guest's and the host's stacks do their own batching; a proxy that
    // waited as well would only add latency.
    socket.set_nagle_enabled(false);
    socket
}
