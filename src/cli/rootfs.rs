//! `alcove rootfs import|ls|rm` (`pull` and `prune` are in `pull.rs`).

use super::args::RootfsCommand;
use super::error::{CliError, CliResult};
use super::output::{colour_stdout, human_bytes, utc, Progress, Table};
use alcove_rootfs::RootfsStore;
use serde_json::json;

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
                alcove_rootfs::Progress::Layer { .. } => {}
            });
            progress.finish();
            for n in &notices {
                eprintln!("alcove: {n}");
            }
            let info = info?;
            println!("{} ({}, {})", info.name, human_bytes(info.size_bytes), info.source);
            Ok(0)
        }
        RootfsCommand::Pull { reference, quiet, json, registry } => {
            super::pull::pull(&store, &reference, quiet, json, &registry)
        }
        RootfsCommand::Prune => super::pull::prune(&store),
        RootfsCommand::Ls { json } => {
            let list = store.list()?;
            let (images_table, images_json) = super::pull::images_listing(&store)?;
            if json {
                let mut v: Vec<_> = list
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
                v.extend(images_json.into_iter().map(|mut i| {
                    let name =
                        i["references"][0].as_str().map(str::to_string).unwrap_or_else(|| i["digest"].to_string());
                    i["name"] = json!(name);
                    i["kind"] = json!("image");
                    i
                }));
                let text = serde_json::to_string_pretty(&v).map_err(|e| CliError::msg(e.to_string()))?;
                println!("{text}");
                return Ok(0);
            }
            let mut t = Table::new(&["NAME", "SIZE", "CREATED", "SOURCE"]);
            for i in &list {
                t.row(vec![i.name.clone(), human_bytes(i.size_bytes), utc(i.created_at_ms), i.source.clone()]);
            }
            print!("{}", t.render(colour_stdout()));
            if !images_json.is_empty() {
                println!();
                print!("{}", images_table.render(colour_stdout()));
            }
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
