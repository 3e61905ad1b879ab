//! The backends as the rest of alcove sees them: made from a sandbox's
//! [`BackendConfig`] in one place ([`make`]), with the settings it was
//! created with; and the backend-level operations the CLI needs without
//! knowing any backend crate: the settings of a new sandbox
//! ([`jail_from_env`], [`krun_with`], [`with_hostname`]), the pre-flight check before it is
//! recorded ([`preflight`]), what `doctor` and `inspect` show of the jail's
//! isolation ([`probe_jail_isolation`], [`recorded_isolation`]) and the
//! clean-up after a sandbox process that died ([`remove_leftovers`]).

use crate::config::{BackendConfig, BackendKind};
use alcove_backend::mock::MockBackend;
use alcove_backend::{GuestBackend, GuestSpec};
use std::path::{Path, PathBuf};

/// The backend that runs a guest configured with `config`.
pub fn make(config: &BackendConfig) -> Box<dyn GuestBackend> {
    match config {
        BackendConfig::Mock(script) => Box::new(MockBackend::new(script.clone())),
        BackendConfig::Jail(options) => Box::new(alcove_jail::JailBackend::new(options.clone())),
        BackendConfig::Krun(settings) => Box::new(alcove_krun::KrunBackend::new(settings.clone())),
    }
}

/// The jail settings of this environment (the user-namespace mode from
/// `ALCOVE_JAIL_USERNS`), kept with a new sandbox for all its starts.
pub fn jail_from_env() -> Result<BackendConfig, String> {
    alcove_jail::JailOptions::from_env().map(BackendConfig::Jail).map_err(|e| e.to_string())
}

/// Whether a sandbox of backend `kind` may have the hostname `hostname`
/// (`--hostname`): a valid name, and a jail (a krun guest's hostname is its
/// sandbox name). One-line error.
pub fn hostname_allowed(kind: BackendKind, hostname: Option<&str>) -> Result<(), String> {
    let Some(hostname) = hostname else { return Ok(()) };
    check_hostname(hostname)?;
    if kind != BackendKind::Jail {
        return Err(format!(
            "--hostname needs the jail backend (a {} guest's hostname is its sandbox name)",
            kind.as_str()
        ));
    }
    Ok(())
}

/// `backend` with the guest hostname `hostname` (checked by
/// [`hostname_allowed`]): a setting of the jail's; other backends are left
/// as they are.
pub fn with_hostname(backend: BackendConfig, hostname: Option<&str>) -> BackendConfig {
    match (backend, hostname) {
        (BackendConfig::Jail(options), Some(hostname)) => {
            BackendConfig::Jail(alcove_jail::JailOptions { hostname: Some(hostname.to_string()), ..options })
        }
        (other, _) => other,
    }
}

/// Whether `hostname` may be a guest's hostname (one-line error).
pub fn check_hostname(hostname: &str) -> Result<(), String> {
    alcove_jail::check_hostname(hostname)
}

/// krun settings with the guest kernel library `libkrunfw`.
pub fn krun_with(libkrunfw: PathBuf) -> BackendConfig {
    BackendConfig::Krun(alcove_krun::KrunConfig { libkrunfw: Some(libkrunfw), ..Default::default() })
}

/// Whether this host can give root-run jails a private uid range (tried
/// under `scratch`), for `alcove doctor`.
pub fn probe_jail_isolation(scratch: &Path) -> alcove_jail::IsolationProbe {
    alcove_jail::probe_isolation(scratch)
}

/// The isolation the sandbox in `sandbox_dir` last ran with, as its jail
/// recorded it (none for other backends), for `alcove inspect`.
pub fn recorded_isolation(sandbox_dir: &Path) -> Option<String> {
    alcove_jail::recorded_isolation(sandbox_dir)
}

/// Checks, before anything is recorded, that this host can give `guest`
/// what it asks of `config`'s backend, and fills in the defaults the
/// backend will enforce (so `inspect` shows them). A jail refuses a limit
/// the host cannot apply; the other backends check at launch.
pub fn preflight(config: &BackendConfig, guest: &mut GuestSpec) -> Result<(), String> {
    if let BackendConfig::Jail(options) = config {
        alcove_jail::check(guest, options).map_err(|e| e.to_string())?;
        alcove_jail::limits::fill_defaults(guest, options);
    }
    Ok(())
}

/// Removes what the guest of sandbox `sandbox` left on the host after its
/// sandbox process `pid` died ([`GuestBackend::remove_leftovers`]), asking the
/// backend it was configured with (`config`, with its settings: a jail's
/// cgroup parent); `None` when its configuration is gone, and every backend
/// looks with its defaults. True once nothing is left.
pub fn remove_leftovers(config: Option<&BackendConfig>, sandbox: &str, pid: u32) -> bool {
    let backends: Vec<Box<dyn GuestBackend>> = match config {
        Some(config) => vec![make(config)],
        None => vec![
            make(&BackendConfig::Jail(Default::default())),
            make(&BackendConfig::Krun(Default::default())),
            make(&BackendConfig::Mock(Default::default())),
        ],
    };
    // Every backend cleans, even after one failed to (no short cut).
    let gone: Vec<bool> = backends.iter().map(|b| b.remove_leftovers(sandbox, pid)).collect();
    gone.into_iter().all(|g| g)
}
