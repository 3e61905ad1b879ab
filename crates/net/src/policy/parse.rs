//! Parsing of profiles and rules from their command-line form.
//!
//! Rule grammar: `allow|deny:DEST[:tcp|udp|icmp][:PORTS]` where DEST is a
//! CIDR or address, a domain, `*.suffix`, or a group name, and PORTS is a
//! comma-separated list of ports and `LOW-HIGH` ranges. An IPv6 DEST followed
//! by a protocol or ports is written in brackets (`allow:[2001:db8::/32]:tcp:443`);
//! alone it may be bare (`deny:fd00::/8`).
//!
//! Every error is one line that quotes the offending input.

use super::{normalize_name, Action, Dest, Group, Ports, Profile, Proto, Rule};
use ipnet::IpNet;
use std::net::IpAddr;
use std::str::FromStr;

/// A malformed profile or rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("unknown network profile {0:?} (expected none, public, private, host or all)")]
    Profile(String),
    #[error("invalid network rule {rule:?}: {reason}")]
    Rule { rule: String, reason: String },
}

impl FromStr for Profile {
    type Err = PolicyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "none" => Profile::None,
            "public" => Profile::Public,
            "private" => Profile::Private,
            "host" => Profile::Host,
            "all" => Profile::All,
            _ => return Err(PolicyError::Profile(s.to_string())),
        })
    }
}

impl FromStr for Rule {
    type Err = PolicyError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        parse_rule(text).map_err(|reason| PolicyError::Rule { rule: text.to_string(), reason })
    }
}

fn parse_rule(text: &str) -> Result<Rule, String> {
    let (action, rest) = text.split_once(':').ok_or("expected allow:DEST or deny:DEST")?;
    let action = match action {
        "allow" => Action::Allow,
        "deny" => Action::Deny,
        other => return Err(format!("action {other:?} is neither allow nor deny")),
    };
    if rest.is_empty() {
        return Err("missing destination".into());
    }
    let (dest_text, tail) = split_dest(rest)?;
    let dest = parse_dest(dest_text)?;
    let mut parts = match tail {
        Some(t) => t.split(':').collect::<Vec<_>>(),
        None => Vec::new(),
    };
    if parts.len() > 2 {
        return Err("too many ':' fields (expected DEST[:PROTO][:PORTS])".into());
    }
    let mut proto = None;
    if let Some(first) = parts.first() {
        if let Some(p) = parse_proto(first) {
            proto = Some(p);
            parts.remove(0);
        } else if parts.len() == 2 {
            return Err(format!("protocol {first:?} is not tcp, udp or icmp"));
        }
    }
    let ports = match parts.first() {
        Some(p) => Some(parse_ports(p)?),
        None => None,
    };
    if proto == Some(Proto::Icmp) && ports.is_some() {
        return Err("icmp has no ports".into());
    }
    Ok(Rule { action, dest, proto, ports, text: text.to_string() })
}

/// Splits `DEST[:...]`, honouring brackets and bare IPv6 destinations.
fn split_dest(rest: &str) -> Result<(&str, Option<&str>), String> {
    if let Some(inner) = rest.strip_prefix('[') {
        let (dest, after) = inner.split_once(']').ok_or("unclosed '[' in destination")?;
        return match after {
            "" => Ok((dest, None)),
            _ => match after.strip_prefix(':') {
                Some(tail) if !tail.is_empty() => Ok((dest, Some(tail))),
                _ => Err(format!("unexpected {after:?} after ']'")),
            },
        };
    }
    if rest.matches(':').count() >= 2 && (rest.parse::<IpNet>().is_ok() || rest.parse::<IpAddr>().is_ok()) {
        return Ok((rest, None));
    }
    let first = rest.split(':').next().unwrap_or("");
    let looks_v6 = first.len() <= 4 && first.bytes().all(|b| b.is_ascii_hexdigit());
    if rest.matches(':').count() >= 3 && looks_v6 {
        return Err("an IPv6 destination followed by a protocol or ports must be written in brackets, e.g. [2001:db8::/32]:tcp:443".into());
    }
    Ok(match rest.split_once(':') {
        Some((dest, tail)) if !tail.is_empty() => (dest, Some(tail)),
        Some(_) => return Err("empty field after ':'".into()),
        None => (rest, None),
    })
}

fn parse_proto(s: &str) -> Option<Proto> {
    match s {
        "tcp" => Some(Proto::Tcp),
        "udp" => Some(Proto::Udp),
        "icmp" => Some(Proto::Icmp),
        _ => None,
    }
}

fn parse_dest(s: &str) -> Result<Dest, String> {
    if s.is_empty() {
        return Err("missing destination".into());
    }
    let group = match s {
        "public" => Some(Group::Public),
        "private" => Some(Group::Private),
        "loopback" => Some(Group::Loopback),
        "link-local" => Some(Group::LinkLocal),
        "metadata" => Some(Group::Metadata),
        "multicast" => Some(Group::Multicast),
        _ => None,
    };
    if let Some(g) = group {
        return Ok(Dest::Group(g));
    }
    if let Ok(addr) = s.parse::<IpAddr>() {
        return Ok(Dest::Cidr(IpNet::from(addr)));
    }
    if s.contains('/') {
        let net = s.parse::<IpNet>().map_err(|_| format!("bad CIDR {s:?}"))?;
        if net.trunc() != net {
            return Err(format!("CIDR {s:?} has host bits set (did you mean {}?)", net.trunc()));
        }
        return Ok(Dest::Cidr(net));
    }
    if s.contains(':') || s.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return Err(format!("bad address {s:?}"));
    }
    if let Some(suffix) = s.strip_prefix("*.") {
        check_name(suffix)?;
        return Ok(Dest::Suffix(normalize_name(suffix)));
    }
    check_name(s)?;
    Ok(Dest::Domain(normalize_name(s)))
}

fn check_name(name: &str) -> Result<(), String> {
    let trimmed = name.strip_suffix('.').unwrap_or(name);
    if trimmed.is_empty() || trimmed.len() > 253 {
        return Err(format!("bad domain {name:?}"));
    }
    for label in trimmed.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !ok {
            return Err(format!("bad domain {name:?} (label {label:?})"));
        }
    }
    Ok(())
}

fn parse_ports(s: &str) -> Result<Ports, String> {
    let mut ranges = Vec::new();
    for item in s.split(',') {
        let (lo, hi) = match item.split_once('-') {
            Some((lo, hi)) => (parse_port(lo, s)?, parse_port(hi, s)?),
            None => {
                let p = parse_port(item, s)?;
                (p, p)
            }
        };
        if lo > hi {
            return Err(format!("port range {item:?} runs backwards"));
        }
        ranges.push(lo..=hi);
    }
    Ok(Ports(ranges))
}

fn parse_port(s: &str, all: &str) -> Result<u16, String> {
    match s.parse::<u16>() {
        Ok(0) | Err(_) => Err(format!("bad port {s:?} in {all:?} (expected 1-65535)")),
        Ok(p) => Ok(p),
    }
}
