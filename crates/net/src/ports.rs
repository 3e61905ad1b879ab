//! Published ports: `-p [HOST_IP:]HOST_PORT:GUEST_PORT[/udp]`.
//!
//! Invariants:
//! - The host socket is bound by the caller's thread when the port is
//!   added ([`BoundPort::bind`]), so a taken port is an error at once,
//!   before the engine sees anything.
//! - The default bind address is 127.0.0.1: publishing never opens a port
//!   to the network unless an address says so.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::str::FromStr;

/// TCP or UDP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PortProto {
    Tcp,
    Udp,
}

/// One published port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PortMapping {
    pub proto: PortProto,
    /// Where the host listens (port 0 picks one; [`BoundPort::mapping`]
    /// tells which).
    pub host: SocketAddr,
    pub guest_port: u16,
}

impl fmt::Display for PortMapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let proto = match self.proto {
            PortProto::Tcp => "tcp",
            PortProto::Udp => "udp",
        };
        write!(f, "{}:{}/{proto}", self.host, self.guest_port)
    }
}

/// A malformed port mapping or one that cannot be bound.
#[derive(Debug, thiserror::Error)]
pub enum PortError {
    #[error("invalid port mapping {text:?}: {reason} (expected [HOST_IP:]HOST_PORT:GUEST_PORT[/udp])")]
    Parse { text: String, reason: String },
    #[error("cannot publish {mapping}: {source}")]
    Bind {
        mapping: PortMapping,
        #[source]
        source: std::io::Error,
    },
}

impl FromStr for PortMapping {
    type Err = PortError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let err = |reason: &str| PortError::Parse { text: text.to_string(), reason: reason.to_string() };
        let (spec, proto) = match text.rsplit_once('/') {
            Some((spec, "tcp")) => (spec, PortProto::Tcp),
            Some((spec, "udp")) => (spec, PortProto::Udp),
            Some((_, other)) => return Err(err(&format!("protocol {other:?} is not tcp or udp"))),
            None => (text, PortProto::Tcp),
        };
        let (host_ip, rest) = if let Some(inner) = spec.strip_prefix('[') {
            let (ip, rest) = inner.split_once("]:").ok_or_else(|| err("unclosed '[' in host address"))?;
            (Some(ip), rest)
        } else {
            match spec.matches(':').count() {
                0 => return Err(err("missing GUEST_PORT")),
                1 => (None, spec),
                2 => {
                    let (ip, rest) = spec.split_once(':').unwrap_or_default();
                    (Some(ip), rest)
                }
                _ => return Err(err("write an IPv6 host address in brackets")),
            }
        };
        let ip = match host_ip {
            Some(ip) => ip.parse::<IpAddr>().map_err(|_| err(&format!("bad host address {ip:?}")))?,
            None => IpAddr::V4(Ipv4Addr::LOCALHOST),
        };
        let (host_port, guest_port) = rest.split_once(':').ok_or_else(|| err("missing GUEST_PORT"))?;
        let host_port = host_port.parse::<u16>().map_err(|_| err(&format!("bad host port {host_port:?}")))?;
        let guest_port = match guest_port.parse::<u16>() {
            Ok(p) if p != 0 => p,
            _ => return Err(err(&format!("bad guest port {guest_port:?}"))),
        };
        Ok(PortMapping { proto, host: SocketAddr::new(ip, host_port), guest_port })
    }
}

/// A published port's host socket, bound and ready to hand to the engine.
#[derive(Debug)]
pub struct BoundPort {
    pub(crate) mapping: PortMapping,
    pub(crate) socket: BoundSocket,
}

#[derive(Debug)]
pub(crate) enum BoundSocket {
    Tcp(std::net::TcpListener),
    Udp(std::net::UdpSocket),
}

impl BoundPort {
    /// Binds the host side of `mapping`; a taken port fails here.
    pub fn bind(mapping: PortMapping) -> Result<BoundPort, PortError> {
        let bind_err = |source| PortError::Bind { mapping, source };
        let socket = match mapping.proto {
            PortProto::Tcp => {
                let l = std::net::TcpListener::bind(mapping.host).map_err(bind_err)?;
                l.set_nonblocking(true).map_err(bind_err)?;
                BoundSocket::Tcp(l)
            }
            PortProto::Udp => {
                let s = std::net::UdpSocket::bind(mapping.host).map_err(bind_err)?;
                s.set_nonblocking(true).map_err(bind_err)?;
                BoundSocket::Udp(s)
            }
        };
        let local = match &socket {
            BoundSocket::Tcp(l) => l.local_addr(),
            BoundSocket::Udp(s) => s.local_addr(),
        }
        .map_err(bind_err)?;
        Ok(BoundPort { mapping: PortMapping { host: local, ..mapping }, socket })
    }

    /// The mapping with the port actually bound.
    pub fn mapping(&self) -> PortMapping {
        self.mapping
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mappings() {
        let m: PortMapping = "8080:80".parse().unwrap();
        assert_eq!(m, PortMapping { proto: PortProto::Tcp, host: "127.0.0.1:8080".parse().unwrap(), guest_port: 80 });
        let m: PortMapping = "0.0.0.0:5353:53/udp".parse().unwrap();
        assert_eq!(m, PortMapping { proto: PortProto::Udp, host: "0.0.0.0:5353".parse().unwrap(), guest_port: 53 });
        let m: PortMapping = "[::1]:9000:9000/tcp".parse().unwrap();
        assert_eq!(m.host, "[::1]:9000".parse().unwrap());
    }

    #[test]
    fn malformed_mappings_give_one_line() {
        for (text, want) in [
            ("80", "missing GUEST_PORT"),
            ("x:80", "bad host port"),
            ("80:0", "bad guest port"),
            ("80:70000", "bad guest port"),
            ("1.2.3:80:80", "bad host address"),
            ("80:80/sctp", "not tcp or udp"),
            ("::1:80:80", "brackets"),
        ] {
            let e = text.parse::<PortMapping>().expect_err(text).to_string();
            assert!(e.contains(want) && e.contains(text) && !e.contains('\n'), "{text}: {e}");
        }
    }

    #[test]
    fn a_taken_port_fails_at_bind() {
        let first = BoundPort::bind("127.0.0.1:0:80".parse().unwrap()).unwrap();
        let again = PortMapping { ..first.mapping() };
        let err = BoundPort::bind(again).unwrap_err().to_string();
        assert!(err.contains("cannot publish") && err.contains(&first.mapping().host.to_string()), "{err}");
    }
}
