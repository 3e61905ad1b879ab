//! `alcove rootfs pull|prune`, the images part of `rootfs ls`, and the resolution of a
//! `--rootfs` that is an image reference for `run`/`create`.
//!
//! Progress of a pull: on a terminal (and without `--quiet`) one line per layer, redrawn in
//! place, with bytes and rate; with `--json`, one JSON event per line on stdout; otherwise
//! nothing until the final line.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::time::Instant;

use alcove_rootfs::{LayerState, Progress as PullProgress, PullOptions, RootfsStore};
use serde_json::json;

use super::args::{RegistryOpts, SandboxOpts};
use super::error::{CliError, CliResult};
use super::output::{human_bytes, utc, Progress, Table};
use super::state::Ctx;

impl RegistryOpts {
    /// The rootfs crate's view of these options.
    pub fn pull_options(&self) -> PullOptions {
        PullOptions { insecure_registries: self.insecure_registries.clone(), auth_file: self.auth_file.clone() }
    }
}

/// Resolves `--rootfs` for `run`/`create` (pulling an image reference not yet pulled), with
/// the pull's steps and layer bytes shown on the spinner.
pub fn resolve_rootfs(
    store: &RootfsStore,
    opts: &SandboxOpts,
    spinner: &Progress,
) -> CliResult<alcove_rootfs::ResolvedRootfs> {
    let mut step = String::new();
    let resolved = store.resolve_with(&opts.rootfs, &opts.registry.pull_options(), &mut |p| match p {
        PullProgress::Step(s) => {
            step = s;
            spinner.set(step.clone());
        }
        PullProgress::Layer { digest, state, done, total } => {
            spinner.set(format!("{step}: layer {} {} {}", short(&digest), state.word(), amount(done, total)));
        }
        _ => {}
    })?;
    Ok(resolved)
}

fn short(digest: &str) -> &str {
    let hex = digest.split_once(':').map(|(_, h)| h).unwrap_or(digest);
    &hex[..hex.len().min(12)]
}

fn amount(done: u64, total: u64) -> String {
    if total > 0 {
        format!("{} / {}", human_bytes(done), human_bytes(total))
    } else {
        human_bytes(done)
    }
}

/// One layer's line on the terminal.
struct LayerLine {
    state: LayerState,
    done: u64,
    total: u64,
    started: Instant,
}

/// Per-layer lines redrawn in place on stderr.
struct LayerBoard {
    lines: BTreeMap<usize, (String, LayerLine)>,
    order: Vec<String>,
    drawn: usize,
    last_draw: Option<Instant>,
}

impl LayerBoard {
    fn update(&mut self, digest: String, state: LayerState, done: u64, total: u64) {
        let idx = match self.order.iter().position(|d| *d == digest) {
            Some(i) => i,
            None => {
                self.order.push(digest.clone());
                self.order.len() - 1
            }
        };
        let started = self.lines.get(&idx).map(|(_, l)| l.started).unwrap_or_else(Instant::now);
        self.lines.insert(idx, (digest, LayerLine { state, done, total, started }));
        // Redraw at most ten times a second, and always on a state change to done/cached.
        let now = Instant::now();
        let due = self.last_draw.is_none_or(|t| now.duration_since(t).as_millis() >= 100);
        if due || matches!(state, LayerState::Done | LayerState::Cached) {
            self.draw();
            self.last_draw = Some(now);
        }
    }

    fn draw(&mut self) {
        let mut err = std::io::stderr().lock();
        if self.drawn > 0 {
            let _ = write!(err, "\x1b[{}A", self.drawn);
        }
        for (digest, l) in self.lines.values() {
            let secs = l.started.elapsed().as_secs_f64().max(0.001);
            let rate = if l.state == LayerState::Downloading {
                format!("  {}/s", human_bytes((l.done as f64 / secs) as u64))
            } else {
                String::new()
            };
            let _ =
                writeln!(err, "\r\x1b[2K{}  {:<11} {}{rate}", short(digest), l.state.word(), amount(l.done, l.total));
        }
        self.drawn = self.lines.len();
        let _ = err.flush();
    }
}

/// `alcove rootfs pull REF`.
pub fn pull(store: &RootfsStore, reference: &str, quiet: bool, json: bool, registry: &RegistryOpts) -> CliResult<i32> {
    let show = !quiet && !json && std::io::stderr().is_terminal();
    let mut board = LayerBoard { lines: BTreeMap::new(), order: Vec::new(), drawn: 0, last_draw: None };
    let mut notices = Vec::new();
    let result = store.pull(reference, &registry.pull_options(), &mut |p| match p {
        PullProgress::Layer { digest, state, done, total } => {
            if json {
                println!(
                    "{}",
                    json!({"event": "layer", "digest": digest, "state": state.word(), "done": done, "total": total})
                );
            } else if show {
                board.update(digest, state, done, total);
            }
        }
        PullProgress::Step(s) => {
            if json {
                println!("{}", json!({"event": "step", "message": s}));
            }
        }
        PullProgress::Notice(n) => {
            if json {
                println!("{}", json!({"event": "notice", "message": n}));
            } else {
                notices.push(n);
            }
        }
        PullProgress::Bytes { .. } => {}
    });
    if show && board.drawn > 0 {
        board.draw();
    }
    for n in &notices {
        eprintln!("alcove: {n}");
    }
    let info = result?;
    if json {
        println!(
            "{}",
            json!({"event": "pulled", "reference": reference, "digest": info.digest, "root": info.root,
                   "size_bytes": info.size_bytes, "layers": info.layers})
        );
    } else {
        println!("{reference} {}", info.digest);
    }
    Ok(0)
}

/// `alcove rootfs prune`: removes pulled images that no sandbox's root filesystem is.
pub fn prune(store: &RootfsStore) -> CliResult<i32> {
    let ctx = Ctx::open_quiet()?;
    let mut used = Vec::new();
    for sandbox in ctx.store.sandboxes().map_err(|e| CliError::msg(e.to_string()))? {
        if let Ok(cfg) = ctx.load_config(&sandbox.name) {
            if let Some(root) = cfg.guest.rootfs {
                used.push(root);
            }
        }
    }
    let (images, layers) = store.prune_images(&|root| used.iter().any(|u| u == root))?;
    println!("removed {images} images and {layers} layers");
    Ok(0)
}

/// The images table of `alcove rootfs ls` (and its JSON).
pub fn images_listing(store: &RootfsStore) -> CliResult<(Table, Vec<serde_json::Value>)> {
    let images = store.images()?;
    let mut t = Table::new(&["IMAGE", "DIGEST", "SIZE", "SHARED", "LAYERS", "PULLED"]);
    let mut v = Vec::new();
    for i in &images {
        let name = if i.references.is_empty() { "<none>".to_string() } else { i.references.join(", ") };
        t.row(vec![
            name,
            format!("{}…", &i.digest[..i.digest.len().min(19)]),
            human_bytes(i.size_bytes),
            human_bytes(i.shared_bytes),
            i.layers.to_string(),
            utc(i.created_at_ms),
        ]);
        v.push(json!({
            "references": i.references,
            "digest": i.digest,
            "root": i.root,
            "size_bytes": i.size_bytes,
            "shared_bytes": i.shared_bytes,
            "layers": i.layers,
            "created_at_ms": i.created_at_ms,
        }));
    }
    Ok((t, v))
}
