//! The pin set: which names each address was returned for by the engine's
//! DNS, so domain rules apply to the TCP/UDP flows that follow.
//!
//! Invariants:
//! - Only answers the engine itself gave the guest are pinned; the guest
//!   cannot claim a name for an address.
//! - Bounded: at most [`MAX_ADDRS`] addresses and [`MAX_NAMES`] names per
//!   address; the least recently pinned address goes first. Pins do not
//!   expire on a timer (no wake-ups while idle): a client caching an answer
//!   past its TTL still gets its domain rule.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;

pub(crate) const MAX_ADDRS: usize = 8192;
pub(crate) const MAX_NAMES: usize = 8;

#[derive(Default)]
pub(crate) struct Pins {
    names: HashMap<IpAddr, Vec<String>>,
    order: VecDeque<IpAddr>,
}

impl Pins {
    pub fn pin(&mut self, addr: IpAddr, name: &str) {
        let names = self.names.entry(addr).or_default();
        if let Some(pos) = names.iter().position(|n| n == name) {
            names.remove(pos);
        } else if names.len() == MAX_NAMES {
            names.remove(0);
        }
        names.push(name.to_string());
        if let Some(pos) = self.order.iter().rposition(|a| *a == addr) {
            self.order.remove(pos);
        }
        self.order.push_back(addr);
        while self.order.len() > MAX_ADDRS {
            if let Some(old) = self.order.pop_front() {
                self.names.remove(&old);
            }
        }
    }

    /// The names `addr` was returned for, most recent last.
    pub fn names(&self, addr: IpAddr) -> &[String] {
        self.names.get(&addr).map(Vec::as_slice).unwrap_or(&[])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_are_bounded_and_most_recent_last() {
        let mut pins = Pins::default();
        let a: IpAddr = "1.2.3.4".parse().unwrap();
        pins.pin(a, "x.example");
        pins.pin(a, "y.example");
        pins.pin(a, "x.example");
        assert_eq!(pins.names(a), ["y.example", "x.example"]);
        for i in 0..MAX_NAMES + 3 {
            pins.pin(a, &format!("n{i}.example"));
        }
        assert_eq!(pins.names(a).len(), MAX_NAMES);
        for i in 0..MAX_ADDRS as u32 {
            pins.pin(IpAddr::from((0x0a00_0000u32 + i).to_be_bytes()), "many.example");
        }
        assert!(pins.names(a).is_empty(), "the oldest address was evicted");
        assert_eq!(pins.names.len(), MAX_ADDRS);
    }
}
