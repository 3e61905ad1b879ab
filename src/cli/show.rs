//! The read-only commands: ps, inspect, logs, metrics.

use super::args::{InspectArgs, LogSource, LogsArgs, MetricsArgs, PsArgs};
use super::error::{CliError, CliResult};
use super::output::{ago, colour_stdout, human_bytes, human_duration_ms, status_sgr, utc, Table};
use super::state::Ctx;
use alcove_store::{MetricSample, RunRecord, RunStatus, SandboxRecord, SandboxStatus};
use serde_json::{json, Value};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::time::Duration;

fn config_value(sb: &SandboxRecord) -> Value {
    serde_json::from_str(&sb.config_json).unwrap_or(Value::Null)
}

fn backend_of(cfg: &Value) -> String {
    cfg.get("backend").and_then(Value::as_str).unwrap_or("?").to_string()
}

fn run_json(r: &RunRecord) -> Value {
    serde_json::to_value(r).unwrap_or(Value::Null)
}

fn is_active(status: SandboxStatus) -> bool {
    matches!(status, SandboxStatus::Starting | SandboxStatus::Running | SandboxStatus::Paused | SandboxStatus::Draining)
}

fn print_json(v: &Value) -> CliResult<()> {
    let text = serde_json::to_string_pretty(v).map_err(|e| CliError::msg(e.to_string()))?;
    println!("{text}");
    Ok(())
}

/// A run's end as `Reason (exit N)`.
fn run_end(r: &RunRecord) -> String {
    match (r.status, r.reason) {
        (RunStatus::Running, _) => "-".into(),
        (_, Some(reason)) => match (r.exit_code, r.exit_signal) {
            (Some(c), _) => format!("{reason} (exit {c})"),
            (None, Some(s)) => format!("{reason} (signal {s})"),
            _ => reason.to_string(),
        },
        (_, None) => "?".into(),
    }
}

/// `alcove ps`.
pub fn ps(args: PsArgs) -> CliResult<i32> {
    let ctx = Ctx::open()?;
    let mut rows = Vec::new();
    for (sb, last) in ctx.store.sandboxes_with_latest_run()? {
        if !args.all && !is_active(sb.status) {
            continue;
        }
        rows.push((sb, last));
    }
    if args.json {
        let list: Vec<Value> = rows
            .iter()
            .map(|(sb, last)| {
                let cfg = config_value(sb);
                json!({
                    "name": sb.name,
                    "status": sb.status,
                    "backend": backend_of(&cfg),
                    "pid": last.as_ref().filter(|r| r.status == RunStatus::Running).map(|r| r.pid),
                    "created_at_ms": sb.created_at_ms,
                    "updated_at_ms": sb.updated_at_ms,
                    "last_run": last.as_ref().map(run_json),
                    "network": cfg.get("network").cloned().unwrap_or(Value::Null),
                })
            })
            .collect();
        print_json(&Value::Array(list))?;
        return Ok(0);
    }
    let mut t = Table::new(&["NAME", "STATUS", "BACKEND", "PID", "CREATED", "LAST RUN"]);
    for (sb, last) in &rows {
        let cfg = config_value(sb);
        let pid = last.as_ref().filter(|r| r.status == RunStatus::Running).map(|r| r.pid.to_string());
        let status = sb.status.to_string();
        let sgr = status_sgr(&status);
        let last_run = match last {
            Some(r) if r.status == RunStatus::Running => {
                format!("up {}", human_duration_ms(super::output::now_ms() - r.started_at_ms))
            }
            Some(r) => run_end(r),
            None => "-".into(),
        };
        t.row_styled(vec![
            (sb.name.clone(), None),
            (status, Some(sgr)),
            (backend_of(&cfg), None),
            (pid.unwrap_or_else(|| "-".into()), None),
            (ago(sb.created_at_ms), None),
            (last_run, None),
        ]);
    }
    print!("{}", t.render(colour_stdout()));
    Ok(0)
}

/// `alcove inspect`.
pub fn inspect(args: InspectArgs) -> CliResult<i32> {
    let ctx = Ctx::open_for(&[&args.name])?;
    let sb = ctx.sandbox(&args.name)?;
    let runs = ctx.store.runs(&sb.name)?;
    let cfg = config_value(&sb);
    let meta = ctx.meta(&sb.name);
    let dir = ctx.sandbox_dir(&sb.name);
    let socket = ctx.socket_path(&sb.name).ok();
    let isolation = crate::backends::recorded_isolation(&dir);
    let guest_log = ctx.layout.log_file(&sb.name, alcove_layout::GUEST_LOG);
    if args.json {
        print_json(&json!({
            "name": sb.name,
            "status": sb.status,
            "created_at_ms": sb.created_at_ms,
            "updated_at_ms": sb.updated_at_ms,
            "network": cfg.get("network").cloned().unwrap_or(Value::Null),
            "config": cfg,
            "auto_remove": meta.auto_remove,
            "rootfs": meta.rootfs,
            "detached_command": meta.detached_command,
            "dir": dir,
            "guest_log": guest_log,
            "socket": socket,
            "isolation": isolation,
            "runs": runs.iter().map(run_json).collect::<Vec<_>>(),
        }))?;
        return Ok(0);
    }
    let colour = colour_stdout();
    let status = sb.status.to_string();
    let guest = cfg.get("guest").cloned().unwrap_or(Value::Null);
    let policy = cfg.get("policy").cloned().unwrap_or(Value::Null);
    let show = |v: Option<&Value>| match v {
        None | Some(Value::Null) => "-".to_string(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    };
    let ms = |v: Option<&Value>| match v.and_then(Value::as_u64) {
        Some(ms) => format!("{}s", ms as f64 / 1000.0),
        None => "-".into(),
    };
    let mut out = String::new();
    let mut kv = |k: &str, v: String| out.push_str(&format!("{:<16} {v}\n", format!("{k}:")));
    kv("Name", sb.name.clone());
    kv("Status", super::output::paint(&status, status_sgr(&status), colour));
    kv("Backend", backend_of(&cfg));
    kv("Isolation", isolation.unwrap_or_else(|| "-".into()));
    kv("Created", utc(sb.created_at_ms));
    kv("Rootfs", show(guest.get("rootfs")));
    kv("CPUs", show(guest.get("cpus")));
    kv("Memory (MiB)", show(guest.get("memory_mib")));
    kv("Workdir", show(guest.get("workdir")));
    kv("User", show(guest.get("user")));
    let env_names: Vec<String> = guest
        .get("env")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|p| p.get(0).and_then(Value::as_str).map(str::to_string)).collect())
        .unwrap_or_default();
    kv("Env", if env_names.is_empty() { "-".into() } else { env_names.join(", ") });
    let mounts: Vec<String> = guest
        .get("mounts")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|m| {
                    let ro = if m.get("readonly").and_then(Value::as_bool).unwrap_or(false) { ":ro" } else { "" };
                    format!("{}:{}{ro}", show(m.get("host")), show(m.get("guest")))
                })
                .collect()
        })
        .unwrap_or_default();
    kv("Volumes", if mounts.is_empty() { "-".into() } else { mounts.join(", ") });
    kv("Network", super::net::describe(cfg.get("network")));
    kv("Idle timeout", ms(policy.get("idle_timeout")));
    kv("Max duration", ms(policy.get("max_duration")));
    kv("Remove on stop", meta.auto_remove.to_string());
    kv("Directory", dir.display().to_string());
    kv("Guest log", guest_log.display().to_string());
    if let Some(s) = &socket {
        kv("Socket", s.display().to_string());
    }
    print!("{out}");
    println!();
    let mut t = Table::new(&["RUN", "PID", "STATUS", "REASON", "EXIT", "STARTED", "ENDED", "DETAIL"]);
    for r in &runs {
        t.row(vec![
            r.id.to_string(),
            r.pid.to_string(),
            r.status.to_string(),
            r.reason.map(|x| x.to_string()).unwrap_or_else(|| "-".into()),
            match (r.exit_code, r.exit_signal) {
                (Some(c), _) => c.to_string(),
                (None, Some(s)) => format!("signal {s}"),
                _ => "-".into(),
            },
            utc(r.started_at_ms),
            r.terminated_at_ms.map(utc).unwrap_or_else(|| "-".into()),
            r.detail.clone().unwrap_or_default(),
        ]);
    }
    print!("{}", t.render(colour));
    Ok(0)
}

/// The log files of a source, oldest first.
fn log_files(ctx: &Ctx, name: &str, source: LogSource) -> Vec<PathBuf> {
    let dir = ctx.layout.log_dir(name);
    let files: Vec<PathBuf> =
        std::fs::read_dir(&dir).map(|rd| rd.filter_map(Result::ok).map(|e| e.path()).collect()).unwrap_or_default();
    order_logs(files, source)
}

/// Keeps the files of `source` and sorts them oldest first: `NAME.log.N`
/// (size-rotated) are older the higher N is and come before `NAME.log`;
/// dated `runtime.YYYY-MM-DD.log` of older versions sort by date, first.
fn order_logs(mut files: Vec<PathBuf>, source: LogSource) -> Vec<PathBuf> {
    let current = match source {
        LogSource::Runtime => alcove_layout::RUNTIME_LOG,
        LogSource::Guest => alcove_layout::GUEST_LOG,
    };
    let rotation = |f: &str| f.strip_prefix(current)?.strip_prefix('.')?.parse::<u32>().ok();
    files.retain(|p| {
        let f = p.file_name().and_then(|f| f.to_str()).unwrap_or("");
        match source {
            LogSource::Runtime => (f.starts_with("runtime") && f.ends_with(".log")) || rotation(f).is_some(),
            LogSource::Guest => f == current || rotation(f).is_some(),
        }
    });
    files.sort_by_key(|p| {
        let f = p.file_name().and_then(|f| f.to_str()).unwrap_or("").to_string();
        match rotation(&f) {
            Some(n) => (1, u32::MAX - n, f),
            None if f == current => (2, 0, f),
            None => (0, 0, f),
        }
    });
    files
}

/// `alcove logs`.
pub async fn logs(args: LogsArgs) -> CliResult<i32> {
    let ctx = Ctx::open_for(&[&args.name])?;
    ctx.sandbox(&args.name)?;
    let mut files = log_files(&ctx, &args.name, args.source);
    let mut out = std::io::stdout().lock();
    let last = files.pop();
    for f in &files {
        if let Ok(data) = std::fs::read(f) {
            let _ = out.write_all(&data);
        }
    }
    let Some(mut current) = last else {
        if !args.follow {
            return Ok(0);
        }
        // Nothing written yet: follow whatever appears.
        drop(out);
        return follow(&ctx, &args, None, 0).await;
    };
    let mut pos = 0u64;
    if let Ok(mut f) = std::fs::File::open(&current) {
        let mut data = Vec::new();
        let _ = f.read_to_end(&mut data);
        pos = data.len() as u64;
        let _ = out.write_all(&data);
    }
    let _ = out.flush();
    drop(out);
    if !args.follow {
        return Ok(0);
    }
    current = current.clone();
    follow(&ctx, &args, Some(current), pos).await
}

/// Prints what is appended to the newest log file until the sandbox stops.
async fn follow(ctx: &Ctx, args: &LogsArgs, mut current: Option<PathBuf>, mut pos: u64) -> CliResult<i32> {
    let mut idle_rounds_after_stop = 0;
    loop {
        // A rotation (or the first file) moves us to the newest file.
        let newest = log_files(ctx, &args.name, args.source).pop();
        if newest.is_some() && newest != current {
            if let Some(cur) = &current {
                copy_from(cur, &mut pos);
            }
            current = newest;
            pos = 0;
        }
        let grew = match &current {
            Some(cur) => copy_from(cur, &mut pos),
            None => false,
        };
        let running = ctx.running_run(&args.name)?.is_some();
        if !running && !grew {
            idle_rounds_after_stop += 1;
            if idle_rounds_after_stop >= 2 {
                return Ok(0);
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        ctx.reap_one(&args.name)?;
    }
}

/// Copies `path` from `pos` to stdout; true if anything was copied.
fn copy_from(path: &PathBuf, pos: &mut u64) -> bool {
    let Ok(mut f) = std::fs::File::open(path) else { return false };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    if len < *pos {
        // Truncated: start over.
        *pos = 0;
    }
    if len == *pos || f.seek(SeekFrom::Start(*pos)).is_err() {
        return false;
    }
    let mut data = Vec::new();
    let _ = f.read_to_end(&mut data);
    *pos += data.len() as u64;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(&data);
    let _ = out.flush();
    !data.is_empty()
}

/// CPU use between two samples, in percent of one CPU.
fn cpu_percent(newer: &MetricSample, older: &MetricSample) -> Option<f64> {
    let dt_ms = newer.at_ms - older.at_ms;
    if dt_ms <= 0 || newer.cpu_usec < older.cpu_usec {
        return None;
    }
    Some((newer.cpu_usec - older.cpu_usec) as f64 / (dt_ms as f64 * 1000.0) * 100.0)
}

/// `alcove metrics`.
pub fn metrics(args: MetricsArgs) -> CliResult<i32> {
    let ctx = Ctx::open_for(&[&args.name])?;
    let sb = ctx.sandbox(&args.name)?;
    let samples = ctx.store.metrics(&sb.name, 60)?;
    let cpu = match (samples.first(), samples.get(1)) {
        (Some(a), Some(b)) => cpu_percent(a, b),
        _ => None,
    };
    if args.json {
        print_json(&json!({
            "name": sb.name,
            "status": sb.status,
            "cpu_percent": cpu,
            "latest": samples.first(),
            "samples": samples,
        }))?;
        return Ok(0);
    }
    let Some(latest) = samples.first() else {
        println!("no metrics recorded for {} yet", sb.name);
        return Ok(0);
    };
    let mut t = Table::new(&[
        "NAME",
        "STATUS",
        "CPU %",
        "MEMORY",
        "CPU TIME",
        "DISK READ",
        "DISK WRITE",
        "NET RX",
        "NET TX",
        "SAMPLED",
    ]);
    t.row(vec![
        sb.name.clone(),
        sb.status.to_string(),
        cpu.map(|c| format!("{c:.1}")).unwrap_or_else(|| "-".into()),
        human_bytes(latest.memory_bytes),
        format!("{:.2}s", latest.cpu_usec as f64 / 1e6),
        human_bytes(latest.io_read_bytes),
        human_bytes(latest.io_write_bytes),
        human_bytes(latest.net_rx_bytes),
        human_bytes(latest.net_tx_bytes),
        ago(latest.at_ms),
    ]);
    print!("{}", t.render(colour_stdout()));
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(at_ms: i64, cpu_usec: u64) -> MetricSample {
        MetricSample {
            at_ms,
            cpu_usec,
            memory_bytes: 0,
            io_read_bytes: 0,
            io_write_bytes: 0,
            net_rx_bytes: 0,
            net_tx_bytes: 0,
        }
    }

    #[test]
    fn size_rotated_logs_read_oldest_first() {
        let names = |v: Vec<PathBuf>| v.iter().map(|p| p.display().to_string()).collect::<Vec<_>>();
        let files: Vec<PathBuf> = [
            "runtime.log",
            "runtime.log.2",
            "runtime.2024-01-02.log",
            "runtime.log.1",
            "runtime.stderr",
            "guest.log.1",
            "guest.log",
            "guest.log.3",
            "guest.log.tmp",
        ]
        .iter()
        .map(PathBuf::from)
        .collect();
        assert_eq!(
            names(order_logs(files.clone(), LogSource::Runtime)),
            ["runtime.2024-01-02.log", "runtime.log.2", "runtime.log.1", "runtime.log"]
        );
        assert_eq!(names(order_logs(files, LogSource::Guest)), ["guest.log.3", "guest.log.1", "guest.log"]);
    }

    #[test]
    fn cpu_percent_is_cpu_time_over_wall_time() {
        assert_eq!(cpu_percent(&sample(2000, 1_500_000), &sample(1000, 1_000_000)), Some(50.0));
        assert_eq!(cpu_percent(&sample(1000, 1), &sample(1000, 0)), None);
        assert_eq!(cpu_percent(&sample(2000, 0), &sample(1000, 5)), None);
    }
}
