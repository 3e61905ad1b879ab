//! What a backend is asked to run.

use serde::{Deserialize, Serialize};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

/// Everything a backend needs to create one guest. Backend-specific
/// settings (a krun disk image, a libkrunfw path) live in that backend's own
/// constructor, not here.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GuestSpec {
    /// Sandbox name; the guest's hostname.
    pub name: String,
    /// `$ALCOVE_HOME/sandboxes/<name>`: the writable layer (`upper/`) and
    /// backend scratch space live here and survive a stop.
    pub sandbox_dir: PathBuf,
    /// Where the guest console and the agent's stderr go.
    pub guest_log: PathBuf,
    /// Root filesystem directory (never modified).
    pub rootfs: Option<PathBuf>,
    /// The static agent binary to run as the guest's PID 1.
    pub agent_binary: Option<PathBuf>,
    /// CPU limit (jail: CPU quota; krun: vCPUs).
    pub cpus: Option<u32>,
    /// Memory limit in MiB.
    pub memory_mib: Option<u64>,
    /// Maximum number of processes.
    pub pids_limit: Option<u64>,
    /// Size of the guest's `/dev/shm` in MiB (jail; `None`: the backend's default).
    pub shm_mib: Option<u64>,
    /// Size of the guest's `/tmp` in MiB (jail; `None`: the backend's default,
    /// a share of the memory limit).
    pub tmp_mib: Option<u64>,
    /// Limit of the writable layer in MiB (jail; `None`: no limit).
    pub disk_mib: Option<u64>,
    /// Extra mounts from the host.
    pub mounts: Vec<MountSpec>,
    /// Default environment for commands.
    pub env: Vec<(String, String)>,
    /// Default working directory for commands.
    pub workdir: Option<String>,
    /// Default user for commands.
    pub user: Option<String>,
    /// The writable layer is thrown away after this one run (`run --rm`):
    /// the backend may skip work that only makes it durable (the jail mounts
    /// its overlay `volatile`, so unmounting it does not sync the host
    /// filesystem under `upper/`).
    pub ephemeral: bool,
    /// How often the agent sends a heartbeat; `None`: the agent's default.
    /// Set by the sandbox process from its policy, never by a user config.
    #[serde(skip)]
    pub heartbeat: Option<std::time::Duration>,
    /// The guest's network link (`--net`); `None`: loopback only.
    pub network: Option<GuestNetwork>,
}

/// The guest's side of its network link: what `eth0` is configured with
/// before any command runs, and what `/etc/hosts` and `/etc/resolv.conf`
/// name. The host side (the engine) owns the other end of the link.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuestNetwork {
    /// The interface's name in the guest.
    pub interface: String,
    /// The guest's MAC address.
    pub mac: [u8; 6],
    /// The link MTU.
    pub mtu: u32,
    /// The guest's IPv4 address and prefix length.
    pub address_v4: Ipv4Addr,
    /// Prefix length of [`GuestNetwork::address_v4`].
    pub prefix_v4: u8,
    /// The default IPv4 gateway; also the resolver.
    pub gateway_v4: Ipv4Addr,
    /// The guest's IPv6 address (`None`: IPv4 only).
    pub address_v6: Option<Ipv6Addr>,
    /// Prefix length of [`GuestNetwork::address_v6`].
    pub prefix_v6: u8,
    /// The default IPv6 gateway.
    pub gateway_v6: Option<Ipv6Addr>,
    /// The address `host.alcove.internal` resolves to (the host's loopback
    /// through the engine).
    pub host_alias_v4: Ipv4Addr,
}

/// A host path made visible in the guest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountSpec {
    /// Host path; must exist.
    pub host: PathBuf,
    /// Absolute guest path.
    pub guest: String,
    /// Mounted read-only.
    pub readonly: bool,
}

impl MountSpec {
    /// Parses `HOST:GUEST[:ro]` (`:rw` is accepted too).
    pub fn parse(s: &str) -> Result<MountSpec, String> {
        let parts: Vec<&str> = s.split(':').collect();
        let (host, guest, readonly) = match parts.as_slice() {
            [h, g] => (*h, *g, false),
            [h, g, "ro"] => (*h, *g, true),
            [h, g, "rw"] => (*h, *g, false),
            [_, _, other] => return Err(format!("mount option {other:?} in {s:?} is not ro or rw")),
            _ => return Err(format!("mount {s:?} is not HOST:GUEST[:ro]")),
        };
        if host.is_empty() || !guest.starts_with('/') {
            return Err(format!("mount {s:?} needs a host path and an absolute guest path"));
        }
        Ok(MountSpec { host: PathBuf::from(host), guest: guest.to_string(), readonly })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mounts_parse() {
        assert_eq!(
            MountSpec::parse("/a:/b:ro"),
            Ok(MountSpec { host: "/a".into(), guest: "/b".into(), readonly: true })
        );
        assert!(!MountSpec::parse("/a:/b").expect("parses").readonly);
        assert!(MountSpec::parse("/a:b").is_err());
        assert!(MountSpec::parse("/a").is_err());
        assert!(MountSpec::parse("/a:/b:xx").is_err());
    }
}
