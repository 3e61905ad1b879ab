//! A sandbox's network settings: the `network` section of its
//! configuration (`--net`, `--net-rule`, `--dns`, `-p`), kept as written so
//! `inspect` shows what was asked for, and checked into the engine's types.
//!
//! Invariants:
//! - [`NetworkSettings::check`] is the one parser: the CLI calls it before
//!   anything is recorded (bad input is one line, exit 125) and the sandbox
//!   process calls it again on the stored configuration.
//! - A sandbox has a network link only when [`NetworkSettings::enabled`]:
//!   `--net` other than `none`, or any rule or published port. Without one
//!   it keeps loopback only and no engine starts.

use crate::config::BackendKind;
use alcove_backend::GuestNetwork;
use alcove_net::policy::{Policy, Profile, Rule};
use alcove_net::{AddressPlan, NetConfig, PortMapping};
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, SocketAddr};

/// The MTU of a jail's link (its TAP and the engine): the largest frame a
/// TAP carries, as slirp4netns uses. Each frame costs the engine a read or
/// write and a pass through smoltcp, so bulk TCP runs several times faster
/// than at 1500 (BENCHMARKS.md, "The network against slirp4netns and
/// pasta").
pub const TAP_LINK_MTU: usize = 65520;

/// The MTU of a microVM's link (its virtio-net and the engine): msb_krun's
/// device negotiates no mergeable receive buffers, so the guest's driver
/// drops any frame longer than 1518 bytes.
pub const VM_LINK_MTU: usize = alcove_krun::plan::MAX_VM_MTU as usize;

/// The link MTU of a backend's guest; `None`: the backend has no link
/// (the mock's scripted guest).
pub fn link_mtu(backend: BackendKind) -> Option<usize> {
    match backend {
        BackendKind::Jail => Some(TAP_LINK_MTU),
        BackendKind::Krun => Some(VM_LINK_MTU),
        BackendKind::Mock => None,
    }
}

/// The `network` section of a sandbox's configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NetworkSettings {
    /// The `--net` profile (`none`, `public`, `private`, `host`, `all`);
    /// absent: `none` unless rules or ports ask for a link, then `public`.
    pub profile: Option<String>,
    /// `--net-rule` rules, in order.
    pub rules: Vec<String>,
    /// `--dns IP[:PORT]` resolvers; empty: the host's.
    pub dns: Vec<String>,
    /// `-p [HOST_IP:]HOST_PORT:GUEST_PORT[/udp]` published ports.
    pub publish: Vec<String>,
    /// A denied flow ends the sandbox (reason NetworkPolicy) instead of
    /// only being refused.
    pub deny_ends_sandbox: bool,
    /// The guest's address, filled in when the link is enabled (shown by
    /// `inspect` and `ps --json`).
    pub guest_address: Option<IpAddr>,
    /// `--secret`: names, hosts, placeholders; never values
    /// ([`crate::secrets`]).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<SecretSetting>,
    /// `--tls-upstream-ca FILE`: upstreams of intercepted connections are
    /// verified against these certificates instead of the host's store.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_upstream_ca: Option<std::path::PathBuf>,
    /// `--tls-intercept-port`: destination ports whose TLS to a secret's
    /// hosts is intercepted; empty: 443.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub intercept_ports: Vec<u16>,
    /// `--on-secret-violation terminate`: a placeholder sent where it does
    /// not belong ends the sandbox (reason NetworkPolicy).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub secret_violation_ends: bool,
}

/// One `--secret` as configured (the value is kept apart, see
/// [`crate::secrets`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretSetting {
    /// The guest's environment variable.
    pub name: String,
    /// Host patterns (`api.example.com`, `*.example.com`).
    pub hosts: Vec<String>,
    /// Where the value came from: `env:VAR`, `file:PATH` or `literal`.
    pub source: String,
    /// What the guest sees instead of the value.
    pub placeholder: String,
}

/// Why the settings were refused: one line naming the bad value.
#[derive(Debug, thiserror::Error)]
pub enum NetworkSettingsError {
    /// A malformed profile or rule.
    #[error(transparent)]
    Policy(#[from] alcove_net::policy::PolicyError),
    /// A malformed port mapping.
    #[error(transparent)]
    Port(#[from] alcove_net::ports::PortError),
    /// A malformed `--dns` address.
    #[error("invalid DNS server {0:?} (expected IP or IP:PORT, e.g. 127.0.0.1:5353 or [::1]:53)")]
    Dns(String),
    /// Options that need a network link without one.
    #[error("{0} needs a network (--net public, private, host or all)")]
    NeedsNetwork(&'static str),
    /// A malformed secret host pattern (from a configuration written by hand).
    #[error("secret {0}: {1}")]
    SecretHost(String, alcove_net::secrets::HostPatternError),
    /// An intercepted port of 0.
    #[error("--tls-intercept-port 0 is not a port")]
    InterceptPort,
    /// A network asked of a backend whose guest has no link.
    #[error("--net is not available with the {0} backend (use the jail or krun backend)")]
    NoLink(&'static str),
}

/// Settings checked into what the engine takes.
#[derive(Clone, Debug)]
pub struct NetworkPlan {
    /// The engine's configuration (policy, resolvers, address plan).
    pub config: NetConfig,
    /// Ports to publish at start.
    pub ports: Vec<PortMapping>,
    /// A policy denial ends the sandbox.
    pub deny_ends_sandbox: bool,
    /// Where live changes are served ([`crate::net_control`]); set by the
    /// sandbox process.
    pub control_socket: Option<std::path::PathBuf>,
    /// Interception for secrets; set by the sandbox process once it has
    /// read the values and made the CA.
    pub secrets: Option<SecretsPlan>,
    /// Where accepted live changes are written back
    /// ([`crate::net_persist`]); set by the sandbox process.
    pub config_writer: Option<std::sync::Arc<crate::net_persist::ConfigWriter>>,
}

/// The secrets' part of a running network.
#[derive(Clone)]
pub struct SecretsPlan {
    /// What the engine's interceptor needs.
    pub config: alcove_net::secrets::SecretsConfig,
    /// A violation ends the sandbox.
    pub violation_ends: bool,
}

impl std::fmt::Debug for SecretsPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the values.
        f.debug_struct("SecretsPlan").field("violation_ends", &self.violation_ends).finish_non_exhaustive()
    }
}

impl NetworkSettings {
    /// Whether the sandbox gets a network link.
    pub fn enabled(&self) -> bool {
        self.profile.as_deref().is_some_and(|p| p != "none")
            || !self.rules.is_empty()
            || !self.publish.is_empty()
            || !self.secrets.is_empty()
    }

    /// [`NetworkSettings::check`] for a guest of `backend`: the link's MTU
    /// is that backend's ([`link_mtu`]), and a backend without a link
    /// refuses a network.
    pub fn check_for(&self, backend: BackendKind) -> Result<Option<NetworkPlan>, NetworkSettingsError> {
        let Some(mut plan) = self.check()? else { return Ok(None) };
        plan.config.mtu = link_mtu(backend).ok_or(NetworkSettingsError::NoLink(match backend {
            BackendKind::Jail => "jail",
            BackendKind::Krun => "krun",
            BackendKind::Mock => "mock",
        }))?;
        Ok(Some(plan))
    }

    /// Parses everything; `Ok(None)` for a sandbox without a link. The
    /// link's MTU is a jail's ([`NetworkSettings::check_for`] sets the
    /// backend's).
    pub fn check(&self) -> Result<Option<NetworkPlan>, NetworkSettingsError> {
        let profile = match &self.profile {
            Some(p) => p.parse::<Profile>()?,
            None => Profile::Public,
        };
        let rules = self.rules.iter().map(|r| r.parse::<Rule>()).collect::<Result<Vec<_>, _>>()?;
        let ports = self.publish.iter().map(|p| p.parse::<PortMapping>()).collect::<Result<Vec<_>, _>>()?;
        let dns = self.dns.iter().map(|d| parse_dns(d)).collect::<Result<Vec<_>, _>>()?;
        for secret in &self.secrets {
            for host in &secret.hosts {
                host.parse::<alcove_net::secrets::HostPattern>()
                    .map_err(|e| NetworkSettingsError::SecretHost(secret.name.clone(), e))?;
            }
        }
        if self.intercept_ports.contains(&0) {
            return Err(NetworkSettingsError::InterceptPort);
        }
        if !self.enabled() {
            if !dns.is_empty() {
                return Err(NetworkSettingsError::NeedsNetwork("--dns"));
            }
            if self.deny_ends_sandbox {
                return Err(NetworkSettingsError::NeedsNetwork("--net-deny-ends"));
            }
            if self.secret_violation_ends || self.tls_upstream_ca.is_some() || !self.intercept_ports.is_empty() {
                return Err(NetworkSettingsError::NeedsNetwork(
                    "--on-secret-violation, --tls-upstream-ca or --tls-intercept-port",
                ));
            }
            return Ok(None);
        }
        let dns_upstreams = if dns.is_empty() { host_resolvers() } else { dns };
        let config = NetConfig {
            policy: Policy { profile, rules },
            dns_upstreams,
            ipv6_egress: alcove_net::config::host_has_ipv6_egress(),
            mtu: TAP_LINK_MTU,
            ..NetConfig::default()
        };
        Ok(Some(NetworkPlan {
            config,
            ports,
            deny_ends_sandbox: self.deny_ends_sandbox,
            control_socket: None,
            secrets: None,
            config_writer: None,
        }))
    }

    /// The settings with the guest's address filled in (when enabled).
    pub fn resolved(mut self) -> NetworkSettings {
        self.guest_address = self.enabled().then(|| IpAddr::V4(AddressPlan::default().guest_v4));
        self
    }
}

impl NetworkPlan {
    /// The guest's side of the link, for the backend.
    pub fn guest_link(&self) -> GuestNetwork {
        let plan = &self.config.plan;
        GuestNetwork {
            interface: "eth0".into(),
            mac: plan.guest_mac,
            mtu: self.config.mtu as u32,
            address_v4: plan.guest_v4,
            prefix_v4: plan.prefix_v4,
            gateway_v4: plan.gateway_v4,
            address_v6: None,
            prefix_v6: plan.prefix_v6,
            gateway_v6: None,
            host_alias_v4: plan.host_v4,
        }
    }
}

fn parse_dns(text: &str) -> Result<SocketAddr, NetworkSettingsError> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    text.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)).map_err(|_| NetworkSettingsError::Dns(text.into()))
}

/// The host's resolvers from /etc/resolv.conf.
fn host_resolvers() -> Vec<SocketAddr> {
    std::fs::read_to_string("/etc/resolv.conf")
        .map(|t| alcove_net::config::resolvers_from_resolv_conf(&t))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(profile: Option<&str>) -> NetworkSettings {
        NetworkSettings { profile: profile.map(Into::into), ..NetworkSettings::default() }
    }

    #[test]
    fn no_net_and_net_none_have_no_link() {
        assert!(settings(None).check().unwrap().is_none());
        assert!(settings(Some("none")).check().unwrap().is_none());
        assert!(settings(None).resolved().guest_address.is_none());
    }

    #[test]
    fn a_profile_rules_and_ports_make_a_plan() {
        let s = NetworkSettings {
            profile: Some("host".into()),
            rules: vec!["deny:*.example.com".into()],
            dns: vec!["127.0.0.1:5353".into(), "::1".into()],
            publish: vec!["0:80".into()],
            ..NetworkSettings::default()
        };
        let plan = s.check().unwrap().expect("a link");
        assert_eq!(plan.config.policy.profile, Profile::Host);
        assert_eq!(plan.config.policy.rules.len(), 1);
        assert_eq!(plan.config.dns_upstreams, ["127.0.0.1:5353".parse().unwrap(), "[::1]:53".parse().unwrap()]);
        assert_eq!(plan.ports[0].guest_port, 80);
        assert_eq!(plan.guest_link().address_v4.to_string(), "10.0.2.15");
        // The guest's eth0 and the engine agree on the link's MTU.
        assert_eq!((plan.guest_link().mtu as usize, plan.config.mtu), (TAP_LINK_MTU, TAP_LINK_MTU));
        assert_eq!(s.resolved().guest_address.map(|a| a.to_string()).as_deref(), Some("10.0.2.15"));
        // Rules alone ask for a link with the default profile.
        let rules_only = NetworkSettings { rules: vec!["allow:10.0.0.0/8".into()], ..NetworkSettings::default() };
        assert_eq!(rules_only.check().unwrap().unwrap().config.policy.profile, Profile::Public);
    }

    #[test]
    fn each_backend_gets_its_link_mtu_and_the_mock_none() {
        let s = settings(Some("public"));
        let jail = s.check_for(BackendKind::Jail).unwrap().expect("a link");
        assert_eq!((jail.config.mtu, jail.guest_link().mtu as usize), (TAP_LINK_MTU, TAP_LINK_MTU));
        let krun = s.check_for(BackendKind::Krun).unwrap().expect("a link");
        assert_eq!((krun.config.mtu, krun.guest_link().mtu as usize), (1500, 1500));
        let e = s.check_for(BackendKind::Mock).expect_err("the mock has no link").to_string();
        assert_eq!(e, "--net is not available with the mock backend (use the jail or krun backend)");
        assert!(settings(None).check_for(BackendKind::Mock).unwrap().is_none(), "no network asked: fine");
    }

    #[test]
    fn bad_values_are_one_line_naming_the_value() {
        let cases = [
            (NetworkSettings { profile: Some("everywhere".into()), ..Default::default() }, "everywhere"),
            (NetworkSettings { rules: vec!["permit:1.2.3.4".into()], ..Default::default() }, "permit:1.2.3.4"),
            (NetworkSettings { rules: vec!["allow:10.0.0.0/33".into()], ..Default::default() }, "10.0.0.0/33"),
            (NetworkSettings { publish: vec!["80".into()], ..Default::default() }, "\"80\""),
            (
                NetworkSettings { profile: Some("all".into()), dns: vec!["resolver".into()], ..Default::default() },
                "resolver",
            ),
            (NetworkSettings { dns: vec!["127.0.0.1".into()], ..Default::default() }, "--dns needs a network"),
        ];
        for (s, want) in cases {
            let e = s.check().expect_err(want).to_string();
            assert!(e.contains(want) && !e.contains('\n'), "{want}: {e}");
        }
    }
}
