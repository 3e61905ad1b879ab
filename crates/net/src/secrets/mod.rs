//! Secrets that code in a sandbox can use but never read (issue 16).
//!
//! The guest's environment holds a random placeholder per secret; the real
//! value lives only here, in the sandbox process. Outbound TLS to one of a
//! secret's hosts on an intercepted port (443 by default) is terminated by
//! the engine with a leaf certificate for the SNI name, signed by a
//! per-sandbox CA ([`ca`]) the guest trusts, and re-encrypted upstream with
//! verification ([`tls`]); in between, HTTP/1.1 requests have the
//! placeholder replaced by the value ([`substitute`]).
//!
//! # Invariants
//!
//! - The value never reaches the guest: it is written only into bytes going
//!   to the upstream host, after the guest's plaintext was decrypted here.
//!   Flow records, filter errors and logs name a secret and a host, never
//!   the value (nor, for that matter, the placeholder).
//! - Substitution only when all gates hold: the SNI is one of the secret's
//!   hosts, the destination address was resolved for that name through the
//!   sandbox's own DNS (or is `host.alcove.internal`'s), and the request's
//!   `Host` equals the SNI. A placeholder that should be substituted but
//!   cannot be (a gate fails, a body past the bound, a chunked or
//!   compressed body) blocks the flow with a record saying why; it is never
//!   sent on silently.
//! - A placeholder seen where it does not belong — a plaintext flow, an
//!   intercepted flow to a host the secret is not bound to, a TLS server
//!   name, a DNS question — is a [`FilterError::SecretViolation`]: the flow
//!   is refused and recorded with verdict `secret_violation`.
//! - TLS to hosts no secret names is never intercepted: it passes through
//!   the engine unchanged (only its ClientHello's SNI is read). TLS to other
//!   hosts is not decrypted, so a placeholder inside it is not seen there
//!   (it reveals nothing: the value never left this process).
//! - Interception is decided by the secrets and ports alone, per flow, at
//!   its first TLS record: it does not turn itself on or off otherwise.
//! - Rotation ([`Secrets::set_value`]) replaces a value atomically; requests
//!   processed afterwards use the new value.

pub mod ca;
pub mod substitute;
pub mod tls;

use crate::intercept::{FilterError, FlowInfo, Interceptor, StreamFilter};
pub use rustls::pki_types::CertificateDer;
use std::sync::{Arc, RwLock};

/// Bodies up to this size are buffered and substituted; larger bodies pass
/// through, and a placeholder inside one blocks the flow.
pub const BODY_BOUND: usize = 1024 * 1024;

/// A host pattern of a secret: a name, or `*.suffix` for any name below it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    Exact(String),
    /// `*.example.com`: matches `a.example.com`, `a.b.example.com`, not
    /// `example.com` itself. Stored without the `*.`.
    Suffix(String),
}

/// Why a host pattern was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid host pattern {0:?} (expected a DNS name like api.example.com or *.example.com)")]
pub struct HostPatternError(pub String);

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

impl std::str::FromStr for HostPattern {
    type Err = HostPatternError;

    fn from_str(text: &str) -> Result<HostPattern, HostPatternError> {
        let lower = text.trim_end_matches('.').to_ascii_lowercase();
        let (suffix, name) = match lower.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, lower.as_str()),
        };
        // An IP address is not a name a certificate can be made for here.
        if !valid_name(name)
            || name.parse::<std::net::IpAddr>().is_ok()
            || name.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        {
            return Err(HostPatternError(text.to_string()));
        }
        Ok(if suffix { HostPattern::Suffix(name.to_string()) } else { HostPattern::Exact(name.to_string()) })
    }
}

impl std::fmt::Display for HostPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HostPattern::Exact(n) => f.write_str(n),
            HostPattern::Suffix(n) => write!(f, "*.{n}"),
        }
    }
}

impl HostPattern {
    /// Whether `host` (lower case, no trailing dot) matches.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(n) => n == host,
            HostPattern::Suffix(n) => {
                host.len() > n.len() + 1 && host.ends_with(n.as_str()) && {
                    let cut = host.len() - n.len();
                    host.as_bytes()[cut - 1] == b'.'
                }
            }
        }
    }
}

/// One secret as the engine holds it.
#[derive(Clone)]
pub struct Secret {
    /// The name (the guest's environment variable).
    pub name: String,
    /// The token the guest sees in place of the value.
    pub placeholder: String,
    /// Where the value may go.
    pub hosts: Vec<HostPattern>,
    /// The value.
    pub value: Arc<Vec<u8>>,
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the value, whatever formats this.
        f.debug_struct("Secret").field("name", &self.name).field("hosts", &self.hosts).finish_non_exhaustive()
    }
}

impl Secret {
    /// Whether the secret may go to `host`.
    pub fn bound_to(&self, host: &str) -> bool {
        self.hosts.iter().any(|p| p.matches(host))
    }
}

/// The secrets of one sandbox, shared between the engine's interceptor
/// and its owner (for rotation).
#[derive(Clone, Default)]
pub struct Secrets {
    table: Arc<RwLock<Vec<Secret>>>,
}

/// Why a rotation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no secret named {0:?} in this sandbox")]
pub struct UnknownSecret(pub String);

impl Secrets {
    pub fn new(secrets: Vec<Secret>) -> Secrets {
        Secrets { table: Arc::new(RwLock::new(secrets)) }
    }

    /// A copy of the current table (values are shared, not copied).
    pub fn snapshot(&self) -> Vec<Secret> {
        self.table.read().map(|t| t.clone()).unwrap_or_default()
    }

    /// Replaces the value of `name`; requests processed from now on use it.
    pub fn set_value(&self, name: &str, value: Vec<u8>) -> Result<(), UnknownSecret> {
        let mut table = self.table.write().map_err(|_| UnknownSecret(name.to_string()))?;
        let secret = table.iter_mut().find(|s| s.name == name).ok_or_else(|| UnknownSecret(name.to_string()))?;
        secret.value = Arc::new(value);
        Ok(())
    }

    /// The secret whose placeholder occurs in `data`, if any.
    pub fn placeholder_in(&self, data: &[u8]) -> Option<String> {
        let table = self.table.read().ok()?;
        table.iter().find(|s| contains(data, s.placeholder.as_bytes())).map(|s| s.name.clone())
    }

    /// The longest placeholder (the carry a streaming scan keeps).
    pub fn longest_placeholder(&self) -> usize {
        self.table.read().map(|t| t.iter().map(|s| s.placeholder.len()).max().unwrap_or(0)).unwrap_or(0)
    }

    fn any_bound_to(&self, host: &str) -> bool {
        self.table.read().map(|t| t.iter().any(|s| s.bound_to(host))).unwrap_or(false)
    }
}

/// Whether `needle` occurs in `hay`.
pub(crate) fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

/// Everything interception needs.
#[derive(Clone)]
pub struct SecretsConfig {
    pub secrets: Secrets,
    /// The sandbox's CA (its certificate is what the guest trusts).
    pub ca: Arc<ca::SandboxCa>,
    /// Trust for upstream servers.
    pub upstream: Arc<UpstreamTrust>,
    /// Destination ports whose TLS is intercepted for a secret's hosts.
    pub ports: Vec<u16>,
}

/// What upstream servers are verified against: the host's trust store
/// (loaded at the first interception, off the sandbox's start), or only
/// the certificates given (`--tls-upstream-ca`).
pub struct UpstreamTrust {
    given: Option<Vec<rustls::pki_types::CertificateDer<'static>>>,
    loaded: std::sync::OnceLock<Arc<rustls::RootCertStore>>,
}

impl UpstreamTrust {
    /// The host's trust store (`rustls-native-certs`).
    pub fn native() -> UpstreamTrust {
        UpstreamTrust { given: None, loaded: std::sync::OnceLock::new() }
    }

    /// Only these certificates.
    pub fn only(certs: Vec<rustls::pki_types::CertificateDer<'static>>) -> UpstreamTrust {
        UpstreamTrust { given: Some(certs), loaded: std::sync::OnceLock::new() }
    }

    /// The roots, loaded once.
    pub fn roots(&self) -> Arc<rustls::RootCertStore> {
        self.loaded
            .get_or_init(|| {
                let mut store = rustls::RootCertStore::empty();
                match &self.given {
                    Some(certs) => {
                        store.add_parsable_certificates(certs.iter().cloned());
                    }
                    None => {
                        let found = rustls_native_certs::load_native_certs();
                        for e in &found.errors {
                            tracing::warn!(error = %e, "loading the host's trust store");
                        }
                        store.add_parsable_certificates(found.certs);
                    }
                }
                Arc::new(store)
            })
            .clone()
    }
}

/// Parses PEM certificates (an `--tls-upstream-ca` file); none is an error.
pub fn parse_pem_certs(pem: &[u8]) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, String> {
    use rustls::pki_types::pem::PemObject;
    let certs = rustls::pki_types::CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not PEM certificates: {e}"))?;
    if certs.is_empty() {
        return Err("no PEM certificate in it".into());
    }
    let mut store = rustls::RootCertStore::empty();
    let (_, bad) = store.add_parsable_certificates(certs.iter().cloned());
    if bad > 0 {
        return Err(format!("{bad} certificate(s) in it do not parse"));
    }
    Ok(certs)
}

/// The engine's interceptor for secrets.
pub struct SecretsInterceptor {
    cfg: SecretsConfig,
}

impl SecretsInterceptor {
    pub fn new(cfg: SecretsConfig) -> SecretsInterceptor {
        SecretsInterceptor { cfg }
    }
}

impl Interceptor for SecretsInterceptor {
    fn intercept(&mut self, flow: &FlowInfo<'_>) -> Option<Box<dyn StreamFilter>> {
        let secrets = &self.cfg.secrets;
        match flow.sni {
            Some(sni) => {
                if let Some(secret) = secrets.placeholder_in(sni.as_bytes()) {
                    return Some(Box::new(tls::Refuse(FilterError::SecretViolation {
                        secret,
                        host: sni.to_string(),
                        how: "in a TLS server name".into(),
                    })));
                }
                if !self.cfg.ports.contains(&flow.remote.port()) || !secrets.any_bound_to(sni) {
                    return None;
                }
                let dns_gate = flow.resolved_names.iter().any(|n| n == sni);
                match tls::TlsFilter::new(&self.cfg, sni, dns_gate) {
                    Ok(filter) => Some(Box::new(filter)),
                    Err(e) => Some(Box::new(tls::Refuse(e))),
                }
            }
            // Not TLS (or TLS without a name): plaintext is scanned.
            None => {
                Some(Box::new(tls::ScanFilter::new(secrets.clone(), flow.resolved_names.last().cloned(), flow.remote)))
            }
        }
    }

    fn dns_query(&mut self, name: &str) -> Option<FilterError> {
        let squashed: String = name.chars().filter(|c| *c != '.').collect();
        let secret = self
            .cfg
            .secrets
            .placeholder_in(name.as_bytes())
            .or_else(|| self.cfg.secrets.placeholder_in(squashed.as_bytes()))?;
        Some(FilterError::SecretViolation { secret, host: "dns".into(), how: "in a DNS question".into() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_patterns_parse_and_match() {
        let exact: HostPattern = "API.Example.com".parse().unwrap();
        assert!(exact.matches("api.example.com"));
        assert!(!exact.matches("x.api.example.com"));
        let wild: HostPattern = "*.example.com".parse().unwrap();
        assert!(wild.matches("a.example.com") && wild.matches("a.b.example.com"));
        assert!(!wild.matches("example.com") && !wild.matches("badexample.com"));
        for bad in ["", "*.", "a..b", "https://x.com", "x.com/path", "1.2.3.4", "-a.com", "a b.com", "*"] {
            assert!(bad.parse::<HostPattern>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn rotation_replaces_the_value_and_debug_never_shows_it() {
        let s = Secrets::new(vec![Secret {
            name: "KEY".into(),
            placeholder: "alcoveph0123".into(),
            hosts: vec!["a.test".parse().unwrap()],
            value: Arc::new(b"first-value".to_vec()),
        }]);
        assert!(!format!("{:?}", s.snapshot()).contains("first-value"));
        s.set_value("KEY", b"second".to_vec()).unwrap();
        assert_eq!(s.snapshot()[0].value.as_slice(), b"second");
        assert_eq!(s.set_value("NOPE", vec![]), Err(UnknownSecret("NOPE".into())));
        assert_eq!(s.placeholder_in(b"x alcoveph0123 y").as_deref(), Some("KEY"));
        assert_eq!(s.placeholder_in(b"alcoveph012"), None);
    }
}
