//! The network's command line: `--net`, `--net-rule`, `--dns`, `-p` on
//! `run` and `create`; `alcove net flows NAME`; live changes of a running
//! sandbox (`alcove net policy`, `alcove port add|rm|ls`) through its
//! network control socket ([`crate::net_control`]).
//!
//! Invariants:
//! - Every value is checked by [`crate::net_settings::NetworkSettings::check`]
//!   before the sandbox is recorded: a malformed value is one line, exit
//!   125, nothing created.
//! - A published port that is taken fails `create`/`run` here, before
//!   anything starts (the sandbox process binds it again when its engine
//!   starts).

use super::error::{CliError, CliResult};
use super::output::{colour_stdout, human_bytes, utc, Table};
use super::state::Ctx;
use crate::config::BackendKind;
use crate::net_control::Request;
use crate::net_settings::NetworkSettings;
use clap::{Args, Subcommand};

/// Network options of `run` and `create`.
#[derive(Clone, Debug, Default, Args)]
pub struct NetOpts {
    /// Network: none (loopback only, the default), public, private, host
    /// (the host's loopback as host.alcove.internal) or all.
    #[arg(long = "net", value_name = "PROFILE")]
    pub net: Option<String>,
    /// Ordered rule `allow|deny:DEST[:tcp|udp|icmp][:PORTS]` (DEST: CIDR,
    /// domain, *.suffix, or public, private, loopback, link-local,
    /// metadata, multicast); first match wins.
    #[arg(long = "net-rule", value_name = "RULE")]
    pub net_rule: Vec<String>,
    /// DNS server `IP[:PORT]` the sandbox's resolver forwards to (default:
    /// the host's).
    #[arg(long = "dns", value_name = "IP[:PORT]")]
    pub dns: Vec<String>,
    /// Publish a guest port on the host: `[HOST_IP:]HOST_PORT:GUEST_PORT[/udp]`
    /// (default bind 127.0.0.1).
    #[arg(short = 'p', long = "publish", value_name = "[IP:]HOST:GUEST[/udp]")]
    pub publish: Vec<String>,
    /// A connection the policy denies ends the sandbox (reason
    /// NetworkPolicy) instead of only being refused.
    #[arg(long = "net-deny-ends")]
    pub net_deny_ends: bool,
}

/// `alcove net …`.
#[derive(Debug, Subcommand)]
pub enum NetCommand {
    /// Show a sandbox's recorded network flows, oldest first.
    Flows(FlowsArgs),
    /// Replace a running sandbox's network policy at once; flows it no
    /// longer allows are reset. (The sandbox's next start uses the policy
    /// it was created with.)
    Policy(PolicyArgs),
}

/// `alcove net policy`.
#[derive(Debug, Args)]
pub struct PolicyArgs {
    /// The sandbox.
    #[arg(value_name = "NAME")]
    pub name: String,
    /// The profile (default: the one the sandbox was created with).
    #[arg(long = "net", value_name = "PROFILE")]
    pub net: Option<String>,
    /// The new ordered rules (none given: no rules).
    #[arg(long = "net-rule", value_name = "RULE")]
    pub net_rule: Vec<String>,
}

/// `alcove port …`: published ports of a running sandbox.
#[derive(Debug, Subcommand)]
pub enum PortCommand {
    /// Publish a guest port: `[HOST_IP:]HOST_PORT:GUEST_PORT[/udp]`.
    Add(PortArgs),
    /// Stop publishing a port.
    Rm(PortArgs),
    /// List the published ports.
    Ls(PortLsArgs),
}

/// `alcove port add|rm`.
#[derive(Debug, Args)]
pub struct PortArgs {
    /// The sandbox.
    #[arg(value_name = "NAME")]
    pub name: String,
    /// The mapping.
    #[arg(value_name = "[IP:]HOST:GUEST[/udp]")]
    pub mapping: String,
}

/// `alcove port ls`.
#[derive(Debug, Args)]
pub struct PortLsArgs {
    /// The sandbox.
    #[arg(value_name = "NAME")]
    pub name: String,
}

/// `alcove net flows`.
#[derive(Debug, Args)]
pub struct FlowsArgs {
    /// The sandbox.
    #[arg(value_name = "NAME")]
    pub name: String,
    /// Only flows that were refused.
    #[arg(long)]
    pub denied: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// At most this many (the newest).
    #[arg(long, default_value_t = 1000)]
    pub limit: usize,
}

/// The checked `network` section for a new sandbox.
pub fn settings(opts: &NetOpts, backend: BackendKind) -> CliResult<NetworkSettings> {
    let settings = NetworkSettings {
        profile: opts.net.clone(),
        rules: opts.net_rule.clone(),
        dns: opts.dns.clone(),
        publish: opts.publish.clone(),
        deny_ends_sandbox: opts.net_deny_ends,
        guest_address: None,
    };
    let plan = settings.check().map_err(|e| CliError::msg(e.to_string()))?;
    if let Some(plan) = &plan {
        if backend != BackendKind::Jail {
            return Err(CliError::msg(format!(
                "--net is available with the jail backend only (use --backend jail; this sandbox would use {})",
                format!("{backend:?}").to_lowercase()
            )));
        }
        for mapping in &plan.ports {
            // Bound and released at once: a taken port fails here, before
            // anything is recorded or started.
            alcove_net::ports::BoundPort::bind(*mapping).map_err(|e| CliError::msg(e.to_string()))?;
        }
    }
    Ok(settings.resolved())
}

/// One line for `inspect`: profile, guest address, rules, ports, resolvers.
pub fn describe(network: Option<&serde_json::Value>) -> String {
    let settings: NetworkSettings = network.and_then(|v| serde_json::from_value(v.clone()).ok()).unwrap_or_default();
    if !settings.enabled() {
        return "none (loopback only)".into();
    }
    let mut parts = vec![settings.profile.clone().unwrap_or_else(|| "public".into())];
    if let Some(addr) = settings.guest_address {
        parts.push(format!("address {addr}"));
    }
    if !settings.rules.is_empty() {
        parts.push(format!("rules {}", settings.rules.join(" ")));
    }
    if !settings.publish.is_empty() {
        parts.push(format!("ports {}", settings.publish.join(" ")));
    }
    if !settings.dns.is_empty() {
        parts.push(format!("dns {}", settings.dns.join(" ")));
    }
    parts.join(", ")
}

/// Runs an `alcove net` command.
pub fn command(cmd: NetCommand) -> CliResult<i32> {
    match cmd {
        NetCommand::Flows(args) => flows(args),
        NetCommand::Policy(args) => policy(args),
    }
}

/// Runs an `alcove port` command.
pub fn port(cmd: PortCommand) -> CliResult<i32> {
    let (name, request) = match cmd {
        PortCommand::Add(a) => {
            a.mapping.parse::<alcove_net::PortMapping>().map_err(|e| CliError::msg(e.to_string()))?;
            (a.name, Request::AddPort { mapping: a.mapping })
        }
        PortCommand::Rm(a) => {
            a.mapping.parse::<alcove_net::PortMapping>().map_err(|e| CliError::msg(e.to_string()))?;
            (a.name, Request::RemovePort { mapping: a.mapping })
        }
        PortCommand::Ls(a) => (a.name, Request::ListPorts),
    };
    let answer = live(&name, &request)?;
    for p in answer.ports {
        println!("{p}");
    }
    Ok(0)
}

fn policy(args: PolicyArgs) -> CliResult<i32> {
    let profile = match args.net {
        Some(p) => p,
        None => {
            let ctx = Ctx::open_for(&[&args.name])?;
            let sb = ctx.sandbox(&args.name)?;
            let cfg: serde_json::Value = serde_json::from_str(&sb.config_json).unwrap_or_default();
            cfg["network"]["profile"].as_str().unwrap_or("public").to_string()
        }
    };
    // Checked here too, so a bad rule never needs the sandbox to answer.
    crate::net_control::parse_policy(&profile, &args.net_rule).map_err(|e| CliError::msg(e.to_string()))?;
    let answer = live(&args.name, &Request::SetPolicy { profile, rules: args.net_rule })?;
    println!("{} flow(s) revoked", answer.revoked.unwrap_or(0));
    Ok(0)
}

/// Sends a live request to the running sandbox `name`.
fn live(name: &str, request: &Request) -> CliResult<crate::net_control::Response> {
    let ctx = Ctx::open_for(&[name])?;
    ctx.sandbox(name)?;
    let agent = ctx.socket_path(name)?;
    let answer = crate::net_control::call(&agent, request)
        .map_err(|e| CliError::msg(format!("sandbox {name}: {e} (is it running with --net?)")))?;
    match answer.error {
        Some(e) => Err(CliError::msg(format!("sandbox {name}: {e}"))),
        None => Ok(answer),
    }
}

fn flows(args: FlowsArgs) -> CliResult<i32> {
    let ctx = Ctx::open_for(&[&args.name])?;
    let sb = ctx.sandbox(&args.name)?;
    let rows = ctx.store.flows(&sb.name, args.denied, args.limit)?;
    if args.json {
        let text = serde_json::to_string_pretty(&rows).map_err(|e| CliError::msg(e.to_string()))?;
        println!("{text}");
        return Ok(0);
    }
    let mut t =
        Table::new(&["STARTED", "PROTO", "GUEST", "REMOTE", "NAME", "VERDICT", "BY", "SENT", "RECEIVED", "END"]);
    for r in &rows {
        t.row(vec![
            utc(r.started_at_ms),
            r.protocol.clone(),
            r.guest.clone(),
            r.remote.clone(),
            r.name.clone().unwrap_or_else(|| "-".into()),
            if r.allowed { "allowed" } else { "denied" }.into(),
            r.decided_by.clone(),
            human_bytes(r.bytes_from_guest),
            human_bytes(r.bytes_to_guest),
            r.close.clone(),
        ]);
    }
    print!("{}", t.render(colour_stdout()));
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inspect_describes_the_network_in_one_line() {
        assert_eq!(describe(None), "none (loopback only)");
        let v = serde_json::json!({"profile": "host", "rules": ["deny:a.test"], "publish": ["8080:80"],
            "dns": [], "deny_ends_sandbox": false, "guest_address": "10.0.2.15"});
        assert_eq!(describe(Some(&v)), "host, address 10.0.2.15, rules deny:a.test, ports 8080:80");
    }
}
