//! The lifecycle commands: run, create, exec, stop, start, kill, rm, touch,
//! and the hidden supervisor of `run -d`.

use super::args::{CreateArgs, ExecArgs, NamesArgs, RmArgs, RunArgs, SandboxOpts, StopArgs, SuperviseArgs};
use super::error::{CliError, CliResult};
use super::launch::{self, Started};
use super::output::Progress;
use super::session::{run_attached, Attach};
use super::state::{CliMeta, Ctx};
use alcove_client::{Client, ExecOptions};
use alcove_store::{SandboxStatus, TerminationReason};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Grace given to commands when `run` stops its sandbox after the command ended.
const RUN_STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// Creates the sandbox row and starts the sandbox in `process`, a sandbox
/// process the caller spawned first (see [`launch::spawn_pending`]); returns
/// the ready client. Also the embedding API's start ([`crate::embed`]).
pub(crate) async fn create_and_start(
    ctx: &Ctx,
    process: launch::Pending,
    name: &str,
    opts: &SandboxOpts,
    parent_pid: Option<u32>,
    meta: CliMeta,
) -> CliResult<(Client, Started)> {
    // The name was checked before `process` was spawned; the socket path
    // must be usable before anything is created.
    ctx.socket_path(name)?;
    if ctx.store.sandbox(name)?.is_some() {
        return Err(CliError::msg(format!("a sandbox named {name:?} already exists")));
    }
    let (mut cfg, secret_values) = launch::build_config(ctx, name, opts, parent_pid)?;
    // A sandbox removed when its run ends never reuses its writable layer.
    cfg.guest.ephemeral = meta.auto_remove;
    cfg.auto_remove = meta.auto_remove;
    // An attached CLI removes its `--rm` sandbox once it has read the
    // outcome; without one, the sandbox process removes itself.
    let owner =
        if meta.auto_remove && parent_pid.is_some() { crate::liveness::ProcessIdentity::current() } else { None };
    let meta = CliMeta { owner, ..meta };
    let json = serde_json::to_string(&cfg).map_err(|e| CliError::msg(e.to_string()))?;
    crate::kill_point!("cli-before-sandbox-row");
    ctx.store.create_sandbox(name, &json)?;
    crate::kill_point!("cli-after-sandbox-row");
    let meta_remove = meta.auto_remove;
    let result = async {
        ctx.write_meta(name, &meta)?;
        if !secret_values.is_empty() {
            ctx.write_secrets(name, &secret_values)?;
        }
        let mut started = process.configure(ctx, &cfg)?;
        let progress = Progress::start(format!("starting sandbox {name}"));
        let client = launch::wait_ready(ctx, name, &mut started, cfg.policy.ready_timeout).await;
        progress.finish();
        crate::kill_point!("cli-after-ready");
        Ok::<_, CliError>((client?, started))
    }
    .await;
    if let Err(e) = &result {
        // Nothing of it may keep running. A `--rm` sandbox goes; any other
        // is kept with its failed run, as docker keeps a container that
        // failed to start, so `inspect` tells why.
        let _ = launch::kill(ctx, name).await;
        if meta_remove {
            let _ = ctx.remove(name);
        } else {
            let _ = launch::record_failed_start(ctx, name, &e.to_string());
        }
    }
    result
}

fn exec_options(argv: Vec<String>) -> ExecOptions {
    ExecOptions::new(argv)
}

/// `alcove run`.
pub async fn run(args: RunArgs) -> CliResult<i32> {
    let named = args.name.is_some();
    let name = args.name.clone().unwrap_or_else(launch::generated_name);
    alcove_client::paths::validate_name(&name)?;
    // Loads while this process opens the records and prepares the sandbox.
    let process = launch::spawn_pending()?;
    let ctx = Ctx::open_for(&[&name])?;
    if args.detach {
        if args.interactive || args.tty {
            return Err(CliError::msg("-d cannot be combined with -i or -t"));
        }
        let meta = CliMeta {
            auto_remove: args.opts.rm,
            rootfs: args.opts.rootfs.clone(),
            backend_requested: format!("{:?}", args.opts.backend).to_lowercase(),
            detached_command: Some(args.command.clone()),
            owner: None,
        };
        let (_client, _started) = create_and_start(&ctx, process, &name, &args.opts, None, meta).await?;
        spawn_supervisor(&ctx, &name)?;
        println!("{name}");
        return Ok(0);
    }
    let remove_after = !named || args.opts.rm;
    let meta = CliMeta {
        auto_remove: remove_after,
        rootfs: args.opts.rootfs.clone(),
        backend_requested: format!("{:?}", args.opts.backend).to_lowercase(),
        detached_command: None,
        owner: None,
    };
    let (client, mut started) =
        create_and_start(&ctx, process, &name, &args.opts, Some(std::process::id()), meta).await?;
    let attach = Attach { stdin: args.interactive, tty: args.tty, output: None };
    let result = run_attached(&client, exec_options(args.command), attach).await;
    let command = result.as_ref().ok().and_then(|end| end.status);
    let (last, ours) = finish_run(&ctx, &name, client, &mut started, remove_after, command).await?;
    if let (Ok(_), Some(run)) = (&result, &last) {
        // The sandbox ended on its own (a policy, a crash) rather than by our stop: say why.
        if !ours {
            let reason = run.reason.map(|r| r.to_string()).unwrap_or_default();
            let detail = run.detail.as_deref().map(|d| format!(" ({d})")).unwrap_or_default();
            super::output::error_line(&format!(
                "sandbox {name} stopped while the command was running: {reason}{detail}"
            ));
        }
    }
    result.map(|end| end.code).map_err(|e| explain_lost(e, &name, last.as_ref()))
}

/// A lost connection during a command usually means the sandbox ended
/// (a timeout, a crash, `alcove stop`): say so, with the recorded reason.
fn explain_lost(e: CliError, name: &str, last: Option<&alcove_store::RunRecord>) -> CliError {
    let lost = matches!(&e, CliError::Failed(m) if m.contains("connection to the sandbox was lost") || m.contains("aborted the session"));
    match last {
        Some(run) if lost && run.status == alcove_store::RunStatus::Terminated => {
            let reason = run.reason.map(|r| r.to_string()).unwrap_or_else(|| "unknown reason".into());
            let detail = run.detail.as_deref().map(|d| format!(" ({d})")).unwrap_or_default();
            CliError::msg(format!("sandbox {name} stopped while the command was running: {reason}{detail}"))
        }
        _ => e,
    }
}

/// Stops the sandbox after an attached run, records on a kept sandbox's run
/// how its `command` ended, and removes the sandbox if asked; returns the
/// final run record, and whether the run ended by this stop.
async fn finish_run(
    ctx: &Ctx,
    name: &str,
    client: Client,
    started: &mut Started,
    remove: bool,
    command: Option<alcove_client::ExitStatus>,
) -> CliResult<(Option<alcove_store::RunRecord>, bool)> {
    let grace = u32::try_from(RUN_STOP_TIMEOUT.as_millis()).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(RUN_STOP_TIMEOUT + Duration::from_secs(2), client.shutdown(grace)).await;
    drop(client);
    // The sandbox process is our child and exits once its run is final (or
    // its exit budget is spent): the commands' grace, the drain, then the
    // budget. Wait for that rather than poll the store.
    let exit_wait = RUN_STOP_TIMEOUT + started.policy.drain_timeout + started.policy.exit_budget;
    started.wait_exit(exit_wait).await;
    if !launch::wait_final_async(ctx, name, Duration::from_secs(1)).await? {
        launch::kill(ctx, name).await?;
    }
    let _ = started.child.wait();
    let mut last = ctx.store.latest_run(name).ok().flatten();
    let ours = last.as_ref().is_some_and(|r| matches!(r.reason, None | Some(TerminationReason::ShutdownRequested)));
    if remove {
        ctx.remove(name)?;
    } else if let (Some(run), Some(status), true) = (&last, command, ours) {
        record_command_end(ctx, run.id, status)?;
        last = ctx.store.latest_run(name).ok().flatten();
    }
    Ok((last, ours))
}

/// Records on `run` (ended by the CLI's stop after its command) how the
/// command ended: the sandbox's run is its command's run.
fn record_command_end(ctx: &Ctx, run: alcove_store::RunId, status: alcove_client::ExitStatus) -> CliResult<()> {
    let detail = match (status.code, status.signal) {
        (Some(c), _) => format!("the command exited with code {c}; the sandbox was then stopped"),
        (None, Some(s)) => format!("the command was killed by signal {s}; the sandbox was then stopped"),
        (None, None) => "the command ended without a status; the sandbox was then stopped".to_string(),
    };
    ctx.store.record_command_end(run, status.code, status.signal, &detail)?;
    Ok(())
}

/// Starts `alcove __supervise NAME` in its own session, detached.
fn spawn_supervisor(ctx: &Ctx, name: &str) -> CliResult<()> {
    let exe = std::env::current_exe().map_err(|e| CliError::msg(format!("cannot find the alcove executable: {e}")))?;
    let log = ctx.layout.log_file(name, "supervisor.err");
    let err = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&log)
        .map_err(|e| CliError::msg(format!("cannot open {}: {e}", log.display())))?;
    let mut cmd = Command::new(exe);
    cmd.arg("__supervise").arg(name).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::from(err));
    // SAFETY: setsid is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    cmd.spawn().map_err(|e| CliError::msg(format!("cannot start the supervisor of {name}: {e}")))?;
    Ok(())
}

/// `alcove __supervise NAME`: runs the detached command of `run -d` with its
/// output in `logs/command.log`, then stops the sandbox (and removes it with
/// `--rm`), as docker stops a container whose command ended.
pub async fn supervise(args: SuperviseArgs) -> CliResult<i32> {
    let ctx = Ctx::open_quiet()?;
    let meta = ctx.meta(&args.name);
    let Some(argv) = meta.detached_command.clone() else {
        return Err(CliError::msg(format!("sandbox {} has no detached command", args.name)));
    };
    let log_path = ctx.layout.log_file(&args.name, "command.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&log_path)
        .map_err(|e| CliError::msg(format!("cannot open {}: {e}", log_path.display())))?;
    let client = launch::connect(&ctx, &args.name).await?;
    let attach = Attach { stdin: false, tty: false, output: Some(log) };
    let (code, status) = match run_attached(&client, exec_options(argv), attach).await {
        Ok(end) => (end.code, end.status),
        Err(e) => (e.exit_code(), None),
    };
    if let Ok(mut f) = std::fs::OpenOptions::new().append(true).open(&log_path) {
        use std::io::Write;
        let _ = writeln!(f, "[alcove] the command exited with code {code}");
    }
    drop(client);
    launch::stop(&ctx, &args.name, RUN_STOP_TIMEOUT).await?;
    if meta.auto_remove {
        ctx.remove(&args.name)?;
    } else if let (Some(status), Ok(Some(run))) = (status, ctx.store.latest_run(&args.name)) {
        record_command_end(&ctx, run.id, status)?;
    }
    Ok(code)
}

/// `alcove create NAME`.
pub async fn create(args: CreateArgs) -> CliResult<i32> {
    alcove_client::paths::validate_name(&args.name)?;
    let process = launch::spawn_pending()?;
    let ctx = Ctx::open_for(&[&args.name])?;
    let opts = args.opts;
    let meta = CliMeta {
        auto_remove: opts.rm,
        rootfs: opts.rootfs.clone(),
        backend_requested: format!("{:?}", opts.backend).to_lowercase(),
        detached_command: None,
        owner: None,
    };
    let (_client, _started) = create_and_start(&ctx, process, &args.name, &opts, None, meta).await?;
    println!("{}", args.name);
    Ok(0)
}

/// `alcove exec`.
pub async fn exec(args: ExecArgs) -> CliResult<i32> {
    // A sandbox that answers on its socket is running (its relay hands out
    // the handshake only once Running is recorded): the records are needed
    // only to explain why one does not answer, so they are not opened first.
    let (client, ctx) = match Client::connect(&args.name).await {
        Ok(client) => (client, None),
        Err(_) => {
            let ctx = Ctx::open_for(&[&args.name])?;
            (launch::connect(&ctx, &args.name).await?, Some(ctx))
        }
    };
    let mut opts = exec_options(args.command);
    opts.env = args.env;
    opts.cwd = args.workdir;
    opts.user = args.user;
    opts.timeout = args.timeout;
    let attach = Attach { stdin: args.interactive, tty: args.tty, output: None };
    match run_attached(&client, opts, attach).await.map(|end| end.code) {
        Err(CliError::Failed(m)) if args.timeout.is_some() && m.contains("did not finish within") => {
            super::output::error_line(&m);
            Ok(128 + libc::SIGKILL)
        }
        Err(e) => {
            drop(client);
            let ctx = match ctx {
                Some(ctx) => ctx,
                None => Ctx::open_for(&[&args.name])?,
            };
            let _ = launch::wait_final_async(&ctx, &args.name, Duration::from_secs(3)).await;
            let last = ctx.store.latest_run(&args.name).ok().flatten();
            Err(explain_lost(e, &args.name, last.as_ref()))
        }
        ok => ok,
    }
}

/// Runs `f` for each name, reporting each failure on its own line; exit 125
/// if any failed.
async fn for_each<F, Fut>(names: &[String], mut f: F) -> CliResult<i32>
where
    F: FnMut(String) -> Fut,
    Fut: std::future::Future<Output = CliResult<()>>,
{
    let mut failed = false;
    for name in names {
        match f(name.clone()).await {
            Ok(()) => println!("{name}"),
            Err(e) => {
                super::output::error_line(&e.to_string());
                failed = true;
            }
        }
    }
    Ok(if failed { super::error::EXIT_ALCOVE } else { 0 })
}

/// `alcove stop`.
pub async fn stop(args: StopArgs) -> CliResult<i32> {
    let ctx = Ctx::open_for(&args.names)?;
    let ctx = &ctx;
    for_each(&args.names, |name| async move {
        ctx.sandbox(&name)?;
        launch::stop(ctx, &name, args.timeout).await?;
        if ctx.meta(&name).auto_remove {
            ctx.remove(&name)?;
        }
        Ok(())
    })
    .await
}

/// `alcove start`.
pub async fn start(args: NamesArgs) -> CliResult<i32> {
    let ctx = Ctx::open_for(&args.names)?;
    let ctx = &ctx;
    for_each(&args.names, |name| async move {
        let sb = ctx.sandbox(&name)?;
        if launch::is_running(ctx, &name)? {
            return Ok(());
        }
        // The row holds the same configuration as config.json, which a CLI
        // killed right after writing the row never wrote.
        let mut cfg = if launch::has_config(ctx, &name) {
            ctx.load_config(&name)?
        } else {
            crate::config::SandboxConfig::parse(sb.config_json.as_bytes(), std::path::Path::new("the sandbox record"))
                .map_err(|e| {
                CliError::msg(format!(
                    "sandbox {name} has no usable configuration ({e}); remove it and create it again"
                ))
            })?
        };
        // A restarted sandbox lives on its own, whoever started it first.
        cfg.parent_pid = None;
        let mut started = launch::spawn(ctx, &cfg)?;
        let progress = Progress::start(format!("starting sandbox {name}"));
        let ready = launch::wait_ready(ctx, &name, &mut started, cfg.policy.ready_timeout).await;
        progress.finish();
        ready.map(drop)
    })
    .await
}

/// `alcove kill`.
pub async fn kill(args: NamesArgs) -> CliResult<i32> {
    let ctx = Ctx::open_for(&args.names)?;
    let ctx = &ctx;
    for_each(&args.names, |name| async move {
        ctx.sandbox(&name)?;
        if !launch::kill(ctx, &name).await? {
            return Err(CliError::msg(format!("sandbox {name} is not running")));
        }
        if ctx.meta(&name).auto_remove {
            ctx.remove(&name)?;
        }
        Ok(())
    })
    .await
}

/// `alcove rm`.
pub async fn rm(args: RmArgs) -> CliResult<i32> {
    let ctx = Ctx::open_for(&args.names)?;
    let ctx = &ctx;
    for_each(&args.names, |name| async move {
        ctx.sandbox(&name)?;
        if launch::is_running(ctx, &name)? {
            if !args.force {
                return Err(CliError::msg(format!(
                    "sandbox {name} is running; stop it first or use `alcove rm -f {name}`"
                )));
            }
            launch::kill(ctx, &name).await?;
        }
        ctx.remove(&name)
    })
    .await
}

/// `alcove pause` (`paused`) and `alcove resume`: the sandbox process
/// freezes or thaws its guest and records it (Lifecycle decides; a
/// refusal comes back as its one line).
pub async fn pause(args: NamesArgs, paused: bool) -> CliResult<i32> {
    let ctx = Ctx::open_for(&args.names)?;
    let ctx = &ctx;
    let verb = if paused { "pause" } else { "resume" };
    for_each(&args.names, |name| async move {
        let sb = ctx.sandbox(&name)?;
        if !matches!(sb.status, SandboxStatus::Running | SandboxStatus::Paused) {
            let status = sb.status.as_str().to_lowercase();
            return Err(CliError::msg(format!("cannot {verb} sandbox {name}: it is {status}, not running")));
        }
        let client = launch::connect(ctx, &name).await?;
        let done = if paused { client.pause().await } else { client.resume().await };
        done.map_err(|e| CliError::msg(format!("cannot {verb} sandbox {name}: {e}")))
    })
    .await
}

/// `alcove touch`.
pub async fn touch(args: NamesArgs) -> CliResult<i32> {
    let ctx = Ctx::open_for(&args.names)?;
    let ctx = &ctx;
    for_each(&args.names, |name| async move {
        let client = launch::connect(ctx, &name).await?;
        client.touch()?;
        // A round trip makes sure the touch was read before the connection closes.
        client.stat("/").await?;
        Ok(())
    })
    .await
}
