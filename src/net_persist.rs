//! Live network changes written back into the sandbox's configuration, so
//! what `inspect` shows is what runs and the next start keeps it (as
//! docker keeps a container's settings).
//!
//! Invariants:
//! - Only a change the engine accepted is written, and it is written on
//!   the control thread right after the engine took it, so the saved
//!   settings follow the engine's order of changes. A change the engine
//!   refuses, or whose settings could not start the sandbox again
//!   ([`ConfigWriter::preview`]), changes nothing anywhere.
//! - Both copies of the configuration are updated: `sandboxes/NAME/config.json`
//!   (what `alcove start` reads; written to a temporary file and renamed
//!   over it, 0600 as created) and the sandbox row's `config_json` (what
//!   `inspect` and `ps` show). The file is read back first, so fields the
//!   sandbox process does not know of are kept as they were.
//! - A policy is kept as written (profile and rules). An added port is kept
//!   as the engine bound it (a host port 0 becomes the port it got, so the
//!   next start publishes the same one); a removed port takes its entry
//!   with it, or the port-0 entry it was bound from.
//! - A sandbox whose link came from its ports alone keeps the profile it
//!   ran with (`public`) written out when its last port goes, so removing
//!   a port never removes the link at the next start.

use crate::config::SandboxConfig;
use crate::net_settings::NetworkSettings;
use crate::store::{Store, StoreOptions};
use alcove_net::PortMapping;
use std::path::PathBuf;
use std::sync::Mutex;

/// One accepted live change.
#[derive(Clone, Copy, Debug)]
pub enum Change<'a> {
    /// `alcove net policy`: the new profile and rules, as written.
    Policy {
        /// The profile.
        profile: &'a str,
        /// The rules, in order.
        rules: &'a [String],
    },
    /// `alcove port add`: the mapping as the engine bound it.
    PortAdded(PortMapping),
    /// `alcove port rm`: the mapping the engine withdrew.
    PortRemoved(PortMapping),
}

/// `settings` with `change` applied (and the guest's address refreshed).
pub fn edited(settings: &NetworkSettings, change: Change<'_>) -> NetworkSettings {
    let mut s = settings.clone();
    match change {
        Change::Policy { profile, rules } => {
            s.profile = Some(profile.to_string());
            s.rules = rules.to_vec();
        }
        Change::PortAdded(bound) => {
            let text = crate::net_control::mapping_text(&bound);
            if !s.publish.iter().any(|p| p.parse::<PortMapping>().ok() == Some(bound)) {
                s.publish.push(text);
            }
        }
        Change::PortRemoved(removed) => {
            let parsed = |p: &String| p.parse::<PortMapping>().ok();
            let exact = s.publish.iter().position(|p| parsed(p) == Some(removed));
            let from_port_zero = || {
                s.publish.iter().position(|p| {
                    parsed(p).is_some_and(|m| {
                        m.host.port() == 0
                            && m.host.ip() == removed.host.ip()
                            && m.guest_port == removed.guest_port
                            && m.proto == removed.proto
                    })
                })
            };
            if let Some(i) = exact.or_else(from_port_zero) {
                s.publish.remove(i);
            }
            if s.profile.is_none() && !s.enabled() {
                s.profile = Some("public".into());
            }
        }
    }
    s.resolved()
}

/// Writes accepted changes into one sandbox's configuration.
#[derive(Debug)]
pub struct ConfigWriter {
    config_file: PathBuf,
    db_path: PathBuf,
    store: StoreOptions,
    /// The configuration the sandbox process started with, used when the
    /// file cannot be read; kept up to date with every save. The lock also
    /// orders saves.
    last: Mutex<SandboxConfig>,
}

impl ConfigWriter {
    /// A writer for the sandbox that `cfg` configures, whose database is
    /// opened with `store`.
    pub fn new(cfg: &SandboxConfig, store: StoreOptions) -> ConfigWriter {
        ConfigWriter {
            config_file: cfg.layout().config_file(&cfg.name),
            db_path: cfg.db_path(),
            store,
            last: Mutex::new(cfg.clone()),
        }
    }

    fn current(&self, last: &SandboxConfig) -> SandboxConfig {
        match SandboxConfig::load(&self.config_file) {
            Ok(cfg) if cfg.name == last.name => cfg,
            _ => last.clone(),
        }
    }

    /// Checks that the settings after `change` could start the sandbox
    /// again; the one line says why not. Nothing is written.
    pub fn preview(&self, change: Change<'_>) -> Result<(), String> {
        let last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let cfg = self.current(&last);
        edited(&cfg.network, change)
            .check_for(cfg.backend.kind())
            .map(drop)
            .map_err(|e| format!("the sandbox could not start again with this change: {e}"))
    }

    /// Writes the settings after `change` to the file and the sandbox's row.
    pub fn save(&self, change: Change<'_>) -> Result<(), String> {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let mut cfg = self.current(&last);
        cfg.network = edited(&cfg.network, change);
        let pretty = serde_json::to_vec_pretty(&cfg).map_err(|e| e.to_string())?;
        crate::cli::state::write_private(&self.config_file, &pretty, !cfg.guest.ephemeral)
            .map_err(|e| e.to_string())?;
        let compact = serde_json::to_string(&cfg).map_err(|e| e.to_string())?;
        Store::open_with(&self.db_path, self.store.clone())
            .and_then(|store| store.upsert_sandbox(&cfg.name, &compact))
            .map_err(|e| format!("cannot record the sandbox's configuration: {e}"))?;
        *last = cfg;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mapping(text: &str) -> PortMapping {
        text.parse().unwrap()
    }

    #[test]
    fn a_policy_is_kept_as_written() {
        let s = NetworkSettings { profile: Some("host".into()), publish: vec!["0:80".into()], ..Default::default() };
        let rules = vec!["deny:*.example.com".to_string()];
        let e = edited(&s, Change::Policy { profile: "public", rules: &rules });
        assert_eq!((e.profile.as_deref(), e.rules.clone()), (Some("public"), rules));
        assert_eq!(e.publish, s.publish, "ports are untouched");
        assert_eq!(e.guest_address.map(|a| a.to_string()).as_deref(), Some("10.0.2.15"));
    }

    #[test]
    fn ports_are_kept_as_bound_and_removed_with_their_entry() {
        let s = NetworkSettings { profile: Some("host".into()), publish: vec!["0:80".into()], ..Default::default() };
        let bound = mapping("127.0.0.1:41000:8080");
        let added = edited(&s, Change::PortAdded(bound));
        assert_eq!(added.publish, ["0:80", "127.0.0.1:41000:8080/tcp"]);
        assert_eq!(edited(&added, Change::PortAdded(bound)).publish, added.publish, "added once");
        let removed = edited(&added, Change::PortRemoved(bound));
        assert_eq!(removed.publish, ["0:80"]);
        // The entry a port-0 mapping was bound from goes with its port.
        let gone = edited(&removed, Change::PortRemoved(mapping("127.0.0.1:42000:80")));
        assert!(gone.publish.is_empty(), "{gone:?}");
        assert_eq!(gone.profile.as_deref(), Some("host"));
        // A udp port is not a tcp port's entry.
        assert_eq!(edited(&removed, Change::PortRemoved(mapping("127.0.0.1:42000:80/udp"))).publish, ["0:80"]);
    }

    #[test]
    fn removing_the_last_port_of_a_ports_only_link_keeps_the_link() {
        let s = NetworkSettings { publish: vec!["127.0.0.1:41000:80".into()], ..Default::default() };
        assert!(s.enabled() && s.profile.is_none());
        let e = edited(&s, Change::PortRemoved(mapping("127.0.0.1:41000:80")));
        assert!(e.publish.is_empty());
        assert_eq!(e.profile.as_deref(), Some("public"), "the profile it ran with");
        assert!(e.enabled());
    }
}
