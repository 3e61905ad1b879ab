//! Target `config`: the sandbox process's JSON config
//! ([`SandboxConfig::parse`]) and the CLI's specs (clap's `alcove …`
//! command line, `-v HOST:GUEST[:ro]`, `cp` endpoints, durations, `-e K=V`).
//!
//! The JSON is either raw bytes or a valid config with fuzzed mutations at
//! its real keys (and unknown ones), so the validation behind the parser is
//! reached, not only the JSON syntax. Checked:
//! - a config that parses also re-serialises to JSON that parses to the
//!   same value, and its derived values (socket path, guest spec, exit
//!   budget) are computed without panicking; the exit budget's parts fit
//!   inside the policy's budget;
//! - a command line either parses or renders a one-message error; a parsed
//!   `run`/`create` has volumes, durations and env that the later checks
//!   accept or refuse without panicking;
//! - a `cp` endpoint that names a sandbox has an absolute path.

use alcove::cli::args::{parse_env, parse_secs, parse_secs_or_zero, Cli, Command, SandboxOpts};
use alcove::cli::cp::{parse_endpoint, Endpoint};
use alcove::{BackendConfig, Policy, PolicySpec, SandboxConfig};
use alcove_backend::{GuestSpec, MountSpec};
use arbitrary::Arbitrary;
use clap::Parser;
use serde_json::Value;
use std::path::Path;

/// One input.
#[derive(Arbitrary, Debug)]
pub struct ConfigInput {
    json: Json,
    argv: Vec<Arg>,
    spec: String,
}

#[derive(Arbitrary, Debug)]
enum Json {
    Raw(Vec<u8>),
    Mutated(Vec<Mutation>),
}

/// Sets the key at `path` (an index into the base config's keys, or a new
/// key) to `value`, or removes it.
#[derive(Arbitrary, Debug)]
struct Mutation {
    path: u8,
    new_key: Option<String>,
    value: Option<JsonValue>,
}

#[derive(Arbitrary, Debug)]
enum JsonValue {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Str(String),
    Word(Word),
    List(Vec<u16>),
    Empty,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Word {
    Mock,
    Jail,
    Krun,
    Default,
    Root,
    Slash,
    Name,
}

#[derive(Arbitrary, Debug)]
enum Arg {
    Word(ArgWord),
    Free(String),
    Number(i64),
    Seconds(f32),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum ArgWord {
    Run,
    Create,
    Exec,
    Cp,
    Stop,
    Rm,
    Ps,
    Rootfs,
    Import,
    Sandbox,
    Memory,
    Cpus,
    Pids,
    Disk,
    Shm,
    Tmp,
    Env,
    Volume,
    Idle,
    MaxDuration,
    Timeout,
    Backend,
    Workdir,
    User,
    Name,
    Rm2,
    Detach,
    Tty,
    Interactive,
    All,
    Dash,
    DoubleDash,
    Help,
}

impl ArgWord {
    fn text(self) -> &'static str {
        match self {
            ArgWord::Run => "run",
            ArgWord::Create => "create",
            ArgWord::Exec => "exec",
            ArgWord::Cp => "cp",
            ArgWord::Stop => "stop",
            ArgWord::Rm => "rm",
            ArgWord::Ps => "ps",
            ArgWord::Rootfs => "rootfs",
            ArgWord::Import => "import",
            ArgWord::Sandbox => "sandbox",
            ArgWord::Memory => "--memory",
            ArgWord::Cpus => "--cpus",
            ArgWord::Pids => "--pids",
            ArgWord::Disk => "--disk",
            ArgWord::Shm => "--shm-size",
            ArgWord::Tmp => "--tmp-size",
            ArgWord::Env => "-e",
            ArgWord::Volume => "-v",
            ArgWord::Idle => "--idle-timeout",
            ArgWord::MaxDuration => "--max-duration",
            ArgWord::Timeout => "-t",
            ArgWord::Backend => "--backend",
            ArgWord::Workdir => "--workdir",
            ArgWord::User => "--user",
            ArgWord::Name => "--name",
            ArgWord::Rm2 => "--rm",
            ArgWord::Detach => "-d",
            ArgWord::Tty => "--tty",
            ArgWord::Interactive => "-i",
            ArgWord::All => "-a",
            ArgWord::Dash => "-",
            ArgWord::DoubleDash => "--",
            ArgWord::Help => "--help",
        }
    }
}

/// Runs one input.
pub fn fuzz(data: &[u8]) {
    let Some(input) = crate::structured::<ConfigInput>(data) else {
        return;
    };
    check_config_json(&input.json);
    check_command_line(&input.argv);
    check_specs(&input.spec);
}

/// A valid config: what every mutation starts from.
fn base_config() -> Value {
    let cfg = SandboxConfig {
        name: "box1".into(),
        home: "/nonexistent/alcove-fuzz-home".into(),
        backend: BackendConfig::Mock(Default::default()),
        guest: GuestSpec::default(),
        policy: Policy::default(),
        socket_path: None,
        db_path: None,
        parent_pid: None,
        auto_remove: false,
        network: Default::default(),
    };
    serde_json::to_value(&cfg).expect("a config serialises")
}

/// Every key path of `v` (objects only; arrays are leaves).
fn key_paths(v: &Value, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    if let Value::Object(map) = v {
        for (k, child) in map {
            prefix.push(k.clone());
            out.push(prefix.clone());
            key_paths(child, prefix, out);
            prefix.pop();
        }
    }
}

fn json_value(v: &JsonValue) -> Value {
    match v {
        JsonValue::Null => Value::Null,
        JsonValue::Bool(b) => Value::Bool(*b),
        JsonValue::Int(i) => Value::from(*i),
        JsonValue::UInt(u) => Value::from(*u),
        JsonValue::Float(f) => serde_json::Number::from_f64(*f).map(Value::Number).unwrap_or(Value::Null),
        JsonValue::Str(s) => Value::String(s.clone()),
        JsonValue::Word(w) => Value::String(
            match w {
                Word::Mock => "mock",
                Word::Jail => "jail",
                Word::Krun => "krun",
                Word::Default => "default",
                Word::Root => "/",
                Word::Slash => "a/b",
                Word::Name => "box-2",
            }
            .into(),
        ),
        JsonValue::List(l) => Value::from(l.clone()),
        JsonValue::Empty => Value::Object(Default::default()),
    }
}

fn mutated(mutations: &[Mutation]) -> Vec<u8> {
    let mut cfg = base_config();
    for m in mutations {
        let mut paths = Vec::new();
        key_paths(&cfg, &mut Vec::new(), &mut paths);
        let Some(path) = paths.get(usize::from(m.path) % paths.len().max(1)).cloned() else {
            break;
        };
        let (parent_path, key) = match &m.new_key {
            // A new key beside an existing one: unknown fields must be refused.
            Some(k) => (&path[..path.len() - 1], k.clone()),
            None => (&path[..path.len() - 1], path[path.len() - 1].clone()),
        };
        let mut parent = &mut cfg;
        for k in parent_path {
            parent = parent.get_mut(k).expect("the path came from this value");
        }
        let Value::Object(map) = parent else {
            continue;
        };
        match &m.value {
            Some(v) => {
                map.insert(key, json_value(v));
            }
            None => {
                map.remove(&key);
            }
        }
    }
    serde_json::to_vec(&cfg).expect("a value serialises")
}

/// Checks one config; returns whether it parsed.
fn check_config_json(json: &Json) -> bool {
    let text = match json {
        Json::Raw(bytes) => bytes.clone(),
        Json::Mutated(ms) => mutated(ms),
    };
    let Ok(cfg) = SandboxConfig::parse(&text, Path::new("fuzz.json")) else {
        return false;
    };
    let value = serde_json::to_value(&cfg).expect("a parsed config serialises");
    let again = SandboxConfig::parse(&serde_json::to_vec(&value).expect("serialises"), Path::new("again.json"))
        .expect("a config that parsed re-parses from its own serialisation");
    assert_eq!(serde_json::to_value(&again).expect("serialises"), value, "config round trip");
    let _ = cfg.socket_path();
    let spec = cfg.guest_spec();
    assert_eq!(spec.name, cfg.name);
    let budget = cfg.policy.exit_budget();
    assert!(budget.final_write() <= budget.ack_wait(), "the final write outlasts its wait: {budget:?}");
    assert!(budget.ack_wait() <= cfg.policy.exit_budget, "the exit budget's parts exceed it: {budget:?}");
    true
}

fn arg_text(a: &Arg) -> String {
    match a {
        Arg::Word(w) => w.text().to_string(),
        Arg::Free(s) => s.clone(),
        Arg::Number(n) => n.to_string(),
        Arg::Seconds(s) => s.to_string(),
    }
}

fn check_command_line(argv: &[Arg]) {
    let args: Vec<String> = std::iter::once("alcove".to_string()).chain(argv.iter().take(16).map(arg_text)).collect();
    let cli = match Cli::try_parse_from(&args) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.render().to_string();
            return;
        }
    };
    let opts: Option<&SandboxOpts> = match &cli.command {
        Command::Run(a) => Some(&a.opts),
        Command::Create(a) => Some(&a.opts),
        _ => None,
    };
    if let Some(opts) = opts {
        for v in &opts.volume {
            if let Ok(m) = MountSpec::parse(v) {
                assert!(m.guest.starts_with('/') && !m.host.as_os_str().is_empty(), "volume {v:?} parsed to {m:?}");
            }
        }
        let spec =
            PolicySpec { idle_timeout: opts.idle_timeout, max_duration: opts.max_duration, ..PolicySpec::default() };
        let _ = Policy::try_from(spec);
    }
}

fn check_specs(spec: &str) {
    if let Ok(m) = MountSpec::parse(spec) {
        assert!(m.guest.starts_with('/'), "mount {spec:?} has a relative guest path");
    }
    if let Ok(Endpoint::Guest { path, .. }) = parse_endpoint(spec) {
        assert!(path.starts_with('/'), "endpoint {spec:?} has a relative guest path");
    }
    if let Ok(d) = parse_secs(spec) {
        assert!(!d.is_zero());
    }
    let _ = parse_secs_or_zero(spec);
    if let Ok((k, _)) = parse_env(spec) {
        assert!(!k.is_empty() && !k.contains('\0'));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_base_config_parses_and_mutations_reach_validation() {
        assert!(check_config_json(&Json::Mutated(Vec::new())), "the unmutated base config must parse");
        let unknown = Mutation { path: 0, new_key: Some("no_such_field".into()), value: Some(JsonValue::Null) };
        assert!(!check_config_json(&Json::Mutated(vec![unknown])), "unknown fields are refused");
        assert!(!check_config_json(&Json::Raw(b"{".to_vec())));
    }

    #[test]
    fn command_lines_and_specs_are_checked() {
        let argv = [ArgWord::Run, ArgWord::Volume]
            .map(Arg::Word)
            .into_iter()
            .chain([
                Arg::Free("/a:/b:ro".into()),
                Arg::Word(ArgWord::Idle),
                Arg::Seconds(1.5),
                Arg::Free("true".into()),
            ])
            .collect::<Vec<_>>();
        check_command_line(&argv);
        check_specs("box:/etc/passwd");
        check_specs("/a:/b:ro");
        check_specs("1e400");
    }
}
