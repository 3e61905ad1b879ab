//! The backends as the rest of alcove sees them: made from the
//! configuration in one place ([`make`]), and asked — never called into
//! directly — for the clean-up after a sandbox process that died
//! ([`remove_leftovers`]). The CLI knows no backend crate for either.

use crate::config::{BackendKind, SandboxConfig};
use alcove_backend::mock::MockBackend;
use alcove_backend::VmBackend;

/// The backend that runs `cfg`'s guest.
pub fn make(cfg: &SandboxConfig) -> Result<Box<dyn VmBackend>, String> {
    match cfg.backend {
        BackendKind::Mock => Ok(Box::new(MockBackend::new(cfg.mock.clone()))),
        BackendKind::Jail => {
            let options = alcove_jail::JailOptions::from_env().map_err(|e| e.to_string())?;
            Ok(Box::new(alcove_jail::JailBackend::new(options)))
        }
        BackendKind::Krun => Ok(Box::new(alcove_krun::KrunBackend::new(cfg.krun.clone()))),
    }
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
    // Every backend cleans, even after one failed to.
    kinds.into_iter().map(|k| of_kind(k).remove_leftovers(sandbox, pid)).fold(true, |all, gone| all && gone)
}
