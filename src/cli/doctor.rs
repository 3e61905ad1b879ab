//! `alcove doctor`: what this host can run, and which backend `auto` picks.

use super::args::DoctorArgs;
use super::error::{CliError, CliResult};
use super::output::colour_stdout;
use serde_json::json;

/// `alcove doctor`.
pub fn doctor(args: DoctorArgs) -> CliResult<i32> {
    let mut report = alcove_hostprobe::probe();
    // Tried where the jails' layers live: alcove's home when it exists.
    let home = alcove_layout::alcove_home();
    let scratch = if home.is_dir() { home } else { std::env::temp_dir() };
    let isolation = crate::backends::probe_jail_isolation(&scratch);
    report.jail_isolation = Some(alcove_hostprobe::IsolationReport {
        idmapped_mounts: isolation.idmapped_mounts,
        detail: isolation.detail,
    });
    let (backend, why) = report.auto_backend();
    if args.json {
        let mut v = serde_json::to_value(&report).map_err(|e| CliError::msg(e.to_string()))?;
        if let Some(obj) = v.as_object_mut() {
            obj.insert("auto_backend".into(), json!({ "backend": backend.as_str(), "reason": why }));
        }
        let text = serde_json::to_string_pretty(&v).map_err(|e| CliError::msg(e.to_string()))?;
        println!("{text}");
        return Ok(0);
    }
    print!("{}", report.render_human());
    let line = format!("--backend auto uses {}: {why}", backend.as_str());
    println!("{}", super::output::paint(&line, "1", colour_stdout()));
    Ok(0)
}
