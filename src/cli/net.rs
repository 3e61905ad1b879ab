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
    /// A secret the guest can use but never read: `NAME=SOURCE@HOST[,HOST...]`
    /// (SOURCE: env:VAR, file:PATH or a literal; HOST: a name or *.suffix).
    /// The guest's NAME holds a placeholder, replaced by the value in HTTPS
    /// requests to the hosts.
    #[arg(long = "secret", value_name = "NAME=SOURCE@HOSTS")]
    pub secret: Vec<String>,
    /// Verify the upstream servers of intercepted connections against the
    /// PEM certificates in FILE instead of the host's trust store.
    #[arg(long = "tls-upstream-ca", value_name = "FILE")]
    pub tls_upstream_ca: Option<std::path::PathBuf>,
    /// A destination port whose TLS to a secret's hosts is intercepted
    /// (default 443; repeatable).
    #[arg(long = "tls-intercept-port", value_name = "PORT")]
    pub tls_intercept_port: Vec<u16>,
    /// What a secret's placeholder sent where it does not belong does:
    /// block the connection, or also terminate the sandbox (NetworkPolicy).
    #[arg(long = "on-secret-violation", value_enum, default_value = "block")]
    pub on_secret_violation: SecretViolationArg,
}

/// `--on-secret-violation`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum SecretViolationArg {
    /// Refuse the connection (recorded with verdict secret_violation).
    #[default]
    Block,
    /// Refuse it and end the sandbox with reason NetworkPolicy.
    Terminate,
}

/// `alcove net …`.
#[derive(Debug, Subcommand)]
pub enum NetCommand {
    /// Show a sandbox's recorded network flows, oldest first.
    Flows(FlowsArgs),
    /// Replace a running sandbox's network policy at once; flows it no
    /// longer allows are reset. The sandbox's next start keeps it.
    Policy(PolicyArgs),
}

/// `alcove net policy`.
#[derive(Debug, Args)]
pub struct PolicyArgs {
    /// The sandbox.
    #[arg(value_name = "NAME")]
    pub name: String,
    /// The profile (default: the sandbox's current one).
    #[arg(long = "net", value_name = "PROFILE")]
    pub net: Option<String>,
    /// The new ordered rules (none given: no rules).
    #[arg(long = "net-rule", value_name = "RULE")]
    pub net_rule: Vec<String>,
}

/// `alcove secret …`: secrets of a running sandbox.
#[derive(Debug, Subcommand)]
pub enum SecretCommand {
    /// Replace a secret's value on a running sandbox (`NAME=SOURCE`, SOURCE:
    /// env:VAR, file:PATH or a literal); new requests use it at once, and
    /// so does the sandbox's next start.
    Set(SecretSetArgs),
}

/// `alcove secret set`.
#[derive(Debug, Args)]
pub struct SecretSetArgs {
    /// The sandbox.
    #[arg(value_name = "SANDBOX")]
    pub name: String,
    /// `NAME=SOURCE`.
    #[arg(value_name = "NAME=SOURCE")]
    pub secret: String,
}

/// Runs an `alcove secret` command.
pub fn secret(cmd: SecretCommand) -> CliResult<i32> {
    let SecretCommand::Set(args) = cmd;
    let (name, value) = crate::secrets::parse_rotation(&args.secret).map_err(|e| CliError::msg(e.to_string()))?;
    let ctx = Ctx::open_for(&[&args.name])?;
    let sb = ctx.sandbox(&args.name)?;
    let cfg: serde_json::Value = serde_json::from_str(&sb.config_json).unwrap_or_default();
    let known = cfg["network"]["secrets"].as_array().is_some_and(|s| s.iter().any(|s| s["name"] == name.as_str()));
    if !known {
        return Err(CliError::msg(format!("sandbox {}: no secret named {name:?}", args.name)));
    }
    let request = Request::SetSecret { name: name.clone(), value: crate::net_control::RedactedValue(value.clone()) };
    live(&args.name, &request)?;
    // The next start reads the values again.
    let dir = ctx.sandbox_dir(&args.name);
    let mut values = crate::secrets::read_values(&dir).unwrap_or_default();
    values.insert(name, value);
    ctx.write_secrets(&args.name, &values)?;
    Ok(0)
}

/// `alcove port …`: published ports of a running sandbox.
#[derive(Debug, Subcommand)]
pub enum PortCommand {
    /// Publish a guest port: `[HOST_IP:]HOST_PORT:GUEST_PORT[/udp]`; the
    /// sandbox's next start publishes it too.
    Add(PortArgs),
    /// Stop publishing a port, now and at the sandbox's next start.
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

/// The checked `network` section for a new sandbox, and its secrets'
/// values (kept apart from it, see [`crate::secrets`]).
pub fn settings(opts: &NetOpts, backend: BackendKind) -> CliResult<(NetworkSettings, crate::secrets::SecretValues)> {
    let (secrets, values) = crate::secrets::parse_all(&opts.secret).map_err(|e| CliError::msg(e.to_string()))?;
    let tls_upstream_ca = match &opts.tls_upstream_ca {
        Some(path) => {
            crate::secrets::read_upstream_ca(path).map_err(|e| CliError::msg(e.to_string()))?;
            let absolute = std::fs::canonicalize(path)
                .map_err(|e| CliError::msg(format!("--tls-upstream-ca {}: {e}", path.display())))?;
            Some(absolute)
        }
        None => None,
    };
    let settings = NetworkSettings {
        profile: opts.net.clone(),
        rules: opts.net_rule.clone(),
        dns: opts.dns.clone(),
        publish: opts.publish.clone(),
        deny_ends_sandbox: opts.net_deny_ends,
        guest_address: None,
        secrets,
        tls_upstream_ca,
        intercept_ports: opts.tls_intercept_port.clone(),
        secret_violation_ends: opts.on_secret_violation == SecretViolationArg::Terminate,
    };
    let plan = settings.check_for(backend).map_err(|e| CliError::msg(e.to_string()))?;
    if let Some(plan) = &plan {
        for mapping in &plan.ports {
            // Bound and released at once: a taken port fails here, before
            // anything is recorded or started.
            alcove_net::ports::BoundPort::bind(*mapping).map_err(|e| CliError::msg(e.to_string()))?;
        }
    }
    Ok((settings.resolved(), values))
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
    if !settings.secrets.is_empty() {
        // Names and hosts; never values.
        let secrets: Vec<String> =
            settings.secrets.iter().map(|s| format!("{} ({})", s.name, s.hosts.join(" "))).collect();
        parts.push(format!("secrets {}", secrets.join(" ")));
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
            if r.close.starts_with(crate::actors::network::SECRET_VIOLATION) {
                crate::actors::network::SECRET_VIOLATION
            } else if r.allowed {
                "allowed"
            } else {
                "denied"
            }
            .into(),
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
