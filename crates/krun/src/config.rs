//! The krun backend's own settings: what a [`GuestSpec`](alcove_backend::GuestSpec)
//! does not say (the libkrunfw library, a disk-image root, disk-image volumes).
//!
//! Disk formats are kept as strings here and checked by the planner, so an
//! unknown format in a sandbox config becomes a clear launch error rather
//! than a config parse failure far from its cause.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::PathBuf;

/// Settings of the krun backend.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KrunConfig {
    /// libkrunfw to use; searched for when absent (see
    /// `alcove_hostprobe::locate_libkrunfw`).
    pub libkrunfw: Option<PathBuf>,
    /// The guest's root filesystem.
    pub root: KrunRoot,
    /// Extra disk-image volumes.
    pub volumes: Vec<KrunVolume>,
}

/// Where the guest's root filesystem comes from. It is never modified: the
/// guest writes to an overlay whose upper layer lives in the sandbox dir.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum KrunRoot {
    /// A host directory shared through virtio-fs; `None` means the
    /// `GuestSpec::rootfs` directory.
    Directory {
        /// The directory.
        #[serde(default)]
        path: Option<PathBuf>,
    },
    /// A disk image attached read-only as a virtio-blk device.
    Disk {
        /// The image file.
        path: PathBuf,
        /// `raw`, `qcow2` or `vmdk`; detected from the file's header when
        /// absent.
        #[serde(default)]
        format: Option<String>,
        /// Filesystem type inside the image; the agent probes when absent.
        #[serde(default)]
        fstype: Option<String>,
    },
}

impl Default for KrunRoot {
    fn default() -> Self {
        KrunRoot::Directory { path: None }
    }
}

/// A disk-image volume mounted at a guest path.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KrunVolume {
    /// Stable block id (1..=20 characters of `[A-Za-z0-9_-]`); the guest
    /// finds the disk as `/dev/disk/by-id/virtio-<id>`.
    pub id: String,
    /// The image file.
    pub path: PathBuf,
    /// `raw`, `qcow2` or `vmdk`; detected when absent.
    #[serde(default)]
    pub format: Option<String>,
    /// Absolute guest path.
    pub guest_path: String,
    /// Attach and mount read-only.
    #[serde(default)]
    pub readonly: bool,
}

/// A disk image format msb_krun can attach.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskFormat {
    /// Raw block image.
    Raw,
    /// qcow2.
    Qcow2,
    /// VMDK (read-only in msb_krun).
    Vmdk,
}

impl DiskFormat {
    /// Parses `raw`, `qcow2` or `vmdk` (case-insensitive).
    pub fn parse(s: &str) -> Option<DiskFormat> {
        match s.to_ascii_lowercase().as_str() {
            "raw" | "img" => Some(DiskFormat::Raw),
            "qcow2" => Some(DiskFormat::Qcow2),
            "vmdk" => Some(DiskFormat::Vmdk),
            _ => None,
        }
    }

    /// The format a file's first bytes announce: qcow2 (`QFI\xfb`), VMDK
    /// (`KDMV` sparse extent or a `# Disk DescriptorFile` text), else raw.
    pub fn sniff(head: &[u8]) -> DiskFormat {
        if head.starts_with(b"QFI\xfb") {
            DiskFormat::Qcow2
        } else if head.starts_with(b"KDMV") || head.starts_with(b"# Disk DescriptorFile") {
            DiskFormat::Vmdk
        } else {
            DiskFormat::Raw
        }
    }

    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            DiskFormat::Raw => "raw",
            DiskFormat::Qcow2 => "qcow2",
            DiskFormat::Vmdk => "vmdk",
        }
    }
}

impl fmt::Display for DiskFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_parse_and_sniff() {
        assert_eq!(DiskFormat::parse("QCOW2"), Some(DiskFormat::Qcow2));
        assert_eq!(DiskFormat::parse("raw"), Some(DiskFormat::Raw));
        assert_eq!(DiskFormat::parse("vmdk"), Some(DiskFormat::Vmdk));
        assert_eq!(DiskFormat::parse("vhdx"), None);
        assert_eq!(DiskFormat::sniff(b"QFI\xfb\0\0\0\x03"), DiskFormat::Qcow2);
        assert_eq!(DiskFormat::sniff(b"KDMV\x01"), DiskFormat::Vmdk);
        assert_eq!(DiskFormat::sniff(b"\0\0\0\0"), DiskFormat::Raw);
        assert_eq!(DiskFormat::sniff(b""), DiskFormat::Raw);
    }

    #[test]
    fn config_json_round_trip_and_defaults() {
        let c: KrunConfig = serde_json::from_str("{}").expect("empty");
        assert_eq!(c, KrunConfig::default());
        assert_eq!(c.root, KrunRoot::Directory { path: None });
        let c: KrunConfig = serde_json::from_str(
            r#"{"libkrunfw":"/l.so","root":{"kind":"disk","path":"/r.qcow2","format":"qcow2"},
                "volumes":[{"id":"data","path":"/d.raw","guest_path":"/data","readonly":true}]}"#,
        )
        .expect("full");
        assert_eq!(c.root, KrunRoot::Disk { path: "/r.qcow2".into(), format: Some("qcow2".into()), fstype: None });
        assert_eq!(c.volumes[0].id, "data");
        assert!(c.volumes[0].readonly);
        let back: KrunConfig = serde_json::from_str(&serde_json::to_string(&c).expect("ser")).expect("de");
        assert_eq!(back, c);
        assert!(serde_json::from_str::<KrunConfig>(r#"{"rooot":{}}"#).is_err());
    }
}
