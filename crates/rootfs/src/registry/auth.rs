//! Registry credentials: `docker login`-style auth files (`~/.docker/config.json`, or the file
//! given with `--registry-auth`), and which registries may be spoken to over plain HTTP.
//!
//! Invariant: a password is only ever read from a file, never from the command line (where
//! other users could see it in the process list). Credential helpers (`credsStore`) are not
//! run: only inline `auths` entries are used.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use base64::Engine;
use serde::Deserialize;

use crate::RootfsError;

#[derive(Deserialize, Default)]
struct AuthFile {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
}

#[derive(Deserialize, Default)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

/// The docker client's default auth file: `$DOCKER_CONFIG/config.json`, else
/// `$HOME/.docker/config.json`.
pub(crate) fn default_auth_file() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("DOCKER_CONFIG") {
        return Some(Path::new(&dir).join("config.json"));
    }
    std::env::var_os("HOME").map(|h| Path::new(&h).join(".docker/config.json"))
}

/// The names a registry may be filed under in an auth file (docker files Docker Hub under its
/// v1 URL).
fn keys_for(registry: &str) -> Vec<String> {
    let mut keys = vec![registry.to_string(), format!("https://{registry}"), format!("http://{registry}")];
    if registry == "index.docker.io" || registry == "docker.io" || registry == "registry-1.docker.io" {
        keys.extend([
            "https://index.docker.io/v1/".to_string(),
            "docker.io".to_string(),
            "index.docker.io".to_string(),
        ]);
    }
    keys
}

/// The `(user, password)` for `registry` from the auth file `path`. `Ok(None)` when the file
/// is absent (and `required` is false) or has no entry for the registry.
pub(crate) fn credentials_for(
    reference: &str,
    path: &Path,
    registry: &str,
    required: bool,
) -> Result<Option<(String, String)>, RootfsError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => return Ok(None),
        Err(e) => return Err(RootfsError::pull(reference, format!("cannot read auth file {}: {e}", path.display()))),
    };
    let file: AuthFile = serde_json::from_slice(&bytes)
        .map_err(|e| RootfsError::pull(reference, format!("auth file {} is not valid JSON: {e}", path.display())))?;
    for key in keys_for(registry) {
        let Some(entry) = file.auths.get(&key) else { continue };
        if let (Some(u), Some(p)) = (&entry.username, &entry.password) {
            return Ok(Some((u.clone(), p.clone())));
        }
        if let Some(auth) = &entry.auth {
            let decoded = base64::engine::general_purpose::STANDARD.decode(auth.trim()).map_err(|_| {
                RootfsError::pull(reference, format!("the auth entry for {key} in {} is not base64", path.display()))
            })?;
            let text = String::from_utf8(decoded).unwrap_or_default();
            let (u, p) = text.split_once(':').ok_or_else(|| {
                RootfsError::pull(
                    reference,
                    format!("the auth entry for {key} in {} is not USER:PASSWORD", path.display()),
                )
            })?;
            return Ok(Some((u.to_string(), p.to_string())));
        }
    }
    Ok(None)
}

/// The host part of `host[:port]` (brackets of an IPv6 literal removed).
fn host_of(registry: &str) -> &str {
    if let Some(rest) = registry.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    registry.rsplit_once(':').map(|(h, _)| h).unwrap_or(registry)
}

/// True for a registry on the loopback: 127.0.0.0/8, ::1 or `localhost`, which may be spoken to
/// over plain HTTP as docker allows.
pub(crate) fn is_loopback(registry: &str) -> bool {
    let host = host_of(registry);
    host == "localhost" || host.parse::<IpAddr>().map(|ip| ip.is_loopback()).unwrap_or(false)
}

/// True when `registry` may use plain HTTP: on the loopback, or named by `--insecure-registry`
/// (as `host` or `host:port`).
pub(crate) fn allows_plain_http(registry: &str, insecure: &[String]) -> bool {
    is_loopback(registry) || insecure.iter().any(|i| i == registry || i == host_of(registry))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_registries() {
        assert!(is_loopback("127.0.0.1:5000"));
        assert!(is_loopback("127.9.8.7"));
        assert!(is_loopback("[::1]:5000"));
        assert!(is_loopback("localhost:1"));
        assert!(!is_loopback("10.0.0.1:5000"));
        assert!(!is_loopback("index.docker.io"));
        assert!(!allows_plain_http("reg.example:5000", &[]));
        assert!(allows_plain_http("reg.example:5000", &["reg.example".into()]));
        assert!(allows_plain_http("reg.example:5000", &["reg.example:5000".into()]));
        assert!(!allows_plain_http("reg.example:5000", &["reg.example:6000".into()]));
    }

    #[test]
    fn auth_file_entries() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(
            &path,
            r#"{"auths":{"127.0.0.1:5000":{"auth":"dTpwQHNz"},"https://index.docker.io/v1/":{"auth":"aHViOnNlY3JldA=="}}}"#,
        )
        .unwrap();
        assert_eq!(credentials_for("r", &path, "127.0.0.1:5000", true).unwrap(), Some(("u".into(), "p@ss".into())));
        assert_eq!(
            credentials_for("r", &path, "index.docker.io", true).unwrap(),
            Some(("hub".into(), "secret".into()))
        );
        assert_eq!(credentials_for("r", &path, "other:1", true).unwrap(), None);
        assert_eq!(credentials_for("r", &dir.path().join("absent"), "x", false).unwrap(), None);
        assert!(credentials_for("r", &dir.path().join("absent"), "x", true).is_err());
    }
}
