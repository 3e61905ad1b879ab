//! Network policy: a profile plus ordered rules, and the decision for a flow
//! or a DNS name.
//!
//! Invariants:
//! - Rules are evaluated in order and the first rule that matches decides;
//!   the profile decides only when no rule matched.
//! - Cloud metadata addresses ([`AddrClass::Metadata`]) are allowed only by a
//!   rule that names them: the `metadata` group, a domain rule matched through
//!   the DNS pin set, or a CIDR at least as narrow as /24 (IPv4) or /120
//!   (IPv6). Broad allow rules skip them and no profile allows them.
//! - A [`Policy`] is immutable; the engine swaps a whole policy at once, so a
//!   flow is never decided by half of an old and half of a new rule set.
//! - Domain names are compared in lower case without a trailing dot.

mod classify;
mod parse;

pub use classify::{classify, embedded_v4, AddrClass, METADATA_V4, METADATA_V6};
pub use parse::PolicyError;

use ipnet::IpNet;
use std::fmt;
use std::net::IpAddr;
use std::ops::RangeInclusive;

/// A `--net` profile: what is allowed when no rule matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Profile {
    /// Nothing; DNS answers NXDOMAIN without asking an upstream.
    None,
    /// Globally routable addresses only (the default).
    #[default]
    Public,
    /// Private ranges only (RFC 1918, 100.64.0.0/10, fc00::/7).
    Private,
    /// Only the host's loopback, through `host.alcove.internal`.
    Host,
    /// Everything except cloud metadata.
    All,
}

impl Profile {
    /// Whether this profile allows a destination of this class.
    pub fn allows(self, class: AddrClass) -> bool {
        use AddrClass as C;
        match self {
            Profile::None => false,
            Profile::Public => class == C::Public,
            Profile::Private => class == C::Private,
            Profile::Host => class == C::Loopback,
            Profile::All => class != C::Metadata,
        }
    }

    /// The profile's name as written on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Profile::None => "none",
            Profile::Public => "public",
            Profile::Private => "private",
            Profile::Host => "host",
            Profile::All => "all",
        }
    }
}

/// What a rule does when it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Allow,
    Deny,
}

/// An address group usable as a rule destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Group {
    Public,
    Private,
    Loopback,
    LinkLocal,
    Metadata,
    Multicast,
}

impl Group {
    fn class(self) -> AddrClass {
        match self {
            Group::Public => AddrClass::Public,
            Group::Private => AddrClass::Private,
            Group::Loopback => AddrClass::Loopback,
            Group::LinkLocal => AddrClass::LinkLocal,
            Group::Metadata => AddrClass::Metadata,
            Group::Multicast => AddrClass::Multicast,
        }
    }
}

/// A rule's destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dest {
    /// An address range (a single address is a /32 or /128).
    Cidr(IpNet),
    /// Exactly this name (lower case, no trailing dot).
    Domain(String),
    /// Any name strictly below this suffix (`*.example.com`: `a.example.com`,
    /// `a.b.example.com`, not `example.com`).
    Suffix(String),
    /// An address class.
    Group(Group),
}

/// A transport protocol a rule may be restricted to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Proto {
    Tcp,
    Udp,
    Icmp,
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Icmp => "icmp",
        })
    }
}

/// A set of ports: a list of inclusive ranges, none starting at 0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ports(pub Vec<RangeInclusive<u16>>);

impl Ports {
    pub fn contains(&self, port: u16) -> bool {
        self.0.iter().any(|r| r.contains(&port))
    }
}

/// One `allow|deny:DEST[:PROTO][:PORTS]` rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub action: Action,
    pub dest: Dest,
    pub proto: Option<Proto>,
    pub ports: Option<Ports>,
    /// The rule as written, for flow records and messages.
    pub text: String,
}

/// A destination as the policy sees it.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    /// The address the host will contact (the host's loopback for
    /// `host.alcove.internal`).
    pub addr: IpAddr,
    /// The names the guest resolved to this address through the engine's DNS.
    pub names: &'a [String],
    pub proto: Proto,
    /// Destination port; `None` for ICMP.
    pub port: Option<u16>,
}

/// What decided a flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecidedBy {
    /// The rule at this index (its text).
    Rule { index: usize, text: String },
    /// No rule matched; the profile decided.
    Profile(Profile),
    /// A metadata address that no rule named.
    Metadata,
    /// An address that is never a destination (loopback literal, the
    /// guest's own subnet, unspecified, broadcast).
    Martian,
    /// A bound of the engine (connections, sessions, buffers).
    Limit(&'static str),
    /// A host client came in through this published host port.
    Published(u16),
}

impl fmt::Display for DecidedBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecidedBy::Rule { index, text } => write!(f, "rule {} ({text})", index + 1),
            DecidedBy::Profile(p) => write!(f, "profile {}", p.name()),
            DecidedBy::Metadata => f.write_str("metadata"),
            DecidedBy::Martian => f.write_str("martian"),
            DecidedBy::Limit(what) => write!(f, "limit {what}"),
            DecidedBy::Published(port) => write!(f, "published port {port}"),
        }
    }
}

/// The outcome of a policy check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub by: DecidedBy,
}

/// The outcome of a check on a DNS name before it is forwarded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameDecision {
    /// A domain rule allows the name: forward, keep every answer address.
    Allowed(usize),
    /// A domain rule denies the name: NXDOMAIN.
    Denied(usize),
    /// No domain rule names it: forward, then keep only the answer
    /// addresses the policy may allow for this name.
    Undecided,
    /// Nothing can be allowed (profile `none`, no allow rule): NXDOMAIN
    /// without asking an upstream.
    Nothing,
}

/// A profile and its ordered rules.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Policy {
    pub profile: Profile,
    pub rules: Vec<Rule>,
}

pub(crate) fn normalize_name(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

impl Rule {
    fn dest_matches(&self, addr: IpAddr, class: AddrClass, names: &[String]) -> bool {
        match &self.dest {
            Dest::Cidr(net) => net.contains(&addr),
            Dest::Group(g) => g.class() == class,
            Dest::Domain(d) => names.iter().any(|n| n == d),
            Dest::Suffix(s) => names.iter().any(|n| {
                n.len() > s.len() + 1 && n.ends_with(s.as_str()) && n.as_bytes()[n.len() - s.len() - 1] == b'.'
            }),
        }
    }

    fn names_metadata(&self) -> bool {
        match &self.dest {
            Dest::Group(g) => *g == Group::Metadata,
            Dest::Domain(_) | Dest::Suffix(_) => true,
            Dest::Cidr(IpNet::V4(n)) => n.prefix_len() >= 24,
            Dest::Cidr(IpNet::V6(n)) => n.prefix_len() >= 120,
        }
    }

    fn restricted(&self) -> bool {
        self.proto.is_some() || self.ports.is_some()
    }

    fn service_matches(&self, proto: Proto, port: Option<u16>) -> bool {
        if self.proto.is_some_and(|p| p != proto) {
            return false;
        }
        match (&self.ports, port) {
            (None, _) => true,
            (Some(ports), Some(port)) => ports.contains(port),
            (Some(_), None) => false,
        }
    }

    fn is_name_rule(&self) -> bool {
        matches!(self.dest, Dest::Domain(_) | Dest::Suffix(_))
    }
}

impl Policy {
    /// Decides a flow to `target`.
    pub fn decide(&self, target: &Target<'_>) -> Decision {
        let class = classify(target.addr);
        for (index, rule) in self.rules.iter().enumerate() {
            if !rule.service_matches(target.proto, target.port) || !rule.dest_matches(target.addr, class, target.names)
            {
                continue;
            }
            if rule.action == Action::Allow && class == AddrClass::Metadata && !rule.names_metadata() {
                continue;
            }
            return Decision {
                allowed: rule.action == Action::Allow,
                by: DecidedBy::Rule { index, text: rule.text.clone() },
            };
        }
        if class == AddrClass::Metadata {
            return Decision { allowed: false, by: DecidedBy::Metadata };
        }
        Decision { allowed: self.profile.allows(class), by: DecidedBy::Profile(self.profile) }
    }

    /// Decides a DNS name before it is forwarded.
    pub fn decide_name(&self, name: &str) -> NameDecision {
        let names = [normalize_name(name)];
        let unspecified = IpAddr::from([0u8; 4]);
        for (index, rule) in self.rules.iter().enumerate() {
            if !rule.is_name_rule() || !rule.dest_matches(unspecified, AddrClass::Reserved, &names) {
                continue;
            }
            match rule.action {
                Action::Allow => return NameDecision::Allowed(index),
                Action::Deny if !rule.restricted() => return NameDecision::Denied(index),
                Action::Deny => {}
            }
        }
        if self.profile == Profile::None && !self.rules.iter().any(|r| r.action == Action::Allow) {
            return NameDecision::Nothing;
        }
        NameDecision::Undecided
    }

    /// Whether some flow (any protocol, any port) to `addr` under these
    /// names may be allowed: the DNS answer filter (rebind protection).
    pub fn may_allow(&self, addr: IpAddr, names: &[String]) -> bool {
        let class = classify(addr);
        for rule in &self.rules {
            if !rule.dest_matches(addr, class, names) {
                continue;
            }
            match rule.action {
                Action::Allow if class == AddrClass::Metadata && !rule.names_metadata() => {}
                Action::Allow => return true,
                Action::Deny if !rule.restricted() => return false,
                Action::Deny => {}
            }
        }
        class != AddrClass::Metadata && self.profile.allows(class)
    }
}

#[cfg(test)]
mod tests;
