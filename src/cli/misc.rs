//! `alcove doctor` and `alcove rootfs import|ls|rm`.

use super::args::{DoctorArgs, RootfsCommand};
use super::error::{CliError, CliResult};
use super::output::{colour_stdout, human_bytes, utc, Progress, Table};
use alcove_rootfs::RootfsStore;
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

/// `alcove rootfs …`.
pub fn rootfs(cmd: RootfsCommand) -> CliResult<i32> {
    let home = alcove_layout::alcove_home();
    let store = RootfsStore::new(home);
    match cmd {
        RootfsCommand::Import { name, file } => {
            alcove_rootfs::validate_name(&name)?;
            let progress = Progress::start(format!("importing {}", file.display()));
            let mut step = String::from("importing");
            let mut notices = Vec::new();
            let info = store.import(&name, &file, &mut |p| match p {
                alcove_rootfs::Progress::Notice(n) => notices.push(n),
                alcove_rootfs::Progress::Step(s) => {
                    step = s;
                    progress.set(step.clone());
                }
                alcove_rootfs::Progress::Bytes { done, total } => {
                    let amount = match total {
                        Some(t) if t > 0 => format!("{} / {} ({}%)", human_bytes(done), human_bytes(t), done * 100 / t),
                        _ => human_bytes(done),
                    };
                    progress.set(format!("{step}: {amount}"));
                }
            });
            progress.finish();
            for n in &notices {
                eprintln!("alcove: {n}");
            }
            let info = info?;
            println!("{} ({}, {})", info.name, human_bytes(info.size_bytes), info.source);
            Ok(0)
        }
        RootfsCommand::Ls { json } => {
            let list = store.list()?;
            if json {
                let v: Vec<_> = list
                    .iter()
                    .map(|i| {
                        json!({
                            "name": i.name,
                            "root": i.root,
                            "source": i.source,
                            "size_bytes": i.size_bytes,
                            "created_at_ms": i.created_at_ms,
                        })
                    })
                    .collect();
                let text = serde_json::to_string_pretty(&v).map_err(|e| CliError::msg(e.to_string()))?;
                println!("{text}");
                return Ok(0);
            }
            let mut t = Table::new(&["NAME", "SIZE", "CREATED", "SOURCE"]);
            for i in &list {
                t.row(vec![i.name.clone(), human_bytes(i.size_bytes), utc(i.created_at_ms), i.source.clone()]);
            }
            print!("{}", t.render(colour_stdout()));
            Ok(0)
        }
        RootfsCommand::Rm { names } => {
            let mut failed = false;
            for n in names {
                match store.remove(&n) {
                    Ok(()) => println!("{n}"),
                    Err(e) => {
                        super::output::error_line(&super::error::one_line(&e.to_string()));
                        failed = true;
                    }
                }
            }
            Ok(if failed { super::error::EXIT_ALCOVE } else { 0 })
        }
    }
}
