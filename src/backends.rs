//! The backends as the rest of alcove sees them: made from a sandbox's
//! [`BackendConfig`] in one place ([`make`]), with the settings it was
//! created with; and the backend-level operations the CLI needs without
//! knowing any backend crate: the pre-flight check before a sandbox is
//! recorded ([`preflight`]) and the clean-up after a sandbox process that
//! died ([`remove_leftovers`]).

use crate::config::{BackendConfig, BackendKind};
use alcove_backend::mock::MockBackend;
use alcove_backend::{GuestSpec, VmBackend};

/// The backend that runs a guest configured with `config`.
pub fn make(config: &BackendConfig) -> Box<dyn VmBackend> {
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

/// A backend of `kind` with default settings, for the backend-level
/// operations that need no configuration.
fn of_kind(kind: BackendKind) -> Box<dyn VmBackend> {
    match kind {
        BackendKind::Mock => Box::new(MockBackend::new(Default::default())),
        BackendKind::Jail => Box::new(alcove_jail::JailBackend::new(Default::default())),
        BackendKind::Krun => Box::new(alcove_krun::KrunBackend::new(Default::default())),
    }
}

/// Removes what the guest of sandbox `sandbox` left on the host after its
/// sandbox process `pid` died ([`VmBackend::remove_leftovers`]). `kind`:
/// the backend that ran it; `None` when its configuration is gone, and
/// every backend looks. True once nothing is left.
pub fn remove_leftovers(kind: Option<BackendKind>, sandbox: &str, pid: u32) -> bool {
    let kinds = match kind {
        Some(k) => vec![k],
        None => vec![BackendKind::Jail, BackendKind::Krun, BackendKind::Mock],
    };
    // Every backend cleans, even after one failed to (no short cut).
    let gone: Vec<bool> = kinds.into_iter().map(|k| of_kind(k).remove_leftovers(sandbox, pid)).collect();
    gone.into_iter().all(|g| g)
}
