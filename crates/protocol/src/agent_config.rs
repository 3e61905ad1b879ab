//! How the host tells the agent what guest to set up.
//!
//! Not a wire message: the jail backend passes it as JSON on an inherited fd
//! (`alcove-agent --config-fd N`), the krun backend as a JSON file in the
//! guest's boot share (`alcove-agent --config /PATH`). Neither way puts its
//! content (environment values may be secrets) in any process's argv.

use serde::{Deserialize, Serialize};

/// The agent's start-up configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentConfig {
    /// Hostname to set (the sandbox name).
    pub hostname: String,
    /// Which guest the agent runs in.
    pub mode: AgentMode,
    /// Default environment of every command (a request's env is added on top).
    pub env: Vec<(String, String)>,
    /// Default working directory.
    pub workdir: Option<String>,
    /// Default user.
    pub user: Option<String>,
    /// How to assemble the root filesystem inside a VM; `None` in a jail,
    /// where the host has already pivoted into it.
    pub vm: Option<VmBoot>,
    /// Milliseconds between two heartbeats; `None`: [`DEFAULT_HEARTBEAT_MS`].
    /// The host sets it from its heartbeat timeout, so an idle guest wakes
    /// no more often than that timeout needs.
    #[serde(default)]
    pub heartbeat_ms: Option<u32>,
}

/// The agent's heartbeat period when the host names none.
pub const DEFAULT_HEARTBEAT_MS: u32 = 1000;

/// Where the agent runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum AgentMode {
    /// PID 1 of a namespace jail; the transport is an inherited socket fd.
    #[default]
    Jail,
    /// PID 1 of a libkrun microVM; the transport is the virtio-console port
    /// named `agent`, and the exit code goes through the virtio-fs ioctl.
    Vm,
}

/// Root filesystem assembly inside a microVM.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmBoot {
    /// The user's root filesystem, mounted read-only as the overlay's lower.
    pub root: VmRoot,
    /// virtio-fs tag of the per-sandbox writable directory (holding `upper/`
    /// and `work/`); `None` means a tmpfs upper (changes are lost at stop).
    pub upper_tag: Option<String>,
    /// Extra virtio-fs shares.
    pub mounts: Vec<VmMount>,
    /// Extra disk-image volumes.
    pub volumes: Vec<VmVolume>,
    /// `/etc/hosts`, `/etc/hostname`, `/etc/resolv.conf` to write into the
    /// root's writable layer unless the guest has edited its own copy.
    #[serde(default)]
    pub name_files: Vec<NameFile>,
    /// The network link to configure before any command runs; `None`:
    /// loopback only. Only a VM's agent configures its link: a jail's is
    /// configured by the host, which is why this lives in [`VmBoot`].
    #[serde(default)]
    pub network: Option<VmNetwork>,
}

/// A microVM's network interface, as the agent configures it: loopback
/// and `interface` up, the MTU, the IPv4 address with a default route and,
/// when given, the IPv6 address with its default route. The MAC address
/// is the VMM's (virtio-net's config space), not set here.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmNetwork {
    /// The interface's name (`eth0`).
    pub interface: String,
    /// The link MTU.
    pub mtu: u32,
    /// The guest's IPv4 address.
    pub address_v4: std::net::Ipv4Addr,
    /// Its prefix length.
    pub prefix_v4: u8,
    /// The IPv4 default gateway.
    pub gateway_v4: std::net::Ipv4Addr,
    /// The guest's IPv6 address (`None`: IPv4 only).
    #[serde(default)]
    pub address_v6: Option<std::net::Ipv6Addr>,
    /// Prefix length of [`VmNetwork::address_v6`].
    #[serde(default)]
    pub prefix_v6: u8,
    /// The IPv6 default gateway.
    #[serde(default)]
    pub gateway_v6: Option<std::net::Ipv6Addr>,
}

/// A file the agent puts in the guest's root at boot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NameFile {
    /// Absolute guest path (under `/etc`).
    pub path: String,
    /// The content.
    pub content: String,
}

/// The lower layer of a VM's root.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum VmRoot {
    /// A directory shared through virtio-fs under this tag.
    VirtioFs {
        /// The share's tag.
        tag: String,
    },
    /// A disk image attached as a virtio-blk device with this id; the agent
    /// finds it as `/dev/disk/by-id/virtio-<id>` (or by scanning
    /// /sys/block/*/serial) and mounts it read-only.
    Block {
        /// The block device id given to the VMM.
        device_id: String,
        /// Filesystem type; probed when absent.
        fstype: Option<String>,
    },
}

/// A virtio-fs share mounted at a guest path.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmMount {
    /// The share's tag.
    pub tag: String,
    /// Absolute guest path.
    pub guest_path: String,
    /// Mount read-only.
    pub readonly: bool,
}

/// A disk-image volume mounted at a guest path.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmVolume {
    /// The block device id given to the VMM.
    pub device_id: String,
    /// Absolute guest path.
    pub guest_path: String,
    /// Mount read-only.
    pub readonly: bool,
}

impl AgentConfig {
    /// JSON form.
    pub fn to_json(&self) -> Vec<u8> {
        // Serialising plain data with string keys cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Parses the JSON form.
    pub fn from_json(bytes: &[u8]) -> Result<AgentConfig, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}
