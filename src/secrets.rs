//! A sandbox's secrets outside the engine: `--secret NAME=SOURCE@HOSTS`
//! parsed and read by the CLI, their values kept apart from the
//! configuration, and what the sandbox process prepares at each start (the
//! per-sandbox CA's files in the guest, the guest's environment, the
//! engine's [`SecretsConfig`]).
//!
//! Invariants:
//! - A value lives in memory (the CLI while it creates, the sandbox process
//!   while it runs) and in `sandboxes/NAME/secrets.json` (0600, for a later
//!   `alcove start`), never in the configuration: not in `config.json`, the
//!   records (`inspect`, `ps --json`), the stdin configuration or argv.
//!   The configuration keeps each secret's name, hosts, placeholder and
//!   where its value came from (`env:VAR`, `file:PATH` or `literal`).
//! - A placeholder is 32 random hex digits after `alcoveph`, made once per
//!   sandbox and secret: it says nothing of the value.
//! - Every bad `--secret` is one line naming the secret, before anything is
//!   recorded.
//! - The CA is made again at every start of the sandbox process; its key
//!   never leaves that process. The guest gets its certificate (and a bundle
//!   of it with the rootfs's own CAs) through a read-only bind mount of
//!   `sandboxes/NAME/tls` at [`GUEST_TLS_DIR`]; the base rootfs is not touched.

use crate::net_settings::SecretSetting;
use alcove_net::secrets::{HostPattern, Secret, Secrets};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where the guest finds the sandbox CA (`ca.pem`) and the bundle
/// (`bundle.pem`: the CA and the rootfs's CAs).
pub const GUEST_TLS_DIR: &str = "/etc/alcove/tls";

/// The guest's trust variables and the file each names.
pub const TRUST_ENV: [(&str, &str); 4] = [
    ("SSL_CERT_FILE", "bundle.pem"),
    ("REQUESTS_CA_BUNDLE", "bundle.pem"),
    ("CURL_CA_BUNDLE", "bundle.pem"),
    ("NODE_EXTRA_CA_CERTS", "ca.pem"),
];

/// The rootfs's CA bundle, when it has one, goes into the guest's bundle.
const ROOTFS_BUNDLE: &str = "etc/ssl/certs/ca-certificates.crt";

/// Secret values by name (as written to `secrets.json`).
pub type SecretValues = BTreeMap<String, String>;

/// Why a `--secret` was refused: one line.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// Not `NAME=SOURCE@HOSTS`.
    #[error("--secret: expected NAME=SOURCE@HOST[,HOST...] (SOURCE: env:VAR, file:PATH or a literal value)")]
    Shape,
    /// A name that is not an environment variable name.
    #[error("--secret {0}: the name must be an environment variable name ([A-Za-z_][A-Za-z0-9_]*)")]
    Name(String),
    /// No host after `@`.
    #[error("--secret {0}: no hosts (NAME=SOURCE@HOST[,HOST...])")]
    NoHosts(String),
    /// A host that is not a name or `*.suffix`.
    #[error("--secret {0}: {1}")]
    Host(String, alcove_net::secrets::HostPatternError),
    /// `env:VAR` with VAR unset.
    #[error("--secret {0}: environment variable {1} is not set")]
    Env(String, String),
    /// `file:PATH` that cannot be read.
    #[error("--secret {0}: cannot read {1}: {2}")]
    File(String, String, String),
    /// An empty value.
    #[error("--secret {0}: the value is empty")]
    Empty(String),
    /// The same name twice.
    #[error("--secret {0} is given twice")]
    Twice(String),
    /// An `--tls-upstream-ca` file that is not PEM certificates.
    #[error("--tls-upstream-ca {0}: {1}")]
    UpstreamCa(String, String),
}

/// A `--secret` as given: its setting (kept in the configuration) and value.
pub struct ParsedSecret {
    /// What the configuration keeps.
    pub setting: SecretSetting,
    /// The value.
    pub value: String,
}

impl std::fmt::Debug for ParsedSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the value.
        f.debug_struct("ParsedSecret").field("setting", &self.setting).finish_non_exhaustive()
    }
}

/// Where a value comes from.
fn read_source(name: &str, source: &str) -> Result<(String, String), SecretError> {
    let (described, value) = if let Some(var) = source.strip_prefix("env:") {
        let value = std::env::var(var).map_err(|_| SecretError::Env(name.into(), var.into()))?;
        (source.to_string(), value)
    } else if let Some(path) = source.strip_prefix("file:") {
        let text = std::fs::read(path).map_err(|e| SecretError::File(name.into(), path.into(), e.to_string()))?;
        let text = String::from_utf8(text)
            .map_err(|_| SecretError::File(name.into(), path.into(), "not UTF-8 text".into()))?;
        // A key file's final line break is not part of the key.
        let value = text.strip_suffix('\n').map(|t| t.strip_suffix('\r').unwrap_or(t)).unwrap_or(&text).to_string();
        (source.to_string(), value)
    } else {
        ("literal".to_string(), source.to_string())
    };
    if value.is_empty() {
        return Err(SecretError::Empty(name.into()));
    }
    Ok((described, value))
}

fn valid_env_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Parses `NAME=SOURCE@HOSTS` and reads the value.
pub fn parse_secret(text: &str) -> Result<ParsedSecret, SecretError> {
    let (name, rest) = text.split_once('=').ok_or(SecretError::Shape)?;
    if !valid_env_name(name) {
        return Err(SecretError::Name(name.into()));
    }
    let (source, hosts) = rest.rsplit_once('@').ok_or_else(|| SecretError::NoHosts(name.into()))?;
    let hosts: Vec<&str> = hosts.split(',').map(str::trim).filter(|h| !h.is_empty()).collect();
    if hosts.is_empty() {
        return Err(SecretError::NoHosts(name.into()));
    }
    let patterns = hosts
        .iter()
        .map(|h| h.parse::<HostPattern>().map_err(|e| SecretError::Host(name.into(), e)))
        .collect::<Result<Vec<_>, _>>()?;
    let (described, value) = read_source(name, source)?;
    Ok(ParsedSecret {
        setting: SecretSetting {
            name: name.into(),
            hosts: patterns.iter().map(ToString::to_string).collect(),
            source: described,
            placeholder: placeholder(),
        },
        value,
    })
}

/// A new placeholder: `alcoveph` and 32 random hex digits.
pub fn placeholder() -> String {
    let mut bytes = [0u8; 16];
    let read = std::fs::File::open("/dev/urandom").and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes));
    if read.is_err() {
        // getrandom(2) directly: /dev may be missing in a minimal chroot.
        // SAFETY: the buffer is 16 writable bytes.
        let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
        assert_eq!(n, 16, "no randomness for a secret placeholder");
    }
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("alcoveph{hex}")
}

/// Parses `NAME=SOURCE` (`alcove secret set`) and reads the value.
pub fn parse_rotation(text: &str) -> Result<(String, String), SecretError> {
    let (name, source) = text.split_once('=').ok_or(SecretError::Shape)?;
    if !valid_env_name(name) {
        return Err(SecretError::Name(name.into()));
    }
    let (_, value) = read_source(name, source)?;
    Ok((name.to_string(), value))
}

/// Parses every `--secret` (names unique).
pub fn parse_all(args: &[String]) -> Result<(Vec<SecretSetting>, SecretValues), SecretError> {
    let mut settings = Vec::new();
    let mut values = SecretValues::new();
    for arg in args {
        let parsed = parse_secret(arg)?;
        if values.insert(parsed.setting.name.clone(), parsed.value).is_some() {
            return Err(SecretError::Twice(parsed.setting.name));
        }
        settings.push(parsed.setting);
    }
    Ok((settings, values))
}

/// Reads and checks an `--tls-upstream-ca` file.
pub fn read_upstream_ca(path: &Path) -> Result<Vec<alcove_net::secrets::CertificateDer<'static>>, SecretError> {
    let shown = path.display().to_string();
    let pem = std::fs::read(path).map_err(|e| SecretError::UpstreamCa(shown.clone(), e.to_string()))?;
    alcove_net::secrets::parse_pem_certs(&pem).map_err(|e| SecretError::UpstreamCa(shown, e))
}

/// `sandboxes/NAME/secrets.json`.
pub fn values_path(sandbox_dir: &Path) -> PathBuf {
    sandbox_dir.join("secrets.json")
}

/// Writes the values (0600, replaced atomically).
pub fn write_values(sandbox_dir: &Path, values: &SecretValues) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = values_path(sandbox_dir);
    let tmp = path.with_extension("json.tmp");
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
    file.write_all(&serde_json::to_vec(values).map_err(std::io::Error::other)?)?;
    file.sync_all()?;
    std::fs::rename(&tmp, &path)
}

/// Reads the values.
pub fn read_values(sandbox_dir: &Path) -> Result<SecretValues, String> {
    let path = values_path(sandbox_dir);
    let text = std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    serde_json::from_slice(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// The engine's secrets from the settings and values.
pub fn engine_secrets(settings: &[SecretSetting], values: &SecretValues) -> Result<Secrets, String> {
    let mut secrets = Vec::new();
    for s in settings {
        let value = values.get(&s.name).ok_or_else(|| format!("secret {} has no value (secrets.json)", s.name))?;
        let hosts = s.hosts.iter().map(|h| h.parse::<HostPattern>()).collect::<Result<Vec<_>, _>>();
        secrets.push(Secret {
            name: s.name.clone(),
            placeholder: s.placeholder.clone(),
            hosts: hosts.map_err(|e| e.to_string())?,
            value: Arc::new(value.clone().into_bytes()),
        });
    }
    Ok(Secrets::new(secrets))
}

/// Writes the CA's files into `tls_dir` (made 0755; the files 0644: they
/// are public) for the guest: `ca.pem`, and `bundle.pem` with the rootfs's
/// own CAs after it.
pub fn write_guest_trust(tls_dir: &Path, ca_pem: &str, rootfs: Option<&Path>) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(tls_dir)?;
    std::fs::set_permissions(tls_dir, std::fs::Permissions::from_mode(0o755))?;
    let mut bundle = ca_pem.to_string();
    if let Some(existing) = rootfs.and_then(|r| std::fs::read_to_string(r.join(ROOTFS_BUNDLE)).ok()) {
        bundle.push('\n');
        bundle.push_str(&existing);
    }
    for (file, text) in [("ca.pem", ca_pem), ("bundle.pem", bundle.as_str())] {
        let path = tls_dir.join(file);
        std::fs::write(&path, text)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))?;
    }
    Ok(())
}

/// At the sandbox process's start: reads the values, makes the CA, writes
/// its files for the guest and adds to `spec` the read-only mount of them,
/// the trust variables (unless the command line set them) and each
/// secret's placeholder; fills in `plan.secrets`. Nothing for a sandbox
/// without secrets.
pub fn prepare(
    cfg: &crate::config::SandboxConfig,
    plan: &mut crate::net_settings::NetworkPlan,
    spec: &mut alcove_backend::GuestSpec,
) -> Result<(), String> {
    let settings = &cfg.network;
    if settings.secrets.is_empty() {
        return Ok(());
    }
    let dir = cfg.layout().sandbox_dir(&cfg.name);
    let values = read_values(&dir)?;
    let secrets = engine_secrets(&settings.secrets, &values)?;
    let ca = alcove_net::secrets::ca::SandboxCa::generate(std::time::SystemTime::now()).map_err(|e| e.to_string())?;
    let tls_dir = dir.join("tls");
    write_guest_trust(&tls_dir, ca.cert_pem(), spec.rootfs.as_deref())
        .map_err(|e| format!("cannot write the sandbox CA to {}: {e}", tls_dir.display()))?;
    spec.mounts.push(alcove_backend::MountSpec { host: tls_dir, guest: GUEST_TLS_DIR.into(), readonly: true });
    for (var, file) in TRUST_ENV {
        if !spec.env.iter().any(|(k, _)| k == var) {
            spec.env.push((var.into(), format!("{GUEST_TLS_DIR}/{file}")));
        }
    }
    for s in &settings.secrets {
        spec.env.retain(|(k, _)| *k != s.name);
        spec.env.push((s.name.clone(), s.placeholder.clone()));
    }
    let upstream = match &settings.tls_upstream_ca {
        Some(path) => alcove_net::secrets::UpstreamTrust::only(read_upstream_ca(path).map_err(|e| e.to_string())?),
        None => alcove_net::secrets::UpstreamTrust::native(),
    };
    let ports = if settings.intercept_ports.is_empty() { vec![443] } else { settings.intercept_ports.clone() };
    plan.secrets = Some(crate::net_settings::SecretsPlan {
        config: alcove_net::secrets::SecretsConfig { secrets, ca: Arc::new(ca), upstream: Arc::new(upstream), ports },
        violation_ends: settings.secret_violation_ends,
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_parses_from_each_source() {
        std::env::set_var("ALCOVE_TEST_SECRET_SRC", "from-env");
        let p = parse_secret("KEY=env:ALCOVE_TEST_SECRET_SRC@api.test,*.svc.test").unwrap();
        assert_eq!(p.value, "from-env");
        assert_eq!(p.setting.hosts, ["api.test", "*.svc.test"]);
        assert_eq!(p.setting.source, "env:ALCOVE_TEST_SECRET_SRC");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("key");
        std::fs::write(&file, "from-file\n").unwrap();
        let p = parse_secret(&format!("KEY=file:{}@api.test", file.display())).unwrap();
        assert_eq!(p.value, "from-file");
        let p = parse_secret("KEY=user@pass@api.test").unwrap();
        assert_eq!((p.value.as_str(), p.setting.source.as_str()), ("user@pass", "literal"));
        assert!(p.setting.placeholder.starts_with("alcoveph") && p.setting.placeholder.len() == 40);
        assert_ne!(p.setting.placeholder, placeholder());
    }

    #[test]
    fn bad_secrets_are_one_line_naming_the_secret_never_the_value() {
        let cases = [
            ("KEY=sk-literal", "no hosts"),
            ("KEY=sk-literal@", "no hosts"),
            ("KEY=sk-literal@not a host", "invalid host pattern"),
            ("KEY=sk-literal@https://api.test", "invalid host pattern"),
            ("1KEY=sk-literal@api.test", "environment variable name"),
            ("KEY=env:ALCOVE_TEST_UNSET_VAR_XYZ@api.test", "is not set"),
            ("KEY=file:/nonexistent/alcove/key@api.test", "cannot read /nonexistent/alcove/key"),
            ("KEY=@api.test", "empty"),
            ("sk-literal", "expected NAME=SOURCE@HOST"),
        ];
        for (arg, want) in cases {
            let e = parse_secret(arg).expect_err(arg).to_string();
            assert!(e.contains(want) && !e.contains('\n'), "{arg}: {e}");
            assert!(!e.contains("sk-literal"), "the value leaked: {e}");
        }
        let twice = parse_all(&["K=a@a.test".into(), "K=b@b.test".into()]).unwrap_err().to_string();
        assert!(twice.contains("given twice"));
    }

    #[test]
    fn values_round_trip_through_a_private_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let values = SecretValues::from([("KEY".to_string(), "v".to_string())]);
        write_values(dir.path(), &values).unwrap();
        let mode = std::fs::metadata(values_path(dir.path())).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(read_values(dir.path()).unwrap(), values);
    }
}
